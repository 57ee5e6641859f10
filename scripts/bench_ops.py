#!/usr/bin/env python
"""Time each kernel family on WhisperSpeech's shapes next to numpy, torch CPU and torch CUDA.

    python scripts/bench_ops.py [--json OUT] [--quick] [--big] [--only NAME]

The rows are the case tables' benchmark cases (wsvk/kernels/cases/: tag "bench", "quick" for
--quick, "big" added by --big). Every row is measured in this one run: the wsvk kernel (GPU-resident inputs, one submit per
call, the time of a batch of calls divided by their number: what an op-by-op caller gets), its
GPU time alone from timestamps where the adapter has timestamp-query ("wsvkGPU": what the
resident paths get, where many dispatches share one submit), numpy, torch on the CPU (all
threads) and torch CUDA when present. --big adds GEMV 8192x8192 and matmul 4096^3 (the
issue's targets; slow anywhere but a real GPU) and times both tiled-matmul variants (64x64 and
128x128 tiles, "[t64]"/"[t128]") on 4096^3 and on Vocos' pointwise conv, to check the choice
wsvk.kernels.matmul.tile_size makes. Lavapipe timings mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

import torch  # noqa: E402

from wsvk.gpu import get_runtime  # noqa: E402
from wsvk.kernels import cases as kcases  # noqa: E402


def timeit(fn, min_time=0.2, max_reps=200) -> float:
    """Seconds per call: one warm-up, then repeat until min_time has passed."""
    fn()
    reps, start = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time or reps >= max_reps:
            return elapsed / reps


def cuda_time(fn, min_time=0.2) -> float | None:
    if not torch.cuda.is_available():
        return None
    fn()
    torch.cuda.synchronize()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_time:
        fn()
        reps += 1
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps


def kernel_time(rt, fn, reps=5) -> float | None:
    """GPU seconds per call from timestamps around each dispatch (reps calls in one submit); None
    without timestamp-query."""
    if not rt.has_timestamps:
        return None
    fn()  # warm: pipelines and bind groups
    with rt.recorder("bench", timestamps=True) as rec:
        keep = [fn() for _ in range(reps)]  # noqa: F841 (outputs alive until the submit)
    return 1e-3 * sum(ms for _, ms in rec.gpu_ms) / reps


def cases(big: bool, quick: bool, only: str | None = None) -> list:
    """The case tables' benchmark cases, in table order; only: those whose name contains it."""
    tags = {"quick"} if quick else {"bench"} | ({"big"} if big else set())
    return [c for table in kcases.TABLES.values() for c in table if c.tags & tags and (only or "") in c.name]


def upload(rt, a):
    """A case input on the GPU (complex data as float32 pairs, as the GPU face takes it)."""
    if not isinstance(a, np.ndarray):
        return a
    if np.iscomplexobj(a):
        a = np.ascontiguousarray(a, np.complex64).view(np.float32).reshape(*a.shape, 2)
    return rt.upload(a)


def run(args, save=lambda results: None) -> list[dict]:
    """One row per case; save(results) after each (a run cut short keeps what it measured)."""
    rt = get_runtime()
    torch.set_num_threads(os.cpu_count() or 1)
    cuda = torch.cuda.is_available()
    results = []
    for case in cases(args.big, args.quick, args.only):
        arrays = case.cast(case.make())
        f32 = [a.astype(np.complex64 if np.iscomplexobj(a) else np.float32) if isinstance(a, np.ndarray) else a
               for a in arrays]
        gpu_in = [upload(rt, a) for a in f32]
        gpu_fn = lambda: case.ours(*gpu_in)  # noqa: E731
        probe = rt.empty((1,))

        def gpu_batch(n=10):  # n calls (one submit each), then a tiny readback waits for them all
            keep = [gpu_fn() for _ in range(n)]
            rt.read(probe)
            return keep

        t_gpu = timeit(gpu_batch, args.min_time) / 10
        t_kernel = kernel_time(rt, gpu_fn)
        t_np = t_torch = t_cuda = None
        if "[t" not in case.name:  # baselines once per shape, not again for each pinned variant
            if case.numpy_fn is not None:
                t_np = timeit(lambda: case.numpy_fn(*f32), args.min_time, max_reps=20)
            if case.torch_fn is not None:
                t_in = [torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in f32]
                t_torch = timeit(lambda: case.torch_fn(*t_in), args.min_time, max_reps=50)
                if cuda:
                    t_dev = [t.cuda() if isinstance(t, torch.Tensor) else t for t in t_in]
                    t_cuda = cuda_time(lambda: case.torch_fn(*t_dev), args.min_time)
        unit, amount = case.work
        row = {"family": case.family, "case": case.name, "unit": unit}
        for key, t in (("wsvk", t_gpu), ("wsvk_gpu", t_kernel), ("numpy", t_np), ("torch_cpu", t_torch),
                       ("torch_cuda", t_cuda)):  # None: not measured
            row[f"{key}_ms"] = None if t is None else t * 1e3
            row[f"{key}_rate"] = None if t is None else amount / t / 1e9
        results.append(row)
        save(results)
    return results


def table(results, adapter: str) -> str:
    fmt = lambda v: f"{'-':>9}" if v is None else f"{v:9.3f}"  # noqa: E731
    lines = [f"adapter: {adapter}",
             f"{'case':<44} {'unit':<8} {'wsvk':>9} {'wsvkGPU':>9} {'numpy':>9} {'torchCPU':>9} {'torchCUDA':>9}"
             f"   (ms: wsvk / wsvkGPU / torch CPU)"]
    for r in results:
        gpu_ms = "-" if r["wsvk_gpu_ms"] is None else f"{r['wsvk_gpu_ms']:.3f}"
        if r["torch_cpu_ms"] is None and r["numpy_ms"] is None:  # a variant row: baselines on the row above
            lines.append(f"{r['case']:<44} {r['unit']:<8} {fmt(r['wsvk_rate'])} {fmt(r['wsvk_gpu_rate'])}"
                         f"   ({r['wsvk_ms']:.3f} / {gpu_ms} ms)")
            continue
        lines.append(f"{r['case']:<44} {r['unit']:<8} {fmt(r['wsvk_rate'])} {fmt(r['wsvk_gpu_rate'])} "
                     f"{fmt(r['numpy_rate'])} {fmt(r['torch_cpu_rate'])} {fmt(r['torch_cuda_rate'])}   "
                     f"({r['wsvk_ms']:.3f} / {gpu_ms} / {fmt(r['torch_cpu_ms']).strip()})")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke run on lavapipe)")
    p.add_argument("--big", action="store_true", help="add GEMV 8192^2 and matmul 4096^3")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds per measurement")
    p.add_argument("--only", help="only the cases whose name contains this (e.g. 8192: the big GEMV)")
    args = p.parse_args(argv)
    if not cases(args.big, args.quick, args.only):
        p.error(f"no benchmark case's name contains {args.only!r}")
    rt = get_runtime()
    adapter = f"{rt.info['name']} ({rt.info['backend']}, {rt.info['type']})"
    if rt.info["type"] == "CPU":
        print("note: a software adapter: these timings say nothing about a GPU", file=sys.stderr)
    meta = {"adapter": adapter, "host": platform.node(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}

    def save(results):
        if args.json:
            args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))

    print(table(run(args, save), adapter))
    return 0


if __name__ == "__main__":
    sys.exit(main())
