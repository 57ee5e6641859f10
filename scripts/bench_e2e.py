#!/usr/bin/env python
"""End-to-end WhisperSpeech speed: wsvk's resident GPU path against torch CPU and torch CUDA.

    python scripts/bench_e2e.py --size small [--json OUT] [--steps 100] [--vocos-seconds 10]
    python scripts/bench_e2e.py --batch 1,2,4,8,16 [--size small --s2a-size medium] [--json OUT]

Builds random-weight models of whisperspeech's size presets (no download) and times, in one
process and one run, for every backend available here:
  T2S ms/token and S2A ms/step (decode steps only: the per-chunk encoder and prefill are timed
  apart, as "first_ms"),
  Vocos ms per --vocos-seconds of audio, the end-to-end real-time factor for 10 s of speech
  (250 semantic tokens, 750 acoustic steps, 10 s of Vocos), and for wsvk the GPU submits and
  dispatches per decode step, the host time spent recording one (hidden behind the GPU: the
  next step is recorded while one runs), the host time waiting for the logits, and the step time
  with each step recorded when it runs ("inline": what the pre-recording saves), and the GPU
  time of one step by kind of dispatch (timestamps, where the adapter has timestamp-query).
Backends: wsvk (WSVK_BACKEND/WSVK_ADAPTER pick the adapter), torch CPU (all threads), torch CUDA
eager (where CUDA exists). Timings on a software adapter (lavapipe) mean nothing.

--batch B1,B2,...: batched decode instead (defaults: T2S small, S2A medium, the released pair).
For each B, B sequences share each decode step of a decoder with B slots: the step time (submit
to logits), the host time sampling between steps ("feed"), the aggregate tokens per second and
the GPU time of one B-column step by kind of dispatch; then a 10-chunk text (--long-chunks)
through the pipeline, all chunks decoded together against one chunk at a time (slots=1), with
its synthesis time and x real time; and torch CUDA eager's own batched generate (whisperspeech's
bs=) as the same-run baseline where CUDA exists.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

import torch  # noqa: E402

from wsvk.tts.models import RANDOM_SIZES, random_s2a, random_t2s, random_vocos  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog, then rests in the warm afternoon sun."


class StepClock:
    """Times decode steps through whisperspeech's `step` callback: from the first call to the last."""

    def __init__(self, sync=lambda: None, submits=lambda: 0):
        self.sync, self.submits, self.times, self.counts = sync, submits, [], []

    def __call__(self):
        self.sync()
        self.times.append(time.perf_counter())
        self.counts.append(self.submits())

    def submits_per_step(self) -> float:
        return (self.counts[-1] - self.counts[0]) / (len(self.counts) - 1)

    def per_step_ms(self) -> float:
        if len(self.times) < 2:
            raise RuntimeError("too few decode steps to time: raise --steps")
        return 1e3 * (self.times[-1] - self.times[0]) / (len(self.times) - 1)


