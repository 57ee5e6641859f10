"""The WhisperSpeech pipeline end to end on tiny random models saved in the released formats.

The wgpu/cpu comparison runs on whatever adapter wgpu finds (lavapipe in CI); the other
pipeline tests use the cpu backend, since chunking and loading do not depend on it.
"""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models as tm  # noqa: E402
from conftest import rel_err, rss_mb  # noqa: E402

from wsvk.errors import ConfigError, InputError
from wsvk.tts.models import load_s2a, load_t2s, load_vocos, random_t2s, random_vocos  # noqa: E402
from wsvk.tts.speaker import DEFAULT_SPEAKER_MODEL, SpeakerEncoder, read_speaker_audio  # noqa: E402
from wsvk.tts.textsplit import split_text, utf8_len  # noqa: E402
from wsvk.tts.pipeline import SAMPLE_RATE, load_pipeline  # noqa: E402

POLISH = "Zażółć gęślą jaźń, pchnąć w tę łódź jeża lub ośm skrzyń fig."


pytestmark = pytest.mark.usefixtures("f32_precision")  # identical tokens / f32 rounding vs the CPU


@pytest.fixture
def backend(monkeypatch):
    """Switch WSVK_BACKEND inside a test (restored afterwards). offload() reads it on every call,
    so the process runtime is kept: resetting it would swap the device under the session `rt`."""
    return lambda name: monkeypatch.setenv("WSVK_BACKEND", name)


def tiny_pipeline(tiny, seed=7, resident=True):
    return load_pipeline(t2s=str(tiny["t2s"]), s2a=str(tiny["s2a"]), vocoder=str(tiny["vocoder"]),
                         speaker_model=str(tiny["speaker_model"]), seed=seed, resident=resident)


# ---------------------------------------------------------------- text splitting


def test_split_keeps_every_character_and_respects_the_byte_limit():
    text = ("The first sentence is short. The second one, however, goes on; it has clauses - and a dash. "
            + POLISH + " " + "Supercalifragilisticexpialidocious" * 3 + " end.")
    for limit in (4, 7, 20, 47, 100, 10_000):
        chunks = split_text(text, limit)
        assert all(0 < utf8_len(c) <= limit for c in chunks), limit
        assert "".join(chunks).replace(" ", "") == text.replace(" ", "")
        for c in chunks:  # every chunk is valid text (no split inside a multi-byte character)
            assert c.encode("utf-8").decode("utf-8") == c
    assert split_text(text, 10_000) == [text]


def test_split_prefers_sentences_then_clauses_then_words():
    assert split_text("One two three. Four five six.", 16) == ["One two three.", "Four five six."]
    assert split_text('He said "stop." Then left.', 16) == ['He said "stop."', "Then left."]
    assert split_text("alpha beta, gamma delta", 12) == ["alpha beta,", "gamma delta"]
    assert split_text("alpha beta gamma", 11) == ["alpha beta", "gamma"]
    # a word longer than the limit: cut by bytes, at character boundaries ("ż" is 2 bytes)
    assert split_text("żżżżż", 5) == ["żż", "żż", "ż"]
    assert split_text("  \n\t ", 10) == []
    with pytest.raises(ValueError):
        split_text("x", 3)


# ---------------------------------------------------------------- loading


def test_loaders_read_sizes_from_the_files(tiny):
    t2s, s2a, vocos = load_t2s(str(tiny["t2s"])), load_s2a(str(tiny["s2a"])), load_vocos(str(tiny["vocoder"]))
    assert (t2s.ttoks_len, t2s.stoks_len, t2s.width) == (tm.TTOKS_LEN, tm.STOKS_LEN, 64)
    assert (s2a.stoks_len, s2a.quantizers, s2a.width) == (tm.STOKS_LEN, 4, 64)
    assert vocos.backbone.embed.out_channels == 32
    for m in (t2s, s2a, vocos):  # float32 on the CPU, never whisperspeech's fp16 default
        assert {p.dtype for p in m.parameters()} == {torch.float32}
    # decoding needs only the codebooks, which came from the file (not the random EnCodec)
    saved = torch.load(tiny["vocoder"] / "pytorch_model.bin", weights_only=True)
    assert torch.equal(vocos.feature_extractor.codebook_weights, saved["feature_extractor.codebook_weights"])


