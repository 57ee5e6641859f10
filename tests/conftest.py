"""Shared test set-up: GPU tests run on whatever adapter wgpu finds (lavapipe in CI).

Without an adapter, GPU tests skip with a reason; with WSVK_REQUIRE_ADAPTER=1 (CI) they fail.
"""

import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
os.environ.setdefault("WSVK_BACKEND", "wgpu")  # the kernels' tests want lavapipe too
# tuned plans from the user's cache (or from one test to the next) must not change what a test runs
os.environ["WSVK_CACHE_DIR"] = tempfile.mkdtemp(prefix="wsvk-test-cache-")
atexit.register(shutil.rmtree, os.environ["WSVK_CACHE_DIR"], ignore_errors=True)
os.environ.pop("WSVK_TUNE", None)
os.environ.pop("WSVK_PLAN", None)

from wsvk import gpu  # noqa: E402
from wsvk.errors import WsvkError  # noqa: E402
from wsvk.kernels.cases import rel_err  # noqa: E402,F401 (the one error function of the tests)

# fixtures shared by several test modules (helpers they share are plain modules: tiny_models,
# resident_helpers, serve_helpers)
pytest_plugins = ["fixtures_models", "fixtures_server"]

REQUIRE = os.environ.get("WSVK_REQUIRE_ADAPTER", "") not in ("", "0")
POISON = np.uint32(0x7FC0DEAD)  # a NaN with a payload: easy to spot, never produced by a kernel
GUARD_BYTES = 256


@pytest.fixture(scope="session")
def rt():
    """The runtime on the selected adapter, or a skip (a failure under WSVK_REQUIRE_ADAPTER)."""
    try:
        return gpu.get_runtime()
    except WsvkError as e:
        if REQUIRE:
            pytest.fail(f"WSVK_REQUIRE_ADAPTER is set but no adapter is usable: {e}")
        pytest.skip(f"no GPU adapter: {e}")


@pytest.fixture(autouse=True)
def _needs_f16(request):
    """Tests marked needs_f16 skip on an adapter without shader-f16 (or under WSVK_LIMITS=default)."""
    if request.node.get_closest_marker("needs_f16"):
        rt = request.getfixturevalue("rt")
        if not rt.has_f16:
            pytest.skip(f"{rt.info['name']} lacks shader-f16 (or WSVK_LIMITS=default turned it off)")


def case_params(table):
    """A case table (wsvk.kernels.cases) as pytest parameters: the f16 cases marked needs_f16, the
    benchmark-only "big" shapes left out (too slow for lavapipe)."""
    return [pytest.param(c, id=str(c), marks=[pytest.mark.needs_f16] if c.needs_f16 else [])
            for c in table if "big" not in c.tags]


@pytest.fixture(scope="module")
def f32_precision():
    """WSVK_PRECISION=f32 for a whole module: tests demanding identical tokens or float32 rounding
    against the CPU (auto picks f16 on adapters with shader-f16; tests/test_precision.py covers f16)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WSVK_PRECISION", "f32")
        yield


@pytest.fixture
def guard(rt, monkeypatch):
    """Every array allocated in the test gets a poisoned tail; `guard.check()` asserts it is intact."""
    arrays = []
    real_empty = gpu.Runtime.empty

    def guarded_empty(self, shape, dtype=np.float32):
        arr = real_empty(self, shape, dtype)
        nbytes = -(-arr.nbytes // 4) * 4
        tail = (arr.buffer.size - nbytes) // 4
        if tail < GUARD_BYTES // 4:  # make room: a bigger buffer, same logical shape
            arr = real_empty(self, (arr.nbytes + GUARD_BYTES,), np.uint8).reshape(-1)
            arr = gpu.GpuArray(self, arr.buffer, shape, dtype, owner=arr)
            tail = (arr.buffer.size - nbytes) // 4
        self.queue.write_buffer(arr.buffer, nbytes, np.full(tail, POISON, np.uint32))
        arrays.append((arr, nbytes, tail))
        return arr

    monkeypatch.setattr(gpu.Runtime, "empty", guarded_empty)

    class Guard:
        def check(self):
            for arr, start, tail in arrays:
                raw = np.frombuffer(rt.queue.read_buffer(arr.buffer, start, 4 * tail), np.uint32)
                bad = np.flatnonzero(raw != POISON)
                assert bad.size == 0, f"kernel wrote {bad.size} words past the end of a {arr.shape} output"

    g = Guard()
    yield g
    g.check()


def rand(shape, seed=0, dtype=np.float32, scale=1.0):
    """Seeded standard-normal data."""
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def rss_mb() -> float:
    """This process's resident memory now, in MB, after a collection (not ru_maxrss: a lifetime
    peak that an earlier test may have set hides any later growth below it)."""
    import gc

    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