def time_t2s(model, steps: int, clock: StepClock) -> tuple[float, float]:
    """(ms per decode token, ms before the first step: encoder + prefill)."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model.generate(TEXT, N=steps + 2, step=clock, show_progress_bar=False)
    return clock.per_step_ms(), 1e3 * (clock.times[0] - t0)


def time_s2a(model, stoks, spk, steps: int, clock: StepClock) -> tuple[float, float]:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model.generate(stoks, spk, N=steps + 3, step=clock, show_progress_bar=False)
    return clock.per_step_ms(), 1e3 * (clock.times[0] - t0)


def time_vocos(decode, reps: int, sync) -> float:
    decode()  # warm-up: pipelines, buffers
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        decode()
    sync()
    return 1e3 * (time.perf_counter() - t0) / reps


def rtf(t2s_ms: float, s2a_ms: float, vocos10_ms: float) -> float:
    """How many times faster than real time 10 s of speech is made (decode steps + Vocos)."""
    seconds = (250 * t2s_ms + 750 * s2a_ms + vocos10_ms) / 1e3
    return 10.0 / seconds


def inputs(args, s2a):
    g = torch.Generator().manual_seed(1)
    n_stoks = max(2, min(int(s2a.stoks_len) - 2, args.steps // 3 + 2))
    stoks = torch.randint(0, int(s2a.stoks_codes) - 1, (n_stoks,), generator=g)
    spk = torch.randn(1, int(s2a.spk_width or s2a.width), generator=g)
    frames = max(1, int(75 * args.vocos_seconds))
    codes = torch.randint(0, 1024, (1, 4, frames), generator=g)
    return stoks, spk, codes


def models(args):
    return random_t2s(args.size), random_s2a(args.s2a_size), random_vocos()


def bench_torch(args, device: str) -> dict:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    # fresh models (the same seeds): a used whisperspeech model keeps its RoPE tables as plain
    # attributes that .to(device) leaves behind, and vocos' weight_norm defeats deepcopy
    t2s, s2a, vocos = (m.to(device) for m in models(args))
    stoks, spk, codes = inputs(args, s2a)
    t2s_ms, t2s_pre = time_t2s(t2s, args.steps, StepClock(sync))
    s2a_ms, s2a_pre = time_s2a(s2a, stoks, spk.to(device), args.steps, StepClock(sync))
    codes = codes.to(device)

    def decode():
        with torch.inference_mode():
            feats = vocos.codes_to_features(codes.permute(1, 0, 2))
            return vocos.decode(feats, bandwidth_id=torch.tensor(1, device=device))

    voc_ms = time_vocos(decode, args.reps, sync)
    return {"t2s_ms_per_token": t2s_ms, "t2s_first_ms": t2s_pre, "s2a_ms_per_step": s2a_ms,
            "s2a_first_ms": s2a_pre, "vocos_ms": voc_ms}


def by_kind(timed) -> dict[str, float]:
    """[(label, GPU ms)] of single dispatches -> ms summed per kind of dispatch, largest first."""
    kinds: dict[str, float] = {}
    for label, ms in timed:
        kinds[label] = kinds.get(label, 0.0) + ms
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


def gpu_profile(name: str, dec, pos: int) -> dict:
    """GPU time of one decode step at `pos`, from per-dispatch timestamps, per kind of dispatch;
    {} without timestamp-query."""
    if not dec.rt.has_timestamps:
        return {}
    top = by_kind(dec.profile_step([0] * dec.NQ, pos))
    return {f"{name}_gpu_ms_per_step": sum(top.values()), f"{name}_gpu_ms_by_kernel": top}


def bench_wsvk(t2s, s2a, vocos, args) -> dict:
    from wsvk.resident import ResidentS2A, ResidentT2S
    from wsvk.resident import ResidentVocos
    from wsvk.gpu import get_runtime

    rt = get_runtime()
    r_t2s, r_s2a, r_voc = ResidentT2S(t2s), ResidentS2A(s2a), ResidentVocos(vocos)
    stoks, spk, codes = inputs(args, s2a)
    out = {"adapter": f"{rt.info['name']} ({rt.info['backend']}, {rt.info['type']})"}
    submits = lambda: rt.stats["submits"]  # noqa: E731
    for name, run in (("t2s", lambda clock: time_t2s(r_t2s, args.steps, clock)),
                      ("s2a", lambda clock: time_s2a(r_s2a, stoks, spk, args.steps, clock))):
        mod = r_t2s if name == "t2s" else r_s2a
        run(StepClock())  # warm-up: pipelines, bind groups, buffers
        mod.reset_counters()
        clock = StepClock(submits=submits)
        per_step, first = run(clock)
        c = mod.counters()
        mod.resident_decoder.prerecord = False  # the same steps, each recorded when it runs
        inline, _ = run(StepClock())
        mod.resident_decoder.prerecord = True
        unit = "token" if name == "t2s" else "step"
        out.update({f"{name}_ms_per_{unit}": per_step, f"{name}_first_ms": first,
                    f"{name}_dispatches_per_step": c["dispatches_per_step"],
                    f"{name}_submits_per_step": clock.submits_per_step(),
                    f"{name}_record_ms_per_step": 1e3 * c["record_s_per_step"],
                    f"{name}_wait_ms_per_step": 1e3 * c["wait_s_per_step"],
                    f"{name}_gap_ms_per_step": 1e3 * c["gap_s_per_step"],
                    f"{name}_inline_ms_per_{unit}": inline})
        out.update(gpu_profile(name, mod.resident_decoder, min(args.steps, mod.resident_decoder.self_len - 1)))
    out["vocos_ms"] = time_vocos(lambda: r_voc.decode_codes(codes, bandwidth_id=1), args.reps, lambda: None)
    out["vocos_dispatches"] = r_voc.dispatches_per_call
    kinds = by_kind(r_voc.profile_codes(codes, bandwidth_id=1))  # {} without timestamp-query
    if kinds:
        out["vocos_gpu_ms"] = sum(kinds.values())
        out["vocos_gpu_ms_by_kernel"] = kinds
    return out


def long_text(chunks: int) -> str:
    """About `chunks` T2S windows (549 bytes) of sentences: the pipeline splits it into that many."""
    sentence = "This sentence, number {:03d}, is one of many in a long text that goes on and on for a while."
    per_chunk = 549 // (len(sentence.format(0)) + 1)
    return " ".join(sentence.format(i) for i in range(chunks * per_chunk))


def bench_batch(args, save=lambda res: None) -> dict:
    """Per B: step ms, tokens/s and the GPU time of one step by kind, for T2S and S2A; then the
    10-chunk text, batched against one chunk at a time; torch CUDA's bs=B where CUDA exists.
    One decoder per stage with max(B) slots serves every B (a step's work depends only on its
    active columns, so it is the step of a B-slot decoder) and its weights are uploaded once.
    save(res) after each part: a run cut short keeps what it measured."""
    from wsvk.gpu import get_runtime
    from wsvk.resident import ResidentS2A, ResidentT2S
    from wsvk.tts.pipeline import SAMPLE_RATE, Pipeline

    rt = get_runtime()
    t2s, s2a, vocos = models(args)
    stoks, spk, _ = inputs(args, s2a)
    out = {"adapter": f"{rt.info['name']} ({rt.info['backend']}, {rt.info['type']})", "per_batch": {}}
    slots = max(args.batch)
    stages = (("t2s", ResidentT2S(t2s, slots=slots), lambda m, g: m.sequence(TEXT, N=args.steps + 2, generator=g)),
              ("s2a", ResidentS2A(s2a, slots=slots), lambda m, g: m.sequence(stoks, spk, N=args.steps + 3, generator=g)))
    for B in args.batch:
        row = {}
        for name, mod, make in stages:
            mod.run([make(mod, torch.Generator().manual_seed(i)) for i in range(B)])  # warm-up
            mod.reset_counters()
            mod.run([make(mod, torch.Generator().manual_seed(i)) for i in range(B)])
            c = mod.counters()
            row[f"{name}_step_ms"] = 1e3 * c["step_s_per_step"]
            row[f"{name}_feed_ms"] = 1e3 * c["feed_s_per_step"]  # host sampling between steps
            row[f"{name}_gap_ms"] = 1e3 * c["gap_s_per_step"]  # all the host's time between steps
            row[f"{name}_tokens_per_s"] = c["columns_per_step"] / (c["step_s_per_step"] + c["feed_s_per_step"])
            if rt.has_timestamps:
                dec = mod.resident_decoder
                cols = [(s, [0] * dec.NQ, min(args.steps, dec.self_len - 1)) for s in range(B)]
                kinds = by_kind(dec.profile_step(None, 0, columns=cols))
                row[f"{name}_gpu_ms_per_step"], row[f"{name}_gpu_ms_by_kernel"] = sum(kinds.values()), kinds
        out["per_batch"][B] = row
        save(out)
    if torch.cuda.is_available():
        cuda = out["torch_cuda_per_batch"] = {}
        # before the long text: if the step's time cap cuts this run short, the baseline is kept
        t2s_c, s2a_c, _ = (m.to("cuda") for m in models(args))
        for m in (t2s_c, s2a_c):
            room_for(m, max(args.batch))
        for B in args.batch:
            try:
                cuda[B] = torch_batch_steps(t2s_c, s2a_c, stoks.cuda(), spk.cuda(), B, args.steps,
                                            torch.cuda.synchronize)
            except Exception as e:  # noqa: BLE001 - a baseline's failure must not lose what was measured
                cuda[B] = {"error": f"{type(e).__name__}: {e}"}
            save(out)
        del t2s_c, s2a_c
    del stages  # the pipelines below build their own decoders
    text = args.long_text or long_text(args.long_chunks)
    for label, slots in (("batched", max(args.batch)), ("one_chunk_at_a_time", 1))[:2 if text else 0]:
        pipe = Pipeline(t2s, s2a, vocos, random_weights=args.size, random_t2s=True, slots=slots)
        pipe.generate("Warm up.", seed=1)
        t0 = time.perf_counter()
        audio = pipe.generate(text, seed=1)
        secs = time.perf_counter() - t0
        out[f"long_text_{label}"] = {"chunks": len(pipe.last.chunks), "seconds": secs,
                                     "audio_seconds": audio.size / SAMPLE_RATE,
                                     "realtime_x": audio.size / SAMPLE_RATE / secs,
                                     "stage_seconds": dict(pipe.last.seconds)}
        del pipe
        save(out)
    return out


def room_for(model, B: int):
    """whisperspeech's KV caches hold optimize()'s max_batch_size sequences (1 for the CPU
    models): make room for B, as generate(bs=B) needs."""
    lengths = (model.stoks_len, model.ttoks_len) if hasattr(model, "ttoks_len") else (model.ctx_n, model.stoks_len)
    for layer in model.decoder.layers:
        layer.setup_kv_cache(B, *lengths)
    return model


def torch_batch_steps(t2s, s2a, stoks, spk, B: int, steps: int, sync) -> dict:
    """ms per step of whisperspeech's own batched generate (bs=B), T2S and S2A."""
    clock = StepClock(sync)
    torch.manual_seed(0)
    t2s.generate(TEXT, N=steps + 2, bs=B, step=clock, show_progress_bar=False)
    row = {"t2s_step_ms": clock.per_step_ms()}
    clock = StepClock(sync)
    s2a.generate(stoks, spk, N=steps + 3, bs=B, step=clock, show_progress_bar=False)
    row["s2a_step_ms"] = clock.per_step_ms()
    return row


