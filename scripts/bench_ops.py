#!/usr/bin/env python
"""Time each kernel family on WhisperSpeech's shapes next to numpy, torch CPU and torch CUDA.

    python scripts/bench_ops.py [--json OUT] [--quick] [--big]

Every row is measured in this one run: the wsvk kernel (GPU-resident inputs, one submit per
call, the time of a batch of calls divided by their number: what an op-by-op caller gets), its
GPU time alone from timestamps where the adapter has timestamp-query ("wsvkGPU": what the
resident paths get, where many dispatches share one submit), numpy, torch on the CPU (all
threads) and torch CUDA when present. --big adds GEMV 8192x8192 and matmul 4096^3 (the
issue's targets; slow anywhere but a real GPU) and times both tiled-matmul variants (64x64 and
128x128 tiles, "[t64]"/"[t128]") on 4096^3 and on Vocos' pointwise conv, to check the choice
wsvk.ops.matmul.tile_size makes. Lavapipe timings mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
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

from wsvk import ops  # noqa: E402
from wsvk.runtime import get_runtime  # noqa: E402

mm = importlib.import_module("wsvk.ops.matmul")  # the module (wsvk.ops.matmul is also a function)


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


def cases(big: bool, quick: bool):
    """(family, name, work unit, amount, numpy fn args, tiled variant or None) for each row."""
    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    rows = []
    gemvs = [(768, 2304), (768, 3072), (3072, 768)] if not quick else [(768, 2304)]
    if big:
        gemvs.append((8192, 8192))
    for k, n in gemvs:
        rows.append(("linear", f"gemv 1x{k}->{n}", "GB/s", 4 * (k * n + k + n), (f32(1, k), f32(n, k)), None))
    mms = [((750, 1152, 384), (None,))] if not quick else [((64, 96, 48), (None, 128))]
    if big:  # Vocos' pointwise conv (10 s of audio) and the issue's target shape, both variants
        mms += [((750, 1536, 512), (None, 64, 128)), ((4096, 4096, 4096), (None, 64, 128))]
    for (m, n, k), tiles in mms:
        for tile in tiles:
            tag = "" if tile is None else f" [t{tile}]"
            rows.append(("linear", f"matmul {m}x{k}x{n}{tag}", "GFLOP/s", 2 * m * n * k, (f32(m, k), f32(n, k)), tile))
    for lq, lk, h in ([(1, 2250, 6), (750, 750, 6)] if not quick else [(1, 300, 2), (64, 64, 2)]):
        rows.append(("attention", f"attention q{lq} kv{lk} h{h} d64", "GFLOP/s", 4 * h * lq * lk * 64,
                     (f32(1, h, lq, 64), f32(1, h, lk, 64), f32(1, h, lk, 64)), None))
    c, t = (1024, 500) if not quick else (64, 50)  # ECAPA's dilated conv, 5 s of 100 Hz frames
    rows.append(("conv1d", f"conv1d {c}->{c} k3 d2 T{t}", "GFLOP/s", 2 * c * c * 3 * (t - 4),
                 (f32(1, c, t), f32(c, c, 3)), None))
    frames = 750 if not quick else 50
    spec = (f32(frames, 641) + 1j * f32(frames, 641)).astype(np.complex64)
    rows.append(("fft", f"irfft {frames}x641->1280", "GFLOP/s", int(2.5 * frames * 1280 * np.log2(1280)), (spec,), None))
    return rows


def run(args) -> list[dict]:
    rt = get_runtime()
    torch.set_num_threads(os.cpu_count() or 1)
    cuda = torch.cuda.is_available()
    results = []
    for family, name, unit, amount, arrays, tile in cases(args.big, args.quick):
        gpu_in = [rt.upload(a.view(np.float32).reshape(*a.shape[:-1], a.shape[-1], 2) if np.iscomplexobj(a) else a)
                  for a in arrays]
        t_in = [torch.from_numpy(a) for a in arrays]
        if family == "linear":
            def gpu_fn(tile=tile):  # tile: pin the tiled variant (None: the library's choice)
                with mm.tile_variant(tile) if tile else contextlib.nullcontext():
                    return ops.linear(gpu_in[0], gpu_in[1])

            np_fn = lambda: arrays[0] @ arrays[1].T  # noqa: E731
            torch_fn = lambda ts: torch.nn.functional.linear(ts[0], ts[1])  # noqa: E731
        elif family == "conv1d":
            gpu_fn = lambda: ops.conv1d(gpu_in[0], gpu_in[1], dilation=2)  # noqa: E731

            def np_fn():  # [1, C, T - 4, 3] windows of taps 0, 2, 4 . weight
                win = np.lib.stride_tricks.sliding_window_view(arrays[0], 5, axis=-1)[..., ::2]
                return np.einsum("bctk,ock->bot", win, arrays[1], optimize=True)

            torch_fn = lambda ts: torch.nn.functional.conv1d(ts[0], ts[1], dilation=2)  # noqa: E731
        elif family == "attention":
            gpu_fn = lambda: ops.attention(*gpu_in)  # noqa: E731

            def np_fn():
                q, k, v = arrays
                s = q @ k.swapaxes(-1, -2) / 8.0
                p = np.exp(s - s.max(-1, keepdims=True))
                return (p / p.sum(-1, keepdims=True)) @ v

            torch_fn = lambda ts: torch.nn.functional.scaled_dot_product_attention(*ts)  # noqa: E731
        else:
            gpu_fn = lambda: ops.irfft(gpu_in[0], n=1280)  # noqa: E731
            np_fn = lambda: np.fft.irfft(arrays[0], n=1280)  # noqa: E731
            torch_fn = lambda ts: torch.fft.irfft(ts[0], n=1280)  # noqa: E731
        probe = rt.empty((1,))

        def gpu_batch(n=10):  # n calls (one submit each), then a tiny readback waits for them all
            keep = [gpu_fn() for _ in range(n)]
            rt.read(probe)
            return keep

        t_gpu = timeit(gpu_batch, args.min_time) / 10
        t_kernel = kernel_time(rt, gpu_fn)
        t_np = t_torch = t_cuda = None
        if tile is None:  # baselines once per shape, not again for each pinned variant
            t_np = timeit(np_fn, args.min_time, max_reps=20)
            t_torch = timeit(lambda: torch_fn(t_in), args.min_time, max_reps=50)
        if cuda and tile is None:
            t_dev = [t.cuda() for t in t_in]
            t_cuda = cuda_time(lambda: torch_fn(t_dev), args.min_time)
        row = {"family": family, "case": name, "unit": unit}
        for key, t in (("wsvk", t_gpu), ("wsvk_gpu", t_kernel), ("numpy", t_np), ("torch_cpu", t_torch),
                       ("torch_cuda", t_cuda)):  # None: not measured
            row[f"{key}_ms"] = None if t is None else t * 1e3
            row[f"{key}_rate"] = None if t is None else amount / t / 1e9
        results.append(row)
    return results


def table(results, adapter: str) -> str:
    fmt = lambda v: f"{'-':>9}" if v is None else f"{v:9.3f}"  # noqa: E731
    lines = [f"adapter: {adapter}",
             f"{'case':<34} {'unit':<8} {'wsvk':>9} {'wsvkGPU':>9} {'numpy':>9} {'torchCPU':>9} {'torchCUDA':>9}"
             f"   (ms: wsvk / wsvkGPU / torch CPU)"]
    for r in results:
        gpu_ms = "-" if r["wsvk_gpu_ms"] is None else f"{r['wsvk_gpu_ms']:.3f}"
        if r["torch_cpu_ms"] is None:  # a variant row: the baselines are on the row above
            lines.append(f"{r['case']:<34} {r['unit']:<8} {fmt(r['wsvk_rate'])} {fmt(r['wsvk_gpu_rate'])}"
                         f"   ({r['wsvk_ms']:.3f} / {gpu_ms} ms)")
            continue
        lines.append(f"{r['case']:<34} {r['unit']:<8} {fmt(r['wsvk_rate'])} {fmt(r['wsvk_gpu_rate'])} "
                     f"{fmt(r['numpy_rate'])} {fmt(r['torch_cpu_rate'])} {fmt(r['torch_cuda_rate'])}   "
                     f"({r['wsvk_ms']:.3f} / {gpu_ms} / {r['torch_cpu_ms']:.3f})")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke run on lavapipe)")
    p.add_argument("--big", action="store_true", help="add GEMV 8192^2 and matmul 4096^3")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds per measurement")
    args = p.parse_args(argv)
    rt = get_runtime()
    adapter = f"{rt.info['name']} ({rt.info['backend']}, {rt.info['type']})"
    if rt.info["type"] == "CPU":
        print("note: a software adapter: these timings say nothing about a GPU", file=sys.stderr)
    results = run(args)
    print(table(results, adapter))
    if args.json:
        meta = {"adapter": adapter, "host": platform.node(), "torch": torch.__version__,
                "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
