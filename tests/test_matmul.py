import importlib
import math

import numpy as np
import pytest
import torch

from conftest import rand, rel_err

# the module, not the function that wsvk.ops re-exports under the same name
mm = importlib.import_module("wsvk.ops.matmul")


def gelu64(v):
    return torch.nn.functional.gelu(torch.from_numpy(np.asarray(v, np.float64))).numpy()


def ref_linear(x, w, b=None, gelu=False):
    y = x.astype(np.float64) @ w.astype(np.float64).T
    y = y if b is None else y + b.astype(np.float64)
    return gelu64(y) if gelu else y


def bound(dtype, K):
    # f32: dot-product rounding grows ~sqrt(K); f16: the f16 output rounding (2**-11) dominates
    return 1.5e-3 if dtype == np.float16 else 2e-6 * math.sqrt(K) + 1e-6


def need(rt, dtype):
    if dtype == np.float16 and not rt.has_f16:
        pytest.skip(f"{rt.info['name']} lacks shader-f16")


def check_linear(rt, lead, N, K, bias=False, gelu=False, dtype=np.float32, seed=0):
    """linear(x[*lead, K], w[N, K], b[N]) against float64 numpy (and torch's GELU)."""
    need(rt, dtype)
    x, w = rand(lead + (K,), seed, dtype), rand((N, K), seed + 1, dtype, scale=1 / math.sqrt(K))
    b = rand(N, seed + 2, dtype) if bias else None
    got = mm.linear(x, w, b, gelu=gelu)
    assert got.shape == lead + (N,) and got.dtype == dtype
    err = rel_err(got, ref_linear(x, w, b, gelu))
    assert err <= bound(dtype, K), f"relative L2 error {err:.3g} > {bound(dtype, K):.3g}"
    return err


def check_matmul(rt, ashape, bshape, dtype=np.float32, seed=0):
    need(rt, dtype)
    a, b = rand(ashape, seed, dtype), rand(bshape, seed + 1, dtype)
    got = mm.matmul(a, b)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert got.shape == ref.shape and got.dtype == dtype
    err = rel_err(got, ref)
    assert err <= bound(dtype, ashape[-1]), f"relative L2 error {err:.3g}"
    return err


# (leading dims of x, N, K, bias, gelu): M = prod(lead) <= 8 runs the GEMV, larger the tiled kernel
LINEAR = [
    ((1,), 1, 1, False, False),
    ((), 7, 13, True, False),           # x 1-D
    ((1,), 97, 257, True, True),
    ((2,), 13, 97, False, True),
    ((3,), 257, 7, True, False),
    ((4,), 64, 256, True, True),        # vec4 path
    ((5,), 97, 100, False, False),      # vec4, 4 rows per workgroup
    ((8,), 33, 257, True, True),
    ((8,), 16, 1028, True, False),      # vec4, K past one 256-thread sweep
    ((2, 3), 19, 12, True, True),       # leading dims, GEMV
    ((9,), 65, 17, True, False),        # smallest tiled M
    ((13,), 97, 257, True, True),
    ((64,), 64, 64, False, False),
    ((70,), 130, 33, True, True),
    ((2, 5, 7), 3, 5, True, False),     # leading dims, tiled
    ((1,), 65537, 3, True, False),      # N past 65,535 rows (GEMV)
    ((9,), 65537, 2, True, True),       # N past 65,535 (tiled, 1,025 column tiles)
    ((5,), 262147, 4, True, False),     # 65,537 GEMV workgroups: folded grid
]


@pytest.mark.parametrize("lead,N,K,bias,gelu", LINEAR)
def test_linear(rt, guard, lead, N, K, bias, gelu):
    check_linear(rt, lead, N, K, bias, gelu)


@pytest.mark.parametrize("lead,N,K,bias,gelu", [((1,), 97, 257, True, True), ((6,), 33, 64, True, False),
                                                ((3,), 5, 1, False, True), ((20,), 70, 130, True, True)])
def test_linear_f16(rt, guard, lead, N, K, bias, gelu):
    check_linear(rt, lead, N, K, bias, gelu, dtype=np.float16)


@pytest.mark.parametrize("lead,N,K", [((1,), 97, 257), ((4,), 13, 64), ((8,), 1031, 4), ((70,), 9, 17)])
def test_linear_shared_memory_reduction(rt, guard, monkeypatch, lead, N, K):
    # the path of adapters without subgroups: the shader minus its subgroup lines
    monkeypatch.setattr(mm, "_force_shared_reduction", True)
    check_linear(rt, lead, N, K, True, True)


@pytest.mark.parametrize("ashape,bshape", [
    ((1, 1), (1, 1)),
    ((7, 13), (13, 97)),
    ((65, 257), (257, 3)),
    ((3, 5), (5, 64)),                  # M <= 8 matmul also runs tiled
    ((3, 20, 30), (3, 30, 70)),         # batched
    ((2, 3, 9, 4), (2, 3, 4, 11)),      # two batch dims
    ((3, 20, 30), (30, 70)),            # shared 2-D b: batch folds into M
    ((20, 30), (4, 30, 7)),             # shared 2-D a
    ((65537, 1, 2), (65537, 2, 3)),     # 65,537 tiles: folded grid
])
def test_matmul(rt, guard, ashape, bshape):
    check_matmul(rt, ashape, bshape)


