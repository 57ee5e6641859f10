"""ResidentS2A: whisperspeech's SADelARTransformer (semantic -> acoustic tokens, the plain and the
conditioned v1.95 variant) on a resident decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..gpu import Runtime
from .decoder import HeadStage, ResidentDecoder
from .encoder import ResidentEncoder
from .sampling import Draws, SampledSequence, Settings
from .whisper import Resident, rope_tables


class S2ASequence(SampledSequence):
    """One chunk's semantic tokens through S2A, step by step: SADelARTransformer.generate's loop
    at bs=1 (the delay pattern: quantizer q starts q steps late). result: [1, Q, N - 4] tokens."""

    def __init__(self, owner, stoks, speakers, atoks_prompt=None, N=None, T=0.7, top_k=None, generator=None,
                 step=None):
        m = owner.model
        self.owner, self.generator, self.step, self.top_k = owner, generator, step, top_k
        self.N = N or len(stoks) * 3
        self.stoks = F.pad(stoks, (1, m.stoks_len - len(stoks) - 1), value=m.stoks_codes - 1).unsqueeze(0)
        self.speakers = speakers.to(dtype=m.dtype if isinstance(getattr(m, "dtype", None), torch.dtype)
                                    else torch.float32)
        self.toks = torch.full((m.quantizers, m.ctx_n), m.codes + 1, dtype=torch.long)
        self.T = torch.tensor(T)
        start = 0
        if atoks_prompt is not None:
            start = atoks_prompt.shape[-1]
            for i in range(m.quantizers):
                self.toks[i, 1 + i:start + i + 1] = atoks_prompt[0, i]
        self.first = start  # the first sampled position (SOT at `start`)
        self.end = min(self.N, m.ctx_n - 1)  # positions up to end - 2 are sampled from
        self.max_steps = max(0, self.end - self.first - 2)
        self.draws = Draws((1, m.quantizers, owner.resident_decoder.n_logits // m.quantizers), generator)
        self.settings = Settings(float(self.T), top_k, owner.output_scale(), m.quantizers)
        self.result = None
        self.cancelled = False
        self.on_feed = None  # called with the sequence after every step (frames_done grows)
        self.on_done = None  # called with the sequence once its result is set

    @property
    def n_frames(self) -> int:
        """Frames of the finished result (N - 4, as generate returns)."""
        return max(0, min(self.N - 4, min(self.N, self.owner.model.ctx_n) - 1))

    @property
    def frames_done(self) -> int:
        """Frames whose every quantizer is sampled: quantizer j of frame t sits at column t + 1 + j."""
        if self.result is not None:
            return self.n_frames
        # after the step at p (pos is then p + 1), column p + 1 holds quantizers 0..p: frame t is
        # whole once column t + Q is written, i.e. t <= p + 1 - Q
        return max(0, min(self.pos + 1 - self.owner.model.quantizers, self.n_frames))

    def frames(self, a: int, b: int):
        """Codes [1, Q, b - a] of frames a..b-1 (the delay pattern undone), b <= frames_done."""
        if self.result is not None:
            return self.result[:, :, a:b]
        Q = self.owner.model.quantizers
        return torch.stack([self.toks[j, 1 + a + j:1 + b + j] for j in range(Q)])[None]

    def start(self, slot: int):
        self.slot, self.pos = slot, self.first
        self.owner.start_chunk(self.stoks, self.speakers, slot=slot)
        self.owner.resident_decoder.prefill(self.toks[:, :self.first].T.tolist(), slot=slot)  # the prompt
        return self.toks[:, self.first].tolist(), self.first

    def _advance(self, new):
        # the tokens [Q] sampled from this step's logits
        p, m = self.pos, self.owner.model
        self.toks[:p + 1, p + 1] = torch.from_numpy(new[:p + 1])  # quantizer q joins at position q
        if p != self.first and self.step is not None:
            self.step()
        if p + 2 < self.end:
            self.pos = p + 1
            if self.on_feed is not None:
                self.on_feed(self)
            return self.toks[:, p + 1].tolist(), p + 1
        toks = self.toks[None, :, 1:self.N].clone()
        for j in range(m.quantizers):
            toks[:, j] = torch.roll(toks[:, j], -j)
        self.result = toks[:, :, :self.N - 4]
        if self.on_done is not None:
            self.on_done(self)
        return None


class ResidentS2A(Resident):
    """whisperspeech's SADelARTransformer with a GPU-resident decoder of `slots` sequences."""

    def __init__(self, model, rt: Runtime | None = None, ch: int | None = None, subgroups: bool | None = None,
                 slots: int = 1, precision: str | None = None):
        super().__init__(model)
        embs = model.embds.embeddings
        if any(e.merged_in is None for e in embs):
            raise ValueError("the S2A embeddings are not merged: prepare it with wsvk.tts.models.for_cpu(model)")
        tables = torch.stack([e.merged_in.weight for e in embs])  # [Q, codes + 2, W]
        self.vocab = int(tables.shape[1])
        W, Q = model.width, model.quantizers
        bias = [e.bias_out for e in embs]
        if any(b is None for b in bias) and not all(b is None for b in bias):
            raise ValueError("S2A unembeddings mix biased and unbiased quantizers")
        splitter = model.head.splitter
        ln = model.decoder.ln_post
        head = [HeadStage(splitter[0].weight, splitter[0].bias, ln=(ln.weight, ln.bias, ln.eps), gelu=True),
                HeadStage(torch.cat([e.merged_out for e in embs]), None if bias[0] is None else torch.cat(bias),
                          group=self.vocab)]
        if splitter[0].out_features != W * Q:
            raise ValueError(f"S2A splitter makes {splitter[0].out_features} values, expected {W * Q}")
        self_len, cross_len = self.cache_lengths(model)
        self.use_decoder(ResidentDecoder(
            model.decoder.layers, model.n_head, tables, None, extra=False,
            rope=rope_tables(model.decoder.layers[0]), ksub=model.decoder.layers[0].cross_attn.key_subsampling,
            self_len=self_len, cross_len=cross_len, head=head, rt=rt, ch=ch, subgroups=subgroups,
            slots=slots, precision=precision, tune_as="s2a"))
        self.resident_encoder = ResidentEncoder(model.encoder, model.n_head, model.ln_post,
                                                causal=model.tunables.causal_encoder,
                                                rope=rope_tables(model.encoder[0]), rt=rt)

    @staticmethod
    def cache_lengths(model) -> tuple[int, int]:
        return int(model.ctx_n), int(model.stoks_len)

    @staticmethod
    def parts(model) -> tuple:
        embs, split = model.embds.embeddings, model.head.splitter[0]
        bias = None if embs[0].bias_out is None else torch.cat([e.bias_out for e in embs])
        return (model.decoder.layers, [(split.weight, split.bias), (torch.cat([e.merged_out for e in embs]), bias)],
                [e.merged_in.weight for e in embs], model.encoder, model.ln_post)

    @torch.no_grad()
    def start_chunk(self, stoks, speakers, slot: int = 0) -> None:
        """One submit per chunk: the encoder (resident, the speaker/condition term added through
        ln_post) and the cross-attention K/V of every decoder layer into `slot`; stoks
        [1, stoks_len] padded as generate pads them, speakers [1, D]."""
        m = self.model
        if hasattr(m, "cond_embeddings"):  # s2a_delar_mup_wds_mlang_cond
            run = lambda v: v.run_encoder(stoks, [dict(speaker=s, snr=60, c50=60) for s in speakers])  # noqa: E731
        else:
            run = lambda v: v.run_encoder(stoks, speakers)  # noqa: E731
        x0, (extra, _, _) = self.encoder_input(run, "", "encoder")
        dec = self.resident_decoder
        with dec.rt.recorder("wsvk.resident.chunk"):
            dec.set_cross(self.resident_encoder.run(x0, extra[0, 0], out_dtype=dec.dtype), slot=slot)

    def logits(self, toks, pos: int, slot: int = 0) -> torch.Tensor:
        """[1, Q, 1, V] logits for the quantizer tokens `toks` [Q] at position `pos`, scaled as forward."""
        raw = torch.from_numpy(self.resident_decoder.step([int(t) for t in toks], pos, slot=slot))
        logits = raw.reshape(1, self.model.quantizers, 1, -1)
        logits *= self.output_scale()
        return logits

    def sequence(self, stoks, speakers, atoks_prompt=None, N=None, T=0.7, top_k=None, generator=None,
                 step=None) -> S2ASequence:
        """One chunk to decode with run() beside others: stoks [n] (1-D), speakers [1, D];
        generator: its own torch.Generator (None: torch's global one, as whisperspeech)."""
        return S2ASequence(self, stoks, speakers, atoks_prompt, N, T, top_k, generator, step)

    @torch.no_grad()
    def generate(self, stoks, speakers, langs=None, atoks_prompt=None, N=None, bs=1, T=0.7, top_k=None,
                 show_progress_bar=True, step=None, subsample_enc=False):
        """SADelARTransformer.generate on the resident decoder: same arguments, same tokens (drawn
        from torch's global generator, as whisperspeech does)."""
        return self.run_one(self.sequence(stoks, speakers, atoks_prompt, N, T, top_k, None, step), bs)
