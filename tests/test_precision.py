"""WSVK_PRECISION in the resident modules (wsvk/resident/decoder.py, wsvk/resident/vocos.py).

Bounds. f16 storage rounds each weight (and KV-cache entry) with relative error <= u = 2^-11
(rms u/sqrt(3) ~ 2.8e-4). A dot product over K such terms accumulated in f32 has an error of
sum_i w_i x_i d_i: independent roundings add in quadrature, so relative to the sum it stays
~u/sqrt(3) (the sqrt(K) growth of the error is matched by the sqrt(K) growth of the sum), and
f32 accumulation adds nothing visible. Through a few layers (qkv, attention with f16 keys and
values, out, fc1, fc2, head) these compound to a few times u: the logit bound is
LOGIT_BOUND = 4u ~ 2e-3 relative L2 (measured on lavapipe: T2S 3.3e-4, S2A 3.5e-4).
A real bug (wrong row, unconverted f16 bits, a lost bias) gives > 1e-1.
q8 (8-bit weights in blocks of 32 with an f32 scale each, over the weights divided by their input
channel's RMS; the decoders' layer matrices only): the quality gate of wsvk.quality, teacher-forced
logits of whole chunks against CPU f32: SNR >= 30 dB and top-1 agreement >= 98% (ties left out;
see GATE_TOP1 for why not 99%), on unit-scale random weights and on trained-like ones (heavy tails,
a few input channels 20x the rest), at the released widths.
Vocos: f16 weights and activations inside the backbone, f32 residual stream and ISTFT head;
the floor is SNR >= 40 dB, i.e. relative error <= 1e-2 (measured on lavapipe: 57.6 dB with the
stressed weights of tests/test_resident_vocos.py, 72 dB with vocos' own init).
"""

import os

import numpy as np
import pytest
import torch

import tiny_models as tm
from conftest import rel_err
from resident_helpers import LOGIT_BOUND, s2a_inputs, stress_vocos, t2s_reference_logits, t2s_spec
from wsvk import quality
from wsvk.errors import ConfigError
from wsvk.gpu import Runtime
from wsvk.kernels.matmul import Q8Weight, q8_layout
from wsvk.resident import ResidentS2A, ResidentT2S, ResidentVocos
from wsvk.tts.models import random_vocos, s2a_from_spec, t2s_from_spec

SNR_FLOOR_DB = 40.0

pytestmark = pytest.mark.skipif(os.environ.get("WSVK_BACKEND") == "cpu", reason="GPU precision")


def _set(monkeypatch, precision):
    monkeypatch.setenv("WSVK_PRECISION", precision)


# ---------------------------------------------------------------- decoders


def _t2s_logits(model, monkeypatch, precision, subgroups=None):
    _set(monkeypatch, precision)
    res = ResidentT2S(model, ch=4, subgroups=subgroups)
    ref, got = t2s_reference_logits(model, res, [model.stoks_codes, 3, 9, 27, 14, 5, 60, 0])
    return res.resident_decoder, ref.numpy(), got.numpy()


@pytest.mark.needs_f16
def test_t2s_f16_logits(rt, monkeypatch):
    model = t2s_from_spec(t2s_spec())
    d32, ref, l32 = _t2s_logits(model, monkeypatch, "f32")
    d16, _, l16 = _t2s_logits(model, monkeypatch, "f16")
    assert d32.dtype == np.float32 and d16.dtype == np.float16
    assert l16.dtype == np.float32 and np.isfinite(l16).all()
    assert rel_err(l32, ref) < 2e-6  # f32 mode unchanged
    e = rel_err(l16, l32)
    print(f"T2S f16 vs f32 logits: rel L2 {e:.2e} (bound {LOGIT_BOUND:.1e})")  # shown by pytest -rP
    assert 0 < e < LOGIT_BOUND, e  # > 0: f16 really ran
    assert rel_err(l16, ref) < LOGIT_BOUND
    # f16 storage: weights, tables and KV caches take half the bytes; biases/LN stay f32
    for g32, g16 in zip(d32.layers, d16.layers):
        for name in ("qkv", "out", "cross_q", "cross_kv", "cross_out", "fc1", "fc2"):
            w16, w32 = getattr(g16, name)[0], getattr(g32, name)[0]
            assert w16.dtype == np.float16 and 2 * w16.nbytes == w32.nbytes
        for name in ("k_cache", "v_cache", "cross_k", "cross_v"):
            assert getattr(g16, name).dtype == np.float16 and 2 * getattr(g16, name).nbytes == getattr(g32, name).nbytes
        assert g16.attn_ln[0].dtype == np.float32
    assert 2 * d16.plan.tables_buf.nbytes == d32.plan.tables_buf.nbytes
    assert all(w.dtype == np.float16 for _, w, _, _ in d16.plan.head_w)
    # the shared-memory reduction (adapters without subgroups) builds its own f16 module
    _, _, slow = _t2s_logits(model, monkeypatch, "f16", subgroups=False)
    assert rel_err(slow, l16) < 1e-5


