"""Layer normalization (shaders/norm.wgsl): torch's F.layer_norm over the last dimension."""

from __future__ import annotations

from ..gpu import Layout
from .common import alias, as_array, common_dtype, finish, on_gpu, output_dtype, runtime, to_gpu

PARAMS = Layout("rows C eps:f")


def layer_norm(x, weight=None, bias=None, eps: float = 1e-5, out_dtype=None):
    """x[..., C] normalized over C, then * weight[C] + bias[C] when given (both or neither).
    out_dtype: float32 or float16 (default: x's), e.g. to hand f32 activations to f16 weights."""
    x = as_array(x)
    if x.ndim < 1 or x.shape[-1] < 1 or x.size == 0:
        raise ValueError(f"layer_norm: input shape {tuple(x.shape)} has nothing to normalize")
    if (weight is None) != (bias is None):
        raise ValueError("layer_norm: pass both weight and bias, or neither")
    C = int(x.shape[-1])
    weight = None if weight is None else as_array(weight)
    bias = None if bias is None else as_array(bias)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (C,):
            raise ValueError(f"layer_norm: {name} shape {tuple(t.shape)} != ({C},)")
    if not eps > 0:
        raise ValueError(f"layer_norm: eps must be > 0, got {eps}")
    dt = common_dtype(x=x, weight=weight, bias=bias)
    od = output_dtype("layer_norm", out_dtype, dt)
    rt = runtime()
    gx = to_gpu(x, dt)
    gw = gx if weight is None else to_gpu(weight, dt)
    gb = gx if bias is None else to_gpu(bias, dt)
    rows = gx.size // C
    out = rt.empty(gx.shape, od)
    pipe = rt.pipeline("norm", "layer_norm", {"AFFINE": weight is not None},
                       aliases={"T": alias(dt), "O": alias(od)})
    rt.run(pipe, [gx, gw, gb, out, rt.uniform(PARAMS, rows=rows, C=C, eps=eps)], rt.grid(rows))
    return finish(out, on_gpu(x, weight, bias))
