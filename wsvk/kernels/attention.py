"""Scaled dot-product attention (shaders/attention.wgsl), torch SDPA semantics.

Two kernels: `prefill` (flash-style online softmax over key blocks staged in workgroup
memory, one workgroup per block of queries) and `decode` (a few query rows: the keys are
split across workgroups, flash-decoding style, then `combine` merges the splits).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..gpu import GpuArray, Layout
from .common import alias, as_array, common_dtype, finish, on_gpu, runtime, to_gpu

MAX_HEAD_DIM = 128
WG_STORAGE_BUDGET = 16384  # WebGPU's default workgroup-memory limit: fits any adapter
DECODE_MAX_LQ = 4  # up to this many queries per (b, h), the split-key decode kernel wins
DECODE_WG = 64
DECODE_TARGET_GROUPS = 128  # split the keys until this many workgroups are busy
# prefill tiles (BQ queries, BK keys, TPQ threads per query), best first; the first one
# whose workgroup memory fits is taken (D = Dv = 64 -> 16 x 16, D = 128 -> 8 x 8)
PREFILL_TILES = ((32, 32, 4), (16, 32, 4), (16, 16, 4), (8, 16, 8), (8, 8, 8))
PATHS = ("prefill", "decode")  # the kernel variants; None picks by the number of queries
PARAMS = Layout("h lq lk n_groups causal has_mask scale:f n_split m_sb m_sh m_si m_sj")
# decode_cache, the resident decoder's attention over per-sequence KV caches
CACHE_PARAMS = Layout("NH L W MAXS nsplit P scale:f src_stride ss")
CACHE_CH = 64        # keys per split: many small workgroups (a decode step has few)
CACHE_CH_MAX = 2048  # decode_cache stages CH scores (+ DH + 64 floats) in workgroup memory


def _aliases(dt, mask_dt=np.float32, wt=np.float32) -> dict:
    return {"T": alias(dt), "M": alias(mask_dt), "WT": alias(wt)}  # one module: every alias, always


def cache_pipeline(rt, wt, dh: int, ch: int, self_attn: bool, rope: bool):
    """attention.wgsl's decode_cache for caches of storage type wt, head width dh, ch keys per split."""
    return rt.pipeline("attention", "decode_cache", {"DH": dh, "CH": ch, "SELF": self_attn, "ROPE": rope},
                       aliases=_aliases(np.float32, np.float32, wt))


