"""Cases of shaders/fft.wgsl: radix-2/3/5 sizes and Bluestein, real and complex, both directions."""

from __future__ import annotations

import math

import numpy as np

from ... import ops
from .base import F32, Case, _rand, _tags


def fft(op, shape, n=None, cplx=None, path=None, tags=(), seed=0):
    """torch.fft's (= numpy.fft's) op on seeded rows of `shape` (complex for fft/ifft/irfft unless cplx=False);
    bound 5e-6 * max(1, log2 n) relative L2 error."""
    import torch

    cplx = op in ("fft", "ifft", "irfft") if cplx is None else cplx

    def make():
        x = _rand(shape, seed)
        return (x + 1j * _rand(shape, seed + 100) if cplx else x), n

    length = n or (2 * (shape[-1] - 1) if op == "irfft" else shape[-1])
    return Case("fft", f"{op} {shape}{f' n={n}' if n else ''}{' real' if not cplx and op != 'rfft' else ''}"
                       f"{f' {path}' if path else ''}", make, lambda x, n: getattr(ops, op)(x, n, path=path),
                lambda x, n: getattr(torch.fft, op)(x, n), lambda x, n: getattr(np.fft, op)(x, n),
                5e-6 * max(1.0, math.log2(max(length, 1))), F32,
                _tags(*tags), ("GFLOP/s", 2.5 * math.prod(shape[:-1]) * length * max(1, math.log2(max(length, 2)))))


_SMOOTH = [1, 2, 3, 4, 5, 6, 8, 12, 16, 32, 64, 100, 128, 256, 320, 400, 512, 960, 1000, 1024, 1280, 2048, 4096]
_OTHER = [7, 14, 17, 22, 101, 998, 1009]  # Bluestein (primes, composites with a prime factor > 5)

FFT = [
    *[fft("fft", (2, n), tags=["selftest"] if n in (400, 1009, 1280) else ()) for n in _SMOOTH + _OTHER + [8192]],
    *[fft("ifft", (2, n)) for n in (1, 2, 3, 5, 7, 12, 17, 400, 1009, 1280)],
    *[fft("rfft", (3, n), tags=["selftest"] if n == 1280 else ())
      for n in (1, 2, 3, 4, 5, 6, 7, 8, 14, 22, 17, 100, 101, 320, 400, 998, 1009, 1280, 2048, 8192)],
    *[fft("irfft", (3, n // 2 + 1), n) for n in (1, 2, 3, 4, 5, 7, 9, 14, 22, 100, 101, 400, 998, 1280, 2047, 8192)],
    fft("fft", (4, 96), cplx=False), fft("ifft", (4, 35), cplx=False), fft("fft", (2, 10), 16, cplx=False),
    fft("fft", (2, 30), 17, cplx=False), fft("fft", (70000, 3)),  # rows past one grid dimension
    fft("fft", (3, 5, 400)), fft("ifft", (3, 5, 14)), fft("rfft", (3, 5, 320)), fft("irfft", (3, 5, 17)),
    fft("fft", (2, 1, 3, 7)), fft("irfft", (2, 9)), fft("irfft", (3, 2)),
    *[fft(op, (2, m), n) for op, m, n in [
        ("fft", 10, 16), ("fft", 16, 10), ("fft", 300, 1280), ("fft", 1300, 1280), ("ifft", 5, 9), ("ifft", 40, 11),
        ("rfft", 7, 12), ("rfft", 12, 7), ("rfft", 1280, 1000), ("rfft", 300, 1001), ("irfft", 641, 1000),
        ("irfft", 100, 1280), ("irfft", 5, 11), ("irfft", 9, 7), ("irfft", 3, 2),
        ("irfft", 1, 1), ("irfft", 2, 1), ("irfft", 4, 3)]],
    fft("irfft", (2, 641), 1280, tags=["selftest"]), fft("irfft", (1, 100, 641), 1280),  # Vocos' ISTFT head
    fft("fft", (1, 4099)), fft("irfft", (1, 2051), 4099),  # Bluestein past workgroup memory on most adapters
    # every length through one dispatch per stage (global memory), as longer rows run
    *[fft(op, (2, n), path="global", tags=["selftest"] if n == 400 and op == "fft" else ())
      for op in ("fft", "ifft", "rfft") for n in (2, 3, 12, 17, 400, 1009, 1280)],
    *[fft("irfft", (3, n // 2 + 1), n, path="global") for n in (2, 7, 400, 1280)],
    fft("irfft", (750, 641), 1280, tags=["bench"]), fft("irfft", (50, 641), 1280, tags=["quick"]),
]
