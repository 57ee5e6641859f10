"""Resident decode for WhisperSpeech: T2S and S2A generate() with one GPU submit per step.

    t2s = ResidentT2S(wsvk.tts.models.load_t2s())    # weights + KV caches go to the GPU once
    stoks = t2s.generate(text, cps=15, lang="en", step=step, show_progress_bar=False)[0]
    s2a = ResidentS2A(wsvk.tts.models.load_s2a())
    atoks = s2a.generate(stoks, speaker_emb[None], step=step, show_progress_bar=False)

Both take a model prepared by `wsvk.tts.models.for_cpu` (merged QKV, float32), keep its
attributes (stoks_len, tunables, ... are forwarded) and return what its own generate returns
for the same torch seed. Per chunk, one submit: the model's embeddings on the CPU, its encoder
layers (wsvk.resident.encoder) and the cross-attention K/V of every decoder layer on the GPU,
nothing read back. Per step only the position and token ids are uploaded, the decoder runs as
one submit (wsvk.resident.decoder) and the logits come back to be sampled with whisperspeech's
`inference.sample` on torch's global RNG, exactly as the model does. A prompt
(stoks_prompt / atoks_prompt) fills the KV caches in one more submit (ResidentDecoder.prefill).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..gpu import Runtime
from .decoder import HeadStage, ResidentDecoder
from .encoder import ResidentEncoder


def _rope_tables(layer):
    """(cos, sin) [P, Dh] from the model's own Rotary cache (bit-identical to what it uses)."""
    rot = layer.attn.rotary
    if rot is None:
        return None
    cos, sin = rot(torch.zeros(1, 1))
    return cos[0, :, 0, :], sin[0, :, 0, :]


# The capture below edits the wrapped model for one run_encoder call: one lock for every wrapper
# (two wrappers of one model must not interleave their edits). Running the same model on the
# CPU from another thread meanwhile is not supported (wsvk.tts.pipeline.Pipeline serializes).
_CAPTURE_LOCK = threading.Lock()


@contextmanager
def _layers_bypassed(owner, attr: str, ln_post, captured: list):
    """Run the model's own run_encoder without its encoder layers: `owner.attr` (the layer list)
    is emptied and ln_post records its input (the embedded input x0) and returns zeros, so
    run_encoder returns just the per-chunk terms it adds after ln_post. The embeddings, language
    / cps / speaker / condition terms thus come from whisperspeech's code, whatever the variant."""
    layers = getattr(owner, attr)

    def hook(module, args, out):
        captured.append(args[0])
        return torch.zeros_like(out)

    handle = ln_post.register_forward_hook(hook)
    setattr(owner, attr, type(layers)())
    try:
        yield
    finally:
        setattr(owner, attr, layers)
        handle.remove()


class _Resident:
    """Shared plumbing: attribute forwarding to the wrapped model, counters, checks."""

    def __init__(self, model):
        if model.training:
            raise ValueError("the model must be in eval mode (wsvk.tts.models.for_cpu(model))")
        self.model = model

    def _encoder_input(self, owner, attr: str, ln_post, run_encoder):
        """(x0 [L, W], run_encoder's outputs with zeros in place of the encoder's own output).
        The embeddings are small CPU work: kept off the op router, so a chunk stays one submit."""
        from ..router import offload

        captured = []
        with _CAPTURE_LOCK, _layers_bypassed(owner, attr, ln_post, captured), offload(enabled=False):
            outs = run_encoder()
        if len(captured) != 1:
            raise RuntimeError(f"{type(self.model).__name__}.run_encoder called its final layer norm "
                               f"{len(captured)} times (expected once): a whisperspeech variant the "
                               "resident encoder does not know; use resident=False")
        return captured[0][0], outs

    def __getattr__(self, name):  # stoks_len, tunables, ... of the wrapped model
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    def counters(self) -> dict:
        """The decoder's counters (dispatches_per_step, steps, record_s, wait_s, step_s, ...) and
        the encoder's dispatches per chunk (which also computes the cross K/V: 2 per decoder layer)."""
        enc = self.resident_encoder.dispatches_per_chunk + 2 * self.resident_decoder.n_layers
        return {"encoder_dispatches_per_chunk": enc, **self.resident_decoder.counters()}

    def reset_counters(self) -> None:
        self.resident_decoder.reset_counters()

    @staticmethod
    def _check_bs(bs):
        if bs != 1:
            raise ValueError(f"the resident decoder runs batch 1, got bs={bs}")


