"""Layer 1: the GPU runtime. Knows wgpu and numpy, nothing of torch.

One wgpu device on the selected adapter (its own limits and optional features), a pipeline
cache keyed by (shader, entry, constants, type aliases, subgroups), a buffer pool, cached bind
groups and uniforms, recorders that put many dispatches into one submit, readback, GPU
timestamps and fault handling (a GPU failure marks the device unusable; WSVK_FAULT_AFTER
injects one).
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np

from .. import config
from ..errors import ConfigError, GpuError, first_line
from .adapters import FEATURES, adapter_for_kernels, adapter_summary
from .memory import UNIFORM, BufferPool, GpuArray
from .recorder import Recorder, StagingCache
from .shaders import module_code
from .uniforms import Layout

CACHE_ENTRIES = 4096  # bind groups and uniform buffers kept (least recently used dropped first)


@contextmanager
def gpu_errors(what: str):
    """Turn wgpu's exceptions (validation, out of memory, lost device) into GpuError with context."""
    try:
        yield
    except GpuError:
        raise
    except Exception as e:
        import wgpu

        if isinstance(e, (wgpu.GPUError, wgpu.GPUPipelineError)) or "lost" in str(e).lower():
            kind = "out of GPU memory" if isinstance(e, MemoryError) else type(e).__name__
            raise GpuError(f"GPU failure while {what} ({kind}): {first_line(e)}") from e
        raise


def choose_precision(info: dict, has_f16: bool, choice: str | None = None) -> tuple[str, str]:
    """(f32 | f16 | q8, why) for an adapter (adapter_summary) under WSVK_PRECISION, or `choice` (one
    of config.PRECISIONS) in its place. auto: q8 on an integrated GPU, whose decode steps cost what
    their weight bytes cost in shared memory (70-120 GB/s) and where 8 bits are safe (llama.cpp's
    Q8_0 within 0.04% of f16 perplexity; an autoregressive TTS over codec tokens word-exact in
    Q8_0, gibberish in 4 bits; wsvk.quality gates it); f16 on other adapters with shader-f16 (a
    discrete GPU's steps are bound by dispatch latency, not bytes); f32 without shader-f16."""
    source = "WSVK_PRECISION" if choice is None else "asked for"
    choice = config.precision() if choice is None else choice
    if choice not in config.PRECISIONS:
        raise ConfigError(f"precision {choice!r} is not valid; use one of: {', '.join(config.PRECISIONS)}")
    if choice == "f16" and not has_f16:
        asked = "WSVK_PRECISION=f16" if source == "WSVK_PRECISION" else "precision='f16'"
        raise ConfigError(f"{asked} but {info['name']} lacks shader-f16 (use auto, q8 or f32)")
    if choice != "auto":
        return choice, source
    if info.get("type") == "IntegratedGPU":
        return "q8", "auto: an integrated GPU is bound by memory bandwidth, and 8-bit weights halve the bytes"
    if has_f16:
        return "f16", "auto: shader-f16" + (", a discrete GPU" if info.get("type") == "DiscreteGPU" else "")
    return "f32", "auto: no shader-f16"


