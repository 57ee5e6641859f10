"""Vocos' backbone convolutions (shaders/convnext.wgsl), on GpuArrays in time-major [T, C] layout.

    embed_conv   the input conv (Cin -> Cout, kernel 7, "same"), from features [Cin, T] or summing
                 codebook rows on the fly (vocos' codes_to_features)
    dwconv_norm  a ConvNeXt block's depthwise conv fused with the LayerNorm after it, the previous
                 block's residual add folded into the loads; or (dwconv=False) a plain norm

The storage types come from the arrays: weights WT (f32/f16), the previous block output y and the
norm output out (f32/f16); math, the residual stream, biases and norm parameters are f32.
"""

from __future__ import annotations

import numpy as np

from ..gpu import GpuArray, Layout
from .common import alias, runtime

KERNEL = 7  # the convolutions' kernel size ("same" padding of 3 each side)
EMBED_TILE = (64, 16)  # output channels x frames per workgroup (shaders/convnext.wgsl: TO, TT)
EMBED_PARAMS = Layout("T Cin Cout Q bins tiles_o n_tiles")
NORM_PARAMS = Layout("T C eps:f")


def _aliases(wt: np.dtype, yt=np.float32, ot=np.float32) -> dict:
    return {"WT": alias(wt), "YT": alias(yt), "OT": alias(ot)}  # one module: every alias, always


def embed_conv(x: GpuArray, weight: GpuArray, bias: GpuArray, T: int, codes: GpuArray | None = None,
               bins: int = 0) -> GpuArray:
    """The backbone's input conv -> [T, Cout] f32. weight [Cin, 7, Cout] (torch's w[o, i, k]
    permuted so that neighbouring threads read neighbouring o), bias [Cout] f32. x: features
    [Cin, T] f32, or with `codes` [Q, T] int32 the codebooks [Q * bins, Cin] f32, summed as
    vocos' codes_to_features does (row code + q * bins)."""
    rt = runtime()
    cin, cout = int(weight.shape[0]), int(weight.shape[2])
    out = rt.empty((T, cout))
    tiles_o = -(-cout // EMBED_TILE[0])
    n_tiles = tiles_o * -(-T // EMBED_TILE[1])
    gather = codes is not None
    pipe = rt.pipeline("convnext", "embed", {"GATHER": gather}, aliases=_aliases(weight.dtype))
    params = rt.uniform(EMBED_PARAMS, T=T, Cin=cin, Cout=cout, Q=codes.shape[0] if gather else 0, bins=bins,
                        tiles_o=tiles_o, n_tiles=n_tiles)
    rt.run(pipe, [x, codes if gather else bias, weight, bias, out, params], rt.grid(n_tiles))
    return out


def dwconv_norm(r: GpuArray, y: GpuArray | None, scale: GpuArray, shift: GpuArray, eps: float, out: GpuArray,
                res_out: GpuArray | None = None, conv: tuple[GpuArray, GpuArray] | None = None) -> None:
    """out = norm(dwconv(r + y)) * scale + shift over [T, C] rows; res_out = r + y when given.

    r [T, C] f32 residual stream; y the previous block's output (None: r alone); conv (weight
    [7, C] WT, bias [C] f32) or None for a plain norm; out [T, C] f32 or f16."""
    rt = runtime()
    T, C = int(r.shape[0]), int(r.shape[1])
    w, b = conv if conv is not None else (scale, shift)  # unread without the conv
    stash = out.dtype == np.float32  # f32 out holds the pre-norm values between the passes
    pipe = rt.pipeline("convnext", "dwconv_norm",
                       {"DWCONV": conv is not None, "RESID": y is not None, "WRITE_RES": res_out is not None,
                        "STASH": stash},
                       aliases=_aliases(w.dtype if conv is not None else np.float32,
                                        np.float32 if y is None else y.dtype, out.dtype))
    spare = rt.empty((64,))  # bound where the optional output is unused
    rt.run(pipe, [r, y if y is not None else shift, w, b, scale, shift, res_out if res_out is not None else spare,
                  out, rt.uniform(NORM_PARAMS, T=T, C=C, eps=eps)], rt.grid(T))
