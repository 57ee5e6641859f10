"""Streaming synthesis for many callers: the engine behind Pipeline.stream and the server.

On the wgpu backend the chunks of every request go to the pipeline's resident decoders, whose
slots Pipeline.generate shares (each decoder's SharedLoop thread keeps them full: continuous
batching): a chunk that T2S finishes goes on to S2A; as the chunk's acoustic frames settle, a
window of them goes to the engine's Vocos thread (VocosStream), so its audio leaves long before
the chunk ends while the S2A steps go on. A request's later chunks start once its first chunk has
audio out, so that its first audio does not wait on their T2S steps, and then a fair share of
the slots at a time (Engine.share), so that a long text does not hold up the requests after it:
their first chunks also go ahead of later chunks queued in the last 2 s (SharedLoop.submit's
priority is a head start in time, so nothing starves), and the CPU
thread takes every request's first chunks before anyone's second ones.
Each request receives its audio blocks in order. Every chunk samples with its own generator
(seeded from seed, chunk and stage, as Pipeline.generate does), so a request's audio does not
depend on what else runs: joined, the blocks equal generate() to float32 rounding.

Elsewhere (cpu backend, resident off) and after a GPU failure, one CPU thread synthesizes the
chunks in order, each whole, with whisperspeech's own generate; after a failure it redoes every
unfinished chunk (the same seeds, the same tokens) and sends only the audio not yet sent (what
the GPU path would still deliver for such a chunk is dropped).
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
import traceback
import warnings

import numpy as np

from ..errors import GpuError
from .stages import STAGE_IDS, stage_seed

BANDWIDTHS = {2: 0, 4: 1, 8: 2}  # Vocos' bandwidth id by the number of codebooks


class _Cancelled(Exception):
    """Raised in a CPU chunk's decode steps once its request is cancelled."""


