"""Uniform layouts: a kernel family declares each WGSL params struct once, by field names.

    GEMV = Layout("N K K4 groups eps:f")      # struct GP { N: u32, K: u32, K4: u32, groups: u32, eps: f32 }
    GEMV.pack(N=8, K=64, K4=16, groups=1, eps=1e-5)

Fields are u32 unless marked `:f` (f32) or `:i` (i32); `name[N]` is N u32 words given as a sequence
of at most N ints (the rest 0). The packed words are padded to a multiple
of 16 bytes (a uniform buffer's size must be); the struct's own trailing padding fields need not
be declared. Every declared field must be given: a missing one is a bug, not a zero.
"""

from __future__ import annotations

import numpy as np


class Layout:
    def __init__(self, spec: str):
        self.fields: list[tuple[str, str, int]] = []  # (name, kind, words)
        for item in spec.split():
            name, _, kind = item.partition(":")
            count = 1
            if name.endswith("]"):
                name, _, n = name[:-1].partition("[")
                count = int(n)
            if kind not in ("", "f", "i") or (count > 1 and kind):
                raise ValueError(f"uniform field {item!r}: type must be u32 (no suffix), :f, :i or a u32 array")
            self.fields.append((name, kind or "u", count))
        self.names = [n for n, _, _ in self.fields]
        self.words = sum(c for _, _, c in self.fields)

    def pack(self, **values) -> np.ndarray:
        missing = [n for n in self.names if n not in values]
        extra = [n for n in values if n not in self.names]
        if missing or extra:
            raise TypeError(f"uniform layout ({' '.join(self.names)}): missing {missing}, unknown {extra}")
        words = np.zeros(-(-self.words // 4) * 4, np.uint32)
        i = 0
        for name, kind, count in self.fields:
            v = values[name]
            if kind == "f":
                words[i] = np.float32(v).view(np.uint32)
            elif kind == "i":
                words[i] = np.int32(int(v)).view(np.uint32)
            else:
                vs = [v] if count == 1 else list(v)
                if len(vs) > count or any(int(x) < 0 or int(x) >= 1 << 32 for x in vs):
                    raise ValueError(f"uniform field {name}={v} does not fit {count} u32 word(s)")
                words[i:i + len(vs)] = [int(x) for x in vs]
            i += count
        return words
