"""K. Integrity: a judge that stateful, lazy or adversarial kernels cannot fool by being right once.

Every other suite compares one call with the reference. These properties look around the call:
what later calls do to an earlier output, what the call did to its inputs, whether new values in
the same tensors reach the output, whether the allocator handed the kernel an answer, and which
operators it dispatches.

Catches: outputs in one static buffer overwritten by the next call (CUDA-graph static outputs,
pytorch#144386), outputs written into an input, tensor subclasses that compute on first read,
inputs (q, k, v, attn_mask) changed in place (a bool mask inverted, masked value slots zeroed),
results cached by data pointer or shape, outputs left as uninitialised ``torch.empty`` memory,
and (with ``--forbid-ops``, which makes the op trace a gate) a "custom kernel" that delegates to operators it must not call.
"""

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from harness import integrity as I
from harness import probes
from harness import strategies as hs
from harness.cases import Case

# Cheap on purpose (the suite runs by default for every implementation): small shapes, few
# examples; the @examples carry the masks each check needs.
EXAMPLES = 6
SMALL = dict(max_heads=2, batch_max=2, L=st.integers(1, 24), S=st.integers(1, 24))


def _other(case: Case, n: int) -> Case:
    """Same shapes and mask, other values: a different seed derived from the case's own."""
    return case.replace(seed=(case.seed * 1_000_003 + 7919 * n + 1) % 2 ** 31)


def _plain_and_own(out, call: str, handed: dict):
    why = I.not_plain_tensor(out)
    if why:
        raise probes.PropertyViolation(f"{call}: {why}")
    # Against the tensors as handed over (probes.call handed=): in a transposed or sliced layout
    # they are views of copies, which the logical q, k, v never share storage with.
    shared = I.shared_storage(out, handed)
    if shared:
        raise probes.PropertyViolation(
            f"{call}: the output shares storage with input {', '.join(shared)}: the kernel wrote its result "
            "into an input buffer (or returned a view of one), so the caller's input is gone and the next "
            "write to either corrupts the other")


@settings(max_examples=EXAMPLES)
@given(case=hs.cases(policies=("none", "causal", "key_padding"), **SMALL))
@example(case=Case(B=1, H=2, Hkv=2, L=6, S=6, E=16, Ev=16, policy="causal()", mask="is_causal"))
@example(case=Case(B=2, H=2, Hkv=1, L=5, S=7, E=16, Ev=8, policy="key_padding([7, 3])", mask="bool", mask_shape="B11S"))
@example(case=Case(B=1, H=2, Hkv=2, L=4, S=4, E=16, Ev=16, layout="q=transposed,k=sliced,v=sliced"))
def test_outputs_stay_outputs(target, case):
    """Outputs stay outputs: unchanged by later calls, sharing no input's storage, plain tensors.

    The output of call 1 is bitwise unchanged after calls 2 and 3 with other data of the same
    shape, shares no storage with any input, and is a plain torch.Tensor (no subclass or lazy
    wrapper)."""
    case = target.fit(case)
    inp = case.materialize()
    handed: dict = {}
    out1 = probes.call(target.impl, inp, handed=handed.update)
    _plain_and_own(out1, "call 1", handed)
    kept = I.snapshot(out1)
    for n in (2, 3):
        other = _other(case, n).materialize()
        handed = {}
        out_n = probes.call(target.impl, other, handed=handed.update)
        _plain_and_own(out_n, f"call {n}", handed)
        if not I.bits_equal(kept, out1):
            same = " (call 1's tensor is the very storage call {} returned)".format(n) if (
                out_n.untyped_storage().data_ptr() == out1.untyped_storage().data_ptr()) else ""
            raise probes.PropertyViolation(
                f"output of call 1 changed after call {n} with other same-shape data: "
                f"{I.describe_change(kept, out1)}{same}. The kernel returns the same storage every call "
                "(CUDA-graph static output?) or keeps writing into it after returning; a caller that keeps "
                "the first result (a KV cache, the next layer) reads the later one")


