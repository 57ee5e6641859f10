"""Layer 4: the WhisperSpeech text-to-speech pipeline on CPU torch, hot ops on the GPU.

    pipe = load_pipeline()                              # released models (Hugging Face cache)
    audio = pipe.generate("Hello there.")              # float32 mono, 24 kHz
    audios = pipe.generate_batch(["One.", "Two."])     # one waveform per text, decoded together

Stages per text chunk: T2S (text bytes -> semantic tokens), S2A (semantic -> 4 EnCodec
codebooks), Vocos (codebooks -> waveform); plus an ECAPA speaker embedding for voice cloning.
Every chunk of every text in a call goes through each stage together (wsvk/tts/stages.py): on
the wgpu backend T2S and S2A decode them side by side in the resident decoder's slots, one submit
per step. Sampling stays on the CPU, each stage of each chunk seeded from (seed, chunk, stage):
the same tokens on every backend, alone or in a batch.
"""

from __future__ import annotations

import atexit
import math
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, NotCachedError
from .models import (DEFAULT_S2A, DEFAULT_T2S, DEFAULT_VOCODER, RANDOM_SIZES, load_s2a, load_t2s, load_vocos,
                     random_s2a, random_t2s, random_vocos, resolve_file, resolve_folder)
from .speaker import (DEFAULT_SPEAKER_MODEL, SpeakerEncoder, Voice, find_speaker_model, read_speaker_audio,
                      read_voice)
from .stages import Chunk, Stages
from .textsplit import split_text

SAMPLE_RATE = 24000
STAGES = ("speaker", "t2s", "s2a", "vocos")
FIRST_CHUNK_BYTES = 80  # a longer text starts with a chunk this short, so its speech starts early
SPEAKER_CACHE = 16  # speaker embeddings a pipeline keeps (a few hundred bytes each)
SEED_MAX = 2**32 - 1

__all__ = ["load_pipeline", "Pipeline", "Progress", "InputError", "valid_languages", "check_language",
           "check_seed", "Voice", "SAMPLE_RATE", "STAGES", "DEFAULT_T2S", "DEFAULT_S2A", "DEFAULT_VOCODER", "DEFAULT_SPEAKER_MODEL"]


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


