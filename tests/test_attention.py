"""attention() against torch's float64 scaled_dot_product_attention, on both kernels.

Fully masked rows: torch 2.11 CPU returns 0 for a row whose additive mask is all -inf and
for a boolean all-False row (checked in test_torch_fully_masked_rows_are_zero), so the
reference below is plain torch and `check` also compares where the results are finite.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import check, rand, rel_err
from wsvk.ops.attention import _attention, attention

F32_BOUND = 3e-5
F16_BOUND = 2e-3
PATHS = ("prefill", "decode")


def torch_ref(q, k, v, mask=None, causal=False, scale=None):
    t = lambda x: torch.from_numpy(np.asarray(x, dtype=np.float64))  # noqa: E731
    m = None if mask is None else (torch.from_numpy(mask) if mask.dtype == np.bool_ else t(mask))
    if m is not None and m.ndim < 2:  # torch indexes dim -2; numpy broadcasting does not need it
        m = m.reshape((1,) * (2 - m.ndim) + tuple(m.shape))
    return F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=m, is_causal=causal, scale=scale).numpy()


def make_mask(kind, shape, seed, valid=None):
    """kind: None, "add" (normal values with some -inf), "bool", "dead" (additive, rows 0 and
    last all -inf), "deadbool" (boolean, rows 0 and last all False), "cache" (0 for j < valid, -inf after)."""
    if kind is None:
        return None
    rng = np.random.default_rng(seed + 100)
    if kind == "add":
        m = rng.standard_normal(shape).astype(np.float32)
        m[rng.random(shape) < 0.3] = -np.inf
        return m
    if kind == "bool":
        return rng.random(shape) < 0.7
    if kind in ("dead", "deadbool"):
        m = rng.random(shape) < 0.7 if kind == "deadbool" else rng.standard_normal(shape).astype(np.float32)
        fill = False if kind == "deadbool" else -np.inf
        m[..., 0, :] = fill
        m[..., -1, :] = fill
        return m
    if kind == "cache":
        m = np.zeros(shape, np.float32)
        m[..., valid:] = -np.inf
        return m
    raise AssertionError(kind)


def run(shape, path, causal=False, mask=None, mask_shape=None, scale=None, dtype=np.float32,
        bound=F32_BOUND, seed=0, valid=None):
    """One case: shape = (B, H, Lq, Lk, D, Dv); mask_shape defaults to [B, H, Lq, Lk]."""
    b, h, lq, lk, d, dv = shape
    q, k, v = rand((b, h, lq, d), seed, dtype), rand((b, h, lk, d), seed + 1, dtype), rand((b, h, lk, dv), seed + 2, dtype)
    m = make_mask(mask, mask_shape or (b, h, lq, lk), seed, valid)
    return check(lambda *a: _attention(*a, m, causal, scale, path=path),
                 lambda *a: torch_ref(*a, m, causal, scale), bound, q, k, v)


SHAPES = [
    (1, 1, 1, 1, 1, 1),        # Lq = Lk = 1
    (2, 3, 17, 23, 3, 3),      # primes, B and H > 1, D = 3
    (1, 2, 9, 11, 1, 1),       # D = 1
    (1, 2, 31, 37, 64, 64),    # non-multiples of the 16 x 16 tile
    (2, 1, 20, 37, 128, 128),  # D = 128 (8 x 8 tiles)
    (1, 2, 19, 19, 80, 80),    # D = 80
    (1, 2, 19, 21, 40, 40),    # 10 output columns per thread: a partial vec4 accumulator
    (1, 1, 5, 70, 64, 32),     # Dv != D
    (1, 2, 1, 300, 64, 64),    # decode: two key splits
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_plain(rt, guard, shape, path):
    run(shape, path)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", [(1, 2, 19, 19, 64, 64),   # Lq == Lk
                                   (2, 1, 7, 40, 16, 16),    # Lq < Lk: top-left aligned
                                   (1, 1, 37, 5, 3, 3),      # Lq > Lk
                                   (1, 1, 3, 300, 64, 64)],  # decode: splits past the query see nothing
                         ids=str)
def test_causal(rt, guard, shape, path):
    run(shape, path, causal=True)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mask,mask_shape", [
    ("add", (2, 3, 13, 29)),  # full shape with -inf entries
    ("add", (13, 29)),        # [Lq, Lk]
    ("add", (1, 1, 13, 29)),
    ("add", (2, 1, 1, 29)),   # [B, 1, 1, Lk]
    ("add", (29,)),
    ("add", (3, 13, 1)),      # broadcast along Lk
    ("bool", (2, 3, 13, 29)),
    ("bool", (1, 13, 29)),
    ("dead", (2, 3, 13, 29)),      # fully masked rows, additive -inf
    ("deadbool", (1, 1, 13, 29)),  # fully masked rows, boolean all-False
], ids=str)
def test_mask(rt, guard, mask, mask_shape, path):
    run((2, 3, 13, 29, 16, 16), path, mask=mask, mask_shape=mask_shape)


@pytest.mark.parametrize("path", PATHS)
def test_fully_masked_everything(rt, guard, path):
    run((1, 2, 5, 9, 8, 8), path, mask="cache", valid=0)  # every row all -inf -> zeros


@pytest.mark.parametrize("valid", [1, 700, 2250])
def test_decode_kv_cache(rt, guard, valid):
    # the WhisperSpeech decode step: one query over a fixed-size cache, -inf past the valid length
    run((1, 6, 1, 2250, 64, 64), None, mask="cache", mask_shape=(1, 1, 1, 2250), valid=valid)


def test_long_kv_prefill_kernel(rt, guard):
    run((1, 2, 1, 2250, 64, 64), "prefill", mask="cache", mask_shape=(1, 1, 1, 2250), valid=1500)


@pytest.mark.parametrize("path", PATHS)
def test_scale(rt, guard, path):
    run((1, 2, 11, 13, 24, 24), path, scale=0.37)
    run((1, 2, 11, 13, 24, 24), path, scale=3.0, mask="add", mask_shape=(11, 13))


def test_broadcast_view_mask(rt, guard):
    q, k, v = rand((2, 2, 6, 8), 1), rand((2, 2, 10, 8), 2), rand((2, 2, 10, 8), 3)
    m = np.broadcast_to(make_mask("add", (1, 1, 1, 10), 4), (2, 2, 6, 10))  # stride-0 view
    check(lambda *a: attention(*a, mask=m), lambda *a: torch_ref(*a, m), F32_BOUND, q, k, v)


def test_empty_keys(rt):
    q = rand((1, 2, 3, 4), 0)
    out = attention(q, q[:, :, :0], q[:, :, :0], causal=True)
    assert out.shape == (1, 2, 3, 4) and not out.any()
    assert attention(q[:, :, :0], q, q).shape == (1, 2, 0, 4)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("causal,mask", [(False, None), (True, None), (False, "dead")])
def test_f16(rt, guard, path, causal, mask):
    if not rt.has_f16:
        pytest.skip("adapter lacks shader-f16")
    err = run((1, 2, 21, 40, 64, 64), path, causal=causal, mask=mask, dtype=np.float16, bound=F16_BOUND)
    assert err > 0  # really rounded through f16 storage


def test_f16_gpu_face_f16_mask(rt, guard):
    if not rt.has_f16:
        pytest.skip("adapter lacks shader-f16")
    q, k, v = (rand((1, 2, n, 32), i, np.float16) for i, n in ((0, 3), (1, 90), (2, 90)))
    m = make_mask("add", (1, 1, 3, 90), 3).astype(np.float16)
    for path in PATHS:
        out = _attention(rt.upload(q), rt.upload(k), rt.upload(v), rt.upload(m), path=path)
        assert out.dtype == np.float16
        assert rel_err(out.numpy(), torch_ref(q, k, v, m)) <= F16_BOUND


def test_grid_fold(rt, guard):
    run((1, 70000, 1, 2, 1, 1), "decode")  # 70,000 workgroups: past one grid dimension


@pytest.mark.parametrize("path", PATHS)
def test_grid_fold_small_limit(rt, guard, monkeypatch, path):
    # the prefill kernel past 65,535 real workgroups is too slow on lavapipe: fold at 5 instead
    monkeypatch.setitem(rt.limits, "max-compute-workgroups-per-dimension", 5)
    assert rt.grid(13) == (5, 3, 1)
    run((1, 13, 5, 300, 8, 8), path, mask="add", mask_shape=(13, 5, 300))


def test_gpu_face(rt, guard):
    q, k, v = rand((1, 3, 1, 16), 5), rand((1, 3, 300, 16), 6), rand((1, 3, 300, 16), 7)
    m = make_mask("add", (1, 1, 1, 300), 8)
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
