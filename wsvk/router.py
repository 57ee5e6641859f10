"""Layer 3: the op router. Sends the hot torch ops of any model to the WGSL kernels.

    with wsvk.router.offload() as stats:
        model(x)
    print(stats.table())

Inside `offload()`, a TorchFunctionMode sees every torch call. F.linear, F.conv1d (groups=1),
matmul/bmm, F.scaled_dot_product_attention, torch.fft.{fft,ifft,rfft,irfft} and torch.stft go to
`wsvk.ops` when the backend selects an adapter and the call qualifies (float dtype, no
autograd, a shape the kernels take, enough work to pay for the transfer); everything
else runs on CPU torch untouched. Each decision is counted per op, with the reason for
every fallback. Results equal CPU torch up to float32 rounding.
"""

from __future__ import annotations

import math
import threading
import warnings
import weakref
from collections import Counter, defaultdict
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from . import config, ops
from .errors import GpuError
from .gpu import GpuArray, get_runtime, select_adapter

OPS = ("linear", "matmul", "sdpa", "fft")
_FLOAT_DTYPES = (torch.float32, torch.float16)


class Fallback(Exception):
    """Raised by a handler when a call does not qualify; the message is the reason."""


class RouterStats:
    """Per-op counts of calls run on the GPU and on the CPU, with fallback reasons."""

    def __init__(self):
        self.gpu = Counter()
        self.cpu = Counter()
        self.reasons: dict[str, Counter] = defaultdict(Counter)
        self.faults: list[str] = []  # GPU failures met (each one switched the rest of its block to CPU)
        self.lock = threading.Lock()

    def count(self, op: str, reason: str | None = None) -> None:
        with self.lock:
            if reason is None:
                self.gpu[op] += 1
            else:
                self.cpu[op] += 1
                self.reasons[op][reason] += 1

    def gpu_calls(self, op: str) -> int:
        return self.gpu[op]

    def cpu_calls(self, op: str) -> int:
        return self.cpu[op]

    def merge(self, other: RouterStats) -> None:
        with self.lock:
            self.gpu.update(other.gpu)
            self.cpu.update(other.cpu)
            for op, c in other.reasons.items():
                self.reasons[op].update(c)
            self.faults += other.faults

    def table(self) -> str:
        rows = [f"{'op':<8} {'gpu':>7} {'cpu':>7}  fallback reasons"]
        for op in sorted(set(self.gpu) | set(self.cpu), key=lambda o: (o not in OPS, o)):
            why = ", ".join(f"{r} ({n})" for r, n in self.reasons[op].most_common())
            rows.append(f"{op:<8} {self.gpu[op]:>7} {self.cpu[op]:>7}  {why}")
        return "\n".join(rows)


def active_backend() -> tuple[str, str]:
    """("wgpu", adapter name) when the router offloads, else ("cpu", why not)."""
    if config.backend() == "cpu":
        return ("cpu", "WSVK_BACKEND=cpu")
    adapter = select_adapter()
    if adapter is None:
        return ("cpu", "no hardware GPU adapter; WSVK_BACKEND=auto skips software ones, =wgpu uses them")
    rt = get_runtime()
    return ("wgpu", f"{rt.info['name']} ({rt.info['backend']})")


# ---------------------------------------------------------------- tensor plumbing


class _WeightCache:
    """GPU copies of parameters, uploaded once and refreshed when the tensor changes in place."""

    def __init__(self):
        self.entries: dict[int, tuple] = {}
        self.lock = threading.Lock()

    def get(self, t: torch.Tensor) -> GpuArray:
        key = id(t)
        with self.lock:
            hit = self.entries.get(key)
            if hit is not None and hit[0]() is t and hit[1] == _version(t):
                return hit[2]
        arr = get_runtime().upload(_to_numpy(t))
        with self.lock:
            self.entries[key] = (weakref.ref(t, lambda _, k=key: self.entries.pop(k, None)), _version(t), arr)
        return arr

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


