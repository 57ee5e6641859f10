"""FFT family against numpy.fft in float64: bound 5e-6 * max(1, log2 n) relative L2 error."""

import importlib
import math

import numpy as np
import pytest

from conftest import rand, rel_err

# the module itself (wsvk.ops re-exports the function `fft` under the same name)
F = importlib.import_module("wsvk.ops.fft")

NP = {"fft": np.fft.fft, "ifft": np.fft.ifft, "rfft": np.fft.rfft, "irfft": np.fft.irfft}


def bound(n):
    return 5e-6 * max(1.0, math.log2(max(n, 1)))


def spectrum(shape, seed):
    return rand(shape, seed).astype(np.float64) + 1j * rand(shape, seed + 100)


def case(op, shape, n=None, cplx=None, seed=0):
    """Run wsvk's `op` and numpy's on seeded data of `shape`; assert the bound; return the error."""
    cplx = op in ("fft", "ifft", "irfft") if cplx is None else cplx
    x = spectrum(shape, seed) if cplx else rand(shape, seed).astype(np.float64)
    got = getattr(F, op)(x, n)
    ref = NP[op](x, n)
    assert got.dtype == (np.float32 if op == "irfft" else np.complex64)
    err = rel_err(got, ref)
    length = ref.shape[-1] if op != "rfft" else (n or shape[-1])
    assert err <= bound(length), f"{op}{shape} n={n}: relative L2 error {err:.3g} > {bound(length):.3g}"
    return err


@pytest.fixture
def global_path(monkeypatch):
    """Run every length through the one-dispatch-per-stage global-memory path."""
    monkeypatch.setattr(F, "_FORCE_GLOBAL", True)


SMOOTH = [1, 2, 3, 4, 5, 6, 8, 12, 16, 32, 64, 100, 128, 256, 320, 400, 512, 960, 1000, 1024, 1280, 2048, 4096]
OTHER = [7, 14, 17, 22, 101, 998, 1009]  # Bluestein (primes, composites with a prime factor > 5)


@pytest.mark.parametrize("n", SMOOTH + OTHER + [8192])
def test_fft(rt, guard, n):
    case("fft", (2, n))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 12, 17, 400, 1009, 1280])
def test_ifft(rt, guard, n):
    case("ifft", (2, n))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 14, 22, 17, 100, 101, 320, 400, 998, 1009, 1280, 2048, 8192])
def test_rfft(rt, guard, n):
    case("rfft", (3, n))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 9, 14, 22, 100, 101, 400, 998, 1280, 2047, 8192])
