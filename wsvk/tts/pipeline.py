"""Layer 4: the WhisperSpeech text-to-speech pipeline on CPU torch, hot ops on the GPU.

    pipe = load_pipeline()                      # released models (Hugging Face cache)
    audio = pipe.generate("Hello there.")      # float32 mono, 24 kHz

Stages per text chunk: T2S (text bytes -> semantic tokens), S2A (semantic -> 4 EnCodec
codebooks), Vocos (codebooks -> waveform); plus an ECAPA speaker embedding for voice
cloning. On the wgpu backend T2S, S2A and Vocos run as resident GPU modules (wsvk.resident:
one submit per chunk and per decode step); everything else, and every stage with resident=False,
runs inside `wsvk.router.offload()`, which sends F.linear / matmul / SDPA / FFT calls to the
WGSL kernels when the backend selects an adapter. Sampling stays
on the CPU: whisperspeech samples with the global torch RNG, so each stage of each chunk is
seeded from (seed, chunk, stage) inside a forked RNG, the same on every backend.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, NotCachedError
from .models import (DEFAULT_S2A, DEFAULT_T2S, DEFAULT_VOCODER, RANDOM_SIZES, load_s2a, load_t2s, load_vocos, random_s2a, random_t2s, random_vocos, resolve_file,
                     resolve_folder)
from .speaker import DEFAULT_SPEAKER_MODEL, SpeakerEncoder, Voice, read_speaker_audio
from .textsplit import split_text

SAMPLE_RATE = 24000
STAGES = ("speaker", "t2s", "s2a", "vocos")
SPEAKER_CACHE = 16  # speaker embeddings a pipeline keeps (a few hundred bytes each)

__all__ = ["load_pipeline", "Pipeline", "Progress", "InputError", "valid_languages", "check_language",
           "Voice", "SAMPLE_RATE", "STAGES", "DEFAULT_T2S", "DEFAULT_S2A", "DEFAULT_VOCODER", "DEFAULT_SPEAKER_MODEL"]


def valid_languages() -> tuple[str, ...]:
    """The language codes the T2S language embedding knows (whisperspeech.languages)."""
    from whisperspeech import languages

    return tuple(languages.languages)


def check_language(lang: str) -> str:
    """`lang` as whisperspeech accepts it (a code or an English name); InputError otherwise."""
    from whisperspeech import languages

    code = languages.TO_LANGUAGE_CODE.get(str(lang).lower(), str(lang).lower())
    if code not in languages.languages:
        raise InputError(f"unknown language {lang!r}; valid: {', '.join(languages.languages)}")
    return code


def check_cps(cps) -> float:
    try:
        value = float(cps)
    except (TypeError, ValueError):
        raise InputError(f"cps must be a number, not {cps!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"cps (characters per second) must be > 0, got {cps}")
    return value


def _stage_seed(seed: int, chunk: int, stage: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, chunk, stage]).generate_state(1)[0])


class Progress:
    """Hooks the pipeline calls; subclass and override what you need (all no-ops here)."""

    def stage_start(self, stage: str, chunk: int, n_chunks: int, total_steps: int | None) -> None:
        pass

    def step(self, stage: str) -> None:
        pass

    def stage_end(self, stage: str, chunk: int, n_chunks: int, seconds: float) -> None:
        pass


@dataclass
class Generation:
    """What the last `generate` did: chunks, tokens per chunk, seconds per stage."""

    chunks: list[str] = field(default_factory=list)
    stoks: list = field(default_factory=list)  # per chunk: long tensor [n]
    atoks: list = field(default_factory=list)  # per chunk: long tensor [1, quantizers, 3n-ish]
    seconds: dict = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    audio_seconds: float = 0.0
    faults: list = field(default_factory=list)  # GPU failures that sent a stage back to the CPU


class Pipeline:
    """T2S + S2A + Vocos (+ a lazily loaded speaker encoder). Build it with `load_pipeline`."""

    def __init__(self, t2s, s2a, vocos, speaker_model=None, random_weights: str | None = None, seed: int = 0,
                 resident: bool = True, random_t2s: bool = False):
        from ..router import RouterStats

        if int(t2s.stoks_len) > int(s2a.stoks_len):  # S2A would crop what T2S says
            raise InputError(f"the T2S model makes up to {t2s.stoks_len} semantic tokens per chunk but the S2A "
                             f"model takes {s2a.stoks_len}: they are not a matching pair")
        self.t2s, self.s2a, self.vocos = t2s, s2a, vocos
        self.speaker_model = speaker_model  # None: the default ref; a str ref; or a SpeakerEncoder
        self.random_weights = random_weights
        self.seed = int(seed)
        self.progress = Progress()
        self.stage_stats = {s: RouterStats() for s in STAGES}
        self.last = Generation()
        self._encoder: SpeakerEncoder | None = speaker_model if isinstance(speaker_model, SpeakerEncoder) else None
        self.resident = bool(resident)  # decode steps and Vocos as one GPU submit each (wgpu backend)
        self.random_t2s = random_t2s    # a random T2S never says "stop": bound its length by the text
        self._resident: dict = {}       # stage -> resident module, built on first GPU use
        self._lock = threading.Lock()   # whisperspeech samples from torch's global RNG: one call at a time
        self._speakers: dict = {}       # samples hash -> ECAPA embedding, least recently used first
        self._speaker_lock = threading.Lock()

    @property
    def stats(self):
        """RouterStats of every stage together, over this pipeline's life."""
        return _merged(self.stage_stats.values())

    # -- facts about the loaded models
    @property
    def max_text_bytes(self) -> int:
        """UTF-8 bytes per T2S chunk: the text window less the start pad T2S.generate puts first."""
        return int(self.t2s.ttoks_len) - 1

    @property
    def speaker_width(self) -> int:
        return int(self.s2a.spk_width or self.s2a.width)

    @property
    def quantizers(self) -> int:
        return int(self.s2a.quantizers)

    # -- speaker
    def speaker_encoder(self) -> SpeakerEncoder:
        """The ECAPA encoder, loaded on first use (random with --random-weights and no model given)."""
        if self._encoder is None:
            if self.speaker_model is None and self.random_weights:
                self._encoder = SpeakerEncoder.random(self.seed)
            else:
                self._encoder = SpeakerEncoder.load(self.speaker_model)
        return self._encoder

    def default_speaker(self):
        import torch
        from whisperspeech.pipeline import Pipeline as WSPipeline  # importing it downloads nothing

        emb = WSPipeline.default_speaker.to(torch.float32)
        if emb.numel() != self.speaker_width:
            raise InputError(f"the S2A model takes {self.speaker_width}-wide speaker embeddings and the "
                             f"default voice has {emb.numel()}: pass a speaker")
        return emb

    def speaker_embedding(self, speaker):
        """speaker: an audio file path, a wsvk.speaker.Voice, or a 16 kHz mono waveform tensor [T]
        -> ECAPA embedding [D], computed inside offload(). The last SPEAKER_CACHE embeddings are
        kept, keyed by the samples' hash: a server cloning the same voice again skips the encoder."""
        import hashlib

        import torch

        from ..router import offload

        enc = self.speaker_encoder()
        if isinstance(speaker, (str, Path)):
            wav = read_speaker_audio(speaker)
        else:
            wav = speaker.samples if isinstance(speaker, Voice) else speaker
        wav = torch.as_tensor(wav)
        samples = wav.detach().cpu().float().contiguous()
        key = hashlib.blake2b(samples.numpy().tobytes(), digest_size=16,
                              person=str(tuple(samples.shape)).encode()[:16]).hexdigest()
        with self._speaker_lock:
            hit = self._speakers.pop(key, None)
            if hit is not None:
                self._speakers[key] = hit  # most recently used last
                return hit.clone()
        t0 = time.perf_counter()
        self.progress.stage_start("speaker", 0, 1, None)
        with offload(self.stage_stats["speaker"]):
            emb = enc.embed_waveform(wav)
        dt = time.perf_counter() - t0
        self.last.seconds["speaker"] += dt
        self.progress.stage_end("speaker", 0, 1, dt)
        with self._speaker_lock:
            self._speakers[key] = emb.clone()
            while len(self._speakers) > SPEAKER_CACHE:
                self._speakers.pop(next(iter(self._speakers)))
        return emb

    def _speaker(self, speaker):
        import torch

        if speaker is None:
            emb = self.default_speaker()
        elif isinstance(speaker, (str, Path, Voice)):
            emb = self.speaker_embedding(speaker)
        else:
            emb = torch.as_tensor(np.asarray(speaker, dtype=np.float32)).reshape(-1)
        if emb.numel() != self.speaker_width:
            raise InputError(f"speaker embedding has {emb.numel()} values; the S2A model takes {self.speaker_width}")
        return emb.float()

    # -- stages
    def _gpu_runner(self, stage: str):
        """The resident GPU module for a stage, or None (cpu backend, resident off, after a fault)."""
        if not self.resident:
            return None
        from ..router import active_backend
        from ..gpu import get_runtime

        if active_backend()[0] != "wgpu" or get_runtime().lost:
            return None
        if stage not in self._resident:
            from ..resident import ResidentS2A, ResidentT2S, ResidentVocos

            make = {"t2s": lambda: ResidentT2S(self.t2s), "s2a": lambda: ResidentS2A(self.s2a),
                    "vocos": lambda: ResidentVocos(self.vocos)}[stage]
            self._resident[stage] = make()
        return self._resident[stage]

    def resident_modules(self) -> dict:
        """Counters of the resident GPU modules used so far: dispatches and host time per step."""
        out = {}
        for stage, mod in self._resident.items():
            if hasattr(mod, "counters"):
                out[stage] = mod.counters()
            else:  # Vocos: one readback per chunk
                out[stage] = {"dispatches_per_call": mod.dispatches_per_call, **mod.stats}
        return out

    def _run(self, stage: str, chunk: int, n_chunks: int, total, seed: int, fn):
        """fn(model, step) on the stage's resident GPU module when there is one, else on the torch
        model under offload(). A GPU failure reruns the stage on the CPU with the same seed, so the
        tokens and audio equal an uninterrupted CPU run; one warning says so."""
        import torch

        from ..router import offload
        from ..errors import GpuError

        cpu_model = {"t2s": self.t2s, "s2a": self.s2a, "vocos": self.vocos}[stage]
        stats = self.stage_stats[stage]
        self.progress.stage_start(stage, chunk, n_chunks, total)
        t0 = time.perf_counter()
        runner = self._gpu_runner(stage)
        faults_before = len(stats.faults)
        while True:
            try:
                with torch.random.fork_rng(devices=[]), offload(stats, warn=False):
                    torch.manual_seed(seed)
                    out = fn(runner or cpu_model, lambda: self.progress.step(stage))
                break
            except GpuError as e:
                if runner is None:
                    raise
                stats.faults.append(str(e))
                runner = None  # rerun the stage on the CPU: same seed, same tokens
        if len(stats.faults) > faults_before:
            self.last.faults.append(f"{stage}: {stats.faults[faults_before]}")
            warnings.warn(f"wsvk: {stats.faults[faults_before]}; finished the {stage} stage on the CPU",
                          RuntimeWarning, stacklevel=3)
        if runner is not None:
            stats.count("resident")  # one resident run: decode steps or a Vocos chunk
        dt = time.perf_counter() - t0
        self.last.seconds[stage] += dt
        self.progress.stage_end(stage, chunk, n_chunks, dt)
        return out

    def _token_cap(self, text: str, cps: float):
        """Semantic tokens allowed for a chunk: all of them, except for a random T2S (it never ends,
        so noise as long as the text would take to say, at 25 tokens per second, plus margin)."""
        if not self.random_t2s:
            return None
        seconds = len(text) / cps
        return int(min(int(self.t2s.stoks_len), math.ceil(25 * 1.5 * seconds) + 10))

    def _t2s(self, text, lang, cps, seed, chunk, n_chunks):
        cap = self._token_cap(text, cps)
        steps = (cap or int(self.t2s.stoks_len)) - 2  # upper bound: T2S stops early at its end token
        stoks = self._run("t2s", chunk, n_chunks, steps, seed, lambda m, step: m.generate(
            text, cps=cps, lang=lang, N=cap, step=step, show_progress_bar=False)[0])
        return self._until_end(stoks)

    def _until_end(self, stoks):
        """Semantic tokens up to the end token. whisperspeech checks for the end token after every
        step but the first, so a first-step end (or a special code S2A cannot embed) gets through."""
        eot = int(self.t2s.stoks_codes) + int(self.t2s.tunables.padding_token_offset)
        bad = ((stoks == eot) | (stoks >= int(self.s2a.stoks_codes))).nonzero()
        return stoks[: int(bad[0, 0])] if bad.numel() else stoks

    def _s2a(self, stoks, spk, seed, chunk, n_chunks):
        steps = max(0, min(3 * len(stoks), int(self.s2a.ctx_n) - 1) - 2)
        return self._run("s2a", chunk, n_chunks, steps, seed, lambda m, step: m.generate(
            stoks, spk.unsqueeze(0), step=step, show_progress_bar=False))

    def _vocos(self, atoks, chunk, n_chunks):
        import torch

        from ..resident import ResidentVocos

        q = atoks.shape[1]
        bandwidth = {2: 0, 4: 1, 8: 2}.get(q)
        if bandwidth is None:
            raise InputError(f"Vocos takes 2, 4 or 8 codebooks; the S2A model makes {q}")

        def decode(model, step):
            with torch.inference_mode():
                if isinstance(model, ResidentVocos):
                    audio = model.decode_codes(atoks, bandwidth_id=bandwidth)  # [1, samples]
                else:
                    feats = model.codes_to_features(atoks.permute(1, 0, 2))  # [q, 1, t] -> [1, 128, t]
                    audio = model.decode(feats, bandwidth_id=torch.tensor(bandwidth))
            step()
            return audio[0].float().numpy()

        return self._run("vocos", chunk, n_chunks, 1, 0, decode)

    # -- the whole thing
    def generate(self, text: str, speaker=None, lang: str = "en", cps: float = 15, seed: int | None = None) -> np.ndarray:
        """Speech for `text`: float32 mono at 24 kHz (see _generate). Thread-safe: calls from
        several threads run one at a time, each with its own seed."""
        with self._lock:
            return self._generate(text, speaker, lang, cps, seed)

    def _generate(self, text: str, speaker=None, lang: str = "en", cps: float = 15, seed: int | None = None) -> np.ndarray:
        """Speech for `text`: float32 mono at 24 kHz. Text longer than the T2S window is split
        into chunks (sentences, clauses, words) that are spoken in turn and joined.

        speaker: None (whisperspeech's default voice), an audio file path, a wsvk.speaker.Voice
        (audio already read), or a speaker embedding [D].
        """
        if not isinstance(text, str):
            raise InputError(f"text must be a str, not {type(text).__name__}")
        chunks = split_text(text, self.max_text_bytes)
        if not chunks:
            raise InputError("the text is empty")
        lang = check_language(lang)
        cps = check_cps(cps)
        seed = self.seed if seed is None else int(seed)
        self.last = Generation(chunks=chunks)
        spk = self._speaker(speaker)
        parts = []
        n = len(chunks)
        for i, chunk in enumerate(chunks):
            stoks = self._t2s(chunk, lang, cps, _stage_seed(seed, i, 0), i, n)
            self.last.stoks.append(stoks)
            if len(stoks) < 2:  # the model ended at once: S2A needs a few tokens to say anything
                self.last.atoks.append(None)
                continue
            atoks = self._s2a(stoks, spk, _stage_seed(seed, i, 1), i, n)
            self.last.atoks.append(atoks)
            parts.append(self._vocos(atoks, i, n))
        audio = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
        self.last.audio_seconds = audio.size / SAMPLE_RATE
        return audio


