"""WSVK_PRECISION in the resident modules (wsvk/resident/decoder.py, wsvk/resident/vocos.py).

Bounds. f16 storage rounds each weight (and KV-cache entry) with relative error <= u = 2^-11
(rms u/sqrt(3) ~ 2.8e-4). A dot product over K such terms accumulated in f32 has an error of
sum_i w_i x_i d_i: independent roundings add in quadrature, so relative to the sum it stays
~u/sqrt(3) (the sqrt(K) growth of the error is matched by the sqrt(K) growth of the sum), and
f32 accumulation adds nothing visible. Through a few layers (qkv, attention with f16 keys and
values, out, fc1, fc2, head) these compound to a few times u: the logit bound is
LOGIT_BOUND = 4u ~ 2e-3 relative L2 (measured on lavapipe: T2S 3.3e-4, S2A 3.5e-4).
A real bug (wrong row, unconverted f16 bits, a lost bias) gives > 1e-1.
Vocos: f16 weights and activations inside the backbone, f32 residual stream and ISTFT head;
the floor is SNR >= 40 dB, i.e. relative error <= 1e-2 (measured on lavapipe: 57.6 dB with the
stressed weights of tests/test_resident_vocos.py, 72 dB with vocos' own init).
"""

import os

import numpy as np
import pytest
import torch

import test_resident as tr
from conftest import rel_err
from wsvk.errors import ConfigError
from wsvk.gpu import Runtime
from wsvk.resident import ResidentS2A, ResidentT2S, ResidentVocos
from wsvk.tts.models import random_vocos, s2a_from_spec, t2s_from_spec

U = 2.0 ** -11
LOGIT_BOUND = 4 * U
SNR_FLOOR_DB = 40.0

pytestmark = pytest.mark.skipif(os.environ.get("WSVK_BACKEND") == "cpu", reason="GPU precision")


def _set(monkeypatch, precision):
    monkeypatch.setenv("WSVK_PRECISION", precision)


# ---------------------------------------------------------------- decoders


def _t2s_logits(model, monkeypatch, precision, subgroups=None):
    _set(monkeypatch, precision)
    res = ResidentT2S(model, ch=4, subgroups=subgroups)
    ref, got = tr.t2s_reference_logits(model, res, [model.stoks_codes, 3, 9, 27, 14, 5, 60, 0])
    return res.resident_decoder, ref.numpy(), got.numpy()


@pytest.mark.needs_f16
def test_t2s_f16_logits(rt, monkeypatch):
    model = t2s_from_spec(tr.t2s_spec())
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
    stoks, spk = tr.s2a_inputs(0)
    stoks = torch.nn.functional.pad(stoks, (1, model.stoks_len - len(stoks) - 1), value=model.stoks_codes - 1)[None]
    res.start_chunk(stoks, spk)
    cols = torch.randint(0, 1026, (8, 4), generator=torch.Generator().manual_seed(5))
    cols[0] = 1025
    cols[1, 2:] = 1025
    return res.resident_decoder, np.stack([res.logits(cols[i].tolist(), i).numpy() for i in range(8)])


@pytest.mark.needs_f16
def test_s2a_f16_logits(rt, monkeypatch):
    model = s2a_from_spec(tr.tm.build_s2a(0))
    d32, l32 = _s2a_logits(model, monkeypatch, "f32")
    d16, l16 = _s2a_logits(model, monkeypatch, "f16")
    assert d32.dtype == np.float32 and d16.dtype == np.float16 and d16.layers[0].k_cache.dtype == np.float16
    e = rel_err(l16, l32)
    print(f"S2A f16 vs f32 logits: rel L2 {e:.2e} (bound {LOGIT_BOUND:.1e})")
    assert np.isfinite(l16).all() and 0 < e < LOGIT_BOUND, e
    assert 2 * d16.layers[0].fc1[0].nbytes == d32.layers[0].fc1[0].nbytes


# ---------------------------------------------------------------- Vocos


@pytest.fixture(scope="module")
def vocos():
    import test_resident_vocos as trv

    return trv._stress(random_vocos(0), 1)  # released config, stressed random weights


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
    with pytest.raises(ConfigError, match="shader-f16"):
        ResidentVocos(vocos)
    with pytest.raises(ConfigError, match="shader-f16"):
        ResidentT2S(t2s_from_spec(tr.t2s_spec()))
    _set(monkeypatch, "auto")  # auto falls back to f32
    assert ResidentVocos(vocos).dtype == np.float32
    _set(monkeypatch, "f64")
    with pytest.raises(ConfigError, match="WSVK_PRECISION"):
        ResidentVocos(vocos)


def test_auto_follows_the_adapter(rt, vocos, monkeypatch):
    _set(monkeypatch, "auto")
    assert ResidentVocos(vocos).dtype == (np.float16 if rt.has_f16 else np.float32)
