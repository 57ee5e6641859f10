"""The resident decoder's plan: a WhisperSpeech decoder's weights, its slots' state and the list of
dispatches of one decode step, all built once (ResidentDecoder runs it).

A step advances B columns, one per active slot (a sequence of the batch). Every dispatch reads
its columns from the step buffer ([n_cols, splits per head, 0, 0] then per column [slot, pos,
token ids...]), so bind groups and uniforms never change; only the grids depend on the number of
columns and on the longest self-attention (`grid`).

Per layer, 8 dispatches (shaders/matmul.wgsl gemv, shaders/attention.wgsl decode_cache):
    gemv  LN(attn_ln) -> qkv                   attn  self (appends k/v at pos, stops at pos + 1)
    gemv  combine splits -> out + bias, x +=   gemv  LN(cross_attn_ln) -> q
    attn  cross (the slot's encoder output)    gemv  combine splits -> out + bias, x +=
    gemv  LN(mlp_ln) -> fc1 + bias + GELU      gemv  fc2 + bias, x +=
plus the embedding (shaders/embed.wgsl) and the head stages (ln_post fused into the first).

Precision (WSVK_PRECISION, read once through Runtime.precision): the weight matrices, embedding
tables and KV caches are stored as `dtype` (f16 or f32, the shaders' WT); activations, biases,
layer-norm parameters, softmax and layer-norm statistics, the attention partials and the logits
stay f32, and every dot product accumulates in f32. The KV caches follow the weights because at
S2A lengths they are read as many bytes per step as the weights are, while the activation
vectors are a few KiB per column. Under q8 every layer's GEMV matrices (qkv, out, cross_q,
cross_out, fc1, fc2) are 8-bit (matmul.Q8Weight, quantized here at load) and `dtype` (f16 with
shader-f16, else f32) holds the rest: the tables, the caches, cross_kv (it runs once per chunk,
through the tiled matmul) and the head, whose error reaches the logits' argmax directly (8-bit
there cost 2 dB of logit SNR and doubled the top-1 flips, for 5% of S2A medium's bytes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..gpu import GpuArray, Runtime
from ..kernels import attention, embed, matmul
from .tensors import f32


class HeadStage:
    """One GEMV of the output head: out = act(in @ w^T + b), optional layer norm in front.

    ln: (gamma, beta, eps) or None; group: rows per input group (row n reads input group n // group).
    """

    def __init__(self, w, b=None, ln=None, gelu=False, group=0):
        self.w, self.b, self.ln, self.gelu, self.group = f32(w), None if b is None else f32(b), ln, gelu, group


@dataclass
class LayerWeights:
    """One decoder layer on the GPU: layer norms (gamma, beta, eps), linears (weight WT, bias),
    its self-attention KV caches and its cross-attention keys/values, [slots, NH, L, DH] (WT)."""

    attn_ln: tuple
    cross_ln: tuple
    mlp_ln: tuple
    qkv: tuple        # fused q|k|v projection
    out: tuple        # self-attention output projection
    cross_q: tuple
    cross_kv: tuple   # fused k|v of the encoder output (its bias is WT: it runs through ops.linear)
    cross_out: tuple
    fc1: tuple
    fc2: tuple
    k_cache: GpuArray
    v_cache: GpuArray
    cross_k: GpuArray
    cross_v: GpuArray


@dataclass
class Dispatch:
    """One entry of the step: its grid is `per_col` workgroups per column ("rows", "cross"), per
    column and key split ("self"), or (ceil(W / 256), columns) ("embed")."""

    pipeline: object
    group: object
    kind: str
    per_col: int
    label: str


def matrix_bytes(N: int, K: int, precision: str, itemsize: int) -> int:
    """GPU memory of an [N, K] GEMV weight matrix at a precision (itemsize: f32's or f16's)."""
    return 4 * matmul.q8_layout(N, K)[1] if precision == "q8" else N * K * itemsize


def weight_bytes(layers, matrices, tables, precision: str, itemsize: int) -> int:
    """What a DecoderPlan of these decoder layers will store of the model's parameters, before
    it exists (to plan memory): the layers as _upload_weights stores them, plus the head's
    `matrices` (weights in the storage dtype, with f32 biases) and the embedding `tables`."""
    total = 0
    for g in layers:
        total += sum(4 * (ln.weight.numel() + ln.bias.numel()) for ln in (g.attn_ln, g.cross_attn_ln, g.mlp_ln))
        for lin in (g.attn.qkv, g.attn.out, g.cross_attn.q, g.cross_attn.out, g.mlp[0], g.mlp[2]):
            total += matrix_bytes(*lin.weight.shape, precision, itemsize) + 4 * _numel(lin.bias)
        total += (g.cross_attn.kv.weight.numel() + _numel(g.cross_attn.kv.bias)) * itemsize
    total += sum(w.numel() * itemsize + 4 * _numel(b) for w, b in matrices)
    return int(total + sum(t.numel() * itemsize for t in tables))


def _numel(t) -> int:
    return 0 if t is None else int(t.numel())


def kv_bytes(n_layers: int, width: int, self_len: int, cross_len: int, itemsize: int) -> int:
    """GPU memory of one slot's caches: self-attention K and V plus cross-attention K and V."""
    return n_layers * 2 * width * (self_len + cross_len) * itemsize


def slots_per_binding(width: int, self_len: int, cross_len: int, itemsize: int, max_binding: int) -> int:
    """The most slots one KV-cache buffer ([slots, heads, length, head width], the longer of the
    two lengths) holds within one binding of max_binding bytes."""
    return max_binding // (width * max(self_len, cross_len) * itemsize)


class DecoderPlan:
    """Weights, per-slot state and the dispatch list of one decoder (see ResidentDecoder)."""

    def __init__(self, rt: Runtime, layers, n_head: int, tables, pos_emb, extra: bool, rope, ksub: int,
                 self_len: int, cross_len: int, head: list[HeadStage], slots: int, ch: int | None,
                 subgroups: bool | None, precision: str | None = None, build: bool = True):
        self.rt = rt
        # f32, f16 or q8 (None: WSVK_PRECISION); ConfigError for f16 without shader-f16
        self.precision = rt.precision(precision)[0]
        self.dtype = rt.storage_dtype(self.precision)
        self.n_layers = len(layers)
        W = int(layers[0].attn.n_state)
        self.W, self.NH = W, int(n_head)
        if W % self.NH:
            raise ValueError(f"width {W} is not a multiple of {n_head} heads")
        self.DH = W // self.NH
        if self.DH > 256 or W > matmul.MAX_STAGED:
            raise ValueError(f"head width {self.DH} / width {W} too large for the resident decoder")
        self.slots = int(slots)
        if self.slots < 1:
            raise ValueError(f"a decoder needs at least one slot, got {slots}")
        self.tables = f32(tables)
        if self.tables.ndim != 3 or self.tables.shape[2] != W:
            raise ValueError(f"embedding tables must be [NQ, V, {W}], got {self.tables.shape}")
        self.NQ, self.V = self.tables.shape[:2]
        self.ss = 2 + self.NQ  # step buffer words per column: slot, pos, token ids
        self.self_len, self.cross_len, self.ksub = int(self_len), int(cross_len), int(ksub)
        self._check_memory()
        self._upload_weights(layers, tables, pos_emb, extra, rope, head)
        self.dispatches: list[Dispatch] = []
        if build:  # else the owner configures the variant (the tuner's choice) before the first step
            self.configure(ch, subgroups)

    def split_fits(self, ch: int) -> bool:
        """Whether attention splits of `ch` keys fit the combining GEMV's workgroup memory."""
        longest = max(-(-self.self_len // ch), -(-self.cross_len // ch))
        return self.NH * longest <= matmul.cw_max(self.W)

    def auto_ch(self) -> int:
        """The split size of the untuned plan (attention.auto_ch: the combining GEMV stages the
        weights of every head's splits)."""
        return attention.auto_ch(self.NH, max(self.self_len, self.cross_len), lambda n: n <= matmul.cw_max(self.W))

    def configure(self, ch: int | None, subgroups: bool | None) -> None:
        """(Re)build the dispatch list for a variant over the same weights and caches: `ch` keys per
        attention split (None: attention.auto_ch), `subgroups` for the GEMVs' reductions (None:
        where the adapter has them, False: workgroup memory). The tuner switches variants this way;
        pipelines are cached by the runtime, so switching back compiles nothing. On an error the
        plan is left as it was."""
        ch = int(ch) if ch is not None else self.auto_ch()
        if not self.split_fits(ch):
            raise ValueError(f"{self.NH} heads x {max(-(-self.self_len // ch), -(-self.cross_len // ch))} key splits "
                             f"of {ch} do not fit the combining gemv's workgroup memory: use a larger split")
        names = ("ch", "subgroups", "maxs_self", "ns_cross", "part_s", "part_c", "_keep", "dispatches", "prefill_n")
        before = {k: getattr(self, k, None) for k in names}
        try:
            self.ch, self.subgroups = ch, subgroups
            self.maxs_self = -(-self.self_len // ch)
            self.ns_cross = -(-self.cross_len // ch)
            B = self.slots
            self.part_s = self.rt.empty((B * self.NH * self.maxs_self * (self.DH + 2),))
            self.part_c = self.rt.empty((B * self.NH * self.ns_cross * (self.DH + 2),))
            self._keep = []  # uniform buffers and bound arrays, alive as long as the bind groups
            self.dispatches = []
            self._build()
            self.prefill_n = max(i for i, d in enumerate(self.dispatches) if d.label == "attn self") + 1
        except BaseException:
            for k, v in before.items():
                setattr(self, k, v)
            raise

    # ------------------------------------------------------------ state
    def slot_bytes(self) -> int:
        return kv_bytes(self.n_layers, self.W, self.self_len, self.cross_len, self.dtype.itemsize)

    def _check_memory(self) -> None:
        fit = slots_per_binding(self.W, self.self_len, self.cross_len, self.dtype.itemsize, self.rt.max_binding)
        if self.slots > fit:
            per_buffer = self.slots * self.W * max(self.self_len, self.cross_len) * self.dtype.itemsize
            raise ValueError(f"{self.slots} slots need {per_buffer / 2**20:.0f} MiB per KV-cache buffer, over this "
                             f"adapter's {self.rt.max_binding / 2**20:.0f} MiB per binding: use at most {fit} slots")

    def _upload_weights(self, layers, tables, pos_emb, extra, rope, head):
        rt, W, B = self.rt, self.W, self.slots
        self.weight_bytes = 0  # the model's parameters as stored here (caches and work buffers apart)

        def held(arr):
            self.weight_bytes += arr.nbytes
            return arr

        def up(a):
            return held(rt.upload(f32(a)))

        def upw(a):  # tables in the storage type
            return held(rt.upload(f32(a).astype(self.dtype)))

        def upm(a):  # a matrix the step's GEMVs read: 8-bit under q8
            return held(matmul.Q8Weight.upload(rt, f32(a))) if self.precision == "q8" else upw(a)

        self.step_buf = rt.empty((4 + B * self.ss,), np.uint32)
        self.x = rt.empty((B, W))
        self.qkv = rt.empty((B, 3 * W))
        self.qx = rt.empty((B, W))
        self.h = rt.empty((B, int(layers[0].mlp[0].out_features)))
        self.dummy = rt.empty((64,))
        self.extra = rt.upload(np.zeros((B, W), np.float32)) if extra else None
        if rope is not None:
            cos, sin = f32(rope[0]), f32(rope[1])
            self.P = cos.shape[0]
            need = max(self.self_len - 1, (self.cross_len - 1) * self.ksub)
            if cos.shape != (self.P, self.DH) or sin.shape != cos.shape or need >= self.P:
                raise ValueError(f"RoPE tables {cos.shape} do not cover [{need + 1}, {self.DH}]")
            self.rope_buf = rt.upload(np.concatenate([cos, sin]))  # derived, not a parameter
        else:
            self.P, self.rope_buf = 1, self.dummy
        self.rope = rope is not None
        self.layers: list[LayerWeights] = []
        for i, l in enumerate(layers):
            if l.attn.qkv is None or l.cross_attn is None or l.cross_attn.kv is None:
                raise ValueError(f"decoder layer {i}: QKV not merged; prepare the model with "
                                 "wsvk.tts.models.for_cpu(model) (convert_for_eval) first")
            gelu = l.mlp[1]
            if getattr(gelu, "approximate", "none") != "none":
                raise ValueError(f"decoder layer {i}: GELU(approximate={gelu.approximate!r}) is not supported")

            def norm(ln):
                return (up(ln.weight), up(ln.bias), float(ln.eps))

            def linear(lin, bias_dtype=np.float32, up_weight=upm):
                bias = None if lin.bias is None else held(rt.upload(f32(lin.bias).astype(bias_dtype)))
                return (up_weight(lin.weight), bias)

            kv_shape, ckv_shape = (B, self.NH, self.self_len, self.DH), (B, self.NH, self.cross_len, self.DH)
            self.layers.append(LayerWeights(
                attn_ln=norm(l.attn_ln), cross_ln=norm(l.cross_attn_ln), mlp_ln=norm(l.mlp_ln),
                qkv=linear(l.attn.qkv), out=linear(l.attn.out), cross_q=linear(l.cross_attn.q),
                cross_kv=linear(l.cross_attn.kv, self.dtype, upw), cross_out=linear(l.cross_attn.out),
                fc1=linear(l.mlp[0]), fc2=linear(l.mlp[2]),
                k_cache=rt.empty(kv_shape, self.dtype), v_cache=rt.empty(kv_shape, self.dtype),
                cross_k=rt.empty(ckv_shape, self.dtype), cross_v=rt.empty(ckv_shape, self.dtype)))
        self.tables_buf = upw(self.tables)
        self.dummy_w = rt.empty((64,), self.dtype)  # bound where a WT buffer is unused
        self.pos_buf = upw(pos_emb) if pos_emb is not None else self.dummy_w
        self.P_pos = 0 if pos_emb is None else int(np.shape(pos_emb)[0])
        self.head_w = []
        for st in head:
            ln = None if st.ln is None else (up(st.ln[0]), up(st.ln[1]), float(st.ln[2]))
            self.head_w.append((st, upw(st.w), None if st.b is None else up(st.b), ln))
        src, self.head_out = self.x, []
        for st in head:
            N, K = st.w.shape
            groups_in = N // st.group if st.group else 1
            if (st.group and N % st.group) or src.size != self.slots * groups_in * K:
                raise ValueError(f"head stage weight {st.w.shape} (group {st.group}) does not take "
                                 f"the {src.size // self.slots} values before it")
            src = rt.empty((self.slots, N))
            self.head_out.append(src)
        self.logits = src  # [slots, n_logits]
        self.n_logits = int(src.shape[1])

    # ------------------------------------------------------------ the dispatch list
    def _add(self, pipe, resources, kind, per_col, label):
        self._keep.append(resources)
        self.dispatches.append(Dispatch(pipe, self.rt.new_bind_group(pipe, resources), kind, per_col, label))

    def _gemv(self, x, w, b, out, N, K, *, ln=None, gelu=False, resid=False, combine=None, group=0):
        """out[c, N] (+)= act(xin_c @ w^T + b) for every column; combine = (n_split or 0, maxs)."""
        xmode = 1 if ln is not None else 2 if combine is not None else 0
        consts = None
        if combine is not None:
            consts = dict(G_DH=self.DH, G_CH=self.ch, G_NSPLIT=combine[0], G_MAXS=combine[1],
                          G_CW=self.NH * combine[1])
        wt, K4, w = matmul.gemv_weight(w)
        pipe = matmul.gemv_pipeline(self.rt, np.float32, wt, xmode=xmode, step=True, bias=b is not None,
                                    gelu=gelu, resid=resid, K=K, group=group, combine=consts, subgroups=self.subgroups)
        groups = -(-N // matmul.GEMV_ROWS)
        x_stride = x.size // self.slots
        uni = self.rt.uniform_buffer(matmul.GEMV_PARAMS, N=N, K=K, K4=K4, groups=groups,
                                     eps=ln[2] if ln is not None else 0.0, x_stride=x_stride, cols=self.slots,
                                     ss=self.ss)
        gam, bet = (ln[0], ln[1]) if ln is not None else (self.dummy, self.dummy)
        what = "" if combine is None else " +self-combine" if combine[0] == 0 else " +cross-combine"
        self._add(pipe, [self.step_buf, x, w, w, b if b is not None else self.dummy, gam, bet, out, uni], "rows",
                  groups, f"gemv {N}x{K}" + (" +ln" if ln is not None else "") + what)

    def _attn(self, src, kc, vc, part, L, maxs, self_attn):
        pipe = attention.cache_pipeline(self.rt, self.dtype, self.DH, self.ch, self_attn, self.rope)
        uni = self.rt.uniform_buffer(attention.CACHE_PARAMS, NH=self.NH, L=L, W=self.W, MAXS=maxs, nsplit=maxs,
                                     P=self.P, scale=1.0 / math.sqrt(self.DH), src_stride=src.size // self.slots,
                                     ss=self.ss)
        self._add(pipe, [self.step_buf, src, kc, vc, self.rope_buf, part, uni], "self" if self_attn else "cross",
                  self.NH * (1 if self_attn else maxs), "attn self" if self_attn else "attn cross")

    def _build(self):
        W = self.W
        flags = (embed.POS if self.P_pos else 0) | (embed.EXTRA if self.extra is not None else 0)
        uni = self.rt.uniform_buffer(embed.PARAMS, W=W, V=self.V, NQ=self.NQ, flags=flags, ss=self.ss)
        extra = self.extra if self.extra is not None else self.dummy
        self._add(embed.pipeline(self.rt, self.dtype), [self.step_buf, self.tables_buf, self.pos_buf, extra, self.x, uni],
                  "embed", -(-W // 256), "embed")
        ffn = self.h.shape[1]
        for g in self.layers:
            self._gemv(self.x, *g.qkv, self.qkv, 3 * W, W, ln=g.attn_ln)
            self._attn(self.qkv, g.k_cache, g.v_cache, self.part_s, self.self_len, self.maxs_self, True)
            self._gemv(self.part_s, *g.out, self.x, W, W, resid=True, combine=(0, self.maxs_self))
            self._gemv(self.x, *g.cross_q, self.qx, W, W, ln=g.cross_ln)
            self._attn(self.qx, g.cross_k, g.cross_v, self.part_c, self.cross_len, self.ns_cross, False)
            self._gemv(self.part_c, *g.cross_out, self.x, W, W, resid=True, combine=(self.ns_cross, self.ns_cross))
            self._gemv(self.x, *g.fc1, self.h, ffn, W, ln=g.mlp_ln, gelu=True)
            self._gemv(self.h, *g.fc2, self.x, W, ffn, resid=True)
        src = self.x
        for (st, w, b, ln), out in zip(self.head_w, self.head_out):
            N, K = st.w.shape
            self._gemv(src, w, b, out, N, K, ln=ln, gelu=st.gelu, group=st.group)
            src = out

    def splits(self, pos: int) -> int:
        """Self-attention key splits covering pos + 1 keys."""
        return -(-(pos + 1) // self.ch)

    def grid(self, d: Dispatch, n_cols: int, splits: int) -> tuple:
        if d.kind == "embed":
            return (d.per_col, n_cols, 1)
        return self.rt.grid(d.per_col * n_cols * (splits if d.kind == "self" else 1))
