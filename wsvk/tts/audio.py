"""Audio out: one writer for the command line, the server and the corpus job (soundfile, no FFmpeg).

Formats: wav (16-bit PCM), pcm (raw 16-bit little-endian mono), flac, mp3, opus (in Ogg). A file is
written to a temporary name beside its target and renamed, with the usual permissions (0666 less
the umask), so a failed run leaves nothing and a finished file is never partial. StreamEncoder
turns blocks of samples into bytes as they come: wav (the unknown-length header convention: RIFF
and data sizes 0xFFFFFFFF), pcm, opus and mp3 stream; flac comes out at close.

Both mp3 and flac rewrite the file's first bytes at close (mp3 its Info frame: frame count and
seek table; flac its STREAMINFO: length, frame sizes, MD5). A stream cannot take that back, so it
keeps what was first written:
- mp3: an Info frame of zeros, which decoders play as one silent frame, and no gapless trim:
  70 ms in front (the frame and the encoder's delay). A streamed mp3 is constant 64 kbit/s
  because libsndfile estimates a stream's length from its bitrate when the Info frame is empty:
  a VBR stream then read back as a quarter of its samples (measured); mpg123 read both whole. A
  file keeps libsndfile's VBR default (smaller) with its rewritten Info frame.
- flac: a length of 0 ("unknown", valid FLAC), which libsndfile, so soundfile, reads as a huge
  frame count and fails: flac is sent whole, at close.
A streamed opus asks for Ogg pages of 0.1 s of audio: libsndfile's default, ~1 s per page, held
the first audio back by a second (measured); a file keeps the default.
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
# a streamed mp3: constant 64 kbit/s (compression level 0.6: 160 - 0.6 * 152, rounded by LAME)
LIVE_MP3 = {"bitrate_mode": "CONSTANT", "compression_level": 0.6}
EXTENSIONS = {".wav": "wav", ".flac": "flac", ".mp3": "mp3", ".ogg": "opus", ".opus": "opus"}
MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac", "mp3": "audio/mpeg",
               "opus": "audio/ogg; codecs=opus"}
STREAMING = ("wav", "pcm", "opus", "mp3")  # formats whose bytes leave as the samples come
OPUS_PAGE_MS = 100.0  # a streamed Ogg page per 0.1 s of audio: every block leaves at once
SFC_SET_OGG_PAGE_LATENCY_MS = 0x1302  # sndfile.h (libsndfile >= 1.1)


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
    """The whole file's bytes (its header rewritten at the end where the format does that)."""
    enc = StreamEncoder(fmt, rate, live=False)
    return enc.push(audio) + enc.close()


class StreamEncoder:
    """push(block) -> the bytes ready so far; close() -> the rest. live=False: everything at close
    (a file: mp3's and flac's headers as rewritten at the end)."""

    def __init__(self, fmt: str, rate: int, live: bool = True):
        self.fmt, self.rate = check_format(fmt), int(rate)
        self.live = live and fmt in STREAMING
        self._started = False
        self._file = self._buf = None
        if fmt in SOUNDFILE and fmt != "wav":
            import soundfile as sf

            self._buf = io.BytesIO()
            container, subtype = SOUNDFILE[fmt]
            options = LIVE_MP3 if self.live and fmt == "mp3" else {}
            spec = dict(samplerate=self.rate, channels=1, format=container, subtype=subtype)
            try:
                self._file = sf.SoundFile(self._buf, "w", **spec, **options)
            except TypeError:  # a soundfile older than 0.13 takes no bitrate options: libsndfile's VBR
                self._file = sf.SoundFile(self._buf, "w", **spec)
            self._sent = 0
            if self.live and fmt == "opus":
                _ogg_page_ms(self._file, OPUS_PAGE_MS)

    def push(self, block) -> bytes:
        block = np.asarray(block, np.float32).reshape(-1)
        head = b""
        if not self._started:
            self._started = True
            head = wav_header(self.rate) if self.fmt == "wav" else b""
        if self._file is None:
            return head + pcm16(block)
        self._file.write(np.clip(block, -1.0, 1.0))
        return head + self._drain() if self.live else head

    def _drain(self) -> bytes:
        with self._buf.getbuffer() as view:  # no copy of what was sent before
            data = bytes(view[self._sent:])
        self._sent += len(data)
        return data

    def close(self) -> bytes:
        head = wav_header(self.rate) if self.fmt == "wav" and not self._started else b""
        self._started = True
        if self._file is None:
            return head
        self._file.close()  # rewrites mp3's / flac's first bytes: a live stream already sent them
        return self._drain()


def _ogg_page_ms(f, ms: float) -> None:
    """Ask libsndfile for Ogg pages of at most `ms` of audio (SFC_SET_OGG_PAGE_LATENCY_MS, which
    soundfile does not wrap: through its cffi handles). Its default, ~1 s, holds a stream's first
    audio back by that much; where the handles are missing, the pages stay ~1 s."""
    try:
        from soundfile import _ffi, _snd

        _snd.sf_command(f._file, SFC_SET_OGG_PAGE_LATENCY_MS, _ffi.new("double *", float(ms)), _ffi.sizeof("double"))
    except Exception:  # noqa: BLE001 - a soundfile without these private handles: the default pages
        pass


_UMASK = None
_UMASK_LOCK = threading.Lock()


def file_mode() -> int:
    """0666 less the process umask, read once: from /proc where Linux shows it; elsewhere by
    setting it and back (os.umask's only way), which another thread creating a file in between
    would see."""
    global _UMASK
    with _UMASK_LOCK:
        if _UMASK is None:
            try:
                with open("/proc/self/status") as f:
                    _UMASK = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
            except (OSError, StopIteration, ValueError, IndexError):
                _UMASK = os.umask(0o022)
                os.umask(_UMASK)
    return 0o666 & ~_UMASK


def write_file(path, audio, rate: int, fmt: str | None = None) -> None:
    """Write `audio` to `path` in `fmt` (default: by the extension) through a temporary file in
    the same folder, renamed at the end with the usual permissions. ValueError for non-finite audio."""
    fmt = check_format(fmt) if fmt is not None else format_for_path(path)
    bad = np.size(audio) - np.count_nonzero(np.isfinite(audio))
    if bad:  # an encoder would fail on them (flac) or write noise (wav): say what broke instead
        raise ValueError(f"the audio has {bad} non-finite samples (NaN or inf): the models' output is broken")
    if fmt == "wav":  # a complete header for a file
        write_bytes(path, wav_header(rate, np.asarray(audio).size) + pcm16(audio))
    else:
        write_bytes(path, encode(audio, rate, fmt))


def write_bytes(path, data: bytes, check=None):
    """`data` into `path` through a temporary file in the same folder, renamed at the end with the
    usual permissions: a reader never sees half a file, a failure leaves none. check(temporary
    path), when given, runs before the rename (its exception leaves nothing); its result is returned."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".wsvk-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # on disk before it takes its name (a job's manifest may say so next)
        result = check(tmp) if check is not None else None
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return result
