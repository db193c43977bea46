"""K. Strict isolation: NaN or Inf stored in masked key/value slots (an uninitialised KV-cache
slot) must not reach any visible output. Reported always; fails the run only with --strict.

torch SDPA on CPU propagates NaN from masked value slots today (pytorch#101967): a kernel that
computes 0 * NaN for a masked weight fails here, and the report says so plainly.
"""

import pytest
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

from harness import probes
from harness import strategies as hs
from harness.cases import Case


@pytest.mark.tier("strict")
@given(case=hs.cases(policies=("key_padding", "causal"), mask_kinds=("bool", "float", "is_causal")),
       tail=st.integers(1, 8), how=st.sampled_from(["nan", "inf"]))
@example(case=Case(B=2, H=1, Hkv=1, L=3, S=5, E=16, Ev=16, policy="key_padding([2, 5])", mask="bool", mask_shape="B11S"),
         tail=1, how="nan")
@example(case=Case(B=1, H=2, Hkv=1, L=4, S=4, E=16, Ev=16, policy="causal()", mask="is_causal"), tail=3, how="nan")
def test_nan_in_masked_slots(target, case, how, tail):
    """NaN/Inf written into key/value slots that no query may read (the uninitialised tail of a
    KV cache) never reaches any output. Slots some other query reads legitimately are not
    poisoned: even FlashAttention multiplies a zero weight by them inside a tile."""
    if case.policy == "causal()":
        # Top-left causal over a cache with `tail` unwritten slots after the last query's key.
        case = case.replace(S=case.L + tail)
    case = target.fit(case)
    inp = case.materialize()
    keys = ~inp.kv_visible().any(dim=2)
    assume(bool(keys.any()))
    rows = probes.blocked_rows(inp, keys)
    out0 = probes.call_kept(target.impl, inp)
    k, v = probes.perturb_keys(inp, keys, how, seed=case.seed)
    out1 = probes.call(target.impl, inp, k=k, v=v)
    bad = rows & ~torch.isfinite(out1.detach().float()).all(-1)
    if bool(bad.any()):
        raise probes.PropertyViolation(
            f"{how} stored in {int(keys.sum())} masked key/value slots reached {int(bad.sum())} of "
            f"{int(rows.sum())} rows that may not read them")
    probes.assert_rows_unchanged(out0, out1, rows, f"{how} in masked slots")
