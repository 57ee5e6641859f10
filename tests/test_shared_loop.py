"""SharedLoop (wsvk/resident/batching.py): one decoder's slots shared by every caller. Driven here
by a fake decoder (no GPU), so the interleavings are exact: several run() calls and submitted
sequences decode in the same steps, and a failure reaches exactly who it concerns."""

import sys
import threading

import numpy as np
import pytest

from wsvk.resident import SharedLoop
from wsvk.resident.batching import DecodeLoop
from wsvk.resident.sampling import SampledSequence


class FakeDecoder:
    """step_many returns one row per column, [slot, pos]; records the slots of every step. It can
    be held before a step (gate) and made to fail at a given step."""

    def __init__(self, slots=4, fail_at=None):
        self.slots, self.fail_at = slots, fail_at
        self.steps: list[list[int]] = []
        self.gate, self.at_gate = threading.Event(), threading.Event()
        self.gate.set()

    def step_many(self, columns, while_waiting=None):
        self.at_gate.set()
        assert self.gate.wait(10)
        if self.fail_at is not None and len(self.steps) == self.fail_at:
            raise RuntimeError("injected step failure")
        if while_waiting is not None:
            while_waiting()
        self.steps.append([slot for slot, _, _ in columns])
        return [np.array([slot, pos]) for slot, _, pos in columns]


class Seq:
    """Decodes `n` steps, recording the positions fed; raises at step `bad` if given."""

    def __init__(self, n, bad=None):
        self.n, self.bad, self.fed, self.cancelled, self.done = n, bad, [], False, False

    def start(self, slot):
        return [0], 0

    def feed(self, row):
        if self.bad is not None and len(self.fed) == self.bad:
            raise ValueError("bad sequence")
        self.fed.append(int(row[1]))
        if len(self.fed) == self.n:
            self.done = True
            return None
        return [0], len(self.fed)


def run_in_thread(loop, seqs, errors):
    def target():
        try:
            loop.run(seqs)
        except Exception as e:  # noqa: BLE001 - the test looks at it
            errors.append(e)

    t = threading.Thread(target=target)
    t.start()
    return t


def wait_queued(loop, n):
    """Until n sequences wait in the loop's queue."""
    for _ in range(1000):
        if loop._queue.qsize() >= n:
            return
        threading.Event().wait(0.005)
    raise AssertionError("sequences never queued")


def hold_first_step(dec, loop, seqs, errors):
    """Start run(seqs) in a thread and return it once the loop waits at its first step."""
    dec.gate.clear()
    t = run_in_thread(loop, seqs, errors)
    assert dec.at_gate.wait(10)
    return t


def test_callers_share_steps():
    """Two run() calls and a submitted sequence decode in the same steps, each to its own end."""
    dec = FakeDecoder(slots=4)
    loop = SharedLoop(dec)
    a, b, c = [Seq(5), Seq(3)], [Seq(4)], Seq(6)
    errors = []
    threads = [hold_first_step(dec, loop, a, errors)]  # a's two sequences in the first step
    threads.append(run_in_thread(loop, b, errors))
    loop.submit(c)
    wait_queued(loop, 2)
    dec.gate.set()
    for t in threads:
        t.join(10)
    assert not errors and all(s.done for s in a + b) and [s.fed for s in a + b] == [
        [0, 1, 2, 3, 4], [0, 1, 2], [0, 1, 2, 3]]
    for _ in range(200):  # c has no waiter: it ends in the loop's own time
        if c.done:
            break
        threading.Event().wait(0.01)
    assert c.fed == list(range(6))
    assert dec.steps[1] == [0, 1, 2, 3]  # from the second step on, all four in one step
    assert loop.loop.max_active == 4 and len(dec.steps) == 7  # c joined at the second step


