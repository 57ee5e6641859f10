"""What ResidentT2S and ResidentS2A share: whisperspeech's own embeddings and per-chunk terms (its
run_encoder with the encoder layers taken out), the decode loop, attribute forwarding, counters.

    t2s = ResidentT2S(wsvk.tts.models.load_t2s(), slots=8)   # weights + KV caches go to the GPU once
    stoks = t2s.generate(text, cps=15, lang="en", show_progress_bar=False)[0]     # one sequence
    t2s.run([t2s.sequence(text, generator=g) for text, g in ...])                 # a batch
    t2s.submit(seq)   # no waiting (seq.on_done tells the end): the streaming engine's way

Both take a model prepared by `wsvk.tts.models.for_cpu` (merged QKV, float32), keep its
attributes (stoks_len, tunables, ... are forwarded) and return what its own generate returns
for the same torch seed. Per chunk (a sequence joining a slot), one submit: the model's
embeddings on the CPU, its encoder layers (wsvk.resident.encoder) and the cross-attention K/V of
every decoder layer on the GPU, nothing read back; a prompt fills the slot's KV caches in one
more (ResidentDecoder.prefill). Per step only positions and token ids go up, every active slot
advances in one submit (wsvk.resident.decoder) and the logits come back to be sampled on the
CPU (wsvk.resident.sampling), each sequence with its own generator (or torch's global one).
"""

from __future__ import annotations

import copy

import torch

from .batching import SharedLoop
from .encoder import encoder_weight_bytes
from .plan import kv_bytes, slots_per_binding, weight_bytes


def rope_tables(layer):
    """(cos, sin) [P, Dh] from the model's own Rotary cache (bit-identical to what it uses)."""
    rot = layer.attn.rotary
    if rot is None:
        return None
    cos, sin = rot(torch.zeros(1, 1))
    return cos[0, :, 0, :], sin[0, :, 0, :]


