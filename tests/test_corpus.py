"""`python -m wsvk batch`: a 40-row job locally and on a local Ray cluster (byte-identical files,
equal manifests), kill -9 and resume, bad rows, --strict, a full disk and an unwritable folder."""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

import tiny_models as tm

ROOT = Path(__file__).resolve().parents[1]
ENV = {"WSVK_BACKEND": "wgpu", "WSVK_PRECISION": "f32", "XDG_RUNTIME_DIR": "/tmp", "PYTHONPATH": str(ROOT),
       "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
       # Ray on Linux replaces 127.0.0.1 by the machine's address; this keeps the cluster on loopback
       "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus-models")
    paths = tm.write_all(root)
    tm.write_voice(root / "voice.wav", seed=3)
    return paths, root


def model_args(paths):
    return ["--t2s", str(paths["t2s"]), "--s2a", str(paths["s2a"]), "--vocoder", str(paths["vocoder"]),
            "--speaker-model", str(paths["speaker_model"])]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def forty_rows(voice: str):
    rows = []
    for i in range(40):
        row = {"id": f"row{i:02d}", "text": f"Row {i} " + "and more words " * (i % 5), "seed": i}
        if i % 7 == 3:
            row["voice"] = voice
        if i % 9 == 4:
            row.update(lang="pl", cps=12)
        rows.append(row)
    return rows


def batch(*args, env=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "wsvk", "batch", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **ENV, **(env or {})}, timeout=timeout)


def manifest(folder: Path, drop=("synthesis_seconds",)) -> list[dict]:
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]


def audio_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.flac"))}


@pytest.fixture(scope="module")
def local_run(models, tmp_path_factory):
    paths, root = models
    work = tmp_path_factory.mktemp("corpus")
    inp = write_jsonl(work / "rows.jsonl", forty_rows("voice.wav"))
    shutil.copy(root / "voice.wav", work / "voice.wav")  # voices are relative to the input file
    r = batch(inp, "--out", work / "local", *model_args(paths))
    assert r.returncode == 0, r.stderr
    return work, inp


def test_a_local_job(local_run):
    work, _ = local_run
    entries = manifest(work / "local")
    assert [e["id"] for e in entries] == [f"row{i:02d}" for i in range(40)]  # one entry each, input order
    assert all(e["status"] == "done" and e["sample_rate"] == 24000 and e["audio_seconds"] > 0 for e in entries)
    assert all(e["backend"].startswith("wgpu") for e in entries)
    for name, data in audio_files(work / "local").items():
        info = sf.info(work / "local" / name)
        assert info.format == "FLAC" and info.samplerate == 24000
    assert not list((work / "local").glob(".*"))  # no temporary files left


