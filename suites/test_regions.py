"""K. Input regions where real kernels break and random small shapes never go: index widths and
grid limits. Each case keeps every other dimension tiny, so a 65,537-key case costs a fraction of
a second (the float64 reference streams over key chunks). Drawn sparsely: a few explicit
examples plus one or two draws per run in the default profile, one draw and no explicit
example in the quick profile, 16 and 8 draws in the thorough one. With 2^15 keys or more, the keys
at the boundaries carry marker values (:func:`harness.cases.marked_keys`): one key among 65,537
would otherwise weigh too little for any tolerance to notice it dropped.

Catches: positions or offsets kept in 16 bits (wrong or NaN past 32,768, xformers#719), a step at
2^16 keys (pytorch#162588: keys past 65,536 dropped or wrapped), and kernels that launch one block per (batch, head) and break once
B*H passes the grid limit of 65,535 (pytorch#142228). Memory layouts, padding placement, head
dims and tile tails are drawn by every property in the other suites.
"""

from hypothesis import example, given

from harness import probes
from harness import strategies as hs
from harness.cases import Case


@hs.sparse_settings(quick=1, default=2, thorough=16)
@given(case=hs.index_width_cases())
@example(case=Case(B=1, H=1, Hkv=1, L=3, S=32769, E=8, Ev=8))
@example(case=Case(B=1, H=1, Hkv=1, L=2, S=65537, E=8, Ev=8))
@example(case=Case(B=1, H=1, Hkv=1, L=2, S=65537, E=8, Ev=8, policy="key_padding([65536])", mask="bool", mask_shape="B11S"))
@example(case=Case(B=1, H=1, Hkv=1, L=32769, S=3, E=8, Ev=8, policy="causal()", mask="is_causal"))
def test_index_width_boundaries(target, case):
    """Outputs match the reference with S or L either side of 2^15 and 2^16 and past 65,536,
    with no mask, causal, or key padding (L, S <= 4 on the other side)."""
    case = target.fit(case)
    inp = case.materialize()
    probes.judge(target, probes.call(target.impl, inp), inp)


@hs.sparse_settings(quick=1, default=1, thorough=8)
@given(case=hs.grid_limit_cases())
@example(case=Case(B=256, H=256, Hkv=256, L=2, S=3, E=4, Ev=4))
def test_batch_heads_limit(target, case):
    """Outputs match the reference with B*H at 65,535, 65,536 and 65,537 (tiny L, S, E): every
    (batch, head) pair is computed, none dropped or aliased past the launch grid's limit."""
    case = target.fit(case)
    inp = case.materialize()
    probes.judge(target, probes.call(target.impl, inp), inp)
