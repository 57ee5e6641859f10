#!/usr/bin/env python
"""The speech server under load: time to first byte and real-time factors for concurrent clients.

    python scripts/bench_serve.py [--size small --s2a-size medium] [--clients 1,4,16] [--json OUT]

Starts the server (python -m wsvk serve's app) on a loopback port in a process of its own with
random-weight models of whisperspeech's presets (the released pair by default: T2S small, S2A medium), warms it
up, then for each client count C sends C concurrent streamed requests of a 200-character text
(pcm), each client --requests times in a row, and reports the time to first byte (p50, p95), the
x real time of each stream (audio seconds / its wall time) and the aggregate x real time (all
audio / the round's wall time). Lavapipe timings mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

TEXT = ("The quick brown fox jumps over the lazy dog. Then it rests for a while in the warm afternoon sun, "
        "and when evening comes it wanders home again, past the river, the mill and the old stone bridge.")


def percentile(values, q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def one_request(url: str, seed: int, text: str = TEXT) -> dict:
    import httpx

    t0 = time.perf_counter()
    first, size = None, 0
    with httpx.stream("POST", f"{url}/v1/audio/speech", timeout=600,
                      json={"model": "wsvk", "input": text, "response_format": "pcm", "seed": seed}) as r:
        r.raise_for_status()
        for piece in r.iter_raw():
            if first is None:
                first = time.perf_counter() - t0
            size += len(piece)
    total = time.perf_counter() - t0
    audio = size / 2 / 24000
    return {"ttfb_s": first, "total_s": total, "audio_s": audio, "realtime_x": audio / total}


def run_round(url: str, clients: int, requests: int, text: str) -> dict:
    results, lock = [], threading.Lock()

    errors = []

    def client(c):
        for k in range(requests):
            try:
                r = one_request(url, 100 * c + k, text)
            except Exception as e:  # noqa: BLE001 - counted and shown, the round goes on
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttfb = [r["ttfb_s"] for r in results if r["ttfb_s"] is not None]
    if not ttfb:
        raise RuntimeError(f"no request of the {clients}-client round gave audio: {errors[:3]}")
    return {"clients": clients, "requests": len(results), "failed": len(errors), "errors": errors[:5],
            "ttfb_p50_ms": 1e3 * statistics.median(ttfb),
            "ttfb_p95_ms": 1e3 * percentile(ttfb, 0.95),
            "stream_realtime_x_min": min(r["realtime_x"] for r in results),
            "stream_realtime_x_median": statistics.median(r["realtime_x"] for r in results),
            "aggregate_realtime_x": sum(r["audio_s"] for r in results) / wall, "wall_s": wall}


def serve(size: str, s2a_size: str, slots: int, port: int) -> None:
    """The server process: python -m wsvk serve's app on the loopback port, with random-weight
    models of the presets (the CLI takes one --random-weights size; the released pair has two)."""
    import uvicorn

    from wsvk.serve.app import Options, create_app
    from wsvk.serve.cli import run_uvicorn
    from wsvk.tts.models import random_s2a, random_t2s, random_vocos
    from wsvk.tts.pipeline import Pipeline

    pipe = Pipeline(random_t2s(size), random_s2a(s2a_size), random_vocos(), random_weights=size,
                    random_t2s=True, slots=slots)
    opts = Options(slots=slots, queue=slots, voices={"default": pipe.default_speaker()})
    run_uvicorn(uvicorn.Config(create_app(pipe, opts), host="127.0.0.1", port=port, log_level="warning"),
                pipe.engine())  # until stop_server's SIGTERM


def start_server(size: str, s2a_size: str, slots: int):
    """(the server process, its URL, its /health) once it answers. A process of its own, as
    `python -m wsvk serve` is: the clients' threads here do not share its interpreter lock."""
    import multiprocessing

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = multiprocessing.get_context("spawn").Process(target=serve, args=(size, s2a_size, slots, port),
                                                        name="wsvk-serve")
    proc.start()
    url, deadline = f"http://127.0.0.1:{port}", time.time() + 600  # a random S2A medium takes a while to build
    while True:
        try:
            return proc, url, httpx.get(f"{url}/health", timeout=5).json()
        except httpx.TransportError:
            if not proc.is_alive() or time.time() > deadline:
                proc.kill()
                raise SystemExit(f"error: the server did not start (exit code {proc.exitcode})") from None
            time.sleep(0.2)


def stop_server(proc) -> None:
    proc.terminate()  # uvicorn stops on SIGTERM, then the engine closes
    proc.join(60)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if proc.exitcode != 0:  # an abort at exit, or it had to be killed: the figures stand, but say so
        print(f"warning: the server process ended with exit code {proc.exitcode}", file=sys.stderr)


def main(argv=None) -> int:
    from wsvk.tts.models import RANDOM_SIZES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=RANDOM_SIZES, default="small")
    p.add_argument("--s2a-size", choices=RANDOM_SIZES, help="S2A preset (default: medium with small, else --size)")
    p.add_argument("--clients", default="1,4,16", help="comma-separated concurrent client counts")
    p.add_argument("--requests", type=int, default=2, help="requests per client per round")
    p.add_argument("--text", default=TEXT, help="the request text (default: 200 characters)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    s2a_size = args.s2a_size or ("medium" if args.size == "small" else args.size)
    proc, url, health = start_server(args.size, s2a_size, max(clients))
    backend, adapter = health["backend"], health["adapter"]
    try:
        one_request(url, 0, args.text)  # warm-up: pipelines, buffers
        rounds = []
        for c in clients:  # the JSON after each round: a run cut short keeps what it measured
            rounds.append(run_round(url, c, args.requests, args.text))
            if args.json:
                args.json.write_text(json.dumps({"backend": backend, "adapter": adapter, "size": args.size,
                                                 "s2a_size": s2a_size, "text_chars": len(args.text),
                                                 "rounds": rounds}, indent=2))
    finally:
        stop_server(proc)
    print(f"server: {backend} ({adapter}); T2S {args.size}, S2A {s2a_size}; a {len(args.text)}-character text, pcm")
    print(f"{'clients':>8} {'TTFB p50 ms':>12} {'TTFB p95 ms':>12} {'stream x RT min':>16} {'median':>8} "
          f"{'aggregate x RT':>15}")
    for r in rounds:
        print(f"{r['clients']:>8} {r['ttfb_p50_ms']:>12.0f} {r['ttfb_p95_ms']:>12.0f} {r['stream_realtime_x_min']:>16.2f}"
              f" {r['stream_realtime_x_median']:>8.2f} {r['aggregate_realtime_x']:>15.2f}"
              + (f"   ({r['failed']} failed: {r['errors'][0]})" if r["failed"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
