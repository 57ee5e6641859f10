"""The server on a loopback port, driven by the real `openai` client and httpx: every format decoded
back and equal to Pipeline.generate for the same seed, streaming, SSE, concurrent requests, every
bad request, backpressure, disconnects, memory over 100 requests and a GPU fault mid-batch."""

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

import tiny_models as tm
from conftest import REQUIRE, rss_mb
from serve_helpers import Server, pcm_of, voice_server
from wsvk.serve.app import Options

pytestmark = pytest.mark.usefixtures("f32_precision")

TEXT = "Hello there, friend."
LONG = "This request goes on for a while. It has several sentences, each a chunk. The last one ends it here."


@pytest.fixture(scope="module")
def server(pipe, files):
    from wsvk.serve.cli import load_voices, voice_files

    s = Server(pipe, voices=load_voices(pipe, voice_files(str(files["voices"]))), slots=4, queue=8)
    yield s
    s.close()


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float64) / 32767, 24000
    audio, rate = sf.read(io.BytesIO(data), dtype="float64")
    return audio, rate


@pytest.mark.parametrize("fmt", ["wav", "pcm", "flac", "mp3", "opus"])
def test_every_format_through_the_openai_client(server, pipe, fmt):
    ref = pipe.generate(TEXT, seed=3)
    r = server.client().audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format=fmt,
                                            extra_body={"seed": 3})
    audio, rate = decode(r.content, fmt)
    assert rate == 24000 and audio.ndim == 1
    if fmt in ("wav", "pcm", "flac"):  # lossless: the same samples, to 16 bits
        assert audio.size == ref.size and np.abs(audio - pcm_of(ref)).max() < 1.5 / 32767
    else:  # lossy codecs pad and change the samples: the length stays within a codec frame or two,
        # and the waveform (found at the encoder's delay) is this seed's, not another's
        assert abs(audio.size - ref.size) < 4096, (audio.size, ref.size)
        right, wrong = best_correlation(audio, ref), best_correlation(audio, pipe.generate(TEXT, seed=4))
        assert right > {"mp3": 0.8, "opus": 0.5}[fmt] and right > wrong + 0.2, (right, wrong)  # 0.94, 0.70 seen


def best_correlation(x, y, lags=4096) -> float:
    """The normalized correlation of y with x delayed by the lag (0 .. lags) that fits best."""
    n = min(x.size - lags, y.size)
    y = y[:n] / np.linalg.norm(y[:n])
    return max(float(np.dot(x[lag:lag + n], y) / np.linalg.norm(x[lag:lag + n])) for lag in range(lags))


@pytest.mark.parametrize("fmt", ["pcm", "mp3"])
def test_the_response_streams_before_the_audio_is_done(server, fmt, monkeypatch):
    """Through the openai client's streaming response: the first bytes arrive before the engine
    has made the request's last audio, in several pieces; raw samples, and mp3 (OpenAI's default
    format) too."""
    from wsvk.tts.engine import Request

    ended, deliver = [], Request.deliver

    def timed(self, i, block, done, gpu=True):  # when the request's last chunk ends
        deliver(self, i, block, done, gpu)
        if all(self.done) and not ended:
            ended.append(time.perf_counter())

    monkeypatch.setattr(Request, "deliver", timed)
    pieces, first = [], None
    with server.client().audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=LONG, response_format=fmt, extra_body={"seed": 1}) as r:
        assert r.headers["content-type"] == {"pcm": "audio/pcm", "mp3": "audio/mpeg"}[fmt]
        for piece in r.iter_bytes():
            first = first or time.perf_counter()
            pieces.append(piece)
    assert len(ended) == 1 and first < ended[0] and len(pieces) >= 2, (first, ended, len(pieces))


def test_sse_events(server):
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", timeout=300,
                      json={"input": TEXT, "response_format": "pcm", "stream_format": "sse", "seed": 3}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done" and len(events) >= 2
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    plain = httpx.post(f"{server.url}/v1/audio/speech", timeout=300,
                       json={"input": TEXT, "response_format": "pcm", "seed": 3}).content
    assert pcm == plain
    usage = events[-1]["usage"]  # the model's tokens: text bytes in, acoustic frames (320 samples each) out
    frames = len(pcm) // 2 // 320
    assert usage == {"input_tokens": len(TEXT.encode()), "output_tokens": frames, "total_tokens": len(TEXT.encode()) + frames}


