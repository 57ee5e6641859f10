"""Cases of The GEMM, convolution and GEMV kernels of shaders/matmul.wgsl (8-bit weights included)."""

from __future__ import annotations

import math

import numpy as np

from ... import ops
from .base import F16, F32, Case, _rand, _tags


def _mm_bound(dtype, K):
    # f32: dot-product rounding grows ~sqrt(K); f16: the f16 output rounding (2**-11) dominates
    return 1.5e-3 if dtype == F16 else 2e-6 * math.sqrt(K) + 1e-6


def linear(lead, N, K, bias=False, gelu=False, dtype=F32, tile=None, subgroups=None, tags=(), seed=0):
    """F.linear(x[*lead, K], w[N, K], b[N]) (+ GELU); M = prod(lead) <= 8 runs the GEMV unless
    `tile` pins the tiled kernel."""
    import torch.nn.functional as F

    dtype = np.dtype(dtype)

    def make():
        w = _rand((N, K), seed + 1, dtype, 1 / math.sqrt(K))
        return _rand(lead + (K,), seed, dtype), w, _rand(N, seed + 2, dtype) if bias else None

    def torch_fn(x, w, b):
        y = F.linear(x, w, b)
        return F.gelu(y) if gelu else y

    variant = "".join([f" [t{tile}]" if tile else "", " [shared]" if subgroups is False else "",
                       " f16" if dtype == F16 else ""])
    name = f"linear {'x'.join(map(str, lead)) or '-'}x{K}->{N}{' +b' if bias else ''}{' gelu' if gelu else ''}{variant}"
    return Case("matmul", name, make, lambda x, w, b: ops.linear(x, w, b, gelu=gelu, tile=tile, subgroups=subgroups),
                torch_fn, lambda x, w, b: x @ w.T, _mm_bound(dtype, K), dtype, _tags(*tags),
                ("GB/s", dtype.itemsize * (K * N + K + N)) if math.prod(lead) == 1 else ("GFLOP/s", 2 * math.prod(lead) * N * K))


def linear_q8(lead, N, K, bias=False, gelu=False, subgroups=None, tags=(), seed=0):
    """linear() with the weight in Q8 (M = prod(lead) <= 8): against F.linear with the weight
    the Q8 buffer stands for, so the bound is f32 accumulation's (quantization error is the
    precision gate's business, tests/test_precision.py)."""
    import torch
    import torch.nn.functional as F

    from ..matmul import Q8Weight, dequantize_q8, q8_layout, quantize_q8

    def make():
        w = _rand((N, K), seed + 1, F32, 1 / math.sqrt(K))
        return _rand(lead + (K,), seed, F32), w, _rand(N, seed + 2, F32) if bias else None

    held = {}  # the weight quantized once (a benchmark calls these many times on one input)

    def ours(x, w, b):
        from ...gpu import GpuArray, get_runtime

        if "q8" not in held:
            held["q8"] = Q8Weight.upload(get_runtime(), w.numpy() if isinstance(w, GpuArray) else w)
        return ops.linear(x, held["q8"], b, gelu=gelu, subgroups=subgroups)

    def torch_fn(x, w, b):  # the weight the Q8 buffer stands for, dense, on x's device
        key = ("dense", w.device, x.dtype)
        if key not in held:
            dense = dequantize_q8(quantize_q8(w.cpu().numpy()), N, K)
            held[key] = torch.from_numpy(dense).to(w.device, x.dtype)
        y = F.linear(x, held[key], b)
        return F.gelu(y) if gelu else y

    nb, words = q8_layout(N, K)
    name = (f"linear q8 {'x'.join(map(str, lead)) or '-'}x{K}->{N}{' +b' if bias else ''}{' gelu' if gelu else ''}"
            + (" [shared]" if subgroups is False else ""))
    return Case("matmul", name, make, ours, torch_fn, None, _mm_bound(F32, K), F32, _tags(*tags),
                ("GB/s", 4 * words + 4 * (K + N)) if math.prod(lead) == 1 else ("GFLOP/s", 2 * math.prod(lead) * N * K))


