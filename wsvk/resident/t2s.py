"""ResidentT2S: whisperspeech's TSARTransformer (text -> semantic tokens) on a resident decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..gpu import Runtime
from .decoder import HeadStage, ResidentDecoder
from .encoder import ResidentEncoder
from .sampling import Draws, SampledSequence, Settings
from .whisper import Resident, rope_tables


def t2s_inputs(m, txt, lang, cps):
    """(ttoks [1, ttoks_len], langs, cpss) exactly as TSARTransformer.generate builds them for one
    text (lang: a code, or a tensor of language ids).

    A list of codes (whisperspeech's per-segment languages, with txt a list of texts) is refused:
    whisperspeech's run_encoder broadcasts the per-token language ids into a batch of ttoks_len
    encoder outputs, which its own generate cannot decode (it fails on its batch-1 KV cache), and
    the encoder input taken here would silently be the first language's alone."""
    from whisperspeech import languages

    if isinstance(lang, (list, tuple)):
        raise InputError(f"T2S takes one language code per text (such as 'en'), not a list ({lang!r}): "
                         "whisperspeech's per-segment languages do not run in its own generate either; "
                         "synthesize each language's text on its own")
    if not isinstance(txt, str):
        raise InputError(f"T2S takes one text (a str) per sequence, not a {type(txt).__name__}")
    m.ensure_tokenizer()
    ttoks = m.tokenizer.encode(txt)
    langs = lang if isinstance(lang, torch.Tensor) else torch.tensor([languages.to_id(lang)])
    ttoks = F.pad(torch.tensor(ttoks), (1, m.ttoks_len - len(ttoks) - 1), value=m.tokenizer.eot)
    return ttoks[None], langs, torch.tensor([cps])


class T2SSequence(SampledSequence):
    """One text through T2S, step by step: TSARTransformer.generate's loop at bs=1. The first
    sampled token is not checked for the end token (as whisperspeech); result: [1, n] tokens."""

    def __init__(self, owner, txt, cps=15, lang="en", stoks_prompt=None, N=None, T=0.7, top_k=None,
                 generator=None, step=None):
        m = owner.model
        self.owner, self.generator, self.step, self.top_k = owner, generator, step, top_k
        self.N = N or m.stoks_len
        if self.N > m.stoks_len:
            raise ValueError(f"N={self.N} is past the model's {m.stoks_len} semantic-token positions")
        self.inputs = t2s_inputs(m, txt, lang, cps)
        self.T = torch.tensor(T)
        self.eot = m.stoks_codes + m.tunables.padding_token_offset
        self.toks = torch.zeros(self.N, dtype=torch.long)
        self.toks[0] = self.eot
        self.first = 0
        if stoks_prompt is not None:
            self.toks[1:len(stoks_prompt) + 1] = stoks_prompt
            self.first = len(stoks_prompt)
        self.max_steps = max(0, self.N - 2 - self.first)
        self.draws = Draws((1, 1, owner.resident_decoder.n_logits), generator)
        self.settings = Settings(float(self.T), top_k, owner.output_scale(), 1)
        self.result = None
        self.cancelled = False
        self.on_done = None  # called with the sequence once its result is set

    def start(self, slot: int):
        self.slot, self.pos = slot, self.first
        ttoks, langs, cpss = self.inputs
        self.owner.start_chunk(ttoks, langs, cpss, slot=slot)
        self.owner.resident_decoder.prefill([[int(t)] for t in self.toks[:self.first]], slot=slot)
        return [int(self.toks[self.first])], self.first

    def _advance(self, new):
        # the token [1] sampled from this step's logits (whisperspeech's generate_one also sets
        # probs[codes:] = -inf: rows of the batch, a no-op at bs=1)
        p, tok = self.pos, int(new[0])
        self.toks[p + 1] = tok
        if p != self.first:
            if tok == self.eot:
                return self._finish(self.toks[1:p + 1][None])
            if self.step is not None:
                self.step()
        if p + 1 < self.N - 1:
            self.pos = p + 1
            return [tok], p + 1
        return self._finish(self.toks[1:][None])

    def _finish(self, result):
        self.result = result
        if self.on_done is not None:
            self.on_done(self)


class ResidentT2S(Resident):
    """whisperspeech's TSARTransformer (text -> semantic tokens) with a GPU-resident decoder of
    `slots` sequences."""

    def __init__(self, model, rt: Runtime | None = None, ch: int | None = None, subgroups: bool | None = None,
                 slots: int = 1, precision: str | None = None):
        super().__init__(model)
        emb = model.embeddings.embedding
        if emb.merged_in is None:
            raise ValueError("the T2S embeddings are not merged: prepare it with wsvk.tts.models.for_cpu(model)")
        self.vocab = int(emb.merged_in.weight.shape[0])
        head = [HeadStage(emb.merged_out, emb.bias_out,
                          ln=(model.decoder.ln_post.weight, model.decoder.ln_post.bias, model.decoder.ln_post.eps))]
        self_len, cross_len = self.cache_lengths(model)
        self.use_decoder(ResidentDecoder(
            model.decoder.layers, model.n_head, emb.merged_in.weight[None], model.embeddings.positional_embedding,
            extra=model.cps_embeddings is not None, rope=None, ksub=1, self_len=self_len, cross_len=cross_len,
            head=head, rt=rt, ch=ch, subgroups=subgroups, slots=slots, precision=precision, tune_as="t2s"))
        enc = model.encoder
        self.resident_encoder = ResidentEncoder(enc.layers, model.n_head, enc.ln_post,
                                                causal=model.tunables.causal_encoder,
                                                rope=rope_tables(enc.layers[0]), rt=rt)

    @staticmethod
    def cache_lengths(model) -> tuple[int, int]:
        return int(model.stoks_len), int(model.ttoks_len)

    @staticmethod
    def parts(model) -> tuple:
        emb = model.embeddings.embedding
        tables = [emb.merged_in.weight] + ([] if model.embeddings.positional_embedding is None
                                           else [model.embeddings.positional_embedding])
        return (model.decoder.layers, [(emb.merged_out, emb.bias_out)], tables, model.encoder.layers,
                model.encoder.ln_post)

    @torch.no_grad()
    def start_chunk(self, ttoks, langs, cpss, slot: int = 0) -> None:
        """One submit per chunk: the encoder (resident) and the cross-attention K/V of every
        decoder layer into `slot`; the inputs as TSARTransformer.generate builds them."""
        x0, (_, _, cps_emb) = self.encoder_input(lambda view: view.run_encoder(ttoks, langs, cpss), "encoder",
                                                 "layers")
        dec = self.resident_decoder
        with dec.rt.recorder("wsvk.resident.chunk"):
            xenc = self.resident_encoder.run(x0, out_dtype=dec.dtype)
            dec.set_cross(xenc, None if cps_emb is None else cps_emb.reshape(-1), slot=slot)

    def logits(self, tok: int, pos: int, slot: int = 0) -> torch.Tensor:
        """[1, 1, V] logits for token `tok` at position `pos` of `slot`, scaled as the model's forward."""
        raw = torch.from_numpy(self.resident_decoder.step([int(tok)], pos, slot=slot)).reshape(1, 1, -1)
        return raw * self.output_scale()

    def sequence(self, txt, cps=15, lang="en", stoks_prompt=None, N=None, T=0.7, top_k=None, generator=None,
                 step=None) -> T2SSequence:
        """One text to decode with run() beside others; generator: its own torch.Generator (None:
        torch's global one, as whisperspeech)."""
        return T2SSequence(self, txt, cps, lang, stoks_prompt, N, T, top_k, generator, step)

    @torch.no_grad()
    def generate(self, txt, cps=15, lang="en", stoks_prompt=None, N=None, bs=1, T=0.7, top_k=None, step=None,
                 show_progress_bar=True):
        """TSARTransformer.generate on the resident decoder: same arguments, same tokens (drawn
        from torch's global generator, as whisperspeech does)."""
        return self.run_one(self.sequence(txt, cps, lang, stoks_prompt, N, T, top_k, None, step), bs)