class Request:
    """One text in the engine: audio blocks (float32, in order) from blocks(); cancel() stops it."""

    def __init__(self, chunks):
        self.chunks = chunks
        self.queue: queue.Queue = queue.Queue()
        self.sent = [0] * len(chunks)       # samples delivered per chunk
        self.done = [False] * len(chunks)
        self.on_cpu = [False] * len(chunks)  # moved to the CPU: the GPU path's blocks are dropped
        self._held: dict[int, list] = {}    # blocks of later chunks, until the earlier ones end
        self._next = 0
        self._lock = threading.Lock()
        self.cancelled = False
        self.sequences: list = []           # live decoder sequences, cancelled with the request
        self.started = 0                    # chunks handed to the decoders (or the CPU) so far, in order
        self.first_out = False              # chunk 0 has audio out, is done or left the GPU
        self.after_first = None             # called once, when first_out becomes true
        self.on_progress = None             # called (outside the lock) when a chunk ends or the
                                            # request is cancelled: slots free up for more chunks

    def deliver(self, i: int, block, done: bool, gpu: bool = True) -> None:
        """Chunk i's next block (possibly empty); done: the chunk's last one; gpu: from the GPU
        path. Blocks leave in order: a later chunk's wait until every earlier chunk is done."""
        with self._lock:
            if self.done[i] or self.cancelled or (gpu and self.on_cpu[i]):
                return
            first = i == 0 and (len(block) > 0 or done)
            ended = done
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
        if first:
            self._first_audio()
        if ended:
            self._call(self.on_progress)

    @property
    def ended(self) -> bool:
        """Cancelled, or every chunk done."""
        return self.cancelled or all(self.done)

    def in_flight(self) -> int:
        """Chunks started and not done."""
        return self.started - sum(self.done[:self.started])

    def _first_audio(self) -> None:
        with self._lock:  # once, whichever thread comes first
            self.first_out = True
            hook, self.after_first = self.after_first, None
        self._call(hook)

    @staticmethod
    def _call(hook) -> None:
        if hook is not None:
            try:
                hook()
            except Exception:  # noqa: BLE001 - the hooks send their own failures to the CPU; never the caller's
                traceback.print_exc()

    def fail(self, error: BaseException) -> None:
        self.queue.put(error)

    def move_chunk_to_cpu(self, i: int) -> bool:
        """Chunk i, unless done: from now on only the CPU path delivers it."""
        with self._lock:
            if self.cancelled or self.done[i] or self.on_cpu[i]:
                return False
            self.on_cpu[i] = True
        if i == 0:
            self._first_audio()
        return True

    def add_sequence(self, seq) -> None:
        """A decoder sequence of this request: cancelled with it (at once if it already is)."""
        with self._lock:
            seq.cancelled = self.cancelled
            self.sequences.append(seq)
            if self.cancelled:  # abandon() sets it without the lock: it sees seq, or we see it here
                seq.cancelled = True  # (only ever True once seq is listed: nothing clobbers its write)

    def stop_sequences(self) -> None:
        """The request's decoder sequences leave their slots at the next step."""
        with self._lock:
            for seq in self.sequences:
                seq.cancelled = True

    def cancel(self) -> None:
        """Leave the engine (and the decoders' slots, at the next step)."""
        with self._lock:
            was, self.cancelled = self.cancelled, True  # a sequence added from now on starts cancelled
        self.stop_sequences()
        self.queue.put(None)  # wakes a reader waiting in next()
        if not was:
            self._call(self.on_progress)

    def abandon(self) -> None:
        """cancel() for a finalizer, which the collector may run on a thread that holds this
        request's lock or its queue's (deliver() allocates under both): no lock, no reader to
        wake, no on_progress. The decoders' sequences leave at the next step."""
        self.cancelled = True
        for seq in list(self.sequences):
            seq.cancelled = True

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
    on each side, of which only the middle, whose samples no edge reaches, is sent. Blocks are
    `first` frames, then never more frames than were already sent, up to `every`: a block takes
    as many S2A steps to make as it has frames, and a listener who started playing the first
    block must not run dry before the next one comes: 12, 12, 24, 24, ... keeps up from 1.5x real
    time on (12 then 24 needed 2x)."""

    def __init__(self, ctx: int, hop: int, first: int, every: int):
        self.ctx, self.hop, self.first, self.every = ctx, hop, first, every
        self.sent = 0  # samples handed out (global index of the next one)

    def window(self, seq, final: bool):
        """The next window of S2A sequence `seq` to decode, (codes [1, Q, b - a] or None for an
        empty last block, lo, hi): samples lo:hi of its audio are the next block. None: not
        enough new frames yet. The codes are a copy: decode them on any thread."""
        have = seq.frames_done
        end = have * self.hop if final else (have - self.ctx) * self.hop  # settled samples
        step = min(self.every, max(self.first, self.sent // self.hop))
        if not final and end - self.sent < step * self.hop:
            return None
        if end <= self.sent:
            return (None, 0, 0) if final else None
        a = max(0, self.sent // self.hop - self.ctx)  # the window's first frame
        b = have if final else min(have, end // self.hop + self.ctx)
        window = (seq.frames(a, b).clone(), self.sent - a * self.hop, end - a * self.hop)  # samples [a * hop, b * hop)
        self.sent = end
        return window


class Engine:
    """Continuous batching and streaming for one Pipeline (see the module docstring)."""

    FIRST_FRAMES = 12   # the first block of a chunk: 0.16 s of audio (75 frames a second)
    EVERY_FRAMES = 24   # then blocks of 0.32 s

    def __init__(self, pipe):
        self.pipe = pipe
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self.gpu = None        # the pipeline's (t2s, s2a, vocos) resident modules while on the GPU
        self.thread: threading.Thread | None = None  # the CPU thread
        self.vocos_thread: threading.Thread | None = None
        self.cpu_q: queue.PriorityQueue = queue.PriorityQueue()  # (chunk index, arrival, (req, i)): round robin
        self._arrivals = itertools.count()
        self.slots = 1         # the decoders' slots (the fewer of T2S's and S2A's), once started
        self.vocos_q: queue.Queue = queue.Queue()  # windows for the Vocos thread, in order per chunk
        self.faults: list[str] = []
        self.closed = False

    # -- submitting
    def submit(self, chunks) -> Request:
        req = Request(chunks)
        with self.lock:
            if self.closed:
                raise RuntimeError("the engine was closed")
            self._start()
            self.requests = [r for r in self.requests if not r.ended] + [req]
            gpu = self.gpu
            if gpu is None:
                req.started = len(chunks)
                for i in range(len(chunks)):
                    req.on_cpu[i] = True
                    self._to_cpu(req, i)
        if gpu is not None:
            req.after_first = req.on_progress = self._feed
            self._feed()
        return req

    def share(self, active: int) -> int:
        """Chunks one request may have in flight beside `active` requests: a fair part of the
        slots but one (kept for a newcomer's first chunk), and never fewer than two (the chunk
        being heard and the next)."""
        return max(2, (self.slots - 1) // max(active, 1))

    def _feed(self) -> None:
        """Start the requests' next chunks, in arrival order. A request's first chunk starts at
        once; its later ones once the first has audio out (before, the first chunk's S2A steps
        would take turns on the GPU with their T2S steps: the time to first audio would grow by
        a T2S step per S2A step), and then at most share() at a time: a long text alone uses the
        slots, but leaves room for the requests that come after it, whose first chunks go ahead
        of queued later chunks in the decoders. Never raises (it runs on whichever thread ended
        a chunk)."""
        with self.lock:
            if self.gpu is None:
                return
            active = [r for r in self.requests if not r.ended]
            self.requests = active  # a request that ended lets go of its chunks' tokens here
            share, start = self.share(len(active)), []
            for req in active:
                limit = share if req.first_out else 1
                while req.started < len(req.chunks) and req.in_flight() < limit:
                    start.append((req, req.started))
                    req.started += 1
        for req, i in start:
            self._submit_t2s(req, i)

    def _submit_t2s(self, req: Request, i: int) -> None:
        """Chunk i's T2S sequence, unless the GPU path is gone (the chunk then is, or is about to
        be, on the CPU). Never raises: a chunk that cannot go to the GPU goes to the CPU."""
        try:
            with self.lock:  # so that a GPU failure comes wholly before or wholly after
                if self.gpu is None or req.cancelled:
                    return
                if not req.on_cpu[i]:
                    self.gpu[0].submit(self._t2s_sequence(self.gpu, req, i), on_error=self._chunk_failed(req, i),
                                       priority=min(i, 1))
        except Exception as e:  # noqa: BLE001 - that chunk's: the CPU makes it
            with self.lock:
                self.faults.append(f"chunk {i}: {type(e).__name__}: {e}")
            if req.move_chunk_to_cpu(i):
                self._to_cpu(req, i)

    def _to_cpu(self, req: Request, i: int) -> None:
        """Chunk i for the CPU thread, which takes every request's first chunks first, then their
        second ones, ...: a long text does not hold up the requests after it."""
        self.cpu_q.put((i, next(self._arrivals), (req, i)))

    def _start(self) -> None:
        if self.thread is not None:
            return
        stages = self.pipe.stages
        gpu = tuple(stages.gpu_runner(s) for s in ("t2s", "s2a", "vocos"))  # generate() shares them
        if all(m is not None for m in gpu):  # else: cpu backend, resident off, or after a fault
            self.gpu = gpu
            self.slots = min(gpu[0].slots, gpu[1].slots)
            for mod in gpu[:2]:
                mod.loop.listeners.append(self._gpu_failed)
            self.vocos_thread = threading.Thread(target=self._vocos_loop, daemon=True, name="wsvk-vocos")
            self.vocos_thread.start()
        self.thread = threading.Thread(target=self._cpu_loop, daemon=True, name="wsvk-cpu")
        self.thread.start()

    def health(self) -> dict:
        """Where new requests go now ("gpu", or "cpu": the CPU backend, resident modules off, or
        after a GPU failure) and the faults so far (a GPU failure, or one chunk's own error)."""
        with self.lock:
            if not self.closed:
                self._start()
            return {"path": "cpu" if self.gpu is None else "gpu", "faults": len(self.faults),
                    "last_fault": self.faults[-1] if self.faults else None}

    def close(self, wait: float = 0.0) -> None:
        """Stop listening, the CPU thread and the Vocos thread; a request still open fails (its
        reader wakes) and its sequences leave the decoders. Pipeline.engine() then starts a new
        engine. wait: seconds to wait for the CPU and Vocos threads to leave what they are making
        and for the decoders' loops to go idle (a process about to exit must not end inside torch
        or wgpu: their static destructors abort it, "terminate called without an active exception")."""
        with self.lock:
            gpu, self.gpu, self.closed = self.gpu, None, True
        for mod in (gpu or ())[:2]:
            if self._gpu_failed in mod.loop.listeners:
                mod.loop.listeners.remove(self._gpu_failed)
        self.cpu_q.put((-1, next(self._arrivals), None))
        self.vocos_q.put(None)
        self._fail_all(RuntimeError("the engine was closed"))
        for thread in (self.thread, self.vocos_thread) if wait else ():
            if thread is not None and thread is not threading.current_thread():
                thread.join(wait)
        for mod in (gpu or ())[:2] if wait else ():  # their cancelled sequences leave at the next step
            mod.loop.wait_idle(wait)

    # -- the GPU path
    def _t2s_sequence(self, gpu, req: Request, i: int):
        c, stages = req.chunks[i], self.pipe.stages
        seq = gpu[0].sequence(c.text, cps=c.cps, lang=c.lang, N=stages.token_cap(c), generator=c.generator("t2s"))
        seq.on_done = lambda s: self._t2s_done(gpu, req, i, s)
        req.add_sequence(seq)
        return seq

    def _t2s_done(self, gpu, req: Request, i: int, seq) -> None:
        if req.on_cpu[i] or req.cancelled:  # the GPU failed meanwhile: the CPU redoes the chunk
            return
        c = req.chunks[i]
        c.stoks = self.pipe.stages.until_end(seq.result[0])
        if len(c.stoks) < 2:  # nothing to say
            req.deliver(i, np.zeros(0, np.float32), True)
            return
        s2a = gpu[1].sequence(c.stoks, c.speaker.unsqueeze(0), generator=c.generator("s2a"))
        stream = VocosStream(settle_frames(self.pipe.vocos), gpu[2].hop, self.FIRST_FRAMES, self.EVERY_FRAMES)

        def fed(s, final=False):  # on the S2A loop's thread: Vocos runs on its own, beside the steps
            if req.on_cpu[i] or self.closed:  # the CPU redoes it (a late block would be dropped anyway)
                s.cancelled = True
                return
            window = stream.window(s, final)
            if window is not None:
                self.vocos_q.put((req, i, gpu[2], window, final))

        s2a.on_feed, s2a.on_done = fed, lambda s: fed(s, True)
        req.add_sequence(s2a)
        gpu[1].submit(s2a, on_error=self._chunk_failed(req, i), priority=min(i, 1))

    def _vocos_loop(self) -> None:
        """The Vocos thread: decodes the S2A chunks' windows in the order they came (so each
        chunk's blocks stay in order) and delivers the blocks; the S2A loop steps meanwhile. It
        outlives any one window's failure: else every later block of every stream would hang."""
        while (item := self.vocos_q.get()) is not None:
            req, i = item[:2]
            try:
                self._vocos_window(*item)
            except Exception:  # noqa: BLE001 - e.g. a warnings filter that raises: that chunk to the CPU
                traceback.print_exc()
                if req.move_chunk_to_cpu(i):
                    self._to_cpu(req, i)

    def _vocos_window(self, req: Request, i: int, vocos, window, final: bool) -> None:
        codes, lo, hi = window
        if self.closed or req.cancelled or req.on_cpu[i]:
            return
        try:
            block = np.zeros(0, np.float32) if codes is None else self._vocos(vocos, codes)[lo:hi]
        except Exception as e:  # noqa: BLE001 - that chunk's (or, for a GpuError, the GPU's)
            self._chunk_failed(req, i)(e)
            return
        req.deliver(i, block, final)

    @staticmethod
    def _vocos(vocos, codes):
        import torch

        with torch.inference_mode():
            return vocos.decode_codes(codes, bandwidth_id=BANDWIDTHS[codes.shape[1]])[0].numpy()

    def _gpu_failed(self, error: BaseException) -> None:
        """A resident decoder's loop failed (a GPU fault) or was closed: the engine goes on on the
        CPU, which redoes every unfinished chunk of every request."""
        with self.lock:
            first = self.gpu is not None
            self.gpu = None
            self.faults.append(str(error))
            requests = list(self.requests)
        if not first:
            return
        for req in requests:  # before the warning, which a warnings filter may turn into an error
            req.stop_sequences()  # the other decoder drops them too
            for i in range(len(req.chunks)):
                if req.move_chunk_to_cpu(i):
                    self._to_cpu(req, i)
        what = str(error) if isinstance(error, GpuError) else f"{type(error).__name__} in the GPU path: {error}"
        warnings.warn(f"wsvk: {what}; the engine goes on on the CPU", RuntimeWarning, stacklevel=2)

    def _chunk_failed(self, req: Request, i: int):
        """on_error for chunk i's sequences: a GPU error at its start is the GPU's (everything goes
        to the CPU); another error of its own (a bug in a callback) sends just that chunk to the
        CPU, and the other chunks decode on."""
        def failed(error: BaseException) -> None:
            if isinstance(error, GpuError):
                self._gpu_failed(error)
                return
            with self.lock:
                self.faults.append(f"chunk {i}: {type(error).__name__}: {error}")
            if req.move_chunk_to_cpu(i):
                self._to_cpu(req, i)
                warnings.warn(f"wsvk: {type(error).__name__} in the GPU path: {error}; that chunk is redone on "
                              "the CPU", RuntimeWarning, stacklevel=2)
        return failed

    # -- the CPU path
    def _cpu_loop(self) -> None:
        while True:
            item = self.cpu_q.get()[2]
            if item is None:
                return
            req, i = item
            if req.cancelled or req.done[i]:
                continue
            try:
                audio = self._cpu_chunk(req.chunks[i], req)
            except _Cancelled:
                continue
            except BaseException as e:  # noqa: BLE001 - the request hears of it
                req.fail(e)
                continue
            req.deliver(i, audio[req.sent[i]:], True, gpu=False)

    def _cpu_chunk(self, c, req: Request | None = None) -> np.ndarray:
        """One chunk, whole, with whisperspeech's generate on the global generator seeded for it
        (under the pipeline's lock: generate() uses that generator too); its semantic tokens are
        the GPU's where its T2S ended there."""
        import torch

        from ..router import offload

        pipe, stages = self.pipe, self.pipe.stages

        def step():  # a cancelled request (a listener gone, the engine closed) stops within a step
            if req is not None and (req.cancelled or self.closed):
                raise _Cancelled()

        with pipe.lock, torch.random.fork_rng(devices=[]), offload(warn=False):
            if c.stoks is None:  # else the GPU's T2S finished it: keep its tokens (the same in f32; at
                # f16 the CPU's would differ, and the audio already sent says the GPU's words)
                torch.manual_seed(stage_seed(c.seed, c.index, STAGE_IDS["t2s"]))
                c.stoks = stages.until_end(pipe.t2s.generate(c.text, cps=c.cps, lang=c.lang, N=stages.token_cap(c),
                                                             step=step, show_progress_bar=False)[0])
            if len(c.stoks) < 2:
                return np.zeros(0, np.float32)
            torch.manual_seed(stage_seed(c.seed, c.index, STAGE_IDS["s2a"]))
            c.atoks = pipe.s2a.generate(c.stoks, c.speaker.unsqueeze(0), step=step, show_progress_bar=False)
            with torch.inference_mode():
                feats = pipe.vocos.codes_to_features(c.atoks.permute(1, 0, 2))
                return pipe.vocos.decode(feats, bandwidth_id=torch.tensor(BANDWIDTHS[c.atoks.shape[1]]))[0].numpy()

    def _fail_all(self, error: BaseException) -> None:
        with self.lock:
            requests, self.requests = self.requests, []
        for req in requests:
            if not req.ended:
                req.fail(error)
                req.stop_sequences()
