"""The op router: hot torch ops go to the kernels, results equal CPU torch, decisions are counted."""

import pytest
import torch
import torch.nn.functional as F

from wsvk.router import RouterStats, offload

from conftest import rel_err


def same(got, ref, bound=3e-5):
    assert got.shape == ref.shape and got.dtype == ref.dtype
    wide = torch.complex128 if ref.is_complex() else torch.float64
    assert rel_err(got.detach().numpy(), ref.detach().to(wide).numpy()) <= bound


@pytest.fixture
def g():
    return torch.Generator().manual_seed(0)


def test_any_model(rt, g):
    model = torch.nn.Sequential(torch.nn.Linear(33, 70), torch.nn.GELU(), torch.nn.Linear(70, 5)).eval()
    x = torch.randn(4, 7, 33, generator=g)
    with torch.no_grad():
        ref = model.double()(x.double())
        model.float()
        with offload() as stats:
            got = model(x)
    same(got, ref.float())
    assert stats.gpu_calls("linear") == 2 and stats.cpu_calls("linear") == 0


def test_matmul_and_bmm(rt, g):
    a, b = torch.randn(3, 9, 17, generator=g), torch.randn(3, 17, 11, generator=g)
    w = torch.randn(17, 6, generator=g)
    with offload() as stats:
        r1, r2, r3 = a @ b, torch.bmm(a, b), torch.matmul(a, w)
    same(r1, (a.double() @ b.double()).float())
    same(r2, (a.double() @ b.double()).float())
    same(r3, (a.double() @ w.double()).float())
    assert stats.gpu_calls("matmul") == 3


@pytest.mark.parametrize("kw", [{}, {"is_causal": True}, {"mask": "float"}, {"mask": "bool"}])
def test_sdpa(rt, g, kw):
    q, k, v = (torch.randn(2, 3, 5, 16, generator=g) for _ in range(3))
    mask = None
    if kw.get("mask") == "float":
        mask = torch.zeros(5, 5).masked_fill(torch.rand(5, 5, generator=g) > 0.7, float("-inf"))
        mask.fill_diagonal_(0)
    elif kw.get("mask") == "bool":
        mask = (torch.rand(1, 3, 5, 5, generator=g) > 0.3) | torch.eye(5, dtype=torch.bool)
    causal = kw.get("is_causal", False)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask if mask is None or
                                         mask.dtype == torch.bool else mask.double(), is_causal=causal)
    with offload() as stats:
        got = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    same(got, ref.float())
    assert stats.gpu_calls("sdpa") == 1


def test_fft_family(rt, g):
    x = torch.randn(3, 400, 2, generator=g)
    c = torch.randn(4, 96, generator=g, dtype=torch.complex64)
    with offload() as stats:
        r = torch.fft.rfft(x, dim=1)
        r_ortho = torch.fft.rfft(x, n=320, dim=1, norm="ortho")
        i = torch.fft.irfft(r, n=400, dim=1)
        f, fi = torch.fft.fft(c), torch.fft.ifft(c, norm="forward")
    same(r, torch.fft.rfft(x.double(), dim=1).to(torch.complex64), 1e-5)
    same(r_ortho, torch.fft.rfft(x.double(), n=320, dim=1, norm="ortho").to(torch.complex64), 1e-5)
    same(i, x, 1e-5)
    same(f, torch.fft.fft(c.to(torch.complex128)).to(torch.complex64), 1e-5)
    same(fi, torch.fft.ifft(c.to(torch.complex128), norm="forward").to(torch.complex64), 1e-5)
    assert stats.gpu_calls("fft") == 5


@pytest.mark.parametrize("center, window", [(True, True), (False, False)])
def test_stft(rt, g, center, window):
    x = torch.randn(2, 3000, generator=g)
    win = torch.hann_window(400) if window else None
    kw = dict(n_fft=400, hop_length=160, win_length=400 if window else None, center=center, return_complex=True)
    ref = torch.stft(x.double(), window=None if win is None else win.double(), **kw)
    with offload() as stats:
        got = torch.stft(x, window=win, **kw)
    same(got, ref.to(torch.complex64), 1e-5)
    assert stats.gpu_calls("fft") == 1


