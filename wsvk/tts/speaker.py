"""Speaker embeddings for voice cloning: speechbrain's ECAPA-TDNN encoder.

The model folder is speechbrain's layout (hyperparams.yaml + embedding_model.ckpt, as in
"speechbrain/spkrec-ecapa-voxceleb"). We build the three modules an embedding needs
(compute_features -> mean_var_norm -> embedding_model) from the yaml and load the ckpt
ourselves: speechbrain's own `from_hparams` symlinks into a save dir and fetches the
classifier and label files too, which an embedding does not use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, describe
from .models import resolve_folder, torch_load

DEFAULT_SPEAKER_MODEL = "speechbrain/spkrec-ecapa-voxceleb"
SPEAKER_RATE = 16000
MAX_SECONDS = 30.0

def ecapa_hparams(n_mels: int = 80, channels=(1024, 1024, 1024, 1024, 3072), attention_channels: int = 128,
                  se_channels: int = 128, res2net_scale: int = 8) -> str:
    """The parts of speechbrain/spkrec-ecapa-voxceleb/hyperparams.yaml an embedding needs (the
    defaults are the released model's; the last two are ECAPA_TDNN's defaults, which it keeps)."""
    return f"""\
n_mels: {n_mels}
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False
embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: {list(channels)}
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: {attention_channels}
    se_channels: {se_channels}
    res2net_scale: {res2net_scale}
    lin_neurons: 192
"""


# used to build a random-weight encoder for offline runs (--random-weights)
RELEASED_HPARAMS = ecapa_hparams()

_NEEDED = ("compute_features", "mean_var_norm", "embedding_model")


def _quiet_speechbrain():
    """speechbrain logs 'torchvision is not available' on import; keep stderr clean."""
    import logging

    logging.getLogger("speechbrain").setLevel(logging.ERROR)


def find_speaker_model(ref: str | None = None) -> Path:
    """The speaker model's folder: a local one, or a Hugging Face repo id's files in the cache
    (downloaded when missing and the Hub answers; offline, NotCachedError names the download)."""
    return resolve_folder(ref or DEFAULT_SPEAKER_MODEL, ("hyperparams.yaml", "embedding_model.ckpt"), "speaker model",
                          "pass --speaker-model FOLDER (with hyperparams.yaml and embedding_model.ckpt)")


class SpeakerEncoder:
    """ECAPA speaker encoder: `embed(path)` -> float32 tensor [lin_neurons] (192 for the released one)."""

    def __init__(self, compute_features, mean_var_norm, embedding_model):
        self.compute_features = compute_features.eval()
        self.mean_var_norm = mean_var_norm.eval()
        self.embedding_model = embedding_model.eval().float()

    @classmethod
    def from_hparams_text(cls, text: str, folder: Path | None = None, what: str = "speaker model"):
        _quiet_speechbrain()
        from hyperpyyaml import load_hyperpyyaml

        overrides = {"pretrained_path": str(folder)} if folder is not None else {}
        try:
            hp = load_hyperpyyaml(text, overrides=overrides, overrides_must_match=False)
        except Exception as e:
            raise InputError(f"{what} hyperparams.yaml does not load ({describe(e)})") from None
        missing = [k for k in _NEEDED if k not in hp]
        if missing:
            raise InputError(f"{what} hyperparams.yaml lacks {', '.join(missing)}")
        return cls(*(hp[k] for k in _NEEDED))

    @classmethod
    def load(cls, ref: str | None = None):
        """From a local folder (hyperparams.yaml + embedding_model.ckpt) or a Hugging Face repo id."""
        folder = find_speaker_model(ref)
        enc = cls.from_hparams_text((folder / "hyperparams.yaml").read_text(), folder)
        state = torch_load(folder / "embedding_model.ckpt", "speaker model")
        try:
            enc.embedding_model.load_state_dict(state)
        except Exception as e:
            raise InputError(f"speaker model {folder / 'embedding_model.ckpt'} does not match its "
                             f"hyperparams.yaml ({describe(e)})") from None
        return enc

    @classmethod
    def random(cls, seed: int = 0):
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 3)
            return cls.from_hparams_text(RELEASED_HPARAMS)

    def embed_waveform(self, wav):
        """wav: float32 tensor [T] at 16 kHz -> embedding [D]."""
        import torch

        with torch.no_grad():
            wavs = wav.reshape(1, -1).float()
            lens = torch.ones(1)
            feats = self.compute_features(wavs)  # [1, frames, n_mels]
            feats = self.mean_var_norm(feats, lens)
            emb = self.embedding_model(feats, lens)  # [1, 1, D]
        return emb.reshape(-1)

    def embed(self, path) -> "torch.Tensor":  # noqa: F821
        return self.embed_waveform(read_speaker_audio(path))


@dataclass(frozen=True)
class Voice:
    """A voice to clone, already read: 16 kHz mono float32 samples [T] and where they came from."""

    samples: "torch.Tensor"  # noqa: F821
    source: str


def read_voice(path) -> Voice:
    return Voice(read_speaker_audio(path), str(path))


def check_speaker_file(path) -> None:
    """Raise InputError unless `path` is a readable audio file with samples (cheap: header only)."""
    import soundfile as sf

    p = Path(path)
    if not p.is_file():
        raise InputError(f"speaker audio file not found: {path}")
    try:
        info = sf.info(str(p))
    except Exception as e:
        raise InputError(f"speaker file {path} is not a readable audio file ({describe(e)})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise InputError(f"speaker file {path} holds no audio samples")


def read_speaker_audio(path, seconds: float = MAX_SECONDS, rate: int = SPEAKER_RATE):
    """The first `seconds` of an audio file as mono float32 at `rate` Hz: tensor [T]."""
    import soundfile as sf
    import torch
    import torchaudio.functional as AF

    check_speaker_file(path)
    try:
        sr = sf.info(str(path)).samplerate
        data, sr = sf.read(str(path), frames=int(sr * seconds), dtype="float32", always_2d=True)
    except Exception as e:
        raise InputError(f"speaker file {path} is not a readable audio file ({describe(e)})") from None
    if data.shape[0] == 0:
        raise InputError(f"speaker file {path} holds no audio samples")
    wav = torch.from_numpy(data.mean(axis=1))  # [frames, channels] -> mono [frames]
    if not torch.isfinite(wav).all():
        raise InputError(f"speaker file {path} holds samples that are not numbers (NaN or inf)")
    if wav.abs().max() < 1e-4:  # -80 dBFS: nothing to clone (or channels in opposite phase)
        raise InputError(f"speaker file {path} is silent" + (" once its channels are mixed to mono"
                                                              if data.shape[1] > 1 and abs(data).max() >= 1e-4 else ""))
    if sr != rate:
        wav = AF.resample(wav, sr, rate)
    if wav.numel() < rate // 10:
        raise InputError(f"speaker file {path} is too short ({wav.numel() / rate:.2f} s); give at least 0.1 s")
    return wav.contiguous()


__all__ = ["SpeakerEncoder", "Voice", "check_speaker_file", "find_speaker_model", "read_speaker_audio", "read_voice",
           "DEFAULT_SPEAKER_MODEL"]
