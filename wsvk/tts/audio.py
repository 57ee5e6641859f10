"""Audio out: one writer for the command line, the server and the corpus job (soundfile, no FFmpeg).

Formats: wav (16-bit PCM), pcm (raw 16-bit little-endian mono), flac, mp3, opus (in Ogg). A file is
written to a temporary name beside its target and renamed, with the usual permissions (0666 less
the umask), so a failed run leaves nothing and a finished file is never partial. StreamEncoder
turns blocks of samples into bytes as they come: wav (the unknown-length header convention: RIFF
and data sizes 0xFFFFFFFF), pcm and opus truly stream; flac and mp3 come out at close (their
encoders rewrite the file's header at the end).
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import threading

import numpy as np

from ..errors import InputError

FORMATS = ("wav", "pcm", "flac", "mp3", "opus")
SOUNDFILE = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III"),
             "opus": ("OGG", "OPUS")}
EXTENSIONS = {".wav": "wav", ".flac": "flac", ".mp3": "mp3", ".ogg": "opus", ".opus": "opus"}
MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac", "mp3": "audio/mpeg",
               "opus": "audio/ogg; codecs=opus"}
STREAMING = ("wav", "pcm", "opus")  # formats whose bytes leave as the samples come


def format_for_path(path: str) -> str:
    """The format a file name's extension names; InputError listing the valid ones otherwise."""
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in EXTENSIONS:
        raise InputError(f"cannot tell the audio format from {str(path)!r}: use one of "
                         f"{', '.join(sorted(EXTENSIONS))}")
    return EXTENSIONS[ext]


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InputError(f"unknown audio format {fmt!r}; valid: {', '.join(FORMATS)}")
    return fmt


def pcm16(audio) -> bytes:
    """float samples -> 16-bit little-endian PCM bytes (clipped to [-1, 1])."""
    return (np.clip(np.asarray(audio, np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def wav_header(rate: int, n_samples: int | None = None) -> bytes:
    """A 16-bit mono WAV header; n_samples None: the unknown-length convention (0xFFFFFFFF sizes)."""
    data = 0xFFFFFFFF if n_samples is None else 2 * n_samples
    riff = 0xFFFFFFFF if n_samples is None else 36 + data
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, 2 * rate, 2, 16)
            + b"data" + struct.pack("<I", data))


def encode(audio, rate: int, fmt: str) -> bytes:
    """The whole file's bytes."""
    enc = StreamEncoder(fmt, rate)
    return enc.push(audio) + enc.close()


class StreamEncoder:
    """push(block) -> the bytes ready so far; close() -> the rest."""

    def __init__(self, fmt: str, rate: int):
        self.fmt, self.rate = check_format(fmt), int(rate)
        self._started = False
        self._file = self._buf = None
        if fmt in SOUNDFILE and fmt != "wav":
            import soundfile as sf

            self._buf = io.BytesIO()
            container, subtype = SOUNDFILE[fmt]
            self._file = sf.SoundFile(self._buf, "w", samplerate=self.rate, channels=1, format=container,
                                      subtype=subtype)
            self._sent = 0

    def push(self, block) -> bytes:
        block = np.asarray(block, np.float32).reshape(-1)
        head = b""
        if not self._started:
            self._started = True
            head = wav_header(self.rate) if self.fmt == "wav" else b""
        if self._file is None:
            return head + pcm16(block)
        self._file.write(np.clip(block, -1.0, 1.0))
        return head + self._drain() if self.fmt in STREAMING else head

    def _drain(self) -> bytes:
        data = self._buf.getvalue()[self._sent:]
        self._sent += len(data)
        return data

    def close(self) -> bytes:
        head = wav_header(self.rate) if self.fmt == "wav" and not self._started else b""
        self._started = True
        if self._file is None:
            return head
        self._file.close()
        return self._drain()


_UMASK = None
_UMASK_LOCK = threading.Lock()


def file_mode() -> int:
    """0666 less the process umask (read once: os.umask can only be read by setting it)."""
    global _UMASK
    with _UMASK_LOCK:
        if _UMASK is None:
            _UMASK = os.umask(0o022)
            os.umask(_UMASK)
    return 0o666 & ~_UMASK


def write_file(path, audio, rate: int, fmt: str | None = None) -> None:
    """Write `audio` to `path` in `fmt` (default: by the extension) through a temporary file in
    the same folder, renamed at the end with the usual permissions."""
    fmt = check_format(fmt) if fmt is not None else format_for_path(path)
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".wsvk-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            if fmt == "wav":  # a complete header for a file
                f.write(wav_header(rate, np.asarray(audio).size) + pcm16(audio))
            else:
                f.write(encode(audio, rate, fmt))
            f.flush()
            os.fsync(f.fileno())  # on disk before it takes its name (a job's manifest may say so next)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
