"""F. Prompt-boundary isolation for structured prompts: document packing, prefix-LM, sliding
window, retrieval-augmented prompts, chat/tool roles and shared-prefix continuations (policies
from :mod:`harness.masks`, which users can compose into their own).

For every policy: no token receives information across a forbidden boundary, checked by
perturbation, by extracted weights and by gradients; delimiter tokens obey the policy too
(the seed's exercise 10). Catches: ignored or inverted masks, masks after softmax, coarse
block-sparse masks that treat a partly visible tile as visible, transposed masks.
"""

import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

from harness import masks as M
from harness import probes
from harness import strategies as hs
from harness.cases import Case

POLICIES = dict(policies=hs.BOUNDARY_POLICIES, mask_kinds=("bool", "float"))
CHAT = ('chat_roles([["system", 4], ["delim", 1], ["user", 3], ["delim", 1], ["tool", 5], '
        '["delim", 1], ["retrieved", 4], ["delim", 1], ["assistant", 3]])')


def _forbidden_for_row(inp, row: int):
    """(B, Hkv, S) keys that query ``row`` may not read (in every head of the kv group)."""
    return ~inp.kv_visible()[:, :, min(row, inp.case.L - 1)]


def _segment_keys(inp, which: int):
    segs = M.from_spec(inp.case.policy).segments
    if not segs:
        return None
    a, z = segs[which % len(segs)]
    keys = torch.zeros(inp.case.S, dtype=torch.bool)
    keys[a:z] = True
    return keys


@given(case=hs.cases(**POLICIES), which=st.integers(0, 63), how=st.sampled_from(["random", "adversarial", "huge"]))
@example(case=Case(B=1, H=2, Hkv=1, L=23, S=23, E=16, Ev=16, policy=CHAT, mask="bool", mask_shape="LS"), which=0, how="adversarial")
@example(case=Case(B=1, H=1, Hkv=1, L=12, S=12, E=16, Ev=16, policy="rag(2, [3, 3, 2], 2)", mask="float", mask_shape="LS"), which=2, how="random")
@example(case=Case(B=1, H=1, Hkv=1, L=10, S=10, E=16, Ev=16, policy="document([4, 6])", mask="bool", mask_shape="LS"), which=0, how="random")
def test_policy_perturbation_invariance(target, case, which, how):
    """Perturbing one segment (a document, chunk, turn or continuation), and separately
    everything one query may not read, leaves every row that may not read it bitwise unchanged."""
    target.require_mask()
    case = target.fit(case)
    inp = case.materialize()
    out0 = probes.call_kept(target.impl, inp)
    checks = []
    seg = _segment_keys(inp, which)
    if seg is not None:
        checks.append((seg, f"segment {M.from_spec(case.policy).segments[which % len(M.from_spec(case.policy).segments)]}"))
    row = which % case.L
    checks.append((_forbidden_for_row(inp, row), f"every key query {row} may not read"))
    tested = 0
    for keys, what in checks:
        rows = probes.blocked_rows(inp, keys)
        if not bool(rows.any()) or not bool(keys.any()):
            continue
        tested += 1
        k, v = probes.perturb_keys(inp, keys, how, seed=case.seed)
        probes.assert_rows_unchanged(out0, probes.call(target.impl, inp, k=k, v=v), rows,
                                     f"{how} change to {what} under {case.policy}")
    assume(tested > 0)


@given(case=hs.cases(max_heads=2, batch_max=2, **POLICIES))
@example(case=Case(B=1, H=1, Hkv=1, L=23, S=23, E=16, Ev=16, policy=CHAT, mask="bool", mask_shape="LS"))
@example(case=Case(B=1, H=1, Hkv=1, L=11, S=11, E=8, Ev=8, policy="shared_prefix(3, [4, 4])", mask="bool", mask_shape="LS"))
def test_policy_weights_zero(target, case):
    """Weights read off with one-hot values are exactly zero on every forbidden (query, key) pair."""
    target.require_mask()
    case = target.fit(case)
    inp = case.materialize()
    probes.assert_no_forbidden_weight(probes.effective_weights(target.impl, inp), inp,
                                      f"forbidden under {case.policy}")


