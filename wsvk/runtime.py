"""Layer 1: the GPU runtime. Knows wgpu and numpy, nothing of torch.

Adapter choice (WSVK_BACKEND, WSVK_ADAPTER), a device with the adapter's own limits,
a pipeline cache keyed by (shader, entry, constants, type aliases), a buffer pool,
cached bind groups and uniforms, a recorder that puts many dispatches into one
submit, readback and optional GPU timestamps.
"""

from __future__ import annotations

import math
import os
import re
import threading
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import numpy as np

BACKENDS = ("auto", "wgpu", "cpu")
WANTED_FEATURES = ("shader-f16", "subgroup", "timestamp-query")
_STORAGE = 128 | 8 | 4  # STORAGE | COPY_DST | COPY_SRC
_UNIFORM = 64 | 8  # UNIFORM | COPY_DST
_MAP_READ = 1 | 8  # MAP_READ | COPY_DST


class WsvkError(RuntimeError):
    """Base class: a problem a user can act on, printed as one line."""


class ConfigError(WsvkError, ValueError):
    """A bad WSVK_* environment value."""


class NoAdapterError(WsvkError):
    """wgpu was asked for but there is no usable adapter."""


class GpuError(WsvkError):
    """The GPU failed at run time (device lost, validation error, out of memory)."""