def matmul(ashape, bshape, dtype=F32, tile=None, tags=(), seed=0):
    import torch

    dtype = np.dtype(dtype)
    variant = (f" [t{tile}]" if tile else "") + (" f16" if dtype == F16 else "")
    return Case("matmul", f"matmul {ashape}@{bshape}{variant}",
                lambda: (_rand(ashape, seed, dtype), _rand(bshape, seed + 1, dtype)),
                lambda a, b: ops.matmul(a, b, tile=tile), torch.matmul, np.matmul, _mm_bound(dtype, ashape[-1]),
                dtype, _tags(*tags), ("GFLOP/s", 2 * math.prod(np.broadcast_shapes(ashape[:-2], bshape[:-2]))
                                      * ashape[-2] * bshape[-1] * ashape[-1]))


def conv1d(xshape, wshape, bias=True, dtype=F32, tile=None, tags=(), **kw):
    import torch.nn.functional as F

    dtype = np.dtype(dtype)

    def make():
        return _rand(xshape, 1, dtype), _rand(wshape, 2, dtype), _rand(wshape[0], 3, dtype) if bias else None

    K = wshape[1] * wshape[2]
    args = ", ".join(f"{k}={v}" for k, v in kw.items())
    variant = (f" [t{tile}]" if tile else "") + (" f16" if dtype == F16 else "")
    return Case("matmul", f"conv1d {xshape}*{wshape}({args}){variant}", make,
                lambda x, w, b: ops.conv1d(x, w, b, tile=tile, **kw), lambda x, w, b: F.conv1d(x, w, b, **kw),
                None, 1.5e-3 if dtype == F16 else _mm_bound(dtype, K), dtype, _tags(*tags),
                ("GFLOP/s", 2 * math.prod(xshape[:-2] or (1,)) * wshape[0] * K * xshape[-1]))


