"""Cases of the helpers in shaders/lib, through the kernels that include them."""

from __future__ import annotations

import math

import numpy as np

from .base import F16, F32, Case, _rand
from .matmul import _mm_bound

# layer_norm: norm.wgsl (NORM above), convnext.wgsl's dwconv_norm and the GEMV's layer-norm
# prologue (here); row_reduce: norm.wgsl, convnext.wgsl (sums) and attention.wgsl's decode (max
# and sum, ATTENTION); wg_sums: every GEMV case of MATMUL, "[shared]" its workgroup-memory path;
# splitk_combine: attention.wgsl's combine (ATTENTION's decode cases; "cache" masks leave splits
# empty) and the GEMV's combine prologue (here).

_LN_WIDTHS = (1, 3, 255, 257, 1000)


def convnext_norm(T, C, resid=True, conv=False, out_dtype=F32, eps=1e-6):
    """convnext.wgsl's dwconv_norm: LayerNorm(dwconv(r + y)) * scale + shift, and the residual
    r + y it writes, against torch in float64 (F.conv1d with groups=C, kernel 7, padding 3)."""
    import torch
    import torch.nn.functional as F

    from .. import convnext

    def make():
        return ((_rand((T, C), 1) + 3.0, _rand((T, C), 2) if resid else None, _rand(C, 3), _rand(C, 4))
                + ((_rand((convnext.KERNEL, C), 5, scale=0.4), _rand(C, 6)) if conv else (None, None)))

    def ours(r, y, g, b, w, cb):
        from ...gpu import get_runtime

        rt = get_runtime()
        up = rt.upload
        out, res = rt.empty((T, C), out_dtype), rt.empty((T, C))
        convnext.dwconv_norm(up(r), None if y is None else up(y), up(g), up(b), eps, out,
                             res if resid else None, (up(w), up(cb)) if conv else None)
        return np.stack([out.numpy().astype(np.float32), res.numpy() if resid else r])

    def torch_fn(r, y, g, b, w, cb):
        x = r if y is None else r + y
        v = F.conv1d(x.T[None], w.T[:, None, :], cb, padding=convnext.KERNEL // 2, groups=C)[0].T if conv else x
        return torch.stack([F.layer_norm(v, (C,), g, b, eps), x])

    half = np.dtype(out_dtype) == F16
    return Case("lib", f"layer_norm in convnext {T}x{C}{' +y' if resid else ''}{' dwconv' if conv else ''}"
                       f"{' ->f16' if half else ''}", make, ours, torch_fn, bound=5e-4 if half else 2e-6,
                f16_out=half)


def gemv_norm(M, N, K, bias=True, subgroups=None, eps=1e-5):
    """The GEMV's layer-norm prologue (XMODE 1): F.linear(F.layer_norm(x), w, b)."""
    import torch.nn.functional as F

    from ..matmul import gemv_prologue

    def make():
        return (_rand((M, K), 1) + 3.0, _rand(K, 2), _rand(K, 3), _rand((N, K), 4, scale=1 / math.sqrt(K)),
                _rand(N, 5) if bias else None)

    return Case("lib", f"layer_norm in gemv {M}x{K}->{N}{' [shared]' if subgroups is False else ''}", make,
                lambda x, g, b, w, wb: gemv_prologue(x, w, wb, ln=(g, b, eps), subgroups=subgroups),
                lambda x, g, b, w, wb: F.linear(F.layer_norm(x, (K,), g, b, eps), w, wb), bound=_mm_bound(F32, K))


def gemv_combine(M, N, NH, DH, splits, MAXS=None, subgroups=None):
    """The GEMV's split-K combine prologue (XMODE 2) on decode_cache-shaped partials
    [M, NH, MAXS, DH + 2] = (max, sum, unnormalized out): F.linear(merged heads, w) against the
    merge in float64. Some splits are empty (l = 0, their max and output must not count), one head
    of the first row wholly (it gives 0), and splits past a row's count are NaN (never read).
    splits: one count, or one per row (self-attention: from the step buffer)."""
    from ..matmul import gemv_prologue

    per_row = [splits] * M if isinstance(splits, int) else list(splits)
    MAXS = MAXS or max(per_row)

    def make():
        rng = np.random.default_rng(7)
        part = np.full((M, NH, MAXS, DH + 2), np.nan)
        for c, ns in enumerate(per_row):
            part[c, :, :ns, 0] = rng.standard_normal((NH, ns)) * 3
            part[c, :, :ns, 1] = rng.uniform(0.5, 40, (NH, ns))
            part[c, :, :ns, 2:] = rng.standard_normal((NH, ns, DH)) * 5
            empty = rng.random((NH, ns)) < 0.3
            part[c, :, :ns, 0][empty] = 80.0  # would dominate if it counted
            part[c, :, :ns, 1][empty] = 0.0
        part[0, 0, :per_row[0], 1] = 0.0
        return part.astype(F32).astype(np.float64), _rand((N, NH * DH), 8, scale=1 / math.sqrt(NH * DH))

    def numpy_fn(part, w):
        xin = np.zeros((M, NH * DH))
        for c, ns in enumerate(per_row):
            for h in range(NH):
                m, l, o = part[c, h, :ns, 0], part[c, h, :ns, 1], part[c, h, :ns, 2:]
                if (l > 0).any():
                    wt = np.where(l > 0, np.exp(m - m[l > 0].max()), 0.0)
                    xin[c, h * DH:(h + 1) * DH] = wt @ o / (wt @ l)
        return xin @ w.T

    return Case("lib", f"splitk_combine in gemv {M}x{NH}x{DH} splits {splits} of {MAXS}->{N}"
                       f"{' [shared]' if subgroups is False else ''}", make,
                lambda part, w: gemv_prologue(part, w, combine=(DH, splits), subgroups=subgroups), None, numpy_fn,
                _mm_bound(F32, NH * DH))


LIB = [
    *[convnext_norm(5, c) for c in _LN_WIDTHS], convnext_norm(3, 257, resid=False),
    convnext_norm(9, 257, conv=True), convnext_norm(4, 1000, conv=True), convnext_norm(7, 3, conv=True),
    convnext_norm(6, 255, conv=True, out_dtype=F16), convnext_norm(2, 1000, resid=False, out_dtype=F16),
    *[gemv_norm(m, n, k) for m, n, k in ((1, 7, 1), (2, 9, 3), (3, 17, 255), (8, 13, 257), (4, 33, 1000))],
    gemv_norm(3, 17, 255, subgroups=False), gemv_norm(2, 9, 1000, False, subgroups=False),
    gemv_combine(1, 9, 2, 64, 1), gemv_combine(2, 17, 3, 64, 3, 4), gemv_combine(3, 33, 2, 24, 5),
    gemv_combine(4, 8, 6, 64, [1, 2, 7, 9], 9), gemv_combine(3, 20, 2, 33, 6, subgroups=False),
]
