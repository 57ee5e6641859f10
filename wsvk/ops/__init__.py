"""Layer 2: the WGSL kernels behind numpy-in/numpy-out functions.

Every function also takes GpuArray inputs (wsvk.runtime); when all array inputs are
GpuArrays the result stays on the GPU (the face the resident path chains without readback).
"""

from .attention import attention
from .elementwise import axpy
from .fft import fft, ifft, irfft, rfft
from .heads import merge_heads, split_heads
from .matmul import conv1d, linear, matmul
from .norm import layer_norm

__all__ = ["attention", "axpy", "conv1d", "fft", "ifft", "irfft", "layer_norm", "linear", "matmul", "merge_heads", "rfft", "split_heads"]
