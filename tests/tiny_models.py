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


# ---------------------------------------------------------------- the released checkpoints' structures
#
# What whisperspeech 0.8.9's code says the released files hold (tiny here except for the structure):
# - semantic tokens: the VQ model's codebook, frozen: 512 codes + its mask/padding code = 513
#   (stoks_codes = vq_codes + 1), each codebook_dim = 64 wide (stoks_width), narrower than the
#   model: FlexEmbeddings (T2S) / semantic_embedding (S2A) [513, 64] with an emb_to_hidden
#   projection 64 -> width, and a hidden_to_emb one back (the T2S unembedding, which then has a
#   bias; in S2A only the causal encoder's training loss uses it).
# - the v1.95 files: T2S with padding_token_offset 0 (end token = stoks_codes = 513, the special
#   code) and a causal encoder; S2A of the conditioned class (s2a_delar_mup_wds_mlang_cond) with
#   rope and a causal encoder; fp16 state dicts.
# - the older en+pl files were saved before some Tunables keys existed, and upgrade() fills them:
#   T2S without padding_token_offset (-1: end token 512, the padding code) and causal_encoder (the
#   dataclass default); the plain S2A without causal_encoder / force_hidden_to_emb (False / True:
#   so hidden_to_emb exists) and without `_extra_state` in its state dict (load_model adds the
#   speaker map from the config).

RELEASED_STOKS_CODES = 513  # 512 VQ codes + the mask/padding code
RELEASED_STOKS_WIDTH = 64  # the VQ codebook width
RELEASED_HEADS, RELEASED_HEAD_WIDTH = 3, 32  # width 96: wider than the semantic embeddings
LOGIT_GAIN = 3.0  # the tiny T2S' final layer-norm gain: ~5 bits of entropy per sampled token
_S2A_RELEASED_CONFIG = dict(depth=2, ctx_n=3 * STOKS_LEN, stoks_len=STOKS_LEN, stoks_codes=RELEASED_STOKS_CODES,
                            stoks_width=RELEASED_STOKS_WIDTH, spk_width=SPK_WIDTH, atoks_width=None,
                            n_head=RELEASED_HEADS, head_width=RELEASED_HEAD_WIDTH, ffn_mult=2, quantizers=4,
                            speaker_map={"1": 0})


def _released_spec(model, config: dict, tunables, drop=(), fp16=False) -> dict:
    """The checkpoint dict as whisperspeech's save_model writes it (config: the constructor's
    arguments), with the Tunables keys in `drop` missing as in files saved before they existed,
    and the floating-point tensors stored in fp16 where the file is."""
    sd = model.state_dict()
    if fp16:
        sd = {k: v.half() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in sd.items()}
    tunables = {k: v for k, v in dataclasses.asdict(tunables).items() if k not in drop}
    return dict(config=config, tunables=tunables, state_dict=sd)



def _t2s_released(tunables, end_scale: float, seed: int, depth: int = 2, stoks_width=None):
    """A TSARTransformer with 513 semantic codes; its token embeddings scaled down (unit-scale ones
    make it repeat its input token), its final layer norm's gain up (peaked logits: the tokens then
    depend on the model more than on the sampling noise), its end token's embedding scaled by
    end_scale, so that it ends a sequence now and then."""
    from whisperspeech import t2s_up_wds_mlang_enclm as t2s

    torch.manual_seed(seed)
    config = dict(depth=depth, n_head=RELEASED_HEADS, head_width=RELEASED_HEAD_WIDTH, ffn_mult=2, ttoks_len=TTOKS_LEN,
                  ttoks_codes=256, ttoks_width=None, stoks_len=STOKS_LEN, stoks_codes=RELEASED_STOKS_CODES,
                  stoks_width=stoks_width)
    model = t2s.TSARTransformer(**config, tunables=tunables)
    _redraw(model)
    emb = model.embeddings.embedding
    eot = model.stoks_codes + tunables.padding_token_offset
    with torch.no_grad():
        emb.main.weight.mul_(0.2)
        emb.special.weight.mul_(0.2)
        model.decoder.ln_post.weight.mul_(LOGIT_GAIN)
        model.decoder.ln_post.bias.mul_(LOGIT_GAIN)
        row = emb.main.weight[eot] if eot < emb.codes else emb.special.weight[eot - emb.codes]
        row.mul_(end_scale)
    return model, config


def build_t2s_v195(seed: int = 0) -> dict:
    """T2S as t2s-v1.95-small-8lang: frozen-VQ semantic embeddings (513 codes, 64 wide, projected
    to the width 96), padding_token_offset 0, a causal encoder, an fp16 state dict."""
    from whisperspeech import t2s_up_wds_mlang_enclm as t2s

    tunables = t2s.Tunables(padding_token_offset=0, causal_encoder=True)  # encoder_depth_ratio .25: 1 + 3 layers
    model, config = _t2s_released(tunables, end_scale=2.4, seed=seed, stoks_width=RELEASED_STOKS_WIDTH)
    return _released_spec(model, config, tunables, fp16=True)


def build_t2s_enpl(seed: int = 0) -> dict:
    """T2S as the older en+pl files: Tunables without padding_token_offset (upgrade(): -1, end token
    512) and causal_encoder (the default: True), a deep encoder (encoder_depth_ratio 0.75: 3 encoder
    layers + 1 decoder layer), 513 semantic codes."""
    from whisperspeech import t2s_up_wds_mlang_enclm as t2s

    tunables = t2s.Tunables(encoder_depth_ratio=0.75, padding_token_offset=-1)
    model, config = _t2s_released(tunables, end_scale=2.0, seed=seed + 10)
    return _released_spec(model, config, tunables, drop=("padding_token_offset", "causal_encoder"))


def build_s2a_v195(seed: int = 0) -> dict:
    """S2A as s2a-v1.95-medium-7lang: the conditioned class, semantic embeddings 64 wide (513 codes)
    projected to the width 96, speaker embeddings 192 wide, 4 quantizers, rope, a causal encoder
    (so hidden_to_emb exists), an fp16 state dict (with its `_extra_state`, as state_dict() gives)."""
    from whisperspeech import s2a_delar_mup_wds_mlang_cond as s2a

    torch.manual_seed(seed + 1)
    tunables = s2a.Tunables(rope=True, causal_encoder=True)  # encoder_depth_ratio .25: 1 + 3 layers
    model = s2a.SADelARTransformer(**_S2A_RELEASED_CONFIG, tunables=tunables)
    _redraw(model)
    assert model.hidden_to_emb is not None
    return _released_spec(model, dict(_S2A_RELEASED_CONFIG), tunables, fp16=True)


def build_s2a_enpl(seed: int = 0) -> dict:
    """The plain S2A as the older en+pl files: Tunables without causal_encoder / force_hidden_to_emb
    (upgrade(): False / True, so hidden_to_emb exists), a state dict without `_extra_state`;
    semantic embeddings 64 wide (513 codes), speaker embeddings 192 wide, rope, 4 quantizers."""
    from whisperspeech import s2a_delar_mup_wds_mlang as s2a

    torch.manual_seed(seed + 11)
    tunables = s2a.Tunables(rope=True, causal_encoder=False, force_hidden_to_emb=True)
    model = s2a.SADelARTransformer(**_S2A_RELEASED_CONFIG, tunables=tunables)
    _redraw(model)
    assert model.hidden_to_emb is not None
    spec = _released_spec(model, dict(_S2A_RELEASED_CONFIG), tunables, drop=("causal_encoder", "force_hidden_to_emb"))
    del spec["state_dict"]["_extra_state"]
    return spec


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
