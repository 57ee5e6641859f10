"""FFT family (shaders/fft.wgsl): fft, ifft, rfft, irfft along the last axis.

numpy.fft semantics (norm="backward"), float32 on the GPU. Lengths 2^a 3^b 5^c run natively
through Stockham stages of radix 2, 3, 4, 5; every other length goes through Bluestein
(chirp-z) on a smooth length M >= 2n-1. Real transforms of even n run a half-length complex
transform with a pre/post twiddle pass fused into the same kernel.

A row that fits in workgroup memory is transformed by one workgroup, all stages (and both
Bluestein transforms) in one dispatch for the whole batch; longer rows run one dispatch per
stage through global memory. Twiddles, chirps and the Bluestein filter spectrum are computed
in float64 on the host and uploaded once per length (cached per runtime).

GPU face: complex data is a float32 GpuArray (..., n, 2) (re, im interleaved), real data a
float32 GpuArray (..., n). GpuArray inputs of fft/ifft/irfft must be complex (last dim 2);
rfft takes real ones. numpy inputs may be real or complex (complex128 -> complex64, float64
-> float32); numpy results are complex64 (fft, ifft, rfft) or float32 (irfft).
"""

from __future__ import annotations

import math
import operator
import weakref

import numpy as np

from ..gpu import GpuArray, Layout, Runtime
from .common import runtime

__all__ = ["fft", "ifft", "rfft", "irfft"]

_MAX_STAGES = 16  # size of Params.st in the shader
_MAX_REGS = 32  # butterfly outputs one thread may hold across a barrier in fft_row
_MAX_WG = 256  # threads per workgroup in fft_row
PATHS = ("workgroup", "global")  # one dispatch per row (fits workgroup memory) or one per stage

# in_kind / out_kind / flags of shaders/fft.wgsl
PARAMS = Layout(f"n nl m istride no ostride rows in_kind out_kind flags scale:f nstages chirp_off filt_off rtw_off "
                f"_pad st[{4 * _MAX_STAGES}]")
_IN_REAL, _IN_COMPLEX, _IN_PAIRS, _IN_HALF, _IN_HERM = range(5)
_OUT_COMPLEX, _OUT_REAL, _OUT_RFFT, _OUT_BLUE_MID = range(4)
_CONJ_IN, _CONJ_OUT, _CHIRP_IN, _CHIRP_OUT = 1, 2, 4, 8


# ---------------------------------------------------------------- plans (host side, float64)


