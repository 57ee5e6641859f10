"""The released checkpoints' structures, as tiny random models (tests/tiny_models.py: build_t2s_v195,
build_t2s_enpl, build_s2a_v195, build_s2a_enpl), through the real loading code and both backends.

- v1.95 pair: T2S with frozen-VQ semantic embeddings (513 codes, 64 wide) projected to a wider model,
  padding_token_offset 0, a causal encoder; the conditioned S2A class with the same semantic
  embeddings, 192-wide speaker embeddings, 4 quantizers, rope and a causal encoder; fp16 state dicts.
- en+pl pair: T2S with the old Tunables (no padding_token_offset / causal_encoder: end token 512) and
  a deep encoder (encoder_depth_ratio 0.75); the plain S2A with the old Tunables (no causal_encoder /
  force_hidden_to_emb: hidden_to_emb exists) and no `_extra_state`.

At f32 the wgpu backend samples the CPU backend's tokens; at the reduced precisions the resident
decoders' teacher-forced logits stay within the bound of LOGIT_BOUNDS (tests/test_precision.py
derives the f16 one: 4u, u = 2^-11; q8's is the precision gate's 30 dB, wsvk.quality).
"""

import numpy as np
import pytest
import torch
from whisperspeech import languages

import tiny_models as tm
from conftest import rel_err
from resident_helpers import same_tokens, t2s_reference_logits
from wsvk import quality
from wsvk.errors import InputError
from wsvk.resident import ResidentS2A, ResidentT2S
from wsvk.resident.t2s import t2s_inputs
from wsvk.tts.models import load_s2a, load_t2s
from wsvk.tts.pipeline import load_pipeline

# precision -> (bound on the relative L2 error of the resident decoders' teacher-forced logits
# against the CPU model, needs shader-f16); a precision added to WSVK_PRECISION gets its line here
LOGIT_BOUNDS = {
    "f32": (2e-6, False),
    "f16": (4 * 2.0 ** -11, True),
    "q8": (10 ** (-quality.GATE_SNR_DB / 20), False),  # the gate's SNR as a relative error (~4e-3 seen)
}

BUILDERS = {"t2s_v195": tm.build_t2s_v195, "t2s_enpl": tm.build_t2s_enpl,
            "s2a_v195": tm.build_s2a_v195, "s2a_enpl": tm.build_s2a_enpl}
# released pairs, with a seed for which the tiny T2S says more than a few tokens
PAIRS = {"v1.95": ("t2s_v195", "s2a_v195", 3), "en+pl": ("t2s_enpl", "s2a_enpl", 1)}
# seeds for which the tiny T2S runs to the end of its window / stops at the end token
T2S_SEEDS = {"t2s_v195": (0, 7), "t2s_enpl": (0, 3)}
TEXT = "Hi there, friend."

