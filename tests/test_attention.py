"""attention.wgsl on its case table (torch's float64 SDPA as the reference, both kernels), and what a
table cannot say. torch 2.11 CPU returns 0 for fully masked rows (checked below), as the kernels do.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import case_params, rand, rel_err
from wsvk.kernels import cases
from wsvk.ops import attention

F32_BOUND = 3e-5
F16_BOUND = 2e-3
PATHS = ("prefill", "decode")


@pytest.mark.parametrize("case", case_params(cases.ATTENTION))
def test_case(rt, guard, case):
    err = case.run()
    if case.dtype == cases.F16:
        assert err > 0  # really rounded through f16 storage


def torch_ref(q, k, v, mask=None, causal=False):
    m = None if mask is None else torch.from_numpy(mask.astype(np.float64))
    t = lambda x: torch.from_numpy(np.asarray(x, dtype=np.float64))  # noqa: E731
    return F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=m, is_causal=causal).numpy()


def add_mask(shape, seed):
    m = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    m[np.random.default_rng(seed + 1).random(shape) < 0.3] = -np.inf
    return m


def test_broadcast_view_mask(rt, guard):
    q, k, v = rand((2, 2, 6, 8), 1), rand((2, 2, 10, 8), 2), rand((2, 2, 10, 8), 3)
    m = np.broadcast_to(add_mask((1, 1, 1, 10), 4), (2, 2, 6, 10))  # stride-0 view
    assert rel_err(attention(q, k, v, mask=m), torch_ref(q, k, v, m)) <= F32_BOUND


def test_empty_keys(rt):
    q = rand((1, 2, 3, 4), 0)
    out = attention(q, q[:, :, :0], q[:, :, :0], causal=True)
    assert out.shape == (1, 2, 3, 4) and not out.any()
    assert attention(q[:, :, :0], q, q).shape == (1, 2, 0, 4)


@pytest.mark.needs_f16
def test_f16_gpu_face_f16_mask(rt, guard):
    q, k, v = (rand((1, 2, n, 32), i, np.float16) for i, n in ((0, 3), (1, 90), (2, 90)))
    m = add_mask((1, 1, 3, 90), 3).astype(np.float16)
    for path in PATHS:
        out = attention(rt.upload(q), rt.upload(k), rt.upload(v), rt.upload(m), path=path)
        assert out.dtype == np.float16
        assert rel_err(out.numpy(), torch_ref(q, k, v, m)) <= F16_BOUND


@pytest.mark.parametrize("path", PATHS)
def test_grid_fold_small_limit(rt, guard, monkeypatch, path):
    # the prefill kernel past 65,535 real workgroups is too slow on lavapipe: fold at 5 instead
    monkeypatch.setitem(rt.limits, "max-compute-workgroups-per-dimension", 5)
    assert rt.grid(13) == (5, 3, 1)
    cases.attention((1, 13, 5, 300, 8, 8), path, mask="add", mask_shape=(13, 5, 300)).run()


def test_gpu_face(rt, guard):
    q, k, v = rand((1, 3, 1, 16), 5), rand((1, 3, 300, 16), 6), rand((1, 3, 300, 16), 7)
    m = add_mask((1, 1, 1, 300), 8)
    out = attention(rt.upload(q), rt.upload(k), rt.upload(v), mask=rt.upload(m))
    assert out.shape == (1, 3, 1, 16) and not isinstance(out, np.ndarray)
    assert rel_err(out.numpy(), torch_ref(q, k, v, m)) <= F32_BOUND
    chained = attention(out, rt.upload(k), rt.upload(v), causal=True)  # chains without readback
    assert rel_err(chained.numpy(), torch_ref(out.numpy(), k, v, causal=True)) <= F32_BOUND


def test_torch_fully_masked_rows_are_zero():
    # what the kernels mirror: torch 2.11 CPU gives 0 for fully masked rows (both mask kinds)
    q = torch.randn(1, 1, 3, 4, dtype=torch.float64)
    add = torch.zeros(3, 3, dtype=torch.float64)
    add[1] = -torch.inf
    boolean = torch.ones(3, 3, dtype=torch.bool)
    boolean[1] = False
    for m in (add, boolean):
        out = F.scaled_dot_product_attention(q, q, q, attn_mask=m)
        assert torch.all(out[0, 0, 1] == 0) and torch.all(torch.isfinite(out))


def test_errors(rt):
    q = rand((1, 2, 3, 8), 0)
    bad = [
        (ValueError, "batch/head", (q, rand((2, 2, 3, 8), 1), rand((2, 2, 3, 8), 1)), {}),
        (ValueError, "batch/head", (q, rand((1, 3, 3, 8), 1), rand((1, 3, 3, 8), 1)), {}),
        (ValueError, "head dim", (q, rand((1, 2, 3, 4), 1), q), {}),
        (ValueError, "keys", (q, q, rand((1, 2, 4, 8), 1)), {}),
        (ValueError, "4-D", (q[0], q[0], q[0]), {}),
        (ValueError, "4-D", (q[None], q[None], q[None]), {}),
        (ValueError, "broadcast", (q, q, q), {"mask": np.zeros((3, 4), np.float32)}),
        (ValueError, "broadcast", (q, q, q), {"mask": np.zeros((2, 2, 3, 3), np.float32)}),
        (ValueError, "dims", (q, q, q), {"mask": np.zeros((1, 1, 1, 3, 3), np.float32)}),
        (ValueError, "not both", (q, q, q), {"mask": np.zeros((3, 3), np.float32), "causal": True}),
        (ValueError, "head dims", (rand((1, 1, 2, 129), 0),) * 3, {}),
        (TypeError, "int32", (q.astype(np.int32), q, q), {}),
        (TypeError, "mask dtype", (q, q, q), {"mask": np.zeros((3, 3), np.int64)}),
        (TypeError, "mixed", (q, q.astype(np.float16), q), {}) if rt.has_f16 else
        (TypeError, "float16", (q, q.astype(np.float16), q), {}),
        (TypeError, "scale", (q, q, q), {"scale": "big"}),
    ]
    for exc, msg, args, kw in bad:
        with pytest.raises(exc, match=msg):
            attention(*args, **kw)
    with pytest.raises(TypeError, match="GpuArray mask"):
        attention(q, q, q, mask=rt.upload(np.zeros((3, 3), np.int32)))
