"""Reading and checking a corpus job's input: JSONL (one object per line) or CSV with a header.

Fields: id, text, and optional voice (an audio file path, relative to the input file's folder or
absolute), lang, cps, seed. Every row is checked before synthesis starts; each problem is reported
with its line number, and the valid rows still run (unless the job is --strict).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..tts.pipeline import check_seed

SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")  # fullmatch: a file name on every system, no path
# names Windows reserves for devices, with any extension ("con.flac" cannot be created there)
RESERVED = {"con", "prn", "aux", "nul"} | {f"{d}{i}" for d in ("com", "lpt") for i in range(1, 10)}
LINE_BREAKS = re.compile(r"\r\n|\r|\n")  # only these end a JSONL line (not U+2028, U+0085, form feed)
FIELDS = ("id", "text", "voice", "lang", "cps", "seed")
SAFE_NAME_RULES = ("letters, digits, '.', '_', '-'; at most 200, not starting with '.'; not a Windows device name "
                   "such as CON or NUL")


def safe_file_name(name: str) -> bool:
    """Whether `name` may name a file on every system (no path; see SAFE_NAME_RULES)."""
    return bool(SAFE_ID.fullmatch(name)) and name.split(".")[0].lower() not in RESERVED


@dataclass
class Row:
    line: int
    id: str
    text: str
    voice: str | None = None
    lang: str = "en"
    cps: float = 15.0
    seed: int = 0
    key: str = ""  # what the audio is made from (fingerprint()): a row whose inputs changed is made again


def fingerprint(row: Row, models: dict, voices: dict) -> str:
    """A hash of everything the row's audio is made from: its text, voice (the file's bytes), lang,
    cps, seed, and the model options. voices: the voice files' hashes so far, by path."""
    voice = None
    if row.voice is not None:
        if row.voice not in voices:
            try:
                voices[row.voice] = hashlib.sha256(Path(row.voice).read_bytes()).hexdigest()
            except OSError as e:
                raise InputError(f"row {row.id}: cannot read the voice file {row.voice}: {e.strerror or e}") from None
        voice = voices[row.voice]
    what = [row.text, voice, row.lang, row.cps, row.seed, sorted(models.items())]
    return hashlib.sha256(json.dumps(what, ensure_ascii=False).encode()).hexdigest()[:16]


def read_rows(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, raw fields) of every record; InputError when the file cannot be read at all."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Excel's CSV) is not data
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    if path.suffix.lower() == ".csv":
        return _csv_records(path, text)
    out = []
    for n, line in enumerate(LINE_BREAKS.split(text), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            out.append((n, {"__error__": f"not valid JSON ({e.msg})"}))
            continue
        out.append((n, obj if isinstance(obj, dict) else {"__error__": "not a JSON object"}))
    return out


def _csv_records(path: Path, text: str) -> list[tuple[int, dict]]:
    """(first line, fields) per CSV record: quoted fields may hold line breaks; a record with more
    values than the header is a bad row (an unquoted comma in a text), one with fewer leaves the
    rest empty."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header or "id" not in header or "text" not in header:
        raise InputError(f"{path}: a CSV needs a header with at least id and text")
    out, end = [], reader.line_num
    for values in reader:
        first, end = end + 1, reader.line_num
        if not values or not any(v.strip() for v in values):
            continue  # an empty line
        if len(values) > len(header):
            out.append((first, {"__error__": f"{len(values)} values for {len(header)} columns "
                                             "(quote a text that holds a comma)"}))
            continue
        out.append((first, dict(zip(header, values + [None] * (len(header) - len(values))))))
    return out


def check_rows(records, base: Path, check_lang, models: dict | None = None,
               seed: int = 0) -> tuple[list[Row], list[dict]]:
    """The valid rows, each with its fingerprint over `models` (the model options), and the bad
    ones as manifest entries ({"line", "id" (as given, or None), "status": "invalid", "error"}), in
    input order. check_lang(code) returns the language code or raises InputError; seed: the seed
    of rows without one."""
    rows, problems, seen, voices = [], [], set(), {}
    for line, raw in records:
        try:
            if "__error__" in raw:
                raise InputError(raw["__error__"])
            row = _check(line, raw, base, check_lang, seen, seed)
            row.key = fingerprint(row, models or {}, voices)
            rows.append(row)
        except InputError as e:
            rid = raw.get("id")
            problems.append({"line": line, "id": rid if isinstance(rid, (str, int)) and not isinstance(rid, bool)
                             else None, "status": "invalid", "error": str(e)})
    return rows, problems


def _check(line: int, raw: dict, base: Path, check_lang, seen: set, seed: int = 0) -> Row:
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise InputError(f"unknown field(s) {', '.join(unknown)}; the fields are {', '.join(FIELDS)}")
    rid = raw.get("id")
    if rid is None or rid == "":
        raise InputError("the row has no id (each row needs one: it names the row's audio file)")
    rid = str(rid) if isinstance(rid, (int, str)) and not isinstance(rid, bool) else None
    if not rid or not safe_file_name(rid):
        raise InputError(f"id {raw.get('id')!r} is not a safe file name ({SAFE_NAME_RULES})")
    if rid.lower() in seen:  # case-insensitive file systems would give both one file
        raise InputError(f"id {rid!r} appears twice (ids that differ only in case count as one)")
    text = raw.get("text")
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"row {rid}: the text is empty")
    row = Row(line, rid, text, seed=seed)
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
        seed = _number(raw["seed"], rid, "seed", int)
        try:
            row.seed = check_seed(seed)
        except InputError as e:
            raise InputError(f"row {rid}: {e}") from None
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
