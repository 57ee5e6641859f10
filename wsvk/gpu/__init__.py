"""Layer 1, the GPU runtime: adapter choice, device, shaders, memory, recording, readback.

Imports nothing of torch and nothing from the layers above (kernels, resident modules, app).
"""

from .adapters import adapter_summary, list_adapters, select_adapter
from .memory import MAP_READ, STORAGE, UNIFORM, GpuArray
from .recorder import Readback, Recorder, raw_pass_calls
from .runtime import Runtime, get_runtime, gpu_errors
from .uniforms import Layout

__all__ = ["GpuArray", "Layout", "MAP_READ", "Readback", "Recorder", "Runtime", "STORAGE", "UNIFORM",
           "adapter_summary", "get_runtime", "gpu_errors", "list_adapters", "raw_pass_calls", "select_adapter"]
