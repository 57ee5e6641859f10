"""Resident decode (wsvk/resident/): tokens and logits equal the CPU model's, one submit per step."""

import pytest
import torch

import tiny_models as tm
from conftest import rel_err
from resident_helpers import TEXT, s2a_cond_spec, s2a_inputs, same_tokens, t2s_reference_logits, t2s_spec
from wsvk.tts.models import s2a_from_spec, t2s_from_spec
from wsvk.resident import ResidentS2A, ResidentT2S
from wsvk.router import offload

pytestmark = pytest.mark.usefixtures("f32_precision")  # identical tokens / f32 rounding vs the CPU


# ---------------------------------------------------------------- T2S


@pytest.fixture(scope="module")
def t2s():
    return t2s_from_spec(t2s_spec())


@pytest.mark.parametrize("ch", [None, 4])  # None: the default; 4: several key splits in both attentions
def test_t2s_generate_same_tokens(rt, t2s, ch):
    res = ResidentT2S(t2s, ch=ch)
    assert res.stoks_len == t2s.stoks_len  # attributes forward to the model, as the app reads them
    got = same_tokens(lambda: t2s.generate(TEXT, show_progress_bar=False),
                      lambda: res.generate(TEXT, show_progress_bar=False), seed=1)
    assert len(set(got[0].tolist())) > 5  # varied tokens: a broken decoder would change them
    assert res.counters()["steps"] == t2s.stoks_len - 1  # prefill + N - 2 steps
    # a second call on the same object (caches reused), another text and cps, T and top_k
    same_tokens(lambda: t2s.generate("other words!", cps=9, T=1.0, top_k=5, show_progress_bar=False),
                lambda: res.generate("other words!", cps=9, T=1.0, top_k=5, show_progress_bar=False), seed=2)


def test_t2s_memory_bounded_and_app_context(rt, t2s):
    res = ResidentT2S(t2s)
    sizes = []
    for _ in range(3):
        # the app calls generate inside its own offload() block
        with offload():
            same_tokens(lambda: t2s.generate(TEXT, show_progress_bar=False),
                        lambda: res.generate(TEXT, show_progress_bar=False), seed=3)
        sizes.append(rt.pool.allocated_bytes)
    assert sizes[2] == sizes[1], f"GPU memory grows across calls: {sizes}"


def test_t2s_early_stop_and_prompt(rt):
    model = t2s_from_spec(tm.build_t2s(1))  # stops at its end token after one step
    res = ResidentT2S(model)
    got = same_tokens(lambda: model.generate(TEXT, show_progress_bar=False),
                      lambda: res.generate(TEXT, show_progress_bar=False), seed=1)
    assert got.shape[1] < model.stoks_len - 1
    model = t2s_from_spec(t2s_spec())
    res = ResidentT2S(model)
    prompt = torch.tensor([5, 17, 3])
    same_tokens(lambda: model.generate(TEXT, stoks_prompt=prompt, show_progress_bar=False),
                lambda: res.generate(TEXT, stoks_prompt=prompt, show_progress_bar=False), seed=4)


# 33: width 66, the scalar (K % 4 != 0) gemv path; 16 x 68: width 1088, so every gemv sweeps
# its rows in several passes of 256 vec4s (after the first, prefetched one)
@pytest.mark.parametrize("head_width,n_head", [(32, 2), (33, 2), (68, 16)])
def test_t2s_teacher_forced_logits(rt, head_width, n_head):
    model = t2s_from_spec(t2s_spec(head_width=head_width, n_head=n_head))
    res = ResidentT2S(model, ch=4)
    ref, got = t2s_reference_logits(model, res, [model.stoks_codes, 3, 9, 27, 14, 5, 60, 0])
    assert got.shape == ref.shape == (8, 1, model.stoks_codes + 1)
    err = rel_err(got.numpy(), ref.numpy())
    assert err < 2e-6, err


