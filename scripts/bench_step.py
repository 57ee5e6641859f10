#!/usr/bin/env python
"""One sequence's decode step, position by position: where its time goes (issue #17).

    python scripts/bench_step.py [--size small --s2a-size medium] [--chunk-seconds 10]
                                 [--positions 0,0.5,1] [--steps 20] [--precision f16,q8] [--gate]
                                 [--plans default,tuned]
                                 [--compile] [--cpu] [--json OUT]

For the resident T2S and S2A decoders (random weights of whisperspeech's presets; the released
pair, T2S small + S2A medium, by default) at each --precision (default: what WSVK_PRECISION gives),
and each of --plans (default: tuned, what the tuner chose for this GPU; `default` is the untuned
step, other names are candidates from `wsvk tune`), with the weight bytes a step reads (its GEMV
matrices; the KV caches come on top):
  chunk    ms per step over a whole chunk of --chunk-seconds of speech (T2S 25 tokens/s, S2A 75
           steps/s; whisperspeech's generate(), sampling included), from position 0 to its end:
           what a listener waits per step on average. A step attends over every key before it,
           so late steps cost more than the first hundred (what bench_e2e.py times);
  at each of --positions (fractions of that chunk): ms per step over a window of --steps
           decoder steps there (no sampling; the window at 1 ends at the chunk's last step), the
           GPU time of one step from per-dispatch timestamps (each dispatch in its own pass, so
           the sum runs a little over a real step's), by kind of dispatch, and the host's time to
           record a step (hidden behind the GPU's while it is the shorter: the next step is
           recorded while one runs).
--gate: the precision gate (wsvk.quality) on these presets, random and trained-like weights, each
decoder teacher-forced over a whole chunk against CPU f32 at every --precision but f32.
Baselines in the same run, over --steps steps from the start (torch attends over its whole
fixed-size cache every step, so its time does not depend on the position): torch CUDA eager
(f32) and, with --compile, whisperspeech's fastest path (what its optimize() does: f16,
torch.compile in "reduce-overhead" mode, which replays CUDA graphs) where CUDA exists; --cpu
adds torch CPU eager. Timings on a software adapter (lavapipe) mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

import torch  # noqa: E402
from bench_e2e import StepClock, by_kind, inputs, time_s2a, time_t2s  # noqa: E402

from wsvk.tts.models import RANDOM_SIZES, random_s2a, random_t2s  # noqa: E402

RATES = {"t2s": 25, "s2a": 75}  # decode steps per second of speech (as bench_e2e.rtf counts them)


def chunk_steps(stage: str, seconds: float) -> int:
    return max(3, round(RATES[stage] * seconds))


def positions(fractions, chunk: int, steps: int, limit: int) -> list[int]:
    """Where windows of `steps` decoder steps start at these fractions of a chunk: inside the
    chunk (the last one ends at its last step) where it holds `steps`, always inside the cache
    (`limit` positions; limit >= steps)."""
    last = max(0, min(chunk - steps, limit - steps))
    return sorted({round(f * last) for f in fractions})


def time_at(dec, pos: int, steps: int) -> dict:
    """ms per decoder step over `steps` steps from `pos` (one slot, token 0, the next step
    recorded ahead as in generation), the host's recording ms per step, and the GPU time of one
    step at `pos` by kind of dispatch where the adapter has timestamps."""
    toks = [0] * dec.NQ
    dec.step(toks, pos)  # warm: this key's first step is recorded inline, the next one ahead
    r0, t0 = dec.record_seconds, time.perf_counter()
    for i in range(steps):
        dec.step(toks, pos + i)
    row = {"pos": pos, "ms_per_step": 1e3 * (time.perf_counter() - t0) / steps,
           "record_ms": 1e3 * (dec.record_seconds - r0) / steps}
    if dec.rt.has_timestamps:
        kinds = by_kind(dec.profile_step(toks, pos))
        row["gpu_ms"], row["gpu_ms_by_kind"] = sum(kinds.values()), kinds
    return row


STEP_MATRICES = ("qkv", "out", "cross_q", "cross_out", "fc1", "fc2")


def step_weight_bytes(dec) -> int:
    """Bytes of the matrices one decode step's GEMVs read (every layer's and the head's)."""
    return (sum(getattr(g, m)[0].nbytes for g in dec.plan.layers for m in STEP_MATRICES)
            + sum(w.nbytes for _, w, _, _ in dec.plan.head_w))


