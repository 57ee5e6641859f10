"""The benchmark scripts run end to end (on lavapipe their timings mean nothing)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(name, *args, env=None):
    full = {**os.environ, "XDG_RUNTIME_DIR": "/tmp", "WSVK_BACKEND": "wgpu", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True,
                          text=True, env=full, timeout=900)


def test_bench_ops_quick(rt, tmp_path):
    r = run_script("bench_ops.py", "--quick", "--min-time", "0.01", "--json", str(tmp_path / "ops.json"))
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "ops.json").read_text())
    assert {row["family"] for row in data["results"]} == {"matmul", "attention", "fft"}
    base = [row for row in data["results"] if "[t" not in row["case"]]
    assert all(row["wsvk_ms"] > 0 and row["torch_cpu_ms"] > 0 for row in base)
    # the GPU time alone (timestamps) where the adapter can measure it
    assert all((row["wsvk_gpu_ms"] is None) != rt.has_timestamps for row in data["results"])
    if rt.has_timestamps:
        assert all(row["wsvk_gpu_ms"] > 0 for row in data["results"])
    pinned = [row for row in data["results"] if row["case"].endswith("[t128]")]  # a pinned tile variant
    assert len(pinned) == 1 and pinned[0]["wsvk_ms"] > 0 and pinned[0]["torch_cpu_ms"] is None
    assert "linear 1x768->2304" in r.stdout and "irfft" in r.stdout and "conv1d" in r.stdout
    r = run_script("bench_ops.py", "--quick", "--min-time", "0.01", "--only", "irfft", "--json", str(tmp_path / "one.json"))
    assert r.returncode == 0, r.stderr
    assert [row["case"] for row in json.loads((tmp_path / "one.json").read_text())["results"]] == ["irfft (50, 641) n=1280"]
    r = run_script("bench_ops.py", "--quick", "--only", "nothing-like-this")
    assert r.returncode == 2 and "no benchmark case's name contains 'nothing-like-this'" in r.stderr


def test_bench_e2e_tiny(rt, tmp_path):
    r = run_script("bench_e2e.py", "--size", "tiny", "--steps", "3", "--vocos-seconds", "0.2", "--reps", "1",
                   "--json", str(tmp_path / "e2e.json"))
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "e2e.json").read_text())["results"]
    assert set(res) >= {"wsvk", "torch_cpu"}
    w = res["wsvk"]
    assert w["t2s_submits_per_step"] == 1 and w["s2a_submits_per_step"] == 1  # one submit per decode step
    assert w["t2s_dispatches_per_step"] > 0 and w["t2s_record_ms_per_step"] > 0
    assert w["s2a_wait_ms_per_step"] > 0 and w["s2a_inline_ms_per_step"] > 0 and w["t2s_gap_ms_per_step"] > 0
    if rt.has_timestamps:  # per-kind GPU times of one step add up to the step's GPU time
        kinds = w["s2a_gpu_ms_by_kernel"]
        assert w["s2a_gpu_ms_per_step"] > 0 and abs(sum(kinds.values()) - w["s2a_gpu_ms_per_step"]) < 1e-9
        assert w["vocos_gpu_ms"] > 0 and len(w["vocos_gpu_ms_by_kernel"]) > 3  # several kinds of dispatch
    assert all(r_["realtime_x"] > 0 for r_ in res.values())


@pytest.mark.timeout(3600)  # whole tiny-preset chunks, several times (CI leaves it out)
def test_bench_e2e_batch_tiny(rt, tmp_path):
    r = run_script("bench_e2e.py", "--batch", "1,2", "--size", "tiny", "--steps", "3", "--long-text", "Hi there.",
                   "--json", str(tmp_path / "batch.json"))
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "batch.json").read_text())["batch"]
    assert set(res["per_batch"]) == {"1", "2"}
    for row in res["per_batch"].values():
        assert row["t2s_step_ms"] > 0 and row["s2a_tokens_per_s"] > 0 and row["s2a_feed_ms"] > 0
        assert row["t2s_gap_ms"] > 0 and row["s2a_gap_ms"] > 0
        assert (row.get("t2s_gpu_ms_per_step", 0) > 0) == rt.has_timestamps
    if rt.has_timestamps:
        assert "B=2 T2S GPU ms by kind" in r.stdout
    batched, alone = res["long_text_batched"], res["long_text_one_chunk_at_a_time"]  # the long text both ways
    assert batched["chunks"] == alone["chunks"] == 1 and batched["audio_seconds"] > 0 and alone["audio_seconds"] > 0
    assert batched["realtime_x"] > 0 and alone["realtime_x"] > 0


def test_bench_step_tiny(rt, tmp_path):
    precisions = ["f32", "q8"]
    r = run_script("bench_step.py", "--size", "tiny", "--chunk-seconds", "0.2", "--positions", "0,1", "--steps", "3",
                   "--precision", ",".join(precisions), "--cpu", "--json", str(tmp_path / "step.json"))
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "step.json").read_text())
    w = res["wsvk"]
    assert set(w) == {"adapter", *precisions}
    for stage in ("t2s", "s2a"):  # 8-bit weights: 36 bytes a block of 32 against 4 bytes a weight (f32's head stays)
        f32_bytes, q8_bytes = (w[p][stage]["weight_bytes_per_step"] for p in precisions)
        assert 0.25 < q8_bytes / f32_bytes < 0.6, (stage, q8_bytes, f32_bytes)
        assert f"{stage.upper()} q8: {w['q8'][stage]['dispatches_per_step']} dispatches/step, " in r.stdout
    for (precision, stage), chunk in [((p, "t2s"), 5) for p in precisions] + [((p, "s2a"), 15) for p in precisions]:
        s = w[precision][stage]  # 25 and 75 steps per second of speech (random T2S weights may end early)
        assert (s["chunk_steps"] == chunk or stage == "t2s" and 2 <= s["chunk_steps"] < chunk)
        assert s["chunk_ms_per_step"] > 0 and s["dispatches_per_step"] > 0
        assert [a["pos"] for a in s["at"]] == [0, chunk - 3]  # windows of 3 steps: the chunk's first and last
        for a in s["at"]:
            assert a["ms_per_step"] > 0 and a["record_ms"] > 0
            assert ("gpu_ms" in a) == rt.has_timestamps
            if rt.has_timestamps:  # every kind of a decoder layer's dispatch, apart
                kinds = a["gpu_ms_by_kind"]
                assert abs(sum(kinds.values()) - a["gpu_ms"]) < 1e-9
                assert {"attn self", "attn cross", "embed"} <= set(kinds)
                assert sum(k.endswith("+self-combine") or k.endswith("+cross-combine") for k in kinds) == 2
        assert f"{stage.upper()} {precision}: {s['dispatches_per_step']} dispatches/step" in r.stdout
    base = res["torch_cpu_eager_f32"]
    assert base["t2s_ms_per_step"] > 0 and base["s2a_ms_per_step"] > 0
    assert "torch_cpu_eager_f32: T2S" in r.stdout
    for flags, words in ((["--positions", "0,2"], "--positions must lie in [0, 1]"),
                         (["--steps", "1000"], "--steps must be from 3 to 256"),
                         (["--chunk-seconds", "nan"], "--chunk-seconds must be a positive number"),
                         (["--precision", "f16,q4"], "--precision takes f32, f16 and q8, got f16,q4")):
        bad = run_script("bench_step.py", *flags)
        assert bad.returncode == 2 and words in bad.stderr, bad.stderr


def test_bench_serve_tiny(rt, tmp_path):
    r = run_script("bench_serve.py", "--size", "tiny", "--clients", "1,2", "--requests", "1", "--text", "Hi there.",
                   "--json", str(tmp_path / "serve.json"))
    assert r.returncode == 0, r.stderr
    rounds = json.loads((tmp_path / "serve.json").read_text())["rounds"]
    assert [x["clients"] for x in rounds] == [1, 2] and [x["requests"] for x in rounds] == [1, 2]
    assert all(x["ttfb_p50_ms"] > 0 and x["aggregate_realtime_x"] > 0 for x in rounds)
    assert "TTFB p50" in r.stdout and "warning" not in r.stderr, r.stderr  # the server process ended cleanly


@pytest.mark.timeout(3600)  # whole tiny-preset chunks, several times (CI leaves it out)
def test_bench_batch_tiny(rt, tmp_path):
    r = run_script("bench_batch.py", "--rows", "3", "--loop-rows", "1", "--size", "tiny", "--slots", "2",
                   "--json", str(tmp_path / "b.json"))
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "b.json").read_text())
    assert res["rows"] == 3 and res["slots"] == 2 and res["audio_seconds"] > 0
    assert res["results"]["loop_over_generate"]["rows"] == 1 and res["results"]["batch_job"]["rows"] == 3
    assert all(v["rows_per_s"] > 0 for v in res["results"].values()) and "batch job / loop" in r.stdout
