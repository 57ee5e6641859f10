"""Sampling a token from logits: whisperspeech's `inference.sample` (temperature, top-k, then the
exponential-race draw of gpt-fast) with an explicit torch.Generator.

Each sequence of a batch draws from its own generator, so its tokens do not depend on what else
shares the step. With generator=None it draws from torch's global generator, exactly as
whisperspeech does (the same operations in the same order: a generator seeded s draws what the
global one seeded s draws).

The draws do not depend on the logits, so a sequence with its own generator takes its next
step's draws ahead (Draws.ahead), while the GPU runs the step: at 16 columns that is most of the
host's sampling work, which would otherwise sit between two steps.

What is left between two steps (the softmax and the draw over the logits) runs once per
Settings for all the sequences of a step that share them (Settings.tokens): row by row the same
operations as one sequence at a time, so the same tokens, for a fraction of the per-call cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


class Draws:
    """The exponential draws of a sequence's next sample, [shape], taken ahead from its own
    generator (the same values in the same order as drawing them in sample())."""

    def __init__(self, shape, generator: torch.Generator | None):
        self.shape, self.generator, self.q = tuple(shape), generator, None

    def ahead(self) -> None:
        """Draw the next sample's values now (not from torch's global generator: what else uses
        that one in between is not known)."""
        if self.generator is not None and self.q is None:
            self.q = torch.empty(self.shape, dtype=torch.float32).exponential_(1, generator=self.generator)

    def take(self) -> torch.Tensor | None:
        q, self.q = self.q, None
        return q


def sample(logits: torch.Tensor, T=1.0, top_k: int | None = None, generator: torch.Generator | None = None,
           q: torch.Tensor | None = None):
    """Token ids [..., 1] (int32) from logits [..., V]; q: the exponential draws, taken ahead
    from `generator` (None: drawn here)."""
    logits = logits / max(T, 1e-5)
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        pivot = v.select(-1, -1).unsqueeze(-1)
        logits = torch.where(logits < pivot, -float("Inf"), logits)
    probs = torch.nn.functional.softmax(logits, dim=-1)
    if q is None:
        q = torch.empty_like(probs).exponential_(1, generator=generator)
    elif q.shape != probs.shape:
        raise ValueError(f"draws {tuple(q.shape)} taken ahead for logits {tuple(probs.shape)}")
    return torch.argmax(probs / q, dim=-1, keepdim=True).to(dtype=torch.int)


@dataclass(frozen=True)
class Settings:
    """What a sequence's samples depend on besides its logits and draws: the temperature (the
    float32 value the sequence holds), top-k, the scale its model's forward puts on the logits,
    and the logits rows per sample (S2A: one per quantizer). Sequences of one decoder with equal
    settings are sampled together."""

    T: float
    top_k: int | None
    scale: float
    rows: int

    def __post_init__(self):
        object.__setattr__(self, "_T", torch.tensor(self.T, dtype=torch.float32))  # made once, not per step

    def tokens(self, logits: np.ndarray, q, generator: torch.Generator | None = None):
        """Token ids [n, rows] (int32) from logits [n, rows * V] (one logits row of the decoder per
        sequence); q: the draws taken ahead, [n, rows, V] or a list of n [1, rows, V] (None:
        drawn here from `generator`)."""
        if isinstance(q, list):
            q = torch.cat(q)
        x = torch.from_numpy(logits).reshape(len(logits), self.rows, -1) * self.scale
        return sample(x, self._T, self.top_k, generator, q)[..., 0].numpy()


class SampledSequence:
    """The sampling half of a resident decoder sequence (T2S, S2A): the loop's predraw(), feed()
    and its grouped form batch_sample()/advance() (wsvk/resident/batching.py). The sequence sets
    self.settings, self.draws and self.generator, and defines _advance(tokens): what its feed
    does with the tokens [rows] it sampled."""

    def predraw(self):
        self.draws.ahead()

    def batch_sample(self):
        """(settings, draws taken ahead) for sampling beside other sequences, or None."""
        return None if self.draws.q is None else (self.settings, self.draws.q)

    def feed(self, row):
        return self._advance(self.settings.tokens(row[None], self.draws.take(), self.generator)[0])

    def advance(self, tokens):
        """feed() with the tokens the loop sampled from batch_sample()'s settings and draws."""
        self.draws.take()  # used: they were handed to the loop's sampler
        return self._advance(tokens)