def _merged(all_stats):
    from ..router import RouterStats

    total = RouterStats()
    for s in all_stats:
        total.merge(s)
    return total


def load_pipeline(t2s: str | None = None, s2a: str | None = None, vocoder: str | None = None,
                  speaker_model: str | None = None, random_weights: str | None = None, seed: int = 0,
                  progress: Progress | None = None, resident: bool = True) -> Pipeline:
    """Load the three models (released ones by default) and return a Pipeline.

    Each of t2s/s2a is a local checkpoint path or a Hugging Face `owner/repo:file` reference;
    vocoder and speaker_model are a local folder or a Hugging Face repo id. random_weights
    ("tiny", "base" or "small") builds random models from whisperspeech's size presets for
    whichever of t2s/s2a/vocoder is not given, so the pipeline runs offline (it makes noise).
    resident: on the wgpu backend, run T2S/S2A (encoder per chunk, decode steps) and Vocos as
    resident GPU modules (one submit per chunk/step); False keeps the op-by-op router for every stage.
    """
    if random_weights is not None and random_weights not in RANDOM_SIZES:
        raise InputError(f"random_weights must be one of {', '.join(RANDOM_SIZES)}, not {random_weights!r}")
    seed = int(seed)
    # find every file first: offline, one message lists all the downloads a first run needs
    refs, missing = {}, []
    for key, ref, find in (("t2s", t2s, lambda r: resolve_file(r or DEFAULT_T2S, "T2S model", "pass --t2s PATH")),
                           ("s2a", s2a, lambda r: resolve_file(r or DEFAULT_S2A, "S2A model", "pass --s2a PATH")),
                           ("vocoder", vocoder, lambda r: resolve_folder(
                               r or DEFAULT_VOCODER, ("config.yaml", "pytorch_model.bin"), "vocoder",
                               "pass --vocoder FOLDER"))):
        if ref or not random_weights:
            try:
                refs[key] = str(find(ref))
            except NotCachedError as e:
                missing.append(e)
    if missing:
        raise NotCachedError.combine(missing)
    t2s_model = load_t2s(refs["t2s"]) if "t2s" in refs else random_t2s(random_weights, seed)
    s2a_model = load_s2a(refs["s2a"]) if "s2a" in refs else random_s2a(random_weights, seed)
    vocos_model = load_vocos(refs["vocoder"]) if "vocoder" in refs else random_vocos(seed)
    pipe = Pipeline(t2s_model, s2a_model, vocos_model, speaker_model=speaker_model,
                    random_weights=random_weights, seed=seed, resident=resident, random_t2s="t2s" not in refs)
    if progress is not None:
        pipe.progress = progress
    return pipe
