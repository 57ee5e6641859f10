"""Run every kernel once on the selected adapter against a float64 numpy reference.

`python -m wsvk info --selftest` prints one line per kernel: the first thing to ask a user
with an unusual GPU for.
"""

from __future__ import annotations

import math
import time

import numpy as np

from . import ops
from .runtime import get_runtime


def _rel(got, ref) -> float:
    got, ref = np.asarray(got, np.complex128), np.asarray(ref, np.complex128)
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


def _gelu(v):
    return 0.5 * v * (1 + np.vectorize(math.erf)(v / math.sqrt(2)))


def _softmax_attn(q, k, v, causal=False):
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def _ln(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def cases(rng, f16: bool):
    """(name, ours, reference, bound) for each kernel variant; inputs are float64."""
    r = lambda *s: rng.standard_normal(s)  # noqa: E731
    x1, x9, w, b = r(1, 97), r(37, 97), r(131, 97), r(131)
    g, gb = r(97), r(97)
    q, k, v = r(2, 3, 19, 64), r(2, 3, 23, 64), r(2, 3, 23, 64)
    qd, kd, vd = r(1, 6, 1, 64), r(1, 6, 700, 64), r(1, 6, 700, 64)
    sig, cplx = r(3, 1280), r(2, 400) + 1j * r(2, 400)
    long, prime = r(8192), r(2, 1009) + 1j * r(2, 1009)
    yield "axpy", lambda: ops.axpy(x9, x9, 0.5), lambda: 1.5 * x9, 1e-6
    yield "linear gemv (M=1)", lambda: ops.linear(x1, w, b), lambda: x1 @ w.T + b, 1e-5
    yield "linear gemv gelu", lambda: ops.linear(x1, w, b, gelu=True), lambda: _gelu(x1 @ w.T + b), 1e-5
    yield "linear tiled", lambda: ops.linear(x9, w, b), lambda: x9 @ w.T + b, 1e-5
    yield "matmul batched", lambda: ops.matmul(q, np.swapaxes(k, -1, -2)), lambda: q @ np.swapaxes(k, -1, -2), 1e-5
    yield "attention prefill", lambda: ops.attention(q, k, v), lambda: _softmax_attn(q, k, v), 3e-5
    yield "attention causal", lambda: ops.attention(q, q, q, causal=True), lambda: _softmax_attn(q, q, q, True), 3e-5
    yield "attention decode", lambda: ops.attention(qd, kd, vd), lambda: _softmax_attn(qd, kd, vd), 3e-5
    yield "layer_norm", lambda: ops.layer_norm(x9, g, gb), lambda: _ln(x9, g, gb), 1e-5
    yield "fft 1280 (radix 2/4/5)", lambda: ops.fft(sig), lambda: np.fft.fft(sig), 5e-5
    yield "fft 400 (workgroup)", lambda: ops.fft(cplx), lambda: np.fft.fft(cplx), 5e-5
    yield "fft 8192 (global stages)", lambda: ops.fft(long), lambda: np.fft.fft(long), 7e-5
    yield "fft 1009 (Bluestein)", lambda: ops.fft(prime), lambda: np.fft.fft(prime), 5e-5
    yield "rfft 1280", lambda: ops.rfft(sig), lambda: np.fft.rfft(sig), 5e-5
    yield "irfft 641->1280", lambda: ops.irfft(np.fft.rfft(sig)), lambda: sig, 5e-5
    if f16:
        h = lambda a: a.astype(np.float16)  # noqa: E731
        yield "linear gemv f16", lambda: ops.linear(h(x1), h(w), h(b)), lambda: x1 @ w.T + b, 3e-3
        yield "linear tiled f16", lambda: ops.linear(h(x9), h(w), h(b)), lambda: x9 @ w.T + b, 3e-3
        yield "attention f16", lambda: ops.attention(h(q), h(k), h(v)), lambda: _softmax_attn(q, k, v), 3e-3
        yield "layer_norm f16", lambda: ops.layer_norm(h(x9), h(g), h(gb)), lambda: _ln(x9, g, gb), 3e-3


def run(out=print) -> bool:
    """Print pass/fail per kernel; True when all pass."""
    rt = get_runtime()
    out(f"selftest on {rt.info['name']} ({rt.info['backend']}, {rt.info['type']})")
    rng = np.random.default_rng(1234)
    ok = True
    for name, ours, ref, bound in cases(rng, rt.has_f16):
        t0 = time.perf_counter()
        try:
            got = ours()
            err = _rel(got, ref())
            passed = bool(np.isfinite(err) and err <= bound)
            detail = f"rel err {err:.2e} (bound {bound:.0e})"
        except Exception as e:  # a kernel that crashes is a failure to report, not a traceback
            passed, detail = False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ok &= passed
        out(f"  {'PASS' if passed else 'FAIL'}  {name:<26} {detail}  {1e3 * (time.perf_counter() - t0):.0f} ms")
    out("all kernels pass" if ok else "SOME KERNELS FAIL: please report this output with `python -m wsvk info`")
    return ok
