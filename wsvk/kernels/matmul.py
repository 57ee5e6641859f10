"""Matrix products (shaders/matmul.wgsl): F.linear with fused bias/GELU, and batched matmul.

linear with at most 8 rows (the decode case) runs the GEMV kernel, which reads each weight row
once; everything else runs a tiled kernel: 128x128 tiles when the product has at least
BIG_TILES of them (half the shared-memory traffic per FMA), else 64x64 tiles (4x as many
workgroups to fill the GPU's cores). f32 accumulation for f32 and f16 storage.

8-bit weights (`Q8Weight`, made by `quantize_q8`): int8 in blocks of Q8_BLOCK along K with one
f32 scale per block, over the weights divided by their input channel's RMS (one f32 per column,
applied to x in the kernel: an outlier channel no longer coarsens the blocks it falls in),
dequantized inside the GEMV's inner loop and accumulated in f32 (about 1.1 bytes a weight against
2 in f16: the bytes are what a decode step costs on a GPU bound by memory bandwidth). The GEMV
only: `linear` takes a Q8Weight for at most 8 rows.

Variants are arguments: `tile` (None: by shape, or one of TILES) runs the tiled kernel with that
tile edge (linear too, whatever its rows); `subgroups=False` runs the GEMV's workgroup-memory reduction on an adapter that has
subgroups (tests, selftest and benchmarks compare them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..gpu import GpuArray, Layout
from .common import alias, as_array, common_dtype, finish, on_gpu, runtime, to_gpu

GEMV_MAX_M = 8
TILES = (64, 128)
# 128x128 tiles from this many on: about 4 per core of a large GPU (an H100 has 132), so every
# core still has several workgroups to switch between. Check with scripts/bench_ops.py --big.
BIG_TILES = 512
_U32 = 1 << 32

TILED_PARAMS = Layout("M N K tiles_n tiles_m tiles a_batch b_batch t_in ks dil pad stride")
GEMV_PARAMS = Layout("N K K4 groups eps:f x_stride cols ss")
GEMV_ROWS = 8       # weight rows per gemv workgroup (256 threads, 8 partial sums each)
MAX_STAGED = 1792   # gemv XMODE 1/2 stage K floats in workgroup memory (+ 4.5 KiB of wg_sums <= 16 KiB)
WG_BYTES = 16384    # workgroup memory every adapter has (WebGPU's default limit)
WG_SUMS_BYTES = 4096 + 16 + 2 * 256  # shaders/lib/wg_sums.wgsl's arrays (each variable rounds up to 16 bytes)


Q8_BLOCK = 32  # weights per scale along K (llama.cpp's Q8_0 block)


def q8_layout(N: int, K: int) -> tuple[int, int]:
    """(blocks per row, u32 words in all) of an [N, K] matrix in Q8: the codes (four a word, rows
    padded to whole blocks), one f32 scale per block, one f32 scale per column."""
    nb = -(-K // Q8_BLOCK)
    return nb, N * nb * (Q8_BLOCK // 4 + 1) + K


def quantize_q8(w) -> np.ndarray:
    """An [N, K] float matrix as shaders/matmul.wgsl's Q8 buffer (uint32 words): the column scales
    c = the RMS of each input channel (1 for an all-zero one), then per block of Q8_BLOCK weights
    of w / c along K the scale max|w / c| / 127 and the codes round(w / c / scale) in [-127, 127]
    (zero past K). Round to nearest keeps each weight within scale * c / 2 of its value."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2 or min(w.shape) < 1:
        raise ValueError(f"quantize_q8: needs a non-empty [N, K] matrix, got shape {w.shape}")
    N, K = w.shape
    nb, _ = q8_layout(N, K)
    col = np.sqrt(np.mean(np.square(w, dtype=np.float64), axis=0)).astype(np.float32)
    col[col == 0] = 1
    blocks = np.zeros((N, nb * Q8_BLOCK), np.float32)
    np.divide(w, col, out=blocks[:, :K])
    blocks = blocks.reshape(N, nb, Q8_BLOCK)
    scale = np.abs(blocks).max(axis=2) / np.float32(127)
    inv = np.divide(np.float32(1), scale, out=np.zeros_like(scale), where=scale > 0)
    codes = np.rint(blocks * inv[:, :, None]).astype(np.int8)
    return np.concatenate([codes.reshape(N, -1).view("<u4").ravel(), scale.astype("<f4").view("<u4").ravel(),
                           col.astype("<f4").view("<u4")])


