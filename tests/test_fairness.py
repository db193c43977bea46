"""A fair judge of third-party code (issue 11): legitimate operation orders pass the bound,
declared fully-masked-row behaviour is honoured by every probe, gradients come however the kernel
computes them, narrow contracts get the checks they can take, and a kernel that supports nothing
stops early as unsupported."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import fingerprint as F
from harness import probes
from harness.cases import Case
from harness.contract import Capabilities, Implementation
from harness.loading import load
from harness.tolerance import baselines, compare

ROOT = Path(__file__).resolve().parents[1]
TP = "fixtures/thirdparty.py"


def _tp():
    import importlib.util

    spec = importlib.util.spec_from_file_location("thirdparty_fixtures", ROOT / TP)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _check(tmp_path, spec, *args):
    """`attn-harness check` the way a user runs it; {(suite, property, dtype): result}."""
    out = tmp_path / "rep"
    r = subprocess.run([sys.executable, "-m", "harness", "check", "--impl", spec, "--report-dir", str(out), *args],
                       capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert r.returncode in (0, 1), r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads((out / "report.json").read_text())
    (impl,) = rep["implementations"]
    return {(x["suite"], x["property"], x["dtype"]): x for x in impl["results"]}, r


# --- 1. the bound and legitimate operation order ------------------------------------------------

# |logit| swept per dtype: past where the orders part ways (bf16 ~30, issue 11) up to the stability
# suite's range.
MAGNITUDES = {"bfloat16": [1.0, 30.0, 100.0, 1e3], "float16": [1.0, 12.0, 30.0], "float32": [1.0, 30.0, 1e3]}
# Every common order of a plain same-dtype implementation: the scale on q, on k or on the scores
# after the matmul, softmax in the input dtype or in float32; HF eager; torch SDPA.
FAMILY = ("scale_q", "scale_q_fp32_softmax", "scale_k", "scale_k_fp32_softmax", "scores_scaled",
          "scores_scaled_fp32_softmax")


def _family_cases(dtype, mag, n, seed):
    rng = random.Random(seed)
    for i in range(n):
        L = rng.randint(1, 40)
        S = rng.choice([L, rng.randint(1, 40)])
        E = rng.choice([8, 16, 32, 64])
        pol, mask = rng.choice([("full()", "none"), ("causal()", "is_causal"), ("causal()", "bool"),
                                ("causal()", "float")])
        yield Case(B=1, H=2, Hkv=rng.choice([1, 2]), L=L, S=S, E=E, Ev=E, dtype=dtype, magnitude=mag, seed=i,
                   policy=pol, mask=mask, mask_shape="LS", scale=rng.choice([None, None, 0.07, 0.5]))


def _worst_ratios(dtype, mag, n=25, seed=0, **judge):
    tp = _tp()
    kernels = {name: (lambda inp, o=tp.ORDERS[name]: tp.plain(inp.q, inp.k, inp.v, inp.attn_mask, inp.is_causal,
                                                            inp.scale, inp.enable_gqa, scale_at=o[0],
                                                            softmax_fp32=o[1]))
               for name in FAMILY}
    kernels["hf_eager"] = lambda inp: tp.hf_eager(inp.q, inp.k, inp.v, **inp.kwargs())
    kernels["sdpa"] = lambda inp: torch.nn.functional.scaled_dot_product_attention(inp.q, inp.k, inp.v, **inp.kwargs())
    worst = dict.fromkeys(kernels, 0.0)
    caps = Capabilities()
    for case in _family_cases(dtype, mag, n, seed):
        inp = case.materialize()
        ref, absmax = inp.reference(), inp.logit_absmax()
        base = judge.get("baseline", baselines)(inp)
        scale = torch.maximum(inp.value_scale(), ref.abs().amax(dim=-1))
        for name, fn in kernels.items():
            cmp = compare(fn(inp), ref, base, inp.q.dtype, 2.0, scale=scale, logit_absmax=absmax,
                          **{k: v for k, v in judge.items() if k != "baseline"})
            worst[name] = max(worst[name], cmp.worst_ratio)
    return worst


@pytest.mark.parametrize("dtype,mag", [(d, m) for d, ms in MAGNITUDES.items() for m in ms])
def test_every_common_operation_order_is_within_the_bound(dtype, mag):
    """Measured: each order x dtype x |logit| over 25 random cases (shapes, GQA, causal via
    is_causal / bool / float masks, default and explicit scales); the worst row of every kernel
    stays within the 2x bound. Before the fix (one q-scaled baseline, no natural-scale floor),
    scores scaled after the matmul reached 3.4x in bfloat16 at |logit| 30, scale-on-k 22x at 1e3."""
    worst = _worst_ratios(dtype, mag)
    over = {k: round(v, 2) for k, v in worst.items() if v > 2.0}
    assert not over, f"{dtype} |logit|~{mag:g}: legitimate orders over the 2x bound: {over}"


def test_a_single_ordering_baseline_is_what_rejected_them():
    """The same measurement under the old rule (the q-scaled baseline alone, no natural-scale
    floor) rejects a legitimate order: the family and the floor are what make the bound fair."""
    old = _worst_ratios("bfloat16", 30.0, baseline=lambda inp: inp.baseline(), natural_fraction=0.0)
    assert max(old["scores_scaled"], old["scale_k"]) > 2.0, old


def _planted(inp, name):
    mod = sys.modules.get("planted_for_fairness")
    if mod is None:
        import importlib.util

        spec = importlib.util.spec_from_file_location("planted_for_fairness", ROOT / "fixtures/planted.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        sys.modules["planted_for_fairness"] = mod
    return getattr(mod, name)(inp.q, inp.k, inp.v, **inp.kwargs())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_planted_errors_still_fail_the_bound(dtype):
    """The fairer bound still rejects real bugs, and still localises a one-row leak."""
    caps = Capabilities()
    inp = Case(B=2, H=2, Hkv=1, L=9, S=40, E=16, Ev=16, dtype=dtype, seed=4).materialize()
    for bug in ("missing_scale", "online_no_rescale", "softmax_wrong_axis"):
        cmp = probes.compare_output(_planted(inp, bug), inp, caps, 2.0)
        assert not cmp.ok, f"{bug} passes in {dtype}: {cmp.describe()}"
    leak = torch.nn.functional.scaled_dot_product_attention(inp.q, inp.k, inp.v).clone()
    # one row of 36, off by 32 units in the last place of its value scale
    leak[1, 0, 5] += 32 * torch.finfo(inp.q.dtype).eps * inp.value_scale()[1, 0, 5].to(leak.dtype)
    cmp = probes.compare_output(leak, inp, caps, 2.0)
    assert not cmp.ok and cmp.worst_index == (1, 0, 5) and cmp.rows_failed == 1, cmp.describe()
    # the same order family at |logit| 30 still catches an unscaled kernel
    hot = Case(B=1, H=2, Hkv=2, L=9, S=9, E=8, Ev=8, dtype=dtype, magnitude=30.0, seed=0).materialize()
    assert not probes.compare_output(_planted(hot, "missing_scale"), hot, caps, 2.0).ok


# --- 2. declared fully-masked-row behaviour ------------------------------------------------------

BR = Case(B=1, H=2, Hkv=1, L=6, S=3, E=16, Ev=16, policy="causal()", mask="is_causal", alignment="bottom_right")


def test_probes_judge_rows_without_a_visible_key_by_the_declaration():
    """Bottom-right causal with L > S: rows 0-2 see no key. Declared uniform, they average every
    value, so neither the leak probes nor the gradient probes may hold them to "masked keys do not
    matter"; a kernel declaring uniform that is not uniform there fails; declared zero, they are
    held to exactly zero weight."""
    impl = load(f"{TP}:bottom_right_uniform_float64")
    inp = BR.fit(impl.capabilities, "float32", "cpu").materialize()
    assert inp.case.alignment == "bottom_right" and int((~inp.has_visible).sum()) == 2 * 3
    w = probes.effective_weights(impl, inp)
    probes.assert_no_forbidden_weight(w, inp, "future", impl.capabilities)
    probes.assert_no_forbidden_weight(w, inp, "future")  # unknown declaration: not judged
    with pytest.raises(probes.PropertyViolation, match="pairs get weight"):
        probes.assert_no_forbidden_weight(w, inp, "future", impl.capabilities.replace(fully_masked_rows="zero"))
    zero_rows = w.clone()
    zero_rows[~inp.has_visible] = 0
    with pytest.raises(probes.PropertyViolation, match="not uniform as declared"):
        probes.assert_no_forbidden_weight(zero_rows, inp, "future", impl.capabilities)
    keys = torch.arange(3) >= 2
    rows = probes.blocked_rows(inp, keys, impl.capabilities)
    assert not bool(rows[..., :3].any()) and bool(rows[..., 3:5].all())
    assert bool(probes.blocked_rows(inp, keys, impl.capabilities.replace(fully_masked_rows="zero"))[..., :3].all())


@pytest.mark.slow  # a whole `attn-harness check` run
def test_bottom_right_uniform_control_passes_the_properties_that_reported_leaks(tmp_path):
    """The exact float64 control with the issue's declarations, replayed at L=6, S=3 through the
    CLI: causal::test_future_weights_zero, causal::test_future_perturbation_invariance,
    causal::test_future_gradients_zero and backward::test_masked_gradients_zero pass (they
    reported leaks on the rows with no visible key before)."""
    case = repr(Case(B=1, H=2, Hkv=1, L=6, S=3, E=16, Ev=16, policy="causal()", mask="is_causal"))
    res, r = _check(tmp_path, f"{TP}:bottom_right_uniform_float64", "--dtype", "float32", "--suite", "causal",
                    "--suite", "backward", "--case", case, "--example", json.dumps({"cut": 0.4, "how": "random", "row": 4}))
    for prop in ("test_future_weights_zero", "test_future_perturbation_invariance",
                 "test_future_gradients_zero"):
        assert res[("causal", prop, "float32")]["status"] == "pass", res[("causal", prop, "float32")]["message"]
    assert res[("backward", "test_masked_gradients_zero", "float32")]["status"] == "pass", r.stdout[-2000:]


# --- 3. gradients through .backward() ------------------------------------------------------------

def test_reentrant_checkpoint_gradients_come_through_backward_and_say_so():
    impl = load(f"{TP}:checkpointed")
    inp = Case(B=1, H=2, Hkv=1, L=20, S=20, E=16, Ev=16, policy="causal()", mask="is_causal", seed=1).materialize()
    cot = torch.randn(1, 2, 20, 16, generator=torch.Generator().manual_seed(0))
    got = probes.grads(impl, inp, cot)
    assert probes.last_grad_path["path"] == probes.GRAD_PATH_FALLBACK
    assert "use_reentrant" in probes.last_grad_path["why"]
    ref = probes.reference_grads(inp, cot)
    base = probes.reference_grads(inp, cot, same_dtype=True)
    for name, cmp in probes.compare_grads(got, ref, base, inp, cot, 3.0):
        assert cmp.ok, cmp.describe(name)
    probes.grads(load("sdpa"), inp, cot)
    assert probes.last_grad_path["path"] == probes.GRAD_PATH


# --- 4. fully masked rows at L == S ----------------------------------------------------------------

def test_fully_masked_rows_are_probed_at_l_equal_s_too():
    """A kernel whose L == S path returns NaN on fully masked rows (its L != S path is fine) is
    seen; a self-attention-only kernel gets the probe fitted to L == S."""
    def square_nan(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, scale=scale)
        if query.shape[-2] == key.shape[-2] and attn_mask is not None:
            out = torch.where(attn_mask.expand(out.shape[:-1] + (key.shape[-2],)).any(-1, keepdim=True), out,
                              torch.full_like(out, float("nan")))
        return out

    got = F.fully_masked_rows(Implementation("square_nan", "", square_nan))
    assert got == "zero (L=2, S=3), nan (L=3, S=3)"
    tp = load(f"{TP}:self_attention_nan_rows")
    assert not tp.capabilities.cross_attention
    assert F.fully_masked_rows(tp) == "nan"
    assert F.fingerprint(tp)["causal_alignment"] == "unsupported"  # undefined without L != S
    assert F.fully_masked_rows(load("sdpa")) == "zero"
    assert F.fully_masked_rows(load(f"{TP}:hf_eager")) == "uniform"


def test_self_attention_only_cases_are_fitted_to_l_equal_s():
    caps = Capabilities(cross_attention=False)
    assert caps.why_not(cross=True) and Capabilities().why_not(cross=True) is None
    c = Case(B=2, L=3, S=7, policy="key_padding([0, 7])", mask="bool", mask_shape="B11S").fit(caps, "float32", "cpu")
    assert (c.L, c.S) == (7, 7) and not bool(c.materialize().has_visible[0].any())


# --- 5 and 6. narrow contracts through the CLI -------------------------------------------------------

@pytest.mark.slow  # a whole `attn-harness check` run
def test_fixed_scale_kernel_gets_the_default_scale_check(tmp_path):
    res, _ = _check(tmp_path, f"{TP}:fixed_scale", "--dtype", "float32", "--suite", "fingerprint")
    assert res[("fingerprint", "test_default_scale", "float32")]["status"] == "pass"
    explicit = res[("fingerprint", "test_explicit_scale_honoured", "float32")]
    assert explicit["status"] == "unsupported" and "fixed-scale" in explicit["message"]
    assert res[("fingerprint", "test_fingerprint", "float32")]["worst"]["fingerprint"]["default_scale"] == "1/sqrt(E)"


@pytest.mark.slow  # a whole `attn-harness check` run
def test_a_kernel_that_supports_nothing_stops_early_as_unsupported(tmp_path):
    """Every call raises NotImplementedError (xformers on CPU): each property stops after
    UNSUPPORTED_STOP_AFTER cases instead of hundreds, as unsupported, and the info-tier
    fingerprint says unsupported instead of pass."""
    res, _ = _check(tmp_path, f"{TP}:cuda_only", "--dtype", "float32", "--suite", "correctness",
                    "--suite", "fingerprint", "--property", "test_matches_reference or test_fingerprint")
    fp = res[("fingerprint", "test_fingerprint", "float32")]
    assert fp["status"] == "unsupported", fp
    r = res[("correctness", "test_matches_reference", "float32")]
    assert r["status"] == "unsupported" and "stopped early" in r["message"], r
    assert r["unsupported_cases"] <= probes.UNSUPPORTED_STOP_AFTER + 1, r
