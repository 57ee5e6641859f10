"""One case table per kernel family: the shapes every kernel is checked on, against float64.

The tests run every case of a table (`tests/test_<family>.py`), `python -m wsvk info --selftest`
runs those tagged "selftest" (one per variant), and `scripts/bench_ops.py` times those tagged
"bench" ("quick": its smoke run; "big": shapes only a real GPU should run, which the tests skip).

A case's inputs are seeded and rounded through its dtype, so the float64 reference sees exactly
what the kernel sees. The reference is torch's own op in float64 where torch has one (the same
function is the CPU/CUDA baseline of the benchmarks, in float32), else numpy.
"""

from __future__ import annotations

from .attention import ATTENTION, attention
from .base import F16, F32, Case, rel_err
from .fft import FFT
from .lib import LIB
from .matmul import MATMUL, conv1d, linear, linear_q8, matmul
from .small import ELEMENTWISE, HEADS, NORM

__all__ = ["ATTENTION", "ELEMENTWISE", "F16", "F32", "FFT", "HEADS", "LIB", "MATMUL", "NORM", "TABLES", "Case",
           "attention", "conv1d", "linear", "linear_q8", "matmul", "rel_err", "tagged"]

TABLES = {"matmul": MATMUL, "attention": ATTENTION, "fft": FFT, "norm": NORM, "heads": HEADS,
          "elementwise": ELEMENTWISE, "lib": LIB}


def tagged(tag: str) -> list[Case]:
    return [c for table in TABLES.values() for c in table if tag in c.tags]