def bench_wsvk(args, out: dict) -> None:
    """Fills `out` precision by precision and stage by stage (args.save() after each)."""
    from wsvk.gpu import get_runtime

    rt = get_runtime()
    out["adapter"] = f"{rt.info['name']} ({rt.info['backend']}, {rt.info['type']})"
    t2s, s2a = random_t2s(args.size), random_s2a(args.s2a_size)
    for precision in args.precision or [rt.precision()[0]]:
        out[precision] = {}
        bench_precision(args, out[precision], precision, t2s, s2a)
    if args.gate:
        from wsvk import quality

        kinds = [p for p in args.precision or [rt.precision()[0]] if p != "f32"]
        out["gate"] = []
        for decoder, make in (("t2s", lambda: random_t2s(args.size)), ("s2a", lambda: random_s2a(args.s2a_size))):
            for weights, redraw in (("random", quality.unit_scale), ("trained-like", quality.trained_like)):
                for r in quality.gate(decoder, redraw(make(), seed=1), kinds, weights):
                    print(r.line(), flush=True)
                    out["gate"].append({**r.__dict__, "passed": r.passed})
                args.save()


def bench_precision(args, out: dict, precision: str, t2s, s2a) -> None:
    from wsvk.resident import ResidentS2A, ResidentT2S, tuner

    for stage, mod in (("t2s", ResidentT2S(t2s, precision=precision)), ("s2a", ResidentS2A(s2a, precision=precision))):
        dec = mod.resident_decoder
        rows = {}
        for label in args.plans:  # "tuned": what the tuner chose at load (WSVK_TUNE, the cache)
            cand = tuner.by_name(tuner.candidates(dec), dec.tuning["plan"] if label == "tuned" else label, stage,
                                 "--plans")
            dec.use_variant(cand.ch, cand.subgroups)
            rows[label] = {"plan": cand.name, **measure(args, stage, mod, s2a)}
        out[stage] = {**rows[args.plans[0]], **({"plans": rows} if len(rows) > 1 else {})}
        args.save()


def measure(args, stage: str, mod, s2a) -> dict:
    dec = mod.resident_decoder
    n = min(chunk_steps(stage, args.chunk_seconds), dec.self_len - 4)
    if stage == "t2s":
        run = lambda clock: time_t2s(mod, n, clock)  # noqa: E731
    else:
        stoks, spk, _ = inputs(SimpleNamespace(steps=n, vocos_seconds=0.1), s2a)
        run = lambda clock: time_s2a(mod, stoks, spk, n, clock)  # noqa: E731
    run(StepClock())  # warm-up: pipelines, bind groups, buffers, each key's first recording
    clock = StepClock()
    ms, _ = run(clock)
    ran = min(n, len(clock.times))  # T2S stops at its end token: random weights sample it now and then
    if ran < n:
        print(f"note: {stage.upper()} sampled its end token after {ran} of {n} steps: its chunk figure "
              "covers those", file=sys.stderr)
    limit = min(dec.self_len, dec.plan.P_pos or dec.self_len)  # positions a step may take
    return {"dispatches_per_step": dec.dispatches_per_step, "weight_bytes_per_step": step_weight_bytes(dec),
            "chunk_steps": ran, "chunk_ms_per_step": ms,
            "at": [time_at(dec, p, args.steps) for p in positions(args.positions, n, args.steps, limit)]}