def check_seed(seed) -> int:
    """An integer from 0 to 2**32 - 1 (the seeds numpy's RandomState takes); InputError otherwise.
    The one rule for the library, synth.py, the server and batch rows: a seed outside it would
    alias one inside it, since each stage's generator is seeded from a 32-bit (seed, chunk, stage)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= SEED_MAX:
        raise InputError(f"seed must be an integer from 0 to {SEED_MAX}, got {seed!r}")
    return int(seed)


class Progress:
    """Hooks the pipeline calls; subclass and override what you need (all no-ops here). A stage
    runs all the chunks of a call together: chunk is 0 and n_chunks their number; step() comes once
    per decode step of each chunk, up to total_steps (an upper bound) in all. On the GPU, step()
    comes from the decoder's loop thread, not the caller's. After a GPU failure mid-stage,
    stage_start comes again: the stage starts over on the CPU (steps from 0)."""

    def stage_start(self, stage: str, chunk: int, n_chunks: int, total_steps: int | None) -> None:
        pass

    def step(self, stage: str) -> None:
        pass

    def stage_end(self, stage: str, chunk: int, n_chunks: int, seconds: float) -> None:
        pass


@dataclass
class Generation:
    """What the last `generate` / `generate_batch` did: chunks (of every text, in order), tokens per
    chunk, seconds per stage."""

    chunks: list[str] = field(default_factory=list)
    stoks: list = field(default_factory=list)  # per chunk: long tensor [n]
    atoks: list = field(default_factory=list)  # per chunk: long tensor [1, quantizers, 3n-ish], or None
    seconds: dict = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    audio_seconds: float = 0.0
    faults: list = field(default_factory=list)  # GPU failures that sent a stage back to the CPU


class Pipeline:
    """T2S + S2A + Vocos (+ a lazily loaded speaker encoder). Build it with `load_pipeline`."""

    def __init__(self, t2s, s2a, vocos, speaker_model=None, random_weights: str | None = None, seed: int = 0,
                 resident: bool = True, random_t2s: bool = False, slots: int | None = None):
        from ..router import RouterStats

        if int(t2s.stoks_len) > int(s2a.stoks_len):  # S2A would crop what T2S says
            raise InputError(f"the T2S model makes up to {t2s.stoks_len} semantic tokens per chunk but the S2A "
                             f"model takes {s2a.stoks_len}: they are not a matching pair")
        self.t2s, self.s2a, self.vocos = t2s, s2a, vocos
        self.speaker_model = speaker_model  # None: the default ref; a str ref; or a SpeakerEncoder
        self.random_weights = random_weights
        self.seed = check_seed(seed)
        self.progress = Progress()
        self.stage_stats = {s: RouterStats() for s in STAGES}
        self.last = Generation()
        self._encoder: SpeakerEncoder | None = speaker_model if isinstance(speaker_model, SpeakerEncoder) else None
        self.resident = bool(resident)  # decode steps and Vocos as one GPU submit each (wgpu backend)
        self.slots = slots              # sequences per resident decode step (None: WSVK_SLOTS or by adapter)
        self.random_t2s = random_t2s    # a random T2S never says "stop": bound its length by the text
        self.stages = Stages(self)
        self.first_chunk_bytes = FIRST_CHUNK_BYTES  # None: every chunk as long as the T2S window allows
        self._engine = None             # the streaming engine, started by the first stream()
        self.lock = threading.Lock()    # one call at a time: shared slots, torch's global RNG
        self._speakers: dict = {}       # samples hash -> ECAPA embedding, least recently used first
        self._speaker_lock = threading.Lock()
        _PIPELINES.add(self)

    @property
    def stats(self):
        """RouterStats of every stage together, over this pipeline's life."""
        return _merged(self.stage_stats.values())

    @property
    def _resident(self) -> dict:
        return self.stages.resident

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

    def resident_modules(self) -> dict:
        """Counters of the resident GPU modules used so far: dispatches and host time per step."""
        return self.stages.counters()

    # -- the whole thing
    def generate(self, text: str, speaker=None, lang: str = "en", cps: float = 15, seed: int | None = None) -> np.ndarray:
        """Speech for `text`: float32 mono at 24 kHz. Text longer than the T2S window is split into
        chunks (sentences, clauses, words), all decoded together and joined in order.

        speaker: None (whisperspeech's default voice), an audio file path, a wsvk.tts.speaker.Voice
        (audio already read), or a speaker embedding [D]. Thread-safe: calls from several threads
        run one at a time, each with its own seed; on the GPU their chunks share the decode steps
        of streams in flight (stream(), the server), with the same audio as alone.
        """
        return self.generate_batch([text], speaker, lang, cps, seed, _single=True)[0]

    def generate_batch(self, texts, speaker=None, lang="en", cps=15, seed=None, _single=False) -> list[np.ndarray]:
        """One waveform per text (float32, 24 kHz), every chunk of every text decoded together.
        speaker, lang, cps and seed are each one value for all texts or a list with one per text;
        with one seed, text i's audio equals generate(texts[i], ..., seed=seed). Every input is
        checked before any work (an InputError names the text's index)."""
        with self.lock:
            self.last = Generation()  # before _plan: its speaker embeddings' time is this call's
            chunks, n_texts = self._plan(texts, speaker, lang, cps, seed, _single)
            self.last.chunks = [c.text for c in chunks]
            self._synthesize(chunks)
            parts = [[] for _ in range(n_texts)]
            for c in chunks:
                if c.audio is not None:
                    parts[c.text_index].append(c.audio)
            audios = [np.concatenate(p).astype(np.float32) if p else np.zeros(0, np.float32) for p in parts]
            self.last.audio_seconds = sum(a.size for a in audios) / SAMPLE_RATE
            return audios

    def stream(self, text: str, speaker=None, lang: str = "en", cps: float = 15, seed: int | None = None):
        """Speech for `text` as float32 blocks (24 kHz) in order, each as soon as it is ready:
        joined, they equal generate() for the same seed (to float32 rounding). The inputs are
        checked here (InputError before any work); closing the iterator early frees the GPU
        slots the text held. Many streams (from many threads) share the decode steps."""
        return AudioStream(self.engine().submit(self.prepare(text, speaker, lang, cps, seed)))

    def prepare(self, text: str, speaker=None, lang: str = "en", cps: float = 15, seed: int | None = None) -> list:
        """The checked chunks of one text, ready for engine().submit (InputError on a bad input)."""
        return self._plan([text], speaker, lang, cps, seed, True)[0]

    def engine(self):
        """The streaming engine (wsvk/tts/engine.py), started on first use (and after close())."""
        from .engine import Engine

        with self._speaker_lock:
            if self._engine is None or self._engine.closed:
                self._engine = Engine(self)
            return self._engine

    def _plan(self, texts, speaker, lang, cps, seed, single: bool):
        """The checked chunks of every text (InputError naming the text, before any work)."""
        if single:
            texts = [texts[0]]
        elif isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise InputError(f"texts must be a list of str, not {type(texts).__name__}")
        if not texts:
            raise InputError("no texts given")
        n = len(texts)

        def per_text(name, value):
            if isinstance(value, (list, tuple)) and not (name == "speaker" and _is_embedding(value)):
                if len(value) != n:
                    raise InputError(f"{name} has {len(value)} values for {n} texts")
                return list(value)
            return [value] * n

        params = {k: per_text(k, v) for k, v in (("speaker", speaker), ("lang", lang), ("cps", cps),
                                                 ("seed", self.seed if seed is None else seed))}
        checked, voices = [], {}  # first every input, voice files read (each once): no encoder work yet
        for i, text in enumerate(texts):
            try:
                if not isinstance(text, str):
                    raise InputError(f"text must be a str, not {type(text).__name__}")
                pieces = split_text(text, self.max_text_bytes, self.first_chunk_bytes)
                if not pieces:
                    raise InputError("the text is empty")
                lang_i, cps_i = check_language(params["lang"][i]), check_cps(params["cps"][i])
                seed_i = check_seed(params["seed"][i])
                spk = params["speaker"][i]
                key = id(spk) if not isinstance(spk, (str, Path)) else str(spk)
                if key not in voices:  # a file read (and checked) here; the default voice or an embedding
                    voices[key] = (read_voice(spk) if isinstance(spk, (str, Path)) else  # checked here
                                   spk if isinstance(spk, Voice) else self._speaker(spk))
            except InputError as e:
                raise InputError(("" if single else f"text {i}: ") + str(e)) from None
            checked.append((i, pieces, lang_i, cps_i, seed_i, key))
        # then the encoder, once per voice read
        speakers = {key: self._speaker(v) if isinstance(v, Voice) else v for key, v in voices.items()}
        chunks = []
        for i, pieces, lang_i, cps_i, seed_i, key in checked:
            chunks += [Chunk(i, j, piece, lang_i, cps_i, seed_i, speakers[key]) for j, piece in enumerate(pieces)]
        return chunks, n

    def _synthesize(self, chunks: list[Chunk]) -> None:
        """T2S for every chunk, S2A for those that said something, Vocos for those (chunk.audio)."""
        self.stages.t2s(chunks)
        speaking = [c for c in chunks if len(c.stoks) >= 2]  # S2A needs a few tokens to say anything
        if speaking:
            self.stages.s2a(speaking)
            self.stages.vocos(speaking)
        self.last.stoks = [c.stoks for c in chunks]
        self.last.atoks = [c.atoks for c in chunks]


