"""`python -m wsvk deps`: import every runtime dependency once and say which one does not load.

A dependency that installs but fails to import (torchaudio 2.11.1 beside torch 2.11.0 raised
`OSError: Could not load this library: libtorchaudio.so`) otherwise surfaces deep inside a
synthesis. Here it is one line naming the package, its version and the version of the package it
is built against. The test command runs this before pytest.
"""

from __future__ import annotations

import importlib
import sys
from importlib import metadata

from .errors import describe

# (module, distribution, the distribution it must match or None), in import order: a package is
# imported after what it is built against, so a failure names the right pair
DEPENDENCIES = (
    ("numpy", "numpy", None),
    ("torch", "torch", None),
    ("torchaudio", "torchaudio", "torch"),
    ("soundfile", "soundfile", None),
    ("wgpu", "wgpu", None),
    ("speechbrain", "speechbrain", "torch"),
    ("vocos", "vocos", "torch"),
    ("whisperspeech", "whisperspeech", "torch"),
)


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def check(deps=DEPENDENCIES) -> list[str]:
    """[one line on the first dependency that does not import] or []. Later ones are not tried:
    they would fail through the first (speechbrain and vocos import torchaudio)."""
    import logging
    import warnings

    problems = []
    logging.getLogger("speechbrain").setLevel(logging.ERROR)  # it logs about torchvision on import
    for module, dist, pair in deps:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(module)
        except Exception as e:  # an import can fail with OSError, RuntimeError, AttributeError ...
            beside = f" beside {pair} {version(pair)}" if pair else ""
            problems.append(f"{dist} {version(dist)} does not load{beside} ({describe(e)}); "
                            "install the versions requirements.lock names")
            break
    return problems


def main() -> int:
    problems = check()
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if not problems:
        print("dependencies: " + ", ".join(f"{d} {version(d)}" for _, d, _ in DEPENDENCIES))
    return 1 if problems else 0


def need_extra(extra: str, *modules: str) -> None:
    """An InputError naming the pip extra to install when one of `modules` is not installed (the
    server's FastAPI and uvicorn, the scale-out's Ray), instead of a traceback deep inside."""
    from .errors import InputError

    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise  # it is there, and something it needs is not: that error says more
            raise InputError(f"{module} is not installed: this command needs the `{extra}` extra "
                             f"(pip install 'wsvk[{extra}]')") from None
