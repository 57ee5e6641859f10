"""`python -m wsvk serve`: the OpenAI-compatible speech server on uvicorn.

    python -m wsvk serve --random-weights tiny                  # http://127.0.0.1:8880/
    python -m wsvk serve --voices ~/voices --api-key KEY --max-batch 8 --queue 16
    python -m wsvk serve --voices ~/voices --voice-upload       # the page may add voices there

Binds 127.0.0.1 unless told otherwise. One log line per request.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import warnings
from pathlib import Path

from .. import config
from ..errors import InputError, WsvkError
from ..tts.cli import add_model_args, load_models

VOICE_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsvk serve", description="An OpenAI-compatible text-to-speech "
                                "server (POST /v1/audio/speech) with a small page at /.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=8880, help="port (default 8880; 0: any free one)")
    add_model_args(p)
    p.add_argument("--voices", metavar="DIR", help="a folder of audio files: one voice per file, named by its stem")
    p.add_argument("--voice-upload", action="store_true",
                   help="let POST /v1/audio/voices/NAME (and the page) add a voice: its audio file is written into "
                        "--voices DIR (off by default: whoever reaches the server could write files)")
    p.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on /v1/ routes")
    p.add_argument("--max-batch", type=int, default=None, metavar="N",
                   help="requests decoded together (the decoders' slots; default WSVK_SLOTS or by the adapter)")
    p.add_argument("--queue", type=int, default=16, metavar="N", help="requests that may wait beyond them, then 429 (default 16)")
    p.add_argument("--max-input", type=int, default=4096, metavar="N", help="characters of input (default 4096)")
    return p


def port_number(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0 to 65535)")
    return port


def bind(host: str, port: int) -> socket.socket:
    """The server's socket, bound before the models load: a port in use or an unknown host is one
    error line at once, and "serving on" is printed only once it is true (with the real port)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
            sock.bind(addr)
        except OSError:
            sock.close()
            raise
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def voice_files(folder: str | None) -> dict:
    """{stem: path} of the audio files in `folder` (checked before any model loads)."""
    files: dict = {}
    if folder:
        path = Path(folder)
        if not path.is_dir():
            raise InputError(f"voices folder not found: {folder}")
        for f in sorted(path.iterdir()):
            if f.suffix.lower() in VOICE_EXTENSIONS:
                if f.stem == "default":
                    raise InputError(f"{f}: 'default' is whisperspeech's own voice; rename the file")
                if f.stem in files:
                    raise InputError(f"two files give the voice '{f.stem}': {files[f.stem].name} and {f.name}")
                files[f.stem] = f
    return files


def load_voices(pipe, files: dict) -> dict:
    """{"default": whisperspeech's voice, stem: embedding for each of voice_files()'s files},
    each embedding computed once here."""
    return {"default": pipe.default_speaker(), **{name: pipe.speaker_embedding(str(f)) for name, f in files.items()}}


def main(argv=None) -> int:
    from ..deps import need_extra
    from ..router import active_backend

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # warnings (a GPU fault's) as one log line each, not a file:line and a line of source
    warnings.formatwarning = lambda message, category, *_, **__: f"{category.__name__}: {message}"
    logging.captureWarnings(True)
    sock = None
    try:
        need_extra("server", "fastapi", "uvicorn")
        from .app import Options, create_app

        for name in ("max_batch", "queue", "max_input"):
            if getattr(args, name) is not None and getattr(args, name) < (0 if name == "queue" else 1):
                raise InputError(f"--{name.replace('_', '-')} must be at least {0 if name == 'queue' else 1}")
        if args.voice_upload and not args.voices:
            raise InputError("--voice-upload needs --voices DIR: the folder added voices are written into")
        config.check_all()
        sock = bind(args.host, args.port)
        backend, adapter = active_backend()
        files = voice_files(args.voices)
        pipe = load_models(args, slots=args.max_batch, speaker=bool(files) or args.voice_upload)
        slots = pipe.stages.slots() if pipe.stages.resident_available() else args.max_batch or 1
        voices = load_voices(pipe, files)
        engine = pipe.engine()
        for _ in pipe.stream("Warm up.", seed=0):  # pipelines and buffers built before the first caller
            pass
        opts = Options(max_input=args.max_input, queue=args.queue, slots=slots, api_key=args.api_key, voices=voices,
                       voice_dir=Path(args.voices) if args.voices else None, voice_upload=args.voice_upload)
        app = create_app(pipe, opts)
    except WsvkError as e:
        if sock is not None:
            sock.close()
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, (InputError, ValueError)) else 1
    import uvicorn

    sock.listen(2048)  # from here a client waits in the backlog until uvicorn accepts (its loop starts next)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"wsvk serving on http://{host}:{sock.getsockname()[1]}/ ({backend}: {adapter}; "
          f"{slots} slot{'s' * (slots != 1)}, {len(voices)} voice{'s' * (len(voices) != 1)})", file=sys.stderr)
    try:
        run_uvicorn(uvicorn.Config(app, log_level="warning"), engine, sockets=[sock])
    finally:
        sock.close()
    print("wsvk stopped", file=sys.stderr)
    return 0


def run_uvicorn(config, engine, sockets=None) -> None:
    """uvicorn until Ctrl-C or SIGTERM, then the engine closed (the process ends next: not while a
    thread is inside torch or wgpu). uvicorn shuts down on either signal, then raises it again for
    the handler it found: a no-op here, so that the process goes on to close the engine and exits
    0 (not killed by its SIGTERM, nor a KeyboardInterrupt traceback)."""
    import signal

    import uvicorn

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    try:
        uvicorn.Server(config).run(sockets=sockets)
    finally:
        engine.close(wait=30)
