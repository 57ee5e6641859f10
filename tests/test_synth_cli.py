"""synth.py as a user runs it: a subprocess per case, exit codes, one-line errors, no stray files."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models as tm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SYNTH = ROOT / "synth.py"


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-models")
    paths = tm.write_all(root)
    paths["voice"] = tm.write_voice(root / "voice.wav", rate=22050)
    corrupt = root / "corrupt.model"
    corrupt.write_bytes(b"\x80\x02not really a pickle")
    paths["corrupt"] = corrupt
    return paths


def synth_env(backend="cpu", env=None) -> dict:
    """The environment synth.py runs in: offline, this checkout, the given backend and overrides."""
    return {**os.environ, "WSVK_BACKEND": backend, "XDG_RUNTIME_DIR": os.environ.get("XDG_RUNTIME_DIR", "/tmp"),
            "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}


def synth(*args, stdin=None, backend="cpu", env=None, timeout=300, text=True):
    """Run synth.py to its end; text=False keeps stdout as bytes (`-o -`)."""
    return subprocess.run([sys.executable, str(SYNTH), *map(str, args)], input=stdin, capture_output=True,
                          text=text, env=synth_env(backend, env), cwd=ROOT, timeout=timeout)


def model_args(tiny, **skip):
    out = []
    for key, flag in (("t2s", "--t2s"), ("s2a", "--s2a"), ("vocoder", "--vocoder")):
        if key not in skip:
            out += [flag, tiny[key]]
    return out


def assert_bad_input(res, words, folder):
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert words in lines[0], lines[0]
    assert "Traceback" not in res.stderr
    assert list(Path(folder).iterdir()) == [], "a failed run left files behind"


def test_writes_a_24khz_mono_wav_and_a_summary(tiny, tmp_path):
    out = tmp_path / "out.wav"
    res = synth("-", "-o", out, *model_args(tiny), "--speaker", tiny["voice"], "--speaker-model",
                tiny["speaker_model"], "--seed", "4", "-v", stdin="Hello from the tiny models. Twice over, too.")
    assert res.returncode == 0, res.stderr
    audio, rate = sf.read(out)
    assert rate == 24000 and audio.ndim == 1 and audio.size > 0
    for words in ("backend   cpu", "adapter", "seconds   speaker", "t2s", "s2a", "vocos", "real-time factor",
                  "x real time)", "router, t2s", "linear"):
        assert words in res.stdout, (words, res.stdout)
    assert "t2s" in res.stderr and "Traceback" not in res.stderr  # progress: one line per stage (no TTY)
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]  # the temporary file was renamed


def test_a_gpu_failure_is_in_the_summary(tiny, tmp_path, rt):
    """WSVK_FAULT_AFTER: the run ends on the CPU, and both the warning and the summary say so."""
    out = tmp_path / "out.wav"
    res = synth("Hi there.", "-o", out, *model_args(tiny), backend="wgpu", env={"WSVK_FAULT_AFTER": "20"})
    assert res.returncode == 0, res.stderr
    assert "warning: GPU failure, finished on the CPU" in res.stderr
    assert "backend   wgpu (finished on the CPU after a GPU failure)" in res.stdout, res.stdout
    assert sf.read(out)[0].size > 0
    streamed = synth("Hi there.", "-o", "-", *model_args(tiny), backend="wgpu", env={"WSVK_FAULT_AFTER": "20"},
                     text=False)
    err = streamed.stderr.decode()
    assert streamed.returncode == 0 and streamed.stdout[:4] == b"RIFF", err
    assert "warning: GPU failure, finished on the CPU" in err and "x real time)" in err, err


def test_text_file_and_same_seed_same_audio(tiny, tmp_path):
    text = tmp_path / "in.txt"
    text.write_text("Zażółć gęślą jaźń.", encoding="utf-8")
    outs = []
    for name in ("a.wav", "b.wav"):
        res = synth("--text-file", text, "--lang", "pl", "-o", tmp_path / name, *model_args(tiny), "--seed", "9")
        assert res.returncode == 0, res.stderr
        outs.append(sf.read(tmp_path / name)[0])
    assert np.array_equal(outs[0], outs[1])


CASES = [
    # (name, extra args, stdin, env, words in the error line)
    ("empty text", ["", "-o", "{out}"], None, {}, "the text is empty"),
    ("blank stdin", ["-", "-o", "{out}"], " \n\t", {}, "the text is empty"),
    ("unknown language", ["hi", "-o", "{out}", "--lang", "xx"], None, {}, "unknown language 'xx'; valid: en, zh"),
    ("cps zero", ["hi", "-o", "{out}", "--cps", "0"], None, {}, "--cps must be a positive number"),
    ("cps negative", ["hi", "-o", "{out}", "--cps", "-3"], None, {}, "--cps must be a positive number"),
    ("missing t2s", ["hi", "-o", "{out}", "--t2s", "{dir}/none.model"], None, {}, "T2S model file not found"),
    ("corrupt s2a", ["hi", "-o", "{out}", "--t2s", "{t2s}", "--s2a", "{corrupt}", "--vocoder", "{vocoder}"],
     None, {}, "not a readable PyTorch checkpoint"),
    ("missing vocoder", ["hi", "-o", "{out}", "--vocoder", "{dir}/no-vocos"], None, {}, "vocoder folder not found"),
    ("missing speaker", ["hi", "-o", "{out}", "--speaker", "{dir}/none.wav"], None, {},
     "speaker audio file not found"),
    ("non-audio speaker", ["hi", "-o", "{out}", "--speaker", "{t2s}"], None, {}, "not a readable audio file"),
    ("unwritable output", ["hi", "-o", "{dir}/no/such/folder/x.wav"], None, {}, "output folder does not exist"),
    ("unknown format", ["hi", "-o", "{dir}/x.aiff"], None, {}, "use one of .flac, .mp3, .ogg, .opus, .wav"),
    ("bad backend", ["hi", "-o", "{out}"], None, {"WSVK_BACKEND": "cuda"}, "WSVK_BACKEND='cuda' is not valid"),
    ("bad precision on the cpu", ["hi", "-o", "{out}"], None, {"WSVK_BACKEND": "cpu", "WSVK_PRECISION": "bf16"},
     "WSVK_PRECISION='bf16' is not valid"),
    ("zero slots", ["hi", "-o", "{out}"], None, {"WSVK_SLOTS": "0"}, "WSVK_SLOTS='0' is not valid; use an integer >= 1"),
    ("negative seed", ["hi", "-o", "{out}", "--seed", "-1"], None, {}, "seed must be an integer from 0 to 4294967295, got -1"),
    ("no output", ["hi"], None, {}, "-o/--output"),
    ("bad size", ["hi", "-o", "{out}", "--random-weights", "huge"], None, {}, "invalid choice"),
    ("missing text file", ["--text-file", "{dir}/none.txt", "-o", "{out}"], None, {}, "text file not found"),
]


@pytest.mark.parametrize("name,args,stdin,env,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(tiny, tmp_path, name, args, stdin, env, words):
    work = tmp_path / "work"
    work.mkdir()
    fill = dict(out=work / "out.wav", dir=work, t2s=tiny["t2s"], corrupt=tiny["corrupt"], vocoder=tiny["vocoder"])
    res = synth(*[a.format(**fill) for a in args], stdin=stdin, env=env)
    assert_bad_input(res, words, work)


def test_unwritable_output_is_caught_before_synthesis(tiny, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):  # root writes anywhere: use a folder nobody can create files in
        if not os.path.isdir("/proc/self"):
            pytest.skip("running as root and no /proc to test with")
        ro = Path("/proc/self")
    try:
        res = synth("hi", "-o", ro / "x.wav", *model_args(tiny))
        assert res.returncode == 2, res.stderr
        assert res.stderr.startswith("error: cannot create a file in") and len(res.stderr.splitlines()) == 1, res.stderr
    finally:
        (tmp_path / "ro").chmod(0o700)


def test_output_that_is_a_folder(tiny, tmp_path):
    res = synth("hi", "-o", tmp_path, *model_args(tiny))
    assert res.returncode == 2 and res.stderr.startswith("error: output") and "is a directory" in res.stderr


def test_runtime_failures_exit_1_without_a_file(tiny, tmp_path, monkeypatch, capsys):
    """GpuError and MemoryError in the middle of a run: exit 1, a clear line, nothing written."""
    from wsvk.errors import GpuError
    from wsvk.tts import cli, pipeline

    monkeypatch.setenv("WSVK_BACKEND", "cpu")
    for exc, words in ((GpuError("device lost"), "GPU failure: device lost"), (MemoryError(), "out of memory")):
        def boom(*a, _exc=exc, **k):
            raise _exc

        monkeypatch.setattr(pipeline.Pipeline, "generate", boom)
        code = cli.main(["hi", "-o", str(tmp_path / "x.wav"), *map(str, model_args(tiny))])
        err = capsys.readouterr().err
        assert code == 1 and f"error: {words}" in err, err
        assert not any(p.suffix == ".wav" for p in tmp_path.iterdir())


def test_the_wsvk_command_without_xdg_runtime_dir(tiny, tmp_path):
    """The installed `wsvk synth`, as on a headless server (no XDG_RUNTIME_DIR: Mesa's drivers then
    printed "error: XDG_RUNTIME_DIR is invalid" per adapter listing): no `error:` line on success,
    and the text's chunk count and length up front."""
    env = synth_env("auto")  # lists the adapters (then runs on CPU torch: auto skips lavapipe)
    del env["XDG_RUNTIME_DIR"]
    wsvk = Path(sys.executable).with_name("wsvk")  # the console script the set-up installs
    res = subprocess.run([str(wsvk), "synth", "Hello there. " * 3, "-o", str(tmp_path / "x.wav"), *model_args(tiny)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "error" not in res.stderr.lower(), res.stderr
    assert re.search(r"^text: 39 characters in \d+ chunks?, about 2.5 s of speech$", res.stderr, re.M), res.stderr
    assert sf.info(tmp_path / "x.wav").frames > 0
    helped = subprocess.run([str(wsvk), "synth", "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: wsvk synth")


def test_progress_without_a_terminal_has_a_plain_line_with_an_eta():
    """Not a terminal (a log): a plain line every `every` seconds with steps, time and ETA; T2S's
    steps, only bounded by the model, are estimated from the speech the text makes."""
    import io

    from wsvk.tts.cli import ConsoleProgress

    out = io.StringIO()
    p = ConsoleProgress(out, every=0.0)
    p.speech_s = 4.0  # 100 semantic tokens at 25 a second
    p.stage_start("t2s", 0, 2, 1496)
    p.step("t2s")
    p.step("t2s")
    p.stage_end("t2s", 0, 2, 1.5)
    p.stage_start("s2a", 0, 2, 300)
    p.step("s2a")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("t2s (2 chunks): 0/~100 steps, 0.0 s, ETA ?"), lines
    assert lines[2].startswith("t2s (2 chunks): 2/~100 steps") and "ETA" in lines[2], lines
    assert lines[3] == "t2s (2 chunks): 1.50 s, 2 steps"
    assert lines[-1].startswith("s2a (2 chunks): 1/300 steps"), lines  # S2A's steps are known: no "~"


def test_durations_read_as_a_person_reads_them():
    from wsvk.tts.cli import duration

    assert [duration(s) for s in (0.4, 42, 89, 95, 3000, 5400, 9000)] == ["0.4 s", "42 s", "89 s", "1.6 min", "50.0 min",
                                                                         "1.50 h", "2.50 h"]


def test_help_is_fast_and_needs_no_torch():
    res = subprocess.run([sys.executable, "-X", "importtime", str(SYNTH), "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert res.returncode == 0 and "--random-weights" in res.stdout
    assert " torch" not in res.stderr.replace("torch.", "")  # importtime lists every module imported


def test_random_sizes_match_the_library():
    """synth.py lists the sizes itself (its --help must not import torch): keep them in sync."""
    from wsvk.tts import cli
    from wsvk.tts.models import RANDOM_SIZES

    assert cli.SIZES == RANDOM_SIZES


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cpu", "wgpu"])
def test_random_weights_run_offline(tmp_path, backend):
    """--random-weights tiny: whisperspeech's own tiny preset, full released windows (minutes on 2
    cores). On wgpu the resident modules run with the released context sizes, as on a user's GPU."""
    out = tmp_path / "noise.wav"
    res = synth("Noise.", "-o", out, "--random-weights", "tiny", "-v", backend=backend,
                env={"HF_HUB_OFFLINE": "1"}, timeout=900)
    assert res.returncode == 0, res.stderr
    assert ("resident s2a" in res.stdout + res.stderr) == (backend == "wgpu")
    assert "noise" in res.stderr and "noise" in res.stdout
    audio, rate = sf.read(out)
    assert rate == 24000 and audio.size > 0
    assert torch.from_numpy(audio).isfinite().all()


@pytest.mark.parametrize("name,fmt", [("out.flac", "FLAC"), ("out.mp3", "MP3"), ("out.ogg", "OGG"), ("out.opus", "OGG"),
                                      ("out.wav", "WAV")])
def test_the_extension_names_the_format(tiny, tmp_path, name, fmt):
    """-o writes the format its extension names, readable by everyone (0666 less the umask)."""
    res = synth("Hello there.", "-o", tmp_path / name, *model_args(tiny), "--seed", "3")
    assert res.returncode == 0, res.stderr
    info = sf.info(tmp_path / name)
    assert info.format == fmt and info.samplerate == 24000 and info.channels == 1 and info.frames > 0
    mode = (tmp_path / name).stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask, oct(mode)
    assert [p.name for p in tmp_path.iterdir()] == [name]


@pytest.mark.parametrize("backend", ["cpu", "wgpu"])
def test_dash_streams_a_wav_to_stdout(tiny, tmp_path, backend):
    """-o -: a WAV with the unknown-length header on stdout, the same samples as -o x.wav; the
    summary (with the time to first audio) on stderr."""
    ref = synth("Hello there, friend. A second sentence.", "-o", tmp_path / "x.wav", *model_args(tiny),
                "--seed", "3", backend=backend, env={"WSVK_PRECISION": "f32"})
    assert ref.returncode == 0, ref.stderr
    res = synth("Hello there, friend. A second sentence.", "-o", "-", *model_args(tiny), "--seed", "3",
                backend=backend, env={"WSVK_PRECISION": "f32"}, text=False)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout[:4] == b"RIFF" and res.stdout[4:8] == b"\xff\xff\xff\xff"
    samples = np.frombuffer(res.stdout[44:], "<i2")
    want = (sf.read(tmp_path / "x.wav", dtype="int16")[0]).astype(np.int32)
    assert samples.size == want.size and np.abs(samples.astype(np.int32) - want).max() <= 1
    assert "first audio after" in res.stderr.decode()


@pytest.mark.parametrize("backend", ["cpu", "wgpu"])
def test_dash_stops_quietly_when_the_reader_leaves(tiny, backend):
    """-o - into a reader that stops early (a player closed, `| head`): synthesis stops, exit 0,
    one line saying so, no traceback (and no crash as the process ends beside stopping threads)."""
    env = synth_env(backend)
    text = "One sentence here. " * 12  # several chunks: several writes
    proc = subprocess.Popen([sys.executable, str(SYNTH), text, "-o", "-", *map(str, model_args(tiny))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    assert proc.stdout.read(100)[:4] == b"RIFF"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, err
    assert "stdout was closed by its reader" in err and "Traceback" not in err and "Exception" not in err


def test_dash_refuses_a_terminal(tiny, tmp_path):
    """-o - with stdout on a terminal: WAV bytes would garble it; exit 2 before loading anything."""
    import pty

    leader, follower = pty.openpty()
    env = dict(os.environ, WSVK_BACKEND="cpu", PYTHONPATH=str(ROOT))
    try:
        res = subprocess.run([sys.executable, str(SYNTH), "hi", "-o", "-", *map(str, model_args(tiny))],
                             stdout=follower, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, timeout=120)
    finally:
        os.close(leader)
        os.close(follower)
    assert res.returncode == 2 and "stdout, which is a terminal" in res.stderr
