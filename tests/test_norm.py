import numpy as np
import pytest
import torch

from wsvk import ops
from conftest import check, rand


def ref_ln(x, w=None, b=None, eps=1e-5):
    t = torch.from_numpy(np.asarray(x, np.float64))
    return torch.nn.functional.layer_norm(
        t, t.shape[-1:], None if w is None else torch.from_numpy(w.astype(np.float64)),
        None if b is None else torch.from_numpy(b.astype(np.float64)), eps).numpy()


@pytest.mark.parametrize("shape", [(1,), (3, 1), (2, 7), (5, 384), (3, 4, 1000), (1, 1027), (70_000, 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(rt, guard, shape, affine):
    x = rand(shape, 1) + 3.0  # an offset mean: the centred variance must keep precision
    w, b = (rand(shape[-1], 2), rand(shape[-1], 3)) if affine else (None, None)
    check(lambda x: ops.layer_norm(x, w, b), lambda x: ref_ln(x, w, b), 2e-6, x)


def test_layer_norm_f16_and_gpu_face(rt):
    x, w, b = rand((4, 96), 4), rand(96, 5), rand(96, 6)
    g = ops.layer_norm(rt.upload(x), rt.upload(w), rt.upload(b), eps=1e-6)
    np.testing.assert_allclose(g.numpy(), ref_ln(x, w, b, 1e-6), atol=2e-5)
    if not rt.has_f16:
        pytest.skip("adapter lacks shader-f16")
    check(lambda x: ops.layer_norm(x.astype(np.float16), w.astype(np.float16), b.astype(np.float16)),
          lambda x: ref_ln(x, w, b), 2e-3, x)
    half = ops.layer_norm(x, w, b, out_dtype=np.float16)  # f32 in, f16 out (rounded once)
    assert half.dtype == np.float16
    check(lambda x: half, lambda x: ref_ln(x, w, b), 5e-4, x)


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
