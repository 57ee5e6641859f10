"""Split text into chunks that fit the T2S model's text window, counted in UTF-8 bytes.

The T2S encoder sees at most `ttoks_len` byte tokens (one of them a start pad), so longer
text is cut at sentence ends, then clause marks, then spaces; a single word longer than
the limit is cut by bytes at a character boundary. Nothing is dropped: joining the chunks
with single spaces gives back the input with its whitespace runs collapsed, except that a
word cut by bytes gains a space at the cut.
"""

from __future__ import annotations

import re

# a sentence ends after . ! ? … (optionally followed by one closing quote/bracket) and a space;
# CJK full stops end a sentence even without a space
_SENTENCE = re.compile(r"(?<=[.!?…])\s+|(?<=[.!?…][\"'”’»)\]])\s+|(?<=[。！？])\s*")
# clause marks: , ; : (CJK ，；、) and a spaced dash
_CLAUSE = re.compile(r"(?<=[,;:])\s+|(?<=[，；、])\s*|\s+(?=[—–-]\s)")


def utf8_len(s: str) -> int:
    return len(s.encode("utf-8"))


def _split_bytes(word: str, max_bytes: int) -> list[str]:
    """Cut one word into pieces of at most max_bytes bytes, never inside a character."""
    pieces, cur, cur_len = [], [], 0
    for ch in word:
        n = utf8_len(ch)
        if cur and cur_len + n > max_bytes:
            pieces.append("".join(cur))
            cur, cur_len = [], 0
        cur.append(ch)
        cur_len += n
    if cur:
        pieces.append("".join(cur))
    return pieces


def _atoms(text: str, max_bytes: int, level: int) -> list[tuple[str, bool]]:
    """(piece, glued) pairs, each piece within max_bytes; glued = continues the previous
    piece without a space (the byte-split tail of a long word)."""
    if utf8_len(text) <= max_bytes:
        return [(text, False)]
    if level == 3:
        return [(p, i > 0) for i, p in enumerate(_split_bytes(text, max_bytes))]
    pattern = (_SENTENCE, _CLAUSE, None)[level]
    parts = pattern.split(text) if pattern is not None else text.split(" ")
    parts = [p.strip() for p in parts if p.strip()]
    out: list[tuple[str, bool]] = []
    for p in parts:
        out.extend(_atoms(p, max_bytes, level + 1))
    return out


def _pack(atoms: list[tuple[str, bool]], max_bytes: int) -> list[str]:
    """Greedily join atoms (with a space unless glued) while a chunk stays within max_bytes."""
    out: list[str] = []
    for piece, glued in atoms:
        sep = "" if glued else " "
        if out and utf8_len(out[-1]) + len(sep) + utf8_len(piece) <= max_bytes:
            out[-1] = out[-1] + sep + piece
        else:
            out.append(piece)
    return out


def split_text(text: str, max_bytes: int, first_bytes: int | None = None) -> list[str]:
    """Chunks of `text` (whitespace collapsed) of at most `max_bytes` UTF-8 bytes each.

    Splits at sentence, then clause, then word boundaries; a longer word is cut by bytes at a
    character boundary. first_bytes: a text longer than that starts with a chunk of at most
    first_bytes (its first sentences or clauses, or words when a clause is longer), so that its
    speech can start early; the rest is split as usual. Returns [] for blank text.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__}")
    if int(max_bytes) < 4:  # one UTF-8 character can take 4 bytes
        raise ValueError(f"max_bytes must be at least 4, got {max_bytes}")
    text = " ".join(text.split())
    if not text:
        return []
    if first_bytes is not None and 4 <= int(first_bytes) < utf8_len(text):
        atoms = _atoms(text, min(int(first_bytes), int(max_bytes)), 0)
        first = _pack(atoms, min(int(first_bytes), int(max_bytes)))[0]
        rest, used = [], 0
        for piece, glued in atoms:  # the atoms the first chunk did not take, rejoined
            if used < utf8_len(first):
                used += utf8_len(piece) + (0 if glued else 1)
            else:
                rest.append(("" if glued or not rest else " ") + piece)
        return [first] + split_text("".join(rest), max_bytes)
    return _pack(_atoms(text, int(max_bytes), 0), int(max_bytes))