@settings(max_examples=EXAMPLES)
@given(case=hs.cases(policies=("none", "causal", "key_padding"), mask_kinds=("bool", "float"), **SMALL))
@example(case=Case(B=2, H=2, Hkv=2, L=5, S=6, E=16, Ev=16, policy="key_padding([6, 2])", mask="bool", mask_shape="B11S"))
@example(case=Case(B=1, H=2, Hkv=1, L=4, S=4, E=16, Ev=16, policy="causal()", mask="bool", mask_shape="LS"))
@example(case=Case(B=2, H=2, Hkv=2, L=5, S=6, E=16, Ev=16, policy="key_padding([6, 2])", mask="float", mask_shape="B11S"))
@example(case=Case(B=1, H=2, Hkv=2, L=4, S=4, E=16, Ev=16, layout="q=transposed,k=sliced,v=sliced"))
def test_inputs_stay_inputs(target, case):
    """Inputs stay inputs: q, k, v and attn_mask bitwise unchanged by the call.

    Compared against copies taken before it: a boolean mask inverted in place, masked value
    slots zeroed, q scaled in place."""
    case = target.fit(case)
    inp = case.materialize()
    # The tensors as handed over (a transposed or sliced layout is a view of a copy, which the
    # logical q, k, v never see written): snapshots taken just before the call.
    seen: dict = {}
    probes.call(target.impl, inp, handed=lambda ts: seen.update(
        {name: (t, I.snapshot(t)) for name, t in ts.items() if t is not None}))
    changed = [f"{name}: {I.describe_change(kept, t)}" + (f" (a {case.layout} view)" if case.layout != "contiguous" else "")
               for name, (t, kept) in seen.items() if not I.bits_equal(kept, t)]
    if changed:
        raise probes.PropertyViolation(
            "the call changed its inputs in place: " + "; ".join(changed) + ". Callers reuse q, k, v and "
            "masks across heads, layers and decode steps: the next use reads what the kernel left there")


@settings(max_examples=EXAMPLES)
@given(case=hs.cases(policies=("none", "causal", "key_padding"), **SMALL))
@example(case=Case(B=1, H=2, Hkv=2, L=6, S=6, E=16, Ev=16))
@example(case=Case(B=2, H=2, Hkv=1, L=5, S=7, E=16, Ev=16, policy="key_padding([7, 3])", mask="bool", mask_shape="B11S"))
def test_fresh_data_same_storage(target, case):
    """Fresh data, same storage: new values written into the same q, k, v reach the output.

    Overwrite the inputs in place and call again; the output must match the reference for the
    new values (catches results cached by data pointer or shape, stale pointer-keyed CUDA graphs)."""
    case = target.fit(case)
    inp = case.materialize()
    kept = I.snapshot(probes.call(target.impl, inp))
    new = _other(case, 1).materialize()
    with torch.no_grad():
        for mine, theirs in ((inp.q, new.q), (inp.k, new.k), (inp.v, new.v)):
            mine.copy_(theirs)
    out = probes.call(target.impl, inp)  # the same tensors, now holding new values
    cmp = probes.compare_output(out, inp, target.caps, target.forward_factor)
    target.record(cmp)
    if cmp.ok:
        return
    if I.bits_equal(kept, out):
        raise probes.PropertyViolation(
            "output did not change after q, k and v were overwritten in place with new values (same tensors, "
            "same data pointers): the kernel answers from a cache keyed by data pointer or shape, or replays a "
            "stale pointer-keyed CUDA graph; " + cmp.describe("output for the new values"))
    raise probes.PropertyViolation(
        "after q, k and v were overwritten in place with new values, " + cmp.describe("the second call's output"))


@settings(max_examples=EXAMPLES)
@given(case=hs.cases(policies=("none", "causal"), E=st.sampled_from((24, 16, 40)), Ev=st.sampled_from((24, 16, 40)),
                     **SMALL))