@pytest.mark.parametrize("ashape,bshape", [((13, 97), (97, 66)), ((2, 9, 33), (2, 33, 7))])
def test_matmul_f16(rt, guard, ashape, bshape):
    check_matmul(rt, ashape, bshape, dtype=np.float16)


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


# ---------------------------------------------------------------- conv1d (the tiled kernel, CONV mode)


def ref_conv1d(x, w, b=None, **kw):
    t = lambda a: None if a is None else torch.from_numpy(np.asarray(a, np.float64))  # noqa: E731
    return torch.nn.functional.conv1d(t(x), t(w), t(b), **kw).numpy()


@pytest.mark.parametrize("xshape,wshape,bias,kw", [
    ((2, 3, 17), (5, 3, 3), True, dict(padding=2, dilation=2)),
    ((3, 1), (4, 3, 1), False, {}),                                            # unbatched, ks 1, T 1
    ((1, 7, 40), (9, 7, 4), True, dict(stride=3, padding=1)),
    ((2, 6, 33), (8, 6, 4), True, dict(padding="same", dilation=3)),            # even span: extra pad right
    ((2, 5, 12), (3, 5, 5), False, dict(padding="valid")),
    ((1, 67, 130), (70, 67, 3), True, dict(padding=1)),                         # several tiles, K % 16 != 0
    ((2, 4, 5000), (1, 4, 1), False, {}),                                       # long T, Cout 1
])
def test_conv1d(rt, guard, xshape, wshape, bias, kw):
    x, w = rand(xshape, 1), rand(wshape, 2)
    b = rand(wshape[0], 3) if bias else None
    got = mm.conv1d(x, w, b, **kw)
    ref = ref_conv1d(x, w, b, **kw)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert rel_err(got, ref) <= bound(np.float32, wshape[1] * wshape[2]), rel_err(got, ref)


def test_conv1d_f16_and_gpu_face(rt, guard):
    x, w, b = rand((2, 8, 21), 4), rand((6, 8, 3), 5), rand(6, 6)
    out = mm.conv1d(rt.upload(x), rt.upload(w), rt.upload(b), padding=1)
    assert not isinstance(out, np.ndarray) and out.shape == (2, 6, 21)
    assert rel_err(out.numpy(), ref_conv1d(x, w, b, padding=1)) < 1e-5
    need(rt, np.float16)
    h = lambda a: a.astype(np.float16)  # noqa: E731
    assert rel_err(mm.conv1d(h(x), h(w), h(b), padding=1), ref_conv1d(x, w, b, padding=1)) < 1.5e-3


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


# ---------------------------------------------------------------- the 128x128 tiled variant


@pytest.fixture
def big_tile():
    with mm.tile_variant(128):
        yield


@pytest.mark.parametrize("lead,N,K,bias,gelu", [
    ((9,), 65, 17, True, False),        # one partial tile
    ((130,), 257, 33, True, True),      # 2 x 3 tiles, K % 8 != 0
    ((3, 43), 131, 129, False, False),  # leading dims, one row and one column past a tile
    ((300,), 260, 1000, True, False),   # long K: the prefetch runs over many steps
    ((9,), 65537, 2, True, True),       # 513 column tiles, K < one step
])
def test_linear_big_tiles(rt, guard, big_tile, lead, N, K, bias, gelu):
    check_linear(rt, lead, N, K, bias, gelu)


@pytest.mark.parametrize("ashape,bshape", [
    ((65, 257), (257, 3)),
    ((3, 20, 30), (3, 30, 70)),         # batched
    ((20, 30), (4, 30, 7)),             # shared 2-D a
    ((129, 9), (9, 260)),
    ((65537, 1, 2), (65537, 2, 3)),     # 65,537 tiles: folded grid
])
def test_matmul_big_tiles(rt, guard, big_tile, ashape, bshape):
    check_matmul(rt, ashape, bshape)


def test_big_tiles_f16_and_conv(rt, guard, big_tile):
    x, w, b = rand((2, 67, 130), 1), rand((140, 67, 3), 2), rand(140, 3)
    for kw in (dict(padding=1), dict(stride=3, dilation=2, padding="valid")):
        ref = ref_conv1d(x, w, b, **kw)
        assert rel_err(mm.conv1d(x, w, b, **kw), ref) <= bound(np.float32, 67 * 3)
    check_linear(rt, (20,), 70, 130, True, True, dtype=np.float16)
    check_matmul(rt, (2, 9, 33), (2, 33, 7), dtype=np.float16)


def test_tile_choice(rt, guard, monkeypatch):
    assert mm.tile_size(1, 4096, 4096) == 128
    assert mm.tile_size(1, 750, 1536) == 64          # Vocos' pointwise conv: 72 big tiles, too few
    assert mm.tile_size(16, 512, 1024) == 128        # batches count
    with mm.tile_variant(64):
        assert mm.tile_size(1, 4096, 4096) == 64
    assert mm.tile_size(1, 4096, 4096) == 128
    with pytest.raises(ValueError, match="64 or 128"):
        with mm.tile_variant(32):
            pass
    # a product with BIG_TILES 128x128 tiles runs the big kernel unforced
    big = []
    real = mm._pipeline
    monkeypatch.setattr(mm, "_pipeline", lambda rt_, entry, dt, **k: big.append(k.get("BIG")) or real(rt_, entry, dt, **k))
    check_linear(rt, (2048,), 128 * mm.BIG_TILES // 16, 3, True, False)
    assert big == [True]
