#!/usr/bin/env python
"""Text to speech with WhisperSpeech; the hot ops run on any GPU through wgpu.

    WSVK_BACKEND=wgpu python synth.py "Hello there." -o hello.wav
    echo "Dzień dobry." | python synth.py - --lang pl -o pl.wav
    python synth.py "Noise test." --random-weights tiny -o noise.wav   # offline, makes noise

Exit codes: 0 done, 2 bad input (one `error:` line, nothing written), 1 run-time failure.
Heavy imports (torch, whisperspeech) wait until the cheap checks have passed.
"""

import sys

from wsvk.tts.cli import main

if __name__ == "__main__":
    sys.exit(main())
