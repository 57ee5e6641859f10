"""The corpus job on a Ray cluster through Ray Data: one synthesizer actor per GPU (Ray does not
see Vulkan devices, so each GPU is a custom `wsvk_gpu` resource), the models loaded once per actor,
the files written by the actors into the shared output folder, the manifest by the driver."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path

from ..errors import InputError
from .job import JobError, synthesize
from .rows import Row

RESOURCE = "wsvk_gpu"
ENV_PREFIXES = ("WSVK_", "HF_", "XDG_RUNTIME_DIR")  # the driver's settings that travel to the actors
STOP = "__stop__"  # an actor's entry that stops the job (its write failed: a full disk)


class Synthesizer:
    """A Ray Data actor: the pipeline built once, then batches of rows to files and manifest entries."""

    def __init__(self, model_args: dict, folder: str, fmt: str):
        from ..router import active_backend
        from ..tts.cli import load_models

        self.pipe = load_models(argparse.Namespace(**model_args))
        self.folder, self.fmt = Path(folder), fmt
        backend, adapter = active_backend()
        self.backend = backend if backend == "cpu" else f"{backend} ({adapter})"

    def __call__(self, batch):
        rows = [Row(**{k: (None if v != v else v) for k, v in rec.items()})  # NaN (missing) -> None
                for rec in batch.to_dict("records")]
        for r in rows:
            r.line, r.seed, r.cps = int(r.line), int(r.seed), float(r.cps)
        entries = []
        try:
            synthesize(self.pipe, rows, self.folder, self.fmt, self.backend, entries.extend)
        except JobError as e:  # the driver records the rows written before it, then stops
            entries.append({STOP: str(e)})
        import pandas as pd

        return pd.DataFrame({"entry": [json.dumps(e) for e in entries]})


def run_on_ray(address: str | None, gpus_per_node: int, rows: list[Row], model_args: dict, folder: Path, fmt: str,
               batch_rows: int, on_entries) -> None:
    """Synthesize `rows` on the cluster at `address` (None: a local one with gpus_per_node GPUs),
    calling on_entries(entries) in the driver as results come."""
    import logging

    import ray

    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}
    if not ray.is_initialized():
        opts = dict(runtime_env={"env_vars": env}, include_dashboard=False, log_to_driver=False,
                    logging_level=logging.WARNING)
        if address:  # a cluster with token authentication also wants RAY_AUTH_MODE=token (Ray's docs)
            ray.init(address=address, **opts)
        else:
            ray.init(resources={RESOURCE: gpus_per_node}, **opts)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the job draws its own
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    actors = int(ray.cluster_resources().get(RESOURCE, 0))
    if actors < 1:
        raise InputError(f"the Ray cluster declares no {RESOURCE} resource: start each node with "
                         f"ray start ... --resources '{{\"{RESOURCE}\": N}}' (N GPUs)")
    ds = ray.data.from_items([asdict(r) for r in rows])
    out = ds.map_batches(Synthesizer, fn_constructor_kwargs=dict(model_args=model_args, folder=str(folder), fmt=fmt),
                         batch_size=batch_rows, batch_format="pandas",
                         compute=ray.data.ActorPoolStrategy(size=actors), resources={RESOURCE: 1}, num_cpus=0)
    for batch in out.iter_batches(batch_size=None, batch_format="pandas"):
        entries = [json.loads(s) for s in batch["entry"]]
        on_entries([e for e in entries if STOP not in e])
        for e in entries:
            if STOP in e:
                raise JobError(e[STOP])