class ResidentT2S(_Resident):
    """whisperspeech's TSARTransformer (text -> semantic tokens) with a GPU-resident decoder."""

    def __init__(self, model, rt: Runtime | None = None, ch: int | None = None, subgroups: bool | None = None):
        super().__init__(model)
        emb = model.embeddings.embedding
        if emb.merged_in is None:
            raise ValueError("the T2S embeddings are not merged: prepare it with wsvk.tts.models.for_cpu(model)")
        self.vocab = int(emb.merged_in.weight.shape[0])
        head = [HeadStage(emb.merged_out, emb.bias_out,
                          ln=(model.decoder.ln_post.weight, model.decoder.ln_post.bias, model.decoder.ln_post.eps))]
        self.resident_decoder = ResidentDecoder(
            model.decoder.layers, model.n_head, emb.merged_in.weight[None], model.embeddings.positional_embedding,
            extra=model.cps_embeddings is not None, rope=None, ksub=1, self_len=model.stoks_len,
            cross_len=model.ttoks_len, head=head, rt=rt, ch=ch, subgroups=subgroups)
        enc = model.encoder
        self.resident_encoder = ResidentEncoder(enc.layers, model.n_head, enc.ln_post,
                                                causal=model.tunables.causal_encoder,
                                                rope=_rope_tables(enc.layers[0]), rt=rt)

    @torch.no_grad()
    def start_chunk(self, ttoks, langs, cpss) -> None:
        """One submit per chunk: the encoder (resident) and the cross-attention K/V of every
        decoder layer; the inputs as TSARTransformer.generate builds them."""
        m = self.model
        x0, (_, _, cps_emb) = self._encoder_input(m.encoder, "layers", m.encoder.ln_post,
                                                  lambda: m.run_encoder(ttoks, langs, cpss))
        dec = self.resident_decoder
        with dec.rt.recorder("wsvk.resident.chunk"):
            xenc = self.resident_encoder.run(x0, out_dtype=dec.dtype)
            dec.set_cross(xenc, None if cps_emb is None else cps_emb.reshape(-1))

    def logits(self, tok: int, pos: int) -> torch.Tensor:
        """[1, 1, V] logits for token `tok` at position `pos`, scaled as the model's forward."""
        m = self.model
        raw = torch.from_numpy(self.resident_decoder.step([int(tok)], pos)).reshape(1, 1, -1)
        return raw * m.tunables.output_mult / (m.width / m.base_width)

    def _sample(self, tok, pos, T, top_k):
        probs = self.logits(tok, pos)[:, -1]
        probs[self.model.embeddings.embedding.codes:] = -torch.inf  # as generate_one (a no-op at bs=1)
        from whisperspeech import inference

        return inference.sample(probs, T, top_k)

    @torch.no_grad()
    def generate(self, txt, cps=15, lang="en", stoks_prompt=None, N=None, bs=1, T=0.7, top_k=None, step=None,
                 show_progress_bar=True):
        """TSARTransformer.generate on the resident decoder: same arguments, same tokens."""
        from whisperspeech import languages

        self._check_bs(bs)
        m = self.model
        m.ensure_tokenizer()
        N = N or m.stoks_len
        if N > m.stoks_len:
            raise ValueError(f"N={N} is past the model's {m.stoks_len} semantic-token positions")
        # inputs exactly as TSARTransformer.generate builds them
        ttoks, langs = [], []
        if isinstance(lang, list):
            lang0 = lang[0]
            assert isinstance(txt, list), "lang and txt have to be both lists or strings"
            for txt, lang in zip(txt, lang):
                tt = m.tokenizer.encode(txt)
                ttoks += tt
                langs += [languages.to_id(lang)] * len(tt)
        elif isinstance(lang, torch.Tensor):
            langs = lang
            ttoks = m.tokenizer.encode(txt)
        else:
            lang0 = lang
            ttoks = m.tokenizer.encode(txt)
            langs = torch.tensor([languages.to_id(lang)])
        ttoks = torch.tensor(ttoks)
        ttoks = F.pad(ttoks, (1, m.ttoks_len - len(ttoks) - 1), value=m.tokenizer.eot)
        cpss = torch.tensor([cps])
        T = torch.tensor(T)
        if not isinstance(langs, torch.Tensor):
            langs = torch.tensor(langs)
            langs = F.pad(langs, (1, m.ttoks_len - len(langs) - 1), value=languages.to_id(lang0))

        eot = m.stoks_codes + m.tunables.padding_token_offset
        toks = torch.zeros((bs, N), dtype=torch.long)
        toks[:, 0] = eot
        start = 0
        if stoks_prompt is not None:
            toks[:, 1:len(stoks_prompt) + 1] = stoks_prompt
            start = len(stoks_prompt)
        it = range(start + 1, N - 1)
        if show_progress_bar:
            from fastprogress import progress_bar

            it = progress_bar(it)

        self.start_chunk(ttoks.repeat(bs, 1), langs.repeat(bs), cpss.repeat(bs))
        # the prompt's positions in one submit (the causal mask makes that the same sum)
        self.resident_decoder.prefill([[int(t)] for t in toks[0, :start]])
        toks[:, start + 1] = self._sample(int(toks[0, start]), start, T, top_k)[:, 0]
        for i in it:
            toks[:, i + 1] = self._sample(int(toks[0, i]), i, T, top_k)[:, 0]
            if (toks[:, i + 1] == eot).all():
                return toks[:, 1:i + 1]
            if step is not None:
                step()
        return toks[:, 1:]


