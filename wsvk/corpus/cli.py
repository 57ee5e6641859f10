"""`python -m wsvk batch INPUT --out DIR`: a corpus of texts to audio files, resumable.

Exit codes: 0 every row done, 1 some row did not end in a file (invalid, or failed; or the job
stopped: full disk), 2 bad arguments or input (no valid row; with --strict, any bad row; the folder
in use by another run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError, WsvkError
from ..tts.cli import add_model_args, report

FORMATS = ("flac", "wav", "opus")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsvk batch", description="Synthesize every row of INPUT (JSONL or "
                                "CSV: id, text, and optional voice, lang, cps, seed) into DIR/<id>.<format>, with "
                                "DIR/manifest.jsonl. Run it again to resume: done rows are skipped, failed ones retried.")
    p.add_argument("input", help="a .jsonl (one JSON object per line) or .csv file (with a header)")
    p.add_argument("--out", required=True, metavar="DIR", help="the output folder (shared by all nodes with --ray)")
    p.add_argument("--format", choices=FORMATS, default="flac", help="audio format (default flac)")
    p.add_argument("--strict", action="store_true", help="stop before any synthesis if a row is bad")
    p.add_argument("--batch-rows", type=int, default=None, metavar="N",
                   help="rows decoded together (default: twice the decoder's slots)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster (its address; none: a local cluster) through Ray Data")
    p.add_argument("--gpus-per-node", type=int, default=1, metavar="N",
                   help="with --ray and no address: the GPUs of the local cluster (one synthesizer each)")
    add_model_args(p, seed_help="the sampling seed of rows without their own (default 0); with --random-weights "
                   "also the weights' seed")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("error: interrupted (run the same command again to resume)", file=sys.stderr)
        return 130
    except Exception as e:  # one line, as synth.py: 2 for bad input, 1 otherwise
        return report(e, verbose=False)


def run(args) -> int:
    from .. import config
    from ..router import active_backend
    from ..tts.pipeline import check_language
    from .job import JobError, Manifest, Progress, prepare_folder, synthesize
    from .rows import check_rows, read_rows

    config.check_all()
    if args.ray is not None:
        from ..deps import need_extra

        need_extra("ray", "ray")
    if args.batch_rows is not None and args.batch_rows < 1:
        raise InputError("--batch-rows must be at least 1")
    records = read_rows(args.input)
    model_args = {k: getattr(args, k) for k in ("t2s", "s2a", "vocoder", "speaker_model", "seed", "random_weights",
                                                 "no_resident")}
    made_from = {k: v for k, v in model_args.items() if k != "no_resident"}  # what changes the audio
    rows, problems = check_rows(records, Path(args.input).resolve().parent, check_language, made_from, args.seed)
    for p in problems:
        print(f"bad row: line {p['line']}: {p['error']}", file=sys.stderr)
    if problems and args.strict:
        raise InputError(f"{len(problems)} bad row(s) and --strict: nothing synthesized")
    if not rows:
        raise InputError(f"no valid rows in {args.input}" + (f" ({len(problems)} bad)" if problems else
                                                             " (it is empty)"))
    folder = Path(args.out).resolve()  # Ray's actors on other nodes see the same absolute path
    lock = prepare_folder(folder)  # held until the job ends
    manifest = Manifest(folder)
    pending = [r for r in rows if not manifest.done(r, args.format, folder)]
    skipped = len(rows) - len(pending)
    pending.sort(key=lambda r: -len(r.text))  # similar lengths decode together: the slots stay full
    print(f"{len(rows)} valid row{'s' * (len(rows) != 1)} ({len(problems)} bad): {skipped} already done, "
          f"{len(pending)} to synthesize", file=sys.stderr)
    progress = Progress(len(pending))

    def record(entries):  # as rows finish: a stopped job keeps every row written so far
        for e in entries:
            manifest.append(e)
            if e["status"] != "done":
                print(f"row {e['id']} failed: {e.get('error')}", file=sys.stderr)
        progress.update(entries)

    try:
        if pending and args.ray is not None:
            from .scaleout import run_on_ray

            try:
                run_on_ray(args.ray or None, args.gpus_per_node, pending, model_args, folder, args.format,
                           args.batch_rows or 8, record)
            except WsvkError:
                raise
            except Exception as e:  # an actor's failure (a full disk there, too) arrives as Ray's error
                from ..errors import describe

                raise JobError(f"the Ray job stopped: {describe(e)}") from None
        elif pending:
            from ..tts.cli import load_models

            pipe = load_models(args, speaker=any(row.voice for row in pending))
            backend, adapter = active_backend()
            backend = backend if backend == "cpu" else f"{backend} ({adapter})"
            size = args.batch_rows or 2 * _slots(pipe)
            for i in range(0, len(pending), size):
                synthesize(pipe, pending[i:i + size], folder, args.format, backend, record)
    finally:
        progress.close()
        try:
            manifest.compact(rows, problems)
        finally:
            lock.close()
    failed = [r.id for r in rows if manifest.entries.get(r.id, {}).get("status") != "done"]
    print(f"done: {len(rows) - len(failed)} of {len(rows)} valid rows" + (f"; failed: {', '.join(failed)}"
                                                                          if failed else "")
          + (f"; {len(problems)} invalid (in the manifest)" if problems else ""), file=sys.stderr)
    return 1 if failed or problems else 0  # every row must end in a file


def _slots(pipe) -> int:
    return pipe.stages.slots() if pipe.stages.resident_available() else pipe.slots or 4
