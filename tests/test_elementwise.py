"""elementwise.wgsl on its case table, and what a table cannot say."""

import numpy as np
import pytest

from conftest import case_params, rand
from wsvk import ops
from wsvk.kernels import cases


@pytest.mark.parametrize("case", case_params(cases.ELEMENTWISE))
def test_case(rt, guard, case):
    case.run()


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
