"""The runtime: adapter choice, errors, caches, the pool, `python -m wsvk info`, the wheel."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import REQUIRE, rand
from wsvk import gpu
from wsvk.errors import ConfigError, NoAdapterError
from wsvk.kernels.elementwise import PARAMS as AXPY

ROOT = Path(__file__).resolve().parents[1]
NO_DRIVERS = {  # hide every Vulkan ICD and the EGL vendor: wgpu then finds no adapter at all
    "VK_DRIVER_FILES": "/nonexistent.json", "VK_ICD_FILENAMES": "/nonexistent.json",
    "__EGL_VENDOR_LIBRARY_FILENAMES": "/nonexistent.json",
}


def run_py(*args, env=None, cwd=ROOT):
    full = {**os.environ, "XDG_RUNTIME_DIR": "/tmp", **(env or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=full, cwd=cwd, timeout=300)


class FakeAdapter:
    def __init__(self, name, kind="DiscreteGPU", backend="Vulkan"):
        self.info = {"device": name, "adapter_type": kind, "backend_type": backend}
        self.features = {"shader-f16"}
        self.limits = {"max-storage-buffer-binding-size": 1 << 30}


LAPTOP = [FakeAdapter("Intel UHD 620", "IntegratedGPU"), FakeAdapter("AMD Radeon RX 7600", "DiscreteGPU"),
          FakeAdapter("AMD Radeon RX 7600", "DiscreteGPU", "OpenGL"), FakeAdapter("llvmpipe", "CPU")]


@pytest.mark.parametrize("backend, adapter, expect", [
    ("auto", "", "AMD Radeon RX 7600"),      # discrete before integrated, Vulkan before GL
    ("wgpu", "intel", "Intel UHD 620"),      # case-insensitive substring
    ("auto", "0", "Intel UHD 620"),          # index as listed by `python -m wsvk info`
    ("auto", "2", "AMD Radeon RX 7600"),
    ("wgpu", "llvm", "llvmpipe"),            # a software adapter when wgpu is forced
    ("auto", "OpenGL", "AMD Radeon RX 7600"),  # a backend: its best adapter
    ("auto", "llvm", None),                  # ... but never under auto
    ("cpu", "", None),
])
def test_select_adapter(monkeypatch, backend, adapter, expect):
    monkeypatch.setenv("WSVK_BACKEND", backend)
    monkeypatch.setenv("WSVK_ADAPTER", adapter)
    chosen = gpu.select_adapter(LAPTOP)
    assert (chosen.info["device"] if chosen else None) == expect
    if adapter in ("2", "OpenGL"):
        assert chosen is LAPTOP[2]


def test_auto_skips_software_adapter(monkeypatch):
    monkeypatch.setenv("WSVK_BACKEND", "auto")
    monkeypatch.delenv("WSVK_ADAPTER", raising=False)
    assert gpu.select_adapter([FakeAdapter("llvmpipe", "CPU")]) is None
    assert gpu.select_adapter([]) is None
    monkeypatch.setenv("WSVK_BACKEND", "wgpu")
    with pytest.raises(NoAdapterError, match="mesa-vulkan-drivers.*WSVK_BACKEND=cpu"):
        gpu.select_adapter([])


@pytest.mark.parametrize("var, value, message", [
    ("WSVK_BACKEND", "cuda", "WSVK_BACKEND='cuda' is not valid; use one of: auto, wgpu, cpu"),
    ("WSVK_ADAPTER", "geforce", "WSVK_ADAPTER='geforce' matches no adapter (found: AMD Radeon RX 7600 (OpenGL), "
                                "AMD Radeon RX 7600 (Vulkan), Intel UHD 620 (Vulkan), llvmpipe (Vulkan))"),
    ("WSVK_ADAPTER", "9", "WSVK_ADAPTER=9 but there are 4 adapters"),
])
def test_bad_settings(monkeypatch, var, value, message):
    monkeypatch.setenv("WSVK_BACKEND", "auto")
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as e:
        gpu.select_adapter(LAPTOP)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("env, message", [
    ({"WSVK_BACKEND": "vulkan"}, "error: WSVK_BACKEND='vulkan' is not valid; use one of: auto, wgpu, cpu"),
    ({"WSVK_BACKEND": "wgpu", "WSVK_ADAPTER": "no-such-gpu"}, "error: WSVK_ADAPTER='no-such-gpu' matches no adapter"),
    ({"WSVK_BACKEND": "wgpu", **NO_DRIVERS}, "error: WSVK_BACKEND=wgpu but wgpu found no GPU adapter"),
    ({"WSVK_BACKEND": "cpu", "WSVK_PRECISION": "bf16"}, "error: WSVK_PRECISION='bf16' is not valid"),  # unread, checked
    ({"WSVK_LIMITS": "max"}, "error: WSVK_LIMITS='max' is not valid; use one of: adapter, default"),
    ({"WSVK_SLOTS": "x"}, "error: WSVK_SLOTS='x' is not valid; use an integer >= 1"),
])
def test_info_errors_are_one_line(env, message):
    r = run_py("-m", "wsvk", "info", env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().startswith(message), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_no_adapter_from_the_kernels():
    code = "import numpy as np, wsvk.ops as o; o.axpy(np.ones(3, np.float32), np.ones(3, np.float32))"
    r = run_py("-c", code, env={"WSVK_BACKEND": "wgpu", **NO_DRIVERS})
    assert r.returncode != 0 and "NoAdapterError: WSVK_BACKEND=wgpu but wgpu found no GPU adapter" in r.stderr


def test_info_names_the_adapter(rt):
    r = run_py("-m", "wsvk", "info", env={"WSVK_BACKEND": "wgpu"})
    assert r.returncode == 0, r.stderr
    assert "selected: [" in r.stdout and rt.info["name"] in r.stdout
    assert "backend=Vulkan" in r.stdout or "backend=Metal" in r.stdout or "backend=D3D12" in r.stdout


def test_ci_really_has_an_adapter(rt):
    """CI sets WSVK_REQUIRE_ADAPTER: the GPU tests must have run on a real wgpu device."""
    if not REQUIRE:
        pytest.skip("WSVK_REQUIRE_ADAPTER not set (only CI requires an adapter)")
    assert rt.info["backend"] in ("Vulkan", "Metal", "D3D12"), rt.info
    before = rt.stats["submits"]
    x = np.arange(5, dtype=np.float32)
    from wsvk import ops
    np.testing.assert_array_equal(ops.axpy(x, x, 2.0), 3 * x)  # real work on that device
    assert rt.stats["submits"] == before + 1


def test_pipeline_and_bind_group_caches(rt):
    p1 = rt.pipeline("elementwise", "axpy", aliases={"T": "f32"})
    assert rt.pipeline("elementwise", "axpy", aliases={"T": "f32"}) is p1
    a = rt.upload(rand(8))
    u = rt.uniform(AXPY, n=8, alpha=1.0)
    assert rt.uniform(AXPY, n=8, alpha=1.0) is u
    with pytest.raises(TypeError, match="missing"):
        rt.uniform(AXPY, n=8)
    assert rt.bind_group(p1, [a, a, a, u]) is rt.bind_group(p1, [a, a, a, u])


def test_pool_reuses_buffers(rt):
    for _ in range(3):  # warm the pool
        rt.upload(np.zeros(10_000, np.float32))
    before = rt.pool.allocated_bytes
    for i in range(200):
        arr = rt.upload(np.full(10_000, i, np.float32))
        assert arr.numpy()[-1] == i
        del arr
    assert rt.pool.allocated_bytes == before


def test_recorder_one_submit(rt):
    pipe = rt.pipeline("elementwise", "axpy", aliases={"T": "f32"})
    x = rt.upload(np.arange(300, dtype=np.float32))
    y = rt.empty((300,))
    z = rt.empty((300,))
    u = rt.uniform(AXPY, n=300, alpha=1.0)
    before = rt.stats["submits"]
    with rt.recorder(timestamps=True) as rec:
        rec.dispatch(pipe, [x, x, y, u], rt.grid(2), label="first")   # y = 2x
        rec.dispatch(pipe, [y, x, z, u], rt.grid(2), label="second")  # z = 3x
    assert rt.stats["submits"] == before + 1
    np.testing.assert_array_equal(z.numpy(), 3 * np.arange(300, dtype=np.float32))
    if rt.has_timestamps:
        assert [lab for lab, _ in rec.gpu_ms] == ["first", "second"]
        assert all(ms >= 0 for _, ms in rec.gpu_ms)


def test_read_after_in_the_same_submit(rt):
    """Recorder.read_after: the readback copy rides in the recorder's submit, odd sizes included,
    and its mappable buffer is reused by the next readback of that size."""
    pipe = rt.pipeline("elementwise", "axpy", aliases={"T": "f32"})
    x = rt.upload(np.arange(301, dtype=np.float32))
    u = rt.uniform(AXPY, n=301, alpha=1.0)
    got = []
    for _ in range(2):
        y = rt.empty((301,))
        before = dict(rt.stats)
        with rt.recorder() as rec:
            rec.dispatch(pipe, [x, x, y, u], rt.grid(2))  # y = 2x
            rb = rec.read_after(y)
            with pytest.raises(RuntimeError, match="not submitted"):
                rb.numpy()
        got.append(rb.buffer)
        out = rb.numpy()
        assert rt.stats["submits"] == before["submits"] + 1 and rt.stats["readbacks"] == before["readbacks"] + 1
        np.testing.assert_array_equal(out, 2 * np.arange(301, dtype=np.float32))
        assert out.shape == (301,) and out.dtype == np.float32
        with pytest.raises(RuntimeError, match="already read"):
            rb.numpy()
    assert got[0] is not None and got[0] is got[1]
    # readbacks of many sizes (Vocos' waveform grows with each frame) reuse a bounded cache
    for n in range(1000, 1400, 37):
        z = rt.upload(np.arange(n, dtype=np.float32))
        with rt.recorder() as rec:
            rb = rec.read_after(z)
        np.testing.assert_array_equal(rb.numpy(), np.arange(n, dtype=np.float32))
    assert len(rt.staging.free) <= 2
    free = list(rt.staging.free)
    with rt.recorder() as rec:
        rb = rec.read_after(rt.upload(np.ones(900, np.float32)))
    assert any(rb.buffer is b for b in free)  # a smaller readback takes a larger free buffer
    rb.numpy()
    h = rt.upload(np.arange(7, dtype=np.float16))  # 14 bytes: not a multiple of 4
    with rt.recorder() as rec:
        rb = rec.read_after(h)
    np.testing.assert_array_equal(rb.numpy(), np.arange(7, dtype=np.float16))


def test_grid_folds_past_the_limit(rt):
    m = rt.max_groups
    assert rt.grid(5) == (5, 1, 1)
    gx, gy, _ = rt.grid(3 * m + 1)
    assert gx <= m and gy <= m and gx * gy >= 3 * m + 1


@pytest.mark.slow
def test_wheel_carries_the_shaders(tmp_path, rt):
    """pip wheel . then install outside the source tree: a shader runs from inside the wheel."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    wheel = next(tmp_path.glob("wsvk-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "wsvk/shaders/elementwise.wgsl" in names and "wsvk/shaders/lib/gelu.wgsl" in names
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    code = ("import numpy as np, wsvk, wsvk.ops as o, wsvk.gpu.shaders as s; print(wsvk.__file__); "
            "print(s.shader_dir()); print(o.axpy(np.ones(5, np.float32), np.ones(5, np.float32), 2.0).tolist())")
    env = {"PYTHONPATH": str(site), "WSVK_BACKEND": "wgpu", "PYTHONSAFEPATH": "1"}
    out = run_py("-c", code, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(str(site)) and lines[1] == str(site / "wsvk" / "shaders")
    assert lines[2] == "[3.0, 3.0, 3.0, 3.0, 3.0]"


def test_ops_inside_a_recorder_share_one_submit(rt):
    from wsvk import ops
    x = rt.upload(np.arange(12, dtype=np.float32).reshape(3, 4))
    w = rt.upload(np.eye(4, dtype=np.float32))
    before = rt.stats["submits"]
    with rt.recorder() as rec:
        y = ops.linear(x, w)              # GPU face: recorded, not submitted
        z = ops.axpy(y, x, 1.0)
        with pytest.raises(RuntimeError, match="while recording"):
            z.numpy()
    assert rt.stats["submits"] == before + 1 and len(rec._keep) == 0
    np.testing.assert_array_equal(z.numpy(), 2 * np.arange(12, dtype=np.float32).reshape(3, 4))


@pytest.mark.parametrize("limits", ["adapter", "default"])
def test_selftest_passes(rt, limits):
    r = run_py("-m", "wsvk", "info", "--selftest", env={"WSVK_BACKEND": "wgpu", "WSVK_LIMITS": limits})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all kernels pass" in r.stdout and "FAIL" not in r.stdout
    assert r.stdout.count("PASS") >= 20
    assert all(f"PASS  resident {m}" in r.stdout for m in ("T2S", "S2A", "Vocos"))
    created = next(line for line in r.stdout.splitlines() if line.startswith("pipelines: "))
    assert int(created.split()[1]) >= 20 and float(created.split(" created in ")[1].split()[0]) > 0
    # a software adapter does not run the 8-bit gate (minutes there): SKIP, not PASS
    software = next(line for line in r.stdout.splitlines() if line.startswith("selftest on")).endswith(", CPU)")
    assert ("SKIP  gate q8" in r.stdout) == software and ("PASS  gate" in r.stdout) == (not software)


def test_selftest_prints_a_skipped_check_as_skip_and_still_passes(rt, monkeypatch):
    from types import SimpleNamespace

    from wsvk import selftest

    software_gate = selftest.gate_checks(SimpleNamespace(info={"type": "CPU"}))
    assert [c() for _, c in software_gate] == [(None, "not run on a software adapter (tests/test_precision.py runs it)")]
    monkeypatch.setattr(selftest.cases, "tagged", lambda tag: [])
    monkeypatch.setattr(selftest, "resident_cases", lambda rt: iter(()))
    fine, bad = ("fine", lambda: (True, "rel err 0")), ("bad", lambda: (False, "rel err 1"))
    for checks, ok, last in ((software_gate + [fine], True, "all kernels pass (1 check skipped)"),
                             ([fine], True, "all kernels pass"),
                             (software_gate + [bad], False, "SOME KERNELS FAIL")):  # a skip hides no failure
        monkeypatch.setattr(selftest, "gate_checks", lambda rt, checks=checks: checks)
        lines = []
        assert selftest.run(out=lines.append) is ok
        assert lines[-1] == last if ok else lines[-1].startswith(last)
        skips = [line for line in lines if line.startswith("  SKIP  gate q8")]
        assert len(skips) == (len(checks) - 1) and all("not run on a software adapter" in x for x in skips)
        assert not any("PASS  gate" in line for line in lines)


SUBGROUP_PROBE = """
import numpy as np, wgpu
from wsvk.gpu import get_runtime
rt = get_runtime()
assert rt.has_subgroups
code = '''@group(0) @binding(0) var<storage, read_write> o: array<u32>;
@compute @workgroup_size(256) fn main(@builtin(subgroup_size) s: u32, @builtin(local_invocation_index) i: u32) {
    o[i] = s;
}'''
pipe = rt.device.create_compute_pipeline(layout="auto", compute={
    "module": rt.device.create_shader_module(code=code), "entry_point": "main"})
buf = rt.device.create_buffer(size=1024, usage=wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC)
group = rt.device.create_bind_group(layout=pipe.get_bind_group_layout(0),
                                    entries=[{"binding": 0, "resource": {"buffer": buf}}])
enc = rt.device.create_command_encoder()
cpass = enc.begin_compute_pass()
cpass.set_pipeline(pipe)
cpass.set_bind_group(0, group)
cpass.dispatch_workgroups(1)
cpass.end()
rt.device.queue.submit([enc.finish()])
print(*sorted(set(np.frombuffer(rt.device.queue.read_buffer(buf), np.uint32).tolist())))
"""


@pytest.mark.parametrize("width,size", [(128, 4), (512, 16)])
def test_selftest_passes_at_other_subgroup_sizes(rt, width, size):
    """GPUs run subgroups of 8 to 64 invocations (Intel 8-32, NVIDIA, Apple and AMD RDNA 32, AMD
    GCN 64), and the subgroup reductions must not assume one. lavapipe's subgroups are as wide as
    its vectors (8 lanes of 256 bits by default); LP_NATIVE_VECTOR_WIDTH makes them 4 (the fewest
    WebGPU allows: the most subgroup slots in wg_sums) and 16. The probe shows the size took."""
    if "llvmpipe" not in rt.info["name"]:
        pytest.skip(f"LP_NATIVE_VECTOR_WIDTH sets lavapipe's subgroup size, not {rt.info['name']}'s")
    # Mesa's shader cache keys ignore the width: a pipeline built at another width would come back
    env = {"WSVK_BACKEND": "wgpu", "WSVK_LIMITS": "adapter", "LP_NATIVE_VECTOR_WIDTH": str(width),
           "MESA_SHADER_CACHE_DISABLE": "true"}
    probe = run_py("-c", SUBGROUP_PROBE, env=env)
    assert probe.returncode == 0 and probe.stdout.split() == [str(size)], probe.stdout + probe.stderr
    r = run_py("-m", "wsvk", "info", "--selftest", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all kernels pass" in r.stdout and "FAIL" not in r.stdout
    assert all(f"PASS  resident {m}" in r.stdout for m in ("T2S", "S2A", "Vocos"))
    created = next(line for line in r.stdout.splitlines() if line.startswith("pipelines: "))
    assert int(created.split()[1]) >= 20 and float(created.split(" created in ")[1].split()[0]) > 0


def test_vulkan_memory_struct_and_adapter_matching():
    """VkPhysicalDeviceMemoryProperties as the Vulkan headers lay it out on 64-bit platforms (the
    heaps start at 264, 8-byte aligned); only device-local heaps count; an adapter is found by its
    ids, then by its name, and not at all when the match is ambiguous or it is not Vulkan."""
    import ctypes

    from wsvk.gpu import vram

    M = vram.MemoryProperties
    assert (ctypes.sizeof(M), M.memoryHeapCount.offset, M.memoryHeaps.offset) == (520, 260, 264)
    mem = M(memoryHeapCount=3)
    mem.memoryHeaps[0] = vram.MemoryHeap(24 << 30, vram.HEAP_DEVICE_LOCAL)   # VRAM
    mem.memoryHeaps[1] = vram.MemoryHeap(64 << 30, 0)                        # host memory
    mem.memoryHeaps[2] = vram.MemoryHeap(256 << 20, vram.HEAP_DEVICE_LOCAL)  # the BAR window
    mem.memoryHeaps[3] = vram.MemoryHeap(1 << 40, vram.HEAP_DEVICE_LOCAL)    # past the count
    assert vram.device_local_bytes(mem) == (24 << 30) + (256 << 20)
    devices = ((0x1002, 0x7480, "AMD Radeon RX 7600", 8 << 30), (0x10DE, 0x2335, "NVIDIA H200", 141 << 30),
               (0x10DE, 0x2335, "NVIDIA H200", 141 << 30), (0x10005, 0, "llvmpipe A", 2 << 30),
               (0x10005, 0, "llvmpipe B", 4 << 30))

    def info(vendor, device, name, backend="Vulkan"):
        return {"vendor_id": vendor, "device_id": device, "device": name, "backend_type": backend}

    assert vram.device_memory(info(0x1002, 0x7480, "AMD Radeon RX 7600 (RADV NAVI33)"), devices) == 8 << 30
    assert vram.device_memory(info(0x10DE, 0x2335, "NVIDIA H200"), devices) == 141 << 30  # two alike
    assert vram.device_memory(info(0x10005, 0, "llvmpipe B"), devices) == 4 << 30          # by name
    assert vram.device_memory(info(0x10005, 0, "llvmpipe C"), devices) is None             # ambiguous
    assert vram.device_memory(info(0x8086, 0x56A0, "Intel Arc A770"), devices) is None     # not listed
    assert vram.device_memory(info(0x1002, 0x7480, "AMD Radeon RX 7600", "Metal"), devices) is None


def test_adapter_memory_from_vulkan(rt):
    """Vulkan says how much device-local memory the adapter has (wgpu does not); info prints it."""
    if rt.info["backend"] != "Vulkan":
        assert rt.info["memory"] is None
        return
    assert isinstance(rt.info["memory"], int) and rt.info["memory"] >= 256 << 20
    r = run_py("-m", "wsvk", "info", env={"WSVK_BACKEND": "wgpu"})
    assert f"memory: {rt.info['memory'] / 2**30:.1f} GiB" in r.stdout, r.stdout


GiB = 1 << 30


@pytest.mark.parametrize("kind, memory, fit, env, weights, host, expect", [
    ("DiscreteGPU", 141 * GiB, None, None, 0, None, 16),  # a large GPU: the cap
    ("DiscreteGPU", 8 * GiB, None, None, 0, None, 8),     # half of 8 GiB over 0.5 GiB a slot
    ("DiscreteGPU", 8 * GiB, None, None, 6 * GiB, None, 2),  # what 0.9 of it leaves after the weights
    ("DiscreteGPU", 3 * GiB, None, None, 0, None, 3),
    ("DiscreteGPU", 512 << 20, None, None, 0, None, 1),   # never fewer than one
    ("DiscreteGPU", None, None, None, 0, None, 8),        # memory unknown (Metal, D3D12)
    ("IntegratedGPU", 256 << 20, None, None, 0, 16 * GiB, 8),  # half the host's memory (the carve-out says little): the cap
    ("IntegratedGPU", 32 * GiB, None, None, GiB, 4 * GiB, 2),  # half of 4 GiB after 1 GiB of weights
    ("IntegratedGPU", 32 * GiB, None, None, 2 * GiB, 4 * GiB, 0),  # none: the caller says what fits
    ("IntegratedGPU", 32 * GiB, None, None, GiB, None, 4),     # the host's memory unknown
    ("CPU", None, None, None, 0, 16 * GiB, 4),                # a software adapter
    ("DiscreteGPU", 141 * GiB, 5, None, 0, None, 5),      # one KV-cache binding holds 5
    ("DiscreteGPU", GiB, None, "12", 0, None, 12),        # WSVK_SLOTS decides
])
def test_default_slots_by_memory(monkeypatch, kind, memory, fit, env, weights, host, expect):
    from types import SimpleNamespace

    from wsvk.tts import stages

    if env is None:
        monkeypatch.delenv("WSVK_SLOTS", raising=False)
    else:
        monkeypatch.setenv("WSVK_SLOTS", env)
    monkeypatch.setattr(stages, "host_memory", lambda: host)
    fake = SimpleNamespace(info={"type": kind, "memory": memory})
    assert stages.default_slots(fake, 512 << 20, fit, weights) == expect
