"""Continuous batching over a ResidentDecoder's slots: sequences join free slots and leave at step
boundaries, and every step advances all the active ones in one submit.

DecodeLoop: `run(sequences)` decodes a list to its end; `drive(take)` takes sequences from a
function until it says stop.
SharedLoop: one decoder's slots shared by every caller. A thread, started by the first sequence
and ending when there is nothing left to do, serves a queue that `run(sequences)`
(Pipeline.generate) and `submit(seq)` (the streaming engine) both feed: a library call and the
streams of a server decode in the same steps, and one set of KV caches serves them all.

A sequence is any object with
    start(slot) -> (token ids, pos) or None   its encoder pass and prompt go into `slot`; the
                                              first step's input (None: nothing to decode)
    feed(logits) -> (token ids, pos) or None  the step's logits row; the next input, or None
                                              when it has finished (it leaves its slot)
    cancelled: bool                           set from any thread: it leaves at the next step
and optionally
    dropped() -> None                         called when it leaves because it was cancelled
    predraw() -> None                         host work for its next feed that does not need the
                                              logits (its sampler's random draws): done while the
                                              GPU runs the step
    batch_sample() -> (settings, draws) or None   with advance(tokens) -> as feed: its next sample's
                                              sampling.Settings and draws (taken ahead), so that
                                              the loop samples every sequence with equal settings
                                              in one call and hands each its tokens through
                                              advance() instead of feed() (None: feed() samples)
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
import traceback
from collections import deque

import numpy as np

_EMPTY = object()  # take(): nothing waiting (as opposed to None: stop)
PRIORITY_WAIT = 2.0  # seconds a queued sequence yields per priority step to those submitted after it


class DecodeLoop:
    """Runs sequences through one decoder's slots (more sequences than slots run as they free up)."""

    def __init__(self, decoder):
        self.decoder = decoder
        self.max_active = 0  # the most columns a step had (tests and benchmarks read it)
        self.feed_seconds = 0.0  # host time feeding the logits to the sequences (sampling), between steps

    def run(self, sequences) -> None:
        """Decode every sequence to its end (or cancellation), in joining order."""
        pending = deque(sequences)
        self.drive(lambda block: pending.popleft() if pending else _EMPTY)

    def drive(self, take) -> None:
        """Decode what take(block) hands out: the next sequence, _EMPTY (none waiting; with
        block=True only when there is nothing else to do: the loop then ends) or None (stop now,
        dropping what is active)."""
        dec = self.decoder
        free = list(range(dec.slots - 1, -1, -1))  # pop() hands out slot 0 first
        active: dict[int, list] = {}  # slot -> [sequence, next input]
        while True:
            while free:
                seq = take(not active)  # block only while there is nothing to step
                if seq is None:
                    return
                if seq is _EMPTY:
                    if not active:
                        return  # nothing queued, nothing active: done
                    break
                if getattr(seq, "cancelled", False):
                    _dropped(seq)
                    continue
                slot = free.pop()
                first = seq.start(slot)
                if first is None:
                    free.append(slot)
                else:
                    active[slot] = [seq, first]
            for slot in [s for s, (seq, _) in active.items() if getattr(seq, "cancelled", False)]:
                _dropped(active.pop(slot)[0])
                free.append(slot)
            if not active:
                continue
            slots = sorted(active)
            self.max_active = max(self.max_active, len(slots))
            # in the feeds' order: sequences sharing a generator draw in the same order as without
            ahead = [active[s][0].predraw for s in slots if hasattr(active[s][0], "predraw")]
            logits = dec.step_many([(s, active[s][1][0], active[s][1][1]) for s in slots],
                                   while_waiting=lambda: [f() for f in ahead])
            t0 = time.perf_counter()
            for slot, nxt in zip(slots, feed_all([active[s][0] for s in slots], logits)):
                if nxt is None:
                    del active[slot]
                    free.append(slot)
                else:
                    active[slot][1] = nxt
            self.feed_seconds += time.perf_counter() - t0


