"""One case table per kernel family: the shapes every kernel is checked on, against float64.

The tests run every case of a table (`tests/test_<family>.py`), `python -m wsvk info --selftest`
runs those tagged "selftest" (one per variant), and `scripts/bench_ops.py` times those tagged
"bench" ("quick": its smoke run; "big": shapes only a real GPU should run, which the tests skip).

A case's inputs are seeded and rounded through its dtype, so the float64 reference sees exactly
what the kernel sees. The reference is torch's own op in float64 where torch has one (the same
function is the CPU/CUDA baseline of the benchmarks, in float32), else numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import ops

F32, F16 = np.dtype(np.float32), np.dtype(np.float16)


def rel_err(got, ref) -> float:
    """Relative L2 error in float64 (complex aware)."""
    got = np.asarray(got).astype(np.complex128 if np.iscomplexobj(got) else np.float64)
    ref = np.asarray(ref).astype(np.complex128 if np.iscomplexobj(ref) else np.float64)
    if got.shape != ref.shape:
        raise AssertionError(f"shape {got.shape} != reference {ref.shape}")
    denom = np.linalg.norm(ref.ravel())
    return float(np.linalg.norm((got - ref).ravel()) / (denom if denom > 0 else 1.0))


@dataclass(frozen=True)
class Case:
    family: str
    name: str
    make: Callable[[], tuple]         # the inputs: numpy arrays (floats as float64 values of `dtype`)
    ours: Callable[..., object]       # the kernel on the inputs (cast to dtype): numpy out
    torch_fn: Callable | None = None  # torch's op on tensors: the float64 reference and the baseline
    numpy_fn: Callable | None = None  # numpy's op: the reference where torch has none, a baseline
    bound: float = 1e-5               # relative L2 error
    dtype: np.dtype = F32
    tags: frozenset = field(default_factory=frozenset)
    work: tuple[str, float] | None = None  # (unit, amount per call) for the benchmarks
    f16_out: bool = False                  # float16 output from float32 inputs (needs shader-f16 too)

    @property
    def needs_f16(self) -> bool:
        return self.dtype == F16 or self.f16_out

    def __str__(self):
        return self.name

    def reference(self, inputs):
        if self.torch_fn is None:
            return self.numpy_fn(*inputs)
        import torch

        def tensor(a):  # float arrays as float64 (a float32 mask too), others as they are
            if not isinstance(a, np.ndarray):
                return a
            return torch.from_numpy(a.astype(np.float64) if a.dtype.kind == "f" else a)

        return self.torch_fn(*(tensor(a) for a in inputs)).resolve_conj().numpy()

    def cast(self, inputs):
        """The inputs as the kernel takes them: float64 arrays in the case's dtype."""
        return tuple(a.astype(self.dtype) if isinstance(a, np.ndarray) and a.dtype == np.float64 else a
                     for a in inputs)

    def run(self) -> float:
        """The relative error of the kernel against the reference; AssertionError past the bound,
        on a shape mismatch, or where finite and non-finite entries differ."""
        inputs = self.make()
        got = np.asarray(self.ours(*self.cast(inputs)))
        ref = self.reference(inputs)
        err = rel_err(got, ref)
        if not np.array_equal(np.isfinite(got), np.isfinite(ref)):
            raise AssertionError(f"{self.name}: finite and non-finite entries differ from the reference")
        if not err <= self.bound:
            raise AssertionError(f"{self.name}: relative L2 error {err:.3g} > {self.bound:.3g}")
        return err


def _rand(shape, seed, dtype=F32, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype).astype(np.float64)


def _tags(*names):
    return frozenset(n for n in names if n)


# ---------------------------------------------------------------- matmul.wgsl


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

    from .matmul import Q8Weight, dequantize_q8, q8_layout, quantize_q8

    def make():
        w = _rand((N, K), seed + 1, F32, 1 / math.sqrt(K))
        return _rand(lead + (K,), seed, F32), w, _rand(N, seed + 2, F32) if bias else None

    held = {}  # the weight quantized once (a benchmark calls these many times on one input)

    def ours(x, w, b):
        from ..gpu import GpuArray, get_runtime

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


# ---------------------------------------------------------------- attention.wgsl


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


# ---------------------------------------------------------------- fft.wgsl


