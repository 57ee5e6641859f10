"""Resident Vocos: the whole vocoder (backbone + ISTFT head) on the GPU, one readback per call.

    rv = ResidentVocos(vocos)                       # weights go to the GPU once
    audio = rv.decode(features, bandwidth_id=bw)    # == vocos.decode(features, bandwidth_id=...)
    audio = rv.decode_codes(codes, bandwidth_id=bw) # == vocos.decode(vocos.codes_to_features(codes), ...)

Per call: one upload (features or codes), one readback of the waveform, and nothing waited for
in between. The dispatches go out in a few submits (submits_per_call: after the input norm and
every SPLIT_EVERY blocks) so the GPU starts on the first layers while the host records the rest:
on an H100 recording a call takes ~1.7 ms of host time and its GPU work ~2.1 ms (10 s of audio),
which one submit would run back to back. Inside an open recorder (profile_codes) it all joins
that recorder's one submit.

Precision (WSVK_PRECISION, read once at construction through Runtime.weight_dtype): with float32
the result equals vocos' CPU output to float32 rounding. With float16 the backbone's weights
(input conv, depthwise convs, pointwise linears with their biases) are stored f16 and so are
the activations between the norm and the next residual add (the normed input h, the [T, 4C]
GELU output and the block output y: ops.linear takes one dtype, and those are its widest
buffers); all math accumulates in f32, and the residual stream, norm parameters and statistics
stay f32. The ISTFT head (last linear, spectrum, irfft, overlap-add) runs in f32: its phases
multiply errors by several radians.

Dispatches per call (L = backbone layers): embed conv (codebook gather fused in) 1, norm 1,
per layer 3 (residual add + depthwise conv + norm fused; pw1 + GELU; pw2 with the layer scale
folded in), final residual add + norm 1, head linear 1, spectrum 1, irfft 1, overlap-add 1:
7 + 3 L (31 for the released 8-layer model).
"""

from __future__ import annotations

import operator
import threading
from dataclasses import dataclass

import numpy as np
import torch

from .. import ops
from ..gpu import GpuArray, Runtime, get_runtime
from ..kernels import convnext, istft
from .tensors import f32

__all__ = ["ResidentVocos"]


@dataclass
class Block:
    """One ConvNeXt block's weights on the GPU (WT: the storage type; the rest f32)."""

    dw_w: GpuArray   # [7, C] WT depthwise conv
    dw_b: GpuArray   # [C]
    norm: list       # per bandwidth id: (scale [C], shift [C])
    eps: float
    w1: GpuArray     # [I, C] WT pointwise 1 (+ GELU)
    b1: GpuArray     # [I] WT
    w2: GpuArray     # [C, I] WT pointwise 2, the layer scale folded in
    b2: GpuArray     # [C] WT


