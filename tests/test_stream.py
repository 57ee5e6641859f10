"""Pipeline.stream and its engine: blocks in order whose join equals generate(), windows of Vocos
that are exact, early exits that free the slots, the short first chunk."""

import threading
import time
import warnings

import numpy as np
import pytest

from conftest import rel_err
from wsvk.tts.textsplit import split_text, utf8_len

pytestmark = pytest.mark.usefixtures("f32_precision")

TEXT = "Hello there, this text has several sentences. Each of them is a chunk. And the last one ends it."


def test_stream_joins_to_generate(pipe):
    ref = pipe.generate(TEXT, seed=4)
    blocks = list(pipe.stream(TEXT, seed=4))
    assert len(pipe.last.chunks) >= 3 and len(blocks) > len(pipe.last.chunks)  # windows inside chunks
    got = np.concatenate(blocks)
    assert got.shape == ref.shape and rel_err(got, ref) < 1e-6
    assert np.abs(got - ref).max() < 1e-5  # sample by sample: no seam between windows or chunks


def test_streams_from_threads_share_steps_and_keep_their_audio(pipe):
    import threading

    texts = {1: TEXT, 2: "Another caller, another text.", 3: "A third one speaks here."}
    refs = {s: pipe.generate(t, seed=s) for s, t in texts.items()}
    got = {}

    def listen(seed):
        got[seed] = np.concatenate(list(pipe.stream(texts[seed], seed=seed)))

    threads = [threading.Thread(target=listen, args=(s,)) for s in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in texts:
        assert got[s].shape == refs[s].shape and rel_err(got[s], refs[s]) < 1e-6


def test_generate_shares_the_decoders_with_streams_in_flight(pipe):
    """One set of resident modules (weights, KV caches) serves generate() and the streams, and a
    generate() call made while a stream is in flight keeps its audio, as does the stream."""
    refs = {5: pipe.generate(TEXT, seed=5), 6: pipe.generate("A caller of generate, meanwhile.", seed=6)}
    it = pipe.stream(TEXT, seed=5)
    blocks = [next(it)]  # the stream is under way
    engine = pipe.engine()
    assert engine.gpu is not None and engine.gpu[:2] == (pipe.stages.resident["t2s"], pipe.stages.resident["s2a"])
    got6 = pipe.generate("A caller of generate, meanwhile.", seed=6)
    blocks += list(it)
    got5 = np.concatenate(blocks)
    for got, ref in ((got5, refs[5]), (got6, refs[6])):
        assert got.shape == ref.shape and rel_err(got, ref) < 1e-6


def test_later_chunks_start_once_the_first_has_audio_out(pipe, monkeypatch):
    """Until the first chunk's first block is out, its S2A steps have the GPU to themselves: the
    later chunks' T2S sequences are submitted only then (before, each S2A step took turns with a
    T2S step). The audio is unchanged."""
    from wsvk.tts.engine import Request

    ref = pipe.generate(TEXT, seed=9)
    events = []
    t2s = pipe.stages.gpu_runner("t2s")
    real_submit, real_deliver = t2s.submit, Request.deliver
    monkeypatch.setattr(t2s, "submit", lambda seq, on_error=None, **kw: (events.append("t2s"),
                                                                          real_submit(seq, on_error, **kw))[1])

    def deliver(self, i, block, done, gpu=True):
        if len(block):
            events.append(f"audio {i}")
        return real_deliver(self, i, block, done, gpu)

    monkeypatch.setattr(Request, "deliver", deliver)
    got = np.concatenate(list(pipe.stream(TEXT, seed=9)))
    n = len(pipe.last.chunks)
    assert n >= 3 and events.count("t2s") == n and events[0] == "t2s"
    assert events.index("t2s", 1) > events.index("audio 0")  # the second chunk waited for the first's audio
    assert got.shape == ref.shape and rel_err(got, ref) < 1e-6


@pytest.mark.parametrize("method", ["_t2s_sequence", "_t2s_done"])
def test_a_later_chunk_that_fails_on_the_gpu_is_made_on_the_cpu(pipe, monkeypatch, method):
    """The later chunks are submitted from whichever thread delivered the first audio; one whose
    sequence cannot be made there (_t2s_sequence), or whose T2S end fails on the decoder's loop
    thread (_t2s_done), goes to the CPU, even with warnings as errors: the warning raised in the
    loop's error handler must not end the loop (and send every stream to the CPU). The stream
    ends whole and the engine stays on the GPU."""
    from wsvk.tts.engine import Engine

    ref = pipe.generate(TEXT, seed=10)
    real = getattr(Engine, method)

    def flaky(self, gpu, req, i, *rest):
        if i == 1:
            raise ValueError("cannot make this sequence")
        return real(self, gpu, req, i, *rest)

    monkeypatch.setattr(Engine, method, flaky)
    blocks = []
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="wsvk:")
        listener = threading.Thread(target=lambda: blocks.extend(pipe.stream(TEXT, seed=10)), daemon=True)
        listener.start()
        listener.join(300)
    assert not listener.is_alive(), "the stream hung"
    got = np.concatenate(blocks)
    assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-4
    assert any("cannot make this sequence" in f for f in pipe.engine().faults) and pipe.engine().gpu is not None