def auto_ch(n_head: int, keys: int, fits) -> int:
    """Keys per decode_cache split for caches of up to `keys`: CACHE_CH, doubled while n_head x
    splits do not `fits` (the combining gemv's workgroup memory)."""
    ch = CACHE_CH
    while not fits(n_head * -(-keys // ch)):
        if ch >= keys or ch >= CACHE_CH_MAX:
            raise ValueError(f"{n_head} heads over {keys} keys do not fit the resident decoder's workgroup memory")
        ch *= 2
    return ch


def _prefill_tile(d: int, dv: int, limit: int) -> tuple[int, int, int]:
    for bq, bk, tpq in PREFILL_TILES:
        ks = d + 1 - d % 2
        nbytes = 4 * (bq * d + bk * ks + bk * dv + 4 * tpq + bq * bk)  # shaders/attention.wgsl: QSZ..SSZ
        if nbytes <= limit and -(-dv // tpq) <= 32:
            return bq, bk, tpq
    raise ValueError(f"attention: head dims D={d}, Dv={dv} need more workgroup memory than {limit} bytes")


def _decode_chunk(rows: int, lk: int) -> int:
    """Keys per split: the largest of 256/128/64 that still keeps enough workgroups busy."""
    for ch in (256, 128):
        if rows * -(-lk // ch) >= DECODE_TARGET_GROUPS:
            return ch
    return 64


def _mask_view(mask, target: tuple) -> tuple:
    """(array to bind, its dtype, strides for b, h, i, j in elements with 0 on broadcast dims).

    numpy masks: boolean -> additive 0 / -inf (True = attend), floats -> float32, kept at
    their own shape (np.broadcast_to views are collapsed back to size 1 first).
    """
    shape = tuple(int(s) for s in mask.shape)
    if len(shape) > 4:
        raise ValueError(f"attention: mask has {len(shape)} dims; it must broadcast to {target}")
    full = (1,) * (4 - len(shape)) + shape
    for got, want in zip(full, target):
        if got not in (1, want):
            raise ValueError(f"attention: mask shape {shape} does not broadcast to [B, H, Lq, Lk] = {target}")
    if isinstance(mask, GpuArray):
        if mask.dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise TypeError(f"attention: a GpuArray mask must be additive float32/float16, not {mask.dtype} "
                            "(pass boolean masks as numpy)")
        if mask.dtype == np.float16 and not runtime().has_f16:
            raise TypeError("attention: a float16 mask needs the shader-f16 feature, which this adapter lacks")
        arr, dt = mask, mask.dtype
    else:
        m = np.asarray(mask)
        if m.dtype == np.bool_:
            conv = lambda a: np.where(a, np.float32(0), np.float32(-np.inf))  # noqa: E731
        elif m.dtype.kind == "f":
            conv = lambda a: a.astype(np.float32)  # noqa: E731
        else:
            raise TypeError(f"attention: mask dtype {m.dtype} is not supported (bool or float)")
        # undo broadcasting views so a broadcast mask is uploaded at its small shape
        m = m[tuple(slice(0, 1) if st == 0 and n > 1 else slice(None) for st, n in zip(m.strides, m.shape))]
        full = (1,) * (4 - m.ndim) + m.shape
        arr, dt = np.ascontiguousarray(conv(m)), np.dtype(np.float32)
    strides, acc = [], 1
    for n in reversed(full):
        strides.append(0 if n == 1 else acc)
        acc *= n
    return arr, dt, tuple(reversed(strides))


def attention(q, k, v, mask=None, causal: bool = False, scale: float | None = None, *, path: str | None = None):
    """softmax(q k^T * scale + mask) v, as torch.nn.functional.scaled_dot_product_attention.

    q [B, H, Lq, D], k [B, H, Lk, D], v [B, H, Lk, Dv] (D, Dv <= 128) -> [B, H, Lq, Dv].
    `mask`: additive float (may hold -inf) or boolean (True = attend), broadcastable to
    [B, H, Lq, Lk]; GpuArray masks must be additive float. `causal`: query i sees keys
    j <= i (top-left aligned, also when Lq != Lk); not allowed together with `mask`.
    `scale` defaults to 1/sqrt(D). Rows with every key masked give 0, as torch 2.11 CPU.
    float32 (float64 numpy is taken as float32) or float16 with shader-f16 (f32 math).
    path: the kernel, "prefill" or "decode" (None: decode for at most DECODE_MAX_LQ queries).
    """
    q, k, v = as_array(q), as_array(k), as_array(v)
    mask = None if mask is None else as_array(mask)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"attention: {name} must be 4-D [B, H, L, D], got shape {tuple(x.shape)}")
    (bsz, heads, lq, d), (kb, kh, lk, kd), (vb, vh, vl, dv) = q.shape, k.shape, v.shape
    if (kb, kh) != (bsz, heads) or (vb, vh) != (bsz, heads):
        raise ValueError(f"attention: batch/head dims differ: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if kd != d:
        raise ValueError(f"attention: q head dim {d} != k head dim {kd}")
    if vl != lk:
        raise ValueError(f"attention: k has {lk} keys but v has {vl}")
    if not (1 <= d <= MAX_HEAD_DIM) or dv > MAX_HEAD_DIM:
        raise ValueError(f"attention: head dims D={d}, Dv={dv} must be in 1..{MAX_HEAD_DIM}")
    if causal and mask is not None:
        raise ValueError("attention: pass either mask or causal=True, not both (as torch documents)")
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"attention: causal must be a bool, got {type(causal).__name__}")
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    elif isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real):
        raise TypeError(f"attention: scale must be a real number, got {type(scale).__name__}")
    if path is not None and path not in PATHS:
        raise ValueError(f"attention: unknown path {path!r}")
    dt = common_dtype(q=q, k=k, v=v)
    target = (bsz, heads, lq, lk)
    mask_arr, mask_dt, mstr = (None, np.dtype(np.float32), (0, 0, 0, 0)) if mask is None else _mask_view(mask, target)
    rt = runtime()
    for name, n in (("q", q.size), ("k", k.size), ("v", v.size), ("out", bsz * heads * lq * dv)):
        if n * dt.itemsize > rt.max_binding:
            raise ValueError(f"attention: {name} needs {n * dt.itemsize} bytes, over this adapter's "
                             f"storage binding limit of {rt.max_binding}")
    gpu_face = on_gpu(q, k, v, mask)
    out_shape = (bsz, heads, lq, dv)
    if bsz * heads * lq * dv == 0 or lk == 0:  # nothing to attend to: torch returns zeros
        out = rt.upload(np.zeros(out_shape, dt)) if math.prod(out_shape) else rt.empty(out_shape, dt)
        return finish(out, gpu_face)

    gq, gk, gv = to_gpu(q, dt), to_gpu(k, dt), to_gpu(v, dt)
    gm = rt.empty((1,), np.float32) if mask_arr is None else to_gpu(mask_arr, mask_dt)
    out = rt.empty(out_shape, dt)
    aliases = _aliases(dt, mask_dt)
    rows = bsz * heads * lq
    if path is None:
        path = "decode" if lq <= DECODE_MAX_LQ else "prefill"

    def params(n_groups, n_split):
        return rt.uniform(PARAMS, h=heads, lq=lq, lk=lk, n_groups=n_groups, causal=bool(causal),
                          has_mask=mask is not None, scale=scale, n_split=n_split, m_sb=mstr[0], m_sh=mstr[1],
                          m_si=mstr[2], m_sj=mstr[3])

    if path == "prefill":
        limit = min(WG_STORAGE_BUDGET, rt.workgroup_bytes)
        bq, bk, tpq = _prefill_tile(d, dv, limit)
        n_groups = bsz * heads * -(-lq // bq)
        pipe = rt.pipeline("attention", "prefill", constants={"D": d, "DV": dv, "BQ": bq, "BK": bk, "TPQ": tpq},
                           aliases=aliases)
        rt.run(pipe, [gq, gk, gv, gm, out, params(n_groups, 1)], rt.grid(n_groups))
        return finish(out, gpu_face)

    ch = _decode_chunk(rows, lk)
    n_split = -(-lk // ch)
    consts = {"DD": d, "DDV": dv, "CH": ch}
    dec = rt.pipeline("attention", "decode", constants=consts, aliases=aliases)
    # per split: [max, sum, out[Dv]]; one split writes `out` directly (the buffer is unused)
    part = rt.empty((rows * n_split * (dv + 2) if n_split > 1 else 1,), np.float32)
    with rt.recorder("attention.decode") as rec:
        rec.dispatch(dec, [gq, gk, gv, gm, out, params(rows * n_split, n_split), part], rt.grid(rows * n_split))
        if n_split > 1:
            comb = rt.pipeline("attention", "combine", constants={"DDV": dv}, aliases=aliases)
            n = rows * dv
            rec.dispatch(comb, [part, out, params(n, n_split)], rt.grid(-(-n // 64)))
    return finish(out, gpu_face)
