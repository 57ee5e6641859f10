"""ResidentVocos (wsvk/resident_vocos.py) against vocos 0.1.0 on the CPU.

Weights are random but "stressed": unit-gain linear/conv weights, non-zero biases, per-bandwidth
AdaLayerNorm rows, random layer scales, phases of several radians and some log-magnitudes above
ln(100) so the clip is exercised. vocos' own init (std 0.02, zero biases, identical AdaLayerNorm
rows) would leave most of the code untested.

Accuracy bound: everything runs in float32 with a different summation order than torch, so the
target is "as close to the exact (float64) result as torch's own float32 run is". Measured on
lavapipe: ours vs float64 1e-6..3e-6, torch float32 vs float64 1e-6..3e-6, ours vs torch float32
1e-6..4e-6. The tests demand err(ours, float64) <= 4 * err(torch f32, float64) (floor 1e-6)
and err(ours, torch f32) <= 1e-5: about 3x headroom over the worst figure seen, and still two
orders below any real bug (a wrong bandwidth row, window or tap gives > 1e-2).
"""

import copy

import numpy as np
import pytest
import torch

from conftest import rel_err
from resident_helpers import stress_vocos
from wsvk.tts.models import RELEASED_VOCOS_CONFIG, build_vocos, random_vocos
from wsvk.resident import ResidentVocos

BOUND_F32 = 1e-5


pytestmark = pytest.mark.usefixtures("f32_precision")  # identical tokens / f32 rounding vs the CPU
# Frame counts are 1 or > 8: every distinct count <= 8 compiles its own GEMV pipelines in
# wsvk.ops.linear, which takes seconds on lavapipe.


class Case:
    def __init__(self, vocos):
        self.v = vocos
        self.bb64 = copy.deepcopy(vocos.backbone).double()
        self.head64 = copy.deepcopy(vocos.head).double()
        self.rv = ResidentVocos(vocos)

    def refs(self, feats, bw):
        bw_t = torch.tensor(bw)
        with torch.inference_mode():
            ref32 = self.v.decode(feats, bandwidth_id=bw_t)
            ref64 = self.head64(self.bb64(feats.double(), bandwidth_id=bw_t))
        return ref32.numpy(), ref64.numpy()

    def check(self, got, feats, bw):
        ref32, ref64 = self.refs(feats, bw)
        got = got.numpy()
        assert got.shape == ref32.shape and got.dtype == np.float32
        assert np.isfinite(got).all()
        e32, e64, torch_e64 = rel_err(got, ref32), rel_err(got, ref64), rel_err(ref32, ref64)
        assert e32 <= BOUND_F32, f"vs torch float32: {e32:.3g}"
        assert e64 <= max(4 * torch_e64, 1e-6), f"vs float64: {e64:.3g} (torch float32: {torch_e64:.3g})"
        return e32

    def decode(self, rt, feats, bw, **kw):
        before = dict(rt.stats)
        got = self.rv.decode(feats, bandwidth_id=bw, **kw)
        self._one_submit(rt, before)
        return got

    def decode_codes(self, rt, codes, bw):
        before = dict(rt.stats)
        got = self.rv.decode_codes(codes, bandwidth_id=bw)
        self._one_submit(rt, before)
        return got

    def _one_submit(self, rt, before):  # a few submits (recording overlaps the GPU), one readback
        n = self.rv.submits_per_call
        delta = {k: rt.stats[k] - before[k] for k in ("submits", "dispatches", "readbacks")}
        assert delta == {"submits": n, "dispatches": self.rv.dispatches_per_call, "readbacks": 1}, delta
        assert self.rv.last_call["submits"] == n


