"""The one audio writer (wsvk/tts/audio.py): what each format sends while the samples come, and
that what it sent decodes back to the samples (soundfile, as clients read it)."""

import io

import numpy as np
import pytest
import soundfile as sf

from wsvk.tts.audio import STREAMING, StreamEncoder, encode

RATE = 24000
BLOCK = 3840  # 0.16 s: the engine's first block is 12 Vocos frames of 320 samples


def voiced(seconds=2.0):
    """A speech-like test signal: harmonics of a gliding 120-180 Hz pitch under a syllable envelope."""
    t = np.arange(int(seconds * RATE)) / RATE
    phase = 2 * np.pi * np.cumsum(150 + 30 * np.sin(2 * np.pi * 0.7 * t)) / RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    return (0.25 * x * (0.55 + 0.45 * np.sin(2 * np.pi * 3 * t)) ** 2).astype(np.float32)


def streamed(fmt, x):
    """The bytes a live encoder returns per pushed block, then at close."""
    enc = StreamEncoder(fmt, RATE)
    pieces = [enc.push(x[i:i + BLOCK]) for i in range(0, x.size, BLOCK)]
    return pieces, enc.close()


def aligned_snr_db(decoded, x, max_lead=4096):
    """The decoded signal's SNR against x at the lead (codec delay in front) that fits best."""
    n = x.size - max_lead
    d = int(np.argmax([np.dot(decoded[d:d + n], x[:n]) for d in range(max_lead)]))
    err = decoded[d:d + n] - x[:n]
    return d, 10 * np.log10(np.sum(x[:n] ** 2) / np.sum(err ** 2))


def test_mp3_streams_as_the_samples_come_and_decodes_back():
    x = voiced()
    pieces, tail = streamed("mp3", x)
    assert "mp3" in STREAMING
    assert all(pieces), [len(p) for p in pieces]  # every block of 0.16 s sends bytes at once
    data = b"".join(pieces) + tail
    decoded, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == RATE and decoded.ndim == 1
    # What a stream cannot take back: the Info frame it sent first stays empty (one silent frame)
    # and the encoder's delay is not trimmed. Both sit in front; nothing is lost.
    lead, snr = aligned_snr_db(decoded, x)
    assert 576 <= lead <= 2304 and decoded.size >= x.size + lead - 576, (lead, decoded.size)
    assert snr > 20, snr
    # constant 64 kbit/s (libsndfile reads an empty-Info VBR stream as a fraction of its length)
    assert abs(len(data) * 8 / (decoded.size / RATE) - 64000) < 4000, len(data)


def test_an_mp3_file_gets_its_header_rewritten_and_decodes_to_its_length():
    x = voiced()
    data = encode(x, RATE, "mp3")
    decoded, _ = sf.read(io.BytesIO(data), dtype="float32")
    assert decoded.size == x.size  # the Info frame's gapless trim, written at close
    assert aligned_snr_db(decoded, x)[1] > 20
    assert len(data) < len(b"".join(streamed("mp3", x)[0]))  # libsndfile's VBR: smaller than the stream


def test_flac_is_sent_whole_at_close():
    """A streamed FLAC's length would stay 0 ("unknown"), which soundfile cannot read: it waits."""
    x = voiced(1.0)
    pieces, tail = streamed("flac", x)
    assert not any(pieces) and "flac" not in STREAMING
    decoded, _ = sf.read(io.BytesIO(tail), dtype="float32")
    np.testing.assert_allclose(decoded, x, atol=1.5 / 32767)  # lossless to 16 bits
    assert tail == encode(x, RATE, "flac")


@pytest.mark.parametrize("fmt", ["wav", "pcm"])
def test_wav_and_pcm_send_every_block_at_once(fmt):
    x = voiced(1.0)
    pieces, tail = streamed(fmt, x)
    assert all(pieces)
    data = b"".join(pieces) + tail
    if fmt == "wav":  # the unknown-length header (0xFFFFFFFF sizes), then the samples
        assert data[4:8] == b"\xff\xff\xff\xff" and data[40:44] == b"\xff\xff\xff\xff"
        data = data[44:]
    np.testing.assert_allclose(np.frombuffer(data, "<i2") / 32767, x, atol=0.6 / 32767)


def test_opus_streams_a_page_per_block_and_a_file_keeps_one_second_pages():
    """libsndfile's Ogg pages hold ~1 s of Opus by default: a stream asks for 0.1 s pages, so
    every block leaves at once; the audio is the same."""
    x = voiced(3.0)
    pieces, tail = streamed("opus", x)
    assert all(pieces), [len(p) for p in pieces]
    data = b"".join(pieces) + tail
    decoded = sf.read(io.BytesIO(data), dtype="float32")[0]
    assert decoded.size == x.size and aligned_snr_db(decoded, x)[1] > 10
    whole = encode(x, RATE, "opus")  # a file: the default pages
    assert data.count(b"OggS") > 2 * whole.count(b"OggS")
    np.testing.assert_array_equal(sf.read(io.BytesIO(whole), dtype="float32")[0], decoded)