def _s2a_logits(model, monkeypatch, precision):
    _set(monkeypatch, precision)
    res = ResidentS2A(model, ch=8)
    stoks, spk = s2a_inputs(0)
    stoks = torch.nn.functional.pad(stoks, (1, model.stoks_len - len(stoks) - 1), value=model.stoks_codes - 1)[None]
    res.start_chunk(stoks, spk)
    cols = torch.randint(0, 1026, (8, 4), generator=torch.Generator().manual_seed(5))
    cols[0] = 1025
    cols[1, 2:] = 1025
    return res.resident_decoder, np.stack([res.logits(cols[i].tolist(), i).numpy() for i in range(8)])


@pytest.mark.needs_f16
def test_s2a_f16_logits(rt, monkeypatch):
    model = s2a_from_spec(tm.build_s2a(0))
    d32, l32 = _s2a_logits(model, monkeypatch, "f32")
    d16, l16 = _s2a_logits(model, monkeypatch, "f16")
    assert d32.dtype == np.float32 and d16.dtype == np.float16 and d16.layers[0].k_cache.dtype == np.float16
    e = rel_err(l16, l32)
    print(f"S2A f16 vs f32 logits: rel L2 {e:.2e} (bound {LOGIT_BOUND:.1e})")
    assert np.isfinite(l16).all() and 0 < e < LOGIT_BOUND, e
    assert 2 * d16.layers[0].fc1[0].nbytes == d32.layers[0].fc1[0].nbytes


# ---------------------------------------------------------------- the quality gate (q8, f16)


# (decoder, shape): the released T2S small / S2A medium widths (768 and 1024, 64-wide heads, ffn
# 4x) with one layer and shorter windows, which a software adapter runs in seconds. The released
# shapes whole: scripts/bench_step.py --gate on a GPU.
GATE_MODELS = {
    ("t2s", "768 wide"): lambda: quality.small_t2s(head_width=64, n_head=12, depth=1, stoks_len=100),
    ("s2a", "1024 wide"): lambda: quality.small_s2a(head_width=64, n_head=16, depth=1, stoks_len=30),
}


@pytest.mark.parametrize("weights", ["random", "trained-like"])
@pytest.mark.parametrize("decoder,shape", list(GATE_MODELS))
def test_quality_gate(rt, decoder, shape, weights):
    model = GATE_MODELS[decoder, shape]()
    if weights == "trained-like":
        quality.trained_like(model, seed=1)
    precisions = ("f16", "q8") if rt.has_f16 else ("q8",)
    results = quality.gate(decoder, model, precisions, weights)
    for r in results:
        print(f"{shape}: {r.line()}")  # shown by pytest -rP
        assert r.steps == (model.stoks_len - 1 if decoder == "t2s" else model.ctx_n - 1)  # a whole chunk
        assert r.passed, r.line()
        assert r.snr_db < 150  # the precision really differs from f32
    if len(results) == 2:  # 8 bits lose more than f16 (2^-11): a q8 that silently ran f16 would not
        assert results[1].snr_db < results[0].snr_db - 10


def test_top1_leaves_ties_out():
    ref = np.array([[5.0, 1.0, 0.0], [2.0, 2.01, 0.0], [0.0, 3.0, 1.0]])
    got = np.array([[4.0, 1.0, 0.0], [2.01, 2.0, 0.0], [3.1, 3.0, 1.0]])
    # row 1: 0.01 apart, e^(0.01 / 0.7) - 1 = 1.4% in probability: a tie; row 2 really flips
    assert quality.top1(got, ref) == (0.5, 1, 1 / 3)


def test_gate_fails_4_bit_weights(rt, monkeypatch):
    """The gate's teeth: the same buffers with the codes cut to 4 bits (16 levels, as the formats
    that the public evidence found to break codec-token TTS) miss it."""
    from wsvk.kernels import matmul

    def four_bits(w):
        words = matmul.quantize_q8(w)
        nb, _ = q8_layout(*np.shape(w))
        codes = words[:np.shape(w)[0] * nb * 8].view(np.int8)
        codes[:] = np.clip(np.rint(codes / 17.0) * 17, -127, 127).astype(np.int8)  # 15 levels
        return words

    monkeypatch.setattr(Q8Weight, "upload", classmethod(lambda cls, rt, w: cls(rt.upload(four_bits(w)), np.shape(w))))
    model = GATE_MODELS["t2s", "768 wide"]()
    (r,) = quality.gate("t2s", model, ("q8",))
    print(r.line())
    assert not r.passed and r.snr_db < quality.GATE_SNR_DB


