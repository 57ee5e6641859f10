"""Batched resident decode: many sequences share each decode step (wsvk/resident/batching.py), each
with its own tokens: identical to its solo decode and to the CPU model's, in float32."""

import numpy as np
import pytest
import soundfile as sf
import torch

import tiny_models as tm
from conftest import rel_err, rss_mb
from resident_helpers import LOGIT_BOUND, s2a_inputs, t2s_spec
from wsvk.errors import InputError
from wsvk.tts.pipeline import Progress
from wsvk.resident import ResidentS2A, ResidentT2S
from wsvk.tts.models import s2a_from_spec, t2s_from_spec

pytestmark = pytest.mark.usefixtures("f32_precision")

TEXTS = ["hello world", "a b c", "twelve bytes", "x", "so many words", "fin", "the end is near", "ok",
         "more text here", "last one"]
CAPS = [9, 14, 6, 12, 16, 7, 11, 13, 5, 10]  # N per sequence: they leave at different steps


@pytest.fixture(scope="module")
def t2s():
    return t2s_from_spec(t2s_spec())


@pytest.fixture(scope="module")
def s2a():
    return s2a_from_spec(tm.build_s2a(0))


def gen(i):
    return torch.Generator().manual_seed(100 + i)


def cpu_t2s(model, i):
    """whisperspeech's own generate, sampling from the global generator seeded as sequence i's."""
    torch.manual_seed(100 + i)
    return model.generate(TEXTS[i], N=CAPS[i], show_progress_bar=False)


@pytest.mark.parametrize("slots", [1, 3, 8])
def test_t2s_batch_equals_solo_and_cpu(rt, t2s, slots):
    """10 sequences of different lengths through `slots` slots: they join as slots free up and
    leave at their own ends; every sequence's tokens equal the CPU model's; one submit per step
    (plus one per joining chunk: its encoder pass and cross K/V)."""
    res = ResidentT2S(t2s, slots=slots, ch=4)
    seqs = [res.sequence(TEXTS[i], N=CAPS[i], generator=gen(i)) for i in range(len(TEXTS))]
    s0 = rt.stats["submits"]
    res.run(seqs)
    c = res.counters()
    assert rt.stats["submits"] - s0 == c["steps"] + len(seqs)
    # the host's time between two steps is counted, but not across a join (an encoder pass)
    dec = res.resident_decoder
    assert c["gap_s"] > 0 and c["steps"] - len(seqs) <= dec.gaps <= c["steps"] - 1
    if slots == 1:  # one after another: every step its own, a join before each sequence
        assert c["steps"] == sum(n - 1 for n in CAPS) and dec.gaps == c["steps"] - len(seqs)
    else:  # sequences really shared steps
        assert c["columns_per_step"] > 1.5 and c["steps"] < sum(n - 1 for n in CAPS)
    for i, seq in enumerate(seqs):
        ref = cpu_t2s(t2s, i)
        assert torch.equal(seq.result, ref), (i, seq.result.tolist(), ref.tolist())


@pytest.mark.parametrize("slots", [1, 3, 8])
def test_s2a_batch_equals_cpu(rt, s2a, slots):
    """10 sequences of different lengths through `slots` slots, as for T2S: tokens equal to the CPU
    model's, one submit per step plus one per joining sequence, the samples' draws taken ahead."""
    res = ResidentS2A(s2a, slots=slots, ch=8)
    inputs = [s2a_inputs(i, n=n) for i, n in enumerate((5, 3, 7, 4, 6, 2, 8, 3, 5, 4))]
    seqs = [res.sequence(stoks, spk, generator=gen(i)) for i, (stoks, spk) in enumerate(inputs)]
    ahead = []  # every sample used draws taken while its step ran on the GPU, and still matches
    for seq in seqs:
        seq.draws.take = lambda d=seq.draws, take=seq.draws.take: (ahead.append(d.q is not None), take())[1]
    s0 = rt.stats["submits"]
    res.run(seqs)
    c = res.counters()
    assert rt.stats["submits"] - s0 == c["steps"] + len(seqs)
    assert len(ahead) == round(c["columns_per_step"] * c["steps"]) and all(ahead)
    assert c["columns_per_step"] > (1.5 if slots > 1 else 0.99) and c["feed_s_per_step"] > 0
    for i, ((stoks, spk), seq) in enumerate(zip(inputs, seqs)):
        torch.manual_seed(100 + i)
        ref = s2a.generate(stoks, spk, show_progress_bar=False)
        assert torch.equal(seq.result, ref), i


