"""Element-wise kernels (shaders/elementwise.wgsl)."""

from __future__ import annotations

from ..gpu import Layout
from .common import alias, as_array, common_dtype, finish, on_gpu, runtime, to_gpu

PARAMS = Layout("n alpha:f")


def axpy(a, b, alpha: float = 1.0):
    """a + alpha * b for two arrays of one shape."""
    a, b = as_array(a), as_array(b)
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"axpy: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
    dt = common_dtype(a=a, b=b)
    rt = runtime()
    ga, gb = to_gpu(a, dt), to_gpu(b, dt)
    out = rt.empty(ga.shape, dt)
    n = ga.size
    pipe = rt.pipeline("elementwise", "axpy", aliases={"T": alias(dt)})
    rt.run(pipe, [ga, gb, out, rt.uniform(PARAMS, n=n, alpha=alpha)], rt.grid(-(-n // 256)))
    return finish(out, on_gpu(a, b))
