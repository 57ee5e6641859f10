"""Recording many dispatches into one submit, and reading results back from mappable buffers."""

from __future__ import annotations

import threading

import numpy as np

from .memory import MAP_READ, GpuArray, bucket

QUERY_RESOLVE_SRC = 512 | 4  # QUERY_RESOLVE | COPY_SRC


def raw_pass_calls():
    """wgpu-native's compute-pass functions through wgpu-py's cffi handles, or None.

    Recording a decode step calls them ~150 times; skipping wgpu-py's Python wrappers saves ~20%
    of the host time (measured 6.4 -> 5.0 us per dispatch). None when the private handles are
    not there (another wgpu-py version): callers then use the public API.
    """
    try:
        from wgpu.backends.wgpu_native._api import ffi, libf

        return (libf.wgpuComputePassEncoderSetPipeline, libf.wgpuComputePassEncoderSetBindGroup,
                libf.wgpuComputePassEncoderDispatchWorkgroups, ffi.NULL)
    except Exception:
        return None


class Recorder:
    """Dispatches recorded into one compute pass (or one pass per dispatch when timing).
    Made by Runtime.recorder(), which submits it on exit."""

    def __init__(self, rt, label: str, timestamps: bool):
        self.rt = rt
        self.encoder = rt.device.create_command_encoder(label=label)
        self.timestamps = timestamps
        self.labels: list[str] = []
        self._pass = None
        self._keep: list = []  # arrays used by recorded work stay alive until submit
        self.gpu_ms: list[tuple[str, float]] = []
        if timestamps:
            self._cap = 512
            self._query = rt.device.create_query_set(type="timestamp", count=2 * self._cap)

    def dispatch(self, pipeline, resources, groups, label: str = "") -> None:
        group = self.rt.bind_group(pipeline, resources)
        self._keep.append(resources)
        self.dispatch_bound(pipeline, group, groups, label)

    def dispatch_bound(self, pipeline, group, groups, label: str = "") -> None:
        """A dispatch with a bind group built by the caller (the resident modules build theirs once)."""
        groups = tuple(groups) + (1,) * (3 - len(groups))
        if self.timestamps and len(self.labels) < self._cap:
            i = len(self.labels)
            cpass = self.encoder.begin_compute_pass(timestamp_writes={
                "query_set": self._query, "beginning_of_pass_write_index": 2 * i,
                "end_of_pass_write_index": 2 * i + 1})
            cpass.set_pipeline(pipeline)
            cpass.set_bind_group(0, group)
            cpass.dispatch_workgroups(*groups)
            cpass.end()
            self.labels.append(label or pipeline.label)
        else:
            if self._pass is None:
                self._pass = self.encoder.begin_compute_pass()
            self._pass.set_pipeline(pipeline)
            self._pass.set_bind_group(0, group)
            self._pass.dispatch_workgroups(*groups)
        self.rt.count("dispatches")

    def copy(self, src: GpuArray, dst: GpuArray, nbytes: int | None = None, src_offset=0, dst_offset=0) -> None:
        self._end_pass()
        n = src.nbytes if nbytes is None else nbytes
        self.encoder.copy_buffer_to_buffer(src.buffer, src_offset, dst.buffer, dst_offset, -(-n // 4) * 4)
        self._keep.append((src, dst))

    def read_after(self, arr: GpuArray) -> Readback:
        """Copy `arr` into a mappable buffer as part of this submit; `.numpy()` once it is
        submitted. Saves the second submit and the staging buffer that `Runtime.read` makes."""
        self._end_pass()
        rb = Readback(self.rt, arr)
        self.encoder.copy_buffer_to_buffer(arr.buffer, 0, rb.buffer, 0, -(-arr.nbytes // 4) * 4)
        self._keep.append(arr)
        return rb

    def _end_pass(self):
        if self._pass is not None:
            self._pass.end()
            self._pass = None

    def submit(self) -> None:
        self._end_pass()
        rt = self.rt
        resolve = None
        if self.timestamps and self.labels:
            n = 2 * len(self.labels)
            resolve = rt.device.create_buffer(size=8 * n, usage=QUERY_RESOLVE_SRC)
            self.encoder.resolve_query_set(self._query, 0, n, resolve, 0)
        rt.submit_commands(self.encoder)
        if resolve is not None:  # wgpu reports timestamps in nanoseconds
            ticks = np.frombuffer(rt.queue.read_buffer(resolve), dtype=np.uint64).astype(np.float64)
            self.gpu_ms = [(lab, (ticks[2 * i + 1] - ticks[2 * i]) * 1e-6) for i, lab in enumerate(self.labels)]
        self._keep.clear()


class StagingCache:
    """Free mappable buffers for Readback: the smallest that fits is reused (Vocos' waveform
    grows by a KiB per frame, so exact sizes would pile up); at most KEEP buffers and BYTES kept."""

    KEEP = 2
    BYTES = 64 << 20

    def __init__(self, device):
        self.device = device
        self.free: list = []
        self.lock = threading.Lock()

    def take(self, nbytes: int, guard):
        need = bucket(nbytes)
        with self.lock:
            fits = [b for b in self.free if b.size >= need]
            if fits:
                buf = min(fits, key=lambda b: b.size)
                self.free.remove(buf)
                return buf
        with guard(f"allocating a {need}-byte readback buffer"):
            return self.device.create_buffer(size=need, usage=MAP_READ)

    def give(self, buf) -> None:
        with self.lock:
            self.free.append(buf)
            self.free.sort(key=lambda b: -b.size)  # keep the largest
            while len(self.free) > self.KEEP or sum(b.size for b in self.free) > self.BYTES:
                self.free.pop().destroy()


def read_mapped(buf, nbytes: int) -> np.ndarray:
    """The first nbytes of a MAP_READ buffer once the GPU is done with it (waits), as uint8."""
    buf.map_sync(1)  # MapMode.READ: waits for the submit that wrote it
    try:
        return np.frombuffer(buf.read_mapped(0, -(-nbytes // 4) * 4), dtype=np.uint8)[:nbytes].copy()
    finally:
        buf.unmap()


class Readback:
    """A mappable copy of a GpuArray recorded by Recorder.read_after; read it once with numpy()."""

    def __init__(self, rt, arr: GpuArray):
        self.rt, self.shape, self.dtype, self.nbytes = rt, arr.shape, arr.dtype, arr.nbytes
        self.buffer = rt.staging.take(arr.nbytes, rt.guard)

    def numpy(self) -> np.ndarray:
        rt, buf = self.rt, self.buffer
        if buf is None:
            raise RuntimeError("this readback was already read")
        if rt.recording:
            raise RuntimeError("cannot read back while recording: the copy is not submitted yet")
        # The staging buffer is this readback's alone, so the wait does not hold the runtime's lock
        # (wgpu-native's blocking poll still holds up other threads' submits until it returns).
        with rt.guard("reading back"):
            rt.check_fault()
            raw = read_mapped(buf, self.nbytes)
        rt.count("readbacks")
        self.buffer = None
        rt.staging.give(buf)
        return raw.view(self.dtype).reshape(self.shape)
