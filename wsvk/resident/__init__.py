"""Layer 3, the resident modules: whole model stages kept on the GPU (weights, KV caches, every
bind group built once), so a chunk or a decode step is one submit with one small readback.

    plan.py      a WhisperSpeech decoder's weights, slots and dispatch list (built once per variant)
    tuner.py     the decode step's variants, timed on this GPU at first use; tune_cache.py keeps the choice
    decoder.py   ResidentDecoder: runs the plan, one submit per decode step of every active slot
    batching.py  DecodeLoop: sequences join and leave the slots at step boundaries; SharedLoop:
                 one loop per decoder that every caller feeds
    sampling.py  whisperspeech's sampler with a per-sequence torch.Generator
    encoder.py   a WhisperSpeech encoder: one pass per chunk, output left on the GPU
    whisper.py   what T2S and S2A share (whisperspeech's embeddings, counters)
    t2s.py, s2a.py  ResidentT2S / ResidentS2A: whisperspeech's generate(), and batches of sequences
    vocos.py     ResidentVocos: backbone + ISTFT head, one readback per call
"""

from .batching import DecodeLoop, SharedLoop
from .decoder import HeadStage, ResidentDecoder
from .encoder import ResidentEncoder
from .s2a import ResidentS2A
from .t2s import ResidentT2S
from .vocos import ResidentVocos

__all__ = ["DecodeLoop", "SharedLoop", "HeadStage", "ResidentDecoder", "ResidentEncoder", "ResidentS2A", "ResidentT2S",
           "ResidentVocos"]