WEIGHTS = _WeightCache()


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # inference tensors keep no version counter (and cannot change in place)
        return -1


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _operand(t: torch.Tensor):
    """Parameters (and other leaf weights) stay cached on the GPU; activations are uploaded."""
    return WEIGHTS.get(t) if isinstance(t, torch.nn.Parameter) else _to_numpy(t)


def _check_tensor(t, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise Fallback(f"{name} not a tensor")
    if t.device.type != "cpu":
        raise Fallback(f"{t.device.type} tensor")
    if t.requires_grad and torch.is_grad_enabled():
        raise Fallback("autograd")
    if t.dtype not in _FLOAT_DTYPES:
        raise Fallback(f"dtype {str(t.dtype).replace('torch.', '')}")
    if t.dtype == torch.float16 and not get_runtime().has_f16:
        raise Fallback("float16 without shader-f16")
    return t


def _same_dtype(*ts) -> torch.dtype:
    dts = {t.dtype for t in ts if t is not None}
    if len(dts) != 1:
        raise Fallback("mixed dtypes")
    return dts.pop()


def _result(a, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


# ---------------------------------------------------------------- handlers


def _linear(router, input, weight, bias=None):
    x, w = _check_tensor(input, "input"), _check_tensor(weight, "weight")
    if bias is not None:
        _check_tensor(bias, "bias")
    dt = _same_dtype(x, w, bias)
    if x.dim() < 1 or w.dim() != 2 or x.shape[-1] != w.shape[1]:
        raise Fallback("shape")
    router.worth(x.numel() * w.shape[0])
    out = ops.linear(_to_numpy(x), _operand(w), None if bias is None else _operand(bias))
    return _result(out, dt)


def _conv1d(router, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    x, w = _check_tensor(input, "input"), _check_tensor(weight, "weight")
    if bias is not None:
        _check_tensor(bias, "bias")
    dt = _same_dtype(x, w, bias)
    if groups != 1:
        raise Fallback("groups")
    one = lambda v: v[0] if isinstance(v, (tuple, list)) and len(v) == 1 else v  # noqa: E731
    stride, padding, dilation = one(stride), one(padding), one(dilation)
    if x.dim() not in (2, 3) or w.dim() != 3 or x.shape[-2] != w.shape[1]:
        raise Fallback("shape")
    router.worth(x.numel() * w.shape[0] * w.shape[2] // max(1, int(stride)))
    out = ops.conv1d(_to_numpy(x), _operand(w), None if bias is None else _operand(bias),
                     stride=stride, padding=padding, dilation=dilation)
    return _result(out, dt)


def _matmul(router, input, other, *, out=None):
    if out is not None:
        raise Fallback("out=")
    a, b = _check_tensor(input, "input"), _check_tensor(other, "other")
    dt = _same_dtype(a, b)
    if a.dim() < 2 or b.dim() < 2:
        raise Fallback("vector operand")
    if b.dim() > 2 and a.shape[:-2] != b.shape[:-2]:
        raise Fallback("broadcast batch")
    if a.shape[-1] != b.shape[-2]:
        raise Fallback("shape")
    router.worth(a.numel() * b.shape[-1])
    return _result(ops.matmul(_to_numpy(a), _operand(b)), dt)


def _sdpa(router, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
          enable_gqa=False):
    q, k, v = (_check_tensor(t, n) for t, n in ((query, "query"), (key, "key"), (value, "value")))
    dt = _same_dtype(q, k, v)
    if dropout_p and dropout_p > 0:
        raise Fallback("dropout")
    if enable_gqa or q.dim() != k.dim() or q.dim() not in (3, 4) or q.shape[:-2] != k.shape[:-2] \
            or k.shape[:-1] != v.shape[:-1] or q.shape[-1] != k.shape[-1]:
        raise Fallback("shape")
    if q.shape[-1] > 128 or v.shape[-1] > 128:
        raise Fallback("head dim > 128")
    mask = None
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor) or attn_mask.device.type != "cpu":
            raise Fallback("mask")
        if attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(torch.float32)
        mask = _to_numpy(attn_mask)
    squeeze = q.dim() == 3
    qn, kn, vn = (_to_numpy(t.unsqueeze(0) if squeeze else t) for t in (q, k, v))
    if mask is not None and squeeze and mask.ndim == 3:
        mask = mask[None]
    router.worth(qn.shape[0] * qn.shape[1] * qn.shape[2] * kn.shape[2] * (qn.shape[3] + vn.shape[3]))
    out = ops.attention(qn, kn, vn, mask=mask, causal=bool(is_causal), scale=scale)
    return _result(out[0] if squeeze else out, dt)


_FFT_FUNCS = {}


def _fft_handler(kind: str):
    def handler(router, input, n=None, dim=-1, norm=None, *, out=None):
        if out is not None:
            raise Fallback("out=")
        if not isinstance(input, torch.Tensor) or input.device.type != "cpu":
            raise Fallback("input")
        if input.requires_grad and torch.is_grad_enabled():
            raise Fallback("autograd")
        if input.dtype not in (torch.float32, torch.complex64):
            raise Fallback(f"dtype {str(input.dtype).replace('torch.', '')}")
        if kind == "rfft" and input.is_complex():
            raise Fallback("complex rfft")
        if input.dim() == 0 or input.numel() == 0:
            raise Fallback("shape")
        dim = dim % input.dim()
        length = n if n is not None else (2 * (input.shape[dim] - 1) if kind == "irfft" else input.shape[dim])
        if length < 1:
            raise Fallback("n")
        router.worth(input.numel() // input.shape[dim] * length * max(1, int(math.log2(length))))
        x = input.movedim(dim, -1).resolve_conj()
        res = getattr(ops, kind)(_to_numpy(x), n=n)
        res = torch.from_numpy(np.ascontiguousarray(res))
        res = res * _norm_factor(kind, norm, length) if norm not in (None, "backward") else res
        return res.movedim(-1, dim)

    return handler


def _norm_factor(kind: str, norm: str, n: int) -> float:
    inverse = kind in ("ifft", "irfft")
    if norm == "ortho":
        return math.sqrt(n) if inverse else 1 / math.sqrt(n)
    if norm == "forward":
        return n if inverse else 1 / n
    raise Fallback(f"norm={norm}")


def _stft(router, input, n_fft, hop_length=None, win_length=None, window=None, center=True,
          pad_mode="reflect", normalized=False, onesided=None, return_complex=None, align_to_window=None):
    """torch.stft as CPU framing + a batched GPU rfft (speechbrain's fbank uses this)."""
    x = input
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.dim() not in (1, 2):
        raise Fallback("input")
    if x.requires_grad and torch.is_grad_enabled():
        raise Fallback("autograd")
    if onesided is False or not return_complex:
        raise Fallback("two-sided or real output")
    if align_to_window:
        raise Fallback("align_to_window")
    hop = hop_length or n_fft // 4
    win = win_length or n_fft
    w = torch.ones(win) if window is None else window
    if w.dtype != torch.float32 or w.shape != (win,):
        raise Fallback("window")
    w = F.pad(w, ((n_fft - win) // 2, n_fft - win - (n_fft - win) // 2))
    batched = x.dim() == 2
    xb = x if batched else x[None]
    if center:
        xb = F.pad(xb[:, None], (n_fft // 2, n_fft // 2), mode=pad_mode)[:, 0]
    if xb.shape[-1] < n_fft:
        raise Fallback("signal shorter than n_fft")
    frames = xb.unfold(-1, n_fft, hop) * w  # [B, T, n_fft]
    router.worth(frames.numel() * max(1, int(math.log2(n_fft))))
    spec = torch.from_numpy(np.ascontiguousarray(ops.rfft(_to_numpy(frames))))  # [B, T, F]
    if normalized:
        spec = spec / math.sqrt(n_fft)
    spec = spec.transpose(1, 2)
    return spec if batched else spec[0]


_HANDLERS = {
    F.linear: ("linear", _linear),
    F.conv1d: ("conv1d", _conv1d),
    torch.matmul: ("matmul", _matmul),
    torch.Tensor.matmul: ("matmul", _matmul),
    torch.Tensor.__matmul__: ("matmul", _matmul),
    torch.bmm: ("matmul", _matmul),
    torch.Tensor.bmm: ("matmul", _matmul),
    F.scaled_dot_product_attention: ("sdpa", _sdpa),
    torch.fft.fft: ("fft", _fft_handler("fft")),
    torch.fft.ifft: ("fft", _fft_handler("ifft")),
    torch.fft.rfft: ("fft", _fft_handler("rfft")),
    torch.fft.irfft: ("fft", _fft_handler("irfft")),
    torch.stft: ("fft", _stft),
}


class _Router(TorchFunctionMode):
    def __init__(self, stats: RouterStats, min_work: int, cpu_reason: str | None = None, warn: bool = True):
        super().__init__()
        self.warn = warn
        self.stats = stats
        self.min_work = min_work
        self.cpu_reason = cpu_reason  # set: count every hot op as a CPU call for this reason
        self.paused = 0  # > 0 while an inner offload() with its own settings decides (its CPU calls reach us)

    def worth(self, work: int) -> None:
        if work < self.min_work:
            raise Fallback("too small")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        entry = _HANDLERS.get(func)
        if entry is None or self.paused:
            return func(*args, **kwargs)
        op, handler = entry
        if self.cpu_reason is not None:
            self.stats.count(op, self.cpu_reason)
            return func(*args, **kwargs)
        if func in (torch.bmm, torch.Tensor.bmm) and (args[0].dim() != 3 or args[1].dim() != 3):
            return func(*args, **kwargs)  # let torch raise its own error
        try:
            result = handler(self, *args, **kwargs)
        except Fallback as why:
            self.stats.count(op, str(why))
            return func(*args, **kwargs)
        except (ValueError, TypeError) as e:  # a kernel refused the call: torch computes it instead
            self.stats.count(op, f"kernel: {str(e)[:60]}")
            return func(*args, **kwargs)
        except GpuError as e:  # the state lives in CPU tensors: recompute this op there, stay on the CPU
            self.cpu_reason = "after GPU fault"
            self.stats.count(op, "GPU fault")
            self.stats.faults.append(str(e))
            if self.warn:
                warnings.warn(f"wsvk: {e}; continuing on the CPU", RuntimeWarning, stacklevel=2)
            return func(*args, **kwargs)
        self.stats.count(op)
        return result


_ACTIVE = threading.local()  # the router installed by the outermost offload() of each thread


@contextmanager
def offload(stats: RouterStats | None = None, enabled: bool | None = None, min_work: int | None = None,
            warn: bool = True):
    """Route the hot ops of any torch code in this block to the GPU kernels.

    enabled: None follows WSVK_BACKEND (an adapter selected -> on); min_work: calls with
    fewer multiply-adds than this stay on the CPU (default WSVK_MIN_WORK, 0); warn: one
    RuntimeWarning when a GPU failure sends the rest of the block to the CPU. Yields the
    RouterStats that counts the decisions. Inside another offload() block, a call with no
    arguments joins the outer router (and counts into its stats); one with arguments decides
    alone for its block (e.g. offload(enabled=False) keeps a block on the CPU).
    """
    outer = getattr(_ACTIVE, "router", None)
    if outer is not None and stats is None and enabled is None and min_work is None:
        yield outer.stats
        return
    stats = RouterStats() if stats is None else stats
    if enabled is None:
        backend, why = active_backend()
        cpu_reason = None if backend == "wgpu" else why
    else:
        cpu_reason = None if enabled else "offload disabled"
    if cpu_reason is None and get_runtime().lost:
        cpu_reason = "after GPU fault"
    router = _Router(stats, config.min_work() if min_work is None else min_work, cpu_reason, warn)
    _ACTIVE.router = router
    if outer is not None:
        outer.paused += 1  # this block's settings win: the outer router passes its calls through
    try:
        with router:
            yield stats
    finally:
        _ACTIVE.router = outer
        if outer is not None:
            outer.paused -= 1