def dequantize_q8(words, N: int, K: int) -> np.ndarray:
    """The float32 [N, K] matrix a Q8 buffer stands for (the reference of the Q8 GEMV)."""
    nb, total = q8_layout(N, K)
    words = np.asarray(words, dtype="<u4")
    if words.shape != (total,):
        raise ValueError(f"dequantize_q8: {words.shape} words, expected ({total},) for [{N}, {K}]")
    n_codes = N * nb * Q8_BLOCK // 4
    codes = words[:n_codes].view(np.int8).reshape(N, nb, Q8_BLOCK).astype(np.float32)
    scale = words[n_codes:n_codes + N * nb].view("<f4").reshape(N, nb)
    col = words[n_codes + N * nb:].view("<f4")
    return (codes * scale[:, :, None]).reshape(N, -1)[:, :K] * col


@dataclass(frozen=True)
class Q8Weight:
    """An [N, K] weight matrix in Q8 on the GPU (quantize_q8's words in one storage buffer)."""

    data: GpuArray
    shape: tuple

    @classmethod
    def upload(cls, rt, w) -> Q8Weight:
        return cls(rt.upload(quantize_q8(w)), tuple(int(s) for s in np.shape(w)))

    @property
    def K4(self) -> int:
        """vec4s of 16 codes per row (the GEMV's uniform K4)."""
        return 2 * q8_layout(*self.shape)[0]

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def numpy(self) -> np.ndarray:
        return dequantize_q8(self.data.numpy(), *self.shape)