def test_the_official_node_sdk(server, pipe):
    """OpenAI's Node SDK (tests/openai_node, from its lock) with a dated model of its own types,
    the voices marin and cedar, SSE, and an unknown voice as the SDK's error class. A failure under
    WSVK_REQUIRE_ADAPTER (CI, where scripts/ensure_naga.sh installs it), a skip elsewhere."""
    script = Path(__file__).with_name("openai_node") / "speech.mjs"
    if not shutil.which("node") or not (script.parent / "node_modules" / "openai").is_dir():
        msg = "node or tests/openai_node/node_modules missing: run scripts/ensure_naga.sh"
        if REQUIRE:
            pytest.fail(msg)
        pytest.skip(msg)
    proc = subprocess.run(["node", str(script), f"{server.url}/v1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    audio, rate = sf.read(io.BytesIO(base64.b64decode(out["wav"])), dtype="float64")
    ref = pipe.generate(TEXT, seed=3)
    assert rate == 24000 and audio.size == ref.size and np.abs(audio - pcm_of(ref)).max() < 1.5 / 32767
    assert "gpt-4o-mini-tts" in out["models"]
    assert out["sse"][-1] == "speech.audio.done" and set(out["sse"][:-1]) == {"speech.audio.delta"}
    assert np.array_equal(np.frombuffer(base64.b64decode(out["pcm"]), "<i2"), (pcm_of(ref) * 32767).round())
    assert out["usage"]["output_tokens"] == ref.size // 320 and out["usage"]["input_tokens"] == len(TEXT)
    assert out["error"]["status"] == 400 and out["error"]["name"] == "BadRequestError"
    assert "unknown voice 'nobody'" in out["error"]["message"] and "marin" in out["error"]["message"]


def test_the_python_sdk_with_current_names(server, pipe):
    """The official Python SDK with a dated snapshot and a voice its current types list."""
    r = server.client().audio.speech.create(model="gpt-4o-mini-tts-2025-12-15", voice="marin", input=TEXT,
                                            response_format="wav", extra_body={"seed": 3})
    audio, _ = decode(r.content, "wav")
    ref = pipe.generate(TEXT, seed=3)
    assert audio.size == ref.size and np.abs(audio - pcm_of(ref)).max() < 1.5 / 32767


def test_four_concurrent_requests_equal_their_solo_outputs(server, pipe):
    jobs = [(TEXT, 1, "default", "en"), (LONG, 2, "anna", "en"), ("Cześć, jak się masz?", 3, "default", "pl"),
            ("Short.", 4, "anna", "en")]
    got = [None] * 4

    def call(i):
        text, seed, voice, lang = jobs[i]
        got[i] = server.client().audio.speech.create(model="wsvk", voice=voice, input=text, response_format="pcm",
                                                     extra_body={"seed": seed, "lang": lang}).content

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (text, seed, voice, lang), data in zip(jobs, got):
        ref = pipe.generate(text, speaker=server.opts.voices[voice], lang=lang, seed=seed)
        audio = np.frombuffer(data, "<i2").astype(np.float64) / 32767
        assert audio.size == ref.size and np.abs(audio - pcm_of(ref)).max() < 1.5 / 32767, text


def test_lists(server):
    assert httpx.get(f"{server.url}/v1/audio/voices").json() == {"voices": ["default", "anna"]}
    models = server.client().models.list()
    assert {m.id for m in models.data} >= {"wsvk", "tts-1"}
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["backend"] == "wgpu" and health["path"] == "gpu"
    assert health["random_weights"] is None
    r = httpx.get(f"{server.url}/v1/audio/speech/place/nobody")
    assert r.status_code == 404 and "X-Client-Request-Id 'nobody'" in r.json()["error"]["message"]
    icon = httpx.get(f"{server.url}/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml" and b"<svg" in icon.content


def test_voice_names():
    """A --voices file may take an OpenAI voice name (then it is that voice, not the default);
    OpenAI's other names mean the default; OpenAI's voice object {"id": ...} names a voice too."""
    from wsvk.serve.app import check_request

    opts = Options(voices={"default": 0, "alloy": 1, "anna": 2})
    for voice, want in (("alloy", "alloy"), ("nova", "default"), ("marin", "default"), ("cedar", "default"),
                        ({"id": "anna"}, "anna"), ("anna", "anna")):
        assert check_request({"input": "hi", "voice": voice}, opts)["voice"] == want, voice


@pytest.mark.parametrize("model", ["wsvk", "tts-1", "tts-1-hd", "gpt-4o-mini-tts", "tts-1-1106", "tts-1-hd-1106",
                                   "gpt-4o-mini-tts-2025-03-20", "gpt-4o-mini-tts-2025-12-15"])
def test_model_names_and_dated_snapshots(model):
    from wsvk.serve.app import check_request

    assert check_request({"input": "hi", "model": model}, Options(voices={"default": 0}))["text"] == "hi"


def test_voices_folder(pipe, tmp_path):
    """One voice per audio file (.opus too), each embedded as `--speaker` would be; a stem given by
    two files, or the name "default", is an error naming the files, not a voice silently lost."""
    from wsvk.errors import InputError
    from wsvk.serve.cli import load_voices, voice_files
    from wsvk.tts.audio import write_file

    voice = tm.write_voice(tmp_path / "anna.wav", seed=2)
    mono = sf.read(str(voice), dtype="float32")[0].mean(axis=1)
    write_file(tmp_path / "ola.opus", mono, 24000)
    (tmp_path / "notes.txt").write_text("not a voice")
    voices = load_voices(pipe, voice_files(str(tmp_path)))
    assert sorted(voices) == ["anna", "default", "ola"]
    assert np.array_equal(np.asarray(voices["anna"]), np.asarray(pipe.speaker_embedding(str(voice))))
    write_file(tmp_path / "anna.flac", mono, 24000)
    with pytest.raises(InputError, match="two files give the voice 'anna': anna.flac and anna.wav"):
        voice_files(str(tmp_path))
    (tmp_path / "anna.flac").unlink()
    write_file(tmp_path / "default.wav", mono, 24000)
    with pytest.raises(InputError, match="'default' is whisperspeech's own voice"):
        voice_files(str(tmp_path))


def test_an_added_voice_is_saved_listed_and_spoken_at_once(pipe, tmp_path):
    """POST /v1/audio/voices/{name} with an audio file as the body (over the speech route's 64 KiB
    cap, under its own): written into the folder under its container's extension, listed, and
    speech with it equals generate() with that file as the speaker, without a restart."""
    from wsvk.serve.cli import voice_files
    from wsvk.tts.audio import write_file

    folder = tmp_path / "voices"
    folder.mkdir()
    tm.write_voice(folder / "anna.wav", seed=2)
    s = voice_server(pipe, folder)
    try:
        assert httpx.get(f"{s.url}/health").json()["voice_upload"] is True
        data = tm.write_voice(tmp_path / "upload.wav", seed=5).read_bytes()
        assert len(data) > s.opts.max_body
        r = httpx.post(f"{s.url}/v1/audio/voices/bob", content=data, timeout=300)
        assert r.status_code == 201, r.text
        assert r.json()["id"] == "bob" and r.json()["object"] == "audio.voice"
        assert (folder / "bob.wav").read_bytes() == data
        mono = sf.read(str(folder / "anna.wav"), dtype="float32")[0].mean(axis=1)
        write_file(tmp_path / "ola.opus", mono, 24000)  # Ogg: Vorbis or Opus, told apart by its codec
        r = httpx.post(f"{s.url}/v1/audio/voices/ola", content=(tmp_path / "ola.opus").read_bytes(), timeout=300)
        assert r.status_code == 201, r.text
        assert httpx.get(f"{s.url}/v1/audio/voices").json() == {"voices": ["default", "anna", "bob", "ola"]}
        assert sorted(f.name for f in folder.iterdir()) == ["anna.wav", "bob.wav", "ola.opus"]  # no temporary left
        assert sorted(voice_files(str(folder))) == ["anna", "bob", "ola"]  # and the next start loads them
        got = s.client().audio.speech.create(model="tts-1", voice="bob", input=TEXT, response_format="pcm",
                                             extra_body={"seed": 3}).content
        audio = np.frombuffer(got, "<i2").astype(np.float64) / 32767
        ref = pipe.generate(TEXT, speaker=str(folder / "bob.wav"), seed=3)
        assert audio.size == ref.size and np.abs(audio - pcm_of(ref)).max() < 1.5 / 32767
        other = pipe.generate(TEXT, speaker=str(folder / "anna.wav"), seed=3)  # the voice mattered
        assert other.size != ref.size or np.abs(other - ref).max() > 0.01
    finally:
        s.close()


def test_adding_a_voice_is_refused_clearly(pipe, tmp_path):
    """Off unless --voices DIR and --voice-upload (403 naming both); with them: the API key, its
    own size cap (Content-Length or a chunked body), a safe new name, audio that is readable, in a
    format --voices loads and not silent. A refused voice leaves the folder and the list as they were."""
    folder = tmp_path / "voices"
    folder.mkdir()
    tm.write_voice(folder / "anna.wav", seed=2)
    voice = tm.write_voice(tmp_path / "upload.wav", seed=5).read_bytes()
    for options in ({"voice_upload": False}, {"voice_dir": None}):
        s = voice_server(pipe, folder, **options)
        try:
            assert httpx.get(f"{s.url}/health").json()["voice_upload"] is False
            r = httpx.post(f"{s.url}/v1/audio/voices/bob", content=voice, timeout=60)
            err = r.json()["error"]
            assert r.status_code == 403 and err["type"] == "permission_error", r.text
            assert "--voices DIR --voice-upload" in err["message"] and err["code"] == "voice_upload_disabled"
        finally:
            s.close()
    assert Options().max_voice_bytes == 10 << 20  # the documented cap
    s = voice_server(pipe, folder, api_key="sesame", max_voice_bytes=len(voice) - 1)
    key = {"Authorization": "Bearer sesame"}
    silent = io.BytesIO()
    sf.write(silent, np.zeros(24000, np.float32), 24000, format="WAV")
    aiff = io.BytesIO()
    sf.write(aiff, sf.read(io.BytesIO(voice))[0], 44100, format="AIFF")
    (folder / "carl.flac").write_bytes(b"")  # put there after the start: its name is taken too

    def chunked():
        yield voice[:1000]
        yield voice[1000:]

    try:
        assert httpx.post(f"{s.url}/v1/audio/voices/bob", content=voice[:1000], timeout=60).status_code == 401
        for name, body, status, param, words in (
                ("bob", voice, 413, None, f"more than the {len(voice) - 1} allowed"),
                ("bob", chunked(), 413, None, f"over the {len(voice) - 1} bytes allowed"),
                (".hidden", voice[:1000], 400, "name", "not a safe file name"),
                ("con", voice[:1000], 400, "name", "not a safe file name"),
                ("a b", voice[:1000], 400, "name", "not a safe file name"),
                ("x" * 201, voice[:1000], 400, "name", "not a safe file name"),
                ("Anna", voice[:1000], 400, "name", "voice name 'Anna' is taken"),
                ("alloy", voice[:1000], 400, "name", "is taken"),
                ("default", voice[:1000], 400, "name", "is taken"),
                ("carl", voice[:1000], 400, "name", "is taken"),
                ("bob", b"", 400, None, "the request body is empty"),
                ("bob", b"hello, not audio" * 10, 400, None, "not an audio file soundfile reads"),
                ("bob", aiff.getvalue()[:len(voice) - 2], 400, None, "the audio is AIFF"),
                ("bob", silent.getvalue(), 400, None, "the audio is silent")):
            r = httpx.post(f"{s.url}/v1/audio/voices/{name}", content=body, headers=key, timeout=60)
            err = r.json()["error"]
            assert r.status_code == status and err["param"] == param and words in err["message"], (name, r.text)
        assert httpx.get(f"{s.url}/v1/audio/voices", headers=key).json() == {"voices": ["default", "anna"]}
        assert sorted(f.name for f in folder.iterdir()) == ["anna.wav", "carl.flac"]
    finally:
        s.close()


@pytest.mark.parametrize("body,status,param,words", [
    ({"input": ""}, 400, "input", "non-empty"),
    ({"input": "x" * 4097}, 400, "input", "4096"),
    ({"input": "hi", "voice": "nobody"}, 400, "voice", "unknown voice 'nobody'; valid: default, anna, and OpenAI's "
                                                       "names alloy, ash,"),
    ({"input": "hi", "response_format": "ogg"}, 400, "response_format", "unknown response_format"),
    ({"input": "hi", "response_format": "aac"}, 400, "response_format", "aac is not supported"),
    ({"input": "hi", "speed": 5}, 400, "speed", "0.25 to 4.0"),
    ({"input": "hi", "speed": "fast"}, 400, "speed", "0.25 to 4.0"),
    ({"input": "hi", "lang": "xx"}, 400, "lang", "unknown language 'xx'"),
    ({"input": "hi", "seed": -1}, 400, "seed", "from 0 to 4294967295"),
    ({"input": "hi", "seed": 2**32}, 400, "seed", "from 0 to 4294967295"),
    ({"input": "hi", "seed": "7"}, 400, "seed", "from 0 to 4294967295"),
    ({"input": "hi", "model": "gpt-5"}, 400, "model", "unknown model"),
    ({"input": "hi", "model": "tts-1-latest"}, 400, "model", "unknown model"),
    ({"input": "hi", "model": "gpt-4o-mini-tts-"}, 400, "model", "unknown model"),
    ({"input": "hi", "stream_format": "chunks"}, 400, "stream_format", "audio or sse"),
    ({"input": "hi", "voice": ["anna"]}, 400, "voice", "voice must be a voice name"),
    ({"input": "hi", "voice": {"id": 3}}, 400, "voice", "voice must be a voice name"),
])
def test_bad_requests(server, body, status, param, words):
    r = httpx.post(f"{server.url}/v1/audio/speech", json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err["message"] and err["param"] == param and err["type"] == "invalid_request_error"


def test_bad_json_and_a_body_too_large(server, caplog):
    caplog.set_level("INFO", logger="wsvk.serve")
    for method, path, status in (("GET", "/v1/nothing", 404), ("GET", "/v1/audio/speech", 405)):
        r = httpx.request(method, f"{server.url}{path}", timeout=60)  # OpenAI's error shape there too
        assert r.status_code == status and r.json()["error"]["type"] == "invalid_request_error", r.text
    for bad in (b"{not json", b"[" * 60000):  # nested past Python's recursion limit: still a 400
        r = httpx.post(f"{server.url}/v1/audio/speech", content=bad, timeout=60)
        assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/v1/audio/speech", content=b" " * 70000, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    lines = [r.getMessage() for r in caplog.records if r.name == "wsvk.serve"]  # one per refused request
    for want, n in (("GET /v1/nothing: 404", 1), ("GET /v1/audio/speech: 405", 1),
                    ("POST /v1/audio/speech: 400 the request body", 2), ("POST /v1/audio/speech: 413", 1)):
        assert sum(line.startswith(want) for line in lines) == n, (want, lines)


def test_api_key(pipe):
    s = Server(pipe, api_key="sesame", slots=2, queue=2)
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").audio.speech.create(model="tts-1", voice="alloy", input="hi")
        r = httpx.get(f"{s.url}/v1/models")
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert s.client("sesame").audio.speech.create(model="tts-1", voice="alloy", input="hi",
                                                      response_format="wav").content[:4] == b"RIFF"
        assert httpx.get(f"{s.url}/health").status_code == 200  # open: no key needed
    finally:
        s.close()


def test_backpressure_429_and_a_disconnect_frees_the_slot(pipe, monkeypatch):
    engine, jobs = pipe.engine(), []
    submit = engine.submit
    monkeypatch.setattr(engine, "submit", lambda chunks: jobs.append(submit(chunks)) or jobs[-1])
    s = Server(pipe, slots=1, queue=0)
    try:
        with httpx.stream("POST", f"{s.url}/v1/audio/speech", timeout=300,
                          json={"input": LONG * 20, "response_format": "pcm"}) as r:
            pieces = r.iter_raw()  # kept: a dropped iterator closes the stream (a disconnect)
            next(pieces)  # streaming: the one slot is taken
            busy = httpx.post(f"{s.url}/v1/audio/speech", json={"input": "hi"}, timeout=60)
            assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
            assert busy.json()["error"]["type"] == "rate_limit_error"
        # the client went away mid-stream: its request leaves at once (its place in the server and
        # its sequences in the decoders' slots: their loops go idle) and the next one is served
        deadline = time.time() + 30
        loops = [pipe.stages.gpu_runner(stage).loop for stage in ("t2s", "s2a")]
        while httpx.get(f"{s.url}/health").json()["active"] or any(loop.busy() for loop in loops):
            assert time.time() < deadline, "a disconnected request kept its slot"
            time.sleep(0.1)
        job = jobs[0]
        assert job.cancelled and job.sequences and all(seq.cancelled for seq in job.sequences)
        assert job.started < len(job.chunks)  # its later chunks never started
        assert httpx.post(f"{s.url}/v1/audio/speech", json={"input": "hi", "response_format": "wav"},
                          timeout=300).status_code == 200
    finally:
        s.close()


def test_a_client_that_leaves_before_the_first_byte_gives_up_its_place(pipe, monkeypatch):
    """A request still waiting for its first audio when its client disconnects (a timeout in the
    queue) leaves at once: its place and its decoder work are freed, without waiting for audio."""
    from wsvk.tts.engine import Request

    s = Server(pipe, slots=1, queue=1)
    waiting = []
    try:
        def never(chunks):  # a request whose audio never comes (as if queued behind long ones)
            waiting.append(Request(chunks))
            return waiting[-1]

        monkeypatch.setattr(pipe.engine(), "submit", never)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{s.url}/v1/audio/speech", json={"input": "hi"}, timeout=httpx.Timeout(60, read=1.0))
        deadline = time.time() + 10
        while httpx.get(f"{s.url}/health").json()["active"]:
            assert time.time() < deadline, "a client that left kept its place"
            time.sleep(0.05)
        assert len(waiting) == 1 and waiting[0].cancelled
    finally:
        s.close()


def test_a_failed_synthesis_is_a_clean_500_or_an_sse_error_event(pipe, monkeypatch):
    """Before the first byte: a 500 in OpenAI's shape. After it, an SSE stream ends with an error
    event (an audio stream can only be cut short)."""
    from wsvk.tts.engine import Request

    s = Server(pipe, slots=2, queue=2)
    try:
        def failing(chunks, after_a_block=False):
            req = Request(chunks)
            if after_a_block:
                req.deliver(0, np.full(2400, 0.1, np.float32), False)
            req.fail(RuntimeError("the vocoder exploded"))
            return req

        monkeypatch.setattr(pipe.engine(), "submit", failing)
        r = httpx.post(f"{s.url}/v1/audio/speech", json={"input": "hi"}, timeout=60)
        assert r.status_code == 500 and "vocoder exploded" in r.json()["error"]["message"]
        assert httpx.get(f"{s.url}/health").json()["active"] == 0

        def broken(*args, **kwargs):  # a bug of the server's own, outside synthesis: OpenAI's shape still
            raise KeyError("a slip")

        with monkeypatch.context() as m:
            m.setattr(pipe, "prepare", broken)
            r = httpx.post(f"{s.url}/v1/audio/speech", json={"input": "hi"}, timeout=60)
        err = r.json()["error"]
        assert r.status_code == 500 and err["type"] == "server_error" and "KeyError" in err["message"], r.text
        assert httpx.get(f"{s.url}/health").status_code == 200  # and it serves on

        monkeypatch.setattr(pipe.engine(), "submit", lambda chunks: failing(chunks, after_a_block=True))
        r = httpx.post(f"{s.url}/v1/audio/speech", json={"input": "hi", "stream_format": "sse",
                                                         "response_format": "pcm"}, timeout=60)
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
        assert r.status_code == 200 and [e["type"] for e in events] == ["speech.audio.delta", "error"]
        assert "vocoder exploded" in events[1]["error"]["message"] and events[1]["error"]["type"] == "server_error"
    finally:
        s.close()


def test_gpu_fault_mid_batch_gives_every_request_complete_audio(files, rt, monkeypatch):
    """A lost device while 3 requests decode together: each still gets all its audio, equal to
    the CPU backend's for its seed (one warning; the engine goes on on the CPU)."""
    from wsvk.tts import load_pipeline

    def make(backend):
        monkeypatch.setenv("WSVK_BACKEND", backend)
        return load_pipeline(t2s=str(files["t2s"]), s2a=str(files["s2a"]), vocoder=str(files["vocoder"]),
                             speaker_model=str(files["speaker_model"]), slots=3)

    texts = [TEXT, LONG, "Short one here."]
    cpu = make("cpu")
    refs = [cpu.generate(t, seed=i) for i, t in enumerate(texts)]
    gpu = make("wgpu")
    s = Server(gpu, slots=3, queue=3)
    got = [None] * 3
    try:
        def call(i):
            got[i] = httpx.post(f"{s.url}/v1/audio/speech", timeout=300,
                                json={"input": texts[i], "response_format": "pcm", "seed": i}).content

        for _ in gpu.stream("Warm up.", seed=0):  # the engine's modules built before the fault is armed
            pass
        rt.fault_after = rt.stats["submits"] + 12
        with pytest.warns(RuntimeWarning, match="engine goes on on the CPU"):
            threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        health = httpx.get(f"{s.url}/health").json()
    finally:
        rt.fault_after, rt.lost = None, None
        s.close()
        engine = gpu.engine()
        engine.close()
    assert engine.faults and health["status"] == "degraded" and health["path"] == "cpu"
    assert health["last_fault"]
    for data, ref in zip(got, refs):
        audio = np.frombuffer(data, "<i2").astype(np.float64) / 32767
        assert audio.size == ref.size and np.abs(audio - pcm_of(ref)).max() < 2.5 / 32767


@pytest.mark.slow
def test_100_requests_keep_memory_flat(server, rt):
    def one(i):
        r = httpx.post(f"{server.url}/v1/audio/speech", json={"input": "Again.", "response_format": "wav",
                                                              "seed": i % 4}, timeout=300)
        assert r.status_code == 200

    for i in range(5):
        one(i)
    gpu_before = rt.pool.allocated_bytes
    rss_before = rss_mb()
    for i in range(100):
        one(i)
    assert rt.pool.allocated_bytes <= gpu_before
    grown_mb = rss_mb() - rss_before
    assert grown_mb < 64, f"host memory grew by {grown_mb:.0f} MB over 100 requests"


def _serve(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "wsvk", "serve", *args], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "WSVK_BACKEND": "cpu", **(env or {})})


def test_the_serve_command_says_where_it_listens_once_it_does(tmp_path):
    """`python -m wsvk serve --port 0`: the real port in its "serving on" line, /health there, a
    voice added (--voices DIR --voice-upload); a port in use, a bad port, --voice-upload without
    --voices and a bad WSVK_* value are one error line each, before any model loads; SIGTERM stops
    it cleanly (exit 0)."""
    (tmp_path / "voices").mkdir()
    proc = _serve("--random-weights", "tiny", "--port", "0", "--queue", "0", "--voices", str(tmp_path / "voices"),
                  "--voice-upload")
    try:
        line = proc.stderr.readline()
        while line and "serving on" not in line:
            line = proc.stderr.readline()
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).json()
        assert port > 0 and health["status"] == "ok" and health["voice_upload"] is True
        voice = tm.write_voice(tmp_path / "upload.flac", seed=5).read_bytes()
        r = httpx.post(f"http://127.0.0.1:{port}/v1/audio/voices/bob", content=voice, timeout=120)
        assert r.status_code == 201 and (tmp_path / "voices" / "bob.flac").read_bytes() == voice, r.text
        for args, env, want in ((("--port", str(port)), None, f"error: cannot listen on 127.0.0.1:{port}: "),
                                (("--port", "99999"), None, "99999 is not a port"),
                                (("--voice-upload",), None, "error: --voice-upload needs --voices DIR"),
                                (("--host", "192.0.2.1"), None, "error: cannot listen on 192.0.2.1"),  # not ours
                                ((), {"WSVK_PRECISION": "bf16"}, "error: WSVK_PRECISION='bf16' is not valid")):
            other = _serve(*args, env=env)
            _, err = other.communicate(timeout=120)
            assert other.returncode == 2 and want in err and "serving on" not in err, (args, err)
        proc.send_signal(signal.SIGTERM)  # as systemd or docker stop it: a clean exit, 0
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and err.strip().endswith("wsvk stopped") and "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
