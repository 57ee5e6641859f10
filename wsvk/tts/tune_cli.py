"""Time the decode step's variants for the T2S and S2A decoders of these models on the selected
GPU, print the table and keep the choice for later loads. A first synthesis does a pruned search
by itself; this command is for a full search (--full), a table for a bug report (--json), and
tuning ahead of a server's first request."""

from __future__ import annotations

import argparse
import json
import math
import os

from .cli import BadInput, add_model_args, load_models, note, report

DECODERS = ("t2s", "s2a")
EPILOG = ("The choice is kept in WSVK_CACHE_DIR (default $XDG_CACHE_HOME/wsvk, else ~/.cache/wsvk), one file per "
          "adapter, driver, model, precision and slot count; `wsvk info` lists it. WSVK_TUNE=off runs the untuned "
          "step, WSVK_PLAN=NAME (or t2s:NAME,s2a:NAME) runs one candidate. Slots: WSVK_SLOTS, else as a synthesis "
          "picks them.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsvk tune", description=__doc__, epilog=EPILOG)
    add_model_args(p)
    p.add_argument("--full", action="store_true",
                   help="time every candidate, with more steps each (default: the pruned search, ~5 s a decoder)")
    p.add_argument("--json", metavar="FILE", help="also write the table as JSON to FILE")
    p.add_argument("-v", "--verbose", action="store_true", help="a traceback on unexpected errors")
    return p


def run(args) -> int:
    from ..gpu import get_runtime
    from ..resident import tune_cache, tuner

    pipe = load_models(args)
    saved = {k: os.environ.pop(k, None) for k in ("WSVK_TUNE", "WSVK_PLAN")}
    os.environ["WSVK_TUNE"] = "off"  # build the decoders plainly: they are timed below
    try:
        mods = {d: pipe.stages.gpu_runner(d) for d in DECODERS}
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v
    if any(m is None for m in mods.values()):
        raise BadInput("the decoders run on the CPU here (WSVK_BACKEND, --no-resident, or auto found no GPU: "
                       "WSVK_BACKEND=wgpu uses a software adapter): nothing to tune")
    name = get_runtime().info["name"]
    note(f"tuning the decode step for {name} ({'every candidate' if args.full else 'pruned search'})")
    report_rows, out = [], {"adapter": name, "decoders": []}
    for d, mod in mods.items():
        dec = mod.resident_decoder
        rows = tuner.tune(dec, None, d, full=args.full, budget=math.inf if args.full else tuner.BUDGET_S)
        path = tune_cache.store(tuner.key(dec, d), next(r["name"] for r in rows if r["chosen"]), rows)
        out["decoders"].append({"name": d, "layers": dec.n_layers, "slots": dec.slots, "precision": dec.precision,
                                "cache": path, "candidates": rows})
        report_rows += [(d, r) for r in rows]
    print(f"{'decoder':8}{'candidate':20}{'dispatches/step':>16}{'ms/step':>10}{'record ms':>11}{'compile s':>11}"
          "  chosen")
    for d, r in report_rows:
        print(f"{d:8}{r['name']:20}{r['dispatches_per_step']:>16}{r['ms_per_step']:>10.3f}"
              f"{r['record_ms_per_step']:>11.3f}{r['compile_s']:>11.2f}  {'*' if r['chosen'] else ''}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
    return 0


def main(argv=None) -> int:
    args = None
    try:
        args = build_parser().parse_args(argv)
        return run(args)
    except BadInput as e:
        note(f"error: {e}")
        return 2
    except Exception as e:
        return report(e, verbose=bool(args and args.verbose))
