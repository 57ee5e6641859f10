"""Reading and checking a corpus job's input: JSONL (one object per line) or CSV with a header.

Fields: id, text, and optional voice (an audio file path, relative to the input file's folder or
absolute), lang, cps, seed. Every row is checked before synthesis starts; each problem is reported
with its line number, and the valid rows still run (unless the job is --strict).
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")  # a file name on every system, no path
FIELDS = ("id", "text", "voice", "lang", "cps", "seed")


@dataclass
class Row:
    line: int
    id: str
    text: str
    voice: str | None = None
    lang: str = "en"
    cps: float = 15.0
    seed: int = 0


def read_rows(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, raw fields) of every record; InputError when the file cannot be read at all."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines(keepends=True))
        if not reader.fieldnames or "id" not in reader.fieldnames or "text" not in reader.fieldnames:
            raise InputError(f"{path}: a CSV needs a header with at least id and text")
        return [(reader.line_num, dict(r)) for r in reader]
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            out.append((n, {"__error__": f"not valid JSON ({e.msg})"}))
            continue
        out.append((n, obj if isinstance(obj, dict) else {"__error__": "not a JSON object"}))
    return out


def check_rows(records, base: Path, check_lang) -> tuple[list[Row], list[str]]:
    """The valid rows and one message per bad one ('line N: ...'), in input order. check_lang(code)
    returns the language code or raises InputError."""
    rows, problems, seen = [], [], set()
    for line, raw in records:
        try:
            if "__error__" in raw:
                raise InputError(raw["__error__"])
            rows.append(_check(line, raw, base, check_lang, seen))
        except InputError as e:
            problems.append(f"line {line}: {e}")
    return rows, problems


def _check(line: int, raw: dict, base: Path, check_lang, seen: set) -> Row:
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise InputError(f"unknown field(s) {', '.join(unknown)}; the fields are {', '.join(FIELDS)}")
    rid = raw.get("id")
    rid = str(rid) if isinstance(rid, (int, str)) and not isinstance(rid, bool) else None
    if not rid or not SAFE_ID.match(rid) or rid in (".", ".."):
        raise InputError(f"id {raw.get('id')!r} is not a safe file name (letters, digits, '.', '_', '-'; "
                         "at most 200, not starting with '.')")
    if rid.lower() in seen:  # case-insensitive file systems would give both one file
        raise InputError(f"id {rid!r} appears twice (ids that differ only in case count as one)")
    text = raw.get("text")
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"row {rid}: the text is empty")
    row = Row(line, rid, text)
    voice = raw.get("voice")
    if voice not in (None, ""):
        p = Path(str(voice)).expanduser()
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise InputError(f"row {rid}: voice file not found: {voice}")
        row.voice = str(p)
    lang = raw.get("lang")
    if lang not in (None, ""):
        try:
            row.lang = check_lang(lang)
        except InputError as e:
            raise InputError(f"row {rid}: {e}") from None
    if raw.get("cps") not in (None, ""):
        row.cps = _number(raw["cps"], rid, "cps", float)
        if not math.isfinite(row.cps) or row.cps <= 0:
            raise InputError(f"row {rid}: cps must be a number > 0, got {raw['cps']!r}")
    if raw.get("seed") not in (None, ""):
        row.seed = _number(raw["seed"], rid, "seed", int)
        if row.seed < 0:
            raise InputError(f"row {rid}: seed must be a non-negative integer, got {raw['seed']!r}")
    seen.add(rid.lower())
    return row


def _number(value, rid: str, name: str, kind):
    if isinstance(value, bool):
        raise InputError(f"row {rid}: {name} must be a number, got {value!r}")
    try:
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return kind(value) if kind is float else int(str(value).strip())
    except (TypeError, ValueError):
        raise InputError(f"row {rid}: {name} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