def fail_vocos_call(monkeypatch, n: int) -> list:
    """The engine's n-th Vocos window raises (a bug in the GPU path); returns the list of calls."""
    from wsvk.tts.engine import Engine

    real, calls = Engine._vocos, []

    def flaky(vocos, codes):
        calls.append(1)
        if len(calls) == n:
            raise ValueError("a bug in a callback")
        return real(vocos, codes)

    monkeypatch.setattr(Engine, "_vocos", staticmethod(flaky))
    return calls


def test_an_error_in_one_chunk_redoes_that_chunk_on_the_cpu(pipe, monkeypatch):
    """A bug in one chunk's GPU path (here its first Vocos window) sends that chunk to the CPU;
    the stream's audio stays whole and the engine stays on the GPU."""
    ref = pipe.generate(TEXT, seed=7)
    engine = pipe.engine()
    fail_vocos_call(monkeypatch, 1)
    with pytest.warns(RuntimeWarning, match="that chunk is redone on the CPU"):
        got = np.concatenate(list(pipe.stream(TEXT, seed=7)))
    assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-4  # one chunk from the CPU backend
    assert engine.gpu is not None and any("a bug in a callback" in f for f in engine.faults)


def test_the_vocos_thread_outlives_a_failure_of_its_own(pipe, monkeypatch):
    """Even when handling a window's error fails (here a warnings filter turns the warning into an
    error), the Vocos thread goes on: that chunk is redone on the CPU and the stream ends whole."""
    ref = pipe.generate(TEXT, seed=8)
    calls = fail_vocos_call(monkeypatch, 2)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="wsvk:")
        got = np.concatenate(list(pipe.stream(TEXT, seed=8)))
    assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-4 and len(calls) > 2
    assert any(t.name == "wsvk-vocos" for t in threading.enumerate())


def test_closing_a_stream_early_frees_its_slots(pipe):
    it = pipe.stream(TEXT * 3, seed=1)
    next(it)
    it.close()  # the listener went away
    assert [r for r in pipe.engine().requests if not r.cancelled and not all(r.done)] == []
    assert np.concatenate(list(pipe.stream("Still served.", seed=2))).size > 0
    deadline = time.monotonic() + 10  # the engine lets go of ended requests once their last chunk's hook ran
    while pipe.engine().requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pipe.engine().requests == []


def test_a_stream_dropped_before_its_first_block_is_cancelled(pipe):
    import gc

    for end in ("close", "with", "drop"):
        it = pipe.stream(TEXT * 3, seed=1)
        req = it.request
        if end == "close":
            it.close()
        elif end == "with":
            with it:
                pass
        else:
            del it
            gc.collect()
        assert req.cancelled, end
    assert [r for r in pipe.engine().requests if not r.cancelled and not all(r.done)] == []


