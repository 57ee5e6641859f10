"""The three stages over a batch of text chunks (Pipeline's engine).

On the wgpu backend T2S and S2A decode every chunk of the batch together through the resident
decoder's slots (continuous batching: more chunks than slots run as slots free up), each chunk
sampling with its own torch.Generator seeded from (seed, chunk, stage); Vocos runs chunk by chunk
on the resident vocoder. Otherwise each chunk runs whisperspeech's own generate() inside the op
router, sampling from torch's global generator seeded the same way (the same draws). A GPU
failure reruns the whole stage on the CPU with the same seeds: the tokens and audio equal an
uninterrupted CPU run, and one warning says so.
"""

from __future__ import annotations

import math
import os
import threading
import time
import warnings
from dataclasses import dataclass

import numpy as np

from .. import config
from ..errors import ConfigError, GpuError, InputError

STAGE_IDS = {"t2s": 0, "s2a": 1}


def stage_seed(seed: int, chunk: int, stage: int) -> int:
    return int(np.random.SeedSequence([int(seed), chunk, stage]).generate_state(1)[0])


@dataclass
class Chunk:
    """One chunk of one text, and what the stages made of it."""

    text_index: int
    index: int         # within its text: the seeds follow it, so a text sounds the same in any batch
    text: str
    lang: str
    cps: float
    seed: int
    speaker: object    # the speaker embedding [D]
    stoks: object = None
    atoks: object = None
    audio: object = None

    def generator(self, stage: str):
        import torch

        return torch.Generator().manual_seed(stage_seed(self.seed, self.index, STAGE_IDS[stage]))


CACHE_SHARE = 0.5  # of a discrete GPU's memory for the decoders' KV caches; weights, Vocos and the rest take less
USABLE_SHARE = 0.9  # of a discrete GPU's memory for the weights and caches together
HOST_SHARE = 0.5    # of the host's memory for an integrated GPU's weights and caches (the desktop shares it)


