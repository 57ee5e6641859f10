"""The decode step's candidates and the tuner (wsvk/resident/tuner.py, tune_cache.py, `wsvk tune`).

Lavapipe's timings say nothing about a GPU, so auto does not tune it: these tests let it (worth_tuning)
and check what the tuner does, not what it picks. The models are small but their caches long
enough (200 and 120 positions) for every split size to run differently. The candidates run first
so that the tuner's tests find their pipelines compiled."""

import json

import pytest
import torch

import tiny_models as tm
from wsvk import config, quality
from wsvk.__main__ import main
from wsvk.errors import ConfigError, GpuError
from wsvk.resident import ResidentS2A, ResidentT2S, tune_cache, tuner

TEXT = "hello world"


@pytest.fixture(scope="module")
def t2s():
    return quality.small_t2s(stoks_len=200)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("WSVK_CACHE_DIR", str(folder))
    monkeypatch.setenv("WSVK_PRECISION", "f32")
    monkeypatch.setattr(tuner, "worth_tuning", lambda rt: True)
    monkeypatch.setattr(tuner, "_announced", False)
    return folder


def cpu_tokens(t2s, seed=1):
    torch.manual_seed(seed)
    return t2s.generate(TEXT, show_progress_bar=False)


def gpu_tokens(res, seed=1):
    torch.manual_seed(seed)
    return res.generate(TEXT, show_progress_bar=False)


def test_every_candidate_gives_the_cpu_tokens(rt, t2s, monkeypatch):
    monkeypatch.setenv("WSVK_PRECISION", "f32")
    base = ResidentT2S(t2s).resident_decoder
    cands = tuner.candidates(base)
    assert cands[0] == tuner.DEFAULT and len({c.name for c in cands}) == len(cands)
    assert {"split32", "split128", "split256"} <= {c.name for c in cands}
    assert any(c.subgroups is False for c in cands) == rt.has_subgroups
    ref = cpu_tokens(t2s)
    for c in cands:
        monkeypatch.setenv("WSVK_PLAN", c.name)
        res = ResidentT2S(t2s)
        dec = res.resident_decoder
        assert dec.tuning == {"plan": c.name, "source": "forced", "timed": 0}
        assert dec.plan.ch == (c.ch or dec.plan.auto_ch()) and dec.plan.subgroups == c.subgroups
        assert dec.dispatches_per_step == base.dispatches_per_step == 1 + 8 * dec.n_layers + 1  # embed, layers, head
        got = gpu_tokens(res)
        assert torch.equal(got, ref), f"{c.name}\nCPU {ref.tolist()}\nGPU {got.tolist()}"


def test_every_s2a_candidate_gives_the_cpu_tokens(rt, monkeypatch):
    """RoPE on both attentions, keys subsampled, 4 quantizers: S2A's split sizes and reductions."""
    monkeypatch.setenv("WSVK_PRECISION", "f32")
    s2a = quality.small_s2a(stoks_len=40)
    g = torch.Generator().manual_seed(3)
    stoks, spk = torch.randint(0, 512, (30,), generator=g), torch.randn(1, 192, generator=g)
    torch.manual_seed(4)
    ref = s2a.generate(stoks, spk, show_progress_bar=False)
    cands = tuner.candidates(ResidentS2A(s2a).resident_decoder)
    assert {"split32", "split128"} <= {c.name for c in cands}
    for c in cands[1:]:
        monkeypatch.setenv("WSVK_PLAN", f"t2s:split9999,s2a:{c.name}")  # one per decoder
        res = ResidentS2A(s2a)
        assert res.resident_decoder.tuning["plan"] == c.name
        torch.manual_seed(4)
        got = res.generate(stoks, spk, show_progress_bar=False)
        assert torch.equal(got, ref), f"{c.name}\nCPU {ref.tolist()}\nGPU {got.tolist()}"


@pytest.mark.parametrize("precision", ["f32", pytest.param("f16", marks=pytest.mark.needs_f16)])
def test_candidates_batched(rt, t2s, monkeypatch, precision):
    """Three sequences sharing steps (B = 3) on the non-default variants: f32 tokens equal the CPU
    model's; f16 tokens equal each sequence's solo run on the same variant (tests/test_precision.py
    bounds f16's logits against f32)."""
    monkeypatch.setenv("WSVK_PRECISION", precision)
    texts, caps = ["hello world", "a b c", "so many words"], [9, 14, 12]
    refs = []
    for i, (text, cap) in enumerate(zip(texts, caps)):
        torch.manual_seed(100 + i)
        refs.append(t2s.generate(text, N=cap, show_progress_bar=False))
    names = [c.name for c in tuner.candidates(ResidentT2S(t2s, slots=3).resident_decoder)]
    for name in [n for n in names if n in ("split32", "split128") or n.endswith("-wgsum")][:3]:
        monkeypatch.setenv("WSVK_PLAN", name)
        res = ResidentT2S(t2s, slots=3)
        seqs = [res.sequence(t, N=n, generator=torch.Generator().manual_seed(100 + i))
                for i, (t, n) in enumerate(zip(texts, caps))]
        res.run(seqs)
        assert res.counters()["columns_per_step"] > 1.5, name  # the sequences really shared steps
        if precision == "f16":  # the reference: each sequence alone on the same variant
            refs = []
            for i, (t, n) in enumerate(zip(texts, caps)):
                solo = res.sequence(t, N=n, generator=torch.Generator().manual_seed(100 + i))
                res.run([solo])
                refs.append(solo.result)
        for seq, ref in zip(seqs, refs):
            assert torch.equal(seq.result, ref), (name, seq.result.tolist(), ref.tolist())