def cw_max(K: int) -> int:
    """How many (head, split) weights the combining gemv (XMODE 2) stages next to its K inputs
    (two arrays of them, each rounded up to 16 bytes)."""
    return (WG_BYTES - WG_SUMS_BYTES - -(-4 * K // 16) * 16 - 32) // 8


def tile_size(batch: int, M: int, N: int, tile: int | None = None) -> int:
    """The tiled kernel's output tile edge for a [batch, M, N] product: `tile` when given, else
    128 or 64 by the number of tiles."""
    if tile is not None:
        if tile not in TILES:
            raise ValueError(f"tile edge must be one of {TILES}, got {tile!r}")
        return tile
    return 128 if batch * -(-M // 128) * -(-N // 128) >= BIG_TILES else 64


def _pipeline(rt, entry: str, dt, subgroups: bool | None, wt=None, **constants):
    """The matmul.wgsl pipeline for `entry`, with subgroup reductions where the adapter has them
    (and `subgroups` is not False). dt: the storage type of the activations (every array of
    `tiled`); wt: the gemv's weights (default dt)."""
    sg = rt.has_subgroups and subgroups is not False
    wt_name = "u32" if constants.get("Q8") else alias(dt if wt is None else wt)
    aliases = {"T": alias(dt), "X": alias(dt), "WT": wt_name}
    return rt.pipeline("matmul", entry, {**constants, "SUBGROUPS": sg}, aliases=aliases, subgroups=sg)


def gemv_pipeline(rt, x_dtype, w_dtype, *, xmode=0, step=False, bias=False, gelu=False, resid=False, K=4,
                  group=0, combine=None, subgroups=None):
    """The gemv entry for a resident plan: xmode 0 (x from memory), 1 (layer norm of x in front)
    or 2 (the attention splits merged in front: combine = dict of the G_* constants); step: the
    active columns come from the step buffer. K: the input length (staged by xmode 1/2).
    w_dtype: float32, float16 or "q8" (Q8Weight)."""
    if xmode and K > MAX_STAGED:
        raise ValueError(f"gemv with a fused prologue needs K <= {MAX_STAGED}, got {K}")
    q8 = isinstance(w_dtype, str) and w_dtype == "q8"
    consts = {"XMODE": xmode, "STEP": step, "HAS_BIAS": bias, "GELU": gelu, "RESID": resid,
              "VEC4": K % 4 == 0 and not q8, "Q8": q8, "XS": K if xmode else 4, "GROUP": group, **(combine or {})}
    return _pipeline(rt, "gemv", np.dtype(x_dtype), subgroups, wt=None if q8 else np.dtype(w_dtype), **consts)


def gemv_weight(w) -> tuple:
    """(storage type for gemv_pipeline, the uniform's K4, the buffer) of a gemv weight."""
    if isinstance(w, Q8Weight):
        return "q8", w.K4, w.data
    return w.dtype, int(w.shape[-1]) // 4, w


def _check_size(rt, what: str, shape) -> None:
    n = math.prod(shape)
    if n == 0:
        raise ValueError(f"{what}: shape {tuple(shape)} has a zero-size dimension")
    if n >= _U32 or 4 * n > rt.max_binding:
        raise ValueError(f"{what}: shape {tuple(shape)} is too large for one GPU binding "
                         f"({rt.max_binding} bytes, < 2**32 elements)")


def _dims(name: str, x, least: int) -> tuple:
    shape = tuple(int(s) for s in x.shape)
    if len(shape) < least:
        raise ValueError(f"{name}: needs at least {least} dimension(s), got shape {shape}")
    return shape


def _tiled(rt, a, b, bias, dt, batch, M, N, K, a_batch, b_batch, trans_b, gelu, out_shape, conv=None, tile=None):
    """c[batch, M, N] through the tiled kernel; a/b batch strides in elements (0 = shared);
    conv = (t_in, ks, dilation, pad, stride): b is a conv input [batch, Cin, t_in] (see conv1d)."""
    out = rt.empty(out_shape, dt)
    edge = tile_size(batch, M, N, tile)
    tiles_n, tiles_m = -(-N // edge), -(-M // edge)
    tiles = batch * tiles_m * tiles_n
    if tiles >= _U32:
        raise ValueError(f"matmul: {tiles} output tiles is too many for one dispatch")
    pipe = _pipeline(rt, "tiled", dt, None, BIG=edge == 128, TRANS_B=trans_b, CONV=conv is not None,
                     HAS_BIAS=bias is not None, GELU=gelu)
    t_in, ks, dil, pad, stride = conv or (0,) * 5
    params = rt.uniform(TILED_PARAMS, M=M, N=N, K=K, tiles_n=tiles_n, tiles_m=tiles_m, tiles=tiles,
                        a_batch=a_batch, b_batch=b_batch, t_in=t_in, ks=ks, dil=dil, pad=pad, stride=stride)
    rt.run(pipe, [a, b, a if bias is None else bias, out, params], rt.grid(tiles))
    return out


def _gemv(rt, x, w, bias, dt, M, N, K, gelu, out_shape, subgroups):
    """out[M, N] = x[M, K] @ w[N, K]^T (+ bias, GELU) for M <= 8: the gemv with M columns."""
    out = rt.empty(out_shape, dt)
    groups = -(-N // GEMV_ROWS)
    wt, K4, wbuf = gemv_weight(w)
    pipe = gemv_pipeline(rt, dt, wt, bias=bias is not None, gelu=gelu, K=K, subgroups=subgroups)
    params = rt.uniform(GEMV_PARAMS, N=N, K=K, K4=K4, groups=groups, eps=0.0, x_stride=K, cols=M, ss=0)
    step = rt.empty((4,), np.uint32)  # unread: the columns come from the uniform
    # bindings: step, x, w, w as vec4, bias, layer-norm gamma and beta (unread), out, params
    rt.run(pipe, [step, x, wbuf, wbuf, x if bias is None else bias, x, x, out, params], rt.grid(groups * M))
    return out


def gemv_prologue(x, weight, bias=None, *, ln=None, combine=None, subgroups=None) -> np.ndarray:
    """The resident decoder's fused GEMV prologues on their own (float32, numpy; the case table
    checks them): xin @ weight[N, K]^T (+ bias) for each of the M <= 8 rows of x, where xin is
    layer_norm(x[M, K]) * gamma + beta with ln = (gamma, beta, eps) (XMODE 1), or with
    combine = (DH, splits) the decode_cache partials x[M, NH, MAXS, DH + 2] merged per head
    (XMODE 2). splits: one count for every row (cross-attention), or one per row (then, as in
    self-attention, the step buffer's positions give them)."""
    rt = runtime()
    x, weight = np.asarray(x, np.float32), np.asarray(weight, np.float32)
    M, (N, K) = x.shape[0], weight.shape
    step = np.zeros(4 + 2 * M, np.uint32)  # the step buffer's column entries [slot, pos], ss = 2
    gx, gw = rt.upload(x), rt.upload(weight)
    gam = bet = gx
    eps, consts = 0.0, None
    if ln is not None:
        gam, bet, eps = rt.upload(np.asarray(ln[0], np.float32)), rt.upload(np.asarray(ln[1], np.float32)), ln[2]
    else:
        dh, splits = combine
        nh, maxs = x.shape[1], x.shape[2]
        ch = 256
        if not isinstance(splits, int):
            step[5::2] = [(n - 1) * ch for n in splits]  # pos: (pos + CH) / CH splits
        consts = dict(G_DH=dh, G_CH=ch, G_NSPLIT=splits if isinstance(splits, int) else 0, G_MAXS=maxs,
                      G_CW=nh * maxs)
    groups = -(-N // GEMV_ROWS)
    out = rt.empty((M, N))
    pipe = gemv_pipeline(rt, np.float32, np.float32, xmode=1 if ln is not None else 2, bias=bias is not None,
                         K=K, combine=consts, subgroups=subgroups)
    params = rt.uniform(GEMV_PARAMS, N=N, K=K, K4=K // 4, groups=groups, eps=eps, x_stride=x[0].size, cols=M, ss=2)
    gb = gx if bias is None else rt.upload(np.asarray(bias, np.float32))
    rt.run(pipe, [rt.upload(step), gx, gw, gw, gb, gam, bet, out, params], rt.grid(groups * M))
    return out.numpy()


def _linear_q8(x, weight: Q8Weight, bias, gelu: bool, subgroups):
    """linear() with 8-bit weights: float32 x with at most GEMV_MAX_M rows."""
    N, K = weight.shape
    xs = _dims("linear: x", x, 1)
    if xs[-1] != K:
        raise ValueError(f"linear: x has {xs[-1]} features (shape {xs}) but weight expects {K} ({N}x{K} q8)")
    M = math.prod(xs[:-1])
    if M > GEMV_MAX_M:
        raise ValueError(f"linear: q8 weights run in the GEMV only (at most {GEMV_MAX_M} rows), got {M}")
    if bias is not None and tuple(bias.shape) != (N,):
        raise ValueError(f"linear: bias must have shape ({N},), got {tuple(bias.shape)}")
    dt = common_dtype(x=x, bias=bias)
    if dt != np.float32:
        raise TypeError(f"linear: q8 weights take float32 inputs, got {dt}")
    rt = runtime()
    gx = to_gpu(x, dt)
    gb = None if bias is None else to_gpu(bias, dt)
    out = _gemv(rt, gx, weight, gb, dt, M, N, K, bool(gelu), xs[:-1] + (N,), subgroups)
    return finish(out, on_gpu(x, bias))


def linear(x, weight, bias=None, gelu: bool = False, *, tile: int | None = None, subgroups: bool | None = None):
    """torch's F.linear: x[..., K] @ weight[N, K].T + bias[N] -> [..., N]; gelu=True applies nn.GELU().

    float32 (float64 is computed as float32) or float16 with shader-f16; all GpuArray inputs
    give a GpuArray, otherwise numpy. weight may be a Q8Weight (float32 x of at most 8 rows).
    tile / subgroups: the variant (module docstring).
    """
    bias = None if bias is None else as_array(bias)
    if isinstance(weight, Q8Weight):
        if tile is not None:
            raise ValueError("linear: q8 weights run in the GEMV only (no tile)")
        return _linear_q8(as_array(x), weight, bias, gelu, subgroups)
    x, weight = as_array(x), as_array(weight)
    xs = _dims("linear: x", x, 1)
    ws = _dims("linear: weight", weight, 2)
    if len(ws) != 2:
        raise ValueError(f"linear: weight must be 2-D [N, K], got shape {ws}")
    N, K = ws
    if xs[-1] != K:
        raise ValueError(f"linear: x has {xs[-1]} features (shape {xs}) but weight expects {K} (shape {ws})")
    if bias is not None and tuple(bias.shape) != (N,):
        raise ValueError(f"linear: bias must have shape ({N},), got {tuple(bias.shape)}")
    if not isinstance(gelu, (bool, np.bool_)):
        raise TypeError(f"linear: gelu must be a bool, got {type(gelu).__name__}")
    dt = common_dtype(x=x, weight=weight, bias=bias)
    rt = runtime()
    M = math.prod(xs[:-1])
    rows = rt.max_binding // (K * dt.itemsize)  # weight rows that fit one storage binding
    if N > rows > 0 and not isinstance(weight, GpuArray):  # low-limit adapters: split the weight by rows
        parts = [linear(x, weight[i:i + rows], None if bias is None else bias[i:i + rows], gelu,
                        tile=tile, subgroups=subgroups) for i in range(0, N, rows)]
        return np.concatenate([np.asarray(p) for p in parts], axis=-1)
    _check_size(rt, "linear: x", xs)
    _check_size(rt, "linear: weight", ws)
    _check_size(rt, "linear: output", (M, N))
    gx, gw = to_gpu(x, dt), to_gpu(weight, dt)
    gb = None if bias is None else to_gpu(bias, dt)
    out_shape = xs[:-1] + (N,)
    if M <= GEMV_MAX_M and tile is None:
        out = _gemv(rt, gx, gw, gb, dt, M, N, K, bool(gelu), out_shape, subgroups)
    else:
        out = _tiled(rt, gx, gw, gb, dt, 1, M, N, K, 0, 0, True, bool(gelu), out_shape, tile=tile)
    return finish(out, on_gpu(x, weight, bias))


def matmul(a, b, *, tile: int | None = None):
    """a[..., M, K] @ b[..., K, N] -> [..., M, N].

    Both at least 2-D; batch dims equal, or one side a plain 2-D matrix shared by every batch.
    """
    a, b = as_array(a), as_array(b)
    ash = _dims("matmul: a", a, 2)
    bsh = _dims("matmul: b", b, 2)
    (M, K), (K2, N) = ash[-2:], bsh[-2:]
    if K != K2:
        raise ValueError(f"matmul: inner dimensions differ: a {ash} @ b {bsh}")
    abat, bbat = ash[:-2], bsh[:-2]
    if abat and bbat and abat != bbat:
        raise ValueError(f"matmul: batch dims {abat} and {bbat} differ (only equal batches or a 2-D side)")
    dt = common_dtype(a=a, b=b)
    rt = runtime()
    _check_size(rt, "matmul: a", ash)
    _check_size(rt, "matmul: b", bsh)
    batch_shape = abat or bbat
    _check_size(rt, "matmul: output", batch_shape + (M, N))
    ga, gb = to_gpu(a, dt), to_gpu(b, dt)
    out_shape = batch_shape + (M, N)
    batch = math.prod(batch_shape)
    if not bbat:  # one shared b: the batch folds into M
        out = _tiled(rt, ga, gb, None, dt, 1, batch * M, N, K, 0, 0, False, False, out_shape, tile=tile)
    else:
        out = _tiled(rt, ga, gb, None, dt, batch, M, N, K, M * K if abat else 0, K * N, False, False,
                     out_shape, tile=tile)
    return finish(out, on_gpu(a, b))


def conv1d(x, weight, bias=None, stride: int = 1, padding=0, dilation: int = 1, *, tile: int | None = None):
    """torch's F.conv1d with groups=1: x[B, Cin, T] (or [Cin, T]) * weight[Cout, Cin, ks] -> [B, Cout, T_out].

    padding: an int (zeros on both sides), "valid" or "same" (stride 1; an odd total goes right,
    as torch). The tiled matmul kernel with the input read as an implicit im2col matrix.
    """
    x, weight = as_array(x), as_array(weight)
    bias = None if bias is None else as_array(bias)
    if weight.ndim != 3 or min(weight.shape) < 1:
        raise ValueError(f"conv1d: weight must be [Cout, Cin, ks], got shape {tuple(weight.shape)}")
    Cout, Cin, ks = (int(s) for s in weight.shape)
    if x.ndim not in (2, 3) or x.shape[-2] != Cin or x.shape[-1] < 1:
        raise ValueError(f"conv1d: x must be [B, {Cin}, T] or [{Cin}, T], got shape {tuple(x.shape)}")
    if bias is not None and tuple(bias.shape) != (Cout,):
        raise ValueError(f"conv1d: bias must have shape ({Cout},), got {tuple(bias.shape)}")
    if int(stride) < 1 or int(dilation) < 1:
        raise ValueError(f"conv1d: stride and dilation must be >= 1, got {stride}, {dilation}")
    stride, dilation = int(stride), int(dilation)
    span = dilation * (ks - 1)
    if padding == "valid":
        pad_l = pad_r = 0
    elif padding == "same":
        if stride != 1:
            raise ValueError("conv1d: padding='same' needs stride 1 (as torch)")
        pad_l, pad_r = span // 2, span - span // 2
    elif isinstance(padding, (int, np.integer)) and padding >= 0:
        pad_l = pad_r = int(padding)
    else:
        raise ValueError(f"conv1d: padding must be an int >= 0, 'valid' or 'same', got {padding!r}")
    batched = x.ndim == 3
    B, T = (int(x.shape[0]) if batched else 1), int(x.shape[-1])
    t_out = (T + pad_l + pad_r - span - 1) // stride + 1
    if t_out < 1:
        raise ValueError(f"conv1d: input of length {T} is shorter than the kernel's span {span + 1} (padding {padding})")
    dt = common_dtype(x=x, weight=weight, bias=bias)
    rt = runtime()
    _check_size(rt, "conv1d: x", (B, Cin, T))
    _check_size(rt, "conv1d: output", (B, Cout, t_out))
    gx = to_gpu(x, dt)
    gw = to_gpu(weight, dt)  # [Cout, Cin * ks] row-major: the GEMM's a
    gb = None if bias is None else to_gpu(bias, dt)
    out_shape = (B, Cout, t_out) if batched else (Cout, t_out)
    out = _tiled(rt, gw, gx, gb, dt, B, Cout, t_out, Cin * ks, 0, Cin * T, False, False, out_shape,
                 conv=(T, ks, dilation, pad_l, stride), tile=tile)
    return finish(out, on_gpu(x, weight, bias))