def test_bad_model_files_raise_one_clear_error(tiny, tmp_path):
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"this is not a checkpoint")
    wrong = tmp_path / "wrong.model"
    torch.save({"weights": torch.zeros(3)}, wrong)
    cases = [
        (lambda: load_t2s(str(tmp_path / "missing.model")), "T2S model file not found"),
        (lambda: load_t2s(str(corrupt)), "not a readable PyTorch checkpoint"),
        (lambda: load_s2a(str(wrong)), "not a WhisperSpeech model"),
        (lambda: load_s2a(str(tiny["t2s"])), "does not match its model class"),
        (lambda: load_vocos(str(tmp_path / "no-vocos")), "vocoder folder not found"),
        (lambda: load_vocos(str(tmp_path)), "lacks config.yaml, pytorch_model.bin"),
        (lambda: SpeakerEncoder.load(str(tmp_path / "no-ecapa")), "speaker model folder not found"),
    ]
    for fn, words in cases:
        with pytest.raises(InputError, match=words) as e:
            fn()
        assert "\n" not in str(e.value)


def test_offline_without_cache_names_what_to_download(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # read at call time
    with pytest.raises(InputError, match=r"hf download collabora/whisperspeech t2s-.*machine, or pass --t2s PATH"):
        load_t2s()
    with pytest.raises(InputError, match=r"download charactr/vocos-encodec-24khz`.*--vocoder FOLDER"):
        load_vocos()
    with pytest.raises(InputError) as e:  # a first offline run: one line naming every download
        load_pipeline()
    assert str(e.value).count("hf download") == 3 and "\n" not in str(e.value)
    assert "(--t2s, --s2a, --vocoder)" in str(e.value)
    with pytest.raises(InputError) as e:  # a run that clones a voice needs the speaker model too
        load_pipeline(speaker=True)
    assert str(e.value).count("hf download") == 4 and "`hf download speechbrain/spkrec-ecapa-voxceleb`" in str(e.value)
    assert "(--t2s, --s2a, --vocoder, --speaker-model)" in str(e.value)
    with pytest.raises(InputError, match=r"^speaker model speechbrain/spkrec-ecapa-voxceleb is not in"):
        load_pipeline(random_weights="tiny", speaker=True, speaker_model=DEFAULT_SPEAKER_MODEL)  # only it missing
    with pytest.raises(InputError, match=r"speechbrain/spkrec-ecapa-voxceleb.*--speaker-model"):
        SpeakerEncoder.load()


def test_random_weights_use_whisperspeech_presets():
    from whisperspeech import t2s_up_wds_mlang_enclm as t2s_mod

    model = random_t2s("tiny", seed=0)
    preset = t2s_mod._make_model("tiny", t2s_mod.Tunables(), model_data())
    assert (model.depth, model.n_head, model.width) == (preset.depth, preset.n_head, preset.width)
    assert model.ttoks_len == 550  # the released text window
    model.ensure_tokenizer()  # whisperspeech's byte tokenizer, no download
    assert model.tokenizer.encode("żaba") == list("żaba".encode("utf-8"))
    vocos = random_vocos(seed=0)  # the released Vocos config
    assert (vocos.backbone.embed.out_channels, vocos.head.istft.n_fft) == (384, 1280)
    with pytest.raises(InputError):
        load_pipeline(random_weights="huge")


def model_data():
    from types import SimpleNamespace

    return SimpleNamespace(ttoks_len=550, stoks_len=750, stoks_codes=513)


# ---------------------------------------------------------------- generation


@pytest.mark.parametrize("resident", [False, True], ids=["router", "resident"])
def test_wgpu_and_cpu_give_the_same_speech(tiny, rt, backend, resident):
    """Same seed -> same tokens on both backends; audio within float32 rounding; every stage's
    hot ops really ran on the GPU (op by op through the router, or as resident modules)."""
    text = "Hi there, friend."
    runs = {}
    for name in ("cpu", "wgpu"):
        backend(name)
        pipe = tiny_pipeline(tiny, resident=resident)
        audio = pipe.generate(text, speaker=str(tiny["voice"]), seed=11)
        assert pipe.last.seconds["speaker"] > 0  # the encoder ran for this call, and it says so
        spk = pipe.speaker_embedding(str(tiny["voice"]))
        runs[name] = (pipe, audio, spk)
    (cpu, a_cpu, s_cpu), (gpu, a_gpu, s_gpu) = runs["cpu"], runs["wgpu"]
    assert len(cpu.last.stoks) == len(gpu.last.stoks) == 1
    assert torch.equal(cpu.last.stoks[0], gpu.last.stoks[0])
    assert torch.equal(cpu.last.atoks[0], gpu.last.atoks[0])
    assert a_cpu.shape == a_gpu.shape and a_cpu.size > 0
    assert rel_err(a_gpu, a_cpu) < 1e-4, rel_err(a_gpu, a_cpu)
    assert rel_err(s_gpu, s_cpu) < 1e-4, rel_err(s_gpu, s_cpu)
    expected = {"t2s": ("linear", "sdpa"), "s2a": ("linear", "sdpa"), "vocos": ("linear", "fft"),
                "speaker": ("fft", "matmul", "conv1d")}  # ECAPA: fbank, convolutions, no linear/sdpa
    if resident:  # encoders, decode steps and Vocos are resident: only the speaker encoder is routed
        for stage in ("t2s", "s2a", "vocos"):
            assert gpu.stage_stats[stage].gpu_calls("resident") == 1
            assert cpu.stage_stats[stage].gpu_calls("resident") == 0
            assert not any(gpu.stage_stats[stage].gpu_calls(op) for op in ("linear", "sdpa", "fft", "matmul")), (stage, gpu.stage_stats[stage].table())
            del expected[stage]
    for stage, ops in expected.items():
        for op in ops:
            assert gpu.stage_stats[stage].gpu_calls(op) > 0, (stage, op, gpu.stage_stats[stage].table())
            assert cpu.stage_stats[stage].gpu_calls(op) == 0
            assert cpu.stage_stats[stage].cpu_calls(op) > 0


def test_slots_follow_the_adapters_memory(tiny, rt, backend, monkeypatch):
    """Without WSVK_SLOTS the decoders get default_slots for this pair of models (on a discrete
    GPU: as many as half its memory holds), the caches cost what slot_bytes says, and a number
    asked for that the memory cannot hold is refused with one line saying how many fit."""
    from wsvk.resident import ResidentS2A, ResidentT2S
    from wsvk.tts import stages
    from wsvk.tts.stages import default_slots

    backend("wgpu")
    monkeypatch.delenv("WSVK_SLOTS", raising=False)
    pipe = tiny_pipeline(tiny)
    size = rt.weight_dtype.itemsize
    decoders = ((ResidentT2S, pipe.t2s), (ResidentS2A, pipe.s2a))
    per_slot = sum(cls.slot_bytes(m, size) for cls, m in decoders)
    fit = min(cls.max_slots(m, size, rt.max_binding) for cls, m in decoders)
    precision = rt.precision()[0]
    weights = sum(cls.weight_estimate(m, precision, size) for cls, m in decoders)
    n = pipe.stages.slots()
    assert n == default_slots(rt, per_slot, fit, weights) and (n == 4 or rt.info["type"] != "CPU")
    t2s, s2a = pipe.stages.gpu_runner("t2s"), pipe.stages.gpu_runner("s2a")
    assert t2s.slots == s2a.slots == n
    assert sum(dec.resident_decoder.plan.slot_bytes() for dec in (t2s, s2a)) == per_slot
    monkeypatch.setitem(rt.info, "type", "DiscreteGPU")  # a small discrete GPU: the weights and 6 slots
    monkeypatch.setitem(rt.info, "memory", 6 * per_slot + weights)
    assert tiny_pipeline(tiny).stages.slots() == default_slots(rt, per_slot, fit, weights) < 6
    assert pipe.stages.slots() == n  # decoders already built keep theirs
    assert load_pipeline(t2s=str(tiny["t2s"]), s2a=str(tiny["s2a"]), vocoder=str(tiny["vocoder"]),
                         slots=2).stages.slots() == 2
    monkeypatch.setenv("WSVK_SLOTS", "6")  # asked for: allowed up to all of the memory
    assert tiny_pipeline(tiny).stages.slots() == 6
    monkeypatch.setenv("WSVK_SLOTS", "7")  # more than the memory holds: one clear error, before any work
    with pytest.raises(ConfigError, match=r"7 slots need .* of KV caches .* of weights at .* use at most 6 \(WSVK_SLOTS"):
        tiny_pipeline(tiny).generate("Hi.", seed=1)
    # an integrated GPU whose share of the host's memory cannot hold the models at f16: q8 named
    monkeypatch.delenv("WSVK_SLOTS")
    monkeypatch.setitem(rt.info, "type", "IntegratedGPU")
    q8_size = rt.storage_dtype("q8").itemsize
    q8 = sum(cls.weight_estimate(m, "q8", q8_size) for cls, m in decoders)
    q8_slot = sum(cls.slot_bytes(m, q8_size) for cls, m in decoders)
    monkeypatch.setattr(stages, "host_memory", lambda: 2 * (q8 + 2 * q8_slot))  # half of it: q8 and 2 slots
    assert precision != "q8"
    with pytest.raises(ConfigError, match=rf"need .* of weights at {precision} plus .* per slot, more than .*: "
                                          r"use WSVK_PRECISION=q8 \(WSVK_SLOTS=2 fits\)"):
        tiny_pipeline(tiny).stages.slots()
    monkeypatch.setenv("WSVK_PRECISION", "q8")
    assert tiny_pipeline(tiny).stages.slots() == 2


def test_s2a_padding_code_decodes_as_on_the_cpu(tiny, rt, backend, tmp_path):
    """S2A may sample its padding code 1024 (trained models do, at the end of speech); vocos'
    lookup then reads the next codebook's row. The wgpu backend gives the same audio, no error."""
    spec = torch.load(tiny["s2a"], weights_only=False)
    for i in range(4):  # a long padding-code embedding: large logits for 1024, often sampled
        spec["state_dict"][f"embds.embeddings.{i}.special.weight"][0] *= 30
    torch.save(spec, tmp_path / "s2a-pad.model")
    runs = {}
    for name in ("cpu", "wgpu"):
        backend(name)
        pipe = load_pipeline(t2s=str(tiny["t2s"]), s2a=str(tmp_path / "s2a-pad.model"), vocoder=str(tiny["vocoder"]),
                             speaker_model=str(tiny["speaker_model"]))
        runs[name] = (pipe.generate("Hi there, friend.", seed=5), pipe.last.atoks[0])
    (a_cpu, t_cpu), (a_gpu, t_gpu) = runs["cpu"], runs["wgpu"]
    assert torch.equal(t_cpu, t_gpu) and (t_gpu == 1024).any()
    assert rel_err(a_gpu, a_cpu) < 1e-4, rel_err(a_gpu, a_cpu)


@pytest.mark.parametrize("stage, after", [("t2s", 3), ("s2a", 3), ("vocos", 0), ("vocos", 1)])
def test_gpu_fault_in_a_stage_still_gives_the_cpu_audio(tiny, rt, backend, stage, after):
    """A lost device in the middle of a stage (`after` submits into it: a few decode steps, or
    Vocos' first or second submit): one warning, that stage reruns on the CPU with the same seed,
    and the WAV equals an uninterrupted CPU run."""
    backend("cpu")
    ref = tiny_pipeline(tiny).generate("Hi there, friend.", seed=11)
    backend("wgpu")
    pipe = tiny_pipeline(tiny)
    real_run = pipe.stages.run_stage

    def spy(st, *args):
        if st == stage:
            rt.fault_after = rt.stats["submits"] + after
        return real_run(st, *args)

    pipe.stages.run_stage = spy
    try:
        with pytest.warns(RuntimeWarning) as caught:
            audio = pipe.generate("Hi there, friend.", seed=11)
    finally:
        rt.fault_after, rt.lost = None, None
    assert [str(w.message) for w in caught if "wsvk" in str(w.message)] == [
        f"wsvk: {pipe.stage_stats[stage].faults[0]}; finished the {stage} stage on the CPU"]  # one warning
    assert len(pipe.last.faults) == 1 and pipe.last.faults[0].startswith(stage)
    assert audio.shape == ref.shape and rel_err(audio, ref) < 1e-4
    if stage == "vocos":
        assert pipe._resident["vocos"].submits_per_call > after  # the fault landed inside the chunk


def test_threads_get_their_own_audio(tiny, rt, backend):
    """One pipeline shared by 4 threads with different seeds: each gets what a serial run gives."""
    import threading

    backend("wgpu")
    pipe = tiny_pipeline(tiny)
    texts = {seed: f"Caller number {seed} speaks." for seed in (1, 2, 3, 4)}
    serial = {seed: pipe.generate(text, seed=seed) for seed, text in texts.items()}
    got, errors = {}, []

    def work(seed):
        try:
            got[seed] = pipe.generate(texts[seed], seed=seed)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for seed in texts:
        assert got[seed].shape == serial[seed].shape and rel_err(got[seed], serial[seed]) < 1e-5


@pytest.mark.slow
def test_many_generate_calls_keep_memory_flat(tiny, rt, backend):
    """100 calls on one pipeline: the buffer pool is reused, GPU and host memory stay flat."""
    backend("wgpu")
    pipe = tiny_pipeline(tiny)
    for i in range(3):
        pipe.generate("Warm up.", seed=i)
    gpu_before = rt.pool.allocated_bytes
    rss_before = rss_mb()
    for i in range(100):
        pipe.generate("Again and again.", seed=i % 4)
    assert rt.pool.allocated_bytes <= gpu_before
    grown_mb = rss_mb() - rss_before
    assert grown_mb < 64, f"host memory grew by {grown_mb:.0f} MB over 100 calls"


def test_voice_cloning_embedding_matches_across_backends(tiny, rt, backend):
    wav = read_speaker_audio(tiny["voice"])  # 44.1 kHz stereo, 1.5 s -> 16 kHz mono
    assert wav.dtype == torch.float32 and wav.dim() == 1 and abs(wav.numel() - 24000) <= 1
    enc = SpeakerEncoder.load(str(tiny["speaker_model"]))
    from wsvk.router import RouterStats, offload

    embs = {}
    for name in ("cpu", "wgpu"):
        backend(name)
        stats = RouterStats()
        with offload(stats):
            embs[name] = enc.embed(tiny["voice"])
        assert (stats.gpu_calls("fft") > 0) == (name == "wgpu"), stats.table()
    assert embs["cpu"].shape == (192,)
    assert rel_err(embs["wgpu"], embs["cpu"]) < 1e-4


def test_speaker_embeddings_are_cached_by_content(tiny, backend, tmp_path, monkeypatch):
    import wsvk.tts.pipeline as wws

    backend("cpu")
    pipe = tiny_pipeline(tiny)
    calls = []
    enc = pipe.speaker_encoder()
    real = enc.embed_waveform
    monkeypatch.setattr(enc, "embed_waveform", lambda wav: (calls.append(1), real(wav))[1])
    first = pipe.speaker_embedding(str(tiny["voice"]))
    ref = first.clone()
    first += 1  # the caller's copy: the cache keeps its own
    again = pipe.speaker_embedding(str(tiny["voice"]))
    assert len(calls) == 1 and torch.equal(again, ref)
    other = tm.write_voice(tmp_path / "other.wav", seed=1)  # same length, other samples: computed
    assert not torch.equal(pipe.speaker_embedding(str(other)), again) and len(calls) == 2
    copy = tmp_path / "copy.wav"  # same samples under another name: cached
    copy.write_bytes(tiny["voice"].read_bytes())
    pipe.speaker_embedding(str(copy))
    assert len(calls) == 2
    monkeypatch.setattr(wws, "SPEAKER_CACHE", 2)
    for i in range(4):
        pipe.speaker_embedding(torch.full((1600,), 0.01 * i))
    assert len(pipe._speakers) == 2 and len(calls) == 6


def test_long_text_is_split_and_every_chunk_spoken(tiny, backend):
    backend("cpu")
    pipe = tiny_pipeline(tiny)
    text = ("This sentence is the first of several. Here comes a second one, with a clause. "
            "And a third that ends it all, at last!")
    audio = pipe.generate(text, seed=3)
    chunks = pipe.last.chunks
    assert len(chunks) >= 3
    assert all(utf8_len(c) <= pipe.max_text_bytes == tm.TTOKS_LEN - 1 for c in chunks)
    assert " ".join(chunks) == " ".join(text.split())
    hop = 320  # Vocos: one EnCodec frame = 320 samples at 24 kHz
    assert all(a is not None for a in pipe.last.atoks)
    assert audio.size == sum(a.shape[-1] * hop for a in pipe.last.atoks)
    assert np.isfinite(audio).all() and audio.dtype == np.float32
    assert math.isclose(pipe.last.audio_seconds, audio.size / SAMPLE_RATE)
    again = pipe.generate(text, seed=3)  # same seed, same audio
    assert np.array_equal(audio, again)


def test_long_text_on_wgpu_matches_cpu(tiny, rt, backend):
    """Several chunks through the resident modules (each chunk restarts the encoders and caches):
    the same tokens as the cpu backend chunk by chunk, audio within float32 rounding."""
    text = "This sentence is the first of several. Here comes a second one, with a clause."
    runs = {}
    for name in ("cpu", "wgpu"):
        backend(name)
        pipe = tiny_pipeline(tiny)
        runs[name] = (pipe.generate(text, seed=3), pipe.last)
    (a_cpu, cpu), (a_gpu, gpu) = runs["cpu"], runs["wgpu"]
    assert len(gpu.chunks) >= 2 and gpu.chunks == cpu.chunks
    for s_c, s_g, t_c, t_g in zip(cpu.stoks, gpu.stoks, cpu.atoks, gpu.atoks):
        assert torch.equal(s_c, s_g) and torch.equal(t_c, t_g)
    assert a_cpu.shape == a_gpu.shape and rel_err(a_gpu, a_cpu) < 1e-4


def test_polish_text(tiny, backend):
    backend("cpu")
    pipe = tiny_pipeline(tiny)
    audio = pipe.generate(POLISH, lang="pl", seed=5)
    assert audio.size > 0 and np.isfinite(audio).all()
    assert "".join(pipe.last.chunks).replace(" ", "") == POLISH.replace(" ", "")
    assert all(utf8_len(c) <= pipe.max_text_bytes for c in pipe.last.chunks)
    assert split_text("żżżż żżżż", 9) == ["żżżż", "żżżż"]  # 9 characters would fit; its 17 bytes do not


def test_generate_rejects_bad_arguments(tiny, backend):
    backend("cpu")
    pipe = tiny_pipeline(tiny)
    with pytest.raises(InputError, match="empty"):
        pipe.generate(" \n ")
    with pytest.raises(InputError, match="unknown language 'xx'; valid: en, zh"):
        pipe.generate("hi", lang="xx")
    with pytest.raises(InputError, match="cps"):
        pipe.generate("hi", cps=0)
    with pytest.raises(InputError, match="speaker audio file not found"):
        pipe.generate("hi", speaker="/no/such/voice.wav")
    with pytest.raises(InputError, match="not a readable audio file"):
        pipe.generate("hi", speaker=str(tiny["t2s"]))
    with pytest.raises(InputError, match="192"):
        pipe.generate("hi", speaker=np.zeros(10, np.float32))


def test_silent_voice_files_are_refused(tmp_path):
    import soundfile as sf

    t = np.arange(16000) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    sf.write(tmp_path / "silent.wav", np.zeros(16000), 16000)
    sf.write(tmp_path / "opposed.wav", np.stack([tone, -tone], axis=1), 16000)
    sf.write(tmp_path / "quiet.wav", tone * 0.01, 16000)  # -50 dBFS: quiet, not silent
    with pytest.raises(InputError, match="silent.wav is silent$"):
        read_speaker_audio(tmp_path / "silent.wav")
    with pytest.raises(InputError, match="silent once its channels are mixed to mono"):
        read_speaker_audio(tmp_path / "opposed.wav")
    assert read_speaker_audio(tmp_path / "quiet.wav").abs().max() > 1e-3


def test_conditioned_s2a_variant_is_picked_by_its_keys(tmp_path):
    """Checkpoints with cond_embeddings.* (the v1.95 S2A) load into whisperspeech's _cond class."""
    import dataclasses

    from whisperspeech import s2a_delar_mup_wds_mlang_cond as cond

    config = dict(depth=1, ctx_n=48, stoks_len=16, stoks_codes=65, stoks_width=None, spk_width=192,
                  atoks_width=None, n_head=2, head_width=32, ffn_mult=2, quantizers=4, speaker_map={"1": 0})
    tunables = cond.Tunables(encoder_depth_ratio=0.5)
    model = cond.SADelARTransformer(**config, tunables=tunables)
    torch.save(dict(config=config, tunables=dataclasses.asdict(tunables), state_dict=model.state_dict()),
               tmp_path / "s2a-cond.model")
    s2a = load_s2a(str(tmp_path / "s2a-cond.model"))
    assert isinstance(s2a, cond.SADelARTransformer)
    torch.manual_seed(0)
    atoks = s2a.generate(torch.arange(10), torch.randn(1, 192), show_progress_bar=False)
    assert atoks.shape[:2] == (1, 4) and atoks.shape[-1] > 0