pytestmark = pytest.mark.usefixtures("f32_precision")  # identical tokens vs the CPU


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The four checkpoints (released file format) and a tiny Vocos folder."""
    root = tmp_path_factory.mktemp("released-structures")
    paths = {}
    for name, build in BUILDERS.items():
        paths[name] = root / f"{name}.model"
        torch.save(build(), paths[name])
    paths["vocoder"] = tm.write_vocos(root / "vocos-tiny")
    return paths


@pytest.fixture
def backend(monkeypatch):
    return lambda name: monkeypatch.setenv("WSVK_BACKEND", name)


# ---------------------------------------------------------------- loading


def test_files_have_the_released_layout_and_load(files):
    """What each file holds, and what the loaders build from it (whisperspeech's upgrade() filling
    the old files' missing Tunables keys)."""
    from whisperspeech import s2a_delar_mup_wds_mlang as plain
    from whisperspeech import s2a_delar_mup_wds_mlang_cond as cond

    specs = {name: torch.load(files[name], weights_only=True) for name in BUILDERS}
    floats = lambda sd: {v.dtype for v in sd.values() if torch.is_tensor(v) and v.is_floating_point()}  # noqa: E731
    assert floats(specs["t2s_v195"]["state_dict"]) == floats(specs["s2a_v195"]["state_dict"]) == {torch.float16}
    assert floats(specs["t2s_enpl"]["state_dict"]) == floats(specs["s2a_enpl"]["state_dict"]) == {torch.float32}
    assert {"padding_token_offset", "causal_encoder"} <= set(specs["t2s_v195"]["tunables"])
    assert not {"padding_token_offset", "causal_encoder"} & set(specs["t2s_enpl"]["tunables"])
    assert not {"causal_encoder", "force_hidden_to_emb"} & set(specs["s2a_enpl"]["tunables"])
    assert "_extra_state" in specs["s2a_v195"]["state_dict"] and "_extra_state" not in specs["s2a_enpl"]["state_dict"]

    new, old = load_t2s(str(files["t2s_v195"])), load_t2s(str(files["t2s_enpl"]))
    for m in (new, old):
        assert {p.dtype for p in m.parameters()} == {torch.float32}  # f32 on the CPU, from fp16 files too
        assert m.stoks_codes == 513 and m.width == 96
    emb = new.embeddings.embedding  # the frozen VQ codebook: 64 wide, projected in and out
    assert emb.main.weight.shape == (513, 64) and emb.emb_to_hidden is not None and emb.bias_out is not None
    assert old.embeddings.embedding.emb_to_hidden is None
    assert (new.tunables.padding_token_offset, old.tunables.padding_token_offset) == (0, -1)  # end: 513, 512
    assert new.tunables.causal_encoder and old.tunables.causal_encoder  # the old files: the dataclass default
    assert (len(new.encoder.layers), len(new.decoder.layers)) == (1, 3)
    assert (len(old.encoder.layers), len(old.decoder.layers)) == (3, 1)  # encoder_depth_ratio 0.75

    s_new, s_old = load_s2a(str(files["s2a_v195"])), load_s2a(str(files["s2a_enpl"]))
    assert isinstance(s_new, cond.SADelARTransformer) and isinstance(s_old, plain.SADelARTransformer)
    for m in (s_new, s_old):
        assert {p.dtype for p in m.parameters()} == {torch.float32}
        assert m.semantic_embedding.weight.shape == (513, 64) and m.emb_to_hidden.in_features == 64
        assert m.hidden_to_emb is not None and m.quantizers == 4 and m.tunables.rope
        assert m.speaker_map == {"1": 0}
    assert s_new.tunables.causal_encoder and not s_old.tunables.causal_encoder
    assert s_old.tunables.force_hidden_to_emb  # upgrade()'s value for files without the key
    assert s_new.cond_embeddings["speaker"].spk_to_hidden.in_features == 192
    assert s_old.spk_to_hidden.in_features == 192


# ---------------------------------------------------------------- the pipeline, f32


@pytest.mark.parametrize("pair", PAIRS)
def test_wgpu_tokens_equal_the_cpu_backend(files, rt, backend, pair):
    """load_pipeline on each released pair: the resident modules on the wgpu backend sample the
    CPU backend's semantic and acoustic tokens."""
    t2s, s2a, seed = PAIRS[pair]
    t2s, s2a = str(files[t2s]), str(files[s2a])
    runs = {}
    for name in ("cpu", "wgpu"):
        backend(name)
        pipe = load_pipeline(t2s=t2s, s2a=s2a, vocoder=str(files["vocoder"]))
        audio = pipe.generate(TEXT, seed=seed)
        runs[name] = (pipe, audio)
    (cpu, a_cpu), (gpu, a_gpu) = runs["cpu"], runs["wgpu"]
    for stage in ("t2s", "s2a"):
        assert gpu.stage_stats[stage].gpu_calls("resident") == 1 and not gpu.last.faults
    stoks, atoks = cpu.last.stoks[0], cpu.last.atoks[0]
    assert torch.equal(gpu.last.stoks[0], stoks) and torch.equal(gpu.last.atoks[0], atoks)
    assert len(set(stoks.tolist())) > 3 and len(set(atoks[0, 0].tolist())) > 3  # varied: a bug would show
    assert a_cpu.shape == a_gpu.shape and rel_err(a_gpu, a_cpu) < 1e-4


@pytest.mark.parametrize("name", T2S_SEEDS)
def test_resident_t2s_ends_at_the_files_end_token(files, rt, name):
    """The end token is stoks_codes + padding_token_offset (513 for v1.95, 512 for the old files,
    whose Tunables lack the key): the resident T2S starts from it and stops at it as whisperspeech
    does (the pipeline would cut its tokens at the end token, so this is checked without it)."""
    model = load_t2s(str(files[name]))
    res = ResidentT2S(model)
    lengths = []
    for seed in T2S_SEEDS[name]:
        got = same_tokens(lambda: model.generate(TEXT, show_progress_bar=False),
                          lambda: res.generate(TEXT, show_progress_bar=False), seed=seed)
        lengths.append(got.shape[-1])
    assert lengths[0] == model.stoks_len - 1 and lengths[1] < lengths[0], lengths  # to the window's end; stopped


# ---------------------------------------------------------------- reduced precision


def s2a_reference_logits(model, res, n=10):
    """Teacher-forced logits [n, Q, 1, V] of the CPU model and of the resident decoder (either S2A
    class: the conditioned one takes its speaker through a conditions dict)."""
    g = torch.Generator().manual_seed(4)
    stoks = torch.randint(0, model.stoks_codes - 1, (6,), generator=g)
    spk = torch.randn(1, tm.SPK_WIDTH, generator=g)
    stoks = torch.nn.functional.pad(stoks, (1, model.stoks_len - len(stoks) - 1), value=model.stoks_codes - 1)[None]
    res.start_chunk(stoks, spk)
    conds = [dict(speaker=s, snr=60, c50=60) for s in spk] if hasattr(model, "cond_embeddings") else spk
    cols = torch.randint(0, model.codes + 2, (n, model.quantizers), generator=g)
    cols[0] = model.codes + 1  # the start column, then the delay pattern's fillers
    cols[1, 2:] = model.codes + 1
    pos = torch.arange(n)
    ref, got = [], []
    with torch.no_grad():
        xenc, xpos, _ = model.run_encoder(stoks, conds)
        for i in range(n):
            ref.append(model(None, cols[i].reshape(1, -1, 1), None, noloss=True, xenc=xenc, xenc_positions=xpos,
                             atoks_positions=pos[i:i + 1]))
            got.append(res.logits(cols[i].tolist(), i))
    return torch.cat(ref).numpy(), torch.cat(got).numpy()


def teacher_forced(name, model):
    if name.startswith("t2s"):
        eot = model.stoks_codes + model.tunables.padding_token_offset
        seq = [eot, 3, 511, 27, 512, 5, 60, 513, 0]  # the start token, main codes, the padding and special codes
        ref, got = t2s_reference_logits(model, ResidentT2S(model, ch=4), seq)
        return ref.numpy(), got.numpy()
    return s2a_reference_logits(model, ResidentS2A(model, ch=8))


@pytest.mark.parametrize("precision", [pytest.param(p, marks=[pytest.mark.needs_f16] if f16 else [])
                                       for p, (_, f16) in LOGIT_BOUNDS.items()])
@pytest.mark.parametrize("name", BUILDERS)
def test_teacher_forced_logits_within_the_bound(files, rt, monkeypatch, name, precision):
    """The resident decoder at `precision` against the CPU model (f32) on the same tokens."""
    bound = LOGIT_BOUNDS[precision][0]
    model = (load_t2s if name.startswith("t2s") else load_s2a)(str(files[name]))
    monkeypatch.setenv("WSVK_PRECISION", precision)
    ref, got = teacher_forced(name, model)
    assert got.shape == ref.shape and np.isfinite(got).all()
    e = rel_err(got, ref)
    print(f"{name} {precision} logits vs the CPU: rel L2 {e:.2e} (bound {bound:.1e})")  # shown by pytest -rP
    assert e < bound, e
    if precision != "f32":
        assert e > 0  # the reduced precision really ran


# ---------------------------------------------------------------- languages


def test_language_lists_are_refused(files):
    """whisperspeech's generate takes lang=[...] with txt=[...] but cannot run it (its encoder makes a
    batch of ttoks_len rows from the per-token languages): the resident T2S refuses it in one line
    instead of silently speaking the first language; one code (the pipeline's way) is taken."""
    model = load_t2s(str(files["t2s_v195"]))
    # whisperspeech's own: a shape error deep inside (should it ever run, supporting lists is the way)
    with torch.no_grad(), pytest.raises(RuntimeError):
        model.generate(["Hello ", "świat"], lang=["en", "pl"], N=4, show_progress_bar=False)
    refused = r"^T2S takes one language code per text \(such as 'en'\), not a list"
    for txt, lang in ((["Hello ", "świat"], ["en", "pl"]), ("Hello świat", ("en", "pl")), ("Hello", ["en"])):
        with pytest.raises(InputError, match=refused) as e:
            t2s_inputs(model, txt, lang, 15)
        assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="one text"):
        t2s_inputs(model, ["Hello ", "świat"], "en", 15)
    ttoks, langs, cpss = t2s_inputs(model, "Hello", "pl", 15)
    assert ttoks.shape == (1, model.ttoks_len) and langs.tolist() == [languages.to_id("pl")] and cpss.tolist() == [15]


def test_sequences_with_a_language_list_are_refused_before_any_gpu_work(files, rt):
    model = load_t2s(str(files["t2s_enpl"]))
    res = ResidentT2S(model)
    submits = rt.stats["submits"]
    with pytest.raises(InputError, match="not a list"):
        res.generate(["Hello ", "świat"], lang=["en", "pl"], show_progress_bar=False)
    assert rt.stats["submits"] == submits
    torch.manual_seed(0)
    assert res.generate("Hello", lang="pl", show_progress_bar=False).shape[0] == 1
