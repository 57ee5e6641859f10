"""Layer 3, the resident modules: whole model stages kept on the GPU (weights, KV caches, every
bind group built once), so a chunk or a decode step is one submit with one small readback.

    decoder.py  a WhisperSpeech decoder: one submit per decode step
    encoder.py  a WhisperSpeech encoder: one pass per chunk, output left on the GPU
    whisper.py  ResidentT2S / ResidentS2A: whisperspeech's generate() on the two above
    vocos.py    ResidentVocos: backbone + ISTFT head, one readback per call
"""

from .decoder import HeadStage, ResidentDecoder
from .encoder import ResidentEncoder
from .vocos import ResidentVocos
from .whisper import ResidentS2A, ResidentT2S

__all__ = ["HeadStage", "ResidentDecoder", "ResidentEncoder", "ResidentS2A", "ResidentT2S", "ResidentVocos"]