def bench_torch(args, device: str, compiled: bool) -> dict:
    """whisperspeech's own decode over --steps steps: eager f32, or (compiled) f16 with
    torch.compile(mode="reduce-overhead"), as its optimize() sets up a model (ours come
    converted for the CPU already, so only optimize()'s last two steps are left to do)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    out = {}
    for stage, make in (("t2s", random_t2s), ("s2a", random_s2a)):
        model = make(args.size if stage == "t2s" else args.s2a_size).to(device)  # fresh: see bench_e2e
        if compiled:
            model.switch_dtypes(torch.float16)
            model.generate_next = torch.compile(model.generate_next, mode="reduce-overhead", fullgraph=True)
        if stage == "t2s":
            run = lambda clock: time_t2s(model, args.steps, clock)  # noqa: E731
        else:
            stoks, spk, _ = inputs(SimpleNamespace(steps=args.steps, vocos_seconds=0.1), model)
            spk = spk.to(device, torch.float16 if compiled else torch.float32)
            run = lambda clock: time_s2a(model, stoks.to(device), spk, args.steps, clock)  # noqa: E731
        run(StepClock(sync))  # warm-up (compiling and capturing the graphs, when compiled)
        out[f"{stage}_ms_per_step"] = run(StepClock(sync))[0]
        del model, run  # the lambda holds the model too
    return out


def print_report(res: dict) -> None:
    w = res["wsvk"]
    print(f"adapter: {w['adapter']}; T2S {res['size']}, S2A {res['s2a_size']}")
    for precision, r_p in w.items():
        if precision in ("adapter", "gate"):
            continue
        print_precision(precision, r_p)
    for g in w.get("gate", []):
        print(f"gate: {g['decoder']} {g['weights']} {g['precision']}: SNR {g['snr_db']:.1f} dB, top-1 "
              f"{100 * g['top1']:.2f}% over {g['steps']} steps: {'pass' if g['passed'] else 'FAIL'}")
    for name, b in res.items():
        if name.startswith("torch_"):
            figures = b.get("error") or ", ".join(f"{k.split('_')[0].upper()} {v:.3f} ms/step" for k, v in b.items())
            print(f"{name}: {figures}")


def print_precision(precision: str, w: dict) -> None:
    for stage in ("t2s", "s2a"):
        if stage not in w:
            continue
        for label, r in w[stage].get("plans", {"": w[stage]}).items():
            print_plan(f"{stage.upper()} {precision}" + (f" {label} ({r['plan']})" if label else ""), r)


def print_plan(title: str, r: dict) -> None:
    print(f"{title}: {r['dispatches_per_step']} dispatches/step, {r['weight_bytes_per_step'] / 2**20:.1f} MiB "
          f"of weights/step; {r['chunk_ms_per_step']:.3f} ms/step over a whole chunk of {r['chunk_steps']} steps")
    print(f"  {'pos':>6} {'ms/step':>9} {'GPU ms':>8} {'record ms':>10}  GPU ms by kind")
    for a in r["at"]:
        kinds = ", ".join(f"{k} {v:.3f}" for k, v in list(a.get("gpu_ms_by_kind", {}).items())[:6])
        gpu = f"{a['gpu_ms']:>8.3f}" if "gpu_ms" in a else f"{'-':>8}"
        print(f"  {a['pos']:>6} {a['ms_per_step']:>9.3f} {gpu} {a['record_ms']:>10.3f}  {kinds}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=RANDOM_SIZES, default="small", help="T2S preset")
    p.add_argument("--s2a-size", choices=RANDOM_SIZES, help="S2A preset (default: medium with a small T2S, "
                   "the released pair; else --size)")
    p.add_argument("--chunk-seconds", type=float, default=10.0, help="speech in the whole-chunk timing")
    p.add_argument("--positions", default="0,0.5,1", help="comma-separated fractions of the chunk to profile at")
    p.add_argument("--steps", type=int, default=20, help="steps timed at each position and by each baseline (>= 3)")
    p.add_argument("--precision", help="comma-separated precisions to time in this run: f32, f16, q8 (default: "
                   "WSVK_PRECISION's)")
    p.add_argument("--plans", default="tuned", help="comma-separated decode-step plans to time in this run: "
                   "default (untuned), tuned (what the tuner chose for this GPU) or candidate names (wsvk tune)")
    p.add_argument("--gate", action="store_true", help="also run the precision gate on these presets (whole chunks)")
    p.add_argument("--compile", action="store_true", help="add torch.compile + CUDA graphs (f16) where CUDA exists")
    p.add_argument("--cpu", action="store_true", help="add torch CPU eager")
    p.add_argument("--json", type=Path, help="write the results here (after each part)")
    args = p.parse_args(argv)
    if not 3 <= args.steps <= 256:
        p.error("--steps must be from 3 to 256")  # a window fits the smallest cache (T2S tiny's 750 positions)
    if not (math.isfinite(args.chunk_seconds) and args.chunk_seconds > 0):
        p.error("--chunk-seconds must be a positive number")
    try:
        args.positions = [float(f) for f in args.positions.split(",")]
    except ValueError:
        p.error(f"--positions takes comma-separated fractions, got {args.positions!r}")
    if not all(0.0 <= f <= 1.0 for f in args.positions):
        p.error("--positions must lie in [0, 1]")
    args.s2a_size = args.s2a_size or ("medium" if args.size == "small" else args.size)
    args.precision = args.precision and args.precision.split(",")
    if args.precision and not set(args.precision) <= {"f32", "f16", "q8"}:
        p.error(f"--precision takes f32, f16 and q8, got {','.join(args.precision)}")
    args.plans = [x.strip() for x in args.plans.split(",") if x.strip()] or ["tuned"]
    torch.set_num_threads(os.cpu_count() or 1)
    res = {"size": args.size, "s2a_size": args.s2a_size, "torch": torch.__version__, "wsvk": {}}

    def save():  # after each part: a run cut short keeps what it measured
        if args.json:
            args.json.write_text(json.dumps(res, indent=2))

    args.save = save
    bench_wsvk(args, res["wsvk"])
    runs = [("cpu", False)] * args.cpu
    if torch.cuda.is_available():
        runs += [("cuda", False)] + [("cuda", True)] * args.compile
    for device, compiled in runs:  # a failing baseline is reported, and the other figures kept
        name = f"torch_{device}_{'compiled_f16' if compiled else 'eager_f32'}"
        try:
            res[name] = bench_torch(args, device, compiled)
        except Exception as e:  # noqa: BLE001
            res[name] = {"error": f"{type(e).__name__}: {e}"}
        save()
    print_report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