def test_the_same_job_on_a_ray_cluster(local_run, models):
    """A local Ray cluster started here (loopback, its own wsvk_gpu resource): the same files,
    byte for byte, and the same manifest."""
    paths, _ = models
    work, inp = local_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    env = {**os.environ, **ENV}
    start = subprocess.run(ray + ["start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                                  "--resources", '{"wsvk_gpu": 1}', "--include-dashboard=false", "--disable-usage-stats"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        r = batch(inp, "--out", work / "ray", "--ray", f"127.0.0.1:{port}", *model_args(paths))
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        subprocess.run(ray + ["stop", "--force"], capture_output=True, env=env, timeout=300)
    assert audio_files(work / "ray") == audio_files(work / "local")
    assert manifest(work / "ray") == manifest(work / "local")


def test_killed_mid_run_and_resumed(local_run, models, tmp_path):
    """kill -9 while rows are being written, then the same command again: every row done once,
    no truncated or temporary file, the same files as an uninterrupted run."""
    paths, _ = models
    work, inp = local_run
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "wsvk", "batch", str(inp), "--out", str(out), "--batch-rows", "4", *model_args(paths)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **ENV}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (out / "manifest.jsonl").exists() or len((out / "manifest.jsonl").read_text().splitlines()) < 9:
        assert proc.poll() is None and time.time() < deadline, "the job ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len((out / "manifest.jsonl").read_text().splitlines())
    assert 9 <= done_before < 40
    r = batch(inp, "--out", out, "--batch-rows", "4", *model_args(paths))
    assert r.returncode == 0, r.stderr
    assert f"already done, {40 - done_before} to synthesize" in r.stderr or "already done" in r.stderr
    assert manifest(out) == manifest(work / "local")
    assert audio_files(out) == audio_files(work / "local")
    assert not list(out.glob(".*"))
    again = batch(inp, "--out", out, *model_args(paths))  # nothing left: nothing written twice
    assert again.returncode == 0 and "40 already done, 0 to synthesize" in again.stderr


def test_bad_rows_are_reported_and_good_rows_finish(models, tmp_path):
    paths, root = models
    rows = [{"id": "good1", "text": "Fine."}, {"id": "../etc", "text": "x"}, {"id": "good1", "text": "again"},
            {"id": "empty", "text": " "}, {"id": "lang", "text": "hi", "lang": "xx"},
            {"id": "novoice", "text": "hi", "voice": "missing.wav"}, {"id": "cps", "text": "hi", "cps": "fast"},
            {"id": "seed", "text": "hi", "seed": 1.5}, {"id": "big", "text": "hi", "seed": 2**32},
            {"id": "good2", "text": "Also fine.", "cps": 18}]
    inp = write_jsonl(tmp_path / "rows.jsonl", rows)
    with open(inp, "a") as f:
        f.write("{this is not json\n")
    r = batch(inp, "--out", tmp_path / "out", *model_args(paths))
    assert r.returncode == 1, r.stderr  # not every row ended in a file
    for words in ("line 2: id '../etc' is not a safe file name", "line 3: id 'good1' appears twice",
                  "line 4: row empty: the text is empty", "line 5: row lang: unknown language 'xx'",
                  "line 6: row novoice: voice file not found", "line 7: row cps: cps must be a number",
                  "line 8: row seed: seed must be an integer",
                  "line 9: row big: seed must be an integer from 0 to 4294967295", "line 11: not valid JSON",
                  "done: 2 of 2 valid rows; 9 invalid (in the manifest)"):
        assert words in r.stderr, words
    assert sorted(p.name for p in (tmp_path / "out").glob("*.flac")) == ["good1.flac", "good2.flac"]
    entries = manifest(tmp_path / "out")  # one per row, in input order, the invalid ones with their line
    assert [(e.get("line"), e["id"], e["status"]) for e in entries] == [
        (None, "good1", "done"), (2, "../etc", "invalid"), (3, "good1", "invalid"), (4, "empty", "invalid"),
        (5, "lang", "invalid"), (6, "novoice", "invalid"), (7, "cps", "invalid"), (8, "seed", "invalid"),
        (9, "big", "invalid"), (None, "good2", "done"), (11, None, "invalid")]
    assert "appears twice" in entries[2]["error"] and "not valid JSON" in entries[10]["error"]
    again = batch(inp, "--out", tmp_path / "out", *model_args(paths))  # resumed: the same manifest, still 1
    assert again.returncode == 1 and "2 already done, 0 to synthesize" in again.stderr
    assert manifest(tmp_path / "out") == entries
    strict = batch(inp, "--out", tmp_path / "strict", "--strict", *model_args(paths))
    assert strict.returncode == 2 and "--strict: nothing synthesized" in strict.stderr
    assert not list((tmp_path / "strict").glob("*"))


def test_csv_input_and_a_row_that_fails(models, tmp_path):
    paths, _ = models
    (tmp_path / "broken.wav").write_bytes(b"not audio at all")
    inp = tmp_path / "rows.csv"
    inp.write_text("id,text,voice,seed\nok,Hello there.,,2\nbad,Broken voice.,broken.wav,3\n", encoding="utf-8")
    r = batch(inp, "--out", tmp_path / "out", "--format", "wav", *model_args(paths))
    assert r.returncode == 1 and "row bad failed" in r.stderr and "failed: bad" in r.stderr
    entries = {e["id"]: e for e in manifest(tmp_path / "out")}
    assert entries["ok"]["status"] == "done" and (tmp_path / "out" / "ok.wav").is_file()
    assert entries["bad"]["status"] == "failed" and "not a readable audio file" in entries["bad"]["error"]


def test_a_full_disk_stops_the_job_and_loses_no_finished_row(models, tmp_path, monkeypatch, capsys):
    from wsvk.corpus import cli, job

    paths, _ = models
    inp = write_jsonl(tmp_path / "rows.jsonl", [{"id": f"r{i}", "text": f"Row {i}."} for i in range(6)])
    monkeypatch.setenv("WSVK_BACKEND", "cpu")
    real, written = job.write_file, []

    def fill_up(path, *a, **k):
        if len(written) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        return real(path, *a, **k)

    monkeypatch.setattr(job, "write_file", fill_up)
    argv = [str(inp), "--out", str(tmp_path / "out"), "--batch-rows", "2", *model_args(paths)]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "error: cannot write" in err and "No space left on device" in err
    kept = manifest(tmp_path / "out")
    assert len(kept) == 3  # every row written before the failure is recorded, the half-done batch's too
    assert all((tmp_path / "out" / e["file"]).is_file() for e in kept)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.flac")) == sorted(e["file"] for e in kept)
    monkeypatch.setattr(job, "write_file", real)
    assert cli.main(argv) == 0 and len(manifest(tmp_path / "out")) == 6


def test_an_unwritable_output_is_a_clear_error(models, tmp_path):
    paths, _ = models
    inp = write_jsonl(tmp_path / "rows.jsonl", [{"id": "a", "text": "Hi."}])
    (tmp_path / "file").write_text("I am a file")
    r = batch(inp, "--out", tmp_path / "file", *model_args(paths))
    assert r.returncode == 2 and "exists and is not a folder" in r.stderr and "Traceback" not in r.stderr
    r = batch(inp, "--out", tmp_path / "file" / "sub", *model_args(paths))
    assert r.returncode == 2 and "cannot create a file in" in r.stderr


def test_awkward_input_files_are_read_as_written(tmp_path):
    """An Excel CSV (byte-order mark, CRLF), a quoted text with line breaks, an unquoted comma,
    Unicode line separators inside texts, ids that are not file names anywhere."""
    from wsvk.corpus.rows import check_rows, read_rows

    csv_file = tmp_path / "rows.csv"
    csv_file.write_bytes("\ufeffid,text,seed\r\na,\"Hello, there\",1\r\n\r\nb,Hello, world,2\r\n"
                         "c,\"two\nlines\u2028and a separator\",3\r\nd,Last\u2028one\r\n".encode())
    rows, problems = check_rows(read_rows(csv_file), tmp_path, lambda code: code)
    assert [(r.line, r.id, r.text, r.seed) for r in rows] == [
        (2, "a", "Hello, there", 1), (5, "c", "two\nlines\u2028and a separator", 3), (7, "d", "Last\u2028one", 0)]
    assert problems == [{"line": 4, "id": None, "status": "invalid",
                         "error": "4 values for 3 columns (quote a text that holds a comma)"}]
    rows, _ = check_rows(read_rows(csv_file), tmp_path, lambda code: code, seed=9)  # batch --seed 9
    assert [r.seed for r in rows] == [1, 3, 9]  # a row's own seed first, then --seed

    jsonl = tmp_path / "rows.jsonl"
    lines = [{"id": "x", "text": "one\u2028two\x85three\x0cfour"}, {"id": "abc\n", "text": "t"},
             {"id": "CON", "text": "t"}, {"id": "nul.txt", "text": "t"}, {"id": "com1", "text": "t"},
             {"id": "console", "text": "fine"}, {"text": "no id"}, {"id": "", "text": "empty id"}]
    jsonl.write_text("\ufeff" + "\r\n".join(json.dumps(r, ensure_ascii=False) for r in lines), encoding="utf-8")
    rows, problems = check_rows(read_rows(jsonl), tmp_path, lambda code: code)
    assert [(r.line, r.id, r.text) for r in rows] == [(1, "x", lines[0]["text"]), (6, "console", "fine")]
    assert [p["line"] for p in problems] == [2, 3, 4, 5, 7, 8]
    assert all("not a safe file name" in p["error"] for p in problems[:4])
    assert all("the row has no id" in p["error"] for p in problems[4:])


def test_a_row_whose_inputs_changed_is_made_again(models, tmp_path, monkeypatch, capsys):
    from wsvk.corpus import cli

    paths, _ = models
    monkeypatch.setenv("WSVK_BACKEND", "cpu")
    rows = [{"id": "a", "text": "First text.", "seed": 1}, {"id": "b", "text": "Second text.", "seed": 2}]
    inp = write_jsonl(tmp_path / "rows.jsonl", rows)
    argv = [str(inp), "--out", str(tmp_path / "out"), *model_args(paths)]
    assert cli.main(argv) == 0
    before = {e["id"]: e for e in manifest(tmp_path / "out")}
    assert all(len(e["inputs"]) == 16 for e in before.values())
    capsys.readouterr()
    assert cli.main(argv) == 0 and "2 already done, 0 to synthesize" in capsys.readouterr().err
    rows[1]["seed"] = 5  # b's audio would differ: b is made again, a is not
    write_jsonl(inp, rows)
    assert cli.main(argv) == 0 and "1 already done, 1 to synthesize" in capsys.readouterr().err
    after = {e["id"]: e for e in manifest(tmp_path / "out")}
    assert after["a"] == before["a"] and after["b"]["inputs"] != before["b"]["inputs"]
    assert cli.main(argv + ["--random-weights", "tiny"]) == 0  # other models: everything again
    assert "0 already done, 2 to synthesize" in capsys.readouterr().err


def test_one_output_folder_one_run_and_no_valid_rows(models, tmp_path, capsys):
    import fcntl

    from wsvk.corpus import cli

    paths, _ = models
    inp = write_jsonl(tmp_path / "rows.jsonl", [{"id": "a", "text": "Hi."}])
    (tmp_path / "out").mkdir()
    held = os.open(tmp_path / "out", os.O_RDONLY)  # as a run in progress holds it
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        (tmp_path / "out" / ".wsvk-row.flac.part").write_bytes(b"the other run's")
        assert cli.main([str(inp), "--out", str(tmp_path / "out"), *model_args(paths)]) == 2
        assert "another run is writing to" in capsys.readouterr().err
        assert (tmp_path / "out" / ".wsvk-row.flac.part").exists()  # its temporary file left alone
    finally:
        os.close(held)
    assert cli.main([str(inp), "--out", str(tmp_path / "out"), *model_args(paths)]) == 0  # free again
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "../x", "text": "Hi."}])
    assert cli.main([str(bad), "--out", str(tmp_path / "out2"), *model_args(paths)]) == 2
    assert "no valid rows in" in capsys.readouterr().err
    (tmp_path / "empty.csv").write_text("id,text\n")
    assert cli.main([str(tmp_path / "empty.csv"), "--out", str(tmp_path / "out2"), *model_args(paths)]) == 2
    assert "(it is empty)" in capsys.readouterr().err


