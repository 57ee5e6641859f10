"""Continuous batching over a ResidentDecoder's slots: sequences join free slots and leave at step
boundaries, and every step advances all the active ones in one submit.

`run(sequences)` decodes a list to its end; `serve(queue)` keeps taking sequences from a
queue.Queue (blocking while idle) until it takes None: the server's loop.

A sequence is any object with
    start(slot) -> (token ids, pos) or None   its encoder pass and prompt go into `slot`; the
                                              first step's input (None: nothing to decode)
    feed(logits) -> (token ids, pos) or None  the step's logits row; the next input, or None
                                              when it has finished (it leaves its slot)
    cancelled: bool                           set from any thread: it leaves at the next step
"""

from __future__ import annotations

import queue
from collections import deque

_EMPTY = object()  # nothing waiting (as opposed to None: stop)


class DecodeLoop:
    """Runs sequences through one decoder's slots (more sequences than slots run as they free up)."""

    def __init__(self, decoder):
        self.decoder = decoder
        self.max_active = 0  # the most columns a step had (tests and benchmarks read it)

    def run(self, sequences) -> None:
        """Decode every sequence to its end (or cancellation), in joining order."""
        pending = deque(sequences)
        self._loop(lambda block: pending.popleft() if pending else _EMPTY)

    def serve(self, source: queue.Queue) -> None:
        """Decode sequences as they arrive in `source` until it yields None (then return at once,
        dropping what is active)."""
        def take(block):
            try:
                return source.get(block=block)
            except queue.Empty:
                return _EMPTY

        self._loop(take)

    def _loop(self, take) -> None:
        """take(block) -> the next sequence, _EMPTY (none waiting) or None (stop)."""
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
                        return  # run(): the list is done
                    break
                if getattr(seq, "cancelled", False):
                    continue
                slot = free.pop()
                first = seq.start(slot)
                if first is None:
                    free.append(slot)
                else:
                    active[slot] = [seq, first]
            for slot in [s for s, (seq, _) in active.items() if getattr(seq, "cancelled", False)]:
                del active[slot]
                free.append(slot)
            if not active:
                continue
            slots = sorted(active)
            self.max_active = max(self.max_active, len(slots))
            logits = dec.step_many([(s, active[s][1][0], active[s][1][1]) for s in slots])
            for row, slot in zip(logits, slots):
                nxt = active[slot][0].feed(row)
                if nxt is None:
                    del active[slot]
                    free.append(slot)
                else:
                    active[slot][1] = nxt
