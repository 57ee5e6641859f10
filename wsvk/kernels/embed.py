"""The resident decoder's input embedding (shaders/embed.wgsl): token (+ position, + per-sequence)
embeddings of every column of a decode step, read from the step buffer."""

from __future__ import annotations

from ..gpu import Layout
from .common import alias

PARAMS = Layout("W V NQ flags ss")  # flags: 1 = add pos_emb[pos], 2 = add extra[slot]
POS, EXTRA = 1, 2


def pipeline(rt, wt):
    """embed for tables of storage type wt; dispatch (ceil(W / 256), columns)."""
    return rt.pipeline("embed", "embed", aliases={"WT": alias(wt)})
