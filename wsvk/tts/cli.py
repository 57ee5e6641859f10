"""The command line behind synth.py and `wsvk synth`: text to speech into an audio file.

Exit codes: 0 done, 2 bad input (one `error:` line, nothing written), 1 run-time failure.
Heavy imports (torch, whisperspeech) wait until the cheap checks have passed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1
SIZES = ("tiny", "base", "small", "medium")  # = models.RANDOM_SIZES (not imported: --help stays fast)


class BadInput(Exception):
    """Raised for bad arguments before any model work; printed as one `error:` line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage + a prefixed line)
        raise BadInput(message)


def build_parser(prog: str = "synth.py") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Speak TEXT with WhisperSpeech and write 24 kHz mono audio (the format -o names). "
                "The backend comes from WSVK_BACKEND (auto, wgpu or cpu).")
    p.add_argument("text", nargs="?", help="the text to speak; '-' reads it from stdin")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="the audio file to write: .wav, .flac, .mp3, .ogg or .opus by its extension; '-' streams "
                        "a WAV to stdout as it is made (e.g. | aplay)")
    p.add_argument("--text-file", metavar="F", help="read the text from a UTF-8 file instead")
    p.add_argument("--lang", default="en", help="language code of the text (default en)")
    p.add_argument("--cps", type=float, default=15.0, help="speaking rate in characters per second (default 15)")
    p.add_argument("--speaker", metavar="WAV", help="clone the voice in this audio file (first 30 s)")
    add_model_args(p)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print the router's per-op GPU/CPU table and the resident modules' counters")
    return p


def seed_number(text: str) -> int:
    from ..errors import InputError
    from .pipeline import check_seed

    try:
        return check_seed(int(text))
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_model_args(p, seed_help: str = "sampling seed: the same seed gives the same speech (on every backend "
                                           "with WSVK_PRECISION=f32)") -> None:
    """The model options `wsvk synth` (synth.py), `wsvk serve` and `wsvk batch` share."""
    p.add_argument("--t2s", metavar="REF", help="T2S model: a file or owner/repo:file on Hugging Face")
    p.add_argument("--s2a", metavar="REF", help="S2A model: a file or owner/repo:file on Hugging Face")
    p.add_argument("--vocoder", metavar="REF", help="Vocos: a folder (config.yaml + pytorch_model.bin) or a repo id")
    p.add_argument("--speaker-model", metavar="REF",
                   help="ECAPA speaker encoder: a folder (hyperparams.yaml + embedding_model.ckpt) or a repo id")
    p.add_argument("--seed", type=seed_number, default=0, help=seed_help)
    p.add_argument("--random-weights", choices=SIZES, metavar="{tiny,base,small,medium}",
                   help="random models of this size for the parts not given (offline test; the output is noise)")
    p.add_argument("--no-resident", action="store_true",
                   help="route every op through the op router instead of the resident GPU decoder/vocoder")


def load_models(args, slots: int | None = None, progress=None, speaker: bool = False):
    """load_pipeline with the model options of add_model_args; speaker: voices will be cloned."""
    from .pipeline import load_pipeline

    return load_pipeline(t2s=args.t2s, s2a=args.s2a, vocoder=args.vocoder, speaker_model=args.speaker_model,
                         random_weights=args.random_weights, seed=args.seed, progress=progress,
                         resident=not args.no_resident, slots=slots, speaker=speaker)


# ---------------------------------------------------------------- cheap checks (no torch)