class Runtime:
    """One wgpu device and everything cached on it. Get it with `get_runtime()`."""

    guard = staticmethod(gpu_errors)

    def __init__(self, adapter):
        self.adapter = adapter
        self.info = adapter_summary(adapter)
        default_limits = config.limits() == "default"
        features = [] if default_limits else [f for f in FEATURES if f in adapter.features]
        limits = None if default_limits else dict(adapter.limits.items())
        try:
            self.device = adapter.request_device_sync(label="wsvk", required_features=features, required_limits=limits)
        except Exception as e:
            raise GpuError(f"could not create a device on {self.info['name']}: {e}") from e
        self.features = frozenset(features)
        self.limits = dict(self.device.limits)
        self.queue = self.device.queue
        self.pool = BufferPool(self.device, gpu_errors)
        self.staging = StagingCache(self.device)
        self.lock = threading.RLock()
        self.stats = {"submits": 0, "dispatches": 0, "readbacks": 0, "uploads": 0}  # count() adds to them
        self._stats_lock = threading.Lock()
        self._local = threading.local()  # the recorder open in each thread
        self.fault_after = config.fault_after()
        self.lost: str | None = None  # set once a fault was seen: every later GPU call fails fast
        self._pipelines: dict = {}
        self.pipeline_seconds = 0.0  # spent creating (compiling) the pipelines so far
        self._bind_groups: OrderedDict = OrderedDict()
        self._uniforms: OrderedDict = OrderedDict()

    def check_fault(self) -> None:
        """Fail fast after a fault; inject one when WSVK_FAULT_AFTER's count of submits is reached."""
        if self.lost is not None:
            raise GpuError(f"the GPU device is unusable after an earlier failure: {self.lost}")
        if self.fault_after is not None and self.stats["submits"] >= self.fault_after:
            self.lost = f"injected fault after {self.fault_after} submits (WSVK_FAULT_AFTER)"
            raise GpuError(f"GPU device lost: {self.lost}")

    def count(self, key: str, n: int = 1) -> None:
        """Add n to stats[key], and to the calling thread's own counts (thread_stats): decoders,
        Vocos and the router's ops run on several threads at once."""
        with self._stats_lock:
            self.stats[key] += n
        mine = self.thread_stats()
        mine[key] += n

    def thread_stats(self) -> dict:
        """The calling thread's counts of stats' keys (what one module's call did, whatever other
        threads submit meanwhile)."""
        mine = getattr(self._local, "stats", None)
        if mine is None:
            mine = self._local.stats = dict.fromkeys(self.stats, 0)
        return mine

    # -- capabilities
    @property
    def has_f16(self) -> bool:
        return "shader-f16" in self.features

    @property
    def has_subgroups(self) -> bool:
        return "subgroup" in self.features

    @property
    def has_timestamps(self) -> bool:
        return "timestamp-query" in self.features

    def precision(self, choice: str | None = None) -> tuple[str, str]:
        """(f32 | f16 | q8, why) on this device under WSVK_PRECISION, or `choice` (choose_precision)."""
        return choose_precision(self.info, self.has_f16, choice)

    @property
    def weight_dtype(self) -> np.dtype:
        """Storage type of transformer weights and activations under WSVK_PRECISION: f16 or f32
        (math stays f32). Under q8 the decoders' weight matrices are 8-bit (kernels.matmul.Q8Weight)
        and everything else here stored is f16 where the adapter has shader-f16, else f32."""
        return self.storage_dtype(self.precision()[0])

    def storage_dtype(self, precision: str) -> np.dtype:
        """What a resolved precision (f32, f16, q8) stores its non-8-bit arrays as."""
        return np.dtype(np.float16 if precision == "f16" or (precision == "q8" and self.has_f16) else np.float32)

    @property
    def max_groups(self) -> int:
        return int(self.limits["max-compute-workgroups-per-dimension"])

    @property
    def max_binding(self) -> int:
        return int(self.limits["max-storage-buffer-binding-size"])

    @property
    def workgroup_bytes(self) -> int:
        return int(self.limits.get("max-compute-workgroup-storage-size", 16384))

    # -- pipelines
    def pipeline(self, shader: str, entry: str = "main", constants: dict | None = None,
                 aliases: dict | None = None, subgroups: bool | None = None):
        """A cached compute pipeline.

        `aliases` maps type names used by the shader to "f32"/"f16" (prepended as
        `alias NAME = TYPE;`); `constants` fills WGSL `override` declarations. Lines ending in
        `// [sg]` use subgroup builtins: they are kept only with `subgroups` (default: when the
        adapter has the feature), since naga rejects a module that mentions them without it.
        """
        constants = dict(sorted((constants or {}).items()))
        aliases = dict(sorted((aliases or {}).items()))
        subgroups = self.has_subgroups if subgroups is None else bool(subgroups) and self.has_subgroups
        key = (shader, entry, tuple(constants.items()), tuple(aliases.items()), subgroups)
        pipe = self._pipelines.get(key)
        if pipe is None:
            t0 = time.perf_counter()
            if "f16" in aliases.values() and not self.has_f16:
                raise TypeError(f"float16 needs the shader-f16 feature, which {self.info['name']} lacks")
            module = self.device.create_shader_module(label=shader, code=module_code(shader, aliases, subgroups))
            stage = {"module": module, "entry_point": entry}
            if constants:
                stage["constants"] = {k: float(v) for k, v in constants.items()}
            pipe = self.device.create_compute_pipeline(label=f"{shader}:{entry}", layout="auto", compute=stage)
            self._pipelines[key] = pipe
            self.pipeline_seconds += time.perf_counter() - t0
        return pipe

    def built_pipelines(self) -> list[tuple[str, str, dict, dict, bool]]:
        """(shader, entry, constants, aliases, subgroups) of every pipeline made so far: what
        tests/test_shader_targets.py writes in the other backends' shading languages."""
        return [(s, e, dict(c), dict(a), sg) for s, e, c, a, sg in list(self._pipelines)]

    # -- memory
    def empty(self, shape, dtype=np.float32) -> GpuArray:
        dtype = np.dtype(dtype)
        nbytes = max(4, math.prod(shape) * dtype.itemsize)
        buf = self.pool.take(nbytes)
        arr = GpuArray(self, buf, shape, dtype)
        weakref.finalize(arr, self.pool.give, buf)
        return arr

    def upload(self, data, dtype=None) -> GpuArray:
        data = np.ascontiguousarray(data, dtype=dtype)
        if data.dtype == np.float64:
            data = data.astype(np.float32)
        arr = self.empty(data.shape, data.dtype)
        self.write(arr, data)
        return arr

    def write(self, arr: GpuArray, data, offset: int = 0) -> None:
        """Copy `data` (cast to arr's dtype) into arr's buffer at byte `offset` (a multiple of 4)."""
        raw = np.ascontiguousarray(data, dtype=arr.dtype).reshape(-1).view(np.uint8)
        if raw.size % 4:
            raw = np.concatenate([raw, np.zeros(4 - raw.size % 4, np.uint8)])
        with self.lock, gpu_errors("uploading"):
            self.queue.write_buffer(arr.buffer, offset, raw)
            self.count("uploads")

    def read(self, arr: GpuArray) -> np.ndarray:
        if self.recording:
            raise RuntimeError("cannot read a GpuArray while recording: its work is not submitted yet")
        nbytes = arr.nbytes
        with self.lock, gpu_errors("reading back"):
            self.check_fault()
            raw = self.queue.read_buffer(arr.buffer, 0, max(4, -(-nbytes // 4) * 4))
            self.count("readbacks")
        return np.frombuffer(raw, dtype=np.uint8)[:nbytes].view(arr.dtype).reshape(arr.shape).copy()

    def uniform_buffer(self, layout: Layout, **values):
        """A new uniform buffer holding `values` packed by `layout` (the caller keeps it: the
        resident modules build theirs once, at load)."""
        words = layout.pack(**values)
        buf = self.device.create_buffer(size=max(16, words.nbytes), usage=UNIFORM)
        self.queue.write_buffer(buf, 0, words)
        return buf

    def uniform(self, layout: Layout, **values):
        """A uniform buffer holding `values` packed by `layout`, shared and cached by content."""
        words = layout.pack(**values)
        key = words.tobytes()
        buf = self._uniforms.get(key)
        if buf is None:
            buf = self.device.create_buffer(size=max(16, len(key)), usage=UNIFORM)
            self.queue.write_buffer(buf, 0, words)
            self._uniforms[key] = buf
            if len(self._uniforms) > CACHE_ENTRIES:
                self._uniforms.popitem(last=False)
        else:
            self._uniforms.move_to_end(key)
        return buf

    def new_bind_group(self, pipeline, resources):
        """A bind group (group 0) binding `resources` (GpuArray or raw buffers) at 0, 1, 2, ..."""
        bufs = [r.buffer if isinstance(r, GpuArray) else r for r in resources]
        entries = [{"binding": i, "resource": {"buffer": b, "offset": 0, "size": b.size}} for i, b in enumerate(bufs)]
        return self.device.create_bind_group(layout=pipeline.get_bind_group_layout(0), entries=entries)

    def bind_group(self, pipeline, resources):
        """new_bind_group, cached by (pipeline, buffers)."""
        bufs = [r.buffer if isinstance(r, GpuArray) else r for r in resources]
        key = (id(pipeline), tuple(id(b) for b in bufs))
        hit = self._bind_groups.get(key)
        if hit is not None:
            self._bind_groups.move_to_end(key)
            return hit[0]
        group = self.new_bind_group(pipeline, bufs)
        self._bind_groups[key] = (group, pipeline, bufs)  # holding the objects keeps their ids unique
        if len(self._bind_groups) > CACHE_ENTRIES:
            self._bind_groups.popitem(last=False)
        return group

    # -- recording
    @contextmanager
    def recorder(self, label: str = "wsvk", timestamps: bool = False):
        """Record many dispatches into one command encoder; submit once on exit.

        Nested recorders (and so every op called inside this block with GpuArray inputs)
        join the outermost one: a whole model step becomes one submit.
        """
        outer = getattr(self._local, "recorder", None)
        if outer is not None:
            yield outer
            return
        with self.lock:
            rec = Recorder(self, label, timestamps and self.has_timestamps)
            self._local.recorder = rec
            try:
                yield rec
            finally:
                self._local.recorder = None
            rec.submit()

    def submit_commands(self, commands) -> None:
        """Submit a command encoder (finished here) or a command buffer finished earlier (the
        resident decoder's pre-recorded steps): fault injection, error wrapping and the submit
        count in one place. Any GPU error marks the device unusable."""
        try:
            with gpu_errors("submitting work"):
                self.check_fault()
                if hasattr(commands, "finish"):
                    commands = commands.finish()
                self.queue.submit([commands])
        except GpuError as e:
            self.lost = self.lost or str(e)
            raise
        self.count("submits")

    @property
    def recording(self) -> bool:
        return getattr(self._local, "recorder", None) is not None

    def run(self, pipeline, resources, groups) -> None:
        """One dispatch, submitted at once unless a recorder is open (the op-by-op path)."""
        with self.recorder() as rec:
            rec.dispatch(pipeline, resources, groups)

    def grid(self, n_groups: int) -> tuple[int, int, int]:
        """Fold a 1-D workgroup count into (x, y, 1) within the per-dimension limit.

        Shaders recover the flat index as wid.x + wid.y * num_workgroups.x and skip ids >= n.
        """
        m = self.max_groups
        if n_groups <= m:
            return (max(1, n_groups), 1, 1)
        y = -(-n_groups // m)
        return (-(-n_groups // y), y, 1)


_RUNTIME: Runtime | None = None
_RUNTIME_LOCK = threading.Lock()


def get_runtime() -> Runtime:
    """The process-wide runtime, created on first use on `adapters.adapter_for_kernels()`.
    Raises NoAdapterError under WSVK_BACKEND=cpu or when wgpu finds nothing."""
    global _RUNTIME
    with _RUNTIME_LOCK:
        if _RUNTIME is None:
            _RUNTIME = Runtime(adapter_for_kernels())
        return _RUNTIME