def feed_all(seqs, logits) -> list:
    """Every sequence's next input (feed's result) from its row of logits, in order. Those whose
    batch_sample() gives settings and draws are sampled in one call per settings (most of the
    host's work between two steps; row by row the same operations, so the same tokens) and then
    advanced; the others sample in their feed()."""
    groups: dict = {}  # settings -> [(index, draws)]
    for i, seq in enumerate(seqs):
        plan = seq.batch_sample() if hasattr(seq, "batch_sample") else None
        if plan is None:
            continue
        try:
            settings, q = plan
            groups.setdefault(settings, []).append((i, q))
        except (TypeError, ValueError):  # not a (hashable settings, draws) pair: its feed() samples
            continue
    tokens: list = [None] * len(seqs)
    for settings, members in groups.items():
        if len(members) < 2:
            continue  # alone: its feed() is the same call, without the grouping
        rows = [i for i, _ in members]
        try:
            sampled = settings.tokens(np.stack([logits[i] for i in rows]), [q for _, q in members])
        except Exception:  # noqa: BLE001 - each feed() samples on its own and meets its error alone
            continue
        for i, tok in zip(rows, sampled):
            tokens[i] = tok
    return [seq.feed(row) if tok is None else seq.advance(tok) for seq, row, tok in zip(seqs, logits, tokens)]


def _dropped(seq) -> None:
    hook = getattr(seq, "dropped", None)
    if hook is not None:
        hook()


class _Batch:
    """The sequences of one SharedLoop.run call: done when all have finished, or the first error."""

    def __init__(self, n: int):
        self.left, self.error = n, None
        self.lock, self.event = threading.Lock(), threading.Event()
        if n == 0:
            self.event.set()

    def finished(self) -> None:
        with self.lock:
            self.left -= 1
            if self.left == 0:
                self.event.set()

    def fail(self, error: BaseException) -> None:
        with self.lock:
            if self.error is None and self.left > 0:  # a batch already done stays done
                self.error = error
        self.event.set()


class _Guarded:
    """A sequence whose own errors (in start/feed and the callbacks they make) go to on_error, and
    not to the loop: it leaves, and the others decode on."""

    def __init__(self, seq, on_error):
        self.seq, self.on_error = seq, on_error
        self.early = None  # an error of predraw(): reported at the next feed

    @property
    def cancelled(self) -> bool:
        return getattr(self.seq, "cancelled", False)

    def dropped(self) -> None:
        _dropped(self.seq)

    def predraw(self) -> None:
        try:
            if hasattr(self.seq, "predraw"):
                self.seq.predraw()
        except Exception as e:  # noqa: BLE001 - inside the step: its owner hears of it at the feed
            self.early = e

    def _call(self, method, arg):
        try:
            if self.early is not None:
                raise self.early
            return method(arg)
        except Exception as e:  # noqa: BLE001 - its owner's to handle
            try:
                self.on_error(e)
            except Exception:  # noqa: BLE001 - a failing handler (a warning made an error by a
                traceback.print_exc()  # filter, say) must not end the loop and every other sequence
            return None

    def start(self, slot):
        return self._call(self.seq.start, slot)

    def feed(self, logits):
        return self._call(self.seq.feed, logits)

    def batch_sample(self):
        """The sequence's (settings, draws), or None: then feed() samples, and reports any error
        of the sequence's own."""
        try:
            return None if self.early is not None or not hasattr(self.seq, "batch_sample") else self.seq.batch_sample()
        except Exception:  # noqa: BLE001 - feed() runs instead and meets it again
            return None

    def advance(self, tokens):
        return self._call(self.seq.advance, tokens)


class _Tracked(_Guarded):
    """A sequence of a run() call: its end (finished, dropped or failed) counts for its batch, and
    an error of its own fails that batch only."""

    def __init__(self, seq, batch: _Batch):
        super().__init__(seq, batch.fail)
        self.batch = batch

    @property
    def cancelled(self) -> bool:
        return self.batch.error is not None or super().cancelled

    def dropped(self) -> None:  # cancelled (by its owner, or as its batch failed): it is over
        self.batch.finished()

    def _call(self, method, arg):
        nxt = super()._call(method, arg)
        if nxt is None:
            self.batch.finished()
        return nxt


