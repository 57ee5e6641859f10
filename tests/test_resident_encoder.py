"""Resident encoders (wsvk/resident_encoder.py) against the models' own run_encoder on the CPU."""

import numpy as np
import pytest
import torch

import tiny_models as tm
from conftest import rel_err
import resident_helpers as rh
from resident_helpers import s2a_cond_spec, t2s_spec
from wsvk.tts.models import s2a_from_spec, t2s_from_spec
from wsvk.resident import ResidentS2A, ResidentT2S
from wsvk.resident.encoder import ResidentEncoder

pytestmark = pytest.mark.usefixtures("f32_precision")


def t2s_inputs(model):
    from whisperspeech import languages

    model.ensure_tokenizer()
    tt = torch.tensor(model.tokenizer.encode("encoders, resident"))
    tt = torch.nn.functional.pad(tt, (1, model.ttoks_len - len(tt) - 1), value=model.tokenizer.eot)[None]
    return tt, torch.tensor([languages.to_id("de")]), torch.tensor([12])


def s2a_inputs(model, seed=0):
    stoks, spk = rh.s2a_inputs(seed)
    return torch.nn.functional.pad(stoks, (1, model.stoks_len - len(stoks) - 1), value=model.stoks_codes - 1)[None], spk


def resident_xenc(res, rt, start):
    """The decoder's cross K/V input as the resident path computes it: capture set_cross's argument."""
    seen = []
    real = res.resident_decoder.set_cross
    res.resident_decoder.set_cross = lambda xenc, *a, **k: (seen.append(xenc), real(xenc, *a, **k))
    s0, r0, d0 = rt.stats["submits"], rt.stats["readbacks"], rt.stats["dispatches"]
    start()
    assert rt.stats["submits"] - s0 == 1 and rt.stats["readbacks"] == r0  # one submit, nothing read back
    assert rt.stats["dispatches"] - d0 == res.counters()["encoder_dispatches_per_chunk"]
    return seen[0].numpy()


@pytest.mark.parametrize("causal", [True, False])  # the tiny T2S's encoder is causal as released
def test_t2s_encoder(rt, causal):
    model = t2s_from_spec(t2s_spec())
    model.tunables.causal_encoder = causal
    res = ResidentT2S(model)
    assert res.resident_encoder.causal is causal and res.resident_encoder.rope is None
    tt, langs, cpss = t2s_inputs(model)
    got = resident_xenc(res, rt, lambda: res.start_chunk(tt, langs, cpss))
    with torch.no_grad():
        ref, _, cps_emb = model.run_encoder(tt, langs, cpss)
    assert got.shape == (model.ttoks_len, model.width)
    assert rel_err(got, ref[0].numpy()) < 1e-5
    np.testing.assert_allclose(res.resident_decoder.extra.numpy()[0], cps_emb.reshape(-1).numpy(), rtol=1e-6)
    # the model is left whole: its layers back, the capture hook gone
    assert len(model.encoder.layers) == len(res.resident_encoder.layers) and not model.encoder.ln_post._forward_hooks


@pytest.mark.parametrize("variant", ["plain", "cond"])
def test_s2a_encoder(rt, variant):
    model = s2a_from_spec(tm.build_s2a(0) if variant == "plain" else s2a_cond_spec())
    res = ResidentS2A(model)
    assert res.resident_encoder.rope is not None  # RoPE on q and k
    stoks, spk = s2a_inputs(model)
    got = resident_xenc(res, rt, lambda: res.start_chunk(stoks, spk))
    with torch.no_grad():
        if variant == "cond":
            ref = model.run_encoder(stoks, [dict(speaker=spk[0], snr=60, c50=60)])[0]
        else:
            ref = model.run_encoder(stoks, spk)[0]
    assert rel_err(got, ref[0].numpy()) < 1e-5  # the speaker / condition term included
    assert len(model.encoder) == len(res.resident_encoder.layers) and not model.ln_post._forward_hooks


def test_f16_decoder_gets_f16_encoder_output(rt, monkeypatch):
    if not rt.has_f16:
        pytest.skip("adapter without shader-f16")
    monkeypatch.setenv("WSVK_PRECISION", "f16")
    model = s2a_from_spec(tm.build_s2a(0))
    res = ResidentS2A(model)
    stoks, spk = s2a_inputs(model, 1)
    got = resident_xenc(res, rt, lambda: res.start_chunk(stoks, spk))
    with torch.no_grad():
        ref = model.run_encoder(stoks, spk)[0][0].numpy()
    assert rel_err(got, ref) < 1e-3  # computed in f32, rounded once to f16


def test_errors(rt):
    model = t2s_from_spec(t2s_spec())
    enc = ResidentEncoder(model.encoder.layers, model.n_head, model.encoder.ln_post, causal=True)
    with pytest.raises(ValueError, match=r"\[L, 64\]"):
        enc.run(np.zeros((4, 31), np.float32))
    with pytest.raises(ValueError, match="RoPE"):
        ResidentEncoder(model.encoder.layers, model.n_head, model.encoder.ln_post, causal=True,
                        rope=(torch.ones(8, 16), torch.zeros(8, 16)))
    with pytest.raises(ValueError, match="cross-attention"):
        ResidentEncoder(model.decoder.layers, model.n_head, model.encoder.ln_post, causal=False)


def test_capture_in_threads_leaves_the_model_whole_for_a_cpu_thread(rt):
    """The encoder-input capture runs on a view of the model: two wrappers capturing in threads
    while a third thread runs the model's own encoder (as the CPU path does) all get their own
    results, every time, and the model is left as it was."""
    import sys
    import threading

    model = t2s_from_spec(t2s_spec())
    wrappers = [ResidentT2S(model), ResidentT2S(model)]
    tt, langs, cpss = t2s_inputs(model)
    n_layers = len(model.encoder.layers)
    with torch.no_grad():
        whole = model.run_encoder(tt, langs, cpss)[0]
    x0s, outs = [], []

    def capture(res):
        for _ in range(100):
            x0, _ = res.encoder_input(lambda view: view.run_encoder(tt, langs, cpss), "encoder", "layers")
            x0s.append(x0)

    def cpu():
        with torch.no_grad():
            for _ in range(100):
                outs.append(model.run_encoder(tt, langs, cpss)[0])

    threads = [threading.Thread(target=capture, args=(w,)) for w in wrappers] + [threading.Thread(target=cpu)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: an edit of the shared model would show
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert len(model.encoder.layers) == n_layers and not model.encoder.ln_post._forward_hooks
    assert len(x0s) == 200 and all(torch.equal(x, x0s[0]) for x in x0s)
    assert len(outs) == 100 and all(torch.equal(o, whole) for o in outs) and whole.abs().sum() > 0
