"""A WhisperSpeech decoder (whisperspeech.modules.BaseDecoder) resident on the GPU.

Weights (with the already-merged QKV) and the KV caches are uploaded once; every bind group and
uniform is built once. One decode step (batch 1, one new position) writes a tiny `step` buffer
[pos, token ids...], records every layer into ONE compute pass and ONE submit, copies the logits
into a mappable buffer inside that same submit and reads them back. The command buffer of step
pos + 1 is recorded while the GPU runs step pos (nothing in it depends on the sampled token), so
the host's recording time (~150 dispatches) is hidden behind the GPU's work.

Per layer, 8 dispatches (shaders/decoder.wgsl):
    gemv  LN(attn_ln) -> qkv                   attn  self (appends k/v at pos, stops at pos + 1)
    gemv  combine splits -> out + bias, x +=   gemv  LN(cross_attn_ln) -> q
    attn  cross (fixed keys)                   gemv  combine splits -> out + bias, x +=
    gemv  LN(mlp_ln) -> fc1 + bias + GELU      gemv  fc2 + bias, x +=
plus one embedding dispatch and the head stages (ln_post fused into the first).

Precision (WSVK_PRECISION, read once at construction through Runtime.weight_dtype): the weight
matrices, embedding tables and the KV caches are stored as `self.dtype` (float16 or float32,
the shader's alias WT); activations, biases, layer-norm parameters, softmax and layer-norm
statistics, the attention partials and the logits stay float32, and every dot product
accumulates in f32. The KV caches follow the weights because at S2A lengths they are read as
many bytes per step as the weights are (2 * L * W per layer vs 12 * W^2), while batch-1
activation vectors are a few KiB: keeping those f32 costs nothing and keeps the residual stream
unrounded.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ..gpu import MAP_READ, GpuArray, Layout, Runtime, get_runtime, gpu_errors, raw_pass_calls
from .tensors import f32

SHADER = "decoder"
EMBED_PARAMS = Layout("W V NQ flags")
GEMV_PARAMS = Layout("N K K4 groups eps:f")
ATTN_PARAMS = Layout("NH L W MAXS nsplit P scale:f")
SPLIT_PARAMS = Layout("NH L W P KSUB n")  # heads.wgsl's split
GEMV_ROWS = 8       # rows per gemv workgroup (decoder.wgsl: 256 threads = 8 rows x 32 lanes)
MAX_STAGED = 1792   # gemv XMODE 1/2 stage K floats in workgroup memory (+ 4.5 KiB of wg_sums <= 16 KiB)
WG_BYTES = 16384    # workgroup memory every adapter has (WebGPU's default limit)
WG_SUMS_BYTES = 4096 + 16 + 2 * 256  # shaders/lib/wg_sums.wgsl's arrays (each variable rounds up to 16 bytes)
ATTN_CH = 64        # keys per attention split: many small workgroups (a decode step has few)
ATTN_CH_MAX = 2048  # decoder.wgsl's attn stages CH scores (+ DH + 64 floats) in workgroup memory


def _up16(n: int) -> int:
    return -(-n // 16) * 16


def cw_max(W: int) -> int:
    """How many (head, split) weights the combining gemv (XMODE 2) stages next to its W inputs
    (two arrays of them, each rounded up to 16 bytes)."""
    return (WG_BYTES - WG_SUMS_BYTES - _up16(4 * W) - 32) // 8


def auto_ch(n_head: int, W: int, keys: int) -> int:
    """Keys per attention split for caches of up to `keys`: ATTN_CH, doubled while the splits
    do not fit the combining gemv's workgroup memory."""
    ch = ATTN_CH
    while n_head * -(-keys // ch) > cw_max(W):
        if ch >= keys or ch >= ATTN_CH_MAX:
            raise ValueError(f"{n_head} heads over {keys} keys do not fit the resident decoder's workgroup memory")
        ch *= 2
    return ch


def _pipeline(rt, entry: str, constants: dict | None = None, wt: str = "f32", subgroups: bool | None = None):
    """The decoder.wgsl pipeline for `entry` with storage type WT = `wt` ("f32"/"f16"),
    subgroup reductions where the adapter has them (and `subgroups` is not False)."""
    sg = rt.has_subgroups and subgroups is not False
    constants = {**(constants or {}), **({"SUBGROUPS": sg} if entry == "gemv" else {})}
    return rt.pipeline(SHADER, entry, constants, aliases={"WT": wt}, subgroups=sg)


@dataclass
class LayerWeights:
    """One decoder layer on the GPU: layer norms (gamma, beta, eps), linears (weight WT, bias),
    its self-attention KV cache and its cross-attention keys/values [NH, L, DH] (WT)."""

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


class HeadStage:
    """One GEMV of the output head: out = act(in @ w^T + b), optional layer norm in front.

    ln: (gamma, beta, eps) or None; group: rows per input group (row n reads input group n // group).
    """

    def __init__(self, w, b=None, ln=None, gelu=False, group=0):
        self.w, self.b, self.ln, self.gelu, self.group = f32(w), None if b is None else f32(b), ln, gelu, group


class ResidentDecoder:
    """The decoder layers, embedding and head of one model on the GPU.

    layers: BaseDecoder.layers (attn.qkv, cross_attn.q/kv merged by convert_for_eval).
    tables: [NQ, V, W] token embeddings summed per step; pos_emb: [P, W] added at `pos` or None;
    extra: True when a per-chunk [W] vector is added (T2S' cps embedding); rope: (cos, sin) [P, Dh]
    or None; ksub: RoPE position multiplier of the cross-attention keys; self_len / cross_len: the
    KV cache lengths; head: HeadStages, the first one reading the residual stream; ch: keys per
    attention split (None: auto_ch, 64 where it fits; tests pass small ones to get many splits);
    prerecord: record step pos + 1 while step pos runs (off only to measure what it saves);
    subgroups: False runs the GEMVs' workgroup-memory reduction on an adapter with subgroups.
    """

    def __init__(self, layers, n_head: int, tables, pos_emb, extra: bool, rope, ksub: int,
                 self_len: int, cross_len: int, head: list[HeadStage], rt: Runtime | None = None,
                 ch: int | None = None, prerecord: bool = True, subgroups: bool | None = None):
        rt = rt or get_runtime()
        self.rt = rt
        self.subgroups = subgroups
        self.dtype = rt.weight_dtype  # raises ConfigError for WSVK_PRECISION=f16 without shader-f16
        self.wt = "f16" if self.dtype == np.float16 else "f32"
        self.n_layers = len(layers)
        W = int(layers[0].attn.n_state)
        self.W, self.NH = W, int(n_head)
        if W % self.NH:
            raise ValueError(f"width {W} is not a multiple of {n_head} heads")
        self.DH = W // self.NH
        if self.DH > 256 or W > MAX_STAGED:
            raise ValueError(f"head width {self.DH} / width {W} too large for the resident decoder")
        self.tables = f32(tables)
        if self.tables.ndim != 3 or self.tables.shape[2] != W:
            raise ValueError(f"embedding tables must be [NQ, V, {W}], got {self.tables.shape}")
        self.NQ, self.V = self.tables.shape[:2]
        self.self_len, self.cross_len, self.ksub = int(self_len), int(cross_len), int(ksub)
        self.ch = int(ch) if ch is not None else auto_ch(self.NH, W, max(self.self_len, self.cross_len))
        self.rope = rope is not None
        self._keep = []  # uniform buffers and dummies referenced by the bind groups

        def up(a):
            return rt.upload(f32(a))

        def upw(a):  # weight matrices / tables in the storage type
            return rt.upload(f32(a).astype(self.dtype))

        # ---- per-step inputs and activations
        self.step_buf = rt.empty((1 + self.NQ,), np.uint32)
        self.x = rt.empty((W,))
        self.qkv = rt.empty((3 * W,))
        self.qx = rt.empty((W,))
        ffn = int(layers[0].mlp[0].out_features)
        self.h = rt.empty((ffn,))
        self.maxs_self = -(-self.self_len // self.ch)
        self.ns_cross = -(-self.cross_len // self.ch)
        self.part_s = rt.empty((self.NH * self.maxs_self * (self.DH + 2),))
        self.part_c = rt.empty((self.NH * self.ns_cross * (self.DH + 2),))
        self.dummy = rt.empty((64,))
        self.extra = rt.empty((W,)) if extra else None
        if extra:
            rt.write(self.extra, np.zeros(W, np.float32))

        if self.rope:
            cos, sin = f32(rope[0]), f32(rope[1])
            self.P = cos.shape[0]
            need = max(self.self_len - 1, (self.cross_len - 1) * self.ksub)
            if cos.shape != (self.P, self.DH) or sin.shape != cos.shape or need >= self.P:
                raise ValueError(f"RoPE tables {cos.shape} do not cover [{need + 1}, {self.DH}]")
            self.rope_buf = up(np.concatenate([cos, sin]))
        else:
            self.P, self.rope_buf = 1, self.dummy

        # ---- weights, once
        self.layers = []
        for i, l in enumerate(layers):
            if l.attn.qkv is None or l.cross_attn is None or l.cross_attn.kv is None:
                raise ValueError(f"decoder layer {i}: QKV not merged; prepare the model with "
                                 "wsvk.tts.models.for_cpu(model) (convert_for_eval) first")
            gelu = l.mlp[1]
            if getattr(gelu, "approximate", "none") != "none":
                raise ValueError(f"decoder layer {i}: GELU(approximate={gelu.approximate!r}) is not supported")
            def norm(ln):
                return (up(ln.weight), up(ln.bias), float(ln.eps))

            def linear(lin, bias_dtype=np.float32):
                return (upw(lin.weight), None if lin.bias is None else rt.upload(f32(lin.bias).astype(bias_dtype)))

            kv_shape, ckv_shape = (self.NH, self.self_len, self.DH), (self.NH, self.cross_len, self.DH)
            self.layers.append(LayerWeights(
                attn_ln=norm(l.attn_ln), cross_ln=norm(l.cross_attn_ln), mlp_ln=norm(l.mlp_ln),
                qkv=linear(l.attn.qkv), out=linear(l.attn.out), cross_q=linear(l.cross_attn.q),
                cross_kv=linear(l.cross_attn.kv, self.dtype), cross_out=linear(l.cross_attn.out),
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

        # ---- the step plan: (pipeline, bind group, groups or None = self-attention, sized by pos)
        self.plan = []
        self.labels = []  # one per plan entry, for profile_step
        self._build_plan(head)
        self._prefill_n = max(i for i, lab in enumerate(self.labels) if lab == "attn self") + 1
        last_n = head[-1].w.shape[0]
        self.logits = self._head_out[-1]
        self.n_logits = last_n
        self._maps = [rt.device.create_buffer(size=max(16, -(-4 * last_n // 16) * 16), usage=MAP_READ)
                      for _ in range(2)]
        self.prerecord = bool(prerecord)
        self._next: dict = {}  # position -> its pre-recorded command buffer
        self.dispatches_per_step = len(self.plan)
        self.raw_calls = raw_pass_calls()
        try:
            self._raw_plan = [(p._internal, b._internal, g) for p, b, g in self.plan]
        except AttributeError:
            self.raw_calls = None
        self.steps = self.prerecorded_steps = 0  # steps run; of them, run from a pre-recorded buffer
        self.prefilled_steps = 0  # positions run by prefill (no logits)
        self.prefill_seconds = 0.0  # host time of prefill calls (not part of step_s)
        self.record_seconds = 0.0  # host time spent recording steps (set_pipeline/bind/dispatch)
        self.step_seconds = 0.0    # host time of whole steps (write, record, submit, wait, read)
        self.wait_seconds = 0.0    # host time waiting for the logits (GPU time not hidden by recording)

    # ------------------------------------------------------------ building
    def _uniform(self, layout, **values):
        buf = self.rt.uniform_buffer(layout, **values)
        self._keep.append(buf)
        return buf

    def _bind(self, pipe, resources):
        self._keep.append(resources)
        return self.rt.new_bind_group(pipe, resources)

    def _gemv(self, x, w, b, out, N, K, *, ln=None, gelu=False, resid=False, combine=None, group=0):
        """Plan one gemv: out[N] (+)= act(xin @ w^T + b); combine = (n_split or 0, maxs)."""
        xmode = 1 if ln is not None else 2 if combine is not None else 0
        if xmode and K > MAX_STAGED:
            raise ValueError(f"gemv with a fused prologue needs K <= {MAX_STAGED}, got {K}")
        consts = {"XMODE": xmode, "HAS_BIAS": b is not None, "GELU": gelu, "RESID": resid,
                  "VEC4": K % 4 == 0, "XS": K if xmode else 4, "GROUP": group}
        if combine is not None:
            if self.NH * combine[1] > cw_max(self.W):
                raise ValueError(f"{self.NH} heads x {combine[1]} key splits of {self.ch} do not fit the combining "
                                 f"gemv's workgroup memory: use a larger split")
            consts.update(G_DH=self.DH, G_CH=self.ch, G_NSPLIT=combine[0], G_MAXS=combine[1],
                          G_CW=self.NH * combine[1])
        pipe = _pipeline(self.rt, "gemv", consts, self.wt, self.subgroups)
        groups = -(-N // GEMV_ROWS)
        eps = ln[2] if ln is not None else 0.0
        uni = self._uniform(GEMV_PARAMS, N=N, K=K, K4=K // 4, groups=groups, eps=eps)
        gam, bet = (ln[0], ln[1]) if ln is not None else (self.dummy, self.dummy)
        bg = self._bind(pipe, [self.step_buf, x, w, w, b if b is not None else self.dummy, gam, bet, out, uni])
        self.plan.append((pipe, bg, self.rt.grid(groups)))
        self.labels.append(f"gemv {N}x{K}" + (" +ln" if ln is not None else "") + (" +attn-combine" if combine else ""))

    def _attn(self, src, kc, vc, part, L, maxs, self_attn):
        consts = {"DH": self.DH, "CH": self.ch, "SELF": self_attn, "ROPE": self.rope}
        pipe = _pipeline(self.rt, "attn", consts, self.wt)
        uni = self._uniform(ATTN_PARAMS, NH=self.NH, L=L, W=self.W, MAXS=maxs, nsplit=maxs, P=self.P,
                            scale=1.0 / math.sqrt(self.DH))
        bg = self._bind(pipe, [self.step_buf, src, kc, vc, self.rope_buf, part, uni])
        self.plan.append((pipe, bg, None if self_attn else self.rt.grid(self.NH * maxs)))
        self.labels.append("attn self" if self_attn else "attn cross")

    def _build_plan(self, head):
        W, rt = self.W, self.rt
        flags = (1 if self.P_pos else 0) | (2 if self.extra is not None else 0)
        pipe = _pipeline(rt, "embed", None, self.wt)
        uni = self._uniform(EMBED_PARAMS, W=W, V=self.V, NQ=self.NQ, flags=flags)
        bg = self._bind(pipe, [self.step_buf, self.tables_buf, self.pos_buf,
                               self.extra if self.extra is not None else self.dummy, self.x, uni])
        self.plan.append((pipe, bg, (-(-W // 256), 1, 1)))
        self.labels.append("embed")
        ffn = self.h.shape[0]
        for g in self.layers:
            self._gemv(self.x, *g.qkv, self.qkv, 3 * W, W, ln=g.attn_ln)
            self._attn(self.qkv, g.k_cache, g.v_cache, self.part_s, self.self_len, self.maxs_self, True)
            self._gemv(self.part_s, *g.out, self.x, W, W, resid=True, combine=(0, self.maxs_self))
            self._gemv(self.x, *g.cross_q, self.qx, W, W, ln=g.cross_ln)
            self._attn(self.qx, g.cross_k, g.cross_v, self.part_c, self.cross_len, self.ns_cross, False)
            self._gemv(self.part_c, *g.cross_out, self.x, W, W, resid=True, combine=(self.ns_cross, self.ns_cross))
            self._gemv(self.x, *g.fc1, self.h, ffn, W, ln=g.mlp_ln, gelu=True)
            self._gemv(self.h, *g.fc2, self.x, W, ffn, resid=True)
        self._head_out = []
        src = self.x
        for st, w, b, ln in self.head_w:
            N, K = st.w.shape
            groups_in = N // st.group if st.group else 1
            if (st.group and N % st.group) or src.size != groups_in * K:
                raise ValueError(f"head stage weight {st.w.shape} (group {st.group}) does not take "
                                 f"the {src.size} values before it")
            out = rt.empty((N,))
            self._gemv(src, w, b, out, N, K, ln=ln, gelu=st.gelu, group=st.group)
            self._head_out.append(out)
            src = out

    # ------------------------------------------------------------ per chunk
    def set_cross(self, xenc, extra=None) -> None:
        """Per chunk: the cross-attention K/V of every layer from the encoder output [cross_len, W]
        (tiled matmul + heads.wgsl's split with RoPE on the keys), and the per-chunk extra vector.
        xenc: a GpuArray of self.dtype (the resident encoder's output: nothing leaves the GPU) or
        a CPU array/tensor (uploaded). Joins an open recorder, else submits once."""
        from ..ops import linear

        rt, W = self.rt, self.W
        if isinstance(xenc, GpuArray):
            if xenc.dtype != self.dtype or xenc.shape != (self.cross_len, W):
                raise ValueError(f"encoder output {xenc.dtype} {xenc.shape} is not {np.dtype(self.dtype)} "
                                 f"({self.cross_len}, {W})")
            gx = xenc
        else:
            xe = f32(xenc).reshape(-1, W)
            if xe.shape[0] != self.cross_len:
                raise ValueError(f"encoder output has {xe.shape[0]} positions, the cross caches {self.cross_len}")
            gx = rt.upload(xe.astype(self.dtype))  # ops.linear takes one dtype; it accumulates in f32
        if extra is not None:
            if self.extra is None:
                raise ValueError("this decoder takes no per-chunk extra vector")
            rt.write(self.extra, f32(extra).reshape(W))
        pipe = rt.pipeline("heads", "split", {"DH": self.DH, "NP": 2, "ROPE_PARTS": int(self.rope)},
                           aliases={"S": self.wt, "D": self.wt})
        n = self.cross_len * W
        uni = rt.uniform(SPLIT_PARAMS, NH=self.NH, L=self.cross_len, W=W, P=self.P, KSUB=self.ksub, n=n)
        with rt.recorder("wsvk.resident.cross") as rec:
            for g in self.layers:
                kv = linear(gx, *g.cross_kv)  # [cross_len, 2W] (tiled kernel)
                rec.dispatch(pipe, [kv, g.cross_k, g.cross_v, self.dummy_w, self.rope_buf, uni],
                             rt.grid(-(-n // 256)), "cross kv")

    # ------------------------------------------------------------ per step
    def _step_input(self, tokens, pos) -> tuple[int, np.ndarray]:
        """(pos, the checked step buffer [pos, token ids...] as uint32)."""
        pos = int(pos)
        toks = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if toks.size != self.NQ:
            raise ValueError(f"step needs {self.NQ} token ids, got {toks.size}")
        if toks.min() < 0 or toks.max() >= self.V:
            raise ValueError(f"token ids {toks.tolist()} outside [0, {self.V})")
        if not 0 <= pos < self.self_len or (self.P_pos and pos >= self.P_pos):
            raise ValueError(f"position {pos} outside the decoder's {self.self_len} positions")
        if self.rt.recording:
            raise RuntimeError("a resident decode step reads its results back: call it outside a recorder")
        return pos, np.concatenate([[pos], toks]).astype(np.uint32)

    def _attn_groups(self, pos: int) -> tuple:
        """Self-attention's grid at `pos`: NH heads x the key splits covering pos + 1 keys."""
        return self.rt.grid(self.NH * -(-(pos + 1) // self.ch))

    def step(self, tokens, pos: int) -> np.ndarray:
        """One decode step: token ids [NQ] at position `pos` -> logits [n_logits] (float32)."""
        rt = self.rt
        pos, data = self._step_input(tokens, pos)
        t0 = time.perf_counter()
        with rt.lock:
            cmd = self._next.pop(pos, None)
            self._next.clear()  # a pre-recorded step for another position is stale
            if cmd is None:
                cmd = self._record(pos)
            else:
                self.prerecorded_steps += 1
            rt.write(self.step_buf, data)
            rt.submit_commands(cmd)
            rt.stats["dispatches"] += len(self.plan)
            if self.prerecord and pos + 1 < self.self_len:
                # the likely next step is recorded while the GPU runs this one; its ids and
                # position reach the GPU through step_buf, written just before its submit
                self._next[pos + 1] = self._record(pos + 1)
            t1 = time.perf_counter()
            buf = self._maps[pos % 2]
            with gpu_errors("reading the logits back"):
                try:
                    buf.map_async("READ_NOSYNC").sync_wait()  # what queue.read_buffer does
                except AttributeError:
                    buf.map_sync(1)
                raw = buf.read_mapped(0, buf.size)
                buf.unmap()
            rt.stats["readbacks"] += 1
        self.steps += 1
        t2 = time.perf_counter()
        self.wait_seconds += t2 - t1
        self.step_seconds += t2 - t0
        return np.frombuffer(raw, np.float32)[: self.n_logits].copy()

    def _record(self, pos: int):
        """The finished command buffer of the step at `pos`: the whole plan in one compute pass
        (self-attention's grid covers pos + 1 keys), then the logits copied to a mappable buffer
        (two, alternating by position, so a pre-recorded step never targets the mapped one)."""
        t0 = time.perf_counter()
        with gpu_errors("recording a decode step"):
            enc = self.rt.device.create_command_encoder(label="wsvk.resident.step")
            self._encode_pass(enc, pos)
            buf = self._maps[pos % 2]
            enc.copy_buffer_to_buffer(self.logits.buffer, 0, buf, 0, buf.size)
            cmd = enc.finish()
        self.record_seconds += time.perf_counter() - t0
        return cmd

    def _encode_pass(self, enc, pos: int, prefill: bool = False) -> int:
        """The step plan at `pos` as one compute pass of `enc` (it reads step_buf as it is then);
        returns the number of dispatches. prefill: stop after the last layer's self-attention,
        which appends the position's key/value: what follows only feeds the logits."""
        attn_groups = self._attn_groups(pos)
        n = self._prefill_n if prefill else len(self.plan)
        cpass = enc.begin_compute_pass()
        last = None
        if self.raw_calls is not None:
            set_pipeline, set_bind_group, dispatch, null = self.raw_calls
            h = cpass._internal
            for pipe, bg, groups in self._raw_plan[:n]:
                if pipe is not last:
                    set_pipeline(h, pipe)
                    last = pipe
                set_bind_group(h, 0, bg, 0, null)
                dispatch(h, *(groups or attn_groups))
        else:
            for pipe, bg, groups in self.plan[:n]:
                if pipe is not last:
                    cpass.set_pipeline(pipe)
                    last = pipe
                cpass.set_bind_group(0, bg)
                cpass.dispatch_workgroups(*(groups or attn_groups))
        cpass.end()
        return n

    PREFILL_CHUNK = 64  # positions per prefill submit: keeps each one short (OS GPU watchdogs)

    def prefill(self, rows, start: int = 0) -> None:
        """Run the steps of a known prefix (a prompt) without reading anything back: token ids
        rows[i] [NQ] at position start + i fill the KV caches as step() would (up to the last
        layer's self-attention: nothing after it reaches a cache), up to PREFILL_CHUNK positions
        per submit (one submit for a usual prompt). Each position's [pos, ids] row is copied into
        step_buf from one uploaded table between the passes (they run in recording order)."""
        rt = self.rt
        rows = [list(r) for r in rows]
        if not rows:
            return
        data = np.stack([self._step_input(r, start + i)[1] for i, r in enumerate(rows)])
        row_bytes = 4 * data.shape[1]
        t0 = time.perf_counter()
        with rt.lock:
            self._next.clear()
            table = rt.upload(data)
            for c0 in range(0, len(rows), self.PREFILL_CHUNK):
                n = min(self.PREFILL_CHUNK, len(rows) - c0)
                with gpu_errors("recording a prefill"):
                    enc = rt.device.create_command_encoder(label="wsvk.resident.prefill")
                    dispatches = 0
                    for i in range(c0, c0 + n):
                        enc.copy_buffer_to_buffer(table.buffer, i * row_bytes, self.step_buf.buffer, 0, row_bytes)
                        dispatches += self._encode_pass(enc, start + i, prefill=True)
                    cmd = enc.finish()
                rt.submit_commands(cmd)
                rt.stats["dispatches"] += dispatches
            self.prefill_seconds += time.perf_counter() - t0  # the pre-recorded step counts in record_s
            nxt = start + len(rows)
            if self.prerecord and nxt < self.self_len:
                self._next[nxt] = self._record(nxt)  # the first sampled step, recorded meanwhile
        self.prefilled_steps += len(rows)

    def profile_step(self, tokens, pos: int) -> list[tuple[str, float]]:
        """Run one step (it updates the KV caches at `pos` as `step` does) with every dispatch in
        its own timestamped pass: [(label, GPU ms)] in plan order. Needs timestamp-query."""
        rt = self.rt
        pos, data = self._step_input(tokens, pos)
        if not rt.has_timestamps:
            raise RuntimeError(f"{rt.info['name']} has no timestamp-query: GPU times are not available")
        attn_groups = self._attn_groups(pos)
        with rt.lock:
            self._next.clear()
            rt.write(self.step_buf, data)
            with rt.recorder("wsvk.resident.profile", timestamps=True) as rec:
                for (pipe, bg, groups), label in zip(self.plan, self.labels):
                    rec.dispatch_bound(pipe, bg, groups or attn_groups, label)
        return rec.gpu_ms

    def counters(self) -> dict:
        """dispatches per step, steps run and host seconds so far: recording (hidden behind the
        GPU when pre-recorded), waiting for the logits, whole steps; totals and per step."""
        n = max(self.steps, 1)
        out = {"dispatches_per_step": self.dispatches_per_step, "steps": self.steps,
               "prerecorded_steps": self.prerecorded_steps, "prefilled_steps": self.prefilled_steps,
               "prefill_s": self.prefill_seconds}
        for name, v in (("record_s", self.record_seconds), ("wait_s", self.wait_seconds),
                        ("step_s", self.step_seconds)):
            out[name], out[name + "_per_step"] = v, v / n
        return out

    def reset_counters(self) -> None:
        self.steps = self.prerecorded_steps = self.prefilled_steps = 0
        self.record_seconds, self.wait_seconds, self.step_seconds, self.prefill_seconds = 0.0, 0.0, 0.0, 0.0
