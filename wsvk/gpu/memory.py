"""GPU memory: arrays living in storage buffers, and the pool their buffers come from."""

from __future__ import annotations

import math
import threading

import numpy as np

# wgpu.BufferUsage bits (numbers, so this module needs no wgpu import)
STORAGE = 128 | 8 | 4  # STORAGE | COPY_DST | COPY_SRC
UNIFORM = 64 | 8       # UNIFORM | COPY_DST
MAP_READ = 1 | 8       # MAP_READ | COPY_DST


class GpuArray:
    """A contiguous array living in a GPU storage buffer (float32, float16, int32 or uint32)."""

    __slots__ = ("rt", "buffer", "shape", "dtype", "_owner", "__weakref__")

    def __init__(self, rt, buffer, shape, dtype, owner=None):
        self.rt = rt
        self.buffer = buffer
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self._owner = owner  # keeps the pooled buffer alive for views

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def reshape(self, *shape) -> GpuArray:
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        shape = list(shape)
        if -1 in shape:
            rest = math.prod(s for s in shape if s != -1)
            shape[shape.index(-1)] = self.size // max(rest, 1)
        if math.prod(shape) != self.size:
            raise ValueError(f"cannot reshape {self.shape} to {tuple(shape)}")
        return GpuArray(self.rt, self.buffer, shape, self.dtype, owner=self._owner or self)

    def numpy(self) -> np.ndarray:
        return self.rt.read(self)

    def __repr__(self):
        return f"GpuArray(shape={self.shape}, dtype={self.dtype})"


def bucket(nbytes: int) -> int:
    """Pool size class: at most 1/8 waste, multiples of 256 bytes."""
    n = max(256, -(-nbytes // 256) * 256)
    step = max(256, 1 << (n.bit_length() - 4))
    return -(-n // step) * step


class BufferPool:
    """Reuses storage buffers by size class; a GpuArray's buffer comes back when it is collected."""

    def __init__(self, device, guard, keep_bytes: int = 1 << 30):
        self.device = device
        self.guard = guard  # a context manager factory turning wgpu errors into GpuError
        self.free: dict[int, list] = {}
        self.free_bytes = 0
        self.keep_bytes = keep_bytes
        self.allocated_bytes = 0  # live + free, what the pool holds on the GPU
        self.lock = threading.Lock()

    def take(self, nbytes: int):
        size = bucket(nbytes)
        with self.lock:
            stack = self.free.get(size)
            if stack:
                self.free_bytes -= size
                return stack.pop()
        with self.guard(f"allocating {size} bytes"):
            buf = self.device.create_buffer(size=size, usage=STORAGE)
        with self.lock:
            self.allocated_bytes += size
        return buf

    def trim(self) -> None:
        """Free the buffers kept for reuse: allocated_bytes is then what live arrays hold."""
        with self.lock:
            bufs = [b for stack in self.free.values() for b in stack]
            self.free.clear()
            self.free_bytes = 0
            self.allocated_bytes -= sum(b.size for b in bufs)
        for b in bufs:
            b.destroy()

    def give(self, buf) -> None:
        size = buf.size
        with self.lock:
            if self.free_bytes + size > self.keep_bytes:
                self.allocated_bytes -= size
                buf.destroy()
                return
            self.free.setdefault(size, []).append(buf)
            self.free_bytes += size
