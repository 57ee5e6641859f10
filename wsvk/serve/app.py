"""An OpenAI-compatible speech server over one Pipeline's streaming engine (FastAPI).

    POST /v1/audio/speech   OpenAI's schema (model, input, voice, response_format, speed,
                            stream_format) plus `lang` and `seed`; the body leaves as it is made
    GET  /v1/audio/voices   the default voice and one per audio file of --voices DIR
    POST /v1/audio/voices/{name}  the body (an audio file) becomes voice `name`, written into DIR
                            (only with --voices DIR --voice-upload)
    GET  /v1/models         the model names a request may give
    GET  /health            backend, adapter, requests running and waiting
    GET  /v1/audio/speech/place/{id}  where the request with X-Client-Request-Id `id` is in line
    GET  /                  a small page: text, voice, format, audio that plays while it streams

Requests share the GPU through the engine's decoder slots (they join at step boundaries); a
request's audio for a given seed is what it gets when served alone. At most `queue` requests
wait beyond the slots; past that, 429 with Retry-After. Errors are OpenAI's JSON shape.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncio
import io

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..corpus.rows import SAFE_NAME_RULES, safe_file_name
from ..errors import ApiError, InputError
from ..tts.audio import FORMATS, MEDIA_TYPES, StreamEncoder, write_bytes
from ..tts.pipeline import check_language, check_seed
from .cli import VOICE_EXTENSIONS

log = logging.getLogger("wsvk.serve")

MODELS = ("wsvk", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")  # OpenAI's names too: clients send them
# ... and their dated snapshots (tts-1-1106, gpt-4o-mini-tts-2025-12-15): one speech model here
SNAPSHOT = re.compile(r"(tts-1|tts-1-hd|gpt-4o-mini-tts)-\d[\d-]*")
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse",
                 "marin", "cedar")  # every voice the official SDKs list: "default" unless a --voices file has the name
BASE_CPS = 15.0  # speed 1.0
VOICE_ROUTE = "/v1/audio/voices/"  # + name: adds a voice
# soundfile's container -> the extension --voices loads (VOICE_EXTENSIONS; Ogg holds Vorbis or Opus)
VOICE_SUFFIXES = {"WAV": ".wav", "FLAC": ".flac", "MP3": ".mp3", ("OGG", "VORBIS"): ".ogg", ("OGG", "OPUS"): ".opus"}
FAVICON = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
           b'fill="#2a6"/><path d="M3 8h2M6 5v6M9 3v10M12 6v4" stroke="#fff" stroke-width="1.6"/></svg>')


@dataclass
class Options:
    max_input: int = 4096          # characters of `input` (OpenAI's limit)
    max_body: int | None = None    # bytes of a request body; default 16 per character of input (64 KiB):
                                   # room for JSON's 12-byte escapes of a character outside the BMP
    queue: int = 16                # requests waiting beyond the slots
    slots: int = 8                 # requests decoding at once
    api_key: str | None = None
    voices: dict = field(default_factory=dict)  # name -> speaker embedding
    voice_dir: Path | None = None  # --voices DIR
    voice_upload: bool = False     # --voice-upload: POST /v1/audio/voices/{name} writes into voice_dir
    max_voice_bytes: int = 10 << 20  # an added voice's audio: 30 s (all the encoder reads) of 44.1 kHz
                                     # stereo 16-bit WAV is 5 MiB

    def __post_init__(self):
        if self.max_body is None:
            self.max_body = 16 * self.max_input

    @property
    def can_add_voices(self) -> bool:
        return self.voice_dir is not None and self.voice_upload

    def body_cap(self, path: str) -> int:
        """The bytes a request body to `path` may have: a voice's audio has its own cap."""
        return self.max_voice_bytes if path.startswith(VOICE_ROUTE) else self.max_body


