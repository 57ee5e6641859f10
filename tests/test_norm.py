"""norm.wgsl on its case table, and what a table cannot say."""

import numpy as np
import pytest
import torch

from conftest import case_params, rand
from wsvk import ops
from wsvk.kernels import cases


def ref_ln(x, w=None, b=None, eps=1e-5):
    t = torch.from_numpy(np.asarray(x, np.float64))
    return torch.nn.functional.layer_norm(
        t, t.shape[-1:], None if w is None else torch.from_numpy(w.astype(np.float64)),
        None if b is None else torch.from_numpy(b.astype(np.float64)), eps).numpy()


@pytest.mark.parametrize("case", case_params(cases.NORM))
def test_case(rt, guard, case):
    case.run()


def test_layer_norm_gpu_face_and_f16_output(rt):
    x, w, b = rand((4, 96), 4), rand(96, 5), rand(96, 6)
    g = ops.layer_norm(rt.upload(x), rt.upload(w), rt.upload(b), eps=1e-6)
    np.testing.assert_allclose(g.numpy(), ref_ln(x, w, b, 1e-6), atol=2e-5)
    if rt.has_f16:  # f32 in, f16 out (rounded once); the case table checks its values
        assert ops.layer_norm(x, w, b, out_dtype=np.float16).dtype == np.float16


def test_layer_norm_errors(rt):
    with pytest.raises(ValueError, match="both weight and bias"):
        ops.layer_norm(rand((2, 4)), rand(4))
    with pytest.raises(ValueError, match=r"weight shape \(3,\)"):
        ops.layer_norm(rand((2, 4)), rand(3), rand(3))
    with pytest.raises(ValueError, match="nothing to normalize"):
        ops.layer_norm(np.zeros((2, 0), np.float32))
    with pytest.raises(TypeError, match="int32"):
        ops.layer_norm(np.zeros((2, 3), np.int32))
    with pytest.raises(TypeError, match="float64"):
        ops.layer_norm(rand((2, 3)), out_dtype=np.float64)
