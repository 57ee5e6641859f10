"""fft.wgsl on its case table (numpy.fft in float64: bound 5e-6 * max(1, log2 n) relative L2), and
what a table cannot say."""

import math

import numpy as np
import pytest

from conftest import case_params, rand, rel_err
from wsvk import ops
from wsvk.kernels import cases
from wsvk.kernels import fft as F


def bound(n):
    return 5e-6 * max(1.0, math.log2(max(n, 1)))


def spectrum(shape, seed):
    return rand(shape, seed).astype(np.float64) + 1j * rand(shape, seed + 100)


@pytest.mark.parametrize("case", case_params(cases.FFT))
def test_case(rt, guard, case):
    case.run()


def test_output_dtypes(rt):
    x = rand((2, 8), 0)
    assert ops.fft(x).dtype == ops.ifft(x).dtype == ops.rfft(x).dtype == np.complex64
    assert ops.irfft(spectrum((2, 5), 1)).dtype == np.float32


def test_irfft_default_n(rt):
    assert ops.irfft(spectrum((2, 9), 0)).shape == (2, 16)


def test_irfft_ignores_dc_and_nyquist_imag(rt):
    x = spectrum((2, 6), 3)  # Im of bin 0 and bin 5 (Nyquist of n=10) are not zero here
    for n in (10, 9, 11):
        assert rel_err(ops.irfft(x, n), np.fft.irfft(x, n)) <= bound(n)


@pytest.mark.parametrize("n", [1, 2, 7, 8, 15, 400, 1009, 1280])
def test_round_trip(rt, guard, n):
    x = rand((3, n), n)
    assert rel_err(ops.irfft(ops.rfft(x), n), x) <= 2 * bound(n)
    z = spectrum((3, n), n)
    assert rel_err(ops.ifft(ops.fft(z)), z) <= 2 * bound(n)


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
