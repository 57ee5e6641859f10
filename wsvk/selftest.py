"""Run every kernel once on the selected adapter against a float64 numpy reference.

`python -m wsvk info --selftest` prints one line per kernel: the first thing to ask a user
with an unusual GPU for.
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np

from . import ops
from .ops.matmul import tile_variant
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


def _conv1d(x, w, b, pad, dil):
    """torch's conv1d (cross-correlation), stride 1, zero padding, in float64 numpy."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad)))
    ks = w.shape[-1]
    win = np.lib.stride_tricks.sliding_window_view(xp, dil * (ks - 1) + 1, axis=-1)[..., ::dil]
    return np.einsum("bctk,ock->bot", win, w) + b[:, None]


def _ln(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _rope(P, dh):
    """[cos; sin] [2P, dh] as whisperspeech's Rotary builds them (base 10000, halves repeated)."""
    freqs = np.arange(P)[:, None] / 10000.0 ** (np.arange(0, dh, 2) / dh)[None]
    ang = np.concatenate([freqs, freqs], 1)
    return np.concatenate([np.cos(ang), np.sin(ang)]).astype(np.float32)


def _split_rope(x, H, table):
    """x [L, 3W] -> [3, 1, H, L, Dh], q and k rotated (rope_rotate with rotate_half)."""
    L, W = x.shape[0], x.shape[1] // 3
    cos, sin = table[:L].astype(np.float64)[:, None], table[len(table) // 2:][:L].astype(np.float64)[:, None]
    outs = []
    for p in range(3):
        y = x[:, p * W:(p + 1) * W].reshape(L, H, W // H)
        if p < 2:
            h = y.shape[-1] // 2
            y = y * cos + np.concatenate([-y[..., h:], y[..., :h]], -1) * sin
        outs.append(y.transpose(1, 0, 2)[None])
    return np.stack(outs)


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
    x150 = r(150, 97)

    def tiled_big():
        with tile_variant(128):
            return ops.linear(x150, w, b, gelu=True)

    yield "linear tiled 128x128", tiled_big, lambda: _gelu(x150 @ w.T + b), 1e-5
    xc, wc, bc = r(2, 13, 40), r(11, 13, 3), r(11)
    yield ("conv1d (dilated, padded)", lambda: ops.conv1d(xc, wc, bc, padding=2, dilation=2),
           lambda: _conv1d(xc, wc, bc, 2, 2), 1e-5)
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
    qkv, dh = r(29, 3 * 64), 16
    yield ("split_heads + RoPE", lambda: np.stack(ops.split_heads(qkv, 4, 3, rope=_rope(29, dh), rope_parts=2)),
           lambda: _split_rope(qkv, 4, _rope(29, dh)), 1e-6)
    yield "merge_heads", lambda: ops.merge_heads(q[:1]), lambda: q[0].transpose(1, 0, 2).reshape(19, -1), 1e-7
    if f16:
        h = lambda a: a.astype(np.float16)  # noqa: E731
        yield "linear gemv f16", lambda: ops.linear(h(x1), h(w), h(b)), lambda: x1 @ w.T + b, 3e-3
        yield "linear tiled f16", lambda: ops.linear(h(x9), h(w), h(b)), lambda: x9 @ w.T + b, 3e-3
        yield "attention f16", lambda: ops.attention(h(q), h(k), h(v)), lambda: _softmax_attn(q, k, v), 3e-3
        yield "layer_norm f16", lambda: ops.layer_norm(h(x9), h(g), h(gb)), lambda: _ln(x9, g, gb), 3e-3


def resident_cases(rt):
    """The resident modules' own kernels (decoder, heads, conv1d, istft) against CPU torch on
    random models of whisperspeech's "tiny" presets: teacher-forced logits of a T2S and an S2A
    chunk (encoder + 4 decode steps) and 0.4 s of Vocos audio. Bounds follow WSVK_PRECISION."""
    import torch

    from .models import random_s2a, random_t2s, random_vocos
    from .resident import ResidentS2A, ResidentT2S
    from .resident_vocos import ResidentVocos

    f16 = rt.weight_dtype == np.float16
    g = torch.Generator().manual_seed(0)

    def t2s():
        m = random_t2s("tiny")
        res = ResidentT2S(m)
        tt = torch.randint(0, m.ttoks_codes, (1, m.ttoks_len), generator=g)
        langs, cpss = torch.tensor([0]), torch.tensor([15])
        res.start_chunk(tt, langs, cpss)
        xenc, xpos, cps = m.run_encoder(tt, langs, cpss)
        seq = [m.stoks_codes, 5, 17, 3]
        ref = [m(None, None, None, None, torch.tensor([[t]]), in_stoks_positions=torch.tensor([i]), loss=None,
                 xenc=xenc, xenc_positions=xpos, cps_emb=cps)[0] for i, t in enumerate(seq)]
        return torch.cat([res.logits(t, i) for i, t in enumerate(seq)]), torch.cat(ref)

    def s2a():
        m = random_s2a("tiny")
        res = ResidentS2A(m)
        stoks = torch.randint(0, m.stoks_codes - 1, (1, m.stoks_len), generator=g)
        spk = torch.randn(1, m.spk_width, generator=g)
        res.start_chunk(stoks, spk)
        xenc, xpos, _ = m.run_encoder(stoks, spk)
        cols = torch.randint(0, m.codes, (4, m.quantizers), generator=g)
        cols[0] = m.codes + 1  # the start column
        ref = [m(None, cols[i].reshape(1, -1, 1), None, noloss=True, xenc=xenc, xenc_positions=xpos,
                 atoks_positions=torch.tensor([i])) for i in range(4)]
        return torch.cat([res.logits(cols[i].tolist(), i) for i in range(4)]), torch.cat(ref)

    def vocos():
        v = random_vocos()
        codes = torch.randint(0, 1024, (1, 4, 30), generator=g)
        ref = v.decode(v.codes_to_features(codes.permute(1, 0, 2)), bandwidth_id=torch.tensor(1))
        return ResidentVocos(v).decode_codes(codes, bandwidth_id=1), ref

    logit_bound = 2e-3 if f16 else 2e-5  # f16: weights/KV rounded to 2^-11 (tests/test_precision.py)
    for name, pair, bound in (("resident T2S (tiny)", t2s, logit_bound), ("resident S2A (tiny)", s2a, logit_bound),
                              ("resident Vocos", vocos, 1e-2 if f16 else 1e-5)):  # 1e-2: SNR 40 dB
        cached = {}

        def both(pair=pair, cached=cached):
            if not cached:
                with torch.no_grad():
                    cached["got"], cached["ref"] = (t.numpy() for t in pair())
            return cached

        yield name, lambda both=both: both()["got"], lambda both=both: both()["ref"].astype(np.float64), bound


def run(out=print) -> bool:
    """Print pass/fail per kernel; True when all pass."""
    rt = get_runtime()
    out(f"selftest on {rt.info['name']} ({rt.info['backend']}, {rt.info['type']})")
    rng = np.random.default_rng(1234)
    ok = True
    for name, ours, ref, bound in itertools.chain(cases(rng, rt.has_f16), resident_cases(rt)):
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
