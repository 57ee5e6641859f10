"""WGSL sources: shaders/NAME.wgsl, with `// #include LIB` lines expanded from shaders/lib/."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from ..errors import WsvkError

_INCLUDE = re.compile(r"^// #include (\w+)[ \t]*$", re.M)
SUBGROUP_TAG = "// [sg]"  # lines that use subgroup builtins (stripped where the adapter lacks them)


def shader_dir() -> Path:
    """shaders/ in a source checkout, wsvk/shaders inside an installed wheel."""
    pkg = Path(__file__).resolve().parents[1]
    for cand in (pkg / "shaders", pkg.parent / "shaders"):
        if cand.is_dir():
            return cand
    raise WsvkError(f"cannot find the WGSL shaders next to {pkg} (broken install?)")


@lru_cache(maxsize=None)
def shader_source(name: str) -> str:
    """shaders/NAME.wgsl with each `// #include LIB` line replaced by shaders/lib/LIB.wgsl
    (WGSL has no includes; helpers shared by several kernel files live there)."""
    path = shader_dir() / f"{name}.wgsl"
    if not path.is_file():
        raise WsvkError(f"no shader {path}")
    return _INCLUDE.sub(lambda m: shader_source(f"lib/{m.group(1)}"), path.read_text())


def module_code(name: str, aliases: dict[str, str], subgroups: bool) -> str:
    """The code of one pipeline's module: `enable f16;` when an alias needs it, the type aliases
    (`alias NAME = TYPE;`), then the source; `// [sg]` lines dropped without subgroups (naga
    validates the whole module, so even unused subgroup code must go)."""
    header = ["enable f16;"] if "f16" in aliases.values() else []
    header += [f"alias {k} = {v};" for k, v in aliases.items()]
    lines = shader_source(name).splitlines()
    if not subgroups:
        lines = [ln for ln in lines if not ln.rstrip().endswith(SUBGROUP_TAG)]
    return "\n".join(header + lines)
