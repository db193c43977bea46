"""The dtype-aware, per-row bound."""

import torch

from harness.cases import Case
from harness.loading import load
from harness.tolerance import compare


def _judge(out, inp, factor=2.0):
    return compare(out, inp.reference(), inp.baseline(), inp.q.dtype, factor, logit_absmax=inp.logit_absmax())


def test_correct_kernels_pass_and_a_one_row_leak_fails():
    inp = Case(B=2, H=2, Hkv=2, L=40, S=40, E=32, Ev=32, seed=3).materialize()
    sdpa = load("sdpa")
    out = sdpa(inp.q, inp.k, inp.v)
    ok = _judge(out, inp)
    assert ok.ok and ok.worst_ratio <= 2
    bad = out.clone()
    bad[1, 0, 17] += 1e-4  # a leak confined to one row of 160
    cmp = _judge(bad, inp)
    assert not cmp.ok
    assert cmp.worst_index == (1, 0, 17) and cmp.rows_failed == 1
    assert "b=1, h=0, row=17" in cmp.describe()


def test_nan_rows_fail_with_infinite_ratio():
    inp = Case(L=4, S=4, seed=1).materialize()
    out = load("sdpa")(inp.q, inp.k, inp.v).clone()
    out[0, 0, 2, 0] = float("nan")
    cmp = _judge(out, inp)
    assert not cmp.ok and cmp.nonfinite == 1 and cmp.worst_ratio == float("inf")


def test_half_precision_bound_scales_with_the_dtype():
    inp = Case(L=16, S=16, dtype="bfloat16", seed=2).materialize()
    out = load("sdpa")(inp.q, inp.k, inp.v)
    assert _judge(out, inp).ok
    # The same absolute error that is fine in bfloat16 is far over the bound in float32.
    inp32 = Case(L=16, S=16, dtype="float32", seed=2).materialize()
    out32 = load("sdpa")(inp32.q, inp32.k, inp32.v) + 4e-3
    assert not _judge(out32, inp32).ok


def test_a_baseline_family_holds_each_row_to_its_least_lucky_order():
    inp = Case(B=1, H=1, Hkv=1, L=3, S=5, E=16, Ev=16, seed=5).materialize()
    ref = inp.reference()
    lucky, noisy = ref.clone().float(), ref.clone().float()
    noisy[0, 0, 1] += 1e-3  # only row 1 of the second ordering is off
    out = ref.clone().float()
    out[0, 0, 1] += 1.5e-3
    assert not compare(out, ref, lucky, torch.float32, 2.0).ok  # one lucky baseline sets the bar
    both = compare(out, ref, [lucky, noisy], torch.float32, 2.0)
    assert both.ok and abs(both.worst_baseline - 1e-3) < 1e-6
    out[0, 0, 2] += 1.5e-3  # row 2: every ordering got it right, so the error is a leak
    assert compare(out, ref, [lucky, noisy], torch.float32, 2.0).worst_index == (0, 0, 2)


def test_the_natural_scale_floor_follows_the_dtype_the_logits_are_rounded_in():
    """At |logit| ~ a, a plain bfloat16 computation is off by up to ~eps(bf16) * a of the row's
    value scale; rows the baseline got exactly right are held to a fraction of that, in float32
    the ulps floor is the larger and nothing changes."""
    from harness.tolerance import NATURAL_FRACTION, eps

    inp = Case(L=2, S=2, dtype="bfloat16", seed=0).materialize()
    ref = inp.reference()
    exact = ref.clone()
    off = ref.clone()
    off[0, 0, 0] += 1.9 * NATURAL_FRACTION * eps(torch.bfloat16) * 30.0
    scale = torch.ones(1, 1, 2, dtype=torch.float64)
    assert compare(off, ref, exact, torch.bfloat16, 2.0, scale=scale, logit_absmax=30.0).ok
    assert not compare(off, ref, exact, torch.bfloat16, 2.0, scale=scale, logit_absmax=30.0, natural_fraction=0.0).ok
    assert not compare(off, ref, exact, torch.bfloat16, 2.0, scale=scale, logit_absmax=1.0).ok


def test_nan_and_inf_are_counted_not_called_an_infinite_error():
    from harness import probes
    from harness.tolerance import describe_values

    ref = torch.randn(1, 1, 3, 4, generator=torch.Generator().manual_seed(0)).double()
    out = ref.float().clone()
    out[0, 0, 1, :2] = float("nan")
    out[0, 0, 1, 3] = float("inf")
    out[0, 0, 2] += 0.25
    text = compare(out, ref, ref.float(), torch.float32).describe()
    assert "2 NaN entries, 1 inf entry in 1/3 rows" in text and "largest finite error 0.25" in text
    assert "inf =" not in text and "infx" not in text
    assert describe_values(torch.tensor([1.0, float("nan")]), "max |grad|") == "1 NaN entry, 0 inf entries, max finite |grad| 1"
    import pytest

    g = torch.tensor([[0.0, float("nan")], [0.5, 0.0]])
    with pytest.raises(probes.PropertyViolation, match=r"\(1 NaN entry, 0 inf entries, max finite \|grad\| 0.5\)"):
        probes.assert_zero(g, torch.tensor([True, True]), "d out / d k")