def test_tuner_chooses_caches_and_reuses(rt, t2s, cache, monkeypatch, capsys):
    monkeypatch.setattr(tuner, "BUDGET_S", 1e9)  # every split size
    res = ResidentT2S(t2s, slots=2)
    dec = res.resident_decoder
    assert dec.tuning["source"] == "tuned" and dec.tuning["timed"] >= 3
    assert capsys.readouterr().err.count(f"tuning the decode step for {rt.info['name']} (once)") == 1
    (path, entry, why), = tune_cache.entries(str(cache))
    rows = entry["candidates"]
    assert why is None and sum(r["chosen"] for r in rows) == 1 and entry["choice"] == dec.tuning["plan"]
    assert all(r["ms_per_step"] > 0 and r["dispatches_per_step"] == dec.dispatches_per_step for r in rows)
    assert entry["key"] == tuner.key(dec, "t2s") and entry["key"]["slots"] == 2
    assert torch.equal(gpu_tokens(res), cpu_tokens(t2s))  # the tuned decoder (its caches were scribbled on)

    def no_timing(*a, **k):
        raise AssertionError("a cached choice was timed again")

    real_time = tuner._time
    monkeypatch.setattr(tuner, "_time", no_timing)
    again = ResidentT2S(t2s, slots=2).resident_decoder
    assert again.tuning == {"plan": entry["choice"], "source": "cache", "timed": 0}
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(tuner, "_time", real_time)
    monkeypatch.setattr(tuner, "BUDGET_S", 0.0)  # the default alone: enough to see a new key tuned
    assert ResidentT2S(t2s, slots=3).resident_decoder.tuning["source"] == "tuned"
    assert len(tune_cache.entries(str(cache))) == 2
    if rt.has_f16:
        monkeypatch.setenv("WSVK_PRECISION", "f16")
        assert ResidentT2S(t2s, slots=3).resident_decoder.tuning["source"] == "tuned"
        assert len(tune_cache.entries(str(cache))) == 3
    monkeypatch.setenv("WSVK_TUNE", "force")  # tunes again over a cached key
    assert ResidentT2S(t2s, slots=3).resident_decoder.tuning["source"] == "tuned"


def test_corrupt_foreign_or_stale_cache_is_ignored(rt, t2s, cache, monkeypatch, capsys):
    monkeypatch.setattr(tuner, "BUDGET_S", 0.0)
    ResidentT2S(t2s)
    (path, entry, _), = tune_cache.entries(str(cache))
    capsys.readouterr()
    broken = {
        "unreadable": "{not json",
        "not a wsvk tuning file": json.dumps({"format": "other/9", "key": entry["key"], "choice": "default"}),
        "another adapter": json.dumps({**entry, "key": {**entry["key"], "adapter": "Some Other GPU"}}),
        "not a candidate of the t2s decoder any more; tuning again": json.dumps({**entry, "choice": "split9999"}),
    }
    for why, text in broken.items():
        with open(path, "w") as f:
            f.write(text)
        dec = ResidentT2S(t2s).resident_decoder
        err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
        assert len(err) == 1 and why in err[0], (why, err)
        assert dec.tuning["source"] == "tuned"
        assert tune_cache.load(tuner.key(dec, "t2s"))["choice"] == dec.tuning["plan"]  # rewritten whole