def test_irfft(rt, guard, n):
    case("irfft", (3, n // 2 + 1), n)


def test_fft_real_input(rt, guard):
    case("fft", (4, 96), cplx=False)
    case("ifft", (4, 35), cplx=False)
    case("fft", (2, 10), 16, cplx=False)
    case("fft", (2, 30), 17, cplx=False)


def test_rows_past_one_grid_dimension(rt, guard):
    case("fft", (70000, 3))


def test_batch_dims(rt, guard):
    case("fft", (3, 5, 400))
    case("ifft", (3, 5, 14))
    case("rfft", (3, 5, 320))
    case("irfft", (3, 5, 17))
    case("fft", (2, 1, 3, 7))


@pytest.mark.parametrize("op,m,n", [
    ("fft", 10, 16), ("fft", 16, 10), ("fft", 300, 1280), ("fft", 1300, 1280), ("ifft", 5, 9),
    ("ifft", 40, 11), ("rfft", 7, 12), ("rfft", 12, 7), ("rfft", 1280, 1000), ("rfft", 300, 1001),
    ("irfft", 641, 1280), ("irfft", 641, 1000), ("irfft", 100, 1280), ("irfft", 5, 11), ("irfft", 9, 7),
    ("irfft", 3, 2), ("irfft", 1, 1), ("irfft", 2, 1), ("irfft", 4, 3),
])
def test_pad_crop(rt, guard, op, m, n):
    case(op, (2, m), n)


def test_irfft_default_n(rt):
    assert F.irfft(spectrum((2, 9), 0)).shape == (2, 16)
    case("irfft", (2, 9))
    case("irfft", (3, 2))


def test_irfft_ignores_dc_and_nyquist_imag(rt):
    x = spectrum((2, 6), 3)  # Im of bin 0 and bin 5 (Nyquist of n=10) are not zero here
    for n in (10, 9, 11):
        assert rel_err(F.irfft(x, n), np.fft.irfft(x, n)) <= bound(n)


@pytest.mark.parametrize("n", [1, 2, 7, 8, 15, 400, 1009, 1280])
def test_round_trip(rt, guard, n):
    x = rand((3, n), n)
    assert rel_err(F.irfft(F.rfft(x), n), x) <= 2 * bound(n)
    z = spectrum((3, n), n)
    assert rel_err(F.ifft(F.fft(z)), z) <= 2 * bound(n)


def test_vocos_istft_shapes(rt, guard):
    """Vocos' ISTFT head: irfft of 641 bins to n_fft 1280, a few frames and a batch of ~100."""
    case("irfft", (2, 641), 1280)
    case("irfft", (1, 100, 641), 1280)


def test_one_dispatch_for_a_batch(rt):
    """A row that fits in workgroup memory: all stages of a whole batch in one dispatch."""
    x = spectrum((50, 641), 1)
    for fn, n in ((F.irfft, 1280), (F.fft, 1280), (F.fft, 998), (F.rfft, 400)):
        arg = x.real if fn is F.rfft else x
        before = rt.stats["dispatches"]
        fn(arg, n)
        assert rt.stats["dispatches"] - before == 1


def test_workgroup_path_fits_webgpu_defaults(rt):
    """With the WebGPU default limits (16 KiB, 256 threads) every smooth n <= 2048 runs in one dispatch."""
    class Defaults:
        limits = {"max-compute-workgroup-storage-size": 16384, "max-compute-invocations-per-workgroup": 256,
                  "max-compute-workgroup-size-x": 256}
    for n in [2, 3, 5, 320, 400, 640, 960, 1000, 1280, 1536, 2000, 2048]:
        threads, regs, row = F._plan(rt, "c", n)._workgroup_shape(Defaults)
        assert threads <= 256 and regs <= F._MAX_REGS and n <= row <= 2048
    assert F._plan(rt, "c", 2187)._workgroup_shape(Defaults) is None  # 3^7: global memory


@pytest.mark.parametrize("op,n", [("fft", 2), ("fft", 1280), ("fft", 1009), ("ifft", 400), ("ifft", 101),
                                  ("rfft", 1280), ("rfft", 998), ("rfft", 15), ("irfft", 1280),
                                  ("irfft", 22), ("irfft", 1009)])
def test_global_path(rt, guard, global_path, op, n):
    m = n // 2 + 1 if op == "irfft" else n
    case(op, (3, m), n)


def test_long_bluestein(rt, guard):
    """A prime whose Bluestein length exceeds workgroup memory on most adapters."""
    case("fft", (1, 4099))
    case("irfft", (1, 2051), 4099)


def test_gpu_face(rt, guard):
    z = spectrum((2, 3, 400), 5).astype(np.complex64)
    g = rt.upload(z.view(np.float32).reshape(2, 3, 400, 2))
    spec = F.fft(g)
    assert spec.shape == (2, 3, 400, 2) and not isinstance(spec, np.ndarray)
    got = spec.numpy().view(np.complex64)[..., 0]
    assert rel_err(got, np.fft.fft(z.astype(np.complex128))) <= bound(400)
    back = F.ifft(spec, 400)  # chained without a readback
    assert rel_err(back.numpy().view(np.complex64)[..., 0], z) <= 2 * bound(400)

    x = rand((4, 1280), 6)
    half = F.rfft(rt.upload(x))
    assert half.shape == (4, 641, 2)
    assert rel_err(half.numpy().view(np.complex64)[..., 0], np.fft.rfft(x.astype(np.float64))) <= bound(1280)
    wave = F.irfft(half, 1280)
    assert wave.shape == (4, 1280) and wave.dtype == np.float32
    assert rel_err(wave.numpy(), x) <= 2 * bound(1280)


def test_bad_inputs(rt):
    x = spectrum((2, 8), 0)
    for fn in (F.fft, F.ifft, F.rfft, F.irfft):
        arg = x.real if fn is F.rfft else x
        with pytest.raises(ValueError, match="n=0"):
            fn(arg, 0)
        with pytest.raises(ValueError, match="n=-3"):
            fn(arg, -3)
        with pytest.raises(TypeError, match="integer"):
            fn(arg, 4.5)
        with pytest.raises(ValueError, match="empty"):
            fn(np.zeros((3, 0)))
        with pytest.raises(ValueError, match="empty"):
            fn(np.zeros((0, 4)))
        with pytest.raises(ValueError, match="dimension"):
            fn(np.float32(1.0))
        with pytest.raises(TypeError, match="float16"):
            fn(np.zeros(8, np.float16))
        with pytest.raises(TypeError, match="not supported"):
            fn(np.array(["a", "b"]))
    with pytest.raises(TypeError, match="real"):
        F.rfft(x)
    with pytest.raises(ValueError, match="n=0"):
        F.irfft(np.ones((2, 1), np.complex64))  # default n = 2 * (1 - 1)
    with pytest.raises(TypeError, match="float16"):
        F.fft(rt.upload(np.zeros((4, 2), np.float16)))
    with pytest.raises(TypeError, match="float32 only"):
        F.fft(rt.upload(np.zeros((4, 2), np.int32)))
    with pytest.raises(ValueError, match=r"\(\.\.\., n, 2\)"):
        F.fft(rt.upload(np.zeros((4, 3), np.float32)))
    with pytest.raises(ValueError, match=r"\(\.\.\., n, 2\)"):
        F.irfft(rt.upload(np.zeros(4, np.float32)))
    with pytest.raises(TypeError, match="GpuArray"):
        F.fft("abc")


def test_ints_and_float64_accepted(rt):
    x = np.arange(12)
    assert rel_err(F.fft(x), np.fft.fft(x)) <= bound(12)
    assert rel_err(F.rfft(x.astype(np.float64)), np.fft.rfft(x)) <= bound(12)
    assert rel_err(F.fft(list(range(5))), np.fft.fft(np.arange(5))) <= bound(5)