def test_a_cancelled_sequence_leaves_without_disturbing_the_others(rt, t2s):
    res = ResidentT2S(t2s, slots=3, ch=4)
    seqs = [res.sequence(TEXTS[i], N=CAPS[i], generator=gen(i)) for i in range(5)]
    steps = []

    def cancel_after_three():
        steps.append(1)
        if len(steps) == 3:
            seqs[1].cancelled = True

    seqs[1].step = cancel_after_three
    res.run(seqs)
    assert seqs[1].result is None and len(steps) == 3
    for i in (0, 2, 3, 4):
        assert torch.equal(seqs[i].result, cpu_t2s(t2s, i)), i


@pytest.mark.parametrize("precision", ["f32", pytest.param("f16", marks=pytest.mark.needs_f16)])
def test_step_many_logits_equal_solo_steps(rt, t2s, monkeypatch, precision):
    """Three slots with their own chunks at their own positions in one step: each column's logits
    are its solo step's (f32: to rounding; f16: within the f16 bound of the f32 logits)."""
    monkeypatch.setenv("WSVK_PRECISION", "f32")
    solo = ResidentT2S(t2s, ch=4)
    monkeypatch.setenv("WSVK_PRECISION", precision)
    batch = ResidentT2S(t2s, slots=3, ch=4)
    texts = ["hello world", "other words!", "third"]
    runs = {}
    for slot, text in enumerate(texts):
        ttoks, langs, cpss = _inputs(t2s, text)
        batch.start_chunk(ttoks, langs, cpss, slot=slot)
    ref = []
    for slot, text in enumerate(texts):  # slot s decodes positions s .. s + 5 (own lengths)
        ttoks, langs, cpss = _inputs(t2s, text)
        solo.start_chunk(ttoks, langs, cpss)
        ref.append([solo.logits(5 + k, k).numpy()[0, 0] for k in range(slot + 6)])
    for slot in range(3):  # the first positions of slots 1 and 2 alone, then all three together
        for k in range(slot):
            runs.setdefault(slot, []).append(batch.resident_decoder.step([5 + k], k, slot=slot))
    for k in range(6):
        rows = batch.resident_decoder.step_many([(s, [5 + s + k], s + k) for s in range(3)])
        for s in range(3):
            runs.setdefault(s, []).append(rows[s] * batch.output_scale())
    for s in range(3):
        got, want = np.stack(runs[s][s:]), np.stack(ref[s][s:])
        err = rel_err(got, want)
        assert (err < 1e-6) if precision == "f32" else (0 < err < LOGIT_BOUND), (s, err)


def _inputs(model, text):
    from wsvk.resident.t2s import t2s_inputs

    return t2s_inputs(model, text, "en", 15)


def test_slot_and_step_errors(rt, t2s):
    res = ResidentT2S(t2s, slots=2)
    dec = res.resident_decoder
    with pytest.raises(ValueError, match="slot 2 outside"):
        dec.step([0], 0, slot=2)
    with pytest.raises(ValueError, match="twice"):
        dec.step_many([(0, [0], 0), (0, [1], 1)])
    with pytest.raises(ValueError, match="1 to 2 columns"):
        dec.step_many([(0, [0], 0), (1, [0], 0), (1, [0], 0)])
    with pytest.raises(ValueError, match="at least one slot"):
        ResidentT2S(t2s, slots=0)