class _Capture(torch.nn.Module):
    """Stands in for a final layer norm: records its input (the embedded input x0), returns zeros."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x)
        return torch.zeros_like(x)


def _view(module, **children):
    """A shallow copy of `module` whose child modules named in `children` are replaced: the
    original is not touched (other threads may be running it), the rest is shared."""
    view = copy.copy(module)
    view.__dict__["_modules"] = {**module._modules, **children}
    return view


class Resident:
    """Shared plumbing of ResidentT2S / ResidentS2A: attribute forwarding to the wrapped model,
    the encoder capture, the shared decode loop, counters."""

    def __init__(self, model):
        if model.training:
            raise ValueError("the model must be in eval mode (wsvk.tts.models.for_cpu(model))")
        self.model = model

    def encoder_input(self, run_encoder, holder: str, layers: str):
        """(x0 [L, W], run_encoder's outputs with zeros in place of the encoder's own output).
        run_encoder(model) is whisperspeech's own run_encoder, called on a view of the model in
        which the module `holder` ("" for the model itself) has no `layers` and its `ln_post`
        records its input and returns zeros: so run_encoder returns just the per-chunk terms it
        adds after ln_post, and the embeddings, language / cps / speaker / condition terms come
        from whisperspeech's code, whatever the variant. The view shares every weight and leaves
        the model untouched: a CPU thread may be running it meanwhile. The embeddings are small
        CPU work that must stay off any op router (wsvk.router), so that a chunk stays one submit:
        its callers see to it. A router is per thread and start_chunk runs in the decode loop's
        own thread (SharedLoop), which none reaches, whatever offload() block generate/run/submit
        were called in; whoever calls start_chunk directly (selftest, quality) calls it outside
        offload()."""
        m, capture = self.model, _Capture()
        owner = getattr(m, holder) if holder else m
        view = _view(owner, **{layers: type(getattr(owner, layers))(), "ln_post": capture})
        if holder:
            view = _view(m, **{holder: view})
        outs = run_encoder(view)
        if len(capture.seen) != 1:
            raise RuntimeError(f"{type(m).__name__}.run_encoder called its final layer norm "
                               f"{len(capture.seen)} times (expected once): a whisperspeech variant the "
                               "resident encoder does not know; use resident=False")
        return capture.seen[0][0], outs

    def __getattr__(self, name):  # stoks_len, tunables, ... of the wrapped model
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    @staticmethod
    def cache_lengths(model) -> tuple[int, int]:
        """(self-attention, cross-attention) positions of a slot's KV caches for `model`."""
        raise NotImplementedError

    @classmethod
    def slot_bytes(cls, model, itemsize: int) -> int:
        """GPU memory of one slot's KV caches for `model`, stored with `itemsize` bytes a value."""
        return kv_bytes(len(model.decoder.layers), int(model.decoder.layers[0].attn.n_state),
                        *cls.cache_lengths(model), itemsize)

    @classmethod
    def max_slots(cls, model, itemsize: int, max_binding: int) -> int:
        """The most slots whose KV caches one buffer binding of max_binding bytes holds (each cache
        is one buffer of [slots, heads, length, head width])."""
        return slots_per_binding(int(model.decoder.layers[0].attn.n_state), *cls.cache_lengths(model), itemsize,
                                 max_binding)

    @staticmethod
    def parts(model) -> tuple:
        """(decoder layers, head matrices [(w, b)], embedding tables, encoder layers, encoder
        ln_post) of `model` as the resident modules store them (for weight_estimate)."""
        raise NotImplementedError

    @classmethod
    def weight_estimate(cls, model, precision: str, itemsize: int) -> int:
        """GPU memory the model's parameters will take at a resolved precision (f32, f16, q8;
        itemsize: what the non-8-bit arrays store), before the module is built."""
        dec, matrices, tables, enc, enc_ln = cls.parts(model)
        return weight_bytes(dec, matrices, tables, precision, itemsize) + encoder_weight_bytes(enc, enc_ln)

    def memory(self) -> dict:
        """What this module holds on the GPU: its precision, the parameters, one slot's KV
        caches and the number of slots (bytes)."""
        d = self.resident_decoder
        return {"precision": d.precision, "weight_bytes": d.plan.weight_bytes + self.resident_encoder.weight_bytes,
                "cache_bytes_per_slot": d.plan.slot_bytes(), "slots": d.slots}

    @property
    def slots(self) -> int:
        return self.resident_decoder.slots

    def output_scale(self) -> float:
        """The model's forward scales its logits by this (muP)."""
        m = self.model
        return m.tunables.output_mult / (m.width / m.base_width)

    def use_decoder(self, decoder) -> None:
        """The decoder, and the one loop every caller shares its slots through."""
        self.resident_decoder = decoder
        self.loop = SharedLoop(decoder, name=f"wsvk-{type(self).__name__}")

    def run(self, sequences) -> None:
        """Decode the sequences (from self.sequence) together through the decoder's slots, beside
        whatever else runs there (the streaming engine's sequences), and wait for their end."""
        self.loop.run(sequences)

    def submit(self, seq, on_error=None, priority: int = 1) -> None:
        """Queue one sequence without waiting: it joins at a step boundary (on_error, priority:
        see SharedLoop.submit)."""
        self.loop.submit(seq, on_error, priority)

    def run_one(self, seq, bs: int):
        """generate()'s tail: batch 1, one sequence (whisperspeech's progress bar is not drawn:
        its `step` callback is the way to follow a decode)."""
        if bs != 1:
            raise ValueError(f"generate() runs one sequence (bs=1), got bs={bs}: use run() for batches")
        self.run([seq])
        return seq.result

    def counters(self) -> dict:
        """Its precision and GPU memory (MiB), the decoder's counters (dispatches_per_step, steps,
        record_s, wait_s, step_s, ...), the host time feeding the logits to the sequences between
        steps (feed_s: sampling, not hidden behind the GPU) and the encoder's dispatches per chunk
        (which also computes the cross K/V: 2 per decoder layer)."""
        dec = self.resident_decoder
        enc = self.resident_encoder.dispatches_per_chunk + 2 * dec.n_layers
        feed = self.loop.loop.feed_seconds
        mem = self.memory()
        return {"precision": mem["precision"], "weights_mib": mem["weight_bytes"] / 2**20,
                "cache_mib_per_slot": mem["cache_bytes_per_slot"] / 2**20, "encoder_dispatches_per_chunk": enc,
                **dec.counters(), "feed_s": feed, "feed_s_per_step": feed / max(dec.steps, 1)}

    def reset_counters(self) -> None:
        self.resident_decoder.reset_counters()
        self.loop.loop.feed_seconds = 0.0