@example(case=Case(B=1, H=2, Hkv=2, L=8, S=8, E=24, Ev=24))
@example(case=Case(B=1, H=2, Hkv=1, L=5, S=9, E=16, Ev=40, policy="causal()", mask="is_causal"))
def test_no_free_answer_from_allocator(target, case):
    """No free answer from the allocator: the output is right with freed memory poisoned.

    The kernel runs before any reference or baseline of the shape is computed, right after
    same-shape freed memory was poisoned with NaN: an output left as uninitialised memory
    (torch.empty with no launch, for some shapes) cannot pass by holding an earlier answer."""
    case = target.fit(case)
    inp = case.materialize()
    B, H, L, _ = inp.q.shape
    I.poison_freed([(B, H, L, inp.v.shape[-1])], inp.q.dtype, inp.q.device)
    out = probes.call(target.impl, inp)
    cmp = probes.compare_output(out, inp, target.caps, target.forward_factor)  # the reference comes after
    target.record(cmp)
    if cmp.ok:
        return
    rows = inp.has_visible.to(out.device)
    o = out.detach()
    nan_rows = int((torch.isnan(o).any(dim=-1) & rows).sum())
    what = "the kernel returned memory it never wrote (torch.empty / empty_like with no kernel launched for this shape?)"
    if nan_rows:
        raise probes.PropertyViolation(
            f"output holds NaN in {nan_rows} of {int(rows.sum())} rows that have visible keys, right after the "
            f"harness freed same-shape buffers filled with NaN: {what}")
    if bool((o == 0).all()):
        raise probes.PropertyViolation(f"output is all zero (fresh pages from the allocator): {what}")
    raise probes.PropertyViolation(
        cmp.describe("output (called before any reference of this shape, freed same-shape memory poisoned with NaN)"))


# --- op trace ------------------------------------------------------------------------------------

TRACE_CASES = (Case(B=1, H=2, Hkv=2, L=8, S=8, E=16, Ev=16),
               Case(B=1, H=2, Hkv=2, L=8, S=8, E=16, Ev=16, policy="causal()", mask="is_causal"),
               Case(B=1, H=2, Hkv=2, L=8, S=8, E=16, Ev=16, policy="key_padding([5])", mask="bool", mask_shape="B11S"))


def _trace(target) -> dict:
    """Ops dispatched over the trace cases that fit the implementation: {op: count}."""
    ops: dict = {}
    ran = []
    for c in TRACE_CASES:
        case = c.fit(target.caps, target.dtype, target.device)
        if case is None:
            continue
        inp = case.materialize()
        target.cases += 1
        target.last_case = case
        with torch.no_grad():
            probes.call(target.impl, inp, allow_unsupported=False)  # the kernel's own errors are its own
            try:
                _, seen = I.trace_ops(lambda: probes.call(target.impl, inp, allow_unsupported=False))
            except (probes.ImplementationError, probes.PropertyViolation) as e:
                # Some kernels cannot run under a Python dispatch mode at all (torch.compile inside,
                # as eager FlexAttention does): the trace is unavailable, not the kernel wrong.
                return {"ops": {}, "cases": [case.short()],
                        "unavailable": f"the call fails under a TorchDispatchMode: {str(e).splitlines()[0][:300]}"}
        for op, n in seen.items():
            ops[op] = ops.get(op, 0) + n
        ran.append(case.short())
    if not ran:
        pytest.skip("unsupported: none of the op-trace cases fits the declared capabilities")
    return {"ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))), "cases": ran}


@pytest.mark.tier("info")
def test_op_trace(target, request):
    """Op trace: the aten operators the kernel dispatches; with --forbid-ops, a gate.

    Recorded with a TorchDispatchMode for the report: "calls
    aten::_scaled_dot_product_flash_attention_for_cpu" says a custom kernel delegates to SDPA.
    Info tier; with --forbid-ops PATTERN[,..] (fnmatch, e.g. 'aten::_scaled_dot_product*')
    it is a gate, failed by a call to a matching operator. Work inside compiled kernels (Triton,
    CUDA, numpy) is not seen."""
    patterns = list(getattr(target, "forbid_ops", []) or [])
    if patterns:
        # Gate only when the run forbids something: without patterns there is nothing to enforce.
        request.node.add_marker(pytest.mark.tier("gate"), append=False)
    trace = _trace(target)
    target.record(op_trace=trace, **({"forbid_ops": patterns} if patterns else {}))
    if patterns and trace.get("unavailable"):
        raise probes.PropertyViolation(f"--forbid-ops cannot be verified: {trace['unavailable']}")
    hits = I.forbidden_ops(trace["ops"], patterns)
    if hits:
        raise probes.PropertyViolation(
            "calls forbidden operator(s): " + ", ".join(f"{op} (matches {p!r})" for op, p in hits)
            + f"; --forbid-ops {','.join(patterns)}")