def test_kv_caches_over_the_binding_limit_say_how_many_slots_fit(rt, t2s, monkeypatch):
    monkeypatch.setitem(rt.limits, "max-storage-buffer-binding-size", 3 * 64 * tm.TTOKS_LEN * 4)
    with pytest.raises(ValueError, match="use at most 3 slots"):
        ResidentT2S(t2s, slots=4)
    ResidentT2S(t2s, slots=3)


def test_generate_batch_inputs_are_checked_first(rt, tmp_path):
    from wsvk.tts import load_pipeline

    pipe = load_pipeline(random_weights="tiny")
    voice = str(tm.write_voice(tmp_path / "voice.wav"))
    sf.write(str(tmp_path / "silent.wav"), np.zeros(16000, np.float32), 16000)
    bad = [
        (dict(texts=["fine", ""]), "text 1: the text is empty"),
        (dict(texts=["fine", 5]), "text 1: text must be a str"),
        (dict(texts="not a list"), "list of str"),
        (dict(texts=[]), "no texts"),
        (dict(texts=["a", "b"], lang=["en"]), "lang has 1 values for 2 texts"),
        (dict(texts=["a", "b"], lang=["en", "xx"]), "text 1: unknown language 'xx'"),
        (dict(texts=["a", "b"], cps=[15, -1]), "text 1: cps"),
        (dict(texts=["a"], seed="7"), "text 0: seed must be an integer from 0 to 4294967295, got '7'"),
        (dict(texts=["a", "b"], seed=[1, -1]), "text 1: seed must be an integer from 0 to 4294967295, got -1"),
        (dict(texts=["a"], seed=2**32), "text 0: seed must be an integer"),  # it would alias seed 0
        (dict(texts=["a"], speaker="/no/such/voice.wav"), "text 0: speaker audio file not found"),
        # text 0's voice is good: nothing is embedded before text 1 is checked too
        (dict(texts=["a", "b"], speaker=voice, lang=["en", "xx"]), "text 1: unknown language 'xx'"),
        (dict(texts=["a", "b"], speaker=[voice, str(tmp_path / "silent.wav")]), "text 1: speaker file .* is silent"),
        (dict(texts=["a", "b"], speaker=[voice, np.zeros(3)]), "text 1: speaker embedding has 3 values"),
    ]
    calls = []
    pipe.stages.run_stage = lambda *a, **k: calls.append(a)  # no stage may start
    pipe.speaker_encoder = lambda: calls.append("the speaker encoder")  # nor may the speaker encoder
    for kw, words in bad:
        with pytest.raises(InputError, match=words):
            pipe.generate_batch(**kw)
    assert not calls
    with pytest.raises(InputError, match="seed must be an integer from 0 to 4294967295, got -3"):
        load_pipeline(random_weights="tiny", seed=-3)


# ---------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def tiny_files(tiny):
    return tiny


def pipeline(files, **kw):
    from wsvk.tts import load_pipeline

    return load_pipeline(t2s=str(files["t2s"]), s2a=str(files["s2a"]), vocoder=str(files["vocoder"]),
                         speaker_model=str(files["speaker_model"]), **kw)


BATCH = ["Hi there, friend.", "A second caller speaks at some length here.", "Short one."]


def test_generate_batch_equals_solo_generate(rt, tiny_files, monkeypatch):
    """With one seed, text i of a batch sounds as generate(texts[i]) does; per-text seeds, langs,
    speeds and speakers too; the batch shared decode steps."""
    monkeypatch.setenv("WSVK_BACKEND", "wgpu")
    pipe = pipeline(tiny_files, slots=4)
    solo = [pipe.generate(t, seed=5) for t in BATCH]
    pipe.stages.resident["t2s"].reset_counters()
    together = pipe.generate_batch(BATCH, seed=5)
    assert pipe.resident_modules()["t2s"]["columns_per_step"] > 1.5
    for a, b in zip(together, solo):
        assert a.shape == b.shape and a.size > 0 and rel_err(a, b) < 1e-5
    voice = str(tiny_files["voice"])
    mixed = pipe.generate_batch(BATCH, speaker=[None, voice, None], lang=["en", "pl", "en"], cps=[15, 12, 18],
                                seed=[1, 2, 3])
    for i, (spk, lang, cps, seed) in enumerate(zip([None, voice, None], ["en", "pl", "en"], [15, 12, 18], [1, 2, 3])):
        ref = pipe.generate(BATCH[i], speaker=spk, lang=lang, cps=cps, seed=seed)
        assert rel_err(mixed[i], ref) < 1e-5, i


