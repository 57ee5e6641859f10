"""Helpers of the resident-module tests: tiny T2S/S2A specs and inputs, the same-tokens and
teacher-forced-logits comparisons against the CPU models, Vocos' stressed random weights and the
f16 logit bound (derived in tests/test_precision.py)."""

import dataclasses

import torch

import tiny_models as tm

TEXT = "hello world"

# f16 storage's unit roundoff, and the bound on the relative L2 error of the decoders' f16 logits
U = 2.0 ** -11
LOGIT_BOUND = 4 * U


def t2s_spec(seed=0, emb_scale=0.2, head_width=32, n_head=2, depth=1):
    """tests/tiny_models' T2S; its unit-scale token embeddings make it repeat its input token,
    so they are scaled down here to get varied tokens. head_width 33: K % 4 != 0 everywhere."""
    if (head_width, n_head, depth) == (32, 2, 1):
        spec = tm.build_t2s(seed)
    else:
        from whisperspeech import t2s_up_wds_mlang_enclm as t2s

        torch.manual_seed(seed)
        tunables = t2s.Tunables(encoder_depth_ratio=0.5)
        config = dict(depth=depth, n_head=n_head, head_width=head_width, ffn_mult=2, ttoks_len=tm.TTOKS_LEN,
                      ttoks_codes=256, ttoks_width=None, stoks_len=tm.STOKS_LEN, stoks_codes=tm.STOKS_CODES,
                      stoks_width=None)
        model = t2s.TSARTransformer(**config, tunables=tunables)
        tm._redraw(model)
        spec = dict(config=config, tunables=dataclasses.asdict(tunables), state_dict=model.state_dict())
    sd = spec["state_dict"]
    for k in list(sd):
        if k.startswith("embeddings.embedding."):
            sd[k] = sd[k] * emb_scale
    return spec


def s2a_cond_spec(seed=0):
    """A tiny s2a_delar_mup_wds_mlang_cond model (the variant of the released v1.95 checkpoints)."""
    from whisperspeech import s2a_delar_mup_wds_mlang_cond as s2a

    torch.manual_seed(seed + 1)
    tunables = s2a.Tunables(encoder_depth_ratio=0.5)
    config = dict(depth=1, ctx_n=3 * tm.STOKS_LEN, stoks_len=tm.STOKS_LEN, stoks_codes=tm.STOKS_CODES,
                  stoks_width=None, spk_width=tm.SPK_WIDTH, atoks_width=None, n_head=2, head_width=32,
                  ffn_mult=2, quantizers=4, speaker_map={"1": 0})
    model = s2a.SADelARTransformer(**config, tunables=tunables)
    tm._redraw(model)
    return dict(config=config, tunables=dataclasses.asdict(tunables), state_dict=model.state_dict())


def s2a_inputs(seed=0, n=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, tm.STOKS_CODES - 1, (n,), generator=g), torch.randn(1, tm.SPK_WIDTH, generator=g)


def same_tokens(cpu_fn, gpu_fn, seed):
    torch.manual_seed(seed)
    ref = cpu_fn()
    torch.manual_seed(seed)
    got = gpu_fn()
    assert got.shape == ref.shape and torch.equal(got, ref), f"\nCPU {ref.tolist()}\nGPU {got.tolist()}"
    return got


def t2s_reference_logits(model, res, seq):
    """Teacher-forced logits of the CPU model and of the resident decoder for tokens `seq`."""
    from whisperspeech import languages

    model.ensure_tokenizer()
    tt = torch.tensor(model.tokenizer.encode(TEXT))
    tt = torch.nn.functional.pad(tt, (1, model.ttoks_len - len(tt) - 1))[None]
    langs, cpss = torch.tensor([languages.to_id("en")]), torch.tensor([15])
    res.start_chunk(tt, langs, cpss)
    with torch.no_grad():
        xenc, xpos, cps_emb = model.run_encoder(tt, langs, cpss)  # the CPU reference's own encoder
    pos = torch.arange(len(seq))
    ref, got = [], []
    with torch.no_grad():
        for i, t in enumerate(seq):
            r, _ = model(None, None, None, None, torch.tensor([[t]]), in_stoks_positions=pos[i:i + 1], loss=None,
                         xenc=xenc, xenc_positions=xpos, cps_emb=cps_emb)
            ref.append(r)
            got.append(res.logits(t, i))
    return torch.cat(ref), torch.cat(got)


def stress_vocos(v, seed):
    """Vocos `v` with "stressed" random weights (tests/test_resident_vocos.py says why), in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in v.backbone.named_parameters():
            if p.dim() >= 2 and "norm" not in name:  # conv/linear weights: unit gain
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif "gamma" in name:
                p.copy_(0.1 + 0.3 * torch.rand(p.shape, generator=g))
            elif "scale" in name or name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:  # biases, shifts
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
        w, b = v.head.out.weight, v.head.out.bias
        F = w.shape[0] // 2
        w.copy_(torch.randn(w.shape, generator=g) / w.shape[1] ** 0.5)
        w[F:] *= 4  # phases of several radians
        b.copy_(torch.randn(b.shape, generator=g))
        b[:16] += 6  # exp(m) > 100: the clip
    return v.eval()