@given(case=hs.cases(**POLICIES), which=st.integers(0, 63))
@example(case=Case(B=1, H=1, Hkv=1, L=23, S=23, E=16, Ev=16, policy=CHAT, mask="float", mask_shape="LS"), which=0)
def test_policy_gradients_zero(target, case, which):
    """Gradients of the rows that may not read a segment, with respect to that segment's keys and
    values, are exactly zero."""
    target.require(autograd=True)
    target.require_mask()
    case = target.fit(case)
    inp = case.materialize()
    keys = _segment_keys(inp, which)
    if keys is None:
        keys = _forbidden_for_row(inp, which % case.L)
    rows = probes.blocked_rows(inp, keys)
    assume(bool(rows.any()) and bool(keys.any()))
    g = torch.Generator().manual_seed(case.seed)
    cot = torch.randn(case.B, case.H, case.L, case.Ev, generator=g) * rows.unsqueeze(-1)
    _, dk, dv = probes.grads(target.impl, inp, cot)
    where = keys.expand(case.B, case.Hkv, case.S) if keys.dim() == 1 else keys
    probes.assert_zero(dk, where, f"d out[rows that may not read it] / d k[segment] under {case.policy}")
    probes.assert_zero(dv, where, f"d out[rows that may not read it] / d v[segment] under {case.policy}")


@given(case=hs.cases(policies=("chat_roles",), mask_kinds=("bool", "float")), how=st.sampled_from(["random", "adversarial"]))
@example(case=Case(B=1, H=1, Hkv=1, L=23, S=23, E=16, Ev=16, policy=CHAT, mask="bool", mask_shape="LS"), how="adversarial")
def test_delimiters_obey_policy(target, case, how):
    """Prompt-boundary safety: the protected system segment never reaches untrusted
    tool/retrieved tokens (nor the delimiters that open them), and every delimiter token, as a key
    and as a query, obeys the same policy: none reads ahead, none carries the system prompt into
    untrusted rows; the seed's exercise 10."""
    target.require_mask()
    case = target.fit(case)
    inp = case.materialize()
    turns = eval(case.policy[len("chat_roles("):-1].replace("null", "None"))  # JSON list of [role, n]
    roles = [r for r, n in turns for _ in range(n)]
    out0 = probes.call_kept(target.impl, inp)
    system = torch.tensor([r == "system" for r in roles])
    untrusted = torch.tensor([r in ("tool", "retrieved") for r in roles])
    untrusted |= torch.tensor([r == "delim" and bool(untrusted[i + 1]) if i + 1 < len(roles) else False
                               for i, r in enumerate(roles)])
    rows = probes.blocked_rows(inp, system)
    if bool(((~rows) & untrusted.view(1, 1, -1)).any()):
        raise probes.PropertyViolation("the policy itself lets untrusted rows read the system prompt")
    k, v = probes.perturb_keys(inp, system, how, seed=case.seed)
    probes.assert_rows_unchanged(out0, probes.call(target.impl, inp, k=k, v=v), rows,
                                 f"{how} change to the system segment (rows of tool/retrieved text)")
    for pos in [i for i, r in enumerate(roles) if r == "delim"]:
        later = torch.arange(case.S) > pos  # a delimiter query must not read ahead
        dl = torch.zeros(case.S, dtype=torch.bool)
        dl[pos] = True  # a delimiter key must reach only the rows allowed to read it
        for keys, what in ((later, f"tokens after the delimiter at {pos}"), (dl, f"the delimiter at {pos}")):
            if not bool(keys.any()):
                continue
            r = probes.blocked_rows(inp, keys)
            k, v = probes.perturb_keys(inp, keys, how, seed=case.seed + pos)
            probes.assert_rows_unchanged(out0, probes.call(target.impl, inp, k=k, v=v), r, f"{how} change to {what}")
