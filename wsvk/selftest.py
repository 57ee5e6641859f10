"""Run every kernel once on the selected adapter against a float64 numpy reference.

`python -m wsvk info --selftest` prints one line per kernel: the first thing to ask a user
with an unusual GPU for.
"""

from __future__ import annotations

import time

import numpy as np

from .gpu import get_runtime
from .kernels import cases
from .kernels.cases import rel_err


def resident_cases(rt):
    """The resident modules' own kernels (decoder, heads, conv1d, istft) against CPU torch on
    random models of whisperspeech's "tiny" presets: teacher-forced logits of a T2S and an S2A
    chunk (encoder + 4 decode steps) and 0.4 s of Vocos audio. Bounds follow WSVK_PRECISION (under
q8 Vocos stays f16, as on a shader-f16 adapter's f16)."""
    import torch

    from .resident import ResidentS2A, ResidentT2S, ResidentVocos
    from .tts.models import random_s2a, random_t2s, random_vocos

    precision = rt.precision()[0]
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

    # f16: weights/KV rounded to 2^-11 (tests/test_precision.py); q8: the gate's 30 dB
    logit_bound = {"f32": 2e-5, "f16": 2e-3, "q8": 10 ** (-30 / 20)}[precision]
    for name, pair, bound in (("resident T2S (tiny)", t2s, logit_bound), ("resident S2A (tiny)", s2a, logit_bound),
                              ("resident Vocos", vocos, 1e-2 if f16 else 1e-5)):  # 1e-2: SNR 40 dB
        cached = {}

        def both(pair=pair, cached=cached):
            if not cached:
                with torch.no_grad():
                    cached["got"], cached["ref"] = (t.numpy() for t in pair())
            return cached

        yield name, lambda both=both: both()["got"], lambda both=both: both()["ref"].astype(np.float64), bound


def gate_checks(rt):
    """The precision gate (wsvk.quality) at every lower precision the adapter runs: one check
    per decoder, kind of weights and precision (one skipped check on a software adapter)."""
    from . import quality

    precisions = ["q8"]  # f16: the resident T2S/S2A checks above hold it to 2e-3
    if rt.info["type"] == "CPU":  # minutes on a software adapter; the tests run the gate there
        return [("gate q8", lambda: (None, "not run on a software adapter (tests/test_precision.py runs it)"))]
    results = {}

    def result(i):
        if not results:
            results.update(enumerate(quality.selftest_gate(precisions)))
        r = results[i]
        return r.passed, f"SNR {r.snr_db:.1f} dB, top-1 {100 * r.top1:.1f}% over {r.steps} steps"

    names = [f"gate {d} {w} {p}" for d in ("t2s", "s2a") for w in ("random", "trained-like") for p in precisions]
    return [(name, lambda i=i: result(i)) for i, name in enumerate(names)]


def _check(ours, ref, bound) -> tuple[bool, str]:
    err = rel_err(ours(), ref())
    return bool(np.isfinite(err) and err <= bound), f"rel err {err:.2e} (bound {bound:.0e})"


def run(out=print) -> bool:
    """Print pass/fail per kernel variant (the case tables' "selftest" cases), per resident
    module and per gate check; True when none fails. A check returns (passed, detail), passed
    None when it was skipped: printed as SKIP with its reason, it neither passes nor fails."""
    rt = get_runtime()
    out(f"selftest on {rt.info['name']} ({rt.info['backend']}, {rt.info['type']})")
    precision, why = rt.precision()
    out(f"precision {precision} ({why}); the q8 gate: logits SNR >= 30 dB and top-1 >= 98% against CPU f32")
    checks = [(c.name, lambda c=c: (True, f"rel err {c.run():.2e} (bound {c.bound:.0e})"))
              for c in cases.tagged("selftest") if not c.needs_f16 or rt.has_f16]
    checks += [(name, lambda o=ours, r=ref, b=bound: _check(o, r, b)) for name, ours, ref, bound in resident_cases(rt)]
    checks += gate_checks(rt)
    ok, skipped = True, 0
    for name, check in checks:
        t0 = time.perf_counter()
        try:
            passed, detail = check()
        except Exception as e:  # a kernel that crashes or misses its bound is a failure to report
            passed, detail = False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if passed is None:
            skipped += 1
        else:
            ok &= bool(passed)
        mark = "SKIP" if passed is None else "PASS" if passed else "FAIL"
        out(f"  {mark}  {name:<40} {detail}  {1e3 * (time.perf_counter() - t0):.0f} ms")
    out(f"pipelines: {len(rt.built_pipelines())} created in {rt.pipeline_seconds:.1f} s (the first use of each "
        "compiles it; a synthesis compiles only its own)")
    if not ok:
        out("SOME KERNELS FAIL: please report this output with `python -m wsvk info`")
    else:
        out("all kernels pass" + (f" ({skipped} check{'s' * (skipped > 1)} skipped)" if skipped else ""))
    return ok