class AudioStream:
    """What Pipeline.stream returns: an iterator over the audio blocks, in order. Ending it early
    (close(), leaving a `with` block, or dropping it, even before the first block) cancels the
    request, which frees the GPU slots it held at the next step."""

    def __init__(self, request):
        self.request, self._blocks = request, request.blocks()

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        try:
            return next(self._blocks)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.request.cancel()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.request.abandon()  # a finalizer may run anywhere, even under the request's own locks


_PIPELINES: weakref.WeakSet = weakref.WeakSet()  # quiesced at exit


@atexit.register
def _quiesce() -> None:
    """A process that exits with a stream in flight (or a generate() cut short by Ctrl-C) waits
    for the engine's threads and the decoders' loops: ending while one of them is inside torch
    or wgpu aborts it ("terminate called without an active exception")."""
    for pipe in list(_PIPELINES):
        if pipe._engine is not None:
            pipe._engine.close(wait=10)
        for mod in list(pipe.stages.resident.values()):
            if hasattr(mod, "loop"):  # T2S and S2A: their cancelled sequences leave at the next step
                mod.loop.wait_idle(10)


def _is_embedding(value) -> bool:
    """A speaker given as a list of floats (an embedding), not a list of speakers."""
    return len(value) > 0 and all(isinstance(v, (float, int, np.floating)) for v in value)