MATMUL = [
    # (leading dims of x, N, K, bias, gelu): M <= 8 is the GEMV, larger the tiled kernel
    linear((1,), 1, 1), linear((), 7, 13, True), linear((1,), 97, 257, True, True, tags=["selftest"]),
    linear((2,), 13, 97, False, True), linear((3,), 257, 7, True), linear((4,), 64, 256, True, True),
    linear((5,), 97, 100), linear((8,), 33, 257, True, True), linear((8,), 16, 1028, True),
    linear((2, 3), 19, 12, True, True), linear((9,), 65, 17, True), linear((13,), 97, 257, True, True, tags=["selftest"]),
    linear((64,), 64, 64), linear((70,), 130, 33, True, True), linear((2, 5, 7), 3, 5, True),
    linear((1,), 65537, 3, True),        # N past 65,535 rows (GEMV)
    linear((9,), 65537, 2, True, True),  # N past 65,535 (tiled, 1,025 column tiles)
    linear((5,), 262147, 4, True),       # 65,537 GEMV workgroups: folded grid
    # the GEMV's workgroup-memory reduction (adapters without subgroups)
    *[linear(lead, N, K, True, True, subgroups=False, tags=["selftest"] if lead == (1,) else ())
      for lead, N, K in [((1,), 97, 257), ((4,), 13, 64), ((8,), 1031, 4)]],
    # the 128x128 tiles
    linear((9,), 65, 17, True, tile=128), linear((130,), 257, 33, True, True, tile=128, tags=["selftest"]),
    linear((3, 43), 131, 129, tile=128), linear((300,), 260, 1000, True, tile=128),
    linear((9,), 65537, 2, True, True, tile=128), linear((20,), 70, 130, True, True, F16, tile=128),
    *[linear(lead, N, K, b, g, F16, tags=["selftest"] if lead == (1,) else ())
      for lead, N, K, b, g in [((1,), 97, 257, True, True), ((6,), 33, 64, True, False), ((3,), 5, 1, False, True),
                               ((20,), 70, 130, True, True)]],
    # 8-bit weights: K past, short of and between whole blocks of 32, 1 to 8 columns, one row group
    # past 65,535 workgroups' worth of rows, a partial last row group
    linear_q8((1,), 1, 1), linear_q8((1,), 97, 257, True, True, tags=["selftest"]), linear_q8((8,), 33, 100, True),
    linear_q8((3,), 1031, 4, False, True), linear_q8((2, 3), 19, 64, True), linear_q8((8,), 16, 1028, True, True),
    linear_q8((2,), 262147, 33), linear_q8((4,), 70, 130, True, True, subgroups=False, tags=["selftest"]),
    matmul((1, 1), (1, 1)), matmul((7, 13), (13, 97)), matmul((65, 257), (257, 3)),
    matmul((3, 5), (5, 64)),                                      # M <= 8 matmul also runs tiled
    matmul((3, 20, 30), (3, 30, 70), tags=["selftest"]), matmul((2, 3, 9, 4), (2, 3, 4, 11)),
    matmul((3, 20, 30), (30, 70)),                                # shared 2-D b: batch folds into M
    matmul((20, 30), (4, 30, 7)),                                 # shared 2-D a
    matmul((65537, 1, 2), (65537, 2, 3)),                         # 65,537 tiles: folded grid
    matmul((65, 257), (257, 3), tile=128), matmul((3, 20, 30), (3, 30, 70), tile=128),
    matmul((20, 30), (4, 30, 7), tile=128), matmul((129, 9), (9, 260), tile=128),
    matmul((65537, 1, 2), (65537, 2, 3), tile=128),
    matmul((13, 97), (97, 66), F16, tags=["selftest"]), matmul((2, 9, 33), (2, 33, 7), F16),
    matmul((2, 9, 33), (2, 33, 7), F16, tile=128),
    conv1d((2, 3, 17), (5, 3, 3), padding=2, dilation=2, tags=["selftest"]),
    conv1d((3, 1), (4, 3, 1), bias=False),                        # unbatched, ks 1, T 1
    conv1d((1, 7, 40), (9, 7, 4), stride=3, padding=1),
    conv1d((2, 6, 33), (8, 6, 4), padding="same", dilation=3),    # even span: the extra pad goes right
    conv1d((2, 5, 12), (3, 5, 5), bias=False, padding="valid"),
    conv1d((1, 67, 130), (70, 67, 3), padding=1),                 # several tiles, K % 16 != 0
    conv1d((2, 4, 5000), (1, 4, 1), bias=False),                  # long T, Cout 1
    conv1d((2, 8, 21), (6, 8, 3), F16, padding=1),
    conv1d((2, 67, 130), (140, 67, 3), tile=128, padding=1),
    conv1d((2, 67, 130), (140, 67, 3), tile=128, stride=3, dilation=2, padding="valid"),
    # the benchmarks' shapes: decode GEMVs, Vocos' pointwise conv, ECAPA's dilated conv
    linear((1,), 2304, 768, tags=["bench", "quick"]), linear((1,), 3072, 768, tags=["bench"]),
    linear((1,), 768, 3072, tags=["bench"]), linear((750,), 1152, 384, tags=["bench"]),
    # the same GEMVs in f16 and q8, and the released S2A medium's (width 1024): GB/s of the bytes read
    *[case for n, k in ((2304, 768), (3072, 1024), (1024, 4096))
      for case in (linear((1,), n, k, dtype=F16, tags=["bench"]), linear_q8((1,), n, k, tags=["bench"]))],
    linear_q8((1,), 2304, 768, tags=["quick"]),
    linear((64,), 96, 48, tags=["quick"]), linear((64,), 96, 48, tile=128, tags=["quick"]),
    conv1d((1, 1024, 500), (1024, 1024, 3), bias=False, dilation=2, tags=["bench"]),
    conv1d((1, 64, 50), (64, 64, 3), bias=False, dilation=2, tags=["quick"]),
    linear((1,), 8192, 8192, tags=["big"]), linear((1,), 8192, 8192, dtype=F16, tags=["big"]),
    linear_q8((1,), 8192, 8192, tags=["big"]),
    *[linear((m,), n, k, tile=t, tags=["big"]) for m, n, k in ((750, 1536, 512), (4096, 4096, 4096))
      for t in (None, 64, 128)],
]
