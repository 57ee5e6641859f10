"""The `wsvk` command (also `python -m wsvk`):
`wsvk synth`: text to speech into an audio file (what synth.py does);
`wsvk serve`: the OpenAI-compatible speech server;
`wsvk batch`: a corpus of texts to audio files;
`wsvk tune`: time the decode step's candidates on this GPU and cache the choice;
`wsvk info`: what wgpu sees on this machine and what wsvk would use;
`wsvk deps`: whether every runtime dependency imports."""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__, config
from .errors import WsvkError
from .gpu import adapter_summary, list_adapters, select_adapter
from .gpu.adapters import FEATURES
from .gpu.runtime import choose_precision


PRECISION_NOTES = {
    "f32": "",
    "f16": "; WSVK_PRECISION=q8 for 8-bit weights where memory bandwidth binds (integrated GPUs)",
    "q8": ": 8-bit decoder weights, 44% fewer bytes a step than f16, gated at 30 dB of logit SNR "
          "(llama.cpp's Q8_0: within 0.04% of f16's perplexity)",
}


def info() -> int:
    print(f"wsvk {__version__}")
    try:
        import wgpu

        print(f"wgpu {wgpu.__version__}")
    except ImportError as e:
        print(f"error: wgpu is not importable: {e}", file=sys.stderr)
        return 1
    adapters = list_adapters()
    print(f"adapters ({len(adapters)}):")
    if not adapters:
        print("  none: install a Vulkan/Metal/D3D12 driver (Debian/Ubuntu without a GPU: "
              "apt-get install mesa-vulkan-drivers)")
    for i, a in enumerate(adapters):
        s = adapter_summary(a)
        feats = ", ".join(f for f in FEATURES if s[f]) or "none"
        memory = "unknown" if s["memory"] is None else f"{s['memory'] / 2**30:.1f} GiB"
        print(f"  [{i}] {s['name']}  backend={s['backend']}  type={s['type']}  "
              f"features: {feats}  max storage binding: {s['max_storage_binding'] / 2**20:.0f} MiB  memory: {memory}")
    env = config.summary()
    print("settings: " + "  ".join(f"{k}={v if v is not None else '(unset)'}" for k, v in env.items()))
    try:
        config.check_all()
        choice = config.backend()
        chosen = select_adapter(adapters)
    except WsvkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if chosen is None:
        why = "WSVK_BACKEND=cpu" if choice == "cpu" else (
            "no adapter" if not adapters else "auto skips software adapters; WSVK_BACKEND=wgpu forces them")
        print(f"selected: CPU torch ({why})")
    else:
        idx = next(i for i, a in enumerate(adapters) if a is chosen)
        summary = adapter_summary(chosen)
        print(f"selected: [{idx}] {summary['name']} ({summary['backend']})")
        has_f16 = summary["shader-f16"] and config.limits() != "default"
        try:
            precision, why = choose_precision(summary, has_f16)
        except WsvkError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"precision: {precision} ({why}){PRECISION_NOTES[precision]}")
    tuning_cache()
    return 0


def tuning_cache() -> None:
    """The tuner's cache folder and, per entry, the adapter, the decoder and the chosen plan."""
    from .resident import tune_cache

    folder = config.cache_dir()
    found = tune_cache.entries(folder)
    print(f"tuning cache: {folder} ({len(found)} entr{'y' if len(found) == 1 else 'ies'}; WSVK_TUNE={config.tune()})")
    for path, entry, why in found:
        if entry is None:
            print(f"  {os.path.basename(path)}: ignored ({why})")
            continue
        k = entry["key"]
        shapes = k.get("shapes", {})
        print(f"  {k.get('adapter')} ({k.get('backend')}): {k.get('decoder')} {shapes.get('layers')}x"
              f"{shapes.get('width')} {k.get('precision')} {k.get('slots')} slots -> {entry['choice']}")


def _selftest() -> int:
    from .gpu import get_runtime
    from .selftest import run

    if select_adapter() is None and config.backend() != "cpu":
        print("note: auto selects no adapter for models; the selftest uses the best one wgpu has")
    try:
        get_runtime()
    except WsvkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if run() else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="wsvk", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("synth", help="text to speech into an audio file (wsvk synth --help)", add_help=False)
    p_info = sub.add_parser("info", help="list the adapters wgpu finds and the one wsvk selects")
    p_info.add_argument("--selftest", action="store_true",
                        help="also run every kernel once against numpy on the selected adapter, and the "
                             "resident T2S/S2A/Vocos against CPU torch on small random models")
    sub.add_parser("deps", help="import every runtime dependency; one line per package that does not load")
    sub.add_parser("serve", help="the OpenAI-compatible speech server (wsvk serve --help)", add_help=False)
    sub.add_parser("batch", help="a corpus of texts to audio files, resumable (wsvk batch --help)",
                   add_help=False)
    sub.add_parser("tune", help="time the decode step's candidates on this GPU, cache the choice (wsvk tune --help)",
                   add_help=False)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["tune"]:
        from .tts.tune_cli import main as tune_main

        return tune_main(argv[1:])
    if argv[:1] == ["synth"]:  # their own parsers: the model options and more
        from .tts.cli import main as synth_main

        return synth_main(argv[1:], prog="wsvk synth")
    if argv[:1] == ["serve"]:
        from .serve.cli import main as serve_main

        return serve_main(argv[1:])
    if argv[:1] == ["batch"]:
        from .corpus.cli import main as batch_main

        return batch_main(argv[1:])
    args = parser.parse_args(argv)
    if args.cmd == "deps":
        from .deps import main as deps_main

        return deps_main()
    if args.cmd == "info":
        rc = info()
        if rc == 0 and args.selftest:
            rc = _selftest()
        return rc
    return 2


if __name__ == "__main__":
    sys.exit(main())
