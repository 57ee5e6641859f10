"""A WhisperSpeech decoder (whisperspeech.modules.BaseDecoder) resident on the GPU, with slots.

Each of the B slots (set at construction) holds one sequence: its own region of every KV cache,
its own cross-attention keys/values (from its chunk's encoder pass) and its own per-chunk extra
vector. One decode step advances any set of slots by one position each in ONE submit, reading
each weight once from memory: it writes a small step buffer [n, splits, 0, 0, then per column
slot, pos, token ids], runs the plan (wsvk/resident/plan.py) with grids sized for those columns,
copies the logits into a mappable buffer inside the same submit and reads them back. Slots join
(set_cross + prefill) and leave between steps without touching the others.

The command buffer of a step depends only on the number of columns and on the longest
self-attention, not on the tokens, so the likely next step (the same slots, one position on) is
recorded while the GPU runs this one: the host's recording time hides behind the GPU's work.

One thread drives a decoder at a time (its SharedLoop's; step, logits and profile_step are not
for use while that loop runs). A step holds the runtime's lock only to write the step buffer and
submit: recording ahead, the caller's while_waiting work (the samplers' draws) and the wait for
the logits touch only this decoder's buffers, so another decoder's thread (S2A beside T2S in the
streaming engine) can submit while this one records and draws. Not while it waits: wgpu-native's
blocking poll, which a map's wait is, holds up every other thread's submit until it returns
(measured on lavapipe), so the two decoders' steps still take turns on the GPU.
"""

from __future__ import annotations

import time

import numpy as np

from ..gpu import MAP_READ, GpuArray, Runtime, get_runtime, gpu_errors, raw_pass_calls
from .plan import DecoderPlan, HeadStage, kv_bytes
from .tensors import f32

__all__ = ["HeadStage", "ResidentDecoder", "kv_bytes"]


