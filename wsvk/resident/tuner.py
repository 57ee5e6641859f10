"""The decode step's candidates, timed on the user's own GPU and chosen once (cached on disk).

What is fastest depends on the GPU: a discrete card is bound by per-dispatch latency and wants
fewer, fuller workgroups; an integrated one is bound by bytes; subgroup reductions beat
workgroup memory on some drivers and not on others. So the choice is measured where it runs.
A candidate is a variant of the same plan (DecoderPlan.configure), over the same weights:

- `split{ch}`: keys per attention split (decode_cache). Smaller splits mean more workgroups at a
  chunk's start (good where a few columns leave most of a big GPU idle) and more partials to
  combine; larger ones fewer, fuller workgroups (good on small GPUs and long caches).
- `-wgsum`: the GEMVs reduce through workgroup memory instead of subgroup operations (listed only
  where the adapter has subgroups). Both read every weight once per step.
- `default`: the plan as built without tuning (attention.auto_ch, subgroups where present).

Timing is the step as the user gets it: step_many's wall clock, submit to logits, with the host's
recording included, over a few steps at a chunk's start and middle, at 1 column and at the slot
count. The pruned search (a first load's, ~5 s at most) times the split sizes with the default
reduction, then the best split with the other reduction; `full` times every candidate. The
fastest and the default are then timed once more (the first timings may catch a GPU still
raising its clocks) and a candidate replaces the default only when its best time is at least
MARGIN below the default's best (noise).

WSVK_TUNE (config.tune): auto uses the cached choice, else tunes once (not on software adapters,
whose timings say nothing about a GPU); off runs `default`; force tunes again. WSVK_PLAN names a
candidate to run, timing nothing: NAME for every decoder, or t2s:NAME,s2a:NAME (the decoders'
candidates differ: a split that fits T2S may not fit S2A's 16 heads over 2250 keys). Tuning is
for load time: it overwrites the slots' caches. A failure while tuning (a variant a driver
rejects) leaves the default plan, with one warning; two processes tuning the same key take turns
(a lock file), so that neither times the other's load.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .. import __version__, config
from ..errors import ConfigError, WsvkError
from . import tune_cache

BUDGET_S = 5.0      # a first load's tuning time at most (the pruned search stops there)
MARGIN = 0.03       # a candidate must beat the default by 3% to replace it
SPLITS = (32, 64, 128, 256)
STEPS = 4           # timed steps per point (after one untimed step that compiles and warms)
FULL_STEPS = 8


@dataclass(frozen=True)
class Candidate:
    name: str
    ch: int | None            # keys per attention split (None: attention.auto_ch)
    subgroups: bool | None    # GEMV reductions: None where the adapter has subgroups, False: workgroup memory


DEFAULT = Candidate("default", None, None)
_announced = False  # the "tuning ..." line: once per process


def candidates(dec) -> list[Candidate]:
    """The decoder's candidates, `default` first; each distinct in what it runs (a split size that
    gives the same split counts as one listed before it for both caches is left out)."""
    plan = dec.plan
    auto = plan.auto_ch()
    reductions = [None, False] if plan.rt.has_subgroups else [None]
    seen = {(-(-plan.self_len // auto), -(-plan.cross_len // auto), None)}
    out = [DEFAULT]
    for sg in reductions:
        for ch in sorted(set(SPLITS) | {auto}):
            runs = (-(-plan.self_len // ch), -(-plan.cross_len // ch), sg)
            if not plan.split_fits(ch) or runs in seen:
                continue
            seen.add(runs)
            out.append(Candidate(f"split{ch}" + ("-wgsum" if sg is False else ""), ch, sg))
    return out


def key(dec, decoder: str) -> dict:
    """What a timing depends on (tune_cache's key)."""
    import wgpu

    plan, info = dec.plan, dec.rt.info
    return {"adapter": info["name"], "backend": info["backend"], "driver": info.get("driver", ""),
            "limits": config.limits(), "wsvk": __version__, "wgpu": wgpu.__version__, "decoder": decoder,
            "shapes": {"layers": plan.n_layers, "width": plan.W, "heads": plan.NH, "ffn": int(plan.h.shape[1]),
                       "quantizers": plan.NQ, "vocab": plan.V, "logits": plan.n_logits,
                       "self_len": plan.self_len, "cross_len": plan.cross_len},
            "precision": plan.precision, "slots": plan.slots}


def by_name(cands: list[Candidate], name: str, decoder: str, what: str = "WSVK_PLAN") -> Candidate:
    for c in cands:
        if c.name == name:
            return c
    raise ConfigError(f"{what}: {name!r} is not a candidate of the {decoder} decoder; use one of: "
                      + ", ".join(c.name for c in cands) + (" (t2s:NAME,s2a:NAME names one per decoder)"
                                                            if what == "WSVK_PLAN" else ""))


def forced_plan(decoder: str) -> str | None:
    """The candidate WSVK_PLAN names for this decoder: its own `decoder:NAME` entry, else a bare
    NAME, else None."""
    raw = config.plan()
    if raw is None:
        return None
    bare = None
    for entry in (e.strip() for e in raw.split(",") if e.strip()):
        scope, sep, name = entry.rpartition(":")
        if not sep:
            bare = entry
        elif scope == decoder:
            return name
    return bare


def worth_tuning(rt) -> bool:
    """auto tunes hardware adapters only: a software rasterizer's timings say nothing about a GPU
    (and compiling every candidate there takes minutes)."""
    return rt.info["type"] != "CPU"


def settle(dec, decoder: str) -> None:
    """Configure a freshly built decoder's plan as the settings say (module docstring). Records
    what happened in dec.tuning: {"plan", "source": forced|off|cache|tuned|untuned|failed, "timed"}."""
    cands = candidates(dec)
    forced = forced_plan(decoder)
    mode = config.tune()
    if forced is not None:
        return _use(dec, by_name(cands, forced, decoder), "forced")
    if mode == "off":
        return _use(dec, DEFAULT, "off")
    k = key(dec, decoder)
    worth = worth_tuning(dec.rt)
    if mode == "auto" and _use_cached(dec, cands, k, decoder, worth, quiet=worth):
        return
    if mode == "auto" and not worth:
        return _use(dec, DEFAULT, "untuned")
    with _tuning_lock(k):  # another process may have tuned this key meanwhile: it is read again
        if mode == "auto" and _use_cached(dec, cands, k, decoder, worth, quiet=False):
            return
        _announce(dec.rt.info["name"])
        try:
            rows = tune(dec, cands, decoder)
        except (WsvkError, ValueError) as e:
            tune_cache.warn(f"tuning the {decoder} decode step failed ({' '.join(str(e).split())}); using the default "
                            "plan")
            dec.use_variant(DEFAULT.ch, DEFAULT.subgroups)  # raises again if the default itself fails
            dec.tuning = {"plan": DEFAULT.name, "source": "failed", "timed": 0}
            return
        tune_cache.store(k, next(r["name"] for r in rows if r["chosen"]), rows)


def _use_cached(dec, cands, k, decoder: str, worth: bool, quiet: bool) -> bool:
    """Configure the decoder with the cached choice for key k; False where there is none (a bad
    file warns unless quiet: the caller reads it again under the lock before tuning)."""
    if quiet:
        entry, _ = tune_cache.peek(k)
        if entry is None:
            return False
    else:
        entry = tune_cache.load(k, discard=not worth)
        if entry is None:
            return False
    chosen = next((c for c in cands if c.name == entry["choice"]), None)
    if chosen is None:
        if not quiet:
            tune_cache.warn(f"the cached plan {entry['choice']!r} is not a candidate of the {decoder} decoder any "
                            "more; " + ("tuning again" if worth else "using the default plan"))
        return False
    _use(dec, chosen, "cache")
    return True


def _announce(adapter: str) -> None:
    global _announced
    if not _announced:
        _announced = True
        sys.stderr.write(f"wsvk: tuning the decode step for {adapter} (once)\n")
        sys.stderr.flush()


@contextmanager
def _tuning_lock(k: dict):
    """An exclusive lock on the key's lock file while one process reads, tunes and writes it (no
    lock where the folder cannot be written or the platform has no fcntl: tuning goes on)."""
    path = tune_cache.path_for(k)[:-len(".json")] + ".lock"
    try:
        import fcntl

        os.makedirs(os.path.dirname(path), exist_ok=True)
        f = open(path, "a")
    except (ImportError, OSError):
        yield
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:
            pass
        yield


def _use(dec, cand: Candidate, source: str, timed: int = 0) -> None:
    dec.use_variant(cand.ch, cand.subgroups)
    dec.tuning = {"plan": cand.name, "source": source, "timed": timed}


def tune(dec, cands: list[Candidate] | None = None, decoder: str = "", full: bool = False,
         budget: float | None = None) -> list[dict]:
    """Time the candidates on this decoder, leave it configured with the fastest and return the
    table: one row per timed candidate {name, dispatches_per_step, ms_per_step, record_ms_per_step,
    compile_s, chosen}. budget: seconds for the pruned search (None: BUDGET_S; unused with full).
    For load time only: the decoder's slots' caches are overwritten."""
    cands = cands or candidates(dec)
    budget = BUDGET_S if budget is None else budget
    start = time.perf_counter()
    rows: dict[str, dict] = {}

    def run(c: Candidate) -> None:
        row = _time(dec, c, FULL_STEPS if full else STEPS)
        if c.name in rows:  # timed again: the best of the two (timing noise only ever adds)
            row["ms_per_step"] = min(row["ms_per_step"], rows[c.name]["ms_per_step"])
            row["compile_s"] = rows[c.name]["compile_s"]
        rows[c.name] = row

    def over() -> bool:
        return not full and time.perf_counter() - start > budget

    run(cands[0])
    splits = [c for c in cands[1:] if c.subgroups is None]
    others = [c for c in cands[1:] if c.subgroups is not None]
    for c in splits + (others if full else []):
        if over():
            break
        run(c)
    if others and not full and not over():
        best = min((c for c in cands if c.name in rows), key=lambda c: rows[c.name]["ms_per_step"])
        best_ch = best.ch if best.ch is not None else dec.plan.auto_ch()
        match = next((c for c in others if c.ch == best_ch), None)
        if match is not None:
            run(match)
    best = min(rows, key=lambda n: rows[n]["ms_per_step"])
    if best != cands[0].name:  # once more, the default last: no candidate wins by the GPU's warm-up
        run(next(c for c in cands if c.name == best))
        run(cands[0])
    if rows[best]["ms_per_step"] > rows[cands[0].name]["ms_per_step"] * (1 - MARGIN):
        best = cands[0].name
    chosen = next(c for c in cands if c.name == best)
    for name, row in rows.items():
        row["chosen"] = name == best
    _use(dec, chosen, "tuned", timed=len(rows))
    dec.reset_counters()
    return [{"name": n, **r} for n, r in rows.items()]


def _time(dec, cand: Candidate, steps: int) -> dict:
    """ms per step of one candidate, averaged over its points (a chunk's start and middle, 1 and
    `slots` columns), each the mean of `steps` consecutive steps after an untimed one."""
    t0 = time.perf_counter()
    dec.use_variant(cand.ch, cand.subgroups)
    tokens = np.zeros(dec.NQ, np.int64)
    limit = min(dec.self_len, dec.plan.P_pos or dec.self_len)
    starts = sorted({0, max(0, min(limit // 2, limit - steps - 1))})
    widths = sorted({1, dec.slots})
    compile_s = None
    per_point = []
    record = []
    for n in widths:
        for p0 in starts:
            first = [(s, tokens, p0) for s in range(n)]
            dec.step_many(first)  # compiles the candidate's pipelines (once) and warms the caches
            if compile_s is None:
                compile_s = time.perf_counter() - t0
            dec.reset_counters()
            for i in range(1, steps + 1):
                dec.step_many([(s, tokens, min(p0 + i, limit - 1)) for s in range(n)])
            c = dec.counters()
            per_point.append(c["step_s_per_step"])
            record.append(c["record_s_per_step"])
    return {"dispatches_per_step": dec.dispatches_per_step, "ms_per_step": 1e3 * float(np.mean(per_point)),
            "record_ms_per_step": 1e3 * float(np.mean(record)), "compile_s": compile_s}