def test_a_stream_finalized_under_its_own_locks_does_not_deadlock(pipe):
    """The collector may run a dropped stream's finalizer on an engine thread inside deliver(),
    which holds the request's lock and, putting a block, its queue's: the finalizer takes no
    lock (a plain Lock is not re-entrant: that thread, often the one Vocos thread, would hang)."""
    holder = [pipe.stream(TEXT * 3, seed=1)]
    req = holder[0].request

    def drop_under_the_locks():
        req._lock.acquire()
        req.queue.mutex.acquire()
        holder.clear()  # the last reference: the finalizer runs here, on this thread
        req.queue.mutex.release()
        req._lock.release()

    t = threading.Thread(target=drop_under_the_locks, daemon=True)
    t.start()
    t.join(20)
    hung = t.is_alive()
    if hung:  # let it go on (any thread may release a Lock), so that the fixture's teardown ends
        req.queue.mutex.release()
        req._lock.release()
    assert not hung, "the finalizer waited for a lock its own thread holds"
    assert req.cancelled and all(seq.cancelled for seq in req.sequences)
    assert np.concatenate(list(pipe.stream("Still served.", seed=2))).size > 0


def test_bad_input_is_raised_before_any_work(pipe):
    from wsvk.errors import InputError

    with pytest.raises(InputError, match="unknown language"):
        pipe.stream("hi", lang="xx")


def test_the_first_chunk_is_short_when_the_text_is_long():
    text = ("Good morning, everyone, and welcome. Today we talk about the weather, the trains and the "
            "price of bread, at some length, because there is a lot to say about all three of them.")
    chunks = split_text(text, 549, first_bytes=80)
    assert len(chunks) == 2 and utf8_len(chunks[0]) <= 80 and chunks[0][-1] in ".,"  # ends at a clause
    assert " ".join(chunks) == text
    assert split_text("Short text.", 549, first_bytes=80) == ["Short text."]
    words = "word " * 40  # no clause marks: cut at a word
    first = split_text(words, 549, first_bytes=30)
    assert utf8_len(first[0]) <= 30 and " ".join(first).split() == words.split()