def _merged(all_stats):
    from ..router import RouterStats

    total = RouterStats()
    for s in all_stats:
        total.merge(s)
    return total


def load_pipeline(t2s: str | None = None, s2a: str | None = None, vocoder: str | None = None,
                  speaker_model: str | None = None, random_weights: str | None = None, seed: int = 0,
                  progress: Progress | None = None, resident: bool = True, slots: int | None = None,
                  speaker: bool = False) -> Pipeline:
    """Load the three models (released ones by default) and return a Pipeline.

    Each of t2s/s2a is a local checkpoint path or a Hugging Face `owner/repo:file` reference;
    vocoder and speaker_model are a local folder or a Hugging Face repo id. random_weights
    ("tiny", "base" or "small") builds random models from whisperspeech's size presets for
    whichever of t2s/s2a/vocoder is not given, so the pipeline runs offline (it makes noise).
    resident: on the wgpu backend, run T2S/S2A (encoder per chunk, decode steps) and Vocos as
    resident GPU modules (one submit per chunk/step); False keeps the op-by-op router for every stage.
    slots: sequences one resident decode step advances (None: WSVK_SLOTS, else by the adapter).
    speaker: the caller will clone voices, so the speaker model is looked for now as well (it
    is otherwise loaded at its first use): offline, it is then in the one line naming every
    download a first run needs.
    """
    if random_weights is not None and random_weights not in RANDOM_SIZES:
        raise InputError(f"random_weights must be one of {', '.join(RANDOM_SIZES)}, not {random_weights!r}")
    seed = check_seed(seed)
    # find every file first: offline, one message lists all the downloads a first run needs
    finders = [("t2s", t2s, lambda r: resolve_file(r or DEFAULT_T2S, "T2S model", "pass --t2s PATH")),
               ("s2a", s2a, lambda r: resolve_file(r or DEFAULT_S2A, "S2A model", "pass --s2a PATH")),
               ("vocoder", vocoder, lambda r: resolve_folder(r or DEFAULT_VOCODER, ("config.yaml", "pytorch_model.bin"),
                                                             "vocoder", "pass --vocoder FOLDER"))]
    if speaker:
        finders.append(("speaker", speaker_model, find_speaker_model))
    refs, missing = {}, []
    for key, ref, find in finders:
        if ref or not random_weights:  # with random weights, what is not given is made up
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
                    random_weights=random_weights, seed=seed, resident=resident, random_t2s="t2s" not in refs,
                    slots=slots)
    if progress is not None:
        pipe.progress = progress
    return pipe
