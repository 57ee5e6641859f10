"""Tiny random WhisperSpeech / Vocos / ECAPA models written in the released file formats.

Configs differ from whisperspeech's presets on purpose (width 64, 2 heads, short windows) so
the loaders must read sizes from the files. Weights are re-drawn with unit-scale variance so
the logits are far from uniform and a backend bug changes the sampled tokens.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
import yaml

from wsvk.tts.models import RELEASED_VOCOS_CONFIG
from wsvk.tts.speaker import ecapa_hparams

# the T2S text window (bytes) and semantic-token window of the tiny models
TTOKS_LEN = 48
STOKS_LEN = 16
STOKS_CODES = 65
SPK_WIDTH = 192

# the released Vocos config with a narrow backbone (same feature extractor and ISTFT head)
TINY_VOCOS_CONFIG = copy.deepcopy(RELEASED_VOCOS_CONFIG)
TINY_VOCOS_CONFIG["backbone"]["init_args"].update(dim=32, intermediate_dim=64, num_layers=2)
TINY_VOCOS_CONFIG["head"]["init_args"]["dim"] = 32

# a tiny ECAPA in speechbrain's spkrec-ecapa-voxceleb layout
TINY_ECAPA_HPARAMS = "pretrained_path: unused\n" + ecapa_hparams(
    n_mels=24, channels=(32, 32, 32, 32, 96), attention_channels=16, se_channels=16, res2net_scale=4)


def _redraw(model: torch.nn.Module) -> None:
    """Unit-scale random weights: N(0, 1/fan_in) for matrices, N(0, 1) for embeddings/vectors."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 1 / math.sqrt(p[0].numel()))
            else:
                p.normal_(0, 0.5)
        for m in model.modules():
            if isinstance(m, torch.nn.Embedding):
                m.weight.normal_(0, 1)
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.normal_(0, 0.1)


def _stored_args(model, names: str) -> dict:
    return {k: getattr(model, k) for k in names.split(",")}


def build_t2s(seed: int = 0):
    from whisperspeech import t2s_up_wds_mlang_enclm as t2s

    torch.manual_seed(seed)
    tunables = t2s.Tunables(encoder_depth_ratio=0.5)  # depth 1: one encoder + one decoder layer
    config = dict(depth=1, n_head=2, head_width=32, ffn_mult=2, ttoks_len=TTOKS_LEN, ttoks_codes=256,
                  ttoks_width=None, stoks_len=STOKS_LEN, stoks_codes=STOKS_CODES, stoks_width=None)
    model = t2s.TSARTransformer(**config, tunables=tunables)
    _redraw(model)
    return dict(config=config, tunables=dataclasses.asdict(tunables), state_dict=model.state_dict())


def build_s2a(seed: int = 0):
    from whisperspeech import s2a_delar_mup_wds_mlang as s2a

    torch.manual_seed(seed + 1)
    tunables = s2a.Tunables(encoder_depth_ratio=0.5)
    config = dict(depth=1, ctx_n=3 * STOKS_LEN, stoks_len=STOKS_LEN, stoks_codes=STOKS_CODES,
                  stoks_width=None, spk_width=SPK_WIDTH, atoks_width=None, n_head=2, head_width=32,
                  ffn_mult=2, quantizers=4, speaker_map={"1": 0})
    model = s2a.SADelARTransformer(**config, tunables=tunables)
    _redraw(model)
    return dict(config=config, tunables=dataclasses.asdict(tunables), state_dict=model.state_dict())


def write_vocos(folder: Path, seed: int = 0) -> Path:
    """config.yaml + pytorch_model.bin without the EnCodec weights, as the released folder."""
    from wsvk.tts.models import build_vocos

    torch.manual_seed(seed + 2)
    folder.mkdir(parents=True, exist_ok=True)
    model = build_vocos(TINY_VOCOS_CONFIG)
    with torch.no_grad():
        model.feature_extractor.codebook_weights.normal_()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("feature_extractor.encodec.")}
    (folder / "config.yaml").write_text(yaml.safe_dump(TINY_VOCOS_CONFIG))
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def write_ecapa(folder: Path, seed: int = 0) -> Path:
    """hyperparams.yaml + embedding_model.ckpt, built from speechbrain's classes."""
    from hyperpyyaml import load_hyperpyyaml

    torch.manual_seed(seed + 3)
    folder.mkdir(parents=True, exist_ok=True)
    hp = load_hyperpyyaml(TINY_ECAPA_HPARAMS)
    model = hp["embedding_model"]
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    (folder / "hyperparams.yaml").write_text(TINY_ECAPA_HPARAMS)
    torch.save(model.state_dict(), folder / "embedding_model.ckpt")
    return folder


def write_all(root: Path, seed: int = 0) -> dict:
    """Every tiny model under `root`; returns the paths by role."""
    root.mkdir(parents=True, exist_ok=True)
    torch.save(build_t2s(seed), root / "t2s-tiny.model")
    torch.save(build_s2a(seed), root / "s2a-tiny.model")
    return {
        "t2s": root / "t2s-tiny.model",
        "s2a": root / "s2a-tiny.model",
        "vocoder": write_vocos(root / "vocos-tiny", seed),
        "speaker_model": write_ecapa(root / "ecapa-tiny", seed),
    }


def write_voice(path: Path, seconds: float = 1.5, rate: int = 44100, seed: int = 0) -> Path:
    """A stereo 44.1 kHz test voice: two sines plus noise."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    left = 0.4 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    right = 0.3 * np.sin(2 * np.pi * 330 * t + 0.5) + 0.05 * rng.standard_normal(t.size)
    sf.write(str(path), np.stack([left, right], axis=1).astype(np.float32), rate)
    return path
