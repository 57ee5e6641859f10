"""Adapter choice: which of wgpu's adapters wsvk uses (WSVK_BACKEND, WSVK_ADAPTER)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading

from .. import config
from ..errors import ConfigError, NoAdapterError
from .vram import device_memory

FEATURES = ("shader-f16", "subgroup", "timestamp-query")  # the optional features wsvk uses
NO_ADAPTER_HINT = ("install a Vulkan/Metal/D3D12 driver (on Debian/Ubuntu without a GPU: "
                   "apt-get install mesa-vulkan-drivers) or set WSVK_BACKEND=cpu")


_adapters: list | None = None  # listed once per process: each listing loads and probes every driver
_adapters_lock = threading.Lock()


def list_adapters() -> list:
    """Every adapter wgpu finds, in its own order (the indices WSVK_ADAPTER takes)."""
    global _adapters
    with _adapters_lock:
        if _adapters is None:
            _adapters = _enumerate()
        return list(_adapters)


def _enumerate() -> list:
    quiet_runtime_dir()
    try:
        import wgpu
    except ImportError as e:  # pragma: no cover - wgpu is a hard dependency
        raise NoAdapterError(f"the wgpu package is not importable ({e}); pip install 'wgpu==0.32.*'") from e
    try:
        return list(wgpu.gpu.enumerate_adapters_sync())
    except Exception:  # no loader / no driver: wgpu-native raises rather than returning []
        return []


def quiet_runtime_dir() -> None:
    """Mesa's drivers print "error: XDG_RUNTIME_DIR is invalid or not set in the environment." four
    times per adapter listing where that variable names no folder (a headless server, a container,
    ssh without a login session; a Ray actor on another node). Hiding the GL backend does not stop
    them, a folder does: give this process a private one (0700, removed at exit) before any driver loads."""
    if not os.path.isdir(os.environ.get("XDG_RUNTIME_DIR") or "/nonexistent"):
        path = tempfile.mkdtemp(prefix="wsvk-runtime-")
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        os.environ["XDG_RUNTIME_DIR"] = path


def adapter_summary(adapter) -> dict:
    info = adapter.info
    return {
        "name": info.get("device") or info.get("description") or "?",
        "backend": info.get("backend_type", "?"),
        "type": info.get("adapter_type", "?"),
        "driver": info.get("description", ""),  # the driver's name and version, where the backend says
        **{f: f in adapter.features for f in FEATURES},
        "max_storage_binding": int(adapter.limits["max-storage-buffer-binding-size"]),
        "memory": device_memory(info),  # device-local bytes, None where Vulkan does not say
    }


def preference(adapter) -> tuple:
    """Sort key, best first: not OpenGL, then discrete > integrated > virtual > unknown > CPU."""
    info = adapter.info
    kind = {"DiscreteGPU": 0, "IntegratedGPU": 1, "VirtualGPU": 2, "Unknown": 3, "CPU": 4}
    gl = info.get("backend_type") == "OpenGL"  # wgpu lists GL twins of Vulkan adapters: last resort
    return (gl, kind.get(info.get("adapter_type"), 3))


def _is_software(adapter) -> bool:
    return adapter_summary(adapter)["type"] == "CPU"


def select_adapter(adapters: list | None = None):
    """The adapter WSVK_BACKEND/WSVK_ADAPTER select for models, or None for CPU torch.

    `auto` never picks a software rasterizer (CPU torch is faster than lavapipe). Raises
    ConfigError on bad values and NoAdapterError when wgpu is forced but nothing matches.
    """
    backend, wanted = config.backend(), config.adapter()
    if backend == "cpu":
        return None
    adapters = list_adapters() if adapters is None else adapters
    if wanted:
        if wanted.isdigit():
            idx = int(wanted)
            if idx >= len(adapters):
                raise ConfigError(
                    f"WSVK_ADAPTER={wanted} but there are {len(adapters)} adapters (run `python -m wsvk info`)")
            chosen = adapters[idx]
        else:
            found = [(a, adapter_summary(a)) for a in adapters]  # part of a name, or a backend (vulkan, opengl)
            w = wanted.lower()
            matches = [a for a, s in found if w in s["name"].lower() or w == s["backend"].lower()]
            if not matches:
                names = ", ".join(sorted({f"{s['name']} ({s['backend']})" for _, s in found})) or "none"
                raise ConfigError(f"WSVK_ADAPTER={wanted!r} matches no adapter (found: {names})")
            chosen = min(matches, key=preference)
        return chosen if backend == "wgpu" or not _is_software(chosen) else None
    if not adapters:
        if backend == "wgpu":
            raise NoAdapterError(f"WSVK_BACKEND=wgpu but wgpu found no GPU adapter: {NO_ADAPTER_HINT}")
        return None
    chosen = min(adapters, key=preference)
    return None if backend == "auto" and _is_software(chosen) else chosen


def adapter_for_kernels():
    """The adapter the kernels run on: the selected one, else (under auto) the best one wgpu
    has, software included (the kernels were asked for explicitly: a software adapter beats
    none). Raises NoAdapterError under WSVK_BACKEND=cpu or when wgpu finds nothing."""
    adapter = select_adapter()
    if adapter is None and config.backend() == "auto":
        adapters = list_adapters()
        adapter = min(adapters, key=preference) if adapters else None
    if adapter is None:
        raise NoAdapterError("the GPU kernels are disabled by WSVK_BACKEND=cpu" if config.backend() == "cpu"
                             else f"wgpu found no GPU adapter: {NO_ADAPTER_HINT}")
    return adapter
