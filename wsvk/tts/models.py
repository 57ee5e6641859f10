"""Loading WhisperSpeech's T2S/S2A models and the Vocos vocoder from their released formats.

References: a local path, or a Hugging Face reference (`owner/repo:file` for the
WhisperSpeech checkpoints, `owner/repo` for the Vocos folder). Nothing here goes through
whisperspeech.pipeline.Pipeline (it downloads at construction); the model classes are
built directly from the checkpoint dicts. Every problem a user can fix (a missing or
corrupt file, no network and nothing cached) raises InputError with a one-line message.
"""

from __future__ import annotations

import os
import re
import socket
import warnings
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

from ..errors import InputError, NotCachedError, describe

DEFAULT_T2S = "collabora/whisperspeech:t2s-v1.95-small-8lang.model"
DEFAULT_S2A = "collabora/whisperspeech:s2a-v1.95-medium-7lang.model"
DEFAULT_VOCODER = "charactr/vocos-encodec-24khz"
RANDOM_SIZES = ("tiny", "base", "small", "medium")  # whisperspeech presets; the released S2A is medium

# charactr/vocos-encodec-24khz/config.yaml, used to build a random-weight vocoder offline
RELEASED_VOCOS_CONFIG = {
    "feature_extractor": {
        "class_path": "vocos.feature_extractors.EncodecFeatures",
        "init_args": {"encodec_model": "encodec_24khz", "bandwidths": [1.5, 3.0, 6.0, 12.0],
                      "train_codebooks": False},
    },
    "backbone": {
        "class_path": "vocos.models.VocosBackbone",
        "init_args": {"input_channels": 128, "dim": 384, "intermediate_dim": 1152, "num_layers": 8,
                      "adanorm_num_embeddings": 4},
    },
    "head": {
        "class_path": "vocos.heads.ISTFTHead",
        "init_args": {"dim": 384, "n_fft": 1280, "hop_length": 320, "padding": "same"},
    },
}

# text/semantic-token windows of the released models (whisperspeech's datasets set them);
# the random models use them so the pipeline behaves like the real one
_RANDOM_T2S_DATA = SimpleNamespace(ttoks_len=550, stoks_len=750, stoks_codes=513)
_RANDOM_S2A_ARGS = dict(stoks_len=750, stoks_codes=513, ctx_n=2250, spk_width=192)


# ---------------------------------------------------------------- references

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _looks_local(ref: str) -> bool:
    return ref.startswith(("/", ".", "~", "\\")) or os.path.exists(os.path.expanduser(ref)) or (
        len(ref) > 1 and ref[1] == ":")  # C:\...


_PROBED: dict = {}


def _hub_unreachable() -> bool:
    """True when HF_HUB_OFFLINE is set or the Hub host does not answer within 3 s (probed once
    per process). hf_hub_download itself retries for ~25 s before failing without network."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = (url.hostname, url.port or 443)
    if host not in _PROBED:
        try:
            with socket.create_connection(host, timeout=3):
                _PROBED[host] = False
        except OSError:
            _PROBED[host] = True
    return _PROBED[host]


def hub_file(repo_id: str, filename: str, what: str, hint: str, whole_repo: bool = False) -> Path:
    """A file from the Hugging Face cache, downloaded when missing and the Hub is reachable."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, local_files_only=True))
    except Exception:
        pass
    if _hub_unreachable():
        raise NotCachedError(what, repo_id, filename, hint, whole_repo)
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"cannot download {what} {repo_id}:{filename} ({first}); {hint}") from None


def resolve_file(ref: str, what: str, hint: str) -> Path:
    """A checkpoint file from a local path or a `owner/repo:file` reference."""
    ref = str(ref)
    if not _looks_local(ref) and ":" in ref:
        repo_id, filename = ref.split(":", 1)
        if _REPO_ID.match(repo_id) and filename:
            return hub_file(repo_id, filename, what, hint)
    path = Path(ref).expanduser()
    if not path.exists():
        raise InputError(f"{what} file not found: {ref} ({hint})")
    if not path.is_file():
        raise InputError(f"{what} path is not a file: {ref}")
    return path


