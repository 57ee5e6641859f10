"""The tiny models written to disk once per session for the pipeline and batch tests: `tiny`."""

import pytest

import tiny_models as tm


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Tiny T2S/S2A checkpoints, a Vocos folder, an ECAPA folder and a stereo 44.1 kHz voice."""
    root = tmp_path_factory.mktemp("tiny-models")
    paths = tm.write_all(root)
    paths["voice"] = tm.write_voice(root / "voice.wav")
    return paths
