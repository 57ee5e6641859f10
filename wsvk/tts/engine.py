"""Streaming synthesis for many callers: the engine behind Pipeline.stream and the server.

On the wgpu backend two threads keep the resident decoders' slots full (continuous batching):
the T2S thread decodes the chunks of every request as slots free up, hands each finished chunk
to the S2A thread, which decodes them the same way and, as a chunk's acoustic frames settle,
runs Vocos over a window of them (VocosStream) so its audio leaves long before the chunk ends.
Each request receives its audio blocks in order. Every chunk samples with its own generator
(seeded from seed, chunk and stage, as Pipeline.generate does), so a request's audio does not
depend on what else runs: joined, the blocks equal generate() to float32 rounding.

Elsewhere (cpu backend, resident off) and after a GPU failure, one CPU thread synthesizes the
chunks in order, each whole, with whisperspeech's own generate; after a failure it redoes every
unfinished chunk (the same seeds, the same tokens) and sends only the audio not yet sent.
"""

from __future__ import annotations

import math
import queue
import threading
import warnings

import numpy as np

from ..errors import GpuError
from .stages import STAGE_IDS, stage_seed

BANDWIDTHS = {2: 0, 4: 1, 8: 2}  # Vocos' bandwidth id by the number of codebooks


class Request:
    """One text in the engine: audio blocks (float32, in order) from blocks(); cancel() stops it."""

    def __init__(self, chunks):
        self.chunks = chunks
        self.queue: queue.Queue = queue.Queue()
        self.sent = [0] * len(chunks)       # samples delivered per chunk
        self.done = [False] * len(chunks)
        self._held: dict[int, list] = {}    # blocks of later chunks, until the earlier ones end
        self._next = 0
        self._lock = threading.Lock()
        self.cancelled = False
        self.sequences: list = []           # live decoder sequences, cancelled with the request

    def deliver(self, i: int, block, done: bool) -> None:
        """Chunk i's next block (possibly empty); done: the chunk's last one. Blocks leave in
        order: a later chunk's wait until every earlier chunk is done."""
        with self._lock:
            if self.done[i] or self.cancelled:
                return
            self.sent[i] += len(block)
            self.done[i] = done
            self._held.setdefault(i, []).append(np.asarray(block, np.float32))
            n = len(self.chunks)
            while self._next < n:
                for b in self._held.pop(self._next, []):
                    if len(b):
                        self.queue.put(b)
                if not self.done[self._next]:
                    break
                self._next += 1
            if self._next == n:
                self.queue.put(None)

    def fail(self, error: BaseException) -> None:
        self.queue.put(error)

    def add_sequence(self, seq) -> None:
        """A decoder sequence of this request: cancelled with it (at once if it already is)."""
        with self._lock:
            seq.cancelled = self.cancelled
            self.sequences.append(seq)

    def cancel(self) -> None:
        """Leave the engine: the request's sequences leave their slots at the next step."""
        with self._lock:
            self.cancelled = True
            for seq in self.sequences:
                seq.cancelled = True
        self.queue.put(None)  # wakes a reader waiting in next()

    def next(self, timeout: float | None = None):
        """The next audio block, None at the end (or once cancelled); raises what failed the
        request (queue.Empty after `timeout` seconds)."""
        if self.cancelled:
            return None
        item = self.queue.get(timeout=timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    def blocks(self):
        """The audio blocks in order; raises what failed the request."""
        while (block := self.next()) is not None:
            yield block


def settle_frames(vocos) -> int:
    """Frames of context that make a window's audio exact: the backbone's receptive field (the
    input conv and each ConvNeXt block's depthwise conv) plus the frames the ISTFT overlaps."""
    radius = sum(conv.kernel_size[0] // 2 for conv in [vocos.backbone.embed] +
                 [blk.dwconv for blk in vocos.backbone.convnext])
    stft = vocos.head.istft
    return radius + math.ceil(stft.n_fft / stft.hop_length) + 1


class VocosStream:
    """Vocos over one chunk's frames as they settle: windows of frames with `ctx` frames of context
    on each side, of which only the middle, whose samples no edge reaches, is sent."""

    def __init__(self, decode, ctx: int, hop: int, first: int, every: int):
        self.decode, self.ctx, self.hop, self.first, self.every = decode, ctx, hop, first, every
        self.sent = 0  # samples sent (global index of the next one)

    def update(self, seq, final: bool):
        """The next block of audio of S2A sequence `seq` (None: not enough new frames yet)."""
        have = seq.frames_done
        end = have * self.hop if final else (have - self.ctx) * self.hop  # settled samples
        step = self.first if self.sent == 0 else self.every
        if not final and end - self.sent < step * self.hop:
            return None
        if end <= self.sent:
            return np.zeros(0, np.float32) if final else None
        a = max(0, self.sent // self.hop - self.ctx)  # the window's first frame
        b = have if final else min(have, end // self.hop + self.ctx)
        audio = self.decode(seq.frames(a, b))  # samples [a * hop, b * hop)
        block = audio[self.sent - a * self.hop:end - a * self.hop]
        self.sent = end
        return block


class Engine:
    """Continuous batching and streaming for one Pipeline (see the module docstring)."""

    FIRST_FRAMES = 12   # the first block of a chunk: 0.16 s of audio (75 frames a second)
    EVERY_FRAMES = 24   # then blocks of 0.32 s

    def __init__(self, pipe, slots: int | None = None):
        self.pipe = pipe
        self.slots = slots
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self.gpu = None        # (t2s, s2a, vocos) resident modules while on the GPU
        self.threads: list[threading.Thread] = []
        self.t2s_q: queue.Queue = queue.Queue()
        self.s2a_q: queue.Queue = queue.Queue()
        self.cpu_q: queue.Queue = queue.Queue()
        self.faults: list[str] = []
        self._running_gpu = 0

    # -- submitting
    def submit(self, chunks) -> Request:
        req = Request(chunks)
        with self.lock:
            self._start()
            self.requests = [r for r in self.requests if not (r.cancelled or all(r.done))] + [req]
            if self.gpu is None:
                for i in range(len(chunks)):
                    self.cpu_q.put((req, i))
            else:
                for i, c in enumerate(chunks):
                    self.t2s_q.put(self._t2s_sequence(req, i))
        return req

    def _start(self) -> None:
        if self.threads:
            return
        stages = self.pipe.stages
        if stages.resident_available():  # the engine's own modules: generate() may run meanwhile
            self.gpu = tuple(stages.make_resident(s, self.slots) for s in ("t2s", "s2a", "vocos"))
            self._running_gpu = 2
            self.threads += [threading.Thread(target=self._gpu_loop, args=(m, q), daemon=True, name=f"wsvk-{n}")
                             for n, m, q in (("t2s", self.gpu[0], self.t2s_q), ("s2a", self.gpu[1], self.s2a_q))]
        self.threads.append(threading.Thread(target=self._cpu_loop, daemon=True, name="wsvk-cpu"))
        for t in self.threads:
            t.start()

    def close(self) -> None:
        """Stop the threads; a request still open fails (its reader wakes)."""
        with self.lock:
            self.gpu = None
        for q in (self.t2s_q, self.s2a_q, self.cpu_q):
            q.put(None)
        self._fail_all(RuntimeError("the engine was closed"))

    # -- the GPU path
    def _t2s_sequence(self, req: Request, i: int):
        c, stages = req.chunks[i], self.pipe.stages
        seq = self.gpu[0].sequence(c.text, cps=c.cps, lang=c.lang, N=stages.token_cap(c), generator=c.generator("t2s"))
        seq.on_done = lambda s: self._t2s_done(req, i, s)
        req.add_sequence(seq)
        return seq

    def _t2s_done(self, req: Request, i: int, seq) -> None:
        gpu = self.gpu
        if gpu is None:  # the GPU failed meanwhile: the chunk stays undone and the CPU redoes it
            return
        c = req.chunks[i]
        c.stoks = self.pipe.stages.until_end(seq.result[0])
        if len(c.stoks) < 2:  # nothing to say
            req.deliver(i, np.zeros(0, np.float32), True)
            return
        s2a = gpu[1].sequence(c.stoks, c.speaker.unsqueeze(0), generator=c.generator("s2a"))
        vocos = gpu[2]
        stream = VocosStream(lambda codes: self._vocos(vocos, codes), settle_frames(self.pipe.vocos),
                             vocos.hop, self.FIRST_FRAMES, self.EVERY_FRAMES)

        def fed(s, final=False):
            block = stream.update(s, final)
            if block is not None:
                req.deliver(i, block, final)

        s2a.on_feed, s2a.on_done = fed, lambda s: fed(s, True)
        req.add_sequence(s2a)
        self.s2a_q.put(s2a)

    @staticmethod
    def _vocos(vocos, codes):
        import torch

        with torch.inference_mode():
            return vocos.decode_codes(codes, bandwidth_id=BANDWIDTHS[codes.shape[1]])[0].numpy()

    def _gpu_loop(self, module, source: queue.Queue) -> None:
        from ..resident import DecodeLoop

        try:
            DecodeLoop(module.resident_decoder).serve(source)
        except Exception as e:  # a GPU failure (or a bug): what is unfinished goes on on the CPU
            with self.lock:
                first = self.gpu is not None
                self.gpu = None
                self.faults.append(str(e))
            if first:
                what = str(e) if isinstance(e, GpuError) else f"{type(e).__name__} in the GPU path: {e}"
                warnings.warn(f"wsvk: {what}; the engine goes on on the CPU", RuntimeWarning, stacklevel=2)
                for q in (self.t2s_q, self.s2a_q):
                    q.put(None)  # the other GPU thread stops too
        finally:
            with self.lock:
                self._running_gpu -= 1
                last = self._running_gpu == 0 and self.gpu is None
            if last:  # both GPU threads are gone: the CPU finishes what is unfinished
                for req in list(self.requests):
                    for i, done in enumerate(req.done):
                        if not done and not req.cancelled:
                            self.cpu_q.put((req, i))

    # -- the CPU path
    def _cpu_loop(self) -> None:
        while True:
            item = self.cpu_q.get()
            if item is None:
                return
            req, i = item
            if req.cancelled or req.done[i]:
                continue
            try:
                audio = self._cpu_chunk(req.chunks[i])
            except BaseException as e:  # noqa: BLE001 - the request hears of it
                req.fail(e)
                continue
            req.deliver(i, audio[req.sent[i]:], True)

    def _cpu_chunk(self, c) -> np.ndarray:
        """One chunk, whole, with whisperspeech's generate on the global generator seeded for it
        (under the pipeline's lock: generate() uses that generator too)."""
        import torch

        from ..router import offload

        from ..resident import model_lock

        pipe, stages = self.pipe, self.pipe.stages
        with pipe.lock, model_lock(), torch.random.fork_rng(devices=[]), offload(warn=False):
            torch.manual_seed(stage_seed(c.seed, c.index, STAGE_IDS["t2s"]))
            c.stoks = stages.until_end(pipe.t2s.generate(c.text, cps=c.cps, lang=c.lang, N=stages.token_cap(c),
                                                         show_progress_bar=False)[0])
            if len(c.stoks) < 2:
                return np.zeros(0, np.float32)
            torch.manual_seed(stage_seed(c.seed, c.index, STAGE_IDS["s2a"]))
            c.atoks = pipe.s2a.generate(c.stoks, c.speaker.unsqueeze(0), show_progress_bar=False)
            with torch.inference_mode():
                feats = pipe.vocos.codes_to_features(c.atoks.permute(1, 0, 2))
                return pipe.vocos.decode(feats, bandwidth_id=torch.tensor(BANDWIDTHS[c.atoks.shape[1]]))[0].numpy()

    def _fail_all(self, error: BaseException) -> None:
        with self.lock:
            requests, self.requests = self.requests, []
        for req in requests:
            if not (req.cancelled or all(req.done)):
                req.fail(error)
