"""Layer 4, text to speech: model loading, text splitting, speaker embeddings, the pipeline.

    from wsvk.tts import load_pipeline
    pipe = load_pipeline(random_weights="tiny")     # or the released models (Hugging Face cache)
    audio = pipe.generate("Hello there.")           # float32 mono, 24 kHz
"""

from .pipeline import SAMPLE_RATE, Pipeline, Progress, load_pipeline

__all__ = ["SAMPLE_RATE", "Pipeline", "Progress", "load_pipeline"]