class SharedLoop:
    """A DecodeLoop fed by a queue from a daemon thread that the first sequence starts and that
    ends when nothing is queued or active (so an unused module holds no thread, and is freed with
    its pipeline). An error in a sequence's own start/feed goes to its owner (run()'s caller,
    or submit()'s on_error). When the loop itself fails (a GPU error in a step) or is closed,
    every listener is called with the error and every run() call waiting on it raises it;
    sequences still queued are dropped (their owners hear of it through those two ways)."""

    def __init__(self, decoder, name: str = "wsvk-decode"):
        self.loop = DecodeLoop(decoder)
        self.name = name
        self.listeners: list = []  # called with the error when the loop fails (from its thread)
        self._queue: queue.PriorityQueue = queue.PriorityQueue()  # (due, arrival, sequence)
        self._arrivals = itertools.count()
        self._thread: threading.Thread | None = None
        self._batches: set = set()
        self._lock = threading.Lock()

    def submit(self, seq, on_error=None, priority: int = 1) -> None:
        """Queue one sequence (see the module docstring); it joins at a step boundary, as if it
        had arrived `priority` x PRIORITY_WAIT seconds after it did. The engine gives a request's
        first chunk 0 and its later chunks 1, so a new listener goes ahead of the work queued in
        the last PRIORITY_WAIT seconds, and no queued chunk waits longer than that behind a
        stream of newcomers. on_error(e): what to do when its start/feed raises (None: the loop
        fails)."""
        self._put([seq if on_error is None else _Guarded(seq, on_error)], priority)

    def _put(self, sequences, priority: int) -> None:
        """Queue sequences in one hold of the lock: the loop takes them under it too, so a run()
        call's sequences are all there at the same step boundary (and join one step, as far as
        free slots allow)."""
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
                thread.start()  # it waits for the lock before it looks at anything
                self._thread = thread
            due = time.monotonic() + priority * PRIORITY_WAIT
            for seq in sequences:
                self._queue.put((due, next(self._arrivals), seq))

    def run(self, sequences) -> None:
        """Decode the sequences together (beside whatever else is submitted) and wait for their
        end; raises what failed them. Interrupted, it cancels them."""
        batch = _Batch(len(sequences))
        with self._lock:
            self._batches.add(batch)
        try:
            self._put([_Tracked(seq, batch) for seq in sequences], 1)
            batch.event.wait()
        except BaseException as e:
            batch.fail(e)  # the loop drops its sequences at the next step
            raise
        finally:
            with self._lock:
                self._batches.discard(batch)
        if batch.error is not None:
            raise batch.error

    def close(self) -> None:
        """Stop the thread at the next free slot (what is active or queued is dropped: the
        listeners and run() callers get an error)."""
        with self._lock:
            thread = self._thread
            if thread is not None:
                self._queue.put((-1, next(self._arrivals), None))  # before anything queued
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def wait_idle(self, timeout: float) -> None:
        """Wait (at most `timeout` s) for the loop's thread to end: nothing queued or active."""
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def busy(self) -> bool:
        """Whether the loop's thread runs: sequences queued or in the slots."""
        with self._lock:
            return self._thread is not None

    def _take(self, block: bool):
        with self._lock:
            if self._queue.empty():
                if block:  # nothing active, nothing queued: the thread ends
                    self._thread = None  # the next submit starts another
                return _EMPTY
            return self._queue.get_nowait()[2]

    def _serve(self) -> None:
        me, error = threading.current_thread(), None
        try:
            self.loop.drive(self._take)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting callers and listeners
            error = e
        with self._lock:
            if self._thread is not me:
                return  # it ended idle (a newer thread may serve the queue now)
            self._thread = None  # stopped by close(), or failed
            while True:  # what was queued behind the failure (or the stop) never runs
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            batches, listeners = list(self._batches), list(self.listeners)
        error = error or RuntimeError("the decode loop was closed")
        for listener in listeners:  # first: the engine moves its work before generate() resumes
            try:
                listener(error)
            except Exception:  # noqa: BLE001 - one listener's failure must not silence the rest
                traceback.print_exc()
        for batch in batches:
            batch.fail(error)  # each caller raises this same object
