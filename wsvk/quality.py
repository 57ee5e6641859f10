"""The precision gate: what f16 and 8-bit weights do to the resident decoders' logits.

Each decoder is teacher-forced over a chunk (its encoder pass, then one step per position with
given tokens) on the GPU at a precision and on the CPU in float32 (whisperspeech's own model,
the reference), and the logits are compared: SNR in dB over all of them, and how often the two
agree on the most likely token (where there is one: see TIE). A precision passes at GATE_SNR_DB
and GATE_TOP1.

Two kinds of weights: the model's own (random in the tests: N(0, 1/fan_in), the scale of a
trained layer), and `trained_like`: heavy-tailed with a few input channels 20x the rest, as
trained transformers have (the outlier features that break per-tensor 8-bit scales). Per-block
scales along K would let an outlier coarsen every block it falls in: q8 divides each input
channel by its RMS first (kernels/matmul.py).

Used by tests/test_precision.py, `python -m wsvk info --selftest` (small models) and
scripts/bench_step.py --gate (the released shapes, whole chunks: too slow for a software adapter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

GATE_SNR_DB = 30.0
# Top-1 agreement: 99% is the aim, met by T2S (100%) and by S2A over whole chunks of trained-like
# weights (99.2%), not always by S2A on shorter chunks (98.7% over 236 rows) or on random weights,
# whose S2A logits are far sharper than a trained model's (a spread of ~50 over 1026 codes): there
# 8-bit noise at ~50 dB moves ~1.5% of the argmaxes whatever the format (blocks of 16 or 32, column
# scales: 98.6-99.7% measured). The gate holds the 98% that every case keeps.
GATE_TOP1 = 0.98
# Rows whose two most likely tokens are within TIE of each other's probability at the sampling
# temperature have no top-1 to agree on: the sampler draws either about as often whatever their
# order. Random weights give flat logits with many such rows (1024 codes: ~1.5% of rows within
# 8-bit weights' noise of a tie), so counting them would measure luck, not the format.
TIE = 0.05
SAMPLING_T = 0.7  # whisperspeech's default temperature for both decoders
OUTLIER_SHARE = 1 / 256  # of a matrix's input channels made outliers by trained_like (at least one)
OUTLIER_GAIN = 20.0


@dataclass(frozen=True)
class GateResult:
    decoder: str     # "t2s" or "s2a"
    weights: str     # "random" or "trained-like"
    precision: str
    steps: int
    snr_db: float
    top1: float      # share of the rows (step x quantizer) with a top-1 whose argmax agrees with f32's
    ties: int        # rows left out of top1: f32's two best within TIE of each other
    top1_all: float  # the share over every row, ties included

    @property
    def passed(self) -> bool:
        return self.snr_db >= GATE_SNR_DB and self.top1 >= GATE_TOP1

    def line(self) -> str:
        return (f"{self.decoder} {self.weights:<12} {self.precision:<4} {self.steps:>5} steps  SNR {self.snr_db:6.1f} dB  "
                f"top-1 {100 * self.top1:6.2f}% ({self.ties} ties; {100 * self.top1_all:.2f}% with them)  "
                f"{'pass' if self.passed else 'FAIL'}")


def snr_db(got, ref) -> float:
    ref = np.asarray(ref, np.float64)
    noise = np.sum((np.asarray(got, np.float64) - ref) ** 2)
    return math.inf if noise == 0 else float(10 * np.log10(np.sum(ref ** 2) / noise))


def top1(got, ref) -> tuple[float, int, float]:
    """(share of the rows with a top-1 whose argmax agrees, tied rows, share over all rows); the
    last axis is the vocabulary, the logits those the sampler divides by SAMPLING_T."""
    got, ref = np.asarray(got), np.asarray(ref)
    same = got.argmax(-1) == ref.argmax(-1)
    best = np.sort(ref, axis=-1)[..., -2:]
    tied = (best[..., 1] - best[..., 0]) / SAMPLING_T < np.log1p(TIE)
    decided = same[~tied]
    return float(decided.mean()) if decided.size else 1.0, int(tied.sum()), float(same.mean())


def outliers(K: int) -> int:
    """Outlier input channels of a K-wide matrix in trained_like: 4 of the released T2S' 768."""
    return max(1, round(K * OUTLIER_SHARE))


def trained_like(model, seed: int = 0):
    """Every nn.Linear weight of `model` redrawn in place, heavy-tailed (Student's t, 3 degrees of
    freedom, at the matrix's own RMS) with a few input channels (outliers(K)) OUTLIER_GAIN times
    the rest: the hard case for scales along K."""
    import torch

    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear):
                w = mod.weight
                rms = float(w.float().pow(2).mean().sqrt()) or 1 / math.sqrt(w.shape[1])
                t = rng.standard_t(3.0, size=tuple(w.shape))
                t *= rms / np.sqrt(np.mean(t ** 2))
                t[:, rng.choice(w.shape[1], size=outliers(w.shape[1]), replace=False)] *= OUTLIER_GAIN
                w.copy_(torch.from_numpy(t))
    return model


