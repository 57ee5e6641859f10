"""Cases of shaders/attention.wgsl: prefill, decode and the split-K paths, masks of every broadcast."""

from __future__ import annotations

import numpy as np

from ... import ops
from .base import F16, F32, Case, _rand, _tags


def _mask(kind, shape, seed, valid=None):
    """None, "add" (normal values, 30% -inf), "bool", "dead" / "deadbool" (rows 0 and last fully
    masked), "cache" (0 for keys < valid, -inf after: a decode step over a fixed-size cache)."""
    if kind is None:
        return None
    rng = np.random.default_rng(seed + 100)
    if kind == "bool":
        return rng.random(shape) < 0.7
    if kind == "cache":
        m = np.zeros(shape, np.float32)
        m[..., valid:] = -np.inf
        return m
    m = rng.random(shape) < 0.7 if kind == "deadbool" else rng.standard_normal(shape).astype(np.float32)
    if kind == "add":
        m[rng.random(shape) < 0.3] = -np.inf
    else:
        m[..., 0, :] = m[..., -1, :] = False if kind == "deadbool" else -np.inf
    return m


def attention(shape, path=None, causal=False, mask=None, mask_shape=None, scale=None, dtype=F32, valid=None,
              tags=(), seed=0):
    """shape = (B, H, Lq, Lk, D, Dv); mask_shape defaults to [B, H, Lq, Lk]. torch 2.11's CPU SDPA
    returns 0 for fully masked rows, as the kernels do."""
    import torch.nn.functional as F

    dtype = np.dtype(dtype)
    b, h, lq, lk, d, dv = shape

    def make():
        m = _mask(mask, mask_shape or (b, h, lq, lk), seed, valid)
        return (_rand((b, h, lq, d), seed, dtype), _rand((b, h, lk, d), seed + 1, dtype),
                _rand((b, h, lk, dv), seed + 2, dtype), m)

    def torch_fn(q, k, v, m):
        if m is not None and m.ndim < 2:  # torch indexes dim -2; numpy broadcasting does not need it
            m = m.reshape((1,) * (2 - m.ndim) + tuple(m.shape))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal, scale=scale)

    opts = "".join([f" {path}" if path else "", " causal" if causal else "",
                    f" mask {mask}{mask_shape or ''}" + (f" valid {valid}" if valid is not None else "") if mask else "",
                    f" scale {scale}" if scale else "",
                    " f16" if dtype == F16 else ""])
    return Case("attention", f"attention {shape}{opts}", make,
                lambda q, k, v, m: ops.attention(q, k, v, m, causal, scale, path=path),
                torch_fn, None, 2e-3 if dtype == F16 else 3e-5, dtype, _tags(*tags),
                ("GFLOP/s", 2 * b * h * lq * lk * (d + dv)))


_SHAPES = [
    (1, 1, 1, 1, 1, 1),        # Lq = Lk = 1
    (2, 3, 17, 23, 3, 3),      # primes, B and H > 1, D = 3
    (1, 2, 9, 11, 1, 1),       # D = 1
    (1, 2, 31, 37, 64, 64),    # non-multiples of the 16 x 16 tile
    (2, 1, 20, 37, 128, 128),  # D = 128 (8 x 8 tiles)
    (1, 2, 19, 19, 80, 80),    # D = 80
    (1, 2, 19, 21, 40, 40),    # 10 output columns per thread: a partial vec4 accumulator
    (1, 1, 5, 70, 64, 32),     # Dv != D
    (1, 2, 1, 300, 64, 64),    # decode: two key splits
]
_MASKS = [("add", (2, 3, 13, 29)), ("add", (13, 29)), ("add", (1, 1, 13, 29)), ("add", (2, 1, 1, 29)),
          ("add", (29,)), ("add", (3, 13, 1)), ("bool", (2, 3, 13, 29)), ("bool", (1, 13, 29)),
          ("dead", (2, 3, 13, 29)), ("deadbool", (1, 1, 13, 29))]

ATTENTION = [
    *[attention(s, p, tags=["selftest"] if s == (1, 2, 31, 37, 64, 64) else ()) for p in ("prefill", "decode")
      for s in _SHAPES],
    *[attention(s, p, causal=True, tags=["selftest"] if s[2] == 19 else ()) for p in ("prefill", "decode")
      for s in [(1, 2, 19, 19, 64, 64), (2, 1, 7, 40, 16, 16), (1, 1, 37, 5, 3, 3), (1, 1, 3, 300, 64, 64)]],
    *[attention((2, 3, 13, 29, 16, 16), p, mask=m, mask_shape=ms) for p in ("prefill", "decode") for m, ms in _MASKS],
    *[attention((1, 2, 5, 9, 8, 8), p, mask="cache", valid=0) for p in ("prefill", "decode")],  # all masked: 0
    *[attention((1, 6, 1, 2250, 64, 64), mask="cache", mask_shape=(1, 1, 1, 2250), valid=v, tags=t)
      for v, t in ((1, ()), (700, ("selftest",)), (2250, ()))],  # a decode step over a fixed-size cache
    attention((1, 2, 1, 2250, 64, 64), "prefill", mask="cache", mask_shape=(1, 1, 1, 2250), valid=1500),
    *[attention((1, 2, 11, 13, 24, 24), p, scale=0.37) for p in ("prefill", "decode")],
    *[attention((1, 2, 11, 13, 24, 24), p, scale=3.0, mask="add", mask_shape=(11, 13)) for p in ("prefill", "decode")],
    *[attention((1, 2, 21, 40, 64, 64), p, causal=c, mask=m, dtype=F16,
                tags=["selftest"] if p == "prefill" and not c and not m else ())
      for p in ("prefill", "decode") for c, m in ((False, None), (True, None), (False, "dead"))],
    attention((1, 70000, 1, 2, 1, 1), "decode"),  # 70,000 workgroups: past one grid dimension
    attention((1, 6, 1, 2250, 64, 64), tags=["bench"]), attention((1, 6, 750, 750, 64, 64), tags=["bench"]),
    attention((1, 2, 1, 300, 64, 64), tags=["quick"]), attention((1, 2, 64, 64, 64, 64), tags=["quick"]),
]