def read_text(args) -> str:
    if args.text is not None and args.text_file is not None:
        raise BadInput("give TEXT or --text-file, not both")
    if args.text_file is not None:
        try:
            with open(args.text_file, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise BadInput(f"text file not found: {args.text_file}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise BadInput(f"cannot read text file {args.text_file}: {e}") from None
    elif args.text == "-":
        try:
            text = sys.stdin.read()
        except UnicodeDecodeError as e:
            raise BadInput(f"stdin is not UTF-8 text: {e}") from None
    elif args.text is not None:
        text = args.text
    else:
        raise BadInput("no text: give TEXT, '-' for stdin, or --text-file F")
    if not text.strip():
        raise BadInput("the text is empty")
    return text


def check_output(path: str) -> str:
    """Fail now, before any synthesis, when OUT cannot be written or names no format we write."""
    from ..errors import InputError
    from .audio import format_for_path

    if path == "-":
        return path
    out = os.path.abspath(path)
    folder = os.path.dirname(out)
    if os.path.isdir(out):
        raise BadInput(f"output {path} is a directory")
    try:
        format_for_path(path)
    except InputError as e:
        raise BadInput(str(e)) from None
    if not os.path.isdir(folder):
        raise BadInput(f"output folder does not exist: {folder}")
    try:  # os.access misjudges some mounts and root; a real temp file does not
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".synth-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise BadInput(f"cannot create a file in {folder}: {e.strerror or e}") from None
    if os.path.exists(out) and not os.access(out, os.W_OK):
        raise BadInput(f"output {path} exists and is not writable")
    return out


def cheap_checks(args):
    """Everything that needs no model: text, rate, language, backend, output, local files."""
    from .. import config
    from .models import resolve_file, resolve_folder
    from .pipeline import check_language

    text = read_text(args)
    if not args.cps > 0 or args.cps != args.cps or args.cps == float("inf"):
        raise BadInput(f"--cps must be a positive number, got {args.cps}")
    lang = check_language(args.lang)
    config.check_all()  # a bad WSVK_* value is an error even where this run would not read it
    out = check_output(args.output)
    if out == "-" and sys.stdout.isatty():
        raise BadInput("-o - writes WAV bytes to stdout, which is a terminal: pipe it (| aplay) or give a file name")
    if args.speaker is not None:
        from .speaker import check_speaker_file

        check_speaker_file(args.speaker)
    # local model paths are checked here; Hugging Face references when loading
    for ref, what in ((args.t2s, "T2S model"), (args.s2a, "S2A model")):
        if ref and (os.path.exists(ref) or ":" not in ref or ref.startswith(("/", ".", "~"))):
            resolve_file(ref, what, f"pass --{what[:3].lower()} PATH")
    for ref, files, what in ((args.vocoder, ("config.yaml", "pytorch_model.bin"), "vocoder"),
                             (args.speaker_model, ("hyperparams.yaml", "embedding_model.ckpt"), "speaker model")):
        if ref and (os.path.exists(ref) or ref.startswith(("/", ".", "~"))):
            resolve_folder(ref, files, what, "check the path")
    return text, lang, out


# ---------------------------------------------------------------- progress


def duration(seconds: float) -> str:
    """A length of audio or time as a person reads it: 2.5 s, 42 s, 3.5 min, 1.25 h."""
    if seconds < 90:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.2f} h"


class ConsoleProgress:
    """A redrawn bar on a terminal; otherwise a line per finished stage and, on long work, a plain
    line every `every` seconds. Both show an ETA: a stage's steps against the steps it should take
    (S2A's and Vocos's are known when they start; T2S's, for a trained model, only bounded, so
    they are estimated from the speech the text makes: `speech_s`, at 25 semantic tokens a second)."""

    T2S_RATE = 25  # semantic tokens per second of speech

    def __init__(self, stream=None, every: float = 10.0):
        self.stream = stream or sys.stderr  # looked up now: a default bound at import goes stale
        self.tty = self.stream.isatty()
        self.every = every
        self.speech_s = None  # set by run() once the text is known (None: totals are exact)
        self.stage = None
        self.total = self.expected = None
        self.done = 0
        self.label = ""
        self.t0 = self.last_draw = self.last_line = 0.0

    def stage_start(self, stage, chunk, n_chunks, total_steps):
        self.stage, self.total, self.done = stage, total_steps, 0
        self.expected = total_steps
        if stage == "t2s" and total_steps and self.speech_s:
            self.expected = max(1, min(total_steps, round(self.T2S_RATE * self.speech_s)))
        self.label = stage + (f" ({n_chunks} chunks)" if n_chunks > 1 else "")
        self.t0 = self.last_line = time.monotonic()
        self._draw(force=True)

    def step(self, stage):
        self.done += 1
        self._draw()

    def stage_end(self, stage, chunk, n_chunks, seconds):
        steps = f", {self.done} steps" if self.total and self.total > 1 else ""
        self.stream.write(("\r\x1b[K" if self.tty else "") + f"{self.label}: {seconds:.2f} s{steps}\n")
        self.stream.flush()

    def status(self) -> str:
        """Steps done of those expected, the time so far and the time left (at this stage's pace)."""
        elapsed = time.monotonic() - self.t0
        if not self.expected:
            return f"{elapsed:.0f} s"
        about = "~" if self.expected != self.total else ""
        left = elapsed / self.done * max(0, self.expected - self.done) if self.done else None
        return (f"{self.done}/{about}{self.expected} steps, {duration(elapsed)}, "
                f"ETA {'?' if left is None else duration(left)}")

    def _draw(self, force=False):
        now = time.monotonic()
        if not self.tty:  # a log: a plain line now and then, only on long work
            if now - self.last_line >= self.every:
                self.last_line = now
                self.stream.write(f"{self.label}: {self.status()}\n")
                self.stream.flush()
            return
        if not force and now - self.last_draw < 0.1:
            return
        self.last_draw = now
        frac = min(1.0, self.done / self.expected) if self.expected else 0.0
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        self.stream.write(f"\r\x1b[K{self.label} [{bar}] {self.status()}")
        self.stream.flush()


def note(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- main


def run(args) -> int:
    text, lang, out = cheap_checks(args)

    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # torch's weight_norm notice from encodec
    warnings.filterwarnings("ignore", message="wsvk:")  # GPU faults: reported once, below
    from ..router import active_backend
    from .audio import format_for_path, write_file
    from .pipeline import SAMPLE_RATE, STAGES
    from .speaker import read_voice
    from .textsplit import split_text

    backend, adapter = active_backend()
    t0 = time.perf_counter()
    progress = ConsoleProgress()
    pipe = load_models(args, progress=progress, speaker=args.speaker is not None)
    speaker = None
    if args.speaker is not None:
        pipe.speaker_encoder()  # load it now: a bad speaker model fails before any synthesis
        speaker = read_voice(args.speaker)  # and a bad voice file too
    load_s = time.perf_counter() - t0
    # stderr stays empty until here, so a bad input gets exactly one `error:` line
    note(f"backend: {backend} ({adapter}); models loaded in {load_s:.1f} s")
    if args.random_weights:
        note(f"random {args.random_weights} weights: the output is noise, not speech")
    chunks = split_text(text, pipe.max_text_bytes, pipe.first_chunk_bytes)
    speech_s = len("".join(chunks)) / args.cps  # T2S is told this rate
    progress.speech_s = None if pipe.random_t2s else speech_s  # a random T2S runs to its cap: totals exact
    note(f"text: {len(text)} characters in {len(chunks)} chunk{'s' * (len(chunks) != 1)}, "
         f"about {duration(speech_s)} of speech")

    if out == "-":
        return stream_to_stdout(pipe, text, speaker, lang, args, backend, adapter)
    t0 = time.perf_counter()
    audio = pipe.generate(text, speaker=speaker, lang=lang, cps=args.cps, seed=args.seed)
    synth_s = time.perf_counter() - t0
    if audio.size == 0:
        raise RuntimeError("the models produced no audio (every chunk ended at once); try another --seed")
    write_file(out, audio, SAMPLE_RATE)
    faults = pipe.last.faults
    warn_faults(faults)

    secs = pipe.last.seconds
    audio_s = audio.size / SAMPLE_RATE
    print(f"wrote {args.output}: {audio_s:.2f} s of audio, {SAMPLE_RATE} Hz mono {format_for_path(out)}"
          + (" (random weights: noise)" if args.random_weights else ""))
    print(f"backend   {backend}" + (" (finished on the CPU after a GPU failure)" if faults else ""))
    print(f"adapter   {adapter}")
    print(f"chunks    {len(pipe.last.chunks)}")
    print("seconds   " + ", ".join(f"{s} {secs[s]:.2f}" for s in STAGES if s != "speaker" or args.speaker)
          + f", load {load_s:.2f}, total {synth_s:.2f}")
    print(f"real-time factor {synth_s / audio_s:.2f} (synthesis time / audio time: {audio_s / synth_s:.2f}x real time)")
    if args.verbose:
        for stage in STAGES:
            if stage == "speaker" and not args.speaker:
                continue
            print(f"\nrouter, {stage}:\n{pipe.stage_stats[stage].table()}")
        print(f"\nrouter, all stages:\n{pipe.stats.table()}")
        for stage, mod in pipe.resident_modules().items():
            print(f"\nresident {stage}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in mod.items()))
    return 0


def warn_faults(faults: list) -> None:
    """After a GPU failure the work was finished on the CPU: the audio is complete, but say so."""
    if faults:
        note(f"warning: GPU failure, finished on the CPU: {faults[0]}")


def stream_to_stdout(pipe, text, speaker, lang, args, backend, adapter) -> int:
    """-o -: a WAV (unknown-length header) on stdout, block by block as the engine makes it; the
    summary on stderr, with the time to first audio."""
    from .audio import StreamEncoder
    from .pipeline import SAMPLE_RATE

    enc, out = StreamEncoder("wav", SAMPLE_RATE), sys.stdout.buffer
    t0 = time.perf_counter()
    first, samples = None, 0
    blocks = pipe.stream(text, speaker=speaker, lang=lang, cps=args.cps, seed=args.seed)
    try:
        for block in blocks:
            out.write(enc.push(block))
            out.flush()
            if first is None:
                first = time.perf_counter() - t0
            samples += block.size
        out.write(enc.close())
        out.flush()
    except BrokenPipeError:  # the reader left (a player stopped, `| head`): stop synthesizing, quietly
        blocks.close()
        pipe.engine().close(wait=30)  # the process ends next: not while a thread is inside torch
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        note(f"stdout was closed by its reader after {samples / SAMPLE_RATE:.2f} s of audio: stopped")
        return 0
    total = time.perf_counter() - t0
    if samples == 0:
        raise RuntimeError("the models produced no audio (every chunk ended at once); try another --seed")
    audio_s = samples / SAMPLE_RATE
    warn_faults(pipe.engine().faults)
    note(f"streamed {audio_s:.2f} s of audio to stdout ({SAMPLE_RATE} Hz mono wav); backend {backend} ({adapter}); "
         f"first audio after {first:.2f} s, total {total:.2f} s, real-time factor {total / audio_s:.2f} "
         f"({audio_s / total:.2f}x real time)" + ("; random weights: noise" if args.random_weights else ""))
    return 0


def main(argv=None, prog: str = "synth.py") -> int:
    args = None
    try:
        args = build_parser(prog).parse_args(argv)
        return run(args)
    except BadInput as e:
        note(f"error: {e}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        note("error: interrupted")
        return 130
    except MemoryError:
        note("error: out of memory (try a smaller model, shorter text or WSVK_BACKEND=cpu)")
        return EXIT_FAILURE
    except Exception as e:  # sorted by kind below; no traceback for anything a user can act on
        return report(e, verbose=bool(args and args.verbose))


def report(e: Exception, verbose: bool) -> int:
    from ..errors import ConfigError, GpuError, WsvkError

    msg = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, (ConfigError, ValueError)) and isinstance(e, WsvkError):  # ConfigError, InputError
        note(f"error: {msg}")
        return EXIT_BAD_INPUT
    if isinstance(e, GpuError):
        note(f"error: GPU failure: {msg} (WSVK_BACKEND=cpu runs without the GPU)")
        return EXIT_FAILURE
    if isinstance(e, WsvkError):
        note(f"error: {msg}")
        return EXIT_FAILURE
    if verbose:
        import traceback

        traceback.print_exc()
    note(f"error: {type(e).__name__}: {msg}")
    return EXIT_FAILURE
