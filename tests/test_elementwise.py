import numpy as np
import pytest

from wsvk import ops
from conftest import check, rand


@pytest.mark.parametrize("n", [1, 255, 256, 1001, 70000 * 256 + 3])
def test_axpy(rt, guard, n):
    a, b = rand(n, 1), rand(n, 2)
    check(lambda a, b: ops.axpy(a, b, 0.5), lambda a, b: a.astype(np.float64) + 0.5 * b, 1e-7, a, b)


def test_axpy_gpu_face(rt):
    a = rt.upload(rand(10, 3))
    out = ops.axpy(a, a, 1.0)
    assert out.shape == (10,) and not isinstance(out, np.ndarray)
    np.testing.assert_allclose(out.numpy(), 2 * a.numpy())


def test_axpy_errors(rt):
    with pytest.raises(ValueError, match="shapes"):
        ops.axpy(np.zeros(3, np.float32), np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="int64"):
        ops.axpy(np.zeros(3, np.int64), np.zeros(3, np.int64))
