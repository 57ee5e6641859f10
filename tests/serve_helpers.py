"""Helpers of the server tests: a server on a free loopback port (Server, voice_server) and the
16-bit rounding that the server's audio went through (pcm_of)."""

import socket
import threading
import time
from pathlib import Path

import numpy as np
import openai

from wsvk.serve.app import Options, create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a thread on a free loopback port, stopped by close()."""

    def __init__(self, pipe, **options):
        import uvicorn

        self.pipe = pipe
        self.opts = Options(voices=options.pop("voices", {"default": pipe.default_speaker()}), **options)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(pipe, self.opts), host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.05)

    def client(self, key="none"):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=300)

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def voice_server(pipe, folder: Path, **options) -> "Server":
    """A server over the voices of `folder` (its --voices DIR), which it may add voices to."""
    from wsvk.serve.cli import load_voices, voice_files

    return Server(pipe, voices=load_voices(pipe, voice_files(str(folder))), slots=2, queue=2,
                  **{"voice_dir": folder, "voice_upload": True, **options})


def pcm_of(audio) -> np.ndarray:
    return (np.clip(audio, -1, 1) * 32767).round() / 32767