def resolve_folder(ref: str, files: tuple[str, ...], what: str, hint: str) -> Path:
    """A model folder holding `files`: a local folder, or a Hugging Face repo id."""
    ref = str(ref)
    path = Path(ref).expanduser()
    if _looks_local(ref) or not _REPO_ID.match(ref):
        if not path.is_dir():
            raise InputError(f"{what} folder not found: {ref} ({hint})")
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise InputError(f"{what} folder {ref} lacks {', '.join(missing)}")
        return path
    hint = f"there is no local folder {ref!r} either; {hint}"
    got = [hub_file(ref, f, what, hint, whole_repo=True) for f in files]
    return got[0].parent


# ---------------------------------------------------------------- checkpoints


def torch_load(path: Path, what: str):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{what} file {path} is not a readable PyTorch checkpoint ({describe(e)})") from None


def load_spec(path: Path, what: str) -> dict:
    """The released checkpoint dict: config, tunables, state_dict."""
    spec = torch_load(path, what)
    if not isinstance(spec, dict) or not {"config", "tunables", "state_dict"} <= set(spec):
        keys = ", ".join(map(str, list(spec)[:5])) if isinstance(spec, dict) else type(spec).__name__
        raise InputError(f"{what} file {path} is not a WhisperSpeech model (expected config, tunables, "
                         f"state_dict; found {keys})")
    return spec


def _build(cls, tunables_cls, spec: dict, what: str, path):
    try:
        model = cls(**spec["config"], tunables=tunables_cls(**tunables_cls.upgrade(spec["tunables"])))
        model.load_state_dict(spec["state_dict"])
    except Exception as e:
        raise InputError(f"{what} file {path} does not match its model class ({describe(e)})") from None
    return model


def for_cpu(model):
    """eval mode, merged projections and KV caches, float32 (never fp16 on the CPU), no compile."""
    import torch

    model.eval()
    model.optimize(max_batch_size=1, dtype=torch.float32, torch_compile=False)
    return model


def t2s_from_spec(spec: dict, what: str = "T2S model", path="<memory>"):
    from whisperspeech import t2s_up_wds_mlang_enclm as t2s

    return for_cpu(_build(t2s.TSARTransformer, t2s.Tunables, spec, what, path))


def s2a_from_spec(spec: dict, what: str = "S2A model", path="<memory>"):
    sd = spec["state_dict"]
    if any(k.startswith("cond_embeddings.") for k in sd):  # the conditioned variant (v1.95 models)
        from whisperspeech import s2a_delar_mup_wds_mlang_cond as s2a
    else:
        from whisperspeech import s2a_delar_mup_wds_mlang as s2a
    if "_extra_state" not in sd and "speaker_map" in spec["config"]:  # as SADelARTransformer.load_model
        sd = dict(sd, _extra_state={"speaker_map": spec["config"]["speaker_map"]})
        spec = dict(spec, state_dict=sd)
    return for_cpu(_build(s2a.SADelARTransformer, s2a.Tunables, spec, what, path))


def load_t2s(ref: str | None = None):
    ref = ref or DEFAULT_T2S
    path = resolve_file(ref, "T2S model", "pass --t2s PATH, or --random-weights tiny for a noise test")
    return t2s_from_spec(load_spec(path, "T2S model"), path=path)


def load_s2a(ref: str | None = None):
    ref = ref or DEFAULT_S2A
    path = resolve_file(ref, "S2A model", "pass --s2a PATH, or --random-weights tiny for a noise test")
    return s2a_from_spec(load_spec(path, "S2A model"), path=path)


# ---------------------------------------------------------------- vocos