class ResidentVocos:
    """A vocos.Vocos (VocosBackbone + ISTFTHead with "same" padding) kept on the GPU."""

    def __init__(self, vocos, rt: Runtime | None = None):
        from vocos.heads import ISTFTHead
        from vocos.models import VocosBackbone
        from vocos.modules import AdaLayerNorm

        bb, head = getattr(vocos, "backbone", None), getattr(vocos, "head", None)
        if not isinstance(bb, VocosBackbone):
            raise TypeError(f"ResidentVocos needs a VocosBackbone, got {type(bb).__name__}")
        if not isinstance(head, ISTFTHead):
            raise TypeError(f"ResidentVocos needs an ISTFTHead, got {type(head).__name__}")
        stft = head.istft
        if stft.padding != "same":
            raise ValueError(f"ResidentVocos supports the ISTFT's 'same' padding only, not {stft.padding!r}")
        if stft.n_fft % 2:
            raise ValueError(f"ResidentVocos needs an even n_fft (the head splits n_fft + 2 outputs in two), got {stft.n_fft}")
        if stft.win_length != stft.n_fft or not 0 < stft.hop_length <= stft.n_fft:
            raise ValueError(f"ResidentVocos needs win_length == n_fft and 0 < hop <= n_fft "
                             f"(n_fft {stft.n_fft}, win {stft.win_length}, hop {stft.hop_length})")
        if bb.embed.kernel_size != (convnext.KERNEL,) or bb.embed.padding != (3,) or bb.embed.bias is None:
            raise ValueError("ResidentVocos expects the backbone's input conv to be kernel 7, padding 3, with bias")

        self.rt = rt = rt or get_runtime()
        self.cin = int(bb.embed.in_channels)
        self.dim = int(bb.embed.out_channels)
        self.n_layers = len(bb.convnext)
        self.n_fft, self.hop = int(stft.n_fft), int(stft.hop_length)
        self.pad = (stft.win_length - stft.hop_length) // 2
        self.n_bins = self.n_fft // 2 + 1
        self.adanorm = bool(bb.adanorm)
        self.dtype = rt.weight_dtype  # raises ConfigError for WSVK_PRECISION=f16 without shader-f16
        wd = self.dtype

        def upw(a):  # backbone weights in the storage type
            return rt.upload(a.astype(wd))

        self.n_bandwidths = int(bb.norm.scale.num_embeddings) if self.adanorm else 1
        up = rt.upload

        # embed conv: w[o, i, k] -> [Cin, K, Cout] so that a workgroup's threads read adjacent o
        self.embed_w = upw(f32(bb.embed.weight.permute(1, 2, 0)))
        self.embed_b = up(f32(bb.embed.bias))

        def affine(norm):
            """[(scale, shift) per bandwidth id]: AdaLayerNorm's rows, or LayerNorm's weight/bias."""
            if isinstance(norm, AdaLayerNorm):
                return [(up(f32(norm.scale.weight[i])), up(f32(norm.shift.weight[i])))
                        for i in range(self.n_bandwidths)]
            w = norm.weight if norm.weight is not None else torch.ones(self.dim)
            b = norm.bias if norm.bias is not None else torch.zeros(self.dim)
            return [(up(f32(w)), up(f32(b)))] * self.n_bandwidths

        self.norm0, self.norm0_eps = affine(bb.norm), float(bb.norm.eps)
        self.layers = []
        for blk in bb.convnext:
            gamma = blk.gamma.detach().double() if blk.gamma is not None else torch.ones(self.dim, dtype=torch.float64)
            self.layers.append(Block(
                dw_w=upw(f32(blk.dwconv.weight[:, 0, :].T)),   # [K, C]
                dw_b=up(f32(blk.dwconv.bias)),
                norm=affine(blk.norm), eps=float(blk.norm.eps),
                w1=upw(f32(blk.pwconv1.weight)), b1=upw(f32(blk.pwconv1.bias)),
                # layer scale folded in: gamma * (W2 x + b2) = (gamma W2) x + gamma b2
                w2=upw(f32(blk.pwconv2.weight.double() * gamma[:, None])),
                b2=upw(f32(blk.pwconv2.bias.double() * gamma)),
            ))
        self.inter = int(bb.convnext[0].pwconv1.out_features) if self.layers else self.dim
        fn = bb.final_layer_norm
        self.final_norm, self.final_eps = affine(fn), float(fn.eps)
        self.head_w, self.head_b = up(f32(head.out.weight)), up(f32(head.out.bias))
        self.window = up(f32(stft.window))

        # codes_to_features: the codebooks [Q * bins, Cin], when the feature extractor has them
        fe = getattr(vocos, "feature_extractor", None)
        cbw = getattr(fe, "codebook_weights", None)
        self.codebooks = self.bins = None
        if cbw is not None:
            quantizer = getattr(getattr(fe, "encodec", None), "quantizer", None)
            bins = getattr(quantizer, "bins", None)
            if bins and cbw.shape[0] % int(bins) == 0 and cbw.shape[1] == self.cin:
                self.bins = int(bins)
                self.codebooks = up(f32(cbw))
                self.n_codebooks = int(cbw.shape[0]) // self.bins

        self.last_call: dict | None = None  # what the latest call did (its thread's rt.thread_stats deltas)
        self._stats_lock = threading.Lock()
        self.stats = {"calls": 0, "dispatches": 0, "submits": 0, "uploads": 0, "readbacks": 0,
                      "dispatches_per_call": self.dispatches_per_call}

    @property
    def submits_per_call(self) -> int:
        """Submits of one decode: the input conv and norm, then SPLIT_EVERY blocks each."""
        return 1 + -(-self.n_layers // self.SPLIT_EVERY)

    @property
    def dispatches_per_call(self) -> int:
        """The dispatches one decode records (the irfft of n_fft runs in one dispatch when its
        half length fits a workgroup, as 1280 does)."""
        return 7 + 3 * self.n_layers

    # ---------------------------------------------------------------- inputs

    def _bandwidth(self, bandwidth_id) -> int:
        if bandwidth_id is None:
            if self.adanorm:
                raise ValueError("bandwidth_id is required: this Vocos conditions its norms on it")
            return 0
        if isinstance(bandwidth_id, torch.Tensor):
            if bandwidth_id.numel() != 1 or bandwidth_id.is_floating_point() or bandwidth_id.is_complex():
                raise TypeError(f"bandwidth_id must be one integer, got a {bandwidth_id.dtype} tensor "
                                f"of shape {tuple(bandwidth_id.shape)}")
            bandwidth_id = int(bandwidth_id.reshape(-1)[0])
        try:
            bw = operator.index(bandwidth_id)
        except TypeError:
            raise TypeError(f"bandwidth_id must be an integer, got {type(bandwidth_id).__name__}") from None
        if self.adanorm and not 0 <= bw < self.n_bandwidths:
            raise ValueError(f"bandwidth_id {bw} is out of range: this Vocos has {self.n_bandwidths} (0..{self.n_bandwidths - 1})")
        return bw if self.adanorm else 0

    def _check_frames(self, T: int) -> None:
        if T < 1:
            raise ValueError("no frames to decode (the time axis is empty)")
        widest = max(self.dim, self.inter, 2 * self.n_bins, self.n_fft)
        if 4 * T * widest > self.rt.max_binding or T * self.hop >= 1 << 31:
            raise ValueError(f"{T} frames is too long for one GPU binding on this adapter "
                             f"({self.rt.max_binding} bytes): decode in chunks")

    def _features(self, features) -> np.ndarray:
        """[1, Cin, T] (or [Cin, T]) float -> float32 numpy [Cin, T]."""
        if isinstance(features, torch.Tensor):
            if features.is_complex() or not features.is_floating_point():
                raise TypeError(f"features must be a float tensor, got {features.dtype}")
            features = features.detach().to("cpu", torch.float32).numpy()
        elif isinstance(features, np.ndarray):
            if features.dtype.kind != "f":
                raise TypeError(f"features must be float, got {features.dtype}")
        else:
            raise TypeError(f"features must be a torch.Tensor or numpy array, got {type(features).__name__}")
        shape = tuple(features.shape)
        if len(shape) == 3 and shape[0] == 1:
            features = features[0]
        elif len(shape) != 2:
            raise ValueError(f"features must have shape [1, {self.cin}, T] (batch 1), got {shape}")
        if features.shape[0] != self.cin:
            raise ValueError(f"features have {features.shape[0]} channels (shape {shape}); this Vocos takes {self.cin}")
        self._check_frames(features.shape[1])
        return np.ascontiguousarray(features, dtype=np.float32)

    def _codes(self, codes) -> np.ndarray:
        """[q, 1, t], [1, q, t] or [q, t] integer codes -> int32 numpy [q, t] (range-checked)."""
        if self.codebooks is None:
            raise TypeError("decode_codes needs a Vocos with EncodecFeatures (codebook_weights and quantizer bins)")
        if isinstance(codes, torch.Tensor):
            if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
                raise TypeError(f"codes must be integers, got {codes.dtype}")
            codes = codes.detach().to("cpu").numpy()
        elif isinstance(codes, np.ndarray):
            if codes.dtype.kind not in "iu":
                raise TypeError(f"codes must be integers, got {codes.dtype}")
        else:
            raise TypeError(f"codes must be a torch.Tensor or numpy array, got {type(codes).__name__}")
        shape = tuple(codes.shape)
        if len(shape) == 3 and shape[1] == 1:
            codes = codes[:, 0]  # [q, 1, t], vocos.codes_to_features' layout
        elif len(shape) == 3 and shape[0] == 1:
            codes = codes[0]  # [1, q, t], WhisperSpeech's atoks
        elif len(shape) != 2:
            raise ValueError(f"codes must have shape [q, 1, t], [1, q, t] or [q, t] (batch 1), got {shape}")
        q, t = codes.shape
        if not 1 <= q <= self.n_codebooks:
            raise ValueError(f"codes have {q} codebooks (shape {shape}); this Vocos has {self.n_codebooks}")
        self._check_frames(t)
        # vocos' codes_to_features looks code + q * bins up in one flat table, so a code past its
        # codebook reads the next codebook's rows. WhisperSpeech's S2A does emit its padding code
        # (1024 = bins, at the end of speech): the same lookup keeps such audio equal to vocos'.
        n_rows = self.n_codebooks * self.bins
        bad = codes.min() < 0 or codes.max() >= n_rows  # on the given dtype: no int64 wrap-around
        if bad or (codes.astype(np.int64) + self.bins * np.arange(q)[:, None]).max() >= n_rows:
            raise ValueError(f"codes must lie in [0, {self.bins}) (or index vocos' flat table of "
                             f"{self.n_codebooks} x {self.bins} rows), got values in [{codes.min()}, {codes.max()}]")
        return np.ascontiguousarray(codes, dtype=np.int32)

    # ---------------------------------------------------------------- public

    def decode(self, features, bandwidth_id=None) -> torch.Tensor:
        """vocos.decode(features, bandwidth_id=...): features [1, Cin, T] -> waveform [1, samples]."""
        bw = self._bandwidth(bandwidth_id)
        x = self._features(features)
        before = dict(self.rt.thread_stats())
        return self._run(before, bw, self.rt.upload(x), None, x.shape[1])

    def decode_codes(self, codes, bandwidth_id=None) -> torch.Tensor:
        """vocos.decode(vocos.codes_to_features(codes), ...) with the codebook sum on the GPU.

        codes: [q, 1, t] (vocos' layout), [1, q, t] (WhisperSpeech's atoks) or [q, t]."""
        bw = self._bandwidth(bandwidth_id)
        c = self._codes(codes)
        before = dict(self.rt.thread_stats())
        return self._run(before, bw, self.codebooks, self.rt.upload(c), c.shape[1])

    def profile_codes(self, codes, bandwidth_id=None) -> list[tuple[str, float]]:
        """GPU milliseconds of each dispatch of decode_codes, from timestamps (each dispatch in its
        own pass); [] where the adapter has no timestamp-query. Nothing is read back."""
        if not self.rt.has_timestamps:
            return []
        bw = self._bandwidth(bandwidth_id)
        c = self._codes(codes)
        with self.rt.recorder("vocos-profile", timestamps=True) as rec:
            for _ in self._record(bw, self.codebooks, self.rt.upload(c), c.shape[1]):
                pass  # the split points join this one recorder
        return rec.gpu_ms

    # ---------------------------------------------------------------- the recorded graph

    SPLIT_EVERY = 3  # backbone blocks per submit after the first (see the module docstring)

    def _run(self, before: dict, bw: int, x: GpuArray, codes: GpuArray | None, T: int) -> torch.Tensor:
        """Record and submit segment by segment (no waits), read back the waveform; `before`:
        rt.thread_stats() before the upload."""
        rt = self.rt
        segments = self._record(bw, x, codes, T)
        wave = None
        while wave is None:
            with rt.recorder("vocos") as rec:
                try:
                    next(segments)
                except StopIteration as end:
                    wave = rec.read_after(end.value)  # the readback copy rides in the last submit
        out = wave.numpy()
        now = rt.thread_stats()
        self.last_call = {k: now[k] - before[k] for k in ("dispatches", "submits", "uploads", "readbacks")}
        with self._stats_lock:  # generate() and the streaming engine's thread may both decode
            self.stats["calls"] += 1
            for k, v in self.last_call.items():
                self.stats[k] += v
        return torch.from_numpy(out)[None]

    def _record(self, bw: int, x: GpuArray, codes: GpuArray | None, T: int):
        """Record the decode into the open recorder, yielding where what is recorded so far may be
        submitted; returns (StopIteration.value) the waveform [samples]."""
        rt, C = self.rt, self.dim
        emb = convnext.embed_conv(x, self.embed_w, self.embed_b, T, codes, self.bins or 0)  # [T, C]
        r = rt.empty((T, C))  # residual stream r_0 = norm(embed)
        convnext.dwconv_norm(emb, None, *self.norm0[bw], self.norm0_eps, r)
        h = rt.empty((T, C), self.dtype)  # normed input of the pointwise layers, reused by every block
        spare = [rt.empty((T, C)), rt.empty((T, C))]
        y = None
        for i, layer in enumerate(self.layers):
            if i % self.SPLIT_EVERY == 0:
                yield  # a split point (the arrays alive here stay alive across it)
            nxt = None if y is None else spare[i % 2]  # r_i = r_{i-1} + y_{i-1}, never written in place
            convnext.dwconv_norm(r, y, *layer.norm[bw], layer.eps, h, nxt, conv=(layer.dw_w, layer.dw_b))
            r = r if nxt is None else nxt
            y = ops.linear(ops.linear(h, layer.w1, layer.b1, gelu=True), layer.w2, layer.b2)
        hf = rt.empty((T, C))
        convnext.dwconv_norm(r, y, *self.final_norm[bw], self.final_eps, hf)
        # ISTFT head: [T, 2F] -> spectrum [T, F, 2] -> frames [T, n_fft] -> waveform
        spec = istft.spectrum(ops.linear(hf, self.head_w, self.head_b))
        return istft.overlap_add(ops.irfft(spec, n=self.n_fft), self.window, self.hop, self.pad)