def unit_scale(model, seed: int = 0):
    """Random weights at a trained layer's scale, in place: N(0, 1/fan_in) matrices, N(0, 0.5)
    vectors, N(0, 1) embeddings, unit layer-norm gains (logits far from uniform, unlike a fresh
    model's initialization)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1 / math.sqrt(p[0].numel()) if p.dim() >= 2 else 0.5))
        for m in model.modules():
            if isinstance(m, torch.nn.Embedding):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.fill_(1.0)
    return model


def small_t2s(head_width=32, n_head=2, depth=2, stoks_len=200, seed=0):
    """A random T2S (unit_scale) with the released vocabulary (513 codes) and a chunk of
    stoks_len - 1 steps: the gate's model where the released ones are too slow to run whole."""
    import torch
    from whisperspeech import t2s_up_wds_mlang_enclm as t2s

    from .tts.models import for_cpu

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = t2s.TSARTransformer(depth=depth, n_head=n_head, head_width=head_width, ffn_mult=4, ttoks_len=48,
                                    ttoks_codes=256, ttoks_width=None, stoks_len=stoks_len, stoks_codes=513,
                                    stoks_width=None, tunables=t2s.Tunables(encoder_depth_ratio=0.5))
    unit_scale(model, seed)
    with torch.no_grad():  # unit-scale token embeddings make a T2S repeat its input token
        for p in model.embeddings.embedding.parameters():
            p.mul_(0.2)
    return for_cpu(model)


def small_s2a(head_width=32, n_head=2, depth=2, stoks_len=40, seed=0):
    """A random S2A (unit_scale) with a chunk of 3 * stoks_len - 1 steps of 4 rows each."""
    import torch
    from whisperspeech import s2a_delar_mup_wds_mlang as s2a

    from .tts.models import for_cpu

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        model = s2a.SADelARTransformer(depth=depth, ctx_n=3 * stoks_len, stoks_len=stoks_len, stoks_codes=513,
                                       stoks_width=None, spk_width=192, atoks_width=None, n_head=n_head,
                                       head_width=head_width, ffn_mult=4, quantizers=4,
                                       tunables=s2a.Tunables(encoder_depth_ratio=0.5))
    return for_cpu(unit_scale(model, seed + 1))


SELFTEST_MODELS = {  # the released T2S small / S2A medium widths, one layer, the tests' chunks
    "t2s": lambda: small_t2s(head_width=64, n_head=12, depth=1, stoks_len=100),
    "s2a": lambda: small_s2a(head_width=64, n_head=16, depth=1, stoks_len=30),
}


def selftest_gate(precisions) -> list[GateResult]:
    """`info --selftest`'s gate: SELFTEST_MODELS, random and trained-like, whole chunks."""
    out = []
    for decoder, make in SELFTEST_MODELS.items():
        out += gate(decoder, make(), precisions, "random")
        out += gate(decoder, trained_like(make(), seed=1), precisions, "trained-like")
    return out


def t2s_logits(model, precision: str, steps: int | None = None, seed: int = 0):
    """(GPU logits [n, V] at `precision`, CPU float32 logits) over n = steps or a whole chunk."""
    import torch

    from .resident import ResidentT2S

    m, g = model, torch.Generator().manual_seed(seed)
    res = ResidentT2S(m, precision=precision)
    tt = torch.randint(0, m.ttoks_codes, (1, m.ttoks_len), generator=g)
    langs, cpss = torch.tensor([0]), torch.tensor([15])
    n = min(steps or m.stoks_len - 1, m.stoks_len - 1)
    seq = [m.stoks_codes] + torch.randint(0, m.stoks_codes, (n - 1,), generator=g).tolist()
    with torch.no_grad():
        res.start_chunk(tt, langs, cpss)
        got = np.stack([res.logits(t, i).numpy().reshape(-1) for i, t in enumerate(seq)])
        # the reference in one causal pass (its decoder masks by position: the same as step by step)
        xenc, xpos, cps = m.run_encoder(tt, langs, cpss)
        ref = m(None, None, None, None, torch.tensor([seq]), in_stoks_positions=torch.arange(n), loss=None,
                xenc=xenc, xenc_positions=xpos, cps_emb=cps)[0]
    return got, ref.numpy().reshape(n, -1)


def s2a_logits(model, precision: str, steps: int | None = None, seed: int = 0):
    """(GPU logits [n, Q, V] at `precision`, CPU float32 logits) over n = steps or a whole chunk."""
    import torch

    from .resident import ResidentS2A

    m, g = model, torch.Generator().manual_seed(seed)
    res = ResidentS2A(m, precision=precision)
    stoks = torch.randint(0, m.stoks_codes - 1, (1, m.stoks_len), generator=g)
    spk = torch.randn(1, m.spk_width, generator=g)
    n = min(steps or m.ctx_n - 1, m.ctx_n - 1)
    cols = torch.randint(0, m.codes, (n, m.quantizers), generator=g)
    cols[0] = m.codes + 1  # the start column
    Q = m.quantizers
    with torch.no_grad():
        res.start_chunk(stoks, spk)
        got = np.stack([res.logits(cols[i].tolist(), i).numpy().reshape(Q, -1) for i in range(n)])
        if hasattr(m, "cond_embeddings"):
            xenc, xpos, _ = m.run_encoder(stoks, [dict(speaker=s, snr=60, c50=60) for s in spk])
        else:
            xenc, xpos, _ = m.run_encoder(stoks, spk)
        ref = m(None, cols.T.reshape(1, Q, n), None, noloss=True, xenc=xenc, xenc_positions=xpos,
                atoks_positions=torch.arange(n))  # one causal pass: [1, Q, n, V]
    return got, ref[0].permute(1, 0, 2).numpy()


def gate(decoder: str, model, precisions=("f16", "q8"), weights: str = "random", steps: int | None = None,
         seed: int = 0) -> list[GateResult]:
    """The gate's figures for one decoder model ("t2s" or "s2a") at each precision."""
    run = {"t2s": t2s_logits, "s2a": s2a_logits}[decoder]
    out = []
    for p in precisions:
        got, ref = run(model, p, steps, seed)
        out.append(GateResult(decoder, weights, p, got.shape[0], snr_db(got, ref), *top1(got, ref)))
    return out