def _encodec_features_class():
    import torch
    from encodec import EncodecModel
    from torch import nn
    from vocos.feature_extractors import EncodecFeatures

    class OfflineEncodecFeatures(EncodecFeatures):
        """EncodecFeatures built from a random EnCodec: vocos' own constructor downloads the
        EnCodec weights, but decoding tokens needs only `codebook_weights`, which the Vocos
        checkpoint carries."""

        def __init__(self, encodec_model: str = "encodec_24khz", bandwidths=(1.5, 3.0, 6.0, 12.0),
                     train_codebooks: bool = False):
            nn.Module.__init__(self)
            factories = {"encodec_24khz": EncodecModel.encodec_model_24khz,
                         "encodec_48khz": EncodecModel.encodec_model_48khz}
            if encodec_model not in factories:
                raise ValueError(f"unsupported encodec_model {encodec_model!r}")
            with warnings.catch_warnings():  # encodec uses the deprecated torch weight_norm
                warnings.simplefilter("ignore", FutureWarning)
                self.encodec = factories[encodec_model](pretrained=False)
            for p in self.encodec.parameters():
                p.requires_grad = False
            self.num_q = self.encodec.quantizer.get_num_quantizers_for_bandwidth(
                self.encodec.frame_rate, bandwidth=max(bandwidths))
            # [num_q * bins, dim]: the shape the checkpoint's codebook_weights has
            weights = torch.cat([vq.codebook for vq in self.encodec.quantizer.vq.layers[: self.num_q]])
            self.codebook_weights = nn.Parameter(weights, requires_grad=train_codebooks)
            self.bandwidths = list(bandwidths)

    return OfflineEncodecFeatures


def build_vocos(config: dict):
    """A Vocos model from its config.yaml dict, without downloading anything (weights random)."""
    from vocos import Vocos
    from vocos.pretrained import instantiate_class

    parts = {}
    for name in ("feature_extractor", "backbone", "head"):
        entry = config.get(name) if isinstance(config, dict) else None
        if not isinstance(entry, dict) or not str(entry.get("class_path", "")).startswith("vocos."):
            raise InputError(f"the Vocos config has no valid '{name}' entry (a vocos.* class_path)")
        if entry["class_path"].endswith(".EncodecFeatures"):
            parts[name] = _encodec_features_class()(**entry.get("init_args", {}))
        else:
            parts[name] = instantiate_class(args=(), init=entry)
    return Vocos(parts["feature_extractor"], parts["backbone"], parts["head"])


def load_vocos(ref: str | None = None):
    import yaml

    ref = ref or DEFAULT_VOCODER
    hint = "pass --vocoder FOLDER (with config.yaml and pytorch_model.bin), or --random-weights tiny"
    folder = resolve_folder(ref, ("config.yaml", "pytorch_model.bin"), "vocoder", hint)
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text())
    except Exception as e:
        raise InputError(f"vocoder config {folder / 'config.yaml'} is not valid YAML ({describe(e)})") from None
    try:
        model = build_vocos(config)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"vocoder config {folder / 'config.yaml'} does not build a Vocos ({describe(e)})") from None
    state = torch_load(folder / "pytorch_model.bin", "vocoder")
    if not isinstance(state, dict):
        raise InputError(f"vocoder file {folder / 'pytorch_model.bin'} is not a state dict")
    for k, v in model.state_dict().items():  # the released file has no EnCodec weights: keep ours
        if k.startswith("feature_extractor.encodec."):
            state.setdefault(k, v)
    try:
        model.load_state_dict(state)
    except Exception as e:
        raise InputError(f"vocoder weights {folder / 'pytorch_model.bin'} do not match its config ({describe(e)})") from None
    return model.eval().float()


# ---------------------------------------------------------------- random weights


def _check_size(size: str) -> str:
    if size not in RANDOM_SIZES:
        raise InputError(f"--random-weights must be one of {', '.join(RANDOM_SIZES)}, not {size!r}")
    return size


def random_t2s(size: str, seed: int = 0):
    """A random-weight T2S from whisperspeech's own size presets (its `_make_model` table)."""
    import torch
    from whisperspeech import t2s_up_wds_mlang_enclm as t2s

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = t2s._make_model(_check_size(size), t2s.Tunables(), _RANDOM_T2S_DATA)
    return for_cpu(model)


def random_s2a(size: str, seed: int = 0):
    import torch
    from whisperspeech import s2a_delar_mup_wds_mlang as s2a

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        model = s2a._make_model(_check_size(size), 4, s2a.Tunables(), **_RANDOM_S2A_ARGS)
    return for_cpu(model)


def random_vocos(seed: int = 0, config: dict | None = None):
    """Vocos with the released config and random weights (a random codebook too, so the
    noise it makes still depends on the tokens)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        model = build_vocos(config or RELEASED_VOCOS_CONFIG)
        with torch.no_grad():
            model.feature_extractor.codebook_weights.normal_()
    return model.eval().float()
