"""Direct tests of ``harness.probes``: the instruments every property is built from.

Each probe is run on a known-correct kernel (``fixtures/correct.py:naive``, torch SDPA) and on a
deliberately wrong tiny one (ignores the mask, leaks across the batch, detaches its output,
returns the wrong shape...), so both the probe's "holds" and its "violated" answers are pinned.
A probe that never fires would let every suite pass; one that fires on a correct kernel would
fail them all, and the suites alone cannot tell which of the two went wrong.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from harness import probes
from harness.cases import Case
from harness.contract import Capabilities, Implementation
from harness.fixtures import correct, planted
from harness.reference import attention_weights_reference
from harness.target import Target


def impl(fn, name=None, **caps):
    return Implementation(name or getattr(fn, "__name__", "lambda"), "test", fn, Capabilities(**caps))


def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                          enable_gqa=enable_gqa)


def ignores_mask(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return sdpa(q, k, v, scale=scale, enable_gqa=enable_gqa)


def leaks_batch(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    # batch b also reads a little of batch b - 1's keys and values
    return sdpa(q, k + 0.01 * k.roll(1, 0), v + 0.01 * v.roll(1, 0), attn_mask, 0.0, is_causal, scale, enable_gqa)


NAIVE = impl(correct.naive, "naive")
SDPA = impl(sdpa, "sdpa")

# Causal and key padding with one batch element fully padded, GQA, S > Ev so the one-hot readout
# takes several chunks.
MIXED = Case(B=2, H=4, Hkv=2, L=5, S=13, E=8, Ev=4, policy="and_masks(causal(), key_padding([0, 9]))",
             mask="bool", mask_shape="B1LS", seed=1)


@pytest.fixture(autouse=True)
def fresh_unsupported_log():
    """The log of unsupported cases is process-global (the plugin clears it per property)."""
    probes.UNSUPPORTED_CASES.clear()
    yield
    probes.UNSUPPORTED_CASES.clear()


# --- call -------------------------------------------------------------------------------------

def test_call_passes_the_case_through_and_returns_the_output():
    inp = MIXED.materialize()
    out = probes.call(NAIVE, inp)
    assert out.shape == (2, 4, 5, 4) and out.dtype == torch.float32
    assert torch.allclose(out.double(), inp.reference(), atol=1e-5)


def test_call_hands_replaced_tensors_over_in_the_case_layout():
    seen = {}

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        seen.update(q_contig=q.is_contiguous(), k_stride1=k.stride(1), gqa=enable_gqa, v=v)
        return sdpa(q, k, v, attn_mask, 0.0, is_causal, scale, enable_gqa)

    inp = Case(H=4, Hkv=1, L=3, S=3, E=8, Ev=8, layout="q=sliced,kv=broadcast").materialize()
    v = torch.ones_like(inp.v)
    probes.call(impl(spy), inp, v=v)
    assert seen["q_contig"] is False and seen["k_stride1"] == 0 and seen["gqa"] is False
    assert bool((seen["v"] == 1).all())  # the replacement, not the case's own values


@pytest.mark.parametrize("fn,needle", [
    (lambda q, k, v, **kw: sdpa(q, k, v)[..., :1], "output shape"),
    (lambda q, k, v, **kw: sdpa(q, k, v).double(), "output dtype"),
    (lambda q, k, v, **kw: sdpa(q, k, v).numpy(), "not a torch.Tensor"),
    (lambda q, k, v, **kw: sdpa(q, k, v).transpose(1, 2), "output shape"),
])
def test_call_rejects_outputs_outside_the_contract(fn, needle):
    inp = Case(B=1, H=2, Hkv=2, L=3, S=5, E=8, Ev=4).materialize()
    with pytest.raises(probes.PropertyViolation, match=needle):
        probes.call(impl(fn), inp)


def test_call_turns_exceptions_into_implementation_errors():
    def boom(q, k, v, **kw):
        raise RuntimeError("boom")

    with pytest.raises(probes.ImplementationError, match="raised RuntimeError: boom"):
        probes.call(impl(boom), Case().materialize())


def test_not_implemented_is_unsupported_outside_hypothesis_and_a_violation_where_required():
    def nope(q, k, v, **kw):
        raise NotImplementedError("no such path")

    with pytest.raises(pytest.skip.Exception, match="unsupported: .*no such path"):
        probes.call(impl(nope), Case().materialize())
    with pytest.raises(probes.PropertyViolation, match="must support: no such path"):
        probes.call(impl(nope), Case().materialize(), allow_unsupported=False)


def test_a_hung_call_times_out_and_the_kernel_is_not_called_again():
    calls = []

    def hangs(q, k, v, **kw):
        calls.append(1)
        time.sleep(30)

    k = impl(hangs, "hangs_in_test_probes")
    with pytest.raises(probes.ImplementationError, match="did not return within 0.2 s"):
        probes.call(k, Case().materialize(), timeout=0.2)
    assert probes.has_hung(k)
    with pytest.raises(probes.ImplementationError, match="hung on an earlier call"):
        probes.call(k, Case().materialize())
    assert len(calls) == 1
    assert not probes.has_hung(NAIVE)


def test_unsupported_log_stops_only_when_nothing_was_ever_answered():
    log = probes._UnsupportedLog()
    stops = []
    for _ in range(probes.UNSUPPORTED_STOP_AFTER):
        log.on_call()
        stops.append(log.on_unsupported())
    assert stops == [False] * (probes.UNSUPPORTED_STOP_AFTER - 1) + [True]

    log.clear()
    log.on_call()  # this case is answered (no NotImplementedError) ...
    for _ in range(3 * probes.UNSUPPORTED_STOP_AFTER):
        log.on_call()  # ... which the next case's start records
        assert not log.on_unsupported()
    assert log.answered


# --- effective weights ------------------------------------------------------------------------

def test_effective_weights_of_a_correct_kernel_are_the_reference_weights():
    inp = MIXED.materialize()
    w = probes.effective_weights(NAIVE, inp)
    want = attention_weights_reference(inp.q, inp.k, attn_mask=inp.attn_mask, enable_gqa=True)
    assert w.dtype == torch.float64 and w.shape == (2, 4, 5, 13)
    assert torch.allclose(w, want, atol=1e-6)
    # rows sum to one where a key is visible; the fully padded batch element reads nothing
    assert torch.allclose(w.sum(-1)[inp.has_visible], torch.ones(()).double(), atol=1e-6)
    assert bool((w[0] == 0).all())
    probes.assert_no_forbidden_weight(w, inp, "masked")


def test_weight_on_a_forbidden_key_is_a_violation():
    inp = MIXED.materialize()
    w = probes.effective_weights(impl(ignores_mask), inp)
    with pytest.raises(probes.PropertyViolation, match=r"masked \(query, key\) pairs get weight; first: query 0 -> key 1 \(b=1"):
        probes.assert_no_forbidden_weight(w, inp, "masked")


def test_a_row_with_visible_keys_but_no_weight_is_a_violation():
    inp = Case(L=3, S=4, E=8, Ev=8, policy="causal()", mask="bool", mask_shape="LS").materialize()
    w = torch.zeros(1, 1, 3, 4, dtype=torch.float64)
    with pytest.raises(probes.PropertyViolation, match="gives no weight to any visible key"):
        probes.assert_no_forbidden_weight(w, inp, "future")


def test_fully_masked_rows_are_judged_by_the_declaration():
    inp = Case(B=2, L=3, S=4, E=8, Ev=8, policy="key_padding([0, 2])", mask="bool", mask_shape="B11S").materialize()
    uniform = impl(correct.finfo_min_additive, fully_masked_rows="uniform")
    w = probes.effective_weights(uniform, inp)
    assert torch.allclose(w[0], torch.full_like(w[0], 0.25))
    probes.assert_no_forbidden_weight(w, inp, "padded", caps=uniform.capabilities)
    # the same weights break a "zero" declaration, and unknown (None) does not judge the row
    with pytest.raises(probes.PropertyViolation, match="padded"):
        probes.assert_no_forbidden_weight(w, inp, "padded", caps=Capabilities())
    probes.assert_no_forbidden_weight(w, inp, "padded", caps=None)
    # and zero rows break a "uniform" declaration
    zw = probes.effective_weights(NAIVE, inp)
    with pytest.raises(probes.PropertyViolation, match="not uniform as declared"):
        probes.assert_no_forbidden_weight(zw, inp, "padded", caps=uniform.capabilities)


def test_fixed_rows_and_blocked_rows():
    inp = MIXED.materialize()
    assert torch.equal(probes.fixed_rows(inp), inp.has_visible)
    assert torch.equal(probes.fixed_rows(inp, Capabilities(fully_masked_rows=None)), inp.has_visible)
    assert bool(probes.fixed_rows(inp, Capabilities()).all())  # zero: every row is fixed
    # keys 6.. (S,) are future keys for every query row 0..4 and padding in batch 1 from key 9
    blocked = probes.blocked_rows(inp, torch.arange(13) >= 6)
    assert bool(blocked[1].all()) and not bool(blocked[0].any())
    # per kv head: kv head 1 feeds query heads 2 and 3 only (h // (H // Hkv))
    keys = torch.zeros(2, 2, 13, dtype=torch.bool)
    keys[:, 1, 0] = True
    blocked = probes.blocked_rows(inp, keys, Capabilities())
    assert blocked[1, :2].all() and not blocked[1, 2:].any()
    assert bool(blocked[0].all())  # no key visible, declared zero: fixed, and reads nothing


# --- perturbations ----------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["random", "huge", "adversarial", "nan", "inf"])
def test_perturb_keys_touches_only_the_selected_slots(how):
    inp = Case(B=2, H=4, Hkv=2, L=3, S=6, E=8, Ev=4, seed=2).materialize()
    sel = torch.zeros(2, 2, 6, dtype=torch.bool)
    sel[1, 0, 4:] = True
    k, v = probes.perturb_keys(inp, sel, how, seed=5)
    assert k.dtype == inp.k.dtype and v.shape == inp.v.shape
    assert torch.equal(k[~sel], inp.k[~sel]) and torch.equal(v[~sel], inp.v[~sel])
    changed = (k[sel] != inp.k[sel]) | torch.isnan(k[sel])
    assert bool(changed.all())
    if how == "huge":
        assert bool(torch.isfinite(k).all()) and float(k[sel].abs().max()) > 1e3
    if how in ("nan", "inf"):
        assert bool((~torch.isfinite(v[sel])).all())
    k2, v2 = probes.perturb_keys(inp, sel, how, seed=5)
    assert torch.equal(k.nan_to_num(), k2.nan_to_num()) and torch.equal(v.nan_to_num(), v2.nan_to_num())


def test_perturb_keys_accepts_a_per_key_selection_and_rejects_unknown_modes():
    inp = Case(B=2, H=2, Hkv=2, L=3, S=5, E=8, Ev=8).materialize()
    k, _ = probes.perturb_keys(inp, torch.tensor([False, False, False, True, True]), "random")
    assert torch.equal(k[:, :, :3], inp.k[:, :, :3]) and not torch.equal(k[:, :, 3:], inp.k[:, :, 3:])
    with pytest.raises(ValueError):
        probes.perturb_keys(inp, torch.ones(5, dtype=torch.bool), "zeros")


def test_future_perturbation_is_invisible_to_a_causal_kernel_and_seen_through_one_that_leaks():
    inp = Case(B=1, H=2, Hkv=2, L=6, S=6, E=8, Ev=8, policy="causal()", mask="bool", mask_shape="LS").materialize()
    future = torch.arange(6) >= 3
    rows = probes.blocked_rows(inp, future)
    assert rows[0, 0].tolist() == [True, True, True, False, False, False]
    k, v = probes.perturb_keys(inp, future, "adversarial")
    before, after = probes.call(NAIVE, inp), probes.call(NAIVE, inp, k=k, v=v)
    probes.assert_rows_unchanged(before, after, rows, "future keys")
    leaky = impl(ignores_mask)
    with pytest.raises(probes.PropertyViolation, match="future keys: 6 of 6 rows"):
        probes.assert_rows_unchanged(probes.call(leaky, inp), probes.call(leaky, inp, k=k, v=v), rows, "future keys")


def test_batch_perturbation_catches_a_cross_batch_read():
    inp = Case(B=3, H=2, Hkv=2, L=3, S=4, E=8, Ev=8, seed=4).materialize()
    g = torch.Generator().manual_seed(0)
    k, v = inp.k.clone(), inp.v.clone()
    k[1], v[1] = torch.randn(k[1].shape, generator=g), torch.randn(v[1].shape, generator=g)
    rows = torch.ones(3, 2, 3, dtype=torch.bool)
    rows[1] = False
    probes.assert_rows_unchanged(probes.call(SDPA, inp), probes.call(SDPA, inp, k=k, v=v), rows, "batch 1")
    bad = impl(leaks_batch)
    with pytest.raises(probes.PropertyViolation, match=r"batch 1: 6 of 12 rows .* first at \(b=2"):
        probes.assert_rows_unchanged(probes.call(bad, inp), probes.call(bad, inp, k=k, v=v), rows, "batch 1")


def test_assert_rows_unchanged_is_bitwise_and_counts_nan_as_unchanged():
    a = torch.tensor([[[[1.0, float("nan")], [2.0, 3.0]]]])
    probes.assert_rows_unchanged(a, a.clone(), torch.ones(1, 1, 2, dtype=torch.bool), "x")
    b = a.clone()
    b[0, 0, 1, 1] = torch.nextafter(torch.tensor(3.0), torch.tensor(4.0))
    probes.assert_rows_unchanged(a, b, torch.tensor([[[True, False]]]), "x")  # row 1 not selected
    with pytest.raises(probes.PropertyViolation, match=r"x: 1 of 2 rows .* \(b=0, h=0, row=1\), max change 2.38e-07"):
        probes.assert_rows_unchanged(a, b, torch.ones(1, 1, 2, dtype=torch.bool), "x")


# --- gradients --------------------------------------------------------------------------------

def test_grads_of_a_correct_kernel_match_float64_and_masked_keys_get_none():
    inp = MIXED.materialize()
    cot = torch.randn(2, 4, 5, 4, generator=torch.Generator().manual_seed(0))
    t = Target(NAIVE, "float32", "cpu", None, None)
    got = probes.grads(NAIVE, inp, cot, target=t)
    assert t.worst["gradient_path"] == probes.GRAD_PATH
    ref = probes.reference_grads(inp, cot)
    base = probes.reference_grads(inp, cot, same_dtype=True)
    assert all(base_.dtype == torch.float32 and r.dtype == torch.float64 for base_, r in zip(base, ref))
    for name, cmp in probes.compare_grads(got, ref, base, inp, cot, 3.0):
        assert cmp.ok, (name, cmp.describe(name))
    unread = ~inp.kv_visible().any(2)  # (B, Hkv, S) keys no query of the group may read
    probes.assert_zero(got[1], unread, "dk on masked keys")
    probes.assert_zero(got[2], unread, "dv on masked keys")


def test_compare_grads_catches_a_wrong_dq():
    inp = Case(B=1, H=2, Hkv=2, L=4, S=4, E=8, Ev=8, seed=6).materialize()
    cot = torch.randn(1, 2, 4, 8, generator=torch.Generator().manual_seed(1))
    got = probes.grads(NAIVE, inp, cot)
    ref, base = probes.reference_grads(inp, cot), probes.reference_grads(inp, cot, same_dtype=True)
    res = dict(probes.compare_grads((got[0] * 1.01, got[1], got[2]), ref, base, inp, cot, 3.0))
    assert not res["dq"].ok and res["dk"].ok and res["dv"].ok


def test_a_backward_that_ignores_the_mask_puts_gradient_on_masked_keys():
    inp = MIXED.materialize()
    cot = torch.ones(2, 4, 5, 4)
    dk = probes.grads(impl(planted.backward_ignores_mask), inp, cot)[1]
    with pytest.raises(probes.PropertyViolation, match="dk on masked keys: .* positions that must have zero gradient"):
        probes.assert_zero(dk, ~inp.kv_visible().any(2), "dk on masked keys")


class _GradRaisesOnce(torch.autograd.Function):
    """A graph that torch.autograd.grad cannot differentiate but .backward() can, as a reentrant
    torch.utils.checkpoint (fixtures/thirdparty.py:checkpointed) is; importing that module alone
    costs seconds, so the first backward raises instead and later ones work."""

    raised = False

    @staticmethod
    def forward(ctx, q, k, v):
        ctx.save_for_backward(q, k, v)
        return correct.naive(q, k, v)

    @staticmethod
    def backward(ctx, g):
        if not _GradRaisesOnce.raised:
            _GradRaisesOnce.raised = True
            raise RuntimeError("checkpoint-like graph: use .backward()\nsecond line")
        with torch.enable_grad():
            q, k, v = (t.detach().requires_grad_(True) for t in ctx.saved_tensors)
            out = correct.naive(q, k, v)
            return torch.autograd.grad(out, (q, k, v), g)


def test_grads_fall_back_to_backward_where_autograd_grad_raises():
    inp = Case(B=1, H=2, Hkv=2, L=3, S=4, E=8, Ev=8).materialize()
    cot = torch.ones(1, 2, 3, 8)
    _GradRaisesOnce.raised = False
    t = Target(impl(lambda q, k, v, **kw: _GradRaisesOnce.apply(q, k, v), "grad_raises_once"), "float32", "cpu", None, None)
    got = probes.grads(t.impl, inp, cot, target=t)
    assert probes.last_grad_path["path"] == probes.GRAD_PATH_FALLBACK
    assert t.worst["gradient_path"] == probes.GRAD_PATH_FALLBACK
    # the reason keeps the first line of the error only
    assert t.worst["gradient_path_why"] == "torch.autograd.grad raised RuntimeError: checkpoint-like graph: use .backward()"
    want = probes.grads(NAIVE, inp, cot)
    assert probes.last_grad_path["path"] == probes.GRAD_PATH  # the next call resets it
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-6)


def test_grads_refuse_a_detached_output_but_accept_a_constant_fully_padded_batch():
    def detached(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        return correct.naive(q.detach(), k.detach(), v.detach(), attn_mask, 0.0, is_causal, scale, enable_gqa)

    inp = Case(L=3, S=4, E=8, Ev=8).materialize()
    with pytest.raises(probes.PropertyViolation, match="does not require grad"):
        probes.grads(impl(detached), inp, torch.ones(1, 1, 3, 8))
    padded = Case(B=1, L=3, S=4, E=8, Ev=8, policy="key_padding([0])", mask="bool", mask_shape="B11S").materialize()
    dq, dk, dv = probes.grads(impl(detached), padded, torch.ones(1, 1, 3, 8))
    assert dq.shape == padded.q.shape and not (dq.any() or dk.any() or dv.any())


def test_a_backward_raising_not_implemented_is_unsupported():
    class NoBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            return sdpa(q, k, v)

        @staticmethod
        def backward(ctx, g):
            raise NotImplementedError("forward only")

    def fn(q, k, v, **kw):
        return NoBackward.apply(q, k, v)

    inp = Case(L=3, S=4, E=8, Ev=8).materialize()
    with pytest.raises(pytest.skip.Exception, match="unsupported: backward raised NotImplementedError"):
        probes.grads(impl(fn), inp, torch.ones(1, 1, 3, 8))


# --- judging outputs --------------------------------------------------------------------------

def test_judge_passes_a_correct_kernel_and_records_the_worst_ratio():
    inp = MIXED.materialize()
    t = Target(NAIVE, "float32", "cpu", None, None)
    cmp = probes.judge(t, probes.call(NAIVE, inp), inp)
    assert cmp.ok and 0 <= t.worst["ratio"] <= t.forward_factor


def test_judge_fails_a_kernel_without_the_scale_with_the_numbers():
    inp = MIXED.materialize()
    bad = impl(planted.missing_scale)
    t = Target(bad, "float32", "cpu", None, None)
    with pytest.raises(probes.PropertyViolation, match=r"output: worst row \(b=\d, h=\d, row=\d\) error .* \(limit 2x\)"):
        probes.judge(t, probes.call(bad, inp), inp)
    assert t.worst["ratio"] > 2


def test_compare_output_ignores_rows_without_keys_unless_declared_zero():
    inp = Case(B=2, L=3, S=4, E=8, Ev=8, policy="key_padding([0, 2])", mask="bool", mask_shape="B11S").materialize()
    out = probes.call(NAIVE, inp).clone()
    out[0] = 5.0  # the fully padded batch element
    assert not probes.compare_output(out, inp, Capabilities(), 2.0).ok
    assert probes.compare_output(out, inp, Capabilities(fully_masked_rows="uniform"), 2.0).ok
    assert probes.compare_output(out, inp, Capabilities(fully_masked_rows=None), 2.0).ok


def test_perturbation_before_side_survives_a_kernel_that_reuses_its_output():
    # One static buffer per shape (a CUDA graph's output) plus a causal leak: kept with call_kept,
    # the first answer is still there to compare; taken with call, it is the second answer.
    leaky = impl(planted.causal_leak_in_static_buffer, "leaky-static")
    inp = Case(L=5, S=5, policy="causal()", mask="is_causal").materialize()
    future = torch.zeros(5, dtype=torch.bool)
    future[3:] = True
    rows = torch.zeros(1, 1, 5, dtype=torch.bool)
    rows[..., 0:2] = True  # rows 0 and 1 must not read keys 3, 4; row 2 reads key 3 through the leak
    rows[..., 2] = True
    k, v = probes.perturb_keys(inp, future, "random")
    before = probes.call_kept(leaky, inp)
    with pytest.raises(probes.PropertyViolation, match="rows that must not depend on it changed"):
        probes.assert_rows_unchanged(before, probes.call(leaky, inp, k=k, v=v), rows, "future")
    aliased = probes.call(leaky, inp)
    with pytest.raises(ValueError, match="call_kept"):  # the harness's own misuse is loud, not a pass
        probes.assert_rows_unchanged(aliased, probes.call(leaky, inp, k=k, v=v), rows, "future")
    # A correct kernel that reuses its buffer is not failed by the comparison itself.
    from harness.fixtures import integrity

    static = impl(integrity.static_output_buffer, "static")
    before = probes.call_kept(static, inp)
    probes.assert_rows_unchanged(before, probes.call(static, inp, k=k, v=v), rows, "future")
