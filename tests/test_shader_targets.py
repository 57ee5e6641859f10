"""Every pipeline's WGSL as Metal, D3D12 and GL would get it: naga's MSL, HLSL and GLSL writers.

wgpu translates WGSL with naga: to SPIR-V on Vulkan (what lavapipe runs), to MSL on Metal, HLSL on
D3D12 and GLSL on GL. Only the SPIR-V path runs here, so this test writes each module the runtime
built (as built, and its plain variant: f32, no subgroups, as on adapters without those features
and under FXC or GL) with naga compiled to WebAssembly (tests/naga, the npm package naga-wasm;
scripts/ensure_naga.sh installs it from its lock). Overrides are resolved first, as wgpu does when
it makes a pipeline. naga-wasm is naga 30, one release after the naga inside wgpu-native 29: its
validator checks each module again.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REQUIRE
from wsvk import selftest
from wsvk.gpu.shaders import module_code, shader_dir

NAGA = Path(__file__).parent / "naga"
OVERRIDE = re.compile(r"^([ \t]*)override[ \t]+(\w+)[ \t]*:[ \t]*(\w+)[ \t]*(?:=[ \t]*([^;]+))?;", re.M)
AS_BUILT = ("msl", "hlsl 6_2")                 # Metal; D3D12 with DXC (f16 and subgroups need SM 6.x)
PLAIN = ("msl", "hlsl 5_1", "glsl 310 es")     # ... and FXC's SM 5.1 and GLES 3.1: no f16, no subgroups


@pytest.fixture(scope="module")
def naga():
    """The translator script, or a skip (a failure under WSVK_REQUIRE_ADAPTER, as in CI)."""
    missing = [what for what, ok in (("node", shutil.which("node")),
                                     ("tests/naga/node_modules", (NAGA / "node_modules" / "naga-wasm").is_dir()))
               if not ok]
    if missing:
        msg = f"{' and '.join(missing)} missing: run scripts/ensure_naga.sh"
        if REQUIRE:
            pytest.fail(msg)
        pytest.skip(msg)
    return NAGA / "translate.mjs"


def translate(script: Path, modules: list[dict]) -> list[dict]:
    proc = subprocess.run(["node", str(script)], input=json.dumps(modules), capture_output=True, text=True,
                          timeout=600, cwd=NAGA)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def literal(value, typ: str) -> str:
    if typ == "bool":
        return "true" if value else "false"
    if typ in ("u32", "i32"):
        assert float(value) == int(value), (value, typ)
        return f"{int(value)}{typ[0]}"
    return f"{float(value)!r}f"


def specialized(code: str, constants: dict) -> str:
    """`override` declarations as `const`s with the pipeline's values (naga's MSL, HLSL and GLSL
    writers take a module whose overrides are resolved, as wgpu resolves them for a pipeline)."""
    def const(m):
        indent, name, typ, default = m.groups()
        assert name in constants or default is not None, f"override {name} has no value"
        return f"{indent}const {name}: {typ} = {literal(constants[name], typ) if name in constants else default};"

    out = OVERRIDE.sub(const, code)
    left = [ln for ln in out.splitlines() if re.match(r"\s*override\b", ln)]
    assert not left, f"overrides this test cannot resolve: {left}"
    return out


def modules_of(built) -> list[dict]:
    """One entry per distinct module: as built, then its plain variant (f32, no subgroups)."""
    mods: dict[tuple, dict] = {}
    for shader, entry, constants, aliases, sg in built:
        as_built = AS_BUILT if sg or "f16" in aliases.values() else AS_BUILT + PLAIN
        plain_aliases = {k: v.replace("f16", "f32") for k, v in aliases.items()}
        plain_consts = {**constants, **({"SUBGROUPS": False} if "SUBGROUPS" in constants else {})}
        for code, targets in ((specialized(module_code(shader, aliases, sg), constants), as_built),
                              (specialized(module_code(shader, plain_aliases, False), plain_consts), PLAIN)):
            mod = mods.setdefault((code, entry), {"name": f"{shader}:{entry} {constants} {aliases} sg={sg}",
                                                  "code": code, "entry": entry, "targets": []})
            mod["targets"] += [t for t in targets if t not in mod["targets"]]
    return list(mods.values())


def test_every_pipeline_writes_as_msl_hlsl_and_glsl(rt, naga):
    assert selftest.run(out=lambda *a: None)  # every kernel file and the resident modules, once
    built = rt.built_pipelines()              # and all that earlier tests of this session made
    assert {s for s, *_ in built} >= {p.stem for p in shader_dir().glob("*.wgsl")}
    mods = modules_of(built)
    results = translate(naga, mods)
    failed = [r for r in results if r["error"]]
    assert not failed, f"{len(failed)} of {len(results)} failed; first:\n" + "\n".join(
        f"{r['target']}: {r['name']}\n{r['error'][:1500]}" for r in failed[:3])
    assert len(results) == sum(len(m["targets"]) for m in mods)  # every target of every module written


def test_the_translation_fails_where_naga_does(naga):
    """The check can fail: an override divisor of 0 (an error once resolved, which WGSL asks for;
    matmul.wgsl's GROUP had one) and f16 on GLSL (wgpu's GL backend has no shader-f16)."""
    div = """
override D: u32 = 1u;
@group(0) @binding(0) var<storage, read_write> a: array<u32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) { a[g.x] = g.x / D; }
"""
    half = "enable f16;\n" + div.replace("a[g.x] = g.x / D;", "a[g.x] = u32(f16(g.x));")
    mods = [{"name": "ok", "code": specialized(div, {"D": 3}), "entry": "main", "targets": list(PLAIN)},
            {"name": "zero", "code": specialized(div, {"D": 0}), "entry": "main", "targets": ["msl"]},
            {"name": "half", "code": specialized(half, {}), "entry": "main", "targets": ["msl", "glsl 310 es"]}]
    got = {(r["name"], r["target"]): r["error"] for r in translate(naga, mods)}
    assert got.keys() == {("ok", t) for t in PLAIN} | {("zero", "validate"), ("half", "msl"), ("half", "glsl 310 es")}
    assert not any(got[("ok", t)] for t in PLAIN) and not got[("half", "msl")]
    assert "Division by zero" in got[("zero", "validate")]
    assert "width" in got[("half", "glsl 310 es")]


def test_overrides_resolve_to_the_pipeline_values():
    code = specialized(module_code("matmul", {"T": "f32", "WT": "f32", "X": "f32"}, False),
                       {"GROUP": 4, "GELU": True, "G_CH": 64.0})
    assert "const GROUP: u32 = 4u;" in code and "const GELU: bool = true;" in code
    assert "const G_CH: u32 = 64u;" in code and "const XS: u32 = 4u;" in code  # a default kept
    assert "const H: u32 = select(1u, 2u, BIG);" in code                        # an expression kept
    with pytest.raises(AssertionError, match="no value"):
        specialized("override N: u32;\n", {})