class ResidentDecoder:
    """The decoder layers, embedding and head of one model on the GPU, with `slots` sequences.

    layers: BaseDecoder.layers (attn.qkv, cross_attn.q/kv merged by convert_for_eval).
    tables: [NQ, V, W] token embeddings summed per step; pos_emb: [P, W] added at `pos` or None;
    extra: True when a per-chunk [W] vector is added (T2S' cps embedding); rope: (cos, sin) [P, Dh]
    or None; ksub: RoPE position multiplier of the cross-attention keys; self_len / cross_len: the
    KV cache lengths; head: HeadStages, the first one reading the residual stream; slots: how many
    sequences share a step; ch: keys per attention split (None: 64 where it fits; tests pass small
    ones to get many splits); prerecord: record the next step while this one runs (off only to
    measure what it saves); subgroups: False runs the GEMVs' workgroup-memory reduction on an
    adapter with subgroups; precision: f32, f16, q8 or auto (None: WSVK_PRECISION; see plan.py);
    tune_as: "t2s" or "s2a" to let the tuner choose the plan's variant where ch and subgroups are
    not given (resident/tuner.py; dec.tuning says what it chose and how).
    """

    PREFILL_CHUNK = 64  # positions per prefill submit: keeps each one short (OS GPU watchdogs)

    def __init__(self, layers, n_head: int, tables, pos_emb, extra: bool, rope, ksub: int,
                 self_len: int, cross_len: int, head: list[HeadStage], rt: Runtime | None = None,
                 ch: int | None = None, prerecord: bool = True, subgroups: bool | None = None, slots: int = 1,
                 precision: str | None = None, tune_as: str | None = None):
        self.rt = rt = rt or get_runtime()
        tuned = tune_as is not None and ch is None and subgroups is None
        self.plan = plan = DecoderPlan(rt, layers, n_head, tables, pos_emb, extra, rope, ksub, self_len, cross_len,
                                       head, slots, ch, subgroups, precision, build=not tuned)
        for name in ("precision", "dtype", "W", "NH", "DH", "NQ", "V", "self_len", "cross_len", "n_layers", "slots",
                     "n_logits", "layers", "extra"):
            setattr(self, name, getattr(plan, name))
        nbytes = max(16, -(-4 * plan.slots * plan.n_logits // 16) * 16)
        self._maps = [rt.device.create_buffer(size=nbytes, usage=MAP_READ) for _ in range(2)]
        self.prerecord = bool(prerecord)
        self.tuning = {"plan": "default" if ch is None and subgroups is None else "explicit", "source": "argument",
                       "timed": 0}
        self.reset_counters()
        if tuned:  # the plan variant the settings, the cache or a timing choose (resident/tuner.py)
            from .tuner import settle

            settle(self, tune_as)
        else:
            self._dispatches_changed()

    def use_variant(self, ch: int | None, subgroups: bool | None) -> None:
        """Run the step as another variant (DecoderPlan.configure) over the same weights; the
        slots' caches are kept, so it is for use between chunks (the tuner's)."""
        self.plan.configure(ch, subgroups)
        self._dispatches_changed()

    def _dispatches_changed(self) -> None:
        plan = self.plan
        self.ch = plan.ch
        self.labels = [d.label for d in plan.dispatches]
        self.dispatches_per_step = len(plan.dispatches)
        self._next = None  # (key, its command buffer): the step recorded ahead
        self.raw_calls = raw_pass_calls()
        try:
            self._raw = [(d.pipeline._internal, d.group._internal) for d in plan.dispatches]
        except AttributeError:
            self.raw_calls = None

    # ------------------------------------------------------------ per chunk (one slot)
    def set_cross(self, xenc, extra=None, slot: int = 0) -> None:
        """A slot's chunk: the cross-attention K/V of every layer from the encoder output
        [cross_len, W] (tiled matmul + heads.wgsl's split with RoPE on the keys, written into the
        slot's region), and its per-chunk extra vector. xenc: a GpuArray of the storage dtype
        (the resident encoder's output: nothing leaves the GPU) or a CPU array/tensor (uploaded).
        Joins an open recorder, else submits once."""
        from .. import ops

        rt, W, plan = self.rt, self.W, self.plan
        self._check_slot(slot)
        self._ready_at = None  # a join, not a gap between two steps
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
            rt.write(self.extra, f32(extra).reshape(W), offset=4 * W * slot)
        with rt.recorder("wsvk.resident.cross"):
            for g in self.layers:
                kv = ops.linear(gx, *g.cross_kv)  # [cross_len, 2W] (tiled kernel)
                ops.split_heads(kv, self.NH, 2, rope=plan.rope_buf if plan.rope else None, rope_parts=int(plan.rope),
                                rope_step=plan.ksub, out=(g.cross_k, g.cross_v), offset=slot * self.cross_len * W)

    def prefill(self, rows, start: int = 0, slot: int = 0) -> None:
        """Run a slot's steps over a known prefix (a prompt) without reading anything back: token
        ids rows[i] [NQ] at position start + i fill the slot's KV caches as step() would (up to
        the last layer's self-attention: nothing after it reaches a cache), up to PREFILL_CHUNK
        positions per submit. Each position's step row is copied into the step buffer from one
        uploaded table between the passes (they run in recording order)."""
        rt = self.rt
        rows = [list(r) for r in rows]
        if not rows:
            return
        self._ready_at = None
        data = np.stack([self._step_data([(slot, r, start + i)]) for i, r in enumerate(rows)])
        row_bytes = 4 * data.shape[1]
        t0 = time.perf_counter()
        with rt.lock:
            self._next = None  # the step buffer's next contents are not what it was recorded for
            table = rt.upload(data)
            for c0 in range(0, len(rows), self.PREFILL_CHUNK):
                n = min(self.PREFILL_CHUNK, len(rows) - c0)
                with gpu_errors("recording a prefill"):
                    enc = rt.device.create_command_encoder(label="wsvk.resident.prefill")
                    dispatches = 0
                    for i in range(c0, c0 + n):
                        enc.copy_buffer_to_buffer(table.buffer, i * row_bytes, self.plan.step_buf.buffer, 0, row_bytes)
                        dispatches += self._encode_pass(enc, 1, self.plan.splits(start + i), self.plan.prefill_n)
                    cmd = enc.finish()
                rt.submit_commands(cmd)
                rt.count("dispatches", dispatches)
        self.prefill_seconds += time.perf_counter() - t0
        self.prefilled_steps += len(rows)

    # ------------------------------------------------------------ per step
    def step(self, tokens, pos: int, slot: int = 0) -> np.ndarray:
        """One slot's decode step: token ids [NQ] at position `pos` -> logits [n_logits] (float32)."""
        return self.step_many([(slot, tokens, pos)])[0]

    def step_many(self, columns, while_waiting=None) -> np.ndarray:
        """One decode step of several slots: columns = [(slot, token ids [NQ], pos), ...] (distinct
        slots) -> logits [len(columns), n_logits] (float32), in the order given. One submit.
        while_waiting(): host work run while the GPU runs the step (after the next step is
        recorded ahead), before the logits are waited for."""
        rt = self.rt
        data = self._step_data(columns)
        n = len(columns)
        key = (n, int(data[1]))
        t0 = time.perf_counter()
        parity = self.steps % 2
        ahead, self._next = self._next, None
        if ahead is not None and ahead[0] == (key, parity):
            cmd = ahead[1]
            self.prerecorded_steps += 1
        else:
            cmd = self._record(key, parity)
        with rt.lock:
            rt.write(self.plan.step_buf, data)
            if self._ready_at is not None:  # nothing of this decoder's has run since the logits were ready
                self.gap_seconds += time.perf_counter() - self._ready_at
                self.gaps += 1
            rt.submit_commands(cmd)
            rt.count("dispatches", len(self.plan.dispatches))
        # From here on only this decoder's own buffers are touched: the runtime is free for the
        # other decoder's thread to submit while this one records ahead and draws.
        last = max(int(p) for _, _, p in columns)
        if self.prerecord and last + 1 < self.self_len:
            # the likely next step (the same slots, one position on) is recorded while the GPU
            # runs this one; its ids and positions reach the GPU through the step buffer
            nxt = (n, self.plan.splits(last + 1))
            self._next = ((nxt, 1 - parity), self._record(nxt, 1 - parity))
        if while_waiting is not None:
            while_waiting()
        t1 = time.perf_counter()
        buf = self._maps[parity]
        with gpu_errors("reading the logits back"):
            try:
                buf.map_async("READ_NOSYNC").sync_wait()  # what queue.read_buffer does
            except AttributeError:
                buf.map_sync(1)
            self._ready_at = time.perf_counter()
            raw = buf.read_mapped(0, 4 * n * self.n_logits)
            buf.unmap()
        rt.count("readbacks")
        self.steps += 1
        self.columns_stepped += n
        t2 = time.perf_counter()
        self.wait_seconds += t2 - t1
        self.step_seconds += t2 - t0
        return np.frombuffer(raw, np.float32).reshape(n, self.n_logits).copy()

    def _check_slot(self, slot) -> int:
        if not 0 <= int(slot) < self.slots:
            raise ValueError(f"slot {slot} outside the decoder's {self.slots} slots")
        return int(slot)

    def _step_data(self, columns) -> np.ndarray:
        """The checked step buffer words: [n, splits, 0, 0, then per column slot, pos, token ids].
        Checked and packed for all columns at once: at 16 columns this runs between two steps."""
        n = len(columns)
        if not 1 <= n <= self.slots:
            raise ValueError(f"a step takes 1 to {self.slots} columns, got {n}")
        if self.rt.recording:
            raise RuntimeError("a resident decode step reads its results back: call it outside a recorder")
        slots = [self._check_slot(slot) for slot, _, _ in columns]
        if len(set(slots)) != n:
            seen = set()
            raise ValueError(f"slot {next(x for x in slots if x in seen or seen.add(x))} appears twice in one step")
        pos = [int(p) for _, _, p in columns]
        try:
            toks = np.array([tokens for _, tokens, _ in columns], dtype=np.int64).reshape(n, -1)
        except (ValueError, TypeError):
            toks = None  # ragged: the column at fault is named below
        if toks is None or toks.shape[1] != self.NQ:
            for _, tokens, _ in columns:
                if np.size(tokens) != self.NQ:
                    raise ValueError(f"step needs {self.NQ} token ids, got {np.size(tokens)}")
            toks = np.array([np.asarray(t, np.int64).reshape(-1) for _, t, _ in columns])
        if toks.min() < 0 or toks.max() >= self.V:
            bad = next(row for row in toks if row.min() < 0 or row.max() >= self.V)
            raise ValueError(f"token ids {bad.tolist()} outside [0, {self.V})")
        limit = min(self.self_len, self.plan.P_pos or self.self_len)
        if min(pos) < 0 or max(pos) >= limit:
            raise ValueError(f"position {next(p for p in pos if not 0 <= p < limit)} outside the decoder's "
                             f"{self.self_len} positions")
        words = np.zeros(4 + n * self.plan.ss, np.uint32)
        words[:2] = n, self.plan.splits(max(pos))
        body = words[4:].reshape(n, self.plan.ss)
        body[:, 0], body[:, 1], body[:, 2:] = slots, pos, toks
        return words

    def _record(self, key, parity: int):
        """The finished command buffer of a step with key = (columns, self-attention splits): the
        whole plan in one compute pass, then the logits copied to mappable buffer `parity` (two,
        alternating by step, so a step recorded ahead never targets the one being read)."""
        t0 = time.perf_counter()
        n, splits = key
        with gpu_errors("recording a decode step"):
            enc = self.rt.device.create_command_encoder(label="wsvk.resident.step")
            self._encode_pass(enc, n, splits, len(self.plan.dispatches))
            enc.copy_buffer_to_buffer(self.plan.logits.buffer, 0, self._maps[parity], 0, 4 * n * self.n_logits)
            cmd = enc.finish()
        self.record_seconds += time.perf_counter() - t0
        return cmd

    def _encode_pass(self, enc, n_cols: int, splits: int, count: int) -> int:
        """The first `count` dispatches of the plan for n_cols columns as one compute pass of
        `enc` (they read the step buffer as it is then); returns count."""
        plan = self.plan
        cpass = enc.begin_compute_pass()
        last = None
        if self.raw_calls is not None:
            set_pipeline, set_bind_group, dispatch, null = self.raw_calls
            h = cpass._internal
            for d, (pipe, group) in zip(plan.dispatches[:count], self._raw):
                if pipe is not last:
                    set_pipeline(h, pipe)
                    last = pipe
                set_bind_group(h, 0, group, 0, null)
                dispatch(h, *plan.grid(d, n_cols, splits))
        else:
            for d in plan.dispatches[:count]:
                if d.pipeline is not last:
                    cpass.set_pipeline(d.pipeline)
                    last = d.pipeline
                cpass.set_bind_group(0, d.group)
                cpass.dispatch_workgroups(*plan.grid(d, n_cols, splits))
        cpass.end()
        return count

    def profile_step(self, tokens, pos: int, slot: int = 0, columns=None) -> list[tuple[str, float]]:
        """Run one step (it updates the KV caches as `step` does) with every dispatch in its own
        timestamped pass: [(label, GPU ms)] in plan order. columns: several slots as step_many
        takes them (default: this one slot). Needs timestamp-query."""
        rt = self.rt
        columns = columns or [(slot, tokens, pos)]
        data = self._step_data(columns)
        if not rt.has_timestamps:
            raise RuntimeError(f"{rt.info['name']} has no timestamp-query: GPU times are not available")
        with rt.lock:
            self._next = self._ready_at = None
            rt.write(self.plan.step_buf, data)
            with rt.recorder("wsvk.resident.profile", timestamps=True) as rec:
                for d in self.plan.dispatches:
                    rec.dispatch_bound(d.pipeline, d.group, self.plan.grid(d, len(columns), int(data[1])), d.label)
        return rec.gpu_ms

    # ------------------------------------------------------------ counters
    def counters(self) -> dict:
        """dispatches per step, steps run (and the columns they advanced) and host seconds so far:
        recording (hidden behind the GPU when recorded ahead), waiting for the logits, whole
        steps (submit to logits); totals and per step. gap_s: from one step's logits being ready
        to the next step's submit (reading them, sampling, the next input: this decoder has no
        work on the GPU), over consecutive steps only (not across a join); gap_s_per_step is per
        such gap."""
        n = max(self.steps, 1)
        out = {"dispatches_per_step": self.dispatches_per_step, "slots": self.slots, "steps": self.steps,
               "columns_per_step": self.columns_stepped / n, "prerecorded_steps": self.prerecorded_steps,
               "prefilled_steps": self.prefilled_steps, "prefill_s": self.prefill_seconds,
               "gap_s": self.gap_seconds, "gap_s_per_step": self.gap_seconds / max(self.gaps, 1)}
        for name, v in (("record_s", self.record_seconds), ("wait_s", self.wait_seconds),
                        ("step_s", self.step_seconds)):
            out[name], out[name + "_per_step"] = v, v / n
        return out

    def reset_counters(self) -> None:
        self.steps = self.prerecorded_steps = self.prefilled_steps = self.columns_stepped = self.gaps = 0
        self.record_seconds, self.wait_seconds, self.step_seconds, self.prefill_seconds = 0.0, 0.0, 0.0, 0.0
        self.gap_seconds, self._ready_at = 0.0, None
