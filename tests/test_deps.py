"""The set-up installs exactly the lock, `python -m wsvk deps` names a package that does not load,
and the wheel resolves to a working set in a fresh virtual environment."""

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"


def locked() -> dict[str, str]:
    """{distribution: version} of the lock's entries that apply to this interpreter and platform."""
    out = {}
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][\w.-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$", line)
        if m and (m.group(3) is None or Marker(m.group(3)).evaluate()):
            out[m.group(1).lower()] = m.group(2)
    return out


def run(*args, env=None, timeout=300, cwd=None):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, "XDG_RUNTIME_DIR": "/tmp", **(env or {})})


def test_the_environment_holds_exactly_the_lock():
    pins = locked()
    assert {"torch", "torchaudio", "wgpu", "whisperspeech", "vocos", "fastapi", "ray"} <= set(pins)
    wrong = {name: (want, metadata.version(name)) for name, want in pins.items()
             if Version(metadata.version(name)).public != Version(want).public}
    assert not wrong, f"installed versions differ from requirements.lock: {wrong}"


def test_pyproject_pins_torch_and_torchaudio_as_the_locked_pair():
    import tomllib

    deps = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    pins = locked()
    for name in ("torch", "torchaudio"):
        spec = str(next(r.specifier for r in deps if r.name == name))
        assert spec == f"=={pins[name]}", f"pyproject.toml pins {name}{spec}, the lock {pins[name]}"


def test_deps_reports_every_package_loaded():
    r = run(sys.executable, "-m", "wsvk", "deps")
    assert r.returncode == 0, r.stderr
    assert "torchaudio " + metadata.version("torchaudio") in r.stdout and r.stderr == ""


def test_deps_names_the_pair_that_does_not_load(tmp_path):
    """torchaudio that cannot load its library beside this torch, as torchaudio 2.11.1 did."""
    fake = tmp_path / "torchaudio"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "raise OSError('Could not load this library: /x/torchaudio/lib/libtorchaudio.so')\n")
    r = run(sys.executable, "-m", "wsvk", "deps", env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    want = (f"error: torchaudio {metadata.version('torchaudio')} does not load beside torch "
            f"{metadata.version('torch')} (OSError: Could not load this library")
    assert lines[0].startswith(want), lines[0]


@pytest.mark.parametrize("module,command", [("fastapi", ["serve"]), ("uvicorn", ["serve"]),
                                            ("ray", ["batch", "ROWS", "--out", "OUT", "--ray"])])
def test_a_missing_extra_is_one_line_naming_it(tmp_path, module, command):
    """serve without FastAPI or uvicorn, batch --ray without Ray: one error line with the pip extra."""
    (tmp_path / "sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None\n")  # not installed
    (tmp_path / "rows.jsonl").write_text('{"id": "a", "text": "Hi."}\n')
    command = [{"ROWS": str(tmp_path / "rows.jsonl"), "OUT": str(tmp_path / "out")}.get(a, a) for a in command]
    r = run(sys.executable, "-m", "wsvk", *command, env={"PYTHONPATH": str(tmp_path)})
    extra = "ray" if module == "ray" else "server"
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {module} is not installed: this command needs the `{extra}` extra (pip install 'wsvk[{extra}]')"], \
        r.stderr


@pytest.mark.slow
def test_the_wheel_resolves_to_a_working_set_in_a_fresh_venv(tmp_path):
    """pip wheel, then plain `pip install wsvk-*.whl` into a new venv: pip resolves the
    dependencies itself (from PyPI; its cache saves the downloads), the pair it picks is the
    locked one, and `python -m wsvk deps` and `info` run there."""
    r = run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT), timeout=600)
    assert r.returncode == 0, r.stderr
    wheel = next(tmp_path.glob("wsvk-*.whl"))
    venv = tmp_path / "venv"
    try:
        r = run(sys.executable, "-m", "venv", str(venv))
        assert r.returncode == 0, r.stderr
        py = str(venv / "bin" / "python")
        r = run(py, "-m", "pip", "install", "-q", "--progress-bar", "off", str(wheel), timeout=1800)
        assert r.returncode == 0, r.stderr[-3000:]
        versions = run(py, "-c", "from importlib.metadata import version as v; print(v('torch'), v('torchaudio'))")
        pins = locked()
        assert versions.stdout.split() == [pins["torch"], pins["torchaudio"]], versions.stdout + versions.stderr
        for cmd in (("deps",), ("info",)):
            r = run(py, "-m", "wsvk", *cmd, env={"PYTHONSAFEPATH": "1"}, cwd=tmp_path)
            assert r.returncode == 0, r.stdout + r.stderr
        assert "adapters (" in r.stdout
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # ~5 GB: never left behind for pytest's tmp retention
