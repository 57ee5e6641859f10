"""Attention head layout (shaders/heads.wgsl): fused projection rows <-> head-major tensors."""

from __future__ import annotations

import numpy as np

from ..gpu import Layout
from .common import alias, as_array, check_float, finish, on_gpu, output_dtype, runtime, to_gpu

PARAMS = Layout("NH L W P KSUB n ooff")  # n = L * W; ooff: split's output offset in elements


def split_heads(x, n_head: int, parts: int, rope=None, rope_parts: int = 0, rope_step: int = 1,
                out_dtype=None, *, out=None, offset: int = 0):
    """x[L, parts * W] (rows of a fused q|k|v or k|v projection) -> `parts` arrays [1, n_head, L, W / n_head].

    rope: a [2P, Dh] float32 table ([cos; sin] as whisperspeech's Rotary caches them) applied, as
    whisperspeech's rope_rotate, to the first `rope_parts` parts at position row * rope_step
    (rope_step: the layer's key/query subsampling). out_dtype: float32 or float16 (default: x's).
    out: `parts` GpuArrays to write into instead, at element `offset` (a region of a larger
    buffer: the resident decoder's per-slot caches); they are returned.
    """
    x = as_array(x)
    dt = check_float("split_heads", x)
    od = output_dtype("split_heads", out_dtype, dt)
    if int(rope_step) < 1:
        raise ValueError(f"split_heads: rope_step must be >= 1, got {rope_step}")
    if parts not in (2, 3):
        raise ValueError(f"split_heads: parts must be 2 or 3, got {parts}")
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] % parts:
        raise ValueError(f"split_heads: x must be [L, {parts} * W], got shape {tuple(x.shape)}")
    L, W = int(x.shape[0]), int(x.shape[1]) // parts
    if n_head < 1 or W % n_head:
        raise ValueError(f"split_heads: width {W} is not a multiple of {n_head} heads")
    dh = W // n_head
    if not 0 <= rope_parts <= parts or (rope_parts and rope is None) or (rope is not None and not rope_parts):
        raise ValueError("split_heads: pass a rope table together with rope_parts in 1..parts")
    rt = runtime()
    gx = to_gpu(x, dt)
    if rope is not None:
        rope = as_array(rope)
        if rope.ndim != 2 or rope.shape[1] != dh or rope.shape[0] % 2 or dh % 2:
            raise ValueError(f"split_heads: rope table must be [2P, {dh}] (even head width), got {tuple(rope.shape)}")
        P = int(rope.shape[0]) // 2
        if (L - 1) * rope_step >= P:
            raise ValueError(f"split_heads: rope table covers {P} positions, rows need {(L - 1) * rope_step + 1}")
        grope = to_gpu(rope, np.float32)
    else:
        P, grope = 1, rt.empty((4,))
    if out is not None:
        outs = list(out)
        if len(outs) != parts or not on_gpu(x, *outs) or len({o.dtype for o in outs}) != 1:
            raise ValueError(f"split_heads: out must be {parts} GpuArrays of one dtype, with a GpuArray x")
        od = outs[0].dtype
        if offset < 0 or any(offset + L * W > o.size for o in outs):
            raise ValueError(f"split_heads: {L * W} values at offset {offset} do not fit the outputs")
    else:
        outs = [rt.empty((1, n_head, L, dh), od) for _ in range(parts)]
    pipe = rt.pipeline("heads", "split", {"DH": dh, "NP": parts, "ROPE_PARTS": rope_parts},
                       aliases={"S": alias(dt), "D": alias(od)})
    n = L * W
    third = outs[2] if parts == 3 else rt.empty((4,), od)
    rt.run(pipe, [gx, outs[0], outs[1], third, grope, rt.uniform(PARAMS, NH=n_head, L=L, W=W, P=P, KSUB=rope_step, n=n,
                                                                ooff=offset if out is not None else 0)],
           rt.grid(-(-n // 256)))
    gpu = on_gpu(x)
    return tuple(finish(o, gpu) for o in outs)


def merge_heads(x, out_dtype=None):
    """x[1, H, L, Dh] -> [L, H * Dh] (attention output back into rows). out_dtype: default x's."""
    x = as_array(x)
    dt = check_float("merge_heads", x)
    od = output_dtype("merge_heads", out_dtype, dt)
    if x.ndim != 4 or x.shape[0] != 1 or min(x.shape) < 1:
        raise ValueError(f"merge_heads: x must be [1, H, L, Dh], got shape {tuple(x.shape)}")
    _, H, L, dh = (int(s) for s in x.shape)
    rt = runtime()
    gx = to_gpu(x, dt)
    out = rt.empty((L, H * dh), od)
    n = L * H * dh
    pipe = rt.pipeline("heads", "merge", {"DH": dh}, aliases={"S": alias(dt), "D": alias(od)})
    rt.run(pipe, [gx, out, rt.uniform(PARAMS, NH=H, L=L, W=H * dh, P=1, KSUB=1, n=n, ooff=0)], rt.grid(-(-n // 256)))
    return finish(out, on_gpu(x))