def fault_after() -> int | None:
    """WSVK_FAULT_AFTER=N: the (N+1)-th submit fails as a lost device would (fault-path tests)."""
    value = os.environ.get("WSVK_FAULT_AFTER", "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise ConfigError(f"WSVK_FAULT_AFTER={value!r} is not a non-negative integer")
    return int(value)


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
            raise GpuError(f"GPU failure while {what} ({kind}): {str(e).strip().splitlines()[0] if str(e).strip() else e!r}") from e
        raise


# ---------------------------------------------------------------- adapter choice


def backend_choice() -> str:
    """The validated value of WSVK_BACKEND (default 'auto')."""
    value = os.environ.get("WSVK_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ConfigError(
            f"WSVK_BACKEND={os.environ.get('WSVK_BACKEND')!r} is not valid; use one of: {', '.join(BACKENDS)}"
        )
    return value


def limits_choice() -> str:
    value = os.environ.get("WSVK_LIMITS", "adapter").strip().lower() or "adapter"
    if value not in ("adapter", "default"):
        raise ConfigError(f"WSVK_LIMITS={value!r} is not valid; use one of: adapter, default")
    return value


def precision_choice() -> str:
    """WSVK_PRECISION: f32, f16 or auto (default: f16 storage where the adapter has shader-f16)."""
    value = os.environ.get("WSVK_PRECISION", "auto").strip().lower() or "auto"
    if value not in ("auto", "f32", "f16"):
        raise ConfigError(f"WSVK_PRECISION={value!r} is not valid; use one of: auto, f32, f16")
    return value


def list_adapters() -> list:
    """Every adapter wgpu finds, in its own order (the indices WSVK_ADAPTER takes)."""
    try:
        import wgpu
    except ImportError as e:  # pragma: no cover - wgpu is a hard dependency
        raise NoAdapterError(f"the wgpu package is not importable ({e}); pip install 'wgpu==0.32.*'") from e
    try:
        return list(wgpu.gpu.enumerate_adapters_sync())
    except Exception:  # no loader / no driver: wgpu-native raises rather than returning []
        return []


def adapter_summary(adapter) -> dict:
    info = adapter.info
    return {
        "name": info.get("device") or info.get("description") or "?",
        "backend": info.get("backend_type", "?"),
        "type": info.get("adapter_type", "?"),
        "shader-f16": "shader-f16" in adapter.features,
        "subgroup": "subgroup" in adapter.features,
        "timestamp-query": "timestamp-query" in adapter.features,
        "max_storage_binding": int(adapter.limits["max-storage-buffer-binding-size"]),
    }


def _preference(adapter) -> tuple:
    info = adapter.info
    kind = {"DiscreteGPU": 0, "IntegratedGPU": 1, "VirtualGPU": 2, "Unknown": 3, "CPU": 4}
    gl = info.get("backend_type") == "OpenGL"  # wgpu lists GL twins of Vulkan adapters: last resort
    return (gl, kind.get(info.get("adapter_type"), 3))


def select_adapter(adapters: list | None = None):
    """The adapter WSVK_BACKEND/WSVK_ADAPTER select, or None for CPU torch.

    Raises ConfigError on bad values and NoAdapterError when wgpu is forced but nothing matches.
    """
    backend = backend_choice()
    wanted = os.environ.get("WSVK_ADAPTER", "").strip()
    if backend == "cpu":
        return None
    adapters = list_adapters() if adapters is None else adapters
    if wanted:
        if wanted.isdigit():
            idx = int(wanted)
            if idx >= len(adapters):
                raise ConfigError(
                    f"WSVK_ADAPTER={wanted} but there are {len(adapters)} adapters (run `python -m wsvk info`)"
                )
            chosen = adapters[idx]
        else:
            matches = [a for a in adapters if wanted.lower() in adapter_summary(a)["name"].lower()]
            if not matches:
                names = ", ".join(sorted({adapter_summary(a)["name"] for a in adapters})) or "none"
                raise ConfigError(f"WSVK_ADAPTER={wanted!r} matches no adapter (found: {names})")
            chosen = min(matches, key=_preference)
        if backend == "wgpu" or adapter_summary(chosen)["type"] != "CPU":
            return chosen
        return None  # auto never picks a software rasterizer: CPU torch is faster
    if not adapters:
        if backend == "wgpu":
            raise NoAdapterError(
                "WSVK_BACKEND=wgpu but wgpu found no GPU adapter: install a Vulkan/Metal/D3D12 driver "
                "(on Debian/Ubuntu without a GPU: apt-get install mesa-vulkan-drivers) or set WSVK_BACKEND=cpu"
            )
        return None
    chosen = min(adapters, key=_preference)
    if backend == "auto" and adapter_summary(chosen)["type"] == "CPU":
        return None
    return chosen


# ---------------------------------------------------------------- shaders


def shader_dir() -> Path:
    """shaders/ in a source checkout, wsvk/shaders inside an installed wheel."""
    here = Path(__file__).resolve().parent
    for cand in (here / "shaders", here.parent / "shaders"):
        if cand.is_dir():
            return cand
    raise WsvkError(f"cannot find the WGSL shaders next to {here} (broken install?)")


_SOURCES: dict[str, str] = {}


_INCLUDE = re.compile(r"^// #include (\w+)[ \t]*$", re.M)


def shader_source(name: str) -> str:
    """shaders/NAME.wgsl with each `// #include LIB` line replaced by shaders/lib/LIB.wgsl
    (WGSL has no includes; helpers shared by several kernel files live there)."""
    if name not in _SOURCES:
        path = shader_dir() / f"{name}.wgsl"
        if not path.is_file():
            raise WsvkError(f"no shader {path}")
        _SOURCES[name] = _INCLUDE.sub(lambda m: shader_source(f"lib/{m.group(1)}"), path.read_text())
    return _SOURCES[name]


# ---------------------------------------------------------------- GPU arrays


class GpuArray:
    """A contiguous array living in a GPU storage buffer (float32, float16, int32 or uint32)."""

    __slots__ = ("rt", "buffer", "shape", "dtype", "_owner", "__weakref__")

    def __init__(self, rt: Runtime, buffer, shape, dtype, owner=None):
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


def _bucket(nbytes: int) -> int:
    """Pool size class: at most 1/8 waste, multiples of 256 bytes."""
    n = max(256, -(-nbytes // 256) * 256)
    step = max(256, 1 << (n.bit_length() - 4))
    return -(-n // step) * step


class BufferPool:
    """Reuses storage buffers by size class; returns a GpuArray's buffer when it is collected."""

    def __init__(self, device, keep_bytes: int = 1 << 30):
        self.device = device
        self.free: dict[int, list] = {}
        self.free_bytes = 0
        self.keep_bytes = keep_bytes
        self.allocated_bytes = 0  # live + free, what the pool holds on the GPU
        self.lock = threading.Lock()

    def take(self, nbytes: int):
        size = _bucket(nbytes)
        with self.lock:
            stack = self.free.get(size)
            if stack:
                self.free_bytes -= size
                return stack.pop()
        with gpu_errors(f"allocating {size} bytes"):
            buf = self.device.create_buffer(size=size, usage=_STORAGE)
        with self.lock:
            self.allocated_bytes += size
        return buf

    def give(self, buf) -> None:
        size = buf.size
        with self.lock:
            if self.free_bytes + size > self.keep_bytes:
                self.allocated_bytes -= size
                buf.destroy()
                return
            self.free.setdefault(size, []).append(buf)
            self.free_bytes += size

    def clear(self) -> None:
        with self.lock:
            for stack in self.free.values():
                for buf in stack:
                    self.allocated_bytes -= buf.size
                    buf.destroy()
            self.free.clear()
            self.free_bytes = 0


# ---------------------------------------------------------------- runtime


class Runtime:
    """One wgpu device and everything cached on it. Get it with `get_runtime()`."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.info = adapter_summary(adapter)
        default_limits = limits_choice() == "default"
        features = [] if default_limits else [f for f in WANTED_FEATURES if f in adapter.features]
        limits = None if default_limits else {k: v for k, v in adapter.limits.items()}
        try:
            self.device = adapter.request_device_sync(
                label="wsvk", required_features=features, required_limits=limits
            )
        except Exception as e:
            raise GpuError(f"could not create a device on {self.info['name']}: {e}") from e
        self.features = frozenset(features)
        self.limits = dict(self.device.limits)
        self.queue = self.device.queue
        self.pool = BufferPool(self.device)
        self.lock = threading.RLock()
        self.stats = {"submits": 0, "dispatches": 0, "readbacks": 0, "uploads": 0}
        self._local = threading.local()  # the recorder open in each thread
        self.fault_after = fault_after()
        self.lost: str | None = None  # set once a fault was seen: every later GPU call fails fast
        self._pipelines: dict = {}
        self._bind_groups: OrderedDict = OrderedDict()
        self._staging: list = []  # free Readback buffers (see Readback)
        self._uniforms: OrderedDict = OrderedDict()

    def check_fault(self) -> None:
        """Fail fast after a fault; inject one when WSVK_FAULT_AFTER's count of submits is reached."""
        if self.lost is not None:
            raise GpuError(f"the GPU device is unusable after an earlier failure: {self.lost}")
        if self.fault_after is not None and self.stats["submits"] >= self.fault_after:
            self.lost = f"injected fault after {self.fault_after} submits (WSVK_FAULT_AFTER)"
            raise GpuError(f"GPU device lost: {self.lost}")

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

    @property
    def weight_dtype(self) -> np.dtype:
        """Storage type for transformer weights/activations under WSVK_PRECISION (math stays f32)."""
        choice = precision_choice()
        if choice == "f16" and not self.has_f16:
            raise ConfigError(f"WSVK_PRECISION=f16 but {self.info['name']} lacks shader-f16 (use auto or f32)")
        return np.dtype(np.float16 if choice == "f16" or (choice == "auto" and self.has_f16) else np.float32)

    @property
    def max_groups(self) -> int:
        return int(self.limits["max-compute-workgroups-per-dimension"])

    @property
    def max_binding(self) -> int:
        return int(self.limits["max-storage-buffer-binding-size"])

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
            if "f16" in aliases.values() and not self.has_f16:
                raise TypeError(f"float16 needs the shader-f16 feature, which {self.info['name']} lacks")
            header = ["enable f16;"] if "f16" in aliases.values() else []
            header += [f"alias {k} = {v};" for k, v in aliases.items()]
            lines = shader_source(shader).splitlines()
            if not subgroups:
                lines = [ln for ln in lines if not ln.rstrip().endswith("// [sg]")]
            module = self.device.create_shader_module(label=shader, code="\n".join(header + lines))
            stage = {"module": module, "entry_point": entry}
            if constants:
                stage["constants"] = {k: float(v) for k, v in constants.items()}
            pipe = self.device.create_compute_pipeline(label=f"{shader}:{entry}", layout="auto", compute=stage)
            self._pipelines[key] = pipe
        return pipe

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

    def write(self, arr: GpuArray, data) -> None:
        raw = np.ascontiguousarray(data, dtype=arr.dtype).reshape(-1).view(np.uint8)
        if raw.size % 4:
            raw = np.concatenate([raw, np.zeros(4 - raw.size % 4, np.uint8)])
        with self.lock, gpu_errors("uploading"):
            self.queue.write_buffer(arr.buffer, 0, raw)
            self.stats["uploads"] += 1

    def read(self, arr: GpuArray) -> np.ndarray:
        if self.recording:
            raise RuntimeError("cannot read a GpuArray while recording: its work is not submitted yet")
        nbytes = arr.nbytes
        padded = -(-nbytes // 4) * 4
        with self.lock, gpu_errors("reading back"):
            self.check_fault()
            raw = self.queue.read_buffer(arr.buffer, 0, max(4, padded))
            self.stats["readbacks"] += 1
        return np.frombuffer(raw, dtype=np.uint8)[:nbytes].view(arr.dtype).reshape(arr.shape).copy()

    def uniform(self, *values, fmt: str | None = None):
        """A small uniform buffer holding `values` (u32 for ints, f32 for floats), cached by content."""
        if fmt is None:
            fmt = "".join("f" if isinstance(v, float) else "I" for v in values)
        packed = np.zeros(-(-len(values) // 4) * 4, np.uint32)  # 16-byte multiple
        for i, (c, v) in enumerate(zip(fmt, values)):
            packed[i] = np.float32(v).view(np.uint32) if c == "f" else np.uint32(int(v) & 0xFFFFFFFF)
        key = packed.tobytes()
        buf = self._uniforms.get(key)
        if buf is None:
            buf = self.device.create_buffer(size=max(16, len(key)), usage=_UNIFORM)
            self.queue.write_buffer(buf, 0, packed)
            self._uniforms[key] = buf
            if len(self._uniforms) > 4096:
                self._uniforms.popitem(last=False)
        else:
            self._uniforms.move_to_end(key)
        return buf

    def bind_group(self, pipeline, resources):
        """A cached bind group (group 0) binding `resources` (GpuArray or raw buffers) at 0, 1, 2, ..."""
        bufs = [r.buffer if isinstance(r, GpuArray) else r for r in resources]
        key = (id(pipeline), tuple(id(b) for b in bufs))
        hit = self._bind_groups.get(key)
        if hit is not None:
            self._bind_groups.move_to_end(key)
            return hit[0]
        entries = [{"binding": i, "resource": {"buffer": b, "offset": 0, "size": b.size}} for i, b in enumerate(bufs)]
        group = self.device.create_bind_group(layout=pipeline.get_bind_group_layout(0), entries=entries)
        self._bind_groups[key] = (group, pipeline, bufs)  # holding the objects keeps their ids unique
        if len(self._bind_groups) > 4096:
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
        self.stats["submits"] += 1

    @property
    def recording(self) -> bool:
        return getattr(self._local, "recorder", None) is not None

    def run(self, pipeline, resources, groups) -> None:
        """One dispatch, submitted at once (the simple op-by-op path)."""
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


class Recorder:
    """Dispatches recorded into one compute pass (or one pass per dispatch when timing)."""

    def __init__(self, rt: Runtime, label: str, timestamps: bool):
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
        self.rt.stats["dispatches"] += 1

    def copy(self, src: GpuArray, dst: GpuArray, nbytes: int | None = None, src_offset=0, dst_offset=0) -> None:
        self._end_pass()
        n = src.nbytes if nbytes is None else nbytes
        self.encoder.copy_buffer_to_buffer(src.buffer, src_offset, dst.buffer, dst_offset, -(-n // 4) * 4)
        self._keep.append((src, dst))

    def read_after(self, arr: GpuArray) -> "Readback":
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
            resolve = rt.device.create_buffer(size=8 * n, usage=512 | 4)  # QUERY_RESOLVE | COPY_SRC
            self.encoder.resolve_query_set(self._query, 0, n, resolve, 0)
        rt.submit_commands(self.encoder)
        if resolve is not None:
            ticks = np.frombuffer(rt.queue.read_buffer(resolve), dtype=np.uint64).astype(np.float64)
            period = 1.0  # wgpu reports timestamps in nanoseconds
            self.gpu_ms = [(lab, (ticks[2 * i + 1] - ticks[2 * i]) * period * 1e-6)
                           for i, lab in enumerate(self.labels)]
        self._keep.clear()


class Readback:
    """A mappable copy of a GpuArray recorded by Recorder.read_after; read it once with numpy().
    Its buffer comes from, and goes back to, a small cache in the runtime: the smallest free one
    that is large enough (Vocos' waveform grows by a KiB per frame, so exact sizes would pile up),
    at most STAGING_KEEP buffers and STAGING_BYTES kept."""

    STAGING_KEEP = 2
    STAGING_BYTES = 64 << 20

    def __init__(self, rt: Runtime, arr: GpuArray):
        self.rt, self.shape, self.dtype, self.nbytes = rt, arr.shape, arr.dtype, arr.nbytes
        need = _bucket(arr.nbytes)
        with rt.lock:
            fits = [b for b in rt._staging if b.size >= need]
            self.buffer = min(fits, key=lambda b: b.size) if fits else None
            if self.buffer is not None:
                rt._staging.remove(self.buffer)
        if self.buffer is None:
            with gpu_errors(f"allocating a {need}-byte readback buffer"):
                self.buffer = rt.device.create_buffer(size=need, usage=_MAP_READ)

    def numpy(self) -> np.ndarray:
        rt, buf = self.rt, self.buffer
        if buf is None:
            raise RuntimeError("this readback was already read")
        if rt.recording:
            raise RuntimeError("cannot read back while recording: the copy is not submitted yet")
        with rt.lock, gpu_errors("reading back"):
            rt.check_fault()
            buf.map_sync(1)  # MapMode.READ: waits for the submit that holds the copy
            try:
                raw = np.frombuffer(buf.read_mapped(0, -(-self.nbytes // 4) * 4), dtype=np.uint8)[:self.nbytes].copy()
            finally:
                buf.unmap()
            rt.stats["readbacks"] += 1
            self.buffer = None
            cache = rt._staging
            cache.append(buf)
            cache.sort(key=lambda b: -b.size)  # keep the largest
            while len(cache) > self.STAGING_KEEP or sum(b.size for b in cache) > self.STAGING_BYTES:
                cache.pop().destroy()
        return raw.view(self.dtype).reshape(self.shape)


_RUNTIME: Runtime | None = None
_RUNTIME_LOCK = threading.Lock()


def get_runtime() -> Runtime:
    """The process-wide runtime on the selected adapter, created on first use.

    The kernels always run on an adapter: under `auto` they fall back to a software adapter
    (the router does not: it keeps models on CPU torch then). Raises NoAdapterError under
    WSVK_BACKEND=cpu or when wgpu finds nothing.
    """
    global _RUNTIME
    with _RUNTIME_LOCK:
        if _RUNTIME is None:
            adapter = select_adapter()
            if adapter is None and backend_choice() == "auto":
                # the kernels were asked for explicitly: a software adapter beats none at all
                adapters = list_adapters()
                adapter = min(adapters, key=_preference) if adapters else None
            if adapter is None:
                raise NoAdapterError(
                    "the GPU kernels are disabled by WSVK_BACKEND=cpu" if backend_choice() == "cpu" else
                    "wgpu found no GPU adapter: install a Vulkan/Metal/D3D12 driver (on Debian/Ubuntu "
                    "without a GPU: apt-get install mesa-vulkan-drivers) or set WSVK_BACKEND=cpu"
                )
            _RUNTIME = Runtime(adapter)
        return _RUNTIME


def gpu_available() -> bool:
    """True when the backend settings select an adapter (never raises)."""
    try:
        return select_adapter() is not None
    except WsvkError:
        return False


def reset_runtime() -> None:
    """Forget the process-wide runtime (tests that change WSVK_* variables)."""
    global _RUNTIME
    with _RUNTIME_LOCK:
        _RUNTIME = None