def print_batch(res: dict) -> None:
    print(f"batched decode; adapter: {res['adapter']}")
    print("(feed ms: sampling between two steps; gap ms: all the host's time between them, the decoder's GPU work idle)")
    print(f"{'B':>4} {'T2S ms/step':>12} {'feed ms':>8} {'gap ms':>7} {'T2S tok/s':>10} {'S2A ms/step':>12} {'feed ms':>8}"
          f" {'gap ms':>7}"
          f" {'S2A tok/s':>10} {'T2S GPU ms':>11} {'S2A GPU ms':>11} {'CUDA T2S ms':>12} {'CUDA S2A ms':>12}")
    cuda = res.get("torch_cuda_per_batch", {})
    fmt = lambda v, w: f"{'-':>{w}}" if v is None else f"{v:>{w}.2f}"  # noqa: E731
    for B, r in res["per_batch"].items():
        c = cuda.get(B, {})
        print(f"{B:>4} {fmt(r['t2s_step_ms'], 12)} {fmt(r.get('t2s_feed_ms'), 8)} {fmt(r.get('t2s_gap_ms'), 7)}"
              f" {fmt(r['t2s_tokens_per_s'], 10)} {fmt(r['s2a_step_ms'], 12)} {fmt(r.get('s2a_feed_ms'), 8)}"
              f" {fmt(r.get('s2a_gap_ms'), 7)}"
              f" {fmt(r['s2a_tokens_per_s'], 10)} {fmt(r.get('t2s_gpu_ms_per_step'), 11)}"
              f" {fmt(r.get('s2a_gpu_ms_per_step'), 11)} {fmt(c.get('t2s_step_ms'), 12)} {fmt(c.get('s2a_step_ms'), 12)}")
    for B, r in res["per_batch"].items():
        for st in ("t2s", "s2a"):
            kinds = r.get(f"{st}_gpu_ms_by_kernel")
            if kinds:
                print(f"B={B} {st.upper()} GPU ms by kind: " + ", ".join(f"{k} {v:.3f}" for k, v in list(kinds.items())[:6]))
    for label in ("batched", "one_chunk_at_a_time"):
        r = res.get(f"long_text_{label}")
        if r is None:
            continue
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in r.get("stage_seconds", {}).items() if v)
        print(f"{r['chunks']}-chunk text, {label.replace('_', ' ')}: {r['seconds']:.2f} s for {r['audio_seconds']:.1f} s"
              f" of audio, {r['realtime_x']:.2f}x real time ({stages})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=RANDOM_SIZES, default="small")
    p.add_argument("--s2a-size", choices=RANDOM_SIZES, help="S2A preset when it differs from --size "
                   "(the released default pair is T2S small + S2A medium)")
    p.add_argument("--steps", type=int, default=100, help="decode steps timed per stage (>= 3)")
    p.add_argument("--vocos-seconds", type=float, default=10.0, help="audio length of the Vocos timing")
    p.add_argument("--reps", type=int, default=3, help="Vocos repetitions")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--skip-cpu", action="store_true", help="no torch CPU baseline (slow for 'small')")
    p.add_argument("--batch", help="comma-separated slot counts: the batched-decode benchmark")
    p.add_argument("--long-chunks", type=int, default=10, help="with --batch: chunks of the long text (0: skip it)")
    p.add_argument("--long-text", help="with --batch: this text instead (a short one for a quick run: random T2S "
                                       "weights never end a chunk, so its length sets the steps)")
    args = p.parse_args(argv)
    if args.steps < 3:
        p.error("--steps must be at least 3")
    torch.set_num_threads(os.cpu_count() or 1)
    if args.batch:
        try:
            args.batch = [int(b) for b in args.batch.split(",")]
        except ValueError:
            p.error(f"--batch takes comma-separated integers, got {args.batch!r}")
        if min(args.batch) < 1:
            p.error("--batch values must be >= 1")
        args.s2a_size = args.s2a_size or ("medium" if args.size == "small" else args.size)
        def save(res):
            if args.json:
                args.json.write_text(json.dumps({"size": args.size, "s2a_size": args.s2a_size, "steps": args.steps,
                                                 "torch": torch.__version__, "batch": res}, indent=2))

        print_batch(bench_batch(args, save))
        return 0
    args.s2a_size = args.s2a_size or args.size
    scale = 10.0 / args.vocos_seconds  # Vocos figures per 10 s of audio

    def save(results):  # after each backend: a run cut short keeps what it measured
        for r in results.values():
            r["vocos_ms_per_10s"] = r["vocos_ms"] * scale
            r["realtime_x"] = rtf(r["t2s_ms_per_token"], r["s2a_ms_per_step"], r["vocos_ms_per_10s"])
        if args.json:
            args.json.write_text(json.dumps({"size": args.size, "s2a_size": args.s2a_size, "steps": args.steps,
                                             "torch": torch.__version__, "results": results}, indent=2))

    results = {"wsvk": bench_wsvk(*models(args), args)}
    save(results)
    baselines = ([] if args.skip_cpu else ["cpu"]) + (["cuda"] if torch.cuda.is_available() else [])
    for device in baselines:  # a failing baseline is reported, and the other figures kept
        try:
            results[f"torch_{device}"] = bench_torch(args, device)
            save(results)
        except Exception as e:  # noqa: BLE001
            print(f"torch {device} baseline failed: {type(e).__name__}: {e}", file=sys.stderr)
    print(f"size {args.size} (S2A {args.s2a_size}), {args.steps} decode steps, Vocos {args.vocos_seconds} s; adapter: "
          f"{results['wsvk']['adapter']}")
    keys = [("t2s_ms_per_token", "T2S ms/token"), ("s2a_ms_per_step", "S2A ms/step"),
            ("vocos_ms_per_10s", "Vocos ms/10 s"), ("vocos_gpu_ms", "Vocos GPU ms/call"), ("realtime_x", "x real time"),
            ("t2s_first_ms", "T2S ms to 1st token"), ("s2a_first_ms", "S2A ms to 1st step")]
    for st, unit in (("t2s", "token"), ("s2a", "step")):
        S = st.upper()
        keys += [(f"{st}_dispatches_per_step", f"{S} dispatches/step"), (f"{st}_submits_per_step", f"{S} submits/step"),
                 (f"{st}_record_ms_per_step", f"{S} record ms/step"), (f"{st}_wait_ms_per_step", f"{S} wait ms/step"),
                 (f"{st}_gap_ms_per_step", f"{S} gap ms/step"),
                 (f"{st}_inline_ms_per_{unit}", f"{S} ms/{unit} inline"), (f"{st}_gpu_ms_per_step", f"{S} GPU ms/step")]
    names = list(results)
    print(f"{'':<22}" + "".join(f"{n:>13}" for n in names))
    for key, label in keys:
        cells = [results[n].get(key) for n in names]
        print(f"{label:<22}" + "".join(f"{'-':>13}" if c is None else f"{c:>13.3f}" for c in cells))
    for stage, what in (("t2s", "per step"), ("s2a", "per step"), ("vocos", "per call")):
        kinds = results["wsvk"].get(f"{stage}_gpu_ms_by_kernel")
        if kinds:
            print(f"{stage.upper()} GPU ms {what} by dispatch kind (one timestamped pass each): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in list(kinds.items())[:8]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