def test_trained_like_has_outliers():
    lin = torch.nn.Linear(1024, 64)
    quality.trained_like(lin, seed=2)
    col = lin.weight.detach().abs().mean(0)
    assert (col > 10 * col.median()).sum() == quality.outliers(1024) == 4
    w = lin.weight.detach().flatten().numpy()
    kurt = np.mean((w - w.mean()) ** 4) / np.var(w) ** 2
    assert kurt > 5  # heavy tails (a normal's is 3)


def _plan_bytes(plan):
    """Weight bytes a plan holds per its layers' matrices (the GEMVs' and cross_kv's)."""
    return {name: getattr(plan.layers[0], name)[0].nbytes
            for name in ("qkv", "out", "cross_q", "cross_kv", "cross_out", "fc1", "fc2")}


@pytest.mark.parametrize("limits", ["adapter", "f32 caches"])
def test_q8_storage(rt, monkeypatch, limits):
    """q8: the GEMV matrices (and the head) 8-bit, 36 bytes per block of 32; tables, caches and
    cross_kv in the storage dtype (f16 with shader-f16, else f32: WSVK_LIMITS=default's case)."""
    if limits == "f32 caches":
        monkeypatch.setattr(Runtime, "has_f16", property(lambda self: False))
    model = t2s_from_spec(t2s_spec(head_width=33))  # K = 66: blocks cut short
    _set(monkeypatch, "q8")
    res = ResidentT2S(model)
    d = res.resident_decoder
    dt = np.float16 if rt.has_f16 and limits == "adapter" else np.float32
    assert d.precision == "q8" and d.dtype == dt
    g = d.plan.layers[0]
    for name in ("qkv", "out", "cross_q", "cross_out", "fc1", "fc2"):
        w = getattr(g, name)[0]
        N, K = w.shape
        assert isinstance(w, Q8Weight) and w.nbytes == 4 * q8_layout(N, K)[1] == N * -(-K // 32) * 36 + 4 * K
    assert g.cross_kv[0].dtype == dt and g.k_cache.dtype == dt and d.plan.tables_buf.dtype == dt
    assert all(w.dtype == dt for _, w, _, _ in d.plan.head_w)  # the head stays: its error reaches the argmax
    ref, got = t2s_reference_logits(model, res, [model.stoks_codes, 3, 9, 27, 14, 5, 60, 0])
    assert quality.snr_db(got.numpy(), ref.numpy()) >= quality.GATE_SNR_DB


@pytest.mark.parametrize("precision", ["f32", "f16", "q8"])
def test_memory_figures_are_the_buffers_allocated(rt, precision):
    """memory() (what -v prints and the slot defaults plan with) against the GPU buffers the module
    really took, and weight_estimate (before building) against memory()."""
    if precision == "f16" and not rt.has_f16:
        pytest.skip("no shader-f16")
    import gc

    for cls, model in ((ResidentT2S, quality.small_t2s(head_width=64, n_head=12, depth=1, stoks_len=50)),
                       (ResidentS2A, quality.small_s2a(head_width=64, n_head=16, depth=1, stoks_len=20))):
        gc.collect()
        rt.pool.trim()
        before = rt.pool.allocated_bytes
        res = cls(model, precision=precision, slots=2)
        mem = res.memory()
        took = rt.pool.allocated_bytes - before
        held = mem["weight_bytes"] + 2 * mem["cache_bytes_per_slot"]
        print(f"{cls.__name__} {precision}: {mem}, {took} bytes allocated")
        assert mem["precision"] == precision and mem["slots"] == 2
        assert held <= took <= 1.13 * held + (1 << 20)  # pool size classes round up by <= 1/8; work buffers
        est = cls.weight_estimate(model, precision, rt.storage_dtype(precision).itemsize)
        assert abs(est - mem["weight_bytes"]) <= 0.01 * mem["weight_bytes"]
        assert mem["cache_bytes_per_slot"] == cls.slot_bytes(model, rt.storage_dtype(precision).itemsize)
        assert res.counters()["weights_mib"] == mem["weight_bytes"] / 2**20
        del res


# ---------------------------------------------------------------- Vocos


@pytest.fixture(scope="module")
def vocos():
    return stress_vocos(random_vocos(0), 1)  # released config, stressed random weights


@pytest.mark.needs_f16
def test_vocos_f16_snr(rt, vocos, monkeypatch):
    feats = torch.randn(1, 128, 20, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ref = vocos.decode(feats, bandwidth_id=torch.tensor(2)).numpy()
    _set(monkeypatch, "f32")
    rv32 = ResidentVocos(vocos)
    a32 = rv32.decode(feats, bandwidth_id=2).numpy()
    _set(monkeypatch, "f16")
    rv16 = ResidentVocos(vocos)
    a16 = rv16.decode(feats, bandwidth_id=2).numpy()
    assert rel_err(a32, ref) < 1e-5  # f32 mode unchanged
    assert a16.dtype == np.float32 and a16.shape == a32.shape and np.isfinite(a16).all()
    snr = 10 * np.log10(np.sum(a32.astype(np.float64) ** 2) / np.sum((a16.astype(np.float64) - a32) ** 2))
    print(f"Vocos f16 vs f32 audio: SNR {snr:.1f} dB (floor {SNR_FLOOR_DB:.0f})")
    assert SNR_FLOOR_DB <= snr < 150, snr  # < 150: the f16 path really differs
    # backbone weights halve, the ISTFT head stays f32
    for k in ("dw_w", "w1", "b1", "w2", "b2"):
        b16, b32 = getattr(rv16.layers[0], k), getattr(rv32.layers[0], k)
        assert b16.dtype == np.float16 and 2 * b16.nbytes == b32.nbytes
    assert 2 * rv16.embed_w.nbytes == rv32.embed_w.nbytes
    assert rv16.head_w.dtype == rv16.head_b.dtype == rv16.window.dtype == np.float32
    # decode_codes takes the same f16 path
    codes = torch.randint(0, 1024, (8, 1, 12), generator=torch.Generator().manual_seed(4))
    c32, c16 = rv32.decode_codes(codes, bandwidth_id=3).numpy(), rv16.decode_codes(codes, bandwidth_id=3).numpy()
    assert 10 * np.log10(np.sum(c32.astype(np.float64) ** 2) / np.sum((c16.astype(np.float64) - c32) ** 2)) >= SNR_FLOOR_DB


# ---------------------------------------------------------------- configuration


def test_f16_without_shader_f16_is_a_config_error(rt, vocos, monkeypatch):
    monkeypatch.setattr(Runtime, "has_f16", property(lambda self: False))
    _set(monkeypatch, "f16")
    with pytest.raises(ConfigError, match="^WSVK_PRECISION=f16 but .* lacks shader-f16"):
        ResidentVocos(vocos)
    with pytest.raises(ConfigError, match="^WSVK_PRECISION=f16 but .* lacks shader-f16"):
        ResidentT2S(t2s_from_spec(t2s_spec()))
    _set(monkeypatch, "f32")  # the message names what asked for f16: here the argument, not the setting
    with pytest.raises(ConfigError, match=r"^precision='f16' but .* lacks shader-f16 \(use auto, q8 or f32\)$"):
        ResidentT2S(t2s_from_spec(t2s_spec()), precision="f16")
    _set(monkeypatch, "auto")  # auto falls back to f32
    assert ResidentVocos(vocos).dtype == np.float32
    _set(monkeypatch, "f64")
    with pytest.raises(ConfigError, match="WSVK_PRECISION"):
        ResidentVocos(vocos)


def test_auto_follows_the_adapter(rt, vocos, monkeypatch):
    _set(monkeypatch, "auto")
    assert ResidentVocos(vocos).dtype == (np.float16 if rt.has_f16 else np.float32)
    assert rt.precision()[0] == ("f16" if rt.has_f16 else "f32")  # a software adapter: not integrated
    monkeypatch.setitem(rt.info, "type", "IntegratedGPU")
    choice, why = rt.precision()
    assert choice == "q8" and "integrated" in why
    assert ResidentT2S(t2s_from_spec(t2s_spec())).resident_decoder.precision == "q8"
    monkeypatch.setitem(rt.info, "type", "DiscreteGPU")
    assert rt.precision()[0] == ("f16" if rt.has_f16 else "f32")
    _set(monkeypatch, "q8")  # one setting away on any adapter
    assert rt.precision() == ("q8", "WSVK_PRECISION")
    _set(monkeypatch, "q4")
    with pytest.raises(ConfigError, match="WSVK_PRECISION='q4' is not valid; use one of: auto, f32, f16, q8"):
        rt.precision()
