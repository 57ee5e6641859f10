"""Cases of shaders/norm.wgsl (layer norm), shaders/heads.wgsl (split/merge heads with RoPE) and
shaders/elementwise.wgsl."""

from __future__ import annotations

import numpy as np

from ... import ops
from .base import F16, F32, Case, _rand, _tags


def layer_norm(shape, affine=True, dtype=F32, out_dtype=None, eps=1e-5, tags=()):
    import torch.nn.functional as F

    dtype = np.dtype(dtype)

    def make():  # an offset mean: the centred variance must keep its precision
        x = (_rand(shape, 1) + 3.0).astype(dtype).astype(np.float64)
        return (x, _rand(shape[-1], 2, dtype), _rand(shape[-1], 3, dtype)) if affine else (x, None, None)

    half = dtype == F16 or out_dtype == F16
    return Case("norm", f"layer_norm {shape}{'' if affine else ' plain'}{' f16' if dtype == F16 else ''}"
                        f"{' ->f16' if out_dtype is not None else ''}", make,
                lambda x, w, b: ops.layer_norm(x, w, b, eps, out_dtype=out_dtype),
                lambda x, w, b: F.layer_norm(x, x.shape[-1:], w, b, eps), None,
                (2e-3 if dtype == F16 else 5e-4) if half else 2e-6, dtype, _tags(*tags), f16_out=out_dtype == F16)


NORM = [
    *[layer_norm(s, a, tags=["selftest"] if s == (5, 384) and a else ()) for a in (True, False)
      for s in [(1,), (3, 1), (2, 7), (2, 255), (3, 257), (5, 384), (3, 4, 1000), (1, 1027), (70_000, 3)]],
    layer_norm((4, 96), dtype=F16, tags=["selftest"]), layer_norm((4, 96), out_dtype=F16), layer_norm((4, 96), eps=1e-6),
]


def rope_table(P, dh):
    """[cos; sin] [2P, dh] as whisperspeech's Rotary builds them (base 10000, halves repeated)."""
    freqs = np.arange(P)[:, None] / 10000.0 ** (np.arange(0, dh, 2) / dh)[None]
    ang = np.concatenate([freqs, freqs], 1)
    return np.concatenate([np.cos(ang), np.sin(ang)]).astype(np.float32)


def split_heads(L, H, dh, parts, rope_parts=0, step=1, tags=()):
    """[L, parts * W] -> parts x [1, H, L, dh]; the first rope_parts parts rotated (rope_rotate)."""
    table = rope_table((L - 1) * step + 1, dh) if rope_parts else None

    def ref(x):
        outs = []
        for p in range(parts):
            y = x[:, p * H * dh:(p + 1) * H * dh].reshape(L, H, dh)
            if p < rope_parts:
                P = table.shape[0] // 2
                cos, sin = (table[i * P:(i + 1) * P][np.arange(L) * step][:, None].astype(np.float64) for i in (0, 1))
                y = y * cos + np.concatenate([-y[..., dh // 2:], y[..., :dh // 2]], -1) * sin
            outs.append(y.transpose(1, 0, 2)[None])
        return np.stack(outs)

    return Case("heads", f"split_heads L{L} H{H} dh{dh} x{parts}{f' rope {rope_parts}' if rope_parts else ''}"
                         f"{f' step {step}' if step > 1 else ''}", lambda: (_rand((L, parts * H * dh), L),),
                lambda x: np.stack(ops.split_heads(x, H, parts, rope=table, rope_parts=rope_parts, rope_step=step)),
                None, ref, 1e-7 if rope_parts else 1e-12, F32, _tags(*tags))


HEADS = [
    split_heads(1, 1, 2, 2), split_heads(7, 3, 10, 3), split_heads(13, 2, 32, 3, 2, tags=["selftest"]),
    split_heads(9, 4, 16, 2, 1, 3), split_heads(300, 6, 64, 3, 2),
    Case("heads", "merge_heads [1, 5, 11, 6]", lambda: (_rand((1, 5, 11, 6), 4),), ops.merge_heads, None,
         lambda x: x[0].transpose(1, 0, 2).reshape(11, 30), 1e-12, tags=_tags("selftest")),
]

ELEMENTWISE = [Case("elementwise", f"axpy n={n}", lambda n=n: (_rand(n, 1), _rand(n, 2)),
                    lambda a, b: ops.axpy(a, b, 0.5), None, lambda a, b: a + 0.5 * b, 1e-7,
                    tags=_tags("selftest" if n == 1001 else None))
               for n in (1, 255, 256, 1001, 70000 * 256 + 3)]
