#!/usr/bin/env python
"""A corpus job's speed: rows/s and x real time of `python -m wsvk batch` against a plain loop over
Pipeline.generate(), the same rows and models, in one run.

    python scripts/bench_batch.py [--rows 200] [--size small --s2a-size medium] [--json OUT]

Random-weight models of whisperspeech's presets (the released pair by default); the rows are short
sentences of varied length with their own seeds. Both runs write FLAC files the same way, so the
difference is the batched decode. --loop-rows N times the loop on every (rows/N)-th row only (its
rows/s and x real time are those of that sample; the loop is the slow side, and a GPU lease is
short). Lavapipe timings mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")


def rows(n: int) -> list:
    from wsvk.corpus.rows import Row

    words = "the quick brown fox jumps over the lazy dog while the sun sets slowly".split()
    return [Row(i + 1, f"row{i:04d}", " ".join(words[: 3 + i % 11]).capitalize() + ".", seed=i) for i in range(n)]


def main(argv=None) -> int:
    from wsvk.corpus.job import synthesize
    from wsvk.router import active_backend
    from wsvk.tts.audio import write_file
    from wsvk.tts.models import RANDOM_SIZES, random_s2a, random_t2s, random_vocos
    from wsvk.tts.pipeline import SAMPLE_RATE, Pipeline

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--size", choices=RANDOM_SIZES, default="small")
    p.add_argument("--s2a-size", choices=RANDOM_SIZES, help="S2A preset (default: medium with small, else --size)")
    p.add_argument("--slots", type=int, default=None, help="decoder slots (default: WSVK_SLOTS or by the adapter)")
    p.add_argument("--loop-rows", type=int, default=None, help="time the loop over an evenly spaced sample of "
                   "this many rows (default: all of them)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    if args.rows < 1 or (args.loop_rows is not None and not 1 <= args.loop_rows <= args.rows):
        p.error("--rows must be >= 1 and --loop-rows between 1 and --rows")
    s2a_size = args.s2a_size or ("medium" if args.size == "small" else args.size)
    pipe = Pipeline(random_t2s(args.size), random_s2a(s2a_size), random_vocos(), random_weights=args.size,
                    random_t2s=True, slots=args.slots)
    backend, adapter = active_backend()
    job = rows(args.rows)
    pipe.generate("Warm up.", seed=0)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sample = job if args.loop_rows is None else job[:: len(job) // args.loop_rows][: args.loop_rows]
        loop_audio = 0.0
        t0 = time.perf_counter()
        for r in sample:  # the baseline: one row at a time
            audio = pipe.generate(r.text, seed=r.seed)
            write_file(folder / f"loop-{r.id}.flac", audio, SAMPLE_RATE)
            loop_audio += audio.size / SAMPLE_RATE
        loop_s = time.perf_counter() - t0
        if args.json:  # the baseline, kept if the batch job below is cut short
            args.json.write_text(json.dumps({"backend": backend, "adapter": adapter, "loop_over_generate": {
                "rows": len(sample), "seconds": loop_s, "audio_seconds": loop_audio}}, indent=2))
        slots = pipe.stages.resident["t2s"].slots if "t2s" in pipe.stages.resident else 1
        size = 2 * slots
        ordered = sorted(job, key=lambda r: -len(r.text))
        t0 = time.perf_counter()
        entries = []
        for i in range(0, len(ordered), size):
            synthesize(pipe, ordered[i:i + size], folder, "flac", backend, entries.extend)
        batch_s = time.perf_counter() - t0
    audio_s = sum(e["audio_seconds"] for e in entries)
    for name, n, secs, audio in (("loop_over_generate", len(sample), loop_s, loop_audio),
                                 ("batch_job", len(job), batch_s, audio_s)):
        results[name] = {"rows": n, "seconds": secs, "audio_seconds": audio, "rows_per_s": n / secs,
                         "realtime_x": audio / secs}
    loop, batch = results["loop_over_generate"], results["batch_job"]
    print(f"{len(job)} rows, {audio_s:.1f} s of audio; {backend} ({adapter}); T2S {args.size}, S2A {s2a_size}, "
          f"{slots} slots")
    print(f"{'':<20} {'rows':>5} {'seconds':>9} {'rows/s':>8} {'x real time':>12}")
    for name, r in results.items():
        print(f"{name:<20} {r['rows']:>5} {r['seconds']:>9.2f} {r['rows_per_s']:>8.2f} {r['realtime_x']:>12.2f}")
    print(f"batch job / loop: {batch['realtime_x'] / loop['realtime_x']:.2f}x the audio per second")
    if args.json:
        args.json.write_text(json.dumps({"backend": backend, "adapter": adapter, "rows": len(job), "slots": slots,
                                         "audio_seconds": audio_s, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