def test_vocos_blocks_never_outgrow_the_audio_already_sent():
    """A chunk's blocks: 12 frames, then at most as many frames as were already sent, up to 24
    (a block takes as many S2A steps as it has frames; the listener plays what came before);
    each window carries the context that makes it exact, and the blocks tile the chunk."""
    import torch

    from wsvk.tts.engine import VocosStream

    class Frames:
        frames_done = 0

        def frames(self, a, b):
            return torch.arange(a, b).repeat(1, 4, 1)

    seq, hop, ctx = Frames(), 320, 32
    stream, blocks = VocosStream(ctx, hop, 12, 24), []
    for have in range(1, 200):
        seq.frames_done = have
        if (w := stream.window(seq, final=have == 199)) is not None:
            codes, lo, hi = w
            a = int(codes[0, 0, 0])  # the window's first frame
            assert a == max(0, (a * hop + lo) // hop - ctx) and codes.shape[-1] * hop >= hi  # context kept
            blocks.append(((a * hop + lo) // hop, (a * hop + hi) // hop))
    sizes = [b - a for a, b in blocks]
    assert sizes[:5] == [12, 12, 24, 24, 24] and max(sizes[:-1]) == 24  # the last: what is left
    assert blocks[0][0] == 0 and blocks[-1][1] == 199 and all(p[1] == q[0] for p, q in zip(blocks, blocks[1:]))


def test_a_long_text_leaves_slots_for_the_requests_after_it():
    """The engine's policy, with the decoders replaced by a record of what it starts: a request's
    first chunk at once, its later ones after its first audio and at most a fair share at a
    time, one slot kept for a newcomer; on the CPU, every request's first chunks first."""
    from wsvk.tts.engine import Engine

    engine = Engine(pipe=None)
    engine.thread, engine.gpu, engine.slots = object(), ("t2s", "s2a", "vocos"), 4  # as if started
    started = []
    engine._submit_t2s = lambda req, i: started.append(("A" if req.chunks[0] == "a" else "B", i))
    a = engine.submit(list("abcdefgh"))
    assert started == [("A", 0)]
    a.deliver(0, np.ones(10, np.float32), False)  # A's first audio: two more (3 of 4 slots)
    assert started == [("A", 0), ("A", 1), ("A", 2)]
    b = engine.submit(list("xyz"))
    assert started[-1] == ("B", 0)  # the kept slot: at once
    a.deliver(0, np.ones(10, np.float32), True)  # A's share is now 2, and it has 2 in flight
    assert started[-1] == ("B", 0)
    b.deliver(0, np.ones(10, np.float32), False)
    assert started[-1] == ("B", 1)
    b.cancel()  # B leaves: A may use three slots again
    assert started[-2:] == [("B", 1), ("A", 3)] and a.in_flight() == 3

    cpu = Engine(pipe=None)
    cpu.thread = object()  # no GPU path: every chunk is queued for the CPU thread at once
    cpu.submit(list("abcd"))
    cpu.submit(list("xy"))
    order = [cpu.cpu_q.get_nowait()[2][1] for _ in range(6)]
    assert order == [0, 0, 1, 1, 2, 3]


def test_a_chunk_redone_on_the_cpu_keeps_the_gpus_semantic_tokens(pipe, monkeypatch):
    """After a failure, a chunk whose T2S ended on the GPU goes on from those tokens (at f16 the
    CPU's would be other words than the audio already sent)."""
    ref = pipe.generate("Hello there.", seed=3)
    chunk = pipe.prepare("Hello there.", seed=3)[0]
    chunk.stoks = pipe.last.stoks[0]
    monkeypatch.setattr(pipe.t2s, "generate", lambda *a, **k: pytest.fail("T2S ran again"))
    audio = pipe.engine()._cpu_chunk(chunk)
    assert audio.shape == ref.shape and np.abs(audio - ref).max() < 1e-4


def test_a_cancelled_request_stops_its_cpu_chunk_within_a_step(pipe):
    """On the CPU path (CPU backend, or after a GPU failure) a listener who leaves stops the chunk
    being made at its next decode step, not at its end (seconds of CPU time with real models)."""
    from wsvk.tts.engine import Request, _Cancelled

    pipe.generate(TEXT, seed=1)
    made = pipe.last.stoks[0]
    chunks = pipe.prepare(TEXT, seed=1)
    req = Request(chunks)
    req.cancel()
    for stoks in (None, made):  # stopped in T2S; in S2A
        chunks[0].stoks = stoks
        with pytest.raises(_Cancelled):
            pipe.engine()._cpu_chunk(chunks[0], req)


EXIT_MID_STREAM = """
import sys
from wsvk.tts import load_pipeline
stream = load_pipeline(random_weights="tiny").stream("Hello there, this text has several sentences. " * 8, seed=1)
next(stream)
sys.exit(0)  # the stream's later chunks are still decoding
"""


@pytest.mark.slow  # ~1 min; not limit-specific, so CI's WSVK_LIMITS=default pass skips it
def test_a_process_that_exits_mid_stream_exits_cleanly():
    """Exiting with a stream in flight waits for the engine's threads (an atexit hook): ending
    while one is inside torch or wgpu aborted the process about one time in two (SIGABRT,
    "terminate called without an active exception"). Three runs."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "WSVK_BACKEND": "wgpu", "XDG_RUNTIME_DIR": "/tmp"}
    for _ in range(3):
        r = subprocess.run([sys.executable, "-c", EXIT_MID_STREAM], capture_output=True, text=True, env=env,
                           timeout=300)
        assert r.returncode == 0 and "terminate called" not in r.stderr, (r.returncode, r.stderr[-2000:])