def test_a_run_calls_sequences_start_in_one_step():
    """run() queues its sequences at once: the loop's thread cannot take the first alone and
    step it before the rest arrive (thread switches made frequent to tempt that)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(50):
            dec = FakeDecoder(slots=4)
            SharedLoop(dec).run([Seq(2), Seq(2), Seq(2)])
            assert dec.steps == [[0, 1, 2], [0, 1, 2]]
    finally:
        sys.setswitchinterval(old)


def test_a_failing_sequence_fails_only_its_call():
    dec = FakeDecoder(slots=4)
    loop = SharedLoop(dec)
    errors_bad, errors_good = [], []
    good = [Seq(6)]
    t1 = hold_first_step(dec, loop, [Seq(5, bad=2), Seq(8)], errors_bad)
    t2 = run_in_thread(loop, good, errors_good)
    wait_queued(loop, 1)
    dec.gate.set()
    t1.join(10)
    t2.join(10)
    assert [type(e) for e in errors_bad] == [ValueError] and not errors_good and good[0].done
    assert max(len(s) for s in dec.steps[3:]) == 1  # the failed call's other sequence left too


class DrawingSeq(Seq):
    """A Seq whose predraw() (the sampler's draws, taken while the GPU runs a step) is logged
    beside its feeds; it raises at predraw number `bad_draw` if given."""

    def __init__(self, n, log, bad_draw=None):
        super().__init__(n)
        self.log, self.bad_draw, self.draws = log, bad_draw, 0

    def predraw(self):
        if self.draws == self.bad_draw:
            raise ValueError("bad draw")
        self.draws += 1
        self.log.append(("draw", self))

    def feed(self, row):
        self.log.append(("feed", self))
        return super().feed(row)


def test_draws_are_taken_inside_each_step_and_their_errors_go_to_their_owner():
    """predraw runs once per step for every column, inside the step (before its feeds); one that
    raises fails only its own run() call, at its next feed."""
    dec = FakeDecoder(slots=4)
    loop = SharedLoop(dec)
    log, errors_bad, errors_good = [], [], []
    a, b, bad = DrawingSeq(3, log), DrawingSeq(5, log), DrawingSeq(4, log, bad_draw=1)
    t1 = hold_first_step(dec, loop, [a, b], errors_good)
    t2 = run_in_thread(loop, [bad], errors_bad)
    wait_queued(loop, 1)
    dec.gate.set()
    t1.join(10)
    t2.join(10)
    assert not errors_good and a.done and b.done and [type(e) for e in errors_bad] == [ValueError]
    assert (a.draws, b.draws, bad.draws) == (3, 5, 1)
    assert a.fed == [0, 1, 2] and b.fed == [0, 1, 2, 3, 4] and bad.fed == [0]
    steps = []  # the log cut into steps: each step's draws come before its feeds
    for kind, seq in log:
        if kind == "draw" and (not steps or steps[-1][-1][0] == "feed"):
            steps.append([])
        steps[-1].append((kind, seq))
    assert len(steps) == len(dec.steps)
    unlogged = 0  # columns with neither a draw nor a feed logged: bad's, in the step its draw failed
    for step, slots in zip(steps, dec.steps):
        kinds = [k for k, _ in step]
        assert kinds == sorted(kinds)  # "draw" < "feed"
        drawn, fed = ([id(q) for k, q in step if k == kind] for kind in ("draw", "feed"))
        assert sorted(drawn) == sorted(fed)
        unlogged += len(slots) - len(fed)
    assert unlogged == 1


class SamplingSeq(Seq):
    """Samples a token per step from logits made of (slot, pos) with a generator that may be
    shared, drawing ahead (predraw) like the resident sequences when `ahead`."""

    def __init__(self, n, generator, ahead):
        super().__init__(n)
        from wsvk.resident.sampling import Draws

        self.generator, self.draws, self.tokens = generator, Draws((1, 50), generator), []
        if not ahead:
            self.draws.ahead = lambda: None

    def predraw(self):
        self.draws.ahead()

    def feed(self, row):
        import torch

        from wsvk.resident.sampling import sample

        logits = torch.linspace(-2, 2, 50).reshape(1, 50) * float(row[1] + 1)
        self.tokens.append(int(sample(logits, 0.7, None, self.generator, self.draws.take())[0, 0]))
        return super().feed(row)


def test_draws_taken_ahead_equal_draws_taken_when_sampling_even_from_a_shared_generator():
    """Slots are reused out of joining order (a short sequence frees slot 0 first); sequences that
    share one generator still draw in the feeds' order, so their tokens equal drawing inline."""
    import torch

    tokens = {}
    for ahead in (False, True):
        g = torch.Generator().manual_seed(3)
        seqs = [SamplingSeq(n, g, ahead) for n in (2, 6, 5, 4, 3)]
        DecodeLoop(FakeDecoder(slots=3)).run(seqs)  # all there from the start: the same steps both times
        tokens[ahead] = [s.tokens for s in seqs]
        assert all(s.done for s in seqs) and [len(t) for t in tokens[ahead]] == [2, 6, 5, 4, 3]
    assert tokens[True] == tokens[False]


def test_a_step_failure_reaches_every_caller_and_listener_then_the_loop_restarts():
    dec = FakeDecoder(slots=2, fail_at=2)
    loop = SharedLoop(dec)
    heard = []
    loop.listeners.append(heard.append)
    with pytest.raises(RuntimeError, match="injected"):
        loop.run([Seq(5), Seq(5), Seq(5)])  # the third is still queued when the step fails
    assert [str(e) for e in heard] == ["injected step failure"]
    dec.fail_at = None
    seq = Seq(3)
    loop.run([seq])  # a new thread serves the next call
    assert seq.fed == [0, 1, 2] and len(heard) == 1


def test_close_fails_waiting_calls_and_a_later_call_runs():
    dec = FakeDecoder(slots=2)
    loop = SharedLoop(dec)
    errors = []
    t = hold_first_step(dec, loop, [Seq(3), Seq(50)], errors)
    closer = threading.Thread(target=loop.close)
    closer.start()
    wait_queued(loop, 1)  # the stop, taken when the first sequence frees its slot
    dec.gate.set()
    closer.join(10)
    t.join(10)
    assert [str(e) for e in errors] == ["the decode loop was closed"]  # not a hang
    seq = Seq(2)
    loop.run([seq])
    assert seq.done


def test_run_of_nothing_returns():
    SharedLoop(FakeDecoder()).run([])


def test_cancelled_sequences_end_their_call_and_the_thread_ends_when_idle():
    dec = FakeDecoder(slots=2)
    loop = SharedLoop(dec)
    before, later = Seq(100), Seq(100)
    before.cancelled = True  # cancelled before it joins

    def cancel_later(row, feed=later.feed):
        if len(later.fed) == 2:
            later.cancelled = True  # cancelled after its third step: it leaves before the fourth
        return feed(row)

    later.feed = cancel_later
    done = Seq(4)
    loop.run([before, later, done])
    assert done.done and before.fed == [] and later.fed == [0, 1, 2]
    for _ in range(500):
        if loop._thread is None:
            break
        threading.Event().wait(0.01)
    assert loop._thread is None  # idle: no thread holds the decoder




class SettingsSeq(SampledSequence, Seq):
    """Samples from logits rows made of its (slot, pos), offering its sampling to the loop
    (batch_sample/advance) with the given settings, as the resident T2S and S2A sequences do;
    it raises at sample number `bad` if given."""

    WIDTH = 200  # the decoder's logits per column

    def __init__(self, n, seed, settings, bad=None):
        import torch

        from wsvk.resident.sampling import Draws

        super().__init__(n)
        self.settings, self.tokens, self.generator = settings, [], torch.Generator().manual_seed(seed)
        self.draws, self.bad_sample = Draws((1, settings.rows, self.WIDTH // settings.rows), self.generator), bad

    def _advance(self, tok):
        if len(self.tokens) == self.bad_sample:
            raise ValueError("bad sequence")
        self.tokens.append(tok.tolist())
        return Seq.feed(self, [0, len(self.fed)])


class LogitsDecoder(FakeDecoder):
    """FakeDecoder whose rows are logits made from each column's [slot, pos]."""

    def step_many(self, columns, while_waiting=None):
        import torch

        rows = super().step_many(columns, while_waiting)
        return np.stack([torch.randn(SettingsSeq.WIDTH, generator=torch.Generator().manual_seed(int(s) * 1000 + int(p)))
                         .numpy() for s, p in rows])


def test_sequences_sampled_together_get_the_tokens_they_sample_alone(monkeypatch):
    """feed_all samples the sequences of a step that share settings in one call per settings;
    each gets the tokens its own feed() gives (mixed settings, top-k, several rows per sample).
    A failing group call falls back to each sequence's feed(), and so does a sequence without
    draws taken ahead. A sequence's own error in advance() reaches its owner alone."""
    from wsvk.resident.batching import _Guarded
    from wsvk.resident.sampling import Settings

    kinds = [Settings(0.7, None, 0.5, 4), Settings(0.7, None, 0.5, 4), Settings(1.0, 5, 1.0, 1),
             Settings(0.7, None, 0.5, 4), Settings(1.0, 5, 1.0, 1), Settings(1.0, 5, 1.0, 1)]
    real, calls = Settings.tokens, []

    def counted(self, logits, q, generator=None):
        calls.append(len(logits))
        if fail_groups and len(logits) > 1:
            raise RuntimeError("injected")
        return real(self, logits, q, generator)

    monkeypatch.setattr(Settings, "tokens", counted)
    results = {}
    for mode in ("alone", "together", "group fails"):
        fail_groups = mode == "group fails"
        seqs = [SettingsSeq(n, i, st, bad=2 if i == 5 else None)
                for i, (n, st) in enumerate(zip((4, 6, 5, 3, 6, 6), kinds))]
        if mode == "alone":
            for s in seqs:
                s.batch_sample = lambda: None
        if mode == "group fails":
            seqs[0].draws.ahead = lambda: None  # never taken ahead: its feed() draws them
        calls.clear()
        errors = []
        DecodeLoop(LogitsDecoder(slots=6)).run([_Guarded(s, errors.append) for s in seqs])
        assert all(s.done for s in seqs[:5]) and not seqs[5].done
        assert [str(e) for e in errors] == ["bad sequence"]
        results[mode] = [s.tokens for s in seqs]
        if mode == "together":  # first step: one call for the three 4-row sequences, one for the other three
            assert calls[:2] == [3, 3] and set(calls) <= {1, 2, 3}
        elif mode == "alone":
            assert set(calls) == {1}
    assert results["together"] == results["alone"] == results["group fails"]
    assert [len(t) for t in results["alone"]] == [4, 6, 5, 3, 6, 2] and len(results["alone"][0][0]) == 4
    assert len({str(t) for t in results["alone"]}) == 6  # the sequences do differ


def test_a_lower_priority_number_joins_first():
    """A sequence submitted with priority 0 (a listener's first chunk) takes the next free slot
    ahead of sequences queued before it with the default priority."""
    dec = FakeDecoder(slots=1)
    loop = SharedLoop(dec)
    first, queued, urgent = Seq(2), [Seq(1), Seq(1)], Seq(1)
    order = []
    for s, name in ((queued[0], "q0"), (queued[1], "q1"), (urgent, "urgent")):
        s.start = (lambda name: lambda slot: (order.append(name), ([0], 0))[1])(name)
    errors = []
    t = hold_first_step(dec, loop, [first], errors)  # the one slot is taken
    loop.submit(queued[0])
    loop.submit(queued[1])
    loop.submit(urgent, priority=0)
    wait_queued(loop, 3)
    dec.gate.set()
    t.join(10)
    for _ in range(200):
        if all(s.done for s in queued):
            break
        threading.Event().wait(0.01)
    assert not errors and order == ["urgent", "q0", "q1"]


def test_a_queued_sequence_yields_to_newcomers_for_a_bounded_time(monkeypatch):
    """Priority is a head start in time, not a rank: a later chunk (priority 1) queued more than
    PRIORITY_WAIT seconds ago joins ahead of a first chunk (priority 0) submitted now, so a
    steady stream of new requests cannot starve a long text's later chunks."""
    from wsvk.resident import batching

    monkeypatch.setattr(batching, "PRIORITY_WAIT", 0.2)
    dec = FakeDecoder(slots=1)
    loop = SharedLoop(dec)
    first, old, fresh, newest = Seq(2), Seq(1), Seq(1), Seq(1)
    order = []
    for s, name in ((old, "old"), (fresh, "fresh"), (newest, "newest")):
        s.start = (lambda name: lambda slot: (order.append(name), ([0], 0))[1])(name)
    errors = []
    t = hold_first_step(dec, loop, [first], errors)  # the one slot is taken
    loop.submit(old)                   # due in 0.2 s
    threading.Event().wait(0.4)
    loop.submit(fresh, priority=0)     # due now: after old, which has waited its 0.2 s
    loop.submit(newest, priority=1)    # due in 0.2 s: after both
    wait_queued(loop, 3)
    dec.gate.set()
    t.join(10)
    for _ in range(200):
        if all(s.done for s in (old, fresh, newest)):
            break
        threading.Event().wait(0.01)
    assert not errors and order == ["old", "fresh", "newest"]
