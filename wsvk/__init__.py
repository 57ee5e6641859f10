"""wsvk: WhisperSpeech on any GPU through WGSL compute shaders (wgpu: Vulkan, Metal, D3D12)."""

__version__ = "0.1.0"
