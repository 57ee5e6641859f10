"""Shared plumbing of the kernel modules: input checking and the numpy/GPU faces."""

from __future__ import annotations

import numpy as np

from ..gpu import GpuArray, Runtime, get_runtime

FLOATS = (np.dtype(np.float32), np.dtype(np.float16))


def runtime() -> Runtime:
    return get_runtime()


def storage_dtype(name: str, x) -> np.dtype:
    """The storage dtype of a float input (float64 is taken as float32); TypeError otherwise."""
    dt = np.dtype(x.dtype)
    if dt == np.float64 and not isinstance(x, GpuArray):
        return np.dtype(np.float32)
    if dt not in FLOATS:
        raise TypeError(f"{name}: dtype {dt} is not supported (float32, or float16 with shader-f16)")
    return dt


def require_f16(name: str, dt) -> None:
    if np.dtype(dt) == np.float16 and not runtime().has_f16:
        raise TypeError(f"{name}: float16 needs the shader-f16 feature, which this adapter lacks")


def check_float(name: str, x) -> np.dtype:
    """storage_dtype, also checking that the adapter can store float16."""
    dt = storage_dtype(name, x)
    require_f16(name, dt)
    return dt


def output_dtype(name: str, requested, default) -> np.dtype:
    """An output dtype argument: float32 or float16 (with shader-f16); `default` when None."""
    dt = np.dtype(default if requested is None else requested)
    if dt not in FLOATS:
        raise TypeError(f"{name}: output dtype {dt} is not supported (float32, or float16 with shader-f16)")
    require_f16(name, dt)
    return dt


def common_dtype(**arrays) -> np.dtype:
    """All float inputs must share one storage dtype (float64 counts as float32)."""
    dts = {name: storage_dtype(name, a) for name, a in arrays.items() if a is not None}
    kinds = set(dts.values())
    if len(kinds) > 1:
        raise TypeError(f"mixed dtypes {', '.join(f'{k}={v}' for k, v in dts.items())}: pass one dtype")
    dt = kinds.pop()
    require_f16(", ".join(dts), dt)
    return dt


def as_array(x):
    """numpy view of a non-GPU input (lists, numpy arrays); GpuArray passes through."""
    if isinstance(x, GpuArray):
        return x
    if hasattr(x, "__array__") or isinstance(x, (list, tuple, float, int)):
        return np.asarray(x)
    raise TypeError(f"expected a numpy array or GpuArray, got {type(x).__name__}")


def to_gpu(x, dtype) -> GpuArray:
    """Upload a numpy input (cast to `dtype`); GpuArray inputs must already have it."""
    if isinstance(x, GpuArray):
        if x.dtype != dtype:
            raise TypeError(f"GpuArray has dtype {x.dtype}, expected {dtype}")
        return x
    return runtime().upload(np.ascontiguousarray(x, dtype=dtype))


def on_gpu(*inputs) -> bool:
    """The GPU face: every array input is a GpuArray, so the result stays on the GPU."""
    arrays = [x for x in inputs if x is not None]
    return bool(arrays) and all(isinstance(x, GpuArray) for x in arrays)


def finish(out: GpuArray, gpu_face: bool):
    return out if gpu_face else out.numpy()


def alias(dtype) -> str:
    return "f16" if np.dtype(dtype) == np.float16 else "f32"