def host_memory() -> int | None:
    """The host's physical memory in bytes, where the OS says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def default_slots(rt, slot_bytes: int = 0, fit: int | None = None, weight_bytes: int = 0) -> int:
    """WSVK_SLOTS, else sequences per decode step from the memory left after the weights
    (weight_bytes; slot_bytes: one slot of every decoder): on a discrete GPU as many as fit in
    USABLE_SHARE of its memory after the weights and in CACHE_SHARE of it (memory known on Vulkan),
    at most 16 (8 where the memory is unknown), never fewer than one; on an integrated GPU as many
    as fit in HOST_SHARE of the host's memory after the weights, at most 8 -- 0 when not even one
    does (the caller says what would fit); 4 on a software adapter (or where the host's memory is
    unknown). Never more than one KV-cache binding holds (fit)."""
    n = config.slots()
    if n:
        return n
    memory, kind = rt.info.get("memory"), rt.info["type"]
    host = host_memory() if kind == "IntegratedGPU" else None
    if kind == "DiscreteGPU" and memory and slot_bytes:
        n = max(1, min(16, int(memory * CACHE_SHARE) // slot_bytes, int(memory * USABLE_SHARE - weight_bytes) // slot_bytes))
    elif kind == "DiscreteGPU":
        n = 8
    elif host and slot_bytes:
        n = max(0, min(8, int(host * HOST_SHARE - weight_bytes) // slot_bytes))
    else:
        n = 4
    if fit is not None:  # a plan that cannot bind one slot's cache says so itself (DecoderPlan)
        n = min(n, max(fit, 1))
    return n


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"


class Stages:
    """Runs T2S, S2A and Vocos for a Pipeline (its models, statistics, progress hooks)."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.resident: dict = {}  # stage -> resident module, built on first GPU use
        self._build_lock = threading.Lock()  # generate() and the engine may ask first at once

    # -- the resident modules
    def resident_available(self) -> bool:
        """Whether the stages run as resident GPU modules (wgpu backend, resident on, no fault)."""
        if not self.pipe.resident:
            return False
        from ..gpu import get_runtime
        from ..router import active_backend

        return active_backend()[0] == "wgpu" and not get_runtime().lost

    def slots(self) -> int:
        """Sequences per resident decode step: the built decoders', else the pipeline's, else
        WSVK_SLOTS, else what the adapter holds for this pair of models (default_slots). Raises
        ConfigError when the number asked for cannot fit in a discrete GPU's memory."""
        from ..gpu import get_runtime
        from ..resident import ResidentS2A, ResidentT2S

        built = [self.resident[s].slots for s in ("t2s", "s2a") if s in self.resident]
        if built:
            return built[0]
        rt = get_runtime()
        precision = rt.precision()[0]
        size = rt.storage_dtype(precision).itemsize
        decoders = ((ResidentT2S, self.pipe.t2s), (ResidentS2A, self.pipe.s2a))
        per_slot = sum(cls.slot_bytes(m, size) for cls, m in decoders)
        weights = sum(cls.weight_estimate(m, precision, size) for cls, m in decoders)
        asked = self.pipe.slots or config.slots()
        fit = min(cls.max_slots(m, size, rt.max_binding) for cls, m in decoders)
        n = asked or default_slots(rt, per_slot, fit, weights)
        if n == 0:  # an integrated GPU whose share of the host's memory holds not one slot
            raise ConfigError(self._no_room(rt, precision, weights, per_slot, decoders))
        memory = rt.info.get("memory") if rt.info["type"] == "DiscreteGPU" else None
        if asked and memory and n * per_slot + weights > memory:  # the weights and caches would not fit
            raise ConfigError(f"{n} slots need {_size(n * per_slot)} of KV caches for these models (and "
                              f"{_size(weights)} of weights at {precision}), more than the {_size(memory)} of "
                              f"{rt.info['name']}: use at most {max(1, (memory - weights) // per_slot)} "
                              "(WSVK_SLOTS, --max-batch)")
        return n

    @staticmethod
    def _no_room(rt, precision, weights, per_slot, decoders) -> str:
        """One line: what the models need at this precision, and what would fit instead."""
        budget = int((host_memory() or 0) * HOST_SHARE)
        need = f"{_size(weights)} of weights at {precision} plus {_size(per_slot)} per slot"
        if precision != "q8":
            size = rt.storage_dtype("q8").itemsize
            q8 = sum(cls.weight_estimate(m, "q8", size) for cls, m in decoders)
            q8_slot = sum(cls.slot_bytes(m, size) for cls, m in decoders)
            n = int(budget - q8) // q8_slot
            if n >= 1:
                return (f"these models need {need}, more than {rt.info['name']} can take ({_size(budget)}: half of "
                        f"the host's memory): use WSVK_PRECISION=q8 (WSVK_SLOTS={min(n, 8)} fits)")
        return (f"these models need {need}, more than {rt.info['name']} can take ({_size(budget)}: half of the "
                "host's memory): use smaller models or WSVK_BACKEND=cpu")

    def make_resident(self, stage: str):
        """A new resident GPU module for a stage, with self.slots() sequences per decode step."""
        from ..resident import ResidentS2A, ResidentT2S, ResidentVocos

        pipe = self.pipe
        if stage == "vocos":
            return ResidentVocos(pipe.vocos)
        return (ResidentT2S if stage == "t2s" else ResidentS2A)(getattr(pipe, stage), slots=self.slots())

    def gpu_runner(self, stage: str):
        """The stage's resident GPU module (built on first use), or None (cpu backend, resident
        off, after a fault)."""
        if not self.resident_available():
            return None
        with self._build_lock:
            if stage not in self.resident:
                self.resident[stage] = self.make_resident(stage)
            return self.resident[stage]

    def counters(self) -> dict:
        """Counters of the resident GPU modules used so far: dispatches and host time per step."""
        out = {}
        for stage, mod in self.resident.items():
            if hasattr(mod, "counters"):
                out[stage] = mod.counters()
            else:  # Vocos: one readback per chunk
                out[stage] = {"dispatches_per_call": mod.dispatches_per_call, **mod.stats}
        return out

    # -- running a stage
    def run_stage(self, stage: str, chunks: list, total: int | None, on_gpu, on_cpu) -> None:
        """on_gpu(module, chunks, step) for the whole batch on the stage's resident module when
        there is one, else (or after a GPU failure) on_cpu(model, chunk, step) chunk by chunk,
        each inside a forked global RNG seeded for that chunk and the op router."""
        import torch

        from ..router import offload

        pipe = self.pipe
        cpu_model = {"t2s": pipe.t2s, "s2a": pipe.s2a, "vocos": pipe.vocos}[stage]
        stats = pipe.stage_stats[stage]
        pipe.progress.stage_start(stage, 0, len(chunks), total)
        t0 = time.perf_counter()
        step = lambda: pipe.progress.step(stage)  # noqa: E731
        runner = self.gpu_runner(stage)
        faults_before = len(stats.faults)
        if runner is not None:
            try:
                with offload(stats, warn=False):
                    on_gpu(runner, chunks, step)
                stats.count("resident")  # one resident run: a batch of decodes or of Vocos chunks
            except GpuError as e:
                stats.faults.append(str(e))
                runner = None  # rerun the stage on the CPU: same seeds, same tokens
                pipe.progress.stage_start(stage, 0, len(chunks), total)  # its steps start over
        if runner is None:
            for chunk in chunks:
                with torch.random.fork_rng(devices=[]), offload(stats, warn=False):
                    if stage in STAGE_IDS:
                        torch.manual_seed(stage_seed(chunk.seed, chunk.index, STAGE_IDS[stage]))
                    on_cpu(cpu_model, chunk, step)
        if len(stats.faults) > faults_before:
            pipe.last.faults.append(f"{stage}: {stats.faults[faults_before]}")
            warnings.warn(f"wsvk: {stats.faults[faults_before]}; finished the {stage} stage on the CPU",
                          RuntimeWarning, stacklevel=4)
        dt = time.perf_counter() - t0
        pipe.last.seconds[stage] += dt
        pipe.progress.stage_end(stage, 0, len(chunks), dt)

    # -- the stages
    def token_cap(self, chunk: Chunk):
        """Semantic tokens allowed for a chunk: all of them, except for a random T2S (it never ends,
        so noise as long as the text would take to say, at 25 tokens per second, plus margin)."""
        if not self.pipe.random_t2s:
            return None
        seconds = len(chunk.text) / chunk.cps
        return int(min(int(self.pipe.t2s.stoks_len), math.ceil(25 * 1.5 * seconds) + 10))

    def until_end(self, stoks):
        """Semantic tokens up to the end token. whisperspeech checks for the end token after every
        step but the first, so a first-step end (or a special code S2A cannot embed) gets through."""
        pipe = self.pipe
        eot = int(pipe.t2s.stoks_codes) + int(pipe.t2s.tunables.padding_token_offset)
        bad = ((stoks == eot) | (stoks >= int(pipe.s2a.stoks_codes))).nonzero()
        return stoks[: int(bad[0, 0])] if bad.numel() else stoks

    def t2s(self, chunks: list) -> None:
        """chunk.stoks for every chunk: semantic tokens up to the end token."""
        total = sum((self.token_cap(c) or int(self.pipe.t2s.stoks_len)) - 2 for c in chunks)

        def on_gpu(mod, batch, step):
            seqs = [mod.sequence(c.text, cps=c.cps, lang=c.lang, N=self.token_cap(c), generator=c.generator("t2s"),
                                 step=step) for c in batch]
            mod.run(seqs)
            for c, seq in zip(batch, seqs):
                c.stoks = self.until_end(seq.result[0])

        def on_cpu(model, c, step):
            c.stoks = self.until_end(model.generate(c.text, cps=c.cps, lang=c.lang, N=self.token_cap(c), step=step,
                                                    show_progress_bar=False)[0])

        self.run_stage("t2s", chunks, total, on_gpu, on_cpu)

    def s2a(self, chunks: list) -> None:
        """chunk.atoks [1, quantizers, n] for every chunk (chunks with fewer than 2 semantic tokens
        are not given: S2A needs a few to say anything)."""
        ctx = int(self.pipe.s2a.ctx_n)
        total = sum(max(0, min(3 * len(c.stoks), ctx - 1) - 2) for c in chunks)

        def on_gpu(mod, batch, step):
            seqs = [mod.sequence(c.stoks, c.speaker.unsqueeze(0), generator=c.generator("s2a"), step=step)
                    for c in batch]
            mod.run(seqs)
            for c, seq in zip(batch, seqs):
                c.atoks = seq.result

        def on_cpu(model, c, step):
            c.atoks = model.generate(c.stoks, c.speaker.unsqueeze(0), step=step, show_progress_bar=False)

        self.run_stage("s2a", chunks, total, on_gpu, on_cpu)

    def vocos(self, chunks: list) -> None:
        """chunk.audio (float32 [samples]) for every chunk, from its acoustic tokens."""
        import torch

        q = chunks[0].atoks.shape[1] if chunks else 4
        bandwidth = {2: 0, 4: 1, 8: 2}.get(q)
        if bandwidth is None:
            raise InputError(f"Vocos takes 2, 4 or 8 codebooks; the S2A model makes {q}")

        def on_gpu(mod, batch, step):
            for c in batch:
                with torch.inference_mode():
                    c.audio = mod.decode_codes(c.atoks, bandwidth_id=bandwidth)[0].float().numpy()
                step()

        def on_cpu(model, c, step):
            with torch.inference_mode():
                feats = model.codes_to_features(c.atoks.permute(1, 0, 2))  # [q, 1, t] -> [1, 128, t]
                c.audio = model.decode(feats, bandwidth_id=torch.tensor(bandwidth))[0].float().numpy()
            step()

        self.run_stage("vocos", chunks, len(chunks), on_gpu, on_cpu)