def error_body(e: ApiError) -> dict:
    return {"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}}


def rejected(scope, e: ApiError) -> JSONResponse:
    """The error response, and its one log line (a request refused is a request too)."""
    log.info("%s %s: %d %s", scope.get("method", "?"), scope.get("path", "?"), e.status, e.message)
    return JSONResponse(error_body(e), status_code=e.status, headers=e.headers)


def check_request(body, opts: Options) -> dict:
    """The validated request: text, voice, fmt, cps, stream (sse or not), lang, seed."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "input must be a non-empty string", "input", "invalid_value")
    if len(text) > opts.max_input:
        raise ApiError(400, f"input has {len(text)} characters, more than the {opts.max_input} allowed", "input",
                       "string_above_max_length")
    model = body.get("model", "wsvk")
    if model not in MODELS and not (isinstance(model, str) and SNAPSHOT.fullmatch(model)):
        raise ApiError(400, f"unknown model {model!r}; valid: {', '.join(MODELS)} and OpenAI's dated snapshots "
                            "(tts-1-1106, gpt-4o-mini-tts-2025-12-15)", "model", "model_not_found")
    voice = body.get("voice", "default")
    if isinstance(voice, dict) and isinstance(voice.get("id"), str):  # OpenAI's custom voice object
        voice = voice["id"]
    if not isinstance(voice, str):
        raise ApiError(400, f"voice must be a voice name, got {voice!r}", "voice", "invalid_value")
    if voice not in opts.voices and voice in OPENAI_VOICES:  # a --voices file may take an OpenAI name
        voice = "default"
    if voice not in opts.voices:
        raise ApiError(400, f"unknown voice {voice!r}; valid: {', '.join(opts.voices)}, and OpenAI's names "
                            f"{', '.join(v for v in OPENAI_VOICES if v not in opts.voices)} (the default voice)",
                       "voice", "invalid_value")
    fmt = body.get("response_format", "mp3")
    if fmt == "aac":
        raise ApiError(400, "response_format aac is not supported: no well-kept library writes AAC without FFmpeg; "
                            f"use one of {', '.join(FORMATS)}", "response_format", "unsupported_value")
    if fmt not in FORMATS:
        raise ApiError(400, f"unknown response_format {fmt!r}; valid: {', '.join(FORMATS)}", "response_format",
                       "invalid_value")
    speed = body.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.25 <= speed <= 4.0:
        raise ApiError(400, f"speed must be a number from 0.25 to 4.0, got {speed!r}", "speed", "invalid_value")
    stream = body.get("stream_format", "audio")
    if stream not in ("audio", "sse"):
        raise ApiError(400, f"stream_format must be audio or sse, got {stream!r}", "stream_format", "invalid_value")
    seed = body.get("seed")
    if seed is not None:
        try:
            seed = check_seed(seed)
        except InputError as e:
            raise ApiError(400, str(e), "seed", "invalid_value") from None
    lang = body.get("lang", "en")
    if not isinstance(lang, str):
        raise ApiError(400, f"lang must be a language code, got {lang!r}", "lang", "invalid_value")
    try:
        lang = check_language(lang)
    except InputError as e:
        raise ApiError(400, str(e), "lang", "invalid_value") from None
    return dict(text=text, voice=voice, fmt=fmt, cps=BASE_CPS * float(speed), sse=stream == "sse", lang=lang,
                seed=seed)


async def read_body(request: Request, cap: int) -> bytes:
    raw = bytearray()
    async for piece in request.stream():  # capped as it arrives (a chunked body has no Content-Length)
        raw += piece
        if len(raw) > cap:
            raise ApiError(413, f"the request body is over the {cap} bytes allowed", code="request_too_large")
    return bytes(raw)


def check_voice_name(name: str, opts: Options) -> None:
    """An added voice's name: a safe file stem, new ignoring case (a case-insensitive file system
    would give two names one file), and not OpenAI's names: a client that sends "alloy" must not
    start hearing a voice someone uploaded."""
    if not safe_file_name(name):
        raise ApiError(400, f"voice name {name!r} is not a safe file name ({SAFE_NAME_RULES})", "name",
                       "invalid_value")
    taken = {v.lower() for v in (*opts.voices, *OPENAI_VOICES, "default")}
    taken |= {f.stem.lower() for f in opts.voice_dir.iterdir() if f.suffix.lower() in VOICE_EXTENSIONS}
    if name.lower() in taken:
        raise ApiError(400, f"voice name {name!r} is taken (by a voice, a file in the voices folder or one of "
                            "OpenAI's voice names, ignoring case): choose another", "name", "voice_exists")


def save_voice(pipe, opts: Options, name: str, data: bytes):
    """The embedding of `data` (an audio file's bytes), once written into the voices folder as
    NAME.wav/.flac/.ogg/.opus/.mp3 (what --voices loads on the next start). The audio is checked
    as --speaker checks a file (readable, finite, not silent, 0.1 s at least) before the file
    takes its name: a refused voice leaves no file."""
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - libsndfile's reasons ("unknown format") say less than this
        raise ApiError(400, "the body is not an audio file soundfile reads (send wav, flac, ogg, opus or mp3)",
                       code="invalid_value") from None
    suffix = VOICE_SUFFIXES.get(info.format) or VOICE_SUFFIXES.get((info.format, info.subtype))
    if suffix is None:
        raise ApiError(400, f"the audio is {info.format_info}; send wav, flac, ogg, opus or mp3", code="invalid_value")

    def embed(tmp: str):
        try:
            return pipe.speaker_embedding(tmp)
        except InputError as e:  # its message names the temporary file: name the upload instead
            raise ApiError(400, str(e).replace(f"speaker file {tmp}", "the audio"), code="invalid_value") from None

    path = opts.voice_dir / f"{name}{suffix}"
    try:
        return write_bytes(path, data, embed), path
    except OSError as e:
        raise ApiError(500, f"cannot write {path.name} into the voices folder: {e.strerror or e}",
                       kind="server_error", code="voice_not_saved") from None


def create_app(pipe, opts: Options):
    """The FastAPI app serving `pipe` (its engine starts with the app)."""
    from ..router import active_backend
    from ..tts.pipeline import SAMPLE_RATE

    app = FastAPI(title="wsvk", description="WhisperSpeech text to speech, OpenAI-compatible")
    state = {"active": 0}
    adding = asyncio.Lock()  # one voice added at a time: its name is checked, then taken
    arrivals: dict[str, str] = {}  # open request id -> the client's X-Client-Request-Id, in arrival order
    backend, adapter = active_backend()
    hop = int(pipe.vocos.head.istft.hop_length)  # samples per acoustic frame (usage's output tokens)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return rejected(request.scope, e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):  # 404, 405: OpenAI's shape too
        return rejected(request.scope, ApiError(e.status_code, str(e.detail), code="not_found" if e.status_code == 404
                                                else None, headers=dict(e.headers or {})))

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):  # a bug of ours: OpenAI's shape still; uvicorn
        return rejected(request.scope, ApiError(500, f"internal error: {type(e).__name__}: {e}",  # logs the traceback
                                                kind="server_error", code="internal_error"))

    app.add_middleware(Guard, opts=opts)

    @app.get("/health")
    async def health():
        """"degraded": the GPU failed and requests are made on the CPU (slowly) until a restart."""
        engine = pipe.engine().health()
        degraded = backend != "cpu" and engine["path"] == "cpu" and engine["faults"] > 0
        return {"status": "degraded" if degraded else "ok", "backend": backend, "adapter": adapter,
                "path": engine["path"], "faults": engine["faults"], "last_fault": engine["last_fault"],
                "active": state["active"], "slots": opts.slots, "queue": opts.queue,
                "random_weights": pipe.random_weights, "voice_upload": opts.can_add_voices}

    @app.get("/v1/audio/speech/place/{client_id}")
    async def place(client_id: str):
        """Where a request is in line: `ahead` open requests came before it, and it waits while
        that is at least the slots (the engine serves requests in their order of arrival)."""
        order = list(arrivals.values())
        if client_id not in order:
            raise ApiError(404, f"no open request has X-Client-Request-Id {client_id!r}", code="not_found")
        ahead = order.index(client_id)
        return {"ahead": ahead, "waiting": ahead >= opts.slots, "slots": opts.slots}

    @app.get("/favicon.ico")
    async def favicon():  # browsers ask for it on every visit
        return Response(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "wsvk"}
                                           for m in MODELS]}

    @app.get("/v1/audio/voices")
    async def voices():
        return {"voices": list(opts.voices)}

    @app.post(VOICE_ROUTE + "{name}", status_code=201)
    async def add_voice(name: str, request: Request):
        """The body, an audio file, becomes the voice `name` at once (listed, and usable by speech)."""
        if not opts.can_add_voices:  # off by default: anyone who reaches the server could write files
            raise ApiError(403, "adding voices is off: start the server with --voices DIR --voice-upload (the audio "
                                "files are written into DIR)", code="voice_upload_disabled", kind="permission_error")
        check_voice_name(name, opts)
        data = await read_body(request, opts.max_voice_bytes)
        if not data:
            raise ApiError(400, "the request body is empty: send the voice's audio file as the body",
                           code="invalid_value")
        async with adding:
            check_voice_name(name, opts)  # again: another upload may have taken it while this body arrived
            emb, path = await anyio.to_thread.run_sync(save_voice, pipe, opts, name, data)
            # the table is read and written on the event loop only: a request sees it with or without the voice
            opts.voices[name] = emb
        log.info("voice %s added: %s, %d bytes", name, path.name, len(data))
        return {"id": name, "object": "audio.voice", "name": name, "created_at": int(time.time())}

    @app.get("/")
    async def page():
        return FileResponse(Path(__file__).with_name("page.html"), media_type="text/html")

    @app.post("/v1/audio/speech")
    async def speech(request: Request):
        raw = await read_body(request, opts.max_body)
        try:
            body = json.loads(raw or b"null")
        except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
            raise ApiError(400, "the request body is not valid JSON") from None
        req = check_request(body, opts)
        if state["active"] >= opts.slots + opts.queue:
            raise ApiError(429, f"{state['active']} requests are running or waiting; try again shortly",
                           code="rate_limit_exceeded", kind="rate_limit_error", headers={"Retry-After": "1"})
        try:
            chunks = pipe.prepare(req["text"], speaker=opts.voices[req["voice"]], lang=req["lang"], cps=req["cps"],
                                  seed=req["seed"])
        except InputError as e:
            raise ApiError(400, str(e), code="invalid_value") from None
        rid, t0 = uuid.uuid4().hex[:12], time.perf_counter()
        state["active"] += 1
        job = None

        def release():  # once per request, whichever way it ends: the count and the engine's slots
            if arrivals.pop(rid, None) is not None:
                state["active"] -= 1
                if job is not None:
                    job.cancel()

        arrivals[rid] = request.headers.get("x-client-request-id", "")
        try:  # the first block before the response starts: a failure is still a clean 500
            job = pipe.engine().submit(chunks)
            first = await _first_block(job, request, next_block)
        except BaseException as e:
            release()
            if isinstance(e, ClientGone):  # it waited in the queue or for its first audio, then left
                log.info("request %s: %d chars, the client left before the first byte (%.2f s)", rid,
                         len(req["text"]), time.perf_counter() - t0)
                return Response(status_code=499)  # nobody reads it; nginx's code for the log
            if not isinstance(e, Exception):
                raise  # cancelled: the server is stopping
            log.warning("request %s failed: %s", rid, e)
            raise ApiError(500, f"synthesis failed: {e}", code="synthesis_failed", kind="server_error") from None
        media = "text/event-stream" if req["sse"] else MEDIA_TYPES[req["fmt"]]
        return Releasing(_body(job, first, req, rid, t0, SAMPLE_RATE, hop, next_block), release, media_type=media,
                         headers={"X-Request-Id": rid})

    async def next_block(job):
        """job.next in a worker thread; every request waiting at once has a thread (anyio's default
        pool of 40 would make streams wait for one when --max-batch and --queue allow more)."""
        if "threads" not in state:  # made on the event loop, on first use
            state["threads"] = anyio.CapacityLimiter(opts.slots + opts.queue + 8)
        return await anyio.to_thread.run_sync(job.next, abandon_on_cancel=True, limiter=state["threads"])

    return app


class Guard:
    """The API key and the body size, checked before any route. A plain ASGI middleware:
    Starlette's BaseHTTPMiddleware hides a client's disconnect from the routes (its receive
    wrapper loses the message when polled), and a waiting request must see it."""

    def __init__(self, app, opts: Options):
        self.app, self.opts = app, opts

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            try:
                self.check(scope)
            except ApiError as e:
                await rejected(scope, e)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def check(self, scope) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.opts.api_key and scope["path"].startswith("/v1/"):
            if headers.get("authorization", "") != f"Bearer {self.opts.api_key}":
                raise ApiError(401, "a valid API key is required (Authorization: Bearer KEY)", code="invalid_api_key",
                               kind="authentication_error")
        size, cap = headers.get("content-length"), self.opts.body_cap(scope["path"])
        if size is not None and size.isdigit() and int(size) > cap:
            raise ApiError(413, f"the request body has {size} bytes, more than the {cap} allowed",
                           code="request_too_large")


class ClientGone(Exception):
    """The client closed the connection before the response started."""


async def _first_block(job, request: Request, next_block):
    """The request's first audio block, or ClientGone as soon as its client disconnects while it
    waits (queued behind other requests, or for its first chunk): its place is given up at once."""
    got = {}
    async with anyio.create_task_group() as tg:
        async def wait():
            try:
                got["block"] = await next_block(job)
            except Exception as e:  # noqa: BLE001 - raised below, outside the task group
                got["error"] = e
            tg.cancel_scope.cancel()

        async def watch():  # the body is read: what the server sends next is the disconnect
            while (await request.receive())["type"] != "http.disconnect":
                await anyio.sleep(0.1)  # (uvicorn sends nothing else here; another server might)
            tg.cancel_scope.cancel()

        tg.start_soon(wait)
        tg.start_soon(watch)
    if "error" in got:
        raise got["error"]
    if "block" not in got:
        raise ClientGone()
    return got["block"]


class Releasing(StreamingResponse):
    """A StreamingResponse that releases its request however it ends, even when the client goes
    away before the body starts (an async generator never started never runs its finally)."""

    def __init__(self, content, release, **kw):
        super().__init__(content, **kw)
        self.release = release

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


async def _body(job, block, req: dict, rid: str, t0: float, rate: int, hop: int, next_block):
    """The response body as it is made: encoded audio, or SSE events of it (a failure after the
    first byte ends an SSE stream with an error event; an audio stream can only be cut short). The
    request leaves the engine (its slots freed) when the client goes away: Releasing cancels it."""
    enc = StreamEncoder(req["fmt"], rate)
    first, samples, status = None, 0, "ok"
    try:
        while True:
            data = enc.push(block) if block is not None else enc.close()
            if block is not None:
                samples += block.size
            if data or block is None:
                if first is None:
                    first = time.perf_counter() - t0
                if req["sse"]:
                    if data:
                        yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
                    if block is None:
                        # the model's tokens: T2S reads the text's UTF-8 bytes; S2A makes one acoustic
                        # frame (4 EnCodec codes) per hop of the vocoder, 75 a second
                        usage = {"input_tokens": len(req["text"].encode()), "output_tokens": samples // hop}
                        yield _sse({"type": "speech.audio.done",
                                    "usage": {**usage, "total_tokens": sum(usage.values())}})
                elif data:
                    yield data
            if block is None:
                return
            try:
                block = await next_block(job)
            except Exception as e:
                if not req["sse"]:
                    raise
                status = f"failed: {e}"  # the SSE stream ends cleanly, with OpenAI's error shape
                log.warning("request %s failed: %s", rid, e)
                yield _sse({"type": "error", "error": {"message": f"synthesis failed: {e}", "type": "server_error",
                                                       "param": None, "code": "synthesis_failed"}})
                return
    except BaseException as e:
        status = "disconnected" if isinstance(e, (GeneratorExit, anyio.get_cancelled_exc_class())) else f"failed: {e}"
        raise
    finally:
        job.cancel()  # frees the request's slots at once (a no-op once it has ended)
        total = time.perf_counter() - t0
        audio_s = samples / rate
        log.info("request %s: %d chars, %.2f s of audio, first byte %s, total %.2f s, %.2fx real time, %s", rid,
                 len(req["text"]), audio_s, "-" if first is None else f"{first:.3f} s", total,
                 audio_s / total if total > 0 else 0.0, status)


def _sse(event: dict) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()