def _codes(q, t, seed, bins=1024):
    return torch.randint(0, bins, (q, 1, t), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """torch's CPU references with one thread: on the 2-core test machines lavapipe's threads and
    torch's spinning OpenMP workers starve each other (seconds-long stalls seen)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def released(rt):
    return Case(stress_vocos(random_vocos(0), 1))


CUSTOM = copy.deepcopy(RELEASED_VOCOS_CONFIG)
CUSTOM["feature_extractor"]["init_args"]["bandwidths"] = [1.5, 3.0]  # 4 codebooks, 2 bandwidth ids
CUSTOM["backbone"]["init_args"].update(dim=96, intermediate_dim=200, num_layers=3, adanorm_num_embeddings=2)
CUSTOM["head"]["init_args"].update(dim=96, n_fft=320, hop_length=75)  # odd pad: (320 - 75) // 2

PLAIN = copy.deepcopy(CUSTOM)  # plain LayerNorm (no bandwidth), no layer scale, n_fft 256 / hop 64
PLAIN["backbone"]["init_args"].update(dim=64, intermediate_dim=130, num_layers=2, adanorm_num_embeddings=None,
                                       layer_scale_init_value=-1.0)
PLAIN["head"]["init_args"].update(dim=64, n_fft=256, hop_length=64)


def _custom(config, seed):
    torch.manual_seed(seed)
    v = build_vocos(config)
    with torch.no_grad():
        v.feature_extractor.codebook_weights.normal_()
    return stress_vocos(v, seed)


def test_released_every_bandwidth(rt, released):
    assert released.rv.dispatches_per_call == 31  # 7 + 3 * 8 layers
    feats = released.v.codes_to_features(_codes(8, 21, 0))
    outs = []
    for bw in range(4):
        got = released.decode(rt, feats, bw)
        assert got.shape == (1, 21 * 320)
        released.check(got, feats, bw)
        outs.append(got)
    assert rel_err(outs[0], outs[3]) > 1e-2  # the bandwidth rows really differ


@pytest.mark.parametrize("T", [1, 9])
def test_released_lengths(rt, released, T):
    feats = released.v.codes_to_features(_codes(4, T, T))
    got = released.decode(rt, feats, torch.tensor(1))
    assert got.shape == (1, T * 320)
    released.check(got, feats, 1)


def test_released_decode_codes(rt, released):
    for q, t, bw, layout in [(8, 9, 2, "q1t"), (4, 11, 1, "1qt"), (2, 1, 0, "qt"), (1, 13, 0, "q1t")]:
        codes = _codes(q, t, 100 + q)
        feats = released.v.codes_to_features(codes)
        arg = {"q1t": codes, "1qt": codes.permute(1, 0, 2), "qt": codes[:, 0]}[layout]
        got = released.decode_codes(rt, arg, bw)
        released.check(got, feats, bw)
        assert released.rv.last_call["uploads"] == 1  # only the codes travel (int32, q * t)
        assert released.rv.last_call["submits"] == 4  # input + 3 blocks + 3 blocks + 2 blocks and the head
        if q == 8:  # features path and codes path agree to float32 rounding of the codebook sum
            assert rel_err(got.numpy(), released.rv.decode(feats, bw).numpy()) <= 1e-6


def test_counts_are_the_calls_own_while_another_thread_submits(rt, released):
    """The streaming engine decodes Vocos on its own thread while the decoders step on theirs:
    a call's counts (last_call, stats) are its own thread's, not whatever ran meanwhile."""
    import threading

    from wsvk import ops

    stop, a, w = threading.Event(), np.ones((2, 8), np.float32), np.ones((4, 8), np.float32)

    def busy():
        while not stop.is_set():
            ops.linear(a, w)  # a submit, a dispatch and a readback each

    codes = _codes(4, 9, 7)
    thread = threading.Thread(target=busy)
    thread.start()
    try:
        calls0, stats0 = released.rv.stats["calls"], dict(released.rv.stats)
        submits0 = rt.stats["submits"]
        for _ in range(3):
            released.rv.decode_codes(codes, bandwidth_id=1)
            assert released.rv.last_call == {"dispatches": released.rv.dispatches_per_call,
                                             "submits": released.rv.submits_per_call, "uploads": 1, "readbacks": 1}
    finally:
        stop.set()
        thread.join()
    assert rt.stats["submits"] - submits0 > 3 * released.rv.submits_per_call  # the other thread did submit
    assert released.rv.stats["calls"] - calls0 == 3
    assert released.rv.stats["submits"] - stats0["submits"] == 3 * released.rv.submits_per_call


def test_padding_code_as_vocos(rt, released):
    """WhisperSpeech's S2A may sample its padding code 1024: vocos then reads the next codebook's
    first row (one flat table), and so must we, for the same audio as the CPU backend."""
    codes = _codes(4, 12, 3)
    codes[:, 0, 8:] = 1024  # the end of speech, every codebook
    codes[0, 0, 2] = 1500   # any flat index inside the table
    feats = released.v.codes_to_features(codes)
    released.check(released.decode_codes(rt, codes, 1), feats, 1)


def test_numpy_features_and_2d(rt, released):
    feats = released.v.codes_to_features(_codes(4, 10, 7))
    got = released.decode(rt, feats[0].numpy().astype(np.float64), 3)
    released.check(got, feats, 3)


def test_guarded_outputs(rt, released, guard):
    feats = released.v.codes_to_features(_codes(4, 15, 9))
    released.check(released.decode(rt, feats, 2), feats, 2)
    guard.check()


@pytest.mark.parametrize("config, T_list", [(CUSTOM, [1, 10, 13]), (PLAIN, [1, 11])], ids=["custom", "plain"])
def test_custom_configs(rt, config, T_list):
    case = Case(_custom(config, 5))
    rv = case.rv
    assert rv.dispatches_per_call == 7 + 3 * config["backbone"]["init_args"]["num_layers"]
    n_bw = rv.n_bandwidths
    for i, T in enumerate(T_list):
        codes = _codes(4, T, 50 + T)
        feats = case.v.codes_to_features(codes)
        hop, n_fft = config["head"]["init_args"]["hop_length"], config["head"]["init_args"]["n_fft"]
        pad = (n_fft - hop) // 2
        for bw in range(n_bw):
            got = case.decode(rt, feats, bw)
            assert got.shape == (1, (T - 1) * hop + n_fft - 2 * pad)
            case.check(got, feats, bw)
        case.check(case.decode_codes(rt, codes, i % n_bw), feats, i % n_bw)
    if not rv.adanorm:  # vocos ignores the id without AdaLayerNorm; so do we
        feats = case.v.codes_to_features(_codes(2, 9, 1))
        case.check(case.decode(rt, feats, None), feats, 0)


def test_errors(rt, released):
    rv = released.rv
    feats = released.v.codes_to_features(_codes(4, 5, 0))
    before = dict(rt.stats)
    bad = [
        (ValueError, "bandwidth_id is required", lambda: rv.decode(feats)),
        (ValueError, "out of range", lambda: rv.decode(feats, 4)),
        (ValueError, "out of range", lambda: rv.decode(feats, -1)),
        (TypeError, "one integer", lambda: rv.decode(feats, torch.tensor([1, 2]))),
        (TypeError, "integer", lambda: rv.decode(feats, 1.5)),
        (ValueError, "channels", lambda: rv.decode(feats[:, :64], 0)),
        (ValueError, "batch 1", lambda: rv.decode(feats.expand(2, -1, -1), 0)),
        (ValueError, "no frames", lambda: rv.decode(feats[:, :, :0], 0)),
        (TypeError, "float", lambda: rv.decode(feats.to(torch.int32), 0)),
        (TypeError, "torch.Tensor or numpy", lambda: rv.decode([[0.0]], 0)),
        (TypeError, "integers", lambda: rv.decode_codes(_codes(4, 5, 0).float(), 0)),
        (ValueError, r"\[0, 1024\)", lambda: rv.decode_codes(_codes(16, 5, 0) + 1000, 0)),  # past the table
        (ValueError, r"\[0, 1024\)", lambda: rv.decode_codes(_codes(4, 5, 0) - 1024, 0)),
        (ValueError, r"\[0, 1024\)", lambda: rv.decode_codes(np.full((4, 5), 2**64 - 1, np.uint64), 0)),
        (ValueError, "codebooks", lambda: rv.decode_codes(_codes(17, 5, 0), 0)),
        (ValueError, "batch 1", lambda: rv.decode_codes(torch.zeros(4, 2, 5, dtype=torch.long), 0)),
        (ValueError, "no frames", lambda: rv.decode_codes(torch.zeros(4, 1, 0, dtype=torch.long), 0)),
    ]
    for exc, match, call in bad:
        with pytest.raises(exc, match=match):
            call()
    assert rt.stats["dispatches"] == before["dispatches"] and rt.stats["uploads"] == before["uploads"]


def test_rejects_other_heads(rt):
    class NotVocos:
        backbone = torch.nn.Identity()
        head = torch.nn.Identity()

    with pytest.raises(TypeError, match="VocosBackbone"):
        ResidentVocos(NotVocos())