def fft(op, shape, n=None, cplx=None, path=None, tags=(), seed=0):
    """torch.fft's (= numpy.fft's) op on seeded rows of `shape` (complex for fft/ifft/irfft unless cplx=False);
    bound 5e-6 * max(1, log2 n) relative L2 error."""
    import torch

    cplx = op in ("fft", "ifft", "irfft") if cplx is None else cplx

    def make():
        x = _rand(shape, seed)
        return (x + 1j * _rand(shape, seed + 100) if cplx else x), n

    length = n or (2 * (shape[-1] - 1) if op == "irfft" else shape[-1])
    return Case("fft", f"{op} {shape}{f' n={n}' if n else ''}{' real' if not cplx and op != 'rfft' else ''}"
                       f"{f' {path}' if path else ''}", make, lambda x, n: getattr(ops, op)(x, n, path=path),
                lambda x, n: getattr(torch.fft, op)(x, n), lambda x, n: getattr(np.fft, op)(x, n),
                5e-6 * max(1.0, math.log2(max(length, 1))), F32,
                _tags(*tags), ("GFLOP/s", 2.5 * math.prod(shape[:-1]) * length * max(1, math.log2(max(length, 2)))))


_SMOOTH = [1, 2, 3, 4, 5, 6, 8, 12, 16, 32, 64, 100, 128, 256, 320, 400, 512, 960, 1000, 1024, 1280, 2048, 4096]
_OTHER = [7, 14, 17, 22, 101, 998, 1009]  # Bluestein (primes, composites with a prime factor > 5)

FFT = [
    *[fft("fft", (2, n), tags=["selftest"] if n in (400, 1009, 1280) else ()) for n in _SMOOTH + _OTHER + [8192]],
    *[fft("ifft", (2, n)) for n in (1, 2, 3, 5, 7, 12, 17, 400, 1009, 1280)],
    *[fft("rfft", (3, n), tags=["selftest"] if n == 1280 else ())
      for n in (1, 2, 3, 4, 5, 6, 7, 8, 14, 22, 17, 100, 101, 320, 400, 998, 1009, 1280, 2048, 8192)],
    *[fft("irfft", (3, n // 2 + 1), n) for n in (1, 2, 3, 4, 5, 7, 9, 14, 22, 100, 101, 400, 998, 1280, 2047, 8192)],
    fft("fft", (4, 96), cplx=False), fft("ifft", (4, 35), cplx=False), fft("fft", (2, 10), 16, cplx=False),
    fft("fft", (2, 30), 17, cplx=False), fft("fft", (70000, 3)),  # rows past one grid dimension
    fft("fft", (3, 5, 400)), fft("ifft", (3, 5, 14)), fft("rfft", (3, 5, 320)), fft("irfft", (3, 5, 17)),
    fft("fft", (2, 1, 3, 7)), fft("irfft", (2, 9)), fft("irfft", (3, 2)),
    *[fft(op, (2, m), n) for op, m, n in [
        ("fft", 10, 16), ("fft", 16, 10), ("fft", 300, 1280), ("fft", 1300, 1280), ("ifft", 5, 9), ("ifft", 40, 11),
        ("rfft", 7, 12), ("rfft", 12, 7), ("rfft", 1280, 1000), ("rfft", 300, 1001), ("irfft", 641, 1000),
        ("irfft", 100, 1280), ("irfft", 5, 11), ("irfft", 9, 7), ("irfft", 3, 2),
        ("irfft", 1, 1), ("irfft", 2, 1), ("irfft", 4, 3)]],
    fft("irfft", (2, 641), 1280, tags=["selftest"]), fft("irfft", (1, 100, 641), 1280),  # Vocos' ISTFT head
    fft("fft", (1, 4099)), fft("irfft", (1, 2051), 4099),  # Bluestein past workgroup memory on most adapters
    # every length through one dispatch per stage (global memory), as longer rows run
    *[fft(op, (2, n), path="global", tags=["selftest"] if n == 400 and op == "fft" else ())
      for op in ("fft", "ifft", "rfft") for n in (2, 3, 12, 17, 400, 1009, 1280)],
    *[fft("irfft", (3, n // 2 + 1), n, path="global") for n in (2, 7, 400, 1280)],
    fft("irfft", (750, 641), 1280, tags=["bench"]), fft("irfft", (50, 641), 1280, tags=["quick"]),
]


# ---------------------------------------------------------------- norm.wgsl, heads.wgsl, elementwise.wgsl


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


# ---------------------------------------------------------------- shaders/lib, through the kernels that include them
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

    from . import convnext

    def make():
        return ((_rand((T, C), 1) + 3.0, _rand((T, C), 2) if resid else None, _rand(C, 3), _rand(C, 4))
                + ((_rand((convnext.KERNEL, C), 5, scale=0.4), _rand(C, 6)) if conv else (None, None)))

    def ours(r, y, g, b, w, cb):
        from ..gpu import get_runtime

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

    from .matmul import gemv_prologue

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
    from .matmul import gemv_prologue

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

TABLES = {"matmul": MATMUL, "attention": ATTENTION, "fft": FFT, "norm": NORM, "heads": HEADS,
          "elementwise": ELEMENTWISE, "lib": LIB}


def tagged(tag: str) -> list[Case]:
    return [c for table in TABLES.values() for c in table if tag in c.tags]