class ResidentS2A(_Resident):
    """whisperspeech's SADelARTransformer (semantic -> acoustic tokens, both the plain and the
    conditioned v1.95 variant) with a GPU-resident decoder."""

    def __init__(self, model, rt: Runtime | None = None, ch: int | None = None, subgroups: bool | None = None):
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
        self.resident_decoder = ResidentDecoder(
            model.decoder.layers, model.n_head, tables, None, extra=False,
            rope=_rope_tables(model.decoder.layers[0]), ksub=model.decoder.layers[0].cross_attn.key_subsampling,
            self_len=model.ctx_n, cross_len=model.stoks_len, head=head, rt=rt, ch=ch, subgroups=subgroups)
        self.resident_encoder = ResidentEncoder(model.encoder, model.n_head, model.ln_post,
                                                causal=model.tunables.causal_encoder,
                                                rope=_rope_tables(model.encoder[0]), rt=rt)

    @torch.no_grad()
    def start_chunk(self, stoks, speakers) -> None:
        """One submit per chunk: the encoder (resident, the speaker/condition term added through
        ln_post) and the cross-attention K/V of every decoder layer; stoks [1, stoks_len] padded
        as generate pads them, speakers [1, D]."""
        m = self.model
        if hasattr(m, "cond_embeddings"):  # s2a_delar_mup_wds_mlang_cond
            run = lambda: m.run_encoder(stoks, [dict(speaker=s, snr=60, c50=60) for s in speakers])  # noqa: E731
        else:
            run = lambda: m.run_encoder(stoks, speakers)  # noqa: E731
        x0, (extra, _, _) = self._encoder_input(m, "encoder", m.ln_post, run)
        dec = self.resident_decoder
        with dec.rt.recorder("wsvk.resident.chunk"):
            dec.set_cross(self.resident_encoder.run(x0, extra[0, 0], out_dtype=dec.dtype))

    def logits(self, toks, pos: int) -> torch.Tensor:
        """[1, Q, 1, V] logits for the quantizer tokens `toks` [Q] at position `pos`, scaled as forward."""
        m = self.model
        raw = torch.from_numpy(self.resident_decoder.step([int(t) for t in toks], pos))
        logits = raw.reshape(1, m.quantizers, 1, -1)
        logits *= m.tunables.output_mult / (m.width / m.base_width)
        return logits

    def _sample(self, toks, pos, T, top_k):
        from whisperspeech import inference

        return inference.sample(self.logits(toks, pos)[:, :, -1], T, top_k)

    @torch.no_grad()
    def generate(self, stoks, speakers, langs=None, atoks_prompt=None, N=None, bs=1, T=0.7, top_k=None,
                 show_progress_bar=True, step=None, subsample_enc=False):
        """SADelARTransformer.generate on the resident decoder: same arguments, same tokens."""
        self._check_bs(bs)
        m = self.model
        N = N or len(stoks) * 3
        stoks = F.pad(stoks, (1, m.stoks_len - len(stoks) - 1), value=m.stoks_codes - 1).unsqueeze(0)
        speakers = speakers.to(dtype=m.dtype if isinstance(getattr(m, "dtype", None), torch.dtype) else torch.float32)
        toks = torch.full((bs, m.quantizers, m.ctx_n), m.codes + 1, dtype=torch.long)
        T = torch.tensor(T)
        start = 0
        if atoks_prompt is not None:
            start = atoks_prompt.shape[-1]
            for i in range(m.quantizers):
                toks[:, i, 1 + i:start + i + 1] = atoks_prompt[:, i]
        start += 1  # at least the SOT

        stoks, speakers = [x.repeat(bs, 1) for x in (stoks, speakers)]
        self.start_chunk(stoks, speakers)
        self.resident_decoder.prefill(toks[0, :, :start - 1].T.tolist())  # the prompt, one submit
        initial = self._sample(toks[0, :, start - 1].tolist(), start - 1, T, top_k)
        toks[:, :start, start:start + 1] = initial[:, :start]
        start += 1

        it = range(start, min(N, m.ctx_n - 1))
        if show_progress_bar:
            from fastprogress import progress_bar

            it = progress_bar(it)
        for i in it:
            toks[:, :i, i:i + 1] = self._sample(toks[0, :, i - 1].tolist(), i - 1, T, top_k)[:, :i]
            if step is not None:
                step()
        toks = toks[:, :, 1:N]
        for j in range(m.quantizers):
            toks[:, j] = torch.roll(toks[:, j], -j)
        return toks[:, :, :N - 4]
