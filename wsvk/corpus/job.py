"""A corpus job: rows to DIR/<id>.<format> files and DIR/manifest.jsonl, resumable.

Each row's audio is written to a temporary file and renamed, then its manifest entry is appended
(flushed and synced): a file never exists half-written, and a row is done when both exist and
the entry's `inputs` (rows.fingerprint) match the row's. A run
first reads the manifest (the last entry of an id wins, a line cut short by a crash is ignored),
drops temporary files a killed run left, and skips the rows that are done; at the end it rewrites
the manifest with exactly one entry per row, in input order, invalid rows included (status
"invalid", with their line number). So a rerun after `kill -9` at any moment completes the job
with every row done once.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..errors import InputError, JobError
from ..tts.audio import file_mode, write_file
from ..tts.cli import duration
from ..tts.pipeline import SAMPLE_RATE
from .rows import Row

MANIFEST = "manifest.jsonl"


class Manifest:
    """DIR/manifest.jsonl: the latest entry per id; append() records one finished row durably."""

    def __init__(self, folder: Path):
        self.path = folder / MANIFEST
        self.entries: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8", errors="replace").split("\n"):
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash: that row is simply not done
                if isinstance(entry, dict) and "id" in entry and entry.get("status") != "invalid":
                    self.entries[str(entry["id"])] = entry  # (invalid rows are checked again each run)

    def done(self, row: Row, fmt: str, folder: Path) -> bool:
        """Done: recorded as done, its file present, made from the row's inputs as they are now
        (entries written before wsvk recorded inputs count as made from them)."""
        e = self.entries.get(row.id)
        return bool(e and e.get("status") == "done" and (folder / e.get("file", "")).is_file()
                    and e.get("file") == f"{row.id}.{fmt}" and e.get("inputs", row.key) == row.key)

    def append(self, entry: dict) -> None:
        self.entries[entry["id"]] = entry
        try:
            cut = False
            if self.path.exists() and self.path.stat().st_size:
                with open(self.path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    cut = f.read(1) != b"\n"
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(("\n" if cut else "") + json.dumps(entry, ensure_ascii=False) + "\n")  # never glued to a cut line
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise JobError(f"cannot write {self.path}: {e.strerror or e}") from None

    def compact(self, rows: list[Row], invalid: list[dict] = ()) -> None:
        """One entry per row in input order, the invalid rows' among them (then the entries of ids
        no longer in the input), written to a temporary file and renamed."""
        listed = [(r.line, self.entries[r.id]) for r in rows if r.id in self.entries] + [(e["line"], e) for e in invalid]
        gone = sorted(set(self.entries) - {r.id for r in rows})
        entries = [e for _, e in sorted(listed, key=lambda t: t[0])] + [self.entries[i] for i in gone]
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".manifest-", suffix=".part")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for entry in entries:
                    f.write(json.dumps(entry, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, file_mode())
            os.replace(tmp, self.path)
        except OSError as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise JobError(f"cannot write {self.path}: {e.strerror or e}") from None


def prepare_folder(folder: Path):
    """The output folder, made if missing and checked writable (InputError otherwise), locked for
    this run (another run on it is refused: it would delete this one's temporary files), with the
    temporary files of a killed run removed. Returns the lock: hold it while the job runs."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"output {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".wsvk-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"cannot create a file in {folder}: {e.strerror or e}") from None
    lock = FolderLock(folder)
    for stale in list(folder.glob(".wsvk-*.part")) + list(folder.glob(".manifest-*.part")):
        stale.unlink(missing_ok=True)
    return lock


class FolderLock:
    """An exclusive lock on the output folder itself (flock on the directory: no lock file to
    leave behind), released by close() or when the process ends, however it ends."""

    def __init__(self, folder: Path):
        self.fd = None
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock, nothing to check
            return
        self.fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.close()
            raise InputError(f"another run is writing to {folder}; wait for it to end or use another --out") from None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    __del__ = close


def synthesize(pipe, rows: list[Row], folder: Path, fmt: str, backend: str, record) -> None:
    """Audio files for `rows` (decoded together: generate_batch); record([entry]) is called for
    each row as soon as its file is in place (or it failed). A batch that fails is retried row by
    row, so one bad row fails alone. A write failure (full disk) raises JobError, after the rows
    written before it are recorded: the job stops."""
    t0 = time.perf_counter()
    try:
        audios = pipe.generate_batch([r.text for r in rows], speaker=[r.voice for r in rows],
                                     lang=[r.lang for r in rows], cps=[r.cps for r in rows],
                                     seed=[r.seed for r in rows])
    except Exception as e:  # noqa: BLE001 - isolate the bad row
        if len(rows) == 1:
            record([_entry(rows[0], fmt, backend, error=f"{type(e).__name__}: {e}")])
            return
        for r in rows:
            synthesize(pipe, [r], folder, fmt, backend, record)
        return
    seconds = time.perf_counter() - t0
    total = sum(a.size for a in audios) or 1
    for row, audio in zip(rows, audios):
        if audio.size == 0:
            record([_entry(row, fmt, backend, error="no audio: the models ended every chunk at once")])
            continue
        try:
            write_file(folder / f"{row.id}.{fmt}", audio, SAMPLE_RATE, fmt)
        except OSError as e:
            raise JobError(f"cannot write {folder / f'{row.id}.{fmt}'}: {e.strerror or e}") from None
        except ValueError as e:  # audio that cannot be written (non-finite samples)
            record([_entry(row, fmt, backend, error=str(e))])
            continue
        # the batch's time, shared by the rows in proportion to their audio
        record([_entry(row, fmt, backend, audio.size / SAMPLE_RATE, seconds * audio.size / total)])


def _entry(row: Row, fmt: str, backend: str, audio_s: float = 0.0, synth_s: float = 0.0, error=None) -> dict:
    entry = {"id": row.id, "status": "failed" if error else "done", "file": None if error else f"{row.id}.{fmt}",
             "audio_seconds": round(audio_s, 4), "sample_rate": SAMPLE_RATE, "synthesis_seconds": round(synth_s, 4),
             "backend": backend, "inputs": row.key}
    if error:
        entry["error"] = error
    return entry


class Progress:
    """Rows done, audio made, x real time and ETA, counted as rows finish: a tqdm bar on a
    terminal; otherwise a plain line every `every` seconds from a timer (a batch can take longer
    than that, and its rows finish together), and one at the end."""

    def __init__(self, total: int, stream=None, every: float = 10.0):
        self.total, self.stream, self.every = total, stream or sys.stderr, every
        self.rows, self.audio = 0, 0.0
        self.t0 = time.perf_counter()
        self.lock = threading.Lock()
        self.bar = self.timer = None
        self.stopped = threading.Event()
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="row", file=self.stream, dynamic_ncols=True)
        elif total:
            self.timer = threading.Thread(target=self._tick, name="wsvk-progress", daemon=True)
            self.timer.start()

    def status(self) -> str:
        with self.lock:
            rows, audio = self.rows, self.audio
        elapsed = time.perf_counter() - self.t0
        eta = duration(elapsed / rows * (self.total - rows)) if rows else "?"
        return (f"{rows}/{self.total} rows, {duration(audio)} of audio in {duration(elapsed)}, "
                f"{audio / elapsed if elapsed > 0 else 0.0:.2f}x real time, ETA {eta}")

    def update(self, entries: list[dict]) -> None:
        with self.lock:
            self.rows += len(entries)
            self.audio += sum(e["audio_seconds"] for e in entries)
        if self.bar is not None:
            self.bar.update(len(entries))
            self.bar.set_postfix_str(f"{duration(self.audio)} of audio")

    def _tick(self) -> None:
        while not self.stopped.wait(self.every):
            self._line()

    def _line(self) -> None:
        self.stream.write(self.status() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.timer is not None:
            self.stopped.set()
            self.timer.join()
            self._line()
