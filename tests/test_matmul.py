"""matmul.wgsl (linear, matmul, conv1d) on its case table, and what a table cannot say."""

import numpy as np
import pytest
import torch

from conftest import case_params, rand, rel_err
from wsvk.kernels import cases
from wsvk.kernels import matmul as mm


def gelu64(v):
    return torch.nn.functional.gelu(torch.from_numpy(np.asarray(v, np.float64))).numpy()


def ref_linear(x, w, b=None, gelu=False):
    y = x.astype(np.float64) @ w.astype(np.float64).T
    y = y if b is None else y + b.astype(np.float64)
    return gelu64(y) if gelu else y


@pytest.mark.parametrize("case", case_params(cases.MATMUL))
def test_case(rt, guard, case):
    case.run()


@pytest.mark.parametrize("M", [1, 9])  # GEMV and tiled epilogues
def test_gelu_accuracy(rt, guard, M):
    # y = v through a K=1 product with weight 1, so the output is gelu(v) of known f32 inputs
    v = np.concatenate([np.linspace(-12, 12, 4001), [-1e-3, 1e-30, 0.0, 40.0, -40.0]]).astype(np.float32)
    if M == 1:
        got = mm.linear(np.ones((1, 1), np.float32), v[:, None], gelu=True)[0]
    else:
        got = mm.linear(v[:, None], np.ones((1, 1), np.float32), gelu=True)[:, 0]
    err = np.abs(got.astype(np.float64) - gelu64(v))
    assert np.all(err <= 1e-7 + 2.5e-7 * np.abs(v)), f"max error {err.max():.3g} at v={v[err.argmax()]}"


def test_float64_computed_as_float32(rt, guard):
    x, w = rand((3, 10), 1).astype(np.float64), rand((4, 10), 2).astype(np.float64)
    got = mm.linear(x, w)
    assert got.dtype == np.float32
    assert rel_err(got, x @ w.T) <= 1e-6
    assert mm.matmul(x, w.T).dtype == np.float32


def test_gpu_face(rt, guard):
    x, w, b = rand((2, 3, 16), 1), rand((5, 16), 2), rand(5, 3)
    gx, gw, gb = rt.upload(x), rt.upload(w), rt.upload(b)
    big = rt.upload(rand((10, 16), 5))  # M = 10: the tiled kernel
    out = mm.linear(big, gw, gb)
    assert out.shape == (10, 5) and not isinstance(out, np.ndarray)
    assert rel_err(out.numpy(), ref_linear(big.numpy(), w, b)) <= 1e-6
    out = mm.linear(gx, gw, gb, gelu=True)
    assert out.shape == (2, 3, 5) and out.dtype == np.float32
    assert rel_err(out.numpy(), ref_linear(x, w, b, True)) <= 1e-6
    y = mm.matmul(out, rt.upload(rand((5, 20), 4)))  # chains without readback
    assert y.shape == (2, 3, 20) and not isinstance(y, np.ndarray)
    # one numpy input: numpy out
    assert isinstance(mm.linear(x, gw), np.ndarray)


def test_errors(rt):
    f = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="features"):
        mm.linear(f, np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        mm.linear(f, np.zeros((1, 2, 4), np.float32))
    with pytest.raises(ValueError, match="at least 2"):
        mm.linear(f, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="bias"):
        mm.linear(f, np.zeros((2, 4), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="at least 1"):
        mm.linear(np.float32(1.0), np.zeros((2, 1), np.float32))
    with pytest.raises(ValueError, match="zero-size"):
        mm.linear(np.zeros((0, 4), np.float32), np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match="int32"):
        mm.linear(f.astype(np.int32), np.zeros((2, 4), np.int32))
    with pytest.raises(TypeError, match="mixed"):
        mm.linear(f, np.zeros((2, 4), np.float16))
    with pytest.raises(TypeError, match="gelu"):
        mm.linear(f, np.zeros((2, 4), np.float32), gelu="yes")
    with pytest.raises(ValueError, match="inner"):
        mm.matmul(f, np.zeros((5, 2), np.float32))
    with pytest.raises(ValueError, match="batch"):
        mm.matmul(np.zeros((2, 3, 4), np.float32), np.zeros((3, 4, 2), np.float32))
    with pytest.raises(ValueError, match="batch"):
        mm.matmul(np.zeros((1, 3, 4), np.float32), np.zeros((3, 4, 2), np.float32))
    with pytest.raises(ValueError, match="at least 2"):
        mm.matmul(np.zeros(4, np.float32), np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="at least 2"):
        mm.matmul(np.float32(2.0), np.zeros((4, 2), np.float32))
    with pytest.raises(TypeError, match="int64"):
        mm.matmul(np.zeros((2, 2), np.int64), np.zeros((2, 2), np.int64))
    with pytest.raises(TypeError):
        mm.matmul("abc", f)


def test_linear_splits_weights_larger_than_one_binding(rt, monkeypatch):
    """Low-limit adapters: a weight past max-storage-buffer-binding-size is split by rows."""
    x, w, b = rand((3, 40), 7), rand((300, 40), 8), rand(300, 9)
    monkeypatch.setitem(rt.limits, "max-storage-buffer-binding-size", 64 * 40 * 4)  # 64 rows a binding
    calls = []
    real = mm._gemv
    monkeypatch.setattr(mm, "_gemv", lambda *a, **k: calls.append(a[6]) or real(*a, **k))
    got = mm.linear(x, w, b, gelu=True)
    assert calls == [64, 64, 64, 64, 44]  # N of each part
    ref = torch.nn.functional.gelu(torch.from_numpy(x.astype(np.float64) @ w.T.astype(np.float64) + b)).numpy()
    assert rel_err(got, ref) < 1e-5


def test_conv1d_errors(rt):
    x, w = np.zeros((1, 3, 8), np.float32), np.zeros((2, 3, 3), np.float32)
    for args, kw, err, match in [
        ((x, w[:, :2]), {}, ValueError, r"x must be \[B, 2, T\]"),
        ((x, w[0]), {}, ValueError, r"weight must be \[Cout, Cin, ks\]"),
        ((x, w, np.zeros(3, np.float32)), {}, ValueError, r"bias must have shape \(2,\)"),
        ((x, w), dict(padding="same", stride=2), ValueError, "stride 1"),
        ((x, w), dict(padding=-1), ValueError, "padding"),
        ((x, w), dict(dilation=0), ValueError, "dilation"),
        ((x[..., :2], w), {}, ValueError, "shorter than the kernel"),
        ((x.astype(np.int32), w.astype(np.int32)), {}, TypeError, "int32"),
    ]:
        with pytest.raises(err, match=match):
            mm.conv1d(*args, **kw)


def test_tile_choice(rt, guard, monkeypatch):
    assert mm.tile_size(1, 4096, 4096) == 128
    assert mm.tile_size(1, 750, 1536) == 64          # Vocos' pointwise conv: 72 big tiles, too few
    assert mm.tile_size(16, 512, 1024) == 128        # batches count
    assert mm.tile_size(1, 4096, 4096, tile=64) == 64
    with pytest.raises(ValueError, match="one of"):
        mm.tile_size(1, 4, 4, tile=32)
    # a product with BIG_TILES 128x128 tiles runs the big kernel unforced
    big = []
    real = mm._pipeline
    monkeypatch.setattr(mm, "_pipeline", lambda rt_, entry, dt, sg, **k: big.append(k.get("BIG")) or real(rt_, entry, dt, sg, **k))
    cases.linear((2048,), 128 * mm.BIG_TILES // 16, 3, True).run()
    assert big == [True]
