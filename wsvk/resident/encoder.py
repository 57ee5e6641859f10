"""A WhisperSpeech encoder (self-attention ResidualAttentionBlocks + ln_post) resident on the GPU.

Weights (QKV merged by convert_for_eval) go up once. Per chunk only the embedded input [L, W]
goes up; every layer is recorded into the caller's recorder (so the encoder and the decoder's
cross-attention K/V of a chunk are one submit) and the output stays on the GPU. Per layer, 11
dispatches of the kernel ops: layer norm, QKV (tiled matmul), head split (+ RoPE on q and k),
flash attention (causal where the model's encoder is), head merge, output projection, residual
add, layer norm, fc1 + GELU, fc2, residual add; then ln_post, which also adds a per-chunk vector
through its bias (S2A's speaker / condition embedding) and writes the decoder's storage type.

Everything here is float32: the encoder is one compute-bound pass per chunk, not the
memory-bound per-step work that f16 storage speeds up, and its output feeds every decode step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import ops
from ..gpu import GpuArray, Runtime, get_runtime
from .tensors import f32


@dataclass
class EncoderLayer:
    """One encoder layer on the GPU (float32): layer norms (gamma, beta, eps), linears (w, b)."""

    attn_ln: tuple
    qkv: tuple
    out: tuple
    mlp_ln: tuple
    fc1: tuple
    fc2: tuple


def encoder_weight_bytes(layers, ln_post) -> int:
    """What a ResidentEncoder of these layers stores of their parameters (float32)."""
    n = 2 * ln_post.weight.numel()
    for g in layers:
        n += sum(2 * ln.weight.numel() for ln in (g.attn_ln, g.mlp_ln))
        n += sum(lin.weight.numel() + (0 if lin.bias is None else lin.bias.numel())
                 for lin in (g.attn.qkv, g.attn.out, g.mlp[0], g.mlp[2]))
    return 4 * int(n)


class ResidentEncoder:
    """layers: ResidualAttentionBlocks without cross-attention (QKV merged); ln_post: the final
    LayerNorm; causal: the model's encoder attends causally (tunables.causal_encoder); rope:
    (cos, sin) [P, Dh] tables when the layers use RoPE, else None."""

    def __init__(self, layers, n_head: int, ln_post, causal: bool, rope=None, rt: Runtime | None = None):
        rt = rt or get_runtime()
        self.rt = rt
        if not len(layers):
            raise ValueError("the encoder has no layers")
        self.W = int(layers[0].attn.n_state)
        self.NH = int(n_head)
        if self.W % self.NH:
            raise ValueError(f"width {self.W} is not a multiple of {n_head} heads")
        self.causal = bool(causal)
        self.layers = []
        for i, l in enumerate(layers):
            if l.cross_attn is not None:
                raise ValueError(f"encoder layer {i} has cross-attention")
            if l.attn.qkv is None:
                raise ValueError(f"encoder layer {i}: QKV not merged; prepare the model with "
                                 "wsvk.tts.models.for_cpu(model) (convert_for_eval) first")
            if (l.attn.rotary is None) != (rope is None):
                raise ValueError(f"encoder layer {i}: RoPE tables must be given exactly when the layers use RoPE")
            if l.attn.query_subsampling != 1 or l.attn.key_subsampling != 1:
                raise ValueError(f"encoder layer {i}: subsampled self-attention is not supported")
            if getattr(l.mlp[1], "approximate", "none") != "none":
                raise ValueError(f"encoder layer {i}: GELU(approximate={l.mlp[1].approximate!r}) is not supported")
            def norm(ln):
                return (rt.upload(f32(ln.weight)), rt.upload(f32(ln.bias)), float(ln.eps))

            def linear(lin):
                return (rt.upload(f32(lin.weight)), None if lin.bias is None else rt.upload(f32(lin.bias)))

            self.layers.append(EncoderLayer(attn_ln=norm(l.attn_ln), qkv=linear(l.attn.qkv), out=linear(l.attn.out),
                                            mlp_ln=norm(l.mlp_ln), fc1=linear(l.mlp[0]), fc2=linear(l.mlp[2])))
        # the bias stays on the host too: a chunk's extra vector is added to it (see run)
        self.ln_post = (rt.upload(f32(ln_post.weight)), rt.upload(f32(ln_post.bias)), f32(ln_post.bias),
                        float(ln_post.eps))
        self.rope = None
        if rope is not None:
            cos, sin = f32(rope[0]), f32(rope[1])
            self.rope = rt.upload(np.concatenate([cos, sin]))
            self.P = cos.shape[0]
        self.dispatches_per_chunk = 11 * len(self.layers) + 1

    @property
    def weight_bytes(self) -> int:
        """GPU memory of the parameters (layers and ln_post; the RoPE tables apart)."""
        parts = [x for g in self.layers for t in vars(g).values() for x in t] + list(self.ln_post)
        return sum(x.nbytes for x in parts if isinstance(x, GpuArray))

    def run(self, x0, extra=None, out_dtype=np.float32) -> GpuArray:
        """ln_post(layers(x0)) (+ extra [W]) as a GpuArray [L, W] of out_dtype; x0 [L, W] (or
        [1, L, W]) is the embedded input. Joins an open recorder, else submits once."""
        rt, W = self.rt, self.W
        x0 = f32(x0)
        if x0.ndim == 3 and x0.shape[0] == 1:
            x0 = x0[0]
        if x0.ndim != 2 or x0.shape[1] != W or x0.shape[0] < 1:
            raise ValueError(f"encoder input must be [L, {W}], got {x0.shape}")
        if self.rope is not None and x0.shape[0] > self.P:
            raise ValueError(f"encoder input has {x0.shape[0]} positions, the RoPE tables {self.P}")
        gamma, beta, host_beta, eps = self.ln_post
        if extra is not None:  # ln_post(x) + extra == LN with bias + extra
            beta = rt.upload(host_beta + f32(extra).reshape(W))
        rope_parts = 0 if self.rope is None else 2
        with rt.recorder("wsvk.resident.encoder"):
            x = rt.upload(x0)
            for g in self.layers:
                h = ops.layer_norm(x, *g.attn_ln)
                q, k, v = ops.split_heads(ops.linear(h, *g.qkv), self.NH, 3, rope=self.rope, rope_parts=rope_parts)
                a = ops.attention(q, k, v, causal=self.causal)
                x = ops.axpy(x, ops.linear(ops.merge_heads(a), *g.out))
                h = ops.linear(ops.layer_norm(x, *g.mlp_ln), *g.fc1, gelu=True)
                x = ops.axpy(x, ops.linear(h, *g.fc2))
            return ops.layer_norm(x, gamma, beta, eps, out_dtype=out_dtype)
