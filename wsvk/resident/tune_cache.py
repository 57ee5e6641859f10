"""The tuner's choices on disk: one small JSON file per key (config.cache_dir(), tune-*.json).

A key says everything a timing depends on: the adapter (name, backend, driver), the limits in
force, the wsvk version, the decoder and its shapes, the precision and the slots. The file's name
is a hash of the key and the file holds the key itself, so a file written for another key (a
hash collision, a copy from another machine) is recognised as foreign. A corrupt or foreign file
is ignored with one warning line and replaced at the next tuning; a folder that cannot be written
only means tuning again next time (one warning per process)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile

from .. import config

FORMAT = "wsvk-tune/1"
_warned_unwritable: set = set()


def warn(msg: str) -> None:
    """One line on stderr (not warnings.warn: a filter that turns warnings into errors must not
    stop a synthesis over a cache file)."""
    sys.stderr.write(f"wsvk: warning: {msg}\n")
    sys.stderr.flush()


def path_for(key: dict, folder: str | None = None) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return os.path.join(folder or config.cache_dir(), f"tune-{digest}.json")


def _read(path: str) -> tuple[dict | None, str | None]:
    """(the file's entry, None) or (None, why it is not one)."""
    try:
        with open(path, encoding="utf-8") as f:
            entry = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, f"unreadable ({type(e).__name__})"
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        return None, "not a wsvk tuning file of this version"
    if not isinstance(entry.get("key"), dict) or not isinstance(entry.get("choice"), str):
        return None, "incomplete"
    return entry, None


def peek(key: dict) -> tuple[dict | None, str | None]:
    """(the entry stored for `key`, None), (None, None) when there is no file, or (None, why it
    is not one), without a word or a change."""
    path = path_for(key)
    if not os.path.exists(path):
        return None, None
    entry, why = _read(path)
    if entry is not None and entry["key"] != key:
        return None, "written for another adapter or model"
    return entry, why


def load(key: dict, discard: bool = False) -> dict | None:
    """The entry stored for `key` ({"key", "choice", "candidates"}), or None (nothing stored, or
    a corrupt or foreign file: one warning). discard: remove such a file (where no tuning will
    replace it, so that it is not warned about again by every process)."""
    path = path_for(key)
    entry, why = peek(key)
    if why is not None:
        if discard:
            with contextlib.suppress(OSError):
                os.remove(path)
        warn(f"ignoring the tuning cache file {path}: {why}; "
             + ("it was removed" if discard else "the decode step is tuned again"))
    return entry


def store(key: dict, choice: str, candidates: list[dict]) -> str | None:
    """Write the entry (atomically: a reader never sees half a file); the path, or None when the
    folder cannot be written (one warning per folder)."""
    path = path_for(key)
    folder = os.path.dirname(path)
    entry = {"format": FORMAT, "key": key, "choice": choice, "candidates": candidates}
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tune-", suffix=".json", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entry, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        if folder not in _warned_unwritable:
            _warned_unwritable.add(folder)
            warn(f"cannot write the tuning cache in {folder} ({e.strerror or e}); the decode step will be tuned "
                 "again next time (WSVK_CACHE_DIR sets the folder)")
        return None
    return path


def entries(folder: str | None = None) -> list[tuple[str, dict | None, str | None]]:
    """Every tuning file of the folder: (path, entry or None, why not), sorted by path."""
    folder = folder or config.cache_dir()
    try:
        names = sorted(n for n in os.listdir(folder) if n.startswith("tune-") and n.endswith(".json"))
    except OSError:
        return []
    return [(os.path.join(folder, n), *_read(os.path.join(folder, n))) for n in names]
