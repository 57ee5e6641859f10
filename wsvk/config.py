"""Every WSVK_* setting, read and validated in one place (a bad value raises ConfigError naming
the valid ones). Read at the moment of use, so tests and long-lived processes see changes."""

from __future__ import annotations

import os

from .errors import ConfigError

BACKENDS = ("auto", "wgpu", "cpu")
LIMITS = ("adapter", "default")
PRECISIONS = ("auto", "f32", "f16", "q8")
TUNES = ("auto", "off", "force")


def _choice(name: str, valid: tuple[str, ...], default: str) -> str:
    raw = os.environ.get(name, default)
    value = raw.strip().lower() or default
    if value not in valid:
        raise ConfigError(f"{name}={raw!r} is not valid; use one of: {', '.join(valid)}")
    return value


def _count(name: str, default: int | None, least: int = 0) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < least:
        raise ConfigError(f"{name}={raw!r} is not valid; use an integer >= {least}")
    return int(raw)


def backend() -> str:
    """WSVK_BACKEND: auto (default), wgpu or cpu."""
    return _choice("WSVK_BACKEND", BACKENDS, "auto")


def adapter() -> str:
    """WSVK_ADAPTER: an index from `python -m wsvk info`, part of a name, a backend, or '' (the best one)."""
    return os.environ.get("WSVK_ADAPTER", "").strip()


def limits() -> str:
    """WSVK_LIMITS: adapter (its own limits and optional features, default) or default (WebGPU's)."""
    return _choice("WSVK_LIMITS", LIMITS, "adapter")


def precision() -> str:
    """WSVK_PRECISION: auto (q8 on integrated GPUs, else f16 where the adapter has shader-f16, else
    f32), f32, f16 or q8 (8-bit decoder weights; see Runtime.precision)."""
    return _choice("WSVK_PRECISION", PRECISIONS, "auto")


def tune() -> str:
    """WSVK_TUNE: auto (default: time the decode step's candidates once per adapter, model shapes,
    precision and slots, and cache the choice), off (the default plan, nothing timed) or force
    (time them again, replacing the cached choice)."""
    return _choice("WSVK_TUNE", TUNES, "auto")


def plan() -> str | None:
    """WSVK_PLAN: run this decode-step candidate (a name from `python -m wsvk tune`; NAME for every
    decoder or t2s:NAME,s2a:NAME), timing nothing; checked against a decoder's candidates when it
    is built (resident/tuner.py). Unset: the tuner chooses."""
    return os.environ.get("WSVK_PLAN", "").strip() or None


def cache_dir() -> str:
    """WSVK_CACHE_DIR, else $XDG_CACHE_HOME/wsvk, else ~/.cache/wsvk: where tuned choices are kept."""
    explicit = os.environ.get("WSVK_CACHE_DIR", "").strip()
    if explicit:  # expanded here: a service manager or a container sets it without a shell
        return os.path.abspath(os.path.expanduser(explicit))
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(base), "wsvk")


def min_work() -> int:
    """WSVK_MIN_WORK: the op router keeps calls with fewer multiply-adds on the CPU (default 0)."""
    return _count("WSVK_MIN_WORK", 0)


def slots() -> int | None:
    """WSVK_SLOTS: sequences one resident decode step advances (default: by the adapter)."""
    return _count("WSVK_SLOTS", None, least=1)


def fault_after() -> int | None:
    """WSVK_FAULT_AFTER=N: the (N+1)-th submit fails as a lost device would (fault-path tests)."""
    return _count("WSVK_FAULT_AFTER", None)


def check_all() -> None:
    """Read every setting: a bad value is a ConfigError at start-up, not when (or whether) a
    code path first reads it (the CPU backend never reads WSVK_PRECISION, say). WSVK_ADAPTER is
    checked against the adapters themselves, when the wgpu backend picks one."""
    backend(), limits(), precision(), tune(), min_work(), slots(), fault_after()


def summary() -> dict[str, str | None]:
    """The raw values of the settings `python -m wsvk info` shows."""
    return {k: os.environ.get(k) for k in ("WSVK_BACKEND", "WSVK_ADAPTER", "WSVK_LIMITS", "WSVK_PRECISION", "WSVK_SLOTS",
                                               "WSVK_TUNE", "WSVK_PLAN")}
