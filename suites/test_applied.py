"""L. The option was applied: changing an option changes the output where it must, and leaves it
bitwise unchanged where it must not (see :mod:`harness.applied`, one registry row per option).

Catches: an explicit scale ignored once a mask is present, ``is_causal`` ignored when an
``attn_mask`` is given too, masks ignored (or applied to the wrong rows or heads), a GQA head map
that reads the wrong kv head: accepted arguments that are silently dropped.
"""

from hypothesis import example, given, settings
from hypothesis import strategies as st

from harness import applied
from harness import strategies as hs
from harness.cases import Case

OPT = applied.OPTIONS
# One pair of calls shows an ignored option; a few draws cover the mask kinds and shapes.
EXAMPLES = hs.examples(quick=4, default=10, thorough=60)
_MASKS = ("causal", "key_padding", "document")


@settings(max_examples=EXAMPLES)
@given(case=hs.cases(policies=("none", *_MASKS)), choice=st.integers(0, 3))
@example(case=Case(B=2, H=2, Hkv=2, L=6, S=9, E=16, Ev=16, policy="key_padding([1, 7])", mask="bool",
                   mask_shape="B11S"), choice=0)
@example(case=Case(B=1, H=2, Hkv=1, L=7, S=7, E=16, Ev=16, policy="causal()", mask="float", mask_shape="LS"),
         choice=1)
def test_scale_applied(target, case, choice):
    """An explicit scale changes every row that averages keys of different logits, under each
    declared mask kind (none, bool, float, is_causal), and leaves rows with one visible key
    bitwise unchanged."""
    applied.check(target, OPT["scale"], case, choice)


@settings(max_examples=EXAMPLES)
@given(case=hs.cases(policies=_MASKS, mask_kinds=("bool",)), choice=st.integers(0, 3))
@example(case=Case(B=2, H=2, Hkv=1, L=5, S=8, E=16, Ev=16, policy="key_padding([6, 8])", mask="bool",
                   mask_shape="BHLS"), choice=0)
def test_bool_mask_applied(target, case, choice):
    """Hiding one more key in a boolean mask changes the rows that saw it and no other row
    (bitwise), in every broadcast shape of the mask."""
    applied.check(target, OPT["bool_mask"], case, choice)


@settings(max_examples=EXAMPLES)
@given(case=hs.cases(policies=_MASKS, mask_kinds=("float",)), choice=st.integers(0, 3))
@example(case=Case(B=2, H=2, Hkv=1, L=5, S=8, E=16, Ev=16, policy="key_padding([6, 8])", mask="float",
                   mask_shape="BHLS"), choice=0)
def test_float_mask_applied(target, case, choice):
    """Setting one more additive-mask entry to -inf changes the rows that saw that key and no
    other row (bitwise), in every broadcast shape of the mask."""
    applied.check(target, OPT["float_mask"], case, choice)


@settings(max_examples=EXAMPLES)
@given(case=hs.cases(policies=("none",)), choice=st.integers(0, 3))
@example(case=Case(B=1, H=2, Hkv=2, L=6, S=6, E=16, Ev=16), choice=0)
@example(case=Case(B=1, H=2, Hkv=2, L=6, S=6, E=16, Ev=16), choice=3)
def test_causal_applied(target, case, choice):
    """is_causal=True changes every query that had future keys, alone and when an all-True
    attn_mask is given too (a kernel may reject that combination, not ignore is_causal), and
    leaves queries that see every key either way bitwise unchanged."""
    applied.check(target, OPT["causal"], case, choice)


@settings(max_examples=EXAMPLES)
@given(case=hs.cases(policies=("none", "causal", "key_padding"), heads_=st.sampled_from([(2, 1), (4, 2), (4, 1), (6, 3), (8, 2)])),
       choice=st.integers(0, 3))
@example(case=Case(B=1, H=4, Hkv=2, L=5, S=7, E=16, Ev=16), choice=0)
def test_gqa_applied(target, case, choice):
    """New keys and values in one kv head change exactly the query heads of its group
    (h // (H // Hkv)); every other head stays bitwise unchanged."""
    applied.check(target, OPT["gqa"], case, choice)
