"""Head layout kernels (shaders/heads.wgsl) against numpy in float64, RoPE against whisperspeech."""

import numpy as np
import pytest
import torch

from conftest import case_params, rand, rel_err
from wsvk import ops
from wsvk.kernels import cases


def rope_table(P, dh):
    """[cos; sin] [2P, dh] from whisperspeech's own Rotary module."""
    from whisperspeech.modules import Rotary

    cos, sin = Rotary(dh)(torch.zeros(1, P))
    return np.concatenate([cos[0, :P, 0].numpy(), sin[0, :P, 0].numpy()])


def ref_split(x, H, parts, table=None, rope_parts=0, step=1):
    """numpy float64 reference; RoPE through whisperspeech's rope_rotate."""
    from whisperspeech.modules import rope_rotate

    L, W = x.shape[0], x.shape[1] // parts
    outs = []
    for p in range(parts):
        y = x[:, p * W:(p + 1) * W].astype(np.float64).reshape(1, L, H, W // H)
        if p < rope_parts:
            P = table.shape[0] // 2
            cos = torch.from_numpy(table[:P].astype(np.float64))[None, :, None]
            sin = torch.from_numpy(table[P:].astype(np.float64))[None, :, None]
            y = rope_rotate(torch.from_numpy(y), torch.arange(L) * step, cos, sin).numpy()
        outs.append(y.transpose(0, 2, 1, 3))
    return outs


@pytest.mark.parametrize("case", case_params(cases.HEADS))
def test_case(rt, guard, case):
    case.run()


@pytest.mark.parametrize("L,H,dh,parts,rope_parts,step", [(13, 2, 32, 3, 2, 1), (9, 4, 16, 2, 1, 3)])
def test_rope_as_whisperspeech(rt, guard, L, H, dh, parts, rope_parts, step):
    """The table's RoPE reference is numpy; here the kernel against whisperspeech's own Rotary
    tables and rope_rotate."""
    x = rand((L, parts * H * dh), L)
    table = rope_table((L - 1) * step + 1, dh)
    got = ops.split_heads(x, H, parts, rope=table, rope_parts=rope_parts, rope_step=step)
    ref = ref_split(x, H, parts, table, rope_parts, step)
    assert len(got) == parts
    for p, (g, r) in enumerate(zip(got, ref)):
        assert g.shape == (1, H, L, dh) and g.dtype == np.float32
        assert rel_err(g, r) < (1e-7 if p < rope_parts else 1e-12), p


def test_merge_heads_inverts_split(rt, guard):
    x = rand((11, 3 * 5 * 6), 4)
    q, k, v = ops.split_heads(x, 5, 3)
    merged = ops.merge_heads(k)
    assert merged.shape == (11, 30)
    np.testing.assert_array_equal(merged, x[:, 30:60])


@pytest.mark.needs_f16
def test_f16_out_and_gpu_face(rt):
    x = rand((5, 2 * 8), 2)
    k, v = ops.split_heads(rt.upload(x), 2, 2, out_dtype=np.float16)
    assert not isinstance(k, np.ndarray) and k.dtype == np.float16
    np.testing.assert_array_equal(v.numpy(), x[:, 8:].reshape(5, 2, 4).transpose(1, 0, 2)[None].astype(np.float16))
    back = ops.merge_heads(v, out_dtype=np.float32)
    assert back.dtype == np.float32 and rel_err(back.numpy(), x[:, 8:]) < 1e-3


def test_errors(rt):
    x = np.zeros((4, 12), np.float32)
    with pytest.raises(ValueError, match="parts"):
        ops.split_heads(x, 2, 4)
    with pytest.raises(ValueError, match="multiple"):
        ops.split_heads(x, 4, 2)  # width 6, 4 heads
    with pytest.raises(ValueError, match="rope"):
        ops.split_heads(x, 2, 3, rope_parts=1)
    with pytest.raises(ValueError, match="rope_step"):
        ops.split_heads(x, 2, 3, rope=rope_table(4, 2), rope_parts=2, rope_step=-1)
    with pytest.raises(ValueError, match="covers"):
        ops.split_heads(x, 2, 3, rope=rope_table(2, 2), rope_parts=2)
    with pytest.raises(TypeError, match="int32"):
        ops.split_heads(x.astype(np.int32), 2, 3)
    with pytest.raises(TypeError, match="float64"):
        ops.split_heads(x, 2, 3, out_dtype=np.float64)
    with pytest.raises(ValueError, match=r"\[1, H, L, Dh\]"):
        ops.merge_heads(np.zeros((2, 2, 3, 4), np.float32))