def test_rows_without_audio_fail_and_other_errors_are_one_line(models, tmp_path, monkeypatch, capsys):
    import numpy as np

    from wsvk.corpus import cli
    from wsvk.tts.pipeline import Pipeline

    paths, _ = models
    monkeypatch.setenv("WSVK_BACKEND", "cpu")
    inp = write_jsonl(tmp_path / "rows.jsonl", [{"id": "quiet", "text": "Hi."}, {"id": "nan", "text": "Ho."},
                                                {"id": "fine", "text": "Hey."}])
    real = Pipeline.generate_batch

    def some_broken(self, texts, **kw):
        audios = real(self, texts, **kw)
        return [np.zeros(0, np.float32) if t == "Hi." else np.full(100, np.nan, np.float32) if t == "Ho." else a
                for t, a in zip(texts, audios)]

    monkeypatch.setattr(Pipeline, "generate_batch", some_broken)
    argv = [str(inp), "--out", str(tmp_path / "out"), "--format", "wav", *model_args(paths)]
    assert cli.main(argv) == 1
    entries = {e["id"]: e for e in manifest(tmp_path / "out")}
    assert entries["quiet"]["status"] == "failed" and "no audio" in entries["quiet"]["error"]
    assert entries["nan"]["status"] == "failed" and "non-finite" in entries["nan"]["error"]
    assert entries["fine"]["status"] == "done"
    assert sorted(p.name for p in (tmp_path / "out").glob("*.wav")) == ["fine.wav"]

    capsys.readouterr()
    monkeypatch.setattr(cli, "run", lambda args: (_ for _ in ()).throw(KeyError("surprise")))
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: KeyError: 'surprise'" and "Traceback" not in err


def test_progress_lines_come_on_a_timer_and_count_rows_as_they_finish():
    """Without a terminal: a plain line every `every` seconds, whether rows finish or not (a batch
    can take longer), counting each row; audio in the unit that fits; a last line at the end."""
    import io

    from wsvk.corpus.job import Progress

    out = io.StringIO()
    p = Progress(3, stream=out, every=0.2)
    time.sleep(0.5)  # nothing finished yet: lines all the same
    p.update([{"audio_seconds": 100.0}])
    p.update([{"audio_seconds": 20.0}])
    time.sleep(0.3)
    p.update([{"audio_seconds": 5.0}])
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3 and lines[0].startswith("0/3 rows, 0.0 s of audio") and "ETA ?" in lines[0]
    assert any(line.startswith("2/3 rows, 2.0 min of audio") for line in lines), lines
    assert lines[-1].startswith("3/3 rows, 2.1 min of audio") and lines[-1].endswith("ETA 0.0 s"), lines