def test_unwritable_cache_folder_means_tuning_again(rt, t2s, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("WSVK_CACHE_DIR", str(blocker / "wsvk"))
    monkeypatch.setenv("WSVK_PRECISION", "f32")
    monkeypatch.setattr(tuner, "worth_tuning", lambda rt: True)
    monkeypatch.setattr(tuner, "BUDGET_S", 0.0)
    for _ in range(2):
        assert ResidentT2S(t2s).resident_decoder.tuning["source"] == "tuned"
    assert capsys.readouterr().err.count("cannot write the tuning cache") == 1


def test_software_adapters_are_not_tuned_and_leave_no_files(rt, t2s, cache, monkeypatch):
    monkeypatch.setattr(tuner, "worth_tuning", lambda rt: False)
    monkeypatch.setattr(tuner, "_time", None)  # would raise if called
    assert ResidentT2S(t2s).resident_decoder.tuning == {"plan": "default", "source": "untuned", "timed": 0}
    assert not cache.exists()  # no folder, no lock file


def test_settings(rt, t2s, cache, monkeypatch):
    monkeypatch.setenv("WSVK_TUNE", "off")
    dec = ResidentT2S(t2s).resident_decoder
    assert dec.tuning == {"plan": "default", "source": "off", "timed": 0} and dec.plan.ch == dec.plan.auto_ch()
    assert tune_cache.entries(str(cache)) == []
    monkeypatch.setenv("WSVK_PLAN", "split32")
    assert ResidentT2S(t2s).resident_decoder.plan.ch == 32
    monkeypatch.setenv("WSVK_PLAN", "s2a:split9999, t2s:split128")
    assert ResidentT2S(t2s).resident_decoder.plan.ch == 128
    monkeypatch.setenv("WSVK_PLAN", "fastest-please")
    with pytest.raises(ConfigError, match=r"WSVK_PLAN: 'fastest-please' is not a candidate of the t2s decoder; use one "
                                          r"of: default, .*\(t2s:NAME,s2a:NAME names one per decoder\)"):
        ResidentT2S(t2s)
    monkeypatch.setenv("WSVK_TUNE", "sometimes")
    with pytest.raises(ConfigError, match="WSVK_TUNE='sometimes' is not valid; use one of: auto, off, force"):
        config.check_all()


def test_tune_command_and_info(rt, tmp_path, cache, monkeypatch, capsys):
    paths = tm.write_all(tmp_path / "models")
    out = tmp_path / "tune.json"
    rc = main(["tune", "--t2s", str(paths["t2s"]), "--s2a", str(paths["s2a"]), "--vocoder", str(paths["vocoder"]),
               "--json", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    data = json.loads(out.read_text())
    assert [d["name"] for d in data["decoders"]] == ["t2s", "s2a"]
    for d in data["decoders"]:
        assert isinstance(d["layers"], int) and sum(c["chosen"] for c in d["candidates"]) == 1
        assert {"name", "dispatches_per_step", "ms_per_step", "chosen"} <= set(d["candidates"][0])
    header, *rows = printed.out.splitlines()
    assert header.split()[:3] == ["decoder", "candidate", "dispatches/step"]
    assert sum(r.endswith("*") for r in rows) == 2
    assert main(["info"]) == 0
    listing = capsys.readouterr().out
    assert f"tuning cache: {cache} (2 entries" in listing
    for d in data["decoders"]:
        chosen = next(c["name"] for c in d["candidates"] if c["chosen"])
        assert f": {d['name']} {d['layers']}x" in listing and f"-> {chosen}" in listing


def test_the_default_stays_unless_clearly_faster(rt, t2s, cache, monkeypatch):
    """MARGIN and the second timing, with made-up timings: the fastest candidate and the default are
    timed twice and compared by their best times; 2% faster keeps the default, 10% replaces it."""
    dec = ResidentT2S(t2s, slots=2).resident_decoder  # tuned once for real: pipelines compiled
    monkeypatch.setattr(tuner, "BUDGET_S", 1e9)
    cands = tuner.candidates(dec)
    for speedup, expect in ((0.98, "default"), (0.90, "split128")):
        calls = []

        def fake(dec, c, steps, speedup=speedup, calls=calls):
            calls.append(c.name)
            first = c.name not in calls[:-1]
            ms = 10.0 * (speedup if c.name == "split128" else 1.0) * (1.5 if first and c.name == "default" else 1.0)
            return {"dispatches_per_step": dec.dispatches_per_step, "ms_per_step": ms, "record_ms_per_step": 0.1,
                    "compile_s": 0.0}

        monkeypatch.setattr(tuner, "_time", fake)
        rows = tuner.tune(dec, cands, "t2s")
        assert [r["name"] for r in rows if r["chosen"]] == [expect] and dec.tuning["plan"] == expect
        assert calls[0] == "default" and calls[-1] == "default"  # the default's first timing (warm-up) is not its best
        assert {r["name"]: r["ms_per_step"] for r in rows}["default"] == 10.0
        if rt.has_subgroups:  # the pruned search tries the other reduction for the best split only
            assert sum(n.endswith("-wgsum") for n in set(calls)) == 1


def test_a_failure_while_tuning_leaves_the_default(rt, t2s, cache, monkeypatch, capsys):
    real = tuner._time

    def failing(dec, c, steps):
        if c.name != "default":
            raise GpuError("validation error: a driver rejected the pipeline")
        return real(dec, c, steps)

    monkeypatch.setattr(tuner, "_time", failing)
    monkeypatch.setattr(tuner, "BUDGET_S", 1e9)
    res = ResidentT2S(t2s)
    assert res.resident_decoder.tuning == {"plan": "default", "source": "failed", "timed": 0}
    assert res.resident_decoder.plan.ch == res.resident_decoder.plan.auto_ch()
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(err) == 1 and "tuning the t2s decode step failed (validation error" in err[0]
    assert tune_cache.entries(str(cache)) == []  # nothing kept: the next load tries again
    assert torch.equal(gpu_tokens(res), cpu_tokens(t2s))