def _radixes(m: int) -> list[int] | None:
    """Stage radixes of a length 2^a 3^b 5^c (radix 4 where it can), None for other lengths."""
    counts = {}
    for f in (2, 3, 5):
        counts[f] = 0
        while m % f == 0:
            m //= f
            counts[f] += 1
    if m != 1:
        return None
    a = counts[2]
    return [4] * (a // 2) + [2] * (a % 2) + [3] * counts[3] + [5] * counts[5]


def _pow2(m: int) -> int:
    return 1 << max(0, m - 1).bit_length()


def _next_smooth(m: int) -> int:
    while _radixes(m) is None:
        m += 1
    return m


def _stage_twiddles(m: int, radixes: list[int]):
    """[(R, Ns, offset)] and the table: w^(r k), w = exp(-2 pi i/(Ns R)), k < Ns, 1 <= r < R."""
    stages, parts, off, ns = [], [], 0, 1
    for r in radixes:
        k = np.arange(ns)[:, None]
        rr = np.arange(1, r)[None, :]
        ang = -2.0 * np.pi * ((k * rr) % (ns * r)) / (ns * r)  # reduced exactly, then float64
        parts.append(np.exp(1j * ang).ravel())
        stages.append((r, ns, off))
        off += ns * (r - 1)
        ns *= r
    return stages, parts


class _Plan:
    """Everything fixed by (kind, n): stage list, uploaded table, workgroup-path shape."""

    def __init__(self, rt: Runtime, kind: str, n: int):
        self.kind, self.n = kind, n
        self.L = n // 2 if kind == "r" else n  # length of the complex transform
        radixes = _radixes(self.L)
        self.blue = radixes is None
        self.M = _next_smooth(2 * self.L - 1) if self.blue else self.L
        if self.blue:
            radixes = _radixes(self.M)
        self.stages, parts = _stage_twiddles(self.M, radixes)
        if len(self.stages) > _MAX_STAGES:  # pragma: no cover - needs M > 4^16
            raise ValueError(f"fft: length {n} needs {len(self.stages)} stages (at most {_MAX_STAGES})")
        off = sum(len(p) for p in parts)
        self.chirp_off = self.filt_off = self.rtw_off = 0
        if self.blue:
            L, M = self.L, self.M
            k = np.arange(L, dtype=np.int64)
            chirp = np.exp(-1j * np.pi * ((k * k) % (2 * L)) / L)  # k^2 mod 2L keeps the angle exact
            b = np.zeros(M, np.complex128)
            b[:L] = np.conj(chirp)
            b[M - L + 1:] = np.conj(chirp[1:])[::-1]
            self.chirp_off, self.filt_off = off, off + L
            parts += [chirp, np.fft.fft(b)]
            off += L + M
        if kind == "r":
            self.rtw_off = off
            parts.append(np.exp(-2j * np.pi * np.arange(self.L + 1) / n))
            off += self.L + 1
        table = np.concatenate(parts + [np.zeros(1, np.complex128)])  # never an empty binding
        self.table = rt.upload(np.stack([table.real, table.imag], -1).astype(np.float32))
        self.wg = self._workgroup_shape(rt)

    def _workgroup_shape(self, rt: Runtime):
        """(threads, registers, row buffer) for fft_row, or None when the row must go through global memory."""
        M = self.M
        limit = rt.limits.get("max-compute-workgroup-storage-size", 16384)
        if M * 8 > limit:
            return None
        cap = min(_MAX_WG, int(rt.limits.get("max-compute-invocations-per-workgroup", 256)),
                  int(rt.limits.get("max-compute-workgroup-size-x", 256)))
        # sizes rounded to powers of two so that few pipelines cover all lengths
        most = max([M // r for r, _, _ in self.stages] + [1])
        threads = min(max(64, _pow2(most)), 1 << (cap.bit_length() - 1))
        regs = max([-(-(M // r) // threads) * r for r, _, _ in self.stages] + [1])
        if regs > _MAX_REGS:
            return None
        return threads, max(8, _pow2(regs)), min(max(64, _pow2(M)), int(limit) // 8)


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _plan(rt: Runtime, kind: str, n: int) -> _Plan:
    plans = _PLANS.setdefault(rt, {})
    plan = plans.get((kind, n))
    if plan is None:
        plan = plans[(kind, n)] = _Plan(rt, kind, n)
    return plan


# ---------------------------------------------------------------- dispatch


def _params(rt, plan, rows, *, nl, m, istride, in_kind, no, ostride, out_kind, flags, scale, stages):
    """The shader's Params uniform; `stages` fills st[] (all of them for fft_row, one for fft_stage)."""
    st = [v for s in stages for v in (s[0], s[1], s[2], 0)]
    st += [0] * (4 * _MAX_STAGES - len(st))
    return rt.uniform(PARAMS, n=plan.M, nl=nl, m=m, istride=istride, no=no, ostride=ostride, rows=rows,
                      in_kind=in_kind, out_kind=out_kind, flags=flags, scale=scale, nstages=len(stages),
                      chirp_off=plan.chirp_off, filt_off=plan.filt_off, rtw_off=plan.rtw_off, _pad=0, st=st)


def _one_aliases(m: int = 1, regs: int = 1) -> dict:
    return {"Row": f"array<vec2<f32>, {m}>", "Regs": f"array<vec2<f32>, {regs}>"}


def _execute(rt, plan: _Plan, src: GpuArray, out: GpuArray, rows: int, *, m, istride, in_kind,
             no, ostride, out_kind, conj_in=False, conj_out=False, scale=1.0, path=None):
    """Transform `rows` rows of src into out (one submit); path "global" forces one dispatch per
    stage on rows that would fit a workgroup."""
    if path is not None and path not in PATHS:
        raise ValueError(f"fft: path must be one of {PATHS}, got {path!r}")
    M = plan.M
    scale = scale / M if plan.blue else scale
    flags_in = (_CONJ_IN if conj_in else 0) | (_CHIRP_IN if plan.blue else 0)
    flags_out = (_CONJ_OUT if conj_out else 0) | (_CHIRP_OUT if plan.blue else 0)
    load = dict(nl=plan.L, m=m, istride=istride, in_kind=in_kind)
    store = dict(no=no, ostride=ostride, out_kind=out_kind)
    inner_in = dict(nl=M, m=M, istride=2 * M, in_kind=_IN_COMPLEX)
    inner_out = dict(no=M, ostride=2 * M, out_kind=_OUT_COMPLEX)

    with rt.recorder("fft") as rec:
        if plan.wg is not None and (path != "global" or not plan.stages):
            threads, regs, row = plan.wg
            pipe = rt.pipeline("fft", "fft_row", constants={"WG": threads}, aliases=_one_aliases(row, regs))
            u = _params(rt, plan, rows, **load, **store, flags=flags_in | flags_out, scale=scale,
                        stages=plan.stages)
            rec.dispatch(pipe, [src, out, plan.table, u], rt.grid(rows), label="fft_row")
            return

        # global-memory path: one dispatch per stage, ping-pong between two temporaries
        pipe = rt.pipeline("fft", "fft_stage", aliases=_one_aliases())
        temps = [rt.empty((rows, M, 2)), rt.empty((rows, M, 2))]
        post = out_kind == _OUT_RFFT
        passes = [plan.stages] * (2 if plan.blue else 1)
        cur, t = src, 0
        for p_i, stages in enumerate(passes):
            first_pass, last_pass = p_i == 0, p_i == len(passes) - 1
            for s_i, stage in enumerate(stages):
                first = first_pass and s_i == 0
                last_of_pass = s_i == len(stages) - 1
                final = last_pass and last_of_pass
                ld = load if first else inner_in
                flags = flags_in if first else 0
                if final and not post:
                    st, dst = store, out
                    flags |= flags_out
                elif final:  # finished half-length spectrum Z, the rfft post-pass follows
                    st, dst = dict(no=plan.L, ostride=2 * M, out_kind=_OUT_COMPLEX), temps[t]
                    flags |= flags_out
                elif last_of_pass:  # Bluestein: first transform done, multiply by the filter
                    st, dst = dict(no=M, ostride=2 * M, out_kind=_OUT_BLUE_MID), temps[t]
                else:
                    st, dst = inner_out, temps[t]
                u = _params(rt, plan, rows, **ld, **st, flags=flags, scale=scale if final else 1.0,
                            stages=[stage])
                groups = rt.grid(-(-rows * (M // stage[0]) // 256))
                rec.dispatch(pipe, [cur, dst, plan.table, u], groups, label=f"fft_stage{stage[0]}")
                if dst is not out:
                    cur, t = dst, 1 - t
        if post:
            h = plan.L
            u = _params(rt, plan, rows, nl=h, m=h, istride=2 * M, in_kind=_IN_COMPLEX, no=h + 1,
                        ostride=2 * (h + 1), out_kind=_OUT_RFFT, flags=0, scale=1.0, stages=[])
            pipe = rt.pipeline("fft", "rfft_post", aliases=_one_aliases())
            rec.dispatch(pipe, [cur, out, plan.table, u], rt.grid(-(-rows * (h + 1) // 256)), label="rfft_post")


# ---------------------------------------------------------------- input checking


def _length(name: str, n, default: int) -> int:
    if n is None:
        return default
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"{name}: n must be an integer, got {type(n).__name__}") from None
    if n < 1:
        raise ValueError(f"{name}: invalid number of FFT data points n={n} (must be >= 1)")
    return n


def _input(name: str, x, want: str):
    """(GpuArray, is_complex, batch shape, row length, row stride in f32 words, GPU face).

    want: "any" (numpy real or complex; GpuArray complex), "real" (rfft), "complex" (irfft).
    """
    if isinstance(x, GpuArray):
        if x.dtype != np.float32:
            kind = "float16" if x.dtype == np.float16 else str(x.dtype)
            raise TypeError(f"{name}: GpuArray dtype {kind} is not supported; the FFTs run in float32 only")
        if x.size == 0:
            raise ValueError(f"{name}: input of shape {x.shape} is empty")
        if want == "real":
            if x.ndim < 1:
                raise ValueError(f"{name}: input must have at least one dimension")
            return x, False, x.shape[:-1], x.shape[-1], x.shape[-1], True
        if x.ndim < 2 or x.shape[-1] != 2:
            raise ValueError(f"{name}: a GpuArray input is complex data of shape (..., n, 2), got {x.shape}")
        return x, True, x.shape[:-2], x.shape[-2], 2 * x.shape[-2], True

    if not (hasattr(x, "__array__") or isinstance(x, (list, tuple, float, int, complex))):
        raise TypeError(f"{name}: expected a numpy array or GpuArray, got {type(x).__name__}")
    a = np.asarray(x)
    if a.dtype == np.float16:
        raise TypeError(f"{name}: float16 is not supported; the FFTs run in float32 only")
    if a.dtype.kind not in "biufc":
        raise TypeError(f"{name}: dtype {a.dtype} is not supported (real or complex numbers)")
    if a.ndim == 0:
        raise ValueError(f"{name}: input must have at least one dimension")
    if a.size == 0:
        raise ValueError(f"{name}: input of shape {a.shape} is empty")
    cplx = a.dtype.kind == "c"
    if want == "real" and cplx:
        raise TypeError(f"{name}: input must be real, got {a.dtype} (use fft for complex data)")
    rt = runtime()
    m = a.shape[-1]
    if cplx or want == "complex":
        data = np.ascontiguousarray(a, np.complex64).view(np.float32).reshape(a.shape + (2,))
        return rt.upload(data), True, a.shape[:-1], m, 2 * m, False
    return rt.upload(np.ascontiguousarray(a, np.float32)), False, a.shape[:-1], m, m, False


def _alloc(name: str, rt: Runtime, plan: _Plan, shape, rows: int) -> GpuArray:
    need = max(4 * math.prod(shape), 8 * rows * plan.M)
    if need > rt.max_binding:
        raise ValueError(f"{name}: {need} bytes per buffer exceeds this adapter's storage binding limit "
                         f"({rt.max_binding}); split the batch")
    return rt.empty(shape, np.float32)


def _complex_result(out: GpuArray, gpu_face: bool):
    if gpu_face:
        return out
    return out.numpy().view(np.complex64).reshape(out.shape[:-1])


# ---------------------------------------------------------------- public functions


def _c2c(name: str, x, n, inverse: bool, path):
    g, cplx, batch, m_in, istride, gpu_face = _input(name, x, "any")
    n = _length(name, n, m_in)
    rt = runtime()
    rows = math.prod(batch)
    plan = _plan(rt, "c", n)
    out = _alloc(name, rt, plan, batch + (n, 2), rows)
    _execute(rt, plan, g, out, rows, m=min(m_in, n), istride=istride,
             in_kind=_IN_COMPLEX if cplx else _IN_REAL, no=n, ostride=2 * n, out_kind=_OUT_COMPLEX,
             conj_in=inverse, conj_out=inverse, scale=1.0 / n if inverse else 1.0, path=path)
    return _complex_result(out, gpu_face)


def fft(x, n=None, *, path: str | None = None):
    """Discrete Fourier transform along the last axis (numpy.fft.fft, norm="backward").

    x: (..., m) real or complex numpy, or GpuArray (..., m, 2). n crops or zero-pads rows to n.
    Returns complex64 (..., n), or GpuArray (..., n, 2) for a GpuArray input. path: None (by
    length) or one of PATHS ("global" forces one dispatch per stage); rfft/irfft take it too.
    """
    return _c2c("fft", x, n, False, path)


def ifft(x, n=None, *, path: str | None = None):
    """Inverse DFT along the last axis, scaled by 1/n (numpy.fft.ifft). Shapes as fft."""
    return _c2c("ifft", x, n, True, path)


def rfft(x, n=None, *, path: str | None = None):
    """DFT of real rows (numpy.fft.rfft): (..., m) real -> complex64 (..., n//2 + 1).

    GpuArray face: float32 (..., m) -> GpuArray (..., n//2 + 1, 2). Complex input: TypeError.
    """
    g, _, batch, m_in, istride, gpu_face = _input("rfft", x, "real")
    n = _length("rfft", n, m_in)
    rt = runtime()
    rows = math.prod(batch)
    no = n // 2 + 1
    plan = _plan(rt, "r" if n % 2 == 0 else "c", n)
    out = _alloc("rfft", rt, plan, batch + (no, 2), rows)
    if n % 2 == 0:  # half-length complex transform of (x[2k], x[2k+1]) plus the post-pass
        _execute(rt, plan, g, out, rows, m=min(m_in, n), istride=istride, in_kind=_IN_PAIRS,
                 no=no, ostride=2 * no, out_kind=_OUT_RFFT, path=path)
    else:
        _execute(rt, plan, g, out, rows, m=min(m_in, n), istride=istride, in_kind=_IN_REAL,
                 no=no, ostride=2 * no, out_kind=_OUT_COMPLEX, path=path)
    return _complex_result(out, gpu_face)


def irfft(x, n=None, *, path: str | None = None):
    """Inverse of rfft (numpy.fft.irfft): (..., m) complex -> float32 (..., n), n = 2(m-1) by default.

    Only the first n//2 + 1 bins are used (zero-padded if fewer); the imaginary parts of the
    DC bin (and of the Nyquist bin for even n) are ignored, as numpy does.
    GpuArray face: (..., m, 2) -> GpuArray (..., n).
    """
    g, _, batch, m_in, istride, gpu_face = _input("irfft", x, "complex")
    n = _length("irfft", n, 2 * (m_in - 1))
    if n < 1:  # the default for m = 1
        raise ValueError(f"irfft: invalid number of data points n={n}; pass n >= 1 for {m_in} input bin(s)")
    rt = runtime()
    rows = math.prod(batch)
    plan = _plan(rt, "r" if n % 2 == 0 else "c", n)
    out = _alloc("irfft", rt, plan, batch + (n,), rows)
    if n % 2 == 0:  # z = x[0::2] + i x[1::2] from the half-length inverse; written as n reals
        h = n // 2
        _execute(rt, plan, g, out, rows, m=min(m_in, h + 1), istride=istride, in_kind=_IN_HALF,
                 no=h, ostride=n, out_kind=_OUT_COMPLEX, conj_in=True, conj_out=True, scale=1.0 / n, path=path)
    else:
        _execute(rt, plan, g, out, rows, m=min(m_in, n // 2 + 1), istride=istride, in_kind=_IN_HERM,
                 no=n, ostride=n, out_kind=_OUT_REAL, conj_in=True, conj_out=True, scale=1.0 / n, path=path)
    return out if gpu_face else out.numpy()
