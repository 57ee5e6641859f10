"""Sampling a token from logits: whisperspeech's `inference.sample` (temperature, top-k, then the
exponential-race draw of gpt-fast) with an explicit torch.Generator.

Each sequence of a batch draws from its own generator, so its tokens do not depend on what else
shares the step. With generator=None it draws from torch's global generator, exactly as
whisperspeech does (the same operations in the same order: a generator seeded s draws what the
global one seeded s draws).
"""

from __future__ import annotations

import torch


def sample(logits: torch.Tensor, T=1.0, top_k: int | None = None, generator: torch.Generator | None = None):
    """Token ids [..., 1] (int32) from logits [..., V]."""
    logits = logits / max(T, 1e-5)
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        pivot = v.select(-1, -1).unsqueeze(-1)
        logits = torch.where(logits < pivot, -float("Inf"), logits)
    probs = torch.nn.functional.softmax(logits, dim=-1)
    q = torch.empty_like(probs).exponential_(1, generator=generator)
    return torch.argmax(probs / q, dim=-1, keepdim=True).to(dtype=torch.int)
