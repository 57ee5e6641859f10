"""The kernels' public functions, numpy in and numpy out (layer 2's face for users and the router).

Every function also takes GpuArray inputs (wsvk.gpu); when all array inputs are GpuArrays the
result stays on the GPU (the face the resident modules chain without readback). The kernel
families themselves live in wsvk.kernels, one module per shader file.
"""

from .kernels.attention import attention
from .kernels.elementwise import axpy
from .kernels.fft import fft, ifft, irfft, rfft
from .kernels.heads import merge_heads, split_heads
from .kernels.matmul import conv1d, linear, matmul
from .kernels.norm import layer_norm

__all__ = ["attention", "axpy", "conv1d", "fft", "ifft", "irfft", "layer_norm", "linear", "matmul", "merge_heads",
           "rfft", "split_heads"]
