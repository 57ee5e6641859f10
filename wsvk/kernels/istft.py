"""Vocos' ISTFT head around the irfft (shaders/istft.wgsl), float32 GpuArrays.

    spectrum     head output [T, 2F] (log-magnitudes, then phases) -> complex [T, F, 2]
    overlap_add  irfft frames [T, n_fft] -> waveform: window, overlap-add, division by the window
                 envelope, "same" padding trimmed
"""

from __future__ import annotations

from ..gpu import GpuArray, Layout
from .common import runtime

SPEC_PARAMS = Layout("T F")
OLA_PARAMS = Layout("T n_fft hop pad L")


def spectrum(z: GpuArray) -> GpuArray:
    """min(exp(m), 100) * (cos p, sin p) for z = [m | p] rows [T, 2F] -> [T, F, 2]."""
    rt = runtime()
    T, F = int(z.shape[0]), int(z.shape[1]) // 2
    spec = rt.empty((T, F, 2))
    rt.run(rt.pipeline("istft", "spectrum"), [z, spec, rt.uniform(SPEC_PARAMS, T=T, F=F)], rt.grid(-(-T * F // 256)))
    return spec


def overlap_add(frames: GpuArray, window: GpuArray, hop: int, pad: int) -> GpuArray:
    """torch.istft's fold for frames [T, n_fft] with `window` [n_fft], trimming `pad` samples at
    each end -> waveform [(T - 1) * hop + n_fft - 2 * pad]."""
    rt = runtime()
    T, n_fft = int(frames.shape[0]), int(frames.shape[1])
    n_out = (T - 1) * hop + n_fft - 2 * pad
    wave = rt.empty((n_out,))
    params = rt.uniform(OLA_PARAMS, T=T, n_fft=n_fft, hop=hop, pad=pad, L=n_out)
    rt.run(rt.pipeline("istft", "overlap_add"), [frames, window, wave, params], rt.grid(-(-n_out // 256)))
    return wave