def test_fallbacks_are_counted(rt, g):
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8, generator=g)
    with torch.no_grad(), offload(min_work=10_000) as stats:
        small = lin(x)                        # too small for the threshold
    assert stats.cpu_calls("linear") == 1 and "too small" in stats.table()
    stats = RouterStats()
    with offload(stats):
        grad = lin(x)                         # autograd needs torch's own op
        ints = torch.matmul(torch.ones(4, 4, dtype=torch.int64), torch.ones(4, 4, dtype=torch.int64))
    assert grad.requires_grad and ints.dtype == torch.int64
    assert stats.reasons["linear"]["autograd"] == 1 and stats.reasons["matmul"]["dtype int64"] == 1
    same(small, (x.double() @ lin.weight.double().T + lin.bias.double()).float())


def test_conv1d_modules(rt, g):
    """nn.Conv1d as models use it (speechbrain's ECAPA pads itself and calls it with padding 0)."""
    convs = [torch.nn.Conv1d(6, 10, 3, dilation=2), torch.nn.Conv1d(6, 10, 4, padding="same", bias=False),
             torch.nn.Conv1d(6, 10, 5, stride=2, padding=2), torch.nn.Conv1d(6, 6, 3, groups=3)]
    x = torch.randn(2, 6, 31, generator=g)
    with torch.no_grad(), offload() as stats:
        got = [c(x) for c in convs] + [convs[0](x[0])]
    with torch.no_grad():
        ref = [c(x) for c in convs] + [convs[0](x[0])]
    for a, b in zip(got, ref):
        same(a, b, 1e-5)
    assert stats.gpu_calls("conv1d") == 4 and stats.reasons["conv1d"]["groups"] == 1


def test_nested_offload(rt, g):
    """A bare inner offload() joins the outer one; one with settings decides alone for its block."""
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8, generator=g)
    with torch.no_grad(), offload() as outer:
        with offload() as joined:
            lin(x)
        with offload(enabled=False) as off:
            kept = lin(x)
        lin(x)
    assert joined is outer and outer.gpu_calls("linear") == 2 and outer.cpu_calls("linear") == 0
    assert off.cpu_calls("linear") == 1 and off.gpu_calls("linear") == 0
    assert torch.equal(kept, torch.nn.functional.linear(x, lin.weight, lin.bias))  # torch's own result


def test_cpu_backend_counts_fallbacks(monkeypatch):
    monkeypatch.setenv("WSVK_BACKEND", "cpu")
    with offload() as stats, torch.no_grad():
        torch.nn.Linear(4, 4)(torch.ones(1, 4))
    assert stats.gpu_calls("linear") == 0 and stats.reasons["linear"]["WSVK_BACKEND=cpu"] == 1


def test_weights_refresh_after_in_place_change(rt):
    lin = torch.nn.Linear(16, 16, bias=False)
    x = torch.ones(1, 16)
    with torch.no_grad(), offload():
        first = lin(x)
        lin.weight.mul_(2)
        second = lin(x)
    same(second, 2 * first, 1e-6)


def test_gpu_fault_mid_model_finishes_on_cpu(rt, g):
    """A lost device in the middle of a model: that op and the rest run on the CPU, results intact."""
    model = torch.nn.Sequential(*[torch.nn.Linear(24, 24) for _ in range(6)]).eval()
    x = torch.randn(3, 24, generator=g)
    with torch.no_grad():
        ref = model(x)
        rt.fault_after = rt.stats["submits"] + 2
        try:
            with pytest.warns(RuntimeWarning, match="injected fault"), offload() as stats:
                got = model(x)
        finally:
            rt.fault_after, rt.lost = None, None
    same(got, ref.double().float(), 1e-5)
    assert stats.gpu_calls("linear") >= 1 and stats.reasons["linear"]["GPU fault"] == 1
    assert stats.reasons["linear"]["after GPU fault"] == 6 - 1 - stats.gpu_calls("linear")
    assert "WSVK_FAULT_AFTER" in stats.faults[0]