def test_one_submit_per_step(rt, t2s):
    res = ResidentT2S(t2s)
    t2s_reference_logits(t2s, res, [t2s.stoks_codes])  # sets up the chunk
    n = res.counters()["dispatches_per_step"]
    assert n == 8 * len(t2s.decoder.layers) + 2  # embed + 8 per layer + ln_post/unembed
    for pos, tok in enumerate([1, 2, 3], start=1):
        s0, d0, r0 = rt.stats["submits"], rt.stats["dispatches"], rt.stats["readbacks"]
        res.logits(tok, pos)
        assert rt.stats["submits"] - s0 == 1
        assert rt.stats["dispatches"] - d0 == n
        assert rt.stats["readbacks"] - r0 == 1
    assert res.counters()["record_s"] > 0


@pytest.mark.parametrize("chunk", [64, 4])  # 4: a prompt of 10 positions in 3 submits
def test_prefill_is_one_submit(rt, monkeypatch, chunk):
    """A prompt's positions run in one submit (per PREFILL_CHUNK), nothing read back, no output
    head; what follows sees the same caches as after one step per position. Two layers: the
    prefill stops inside the last one."""
    t2s = t2s_from_spec(t2s_spec(depth=2))  # 2 decoder layers
    assert len(t2s.decoder.layers) == 2
    seq = [t2s.stoks_codes, 5, 17, 3, 8, 40, 2, 9, 11, 30, 7]  # 10 prompt positions: 3 key splits of 4
    out = []
    for prefill in (False, True):
        res = ResidentT2S(t2s, ch=4)
        dec = res.resident_decoder
        monkeypatch.setattr(dec, "PREFILL_CHUNK", chunk)
        t2s_reference_logits(t2s, res, [t2s.stoks_codes])  # sets up the chunk
        res.reset_counters()
        s0, d0, r0 = rt.stats["submits"], rt.stats["dispatches"], rt.stats["readbacks"]
        if prefill:
            dec.prefill([[t] for t in seq[:-1]])
            assert rt.stats["submits"] - s0 == -(-10 // chunk) and rt.stats["readbacks"] == r0
            # per position: embed, 8 per layer but the last, whose qkv GEMV + self-attention
            # append the key/value; nothing after it reaches a cache
            assert rt.stats["dispatches"] - d0 == 10 * (1 + 8 * (len(t2s.decoder.layers) - 1) + 2)
            assert res.counters()["prefilled_steps"] == 10 and res.counters()["prefill_s"] > 0
        else:
            for pos, tok in enumerate(seq[:-1]):
                res.logits(tok, pos)
        out.append(res.logits(seq[-1], len(seq) - 1))
    assert res.counters()["prerecorded_steps"] == 0  # after a prefill the first step records as it runs
    assert rel_err(out[0].numpy(), out[1].numpy()) < 1e-6
    dec.prefill([])  # nothing to do
    with pytest.raises(ValueError, match="position"):
        dec.prefill([[1]] * 3, start=t2s.stoks_len - 2)


def test_prerecorded_steps_match(rt, t2s):
    """Step pos + 1 is recorded while step pos runs: used when the next step has the same columns
    and key splits, dropped when it does not (a redone position in another split), results as if
    recorded on demand."""
    seq = [(t2s.stoks_codes, 0), (3, 1), (9, 2), (27, 3), (9, 2), (14, 3), (5, 4), (60, 3)]
    out = {}
    for pre in (True, False):
        res = ResidentT2S(t2s, ch=4)
        res.resident_decoder.prerecord = pre
        t2s_reference_logits(t2s, res, [t2s.stoks_codes])  # sets up the chunk
        res.reset_counters()
        out[pre] = torch.cat([res.logits(tok, pos) for tok, pos in seq])
        c = res.counters()
        assert c["steps"] == len(seq)
        assert c["prerecorded_steps"] == (5 if pre else 0)  # 1, 2, 3, 3, 4 matched the step before
    # same kernels, same inputs: equal up to the order subgroups add in (a wrong cache is ~1e-2 off)
    assert rel_err(out[True].numpy(), out[False].numpy()) < 1e-6
    res.resident_decoder.prerecord = True
    dec = res.resident_decoder
    dec.step([0], t2s.stoks_len - 2)
    assert dec._next is not None and dec._next[0][0] == (1, dec.plan.splits(t2s.stoks_len - 1))
    dec.step([0], t2s.stoks_len - 1)
    assert dec._next is None  # nothing recorded past the last position


def test_profile_step(rt, t2s):
    """Per-dispatch GPU times of one step; the step's effect on the KV caches is a normal step's."""
    if not rt.has_timestamps:
        pytest.skip("adapter without timestamp-query")
    out = []
    for profile in (False, True):
        res = ResidentT2S(t2s, ch=4)
        t2s_reference_logits(t2s, res, [t2s.stoks_codes])
        dec = res.resident_decoder
        if profile:
            times = dec.profile_step([3], 1)
            assert [lab for lab, _ in times] == dec.labels and len(times) == dec.dispatches_per_step
            assert all(ms >= 0 for _, ms in times) and sum(ms for _, ms in times) > 0
            assert {"embed", "attn self", "attn cross"} <= set(dec.labels)
        else:
            res.logits(3, 1)
        out.append(res.logits(9, 2))
    assert rel_err(out[0].numpy(), out[1].numpy()) < 1e-6


def test_auto_split():
    """Keys per attention split: 64, more where the splits' weights would overflow the combining
    gemv's 16 KiB of workgroup memory (next to its W staged inputs)."""
    from wsvk.kernels.attention import auto_ch
    from wsvk.kernels.matmul import cw_max

    def fits(W):
        return lambda n: n <= cw_max(W)

    assert auto_ch(12, 750, fits(768)) == 64  # T2S small
    assert auto_ch(16, 2250, fits(1024)) == 64 and 16 * 36 <= cw_max(1024)  # S2A medium
    assert cw_max(1792) < 16 * 36 and auto_ch(16, 2250, fits(1792)) == 128
    # xs, the two weight arrays (each rounded up to 16 bytes) and wg_sums' arrays fit 16 KiB
    assert 4 * 1792 + 2 * (-(-4 * cw_max(1792) // 16) * 16) + 4096 + 16 + 512 <= 16384
    with pytest.raises(ValueError, match="workgroup memory"):
        auto_ch(4096, 100, fits(1024))  # more heads than weights fit, whatever the split


def test_errors(rt, t2s):
    res = ResidentT2S(t2s)
    with pytest.raises(ValueError, match="bs=1"):
        res.generate(TEXT, bs=2)
    with pytest.raises(ValueError, match="token ids"):
        res.resident_decoder.step([t2s.stoks_codes + 1], 0)
    with pytest.raises(ValueError, match="position"):
        res.resident_decoder.step([0], t2s.stoks_len)
    with pytest.raises(ValueError, match="positions"):
        res.generate(TEXT, N=t2s.stoks_len + 1)
    with pytest.raises(RuntimeError, match="outside a recorder"):
        with rt.recorder():
            res.resident_decoder.step([0], 0)
    from whisperspeech import t2s_up_wds_mlang_enclm as t2s_mod

    spec = tm.build_t2s(0)
    raw = t2s_mod.TSARTransformer(**spec["config"], tunables=t2s_mod.Tunables(**spec["tunables"])).eval()
    with pytest.raises(ValueError, match="for_cpu"):
        ResidentT2S(raw)


# ---------------------------------------------------------------- S2A


@pytest.fixture(scope="module")
def s2a():
    return s2a_from_spec(tm.build_s2a(0))


def test_s2a_chunk_embeddings_never_reach_the_callers_router(rt, s2a):
    # S2A's per-chunk CPU terms include a linear (the speaker's): called here inside offload(), it
    # would be routed; generate runs it in the decode loop's thread, which an offload() block around
    # it (as the app's stages have) does not reach, so a chunk stays one submit
    res = ResidentS2A(s2a)
    stoks, spk = s2a_inputs(0)
    with offload() as stats:
        res.generate(stoks, spk, show_progress_bar=False)
    assert not stats.gpu and not stats.cpu, stats.table()
    with torch.no_grad(), offload() as stats:
        res.start_chunk(torch.nn.functional.pad(stoks, (0, s2a.stoks_len - len(stoks)))[None], spk)
    assert stats.cpu_calls("linear") + stats.gpu_calls("linear") > 0  # the check above can see one


@pytest.mark.parametrize("ch", [128, 8])  # 8: up to 6 key splits
def test_s2a_generate_same_tokens(rt, s2a, ch):
    res = ResidentS2A(s2a, ch=ch)
    stoks, spk = s2a_inputs(0)
    s0 = rt.stats["submits"]
    got = same_tokens(lambda: s2a.generate(stoks, spk, show_progress_bar=False),
                      lambda: res.generate(stoks, spk, show_progress_bar=False), seed=2)
    steps = res.counters()["steps"]
    assert got.shape == (1, 4, 3 * len(stoks) - 4) and len(set(got[0, 0].tolist())) > 3
    assert rt.stats["submits"] - s0 < steps + 12  # one per step + the per-chunk encoder and cross K/V
    stoks, spk = s2a_inputs(1, n=8)  # second call: longer input, other speaker and temperature
    same_tokens(lambda: s2a.generate(stoks, spk, T=1.2, show_progress_bar=False),
                lambda: res.generate(stoks, spk, T=1.2, show_progress_bar=False), seed=3)


def test_s2a_prompt(rt, s2a):
    res = ResidentS2A(s2a)
    stoks, spk = s2a_inputs(2)
    g = torch.Generator().manual_seed(7)
    prompt = torch.randint(0, s2a.codes, (1, s2a.quantizers, 5), generator=g)
    same_tokens(lambda: s2a.generate(stoks, spk, atoks_prompt=prompt, show_progress_bar=False),
                lambda: res.generate(stoks, spk, atoks_prompt=prompt, show_progress_bar=False), seed=6)
    assert res.counters()["prefilled_steps"] == 5


def test_s2a_teacher_forced_logits(rt, s2a):
    res = ResidentS2A(s2a, ch=8)
    stoks, spk = s2a_inputs(0)
    stoks = torch.nn.functional.pad(stoks, (1, s2a.stoks_len - len(stoks) - 1), value=s2a.stoks_codes - 1)[None]
    res.start_chunk(stoks, spk)
    with torch.no_grad():
        xenc, xpos, _ = s2a.run_encoder(stoks, spk)
    g = torch.Generator().manual_seed(5)
    cols = torch.randint(0, 1026, (12, 4), generator=g)
    cols[0] = 1025  # the start column, then codes with the delay pattern's 1025 fillers
    cols[1, 2:] = 1025
    pos = torch.arange(12)
    ref, got = [], []
    with torch.no_grad():
        for i in range(12):
            ref.append(s2a(None, cols[i].reshape(1, 4, 1), None, noloss=True, xenc=xenc, xenc_positions=xpos,
                           atoks_positions=pos[i:i + 1]))
            got.append(res.logits(cols[i].tolist(), i))
    ref, got = torch.cat(ref), torch.cat(got)
    assert got.shape == ref.shape == (12, 4, 1, 1026)
    assert rel_err(got.numpy(), ref.numpy()) < 2e-6
    assert res.counters()["dispatches_per_step"] == 8 * len(s2a.decoder.layers) + 3


def test_s2a_conditioned_variant(rt):
    model = s2a_from_spec(s2a_cond_spec())
    assert hasattr(model, "cond_embeddings")
    res = ResidentS2A(model)
    stoks, spk = s2a_inputs(2)
    same_tokens(lambda: model.generate(stoks, spk, show_progress_bar=False),
                lambda: res.generate(stoks, spk, show_progress_bar=False), seed=5)


def test_fallbacks_give_the_same_logits(rt, monkeypatch):
    """Shared-memory reductions (adapters without subgroups) and wgpu-py's public recording API."""
    model = t2s_from_spec(t2s_spec())
    seq = [model.stoks_codes, 3, 9, 27]
    ref, fast = t2s_reference_logits(model, ResidentT2S(model, ch=4), seq)
    res = ResidentT2S(model, ch=4, subgroups=False)
    res.resident_decoder.raw_calls = None
    _, slow = t2s_reference_logits(model, res, seq)
    assert rel_err(slow.numpy(), ref.numpy()) < 2e-6
    assert rel_err(slow.numpy(), fast.numpy()) < 2e-6