def test_long_text_batched_equals_the_cpu_backend(rt, tiny_files, monkeypatch):
    monkeypatch.setenv("WSVK_BACKEND", "cpu")
    text = " ".join(f"Sentence {i} says a few words." for i in range(8))
    cpu = pipeline(tiny_files)
    ref = cpu.generate(text, seed=3)
    monkeypatch.setenv("WSVK_BACKEND", "wgpu")
    gpu = pipeline(tiny_files, slots=3)  # more chunks than slots: they run as slots free up
    got = gpu.generate(text, seed=3)
    assert len(gpu.last.chunks) > 3 and gpu.last.chunks == cpu.last.chunks
    assert all(torch.equal(a, b) for a, b in zip(gpu.last.stoks, cpu.last.stoks))
    assert got.shape == ref.shape and rel_err(got, ref) < 1e-4


def test_gpu_fault_mid_batch_finishes_every_text_on_the_cpu(rt, tiny_files, monkeypatch):
    monkeypatch.setenv("WSVK_BACKEND", "cpu")
    ref = pipeline(tiny_files).generate_batch(BATCH, seed=9)
    monkeypatch.setenv("WSVK_BACKEND", "wgpu")
    pipe = pipeline(tiny_files, slots=4)
    real = pipe.stages.run_stage

    def fault_in_s2a(stage, *a):
        if stage == "s2a":
            rt.fault_after = rt.stats["submits"] + 6  # a few batched steps in
        return real(stage, *a)

    pipe.stages.run_stage = fault_in_s2a
    events = []

    class Recorder(Progress):  # the S2A stage starts over on the CPU: its steps count from 0 again
        def stage_start(self, stage, chunk, n_chunks, total_steps):
            events.append([stage, total_steps, 0])

        def step(self, stage):
            events[-1][2] += 1

    pipe.progress = Recorder()
    try:
        with pytest.warns(RuntimeWarning) as caught:
            got = pipe.generate_batch(BATCH, seed=9)
    finally:
        rt.fault_after, rt.lost = None, None
    assert len([w for w in caught if "wsvk" in str(w.message)]) == 1 and len(pipe.last.faults) == 1
    assert [e[0] for e in events] == ["t2s", "s2a", "s2a", "vocos"], events
    assert 0 < events[1][2] < events[2][2] <= events[2][1]  # the GPU's steps, then the CPU's whole run
    for a, b in zip(got, ref):
        assert a.shape == b.shape and rel_err(a, b) < 1e-4


@pytest.mark.slow
def test_memory_flat_over_100_batched_calls(rt, tiny_files, monkeypatch):
    monkeypatch.setenv("WSVK_BACKEND", "wgpu")
    pipe = pipeline(tiny_files, slots=3)
    for i in range(3):
        pipe.generate_batch(["Warm up.", "Twice."], seed=i)
    gpu_before = rt.pool.allocated_bytes
    rss_before = rss_mb()
    for i in range(100):  # 200 texts: ~5 min on a slow 2-core machine
        pipe.generate_batch(["Again and again.", "And more."], seed=i % 4)
    assert rt.pool.allocated_bytes <= gpu_before
    grown_mb = rss_mb() - rss_before
    assert grown_mb < 64, f"host memory grew by {grown_mb:.0f} MB over 100 batched calls"
