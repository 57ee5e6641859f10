"""Layer 2, the kernels: one module per WGSL file in shaders/ (the family's variants, uniform
layouts and input checks), on top of wsvk.gpu. Users call them through wsvk.ops.

    matmul.py     matmul.wgsl     linear (GEMV / tiled), matmul, conv1d (implicit im2col GEMM); the
                                  resident decoder's GEMVs (a few columns, layer norm / combine in front)
    attention.py  attention.wgsl  SDPA: flash prefill, split-key decode + combine; decode_cache (the
                                  resident decoder's attention over per-sequence KV caches)
    fft.py        fft.wgsl        fft, ifft, rfft, irfft (Stockham radix 2/3/4/5, Bluestein)
    norm.py       norm.wgsl       layer_norm
    heads.py      heads.wgsl      split_heads (+ RoPE), merge_heads
    elementwise.py elementwise.wgsl axpy
    convnext.py   convnext.wgsl   Vocos' backbone: input conv (+ codebook gather), depthwise conv + norm
    istft.py      istft.wgsl      Vocos' head: spectrum from magnitude/phase, overlap-add
    embed.py      embed.wgsl      the resident decoder's input embedding, one column per sequence
    cases/        (no shader)     one case table per family: tests, selftest and bench_ops use it
"""
