"""What every case table shares: the Case, its error measure and seeded inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

F32, F16 = np.dtype(np.float32), np.dtype(np.float16)


def rel_err(got, ref) -> float:
    """Relative L2 error in float64 (complex aware)."""
    got = np.asarray(got).astype(np.complex128 if np.iscomplexobj(got) else np.float64)
    ref = np.asarray(ref).astype(np.complex128 if np.iscomplexobj(ref) else np.float64)
    if got.shape != ref.shape:
        raise AssertionError(f"shape {got.shape} != reference {ref.shape}")
    denom = np.linalg.norm(ref.ravel())
    return float(np.linalg.norm((got - ref).ravel()) / (denom if denom > 0 else 1.0))


@dataclass(frozen=True)
class Case:
    family: str
    name: str
    make: Callable[[], tuple]         # the inputs: numpy arrays (floats as float64 values of `dtype`)
    ours: Callable[..., object]       # the kernel on the inputs (cast to dtype): numpy out
    torch_fn: Callable | None = None  # torch's op on tensors: the float64 reference and the baseline
    numpy_fn: Callable | None = None  # numpy's op: the reference where torch has none, a baseline
    bound: float = 1e-5               # relative L2 error
    dtype: np.dtype = F32
    tags: frozenset = field(default_factory=frozenset)
    work: tuple[str, float] | None = None  # (unit, amount per call) for the benchmarks
    f16_out: bool = False                  # float16 output from float32 inputs (needs shader-f16 too)

    @property
    def needs_f16(self) -> bool:
        return self.dtype == F16 or self.f16_out

    def __str__(self):
        return self.name

    def reference(self, inputs):
        if self.torch_fn is None:
            return self.numpy_fn(*inputs)
        import torch

        def tensor(a):  # float arrays as float64 (a float32 mask too), others as they are
            if not isinstance(a, np.ndarray):
                return a
            return torch.from_numpy(a.astype(np.float64) if a.dtype.kind == "f" else a)

        return self.torch_fn(*(tensor(a) for a in inputs)).resolve_conj().numpy()

    def cast(self, inputs):
        """The inputs as the kernel takes them: float64 arrays in the case's dtype."""
        return tuple(a.astype(self.dtype) if isinstance(a, np.ndarray) and a.dtype == np.float64 else a
                     for a in inputs)

    def run(self) -> float:
        """The relative error of the kernel against the reference; AssertionError past the bound,
        on a shape mismatch, or where finite and non-finite entries differ."""
        inputs = self.make()
        got = np.asarray(self.ours(*self.cast(inputs)))
        ref = self.reference(inputs)
        err = rel_err(got, ref)
        if not np.array_equal(np.isfinite(got), np.isfinite(ref)):
            raise AssertionError(f"{self.name}: finite and non-finite entries differ from the reference")
        if not err <= self.bound:
            raise AssertionError(f"{self.name}: relative L2 error {err:.3g} > {self.bound:.3g}")
        return err


def _rand(shape, seed, dtype=F32, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype).astype(np.float64)


def _tags(*names):
    return frozenset(n for n in names if n)
