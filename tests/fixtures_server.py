"""The tiny models and the pipeline that the server, stream and page tests share: `files` (the four
checkpoints, Vocos and ECAPA folders, a voices folder) and `pipe` (a wgpu pipeline over them, four
slots), both module-scoped: each module gets its own."""

import pytest

import tiny_models as tm


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-models")
    paths = tm.write_all(root)
    voices = root / "voices"
    voices.mkdir()
    tm.write_voice(voices / "anna.wav", seed=2)
    paths["voices"] = voices
    return paths


@pytest.fixture(scope="module")
def pipe(files, rt):
    import os

    from wsvk.tts import load_pipeline

    old = os.environ.get("WSVK_BACKEND")
    os.environ["WSVK_BACKEND"] = "wgpu"
    p = load_pipeline(t2s=str(files["t2s"]), s2a=str(files["s2a"]), vocoder=str(files["vocoder"]),
                      speaker_model=str(files["speaker_model"]), slots=4)
    yield p
    p.engine().close()
    if old is None:
        os.environ.pop("WSVK_BACKEND", None)
    else:
        os.environ["WSVK_BACKEND"] = old
