"""Hypothesis strategies for attention cases.

Composable and shrinkable: every size shrinks toward 1 (or the smallest legal value), masks
shrink toward "no mask", scales toward the default, magnitudes toward 1, so a failure is
reported at the smallest input that still shows it. Strategies are independent of the
implementation under test; :meth:`harness.cases.Case.fit` moves a drawn case inside an
implementation's declared capabilities, which keeps ``@example`` cases usable everywhere.

    from hypothesis import given
    from harness import strategies as hs

    @given(case=hs.cases(policies=("causal", "key_padding") + hs.BOUNDARY_POLICIES))
    def test_something(target, case):
        case = target.fit(case)  # inside the implementation's declared capabilities
        ...
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

from hypothesis import strategies as st

from harness.cases import Case, MASK_SHAPES

HEAD_DIMS = (16, 8, 20, 32, 64, 72, 128)
PROFILE_MAX_LEN = {"quick": 40, "default": 80, "thorough": 300}
_profile = "default"


def set_profile(name: str) -> None:
    """Sizes follow the active profile; the pytest plugin sets it from ``--profile``."""
    global _profile
    if name not in PROFILE_MAX_LEN:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILE_MAX_LEN)}")
    _profile = name


def max_len() -> int:
    return PROFILE_MAX_LEN[_profile]


def lengths(min_value: int = 1, max_value: Optional[int] = None) -> st.SearchStrategy[int]:
    return st.deferred(lambda: st.integers(min_value, max_value if max_value is not None else max_len()))


@st.composite
def heads(draw, max_heads: int = 4):
    """(H, Hkv) with Hkv dividing H: MHA, GQA and MQA. Shrinks to (1, 1)."""
    H = draw(st.sampled_from([h for h in (1, 2, 4, 6, 8) if h <= max_heads]))
    Hkv = draw(st.sampled_from([d for d in range(H, 0, -1) if H % d == 0]))
    return H, Hkv


def scales() -> st.SearchStrategy[Optional[float]]:
    """None (1/sqrt(E)) or an explicit softmax scale."""
    return st.one_of(st.none(), st.sampled_from([0.5, 0.125, 1.0, 0.07, 2.0]))


# --- mask policies -------------------------------------------------------------------------
# Each draws a policy spec for a given (B, L, S); they return (spec, L, S) because some policies
# fix the sequence length they describe.

@st.composite
def padding_policy(draw, B: int, L: int, S: int):
    lens = draw(st.lists(st.integers(1, S), min_size=B, max_size=B))
    return f"key_padding({lens})", L, S


def causal_policy(B: int, L: int, S: int):
    return st.just(("causal()", L, S))


def _split(draw, n: int, parts_max: int = 4):
    k = draw(st.integers(1, max(1, min(parts_max, n))))
    cuts = sorted(draw(st.lists(st.integers(1, n - 1), min_size=k - 1, max_size=k - 1, unique=True))) if n > 1 and k > 1 else []
    bounds = [0] + cuts + [n]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])]


@st.composite
def document_policy(draw, B: int, L: int, S: int):
    n = max(L, S, 2)
    return f"document({_split(draw, n)})", n, n


@st.composite
def prefix_lm_policy(draw, B: int, L: int, S: int):
    n = max(L, S)
    return f"prefix_lm({draw(st.integers(0, n))})", n, n


@st.composite
def sliding_window_policy(draw, B: int, L: int, S: int):
    n = max(L, S)
    return f"sliding_window({draw(st.integers(1, max(1, n)))})", n, n


@st.composite
def rag_policy(draw, B: int, L: int, S: int):
    instr = draw(st.integers(1, 4))
    chunks = draw(st.lists(st.integers(1, 8), min_size=2, max_size=4))
    question = draw(st.integers(1, 6))
    n = instr + sum(chunks) + question
    return f"rag({instr}, {chunks}, {question})", n, n


@st.composite
def chat_policy(draw, B: int, L: int, S: int):
    """system, user, then a mix of tool / retrieved / assistant turns separated by delimiters."""
    turns = [["system", draw(st.integers(1, 6))], ["delim", 1], ["user", draw(st.integers(1, 6))]]
    for _ in range(draw(st.integers(1, 3))):
        role = draw(st.sampled_from(["tool", "retrieved", "assistant"]))
        turns += [["delim", 1], [role, draw(st.integers(1, 6))]]
    turns += [["delim", 1], ["assistant", draw(st.integers(1, 4))]]
    n = sum(t[1] for t in turns)
    return f"chat_roles({json.dumps(turns)})", n, n


@st.composite
def shared_prefix_policy(draw, B: int, L: int, S: int):
    prefix = draw(st.integers(1, 8))
    conts = draw(st.lists(st.integers(1, 8), min_size=2, max_size=4))
    return f"shared_prefix({prefix}, {conts})", prefix + sum(conts), prefix + sum(conts)


@st.composite
def head_span_policy(draw, B: int, L: int, S: int):
    spans = draw(st.lists(st.integers(1, S), min_size=1, max_size=4))
    return f"head_span({spans})", L, S


POLICY_STRATEGIES = {
    "causal": causal_policy,
    "key_padding": padding_policy,
    "document": document_policy,
    "prefix_lm": prefix_lm_policy,
    "sliding_window": sliding_window_policy,
    "rag": rag_policy,
    "chat_roles": chat_policy,
    "shared_prefix": shared_prefix_policy,
    "head_span": head_span_policy,
}
BOUNDARY_POLICIES = ("document", "prefix_lm", "sliding_window", "rag", "chat_roles", "shared_prefix")


def _policy_deps(spec: str) -> frozenset:
    from harness.masks import from_spec

    return from_spec(spec).depends_on


@st.composite
def cases(draw, *, policies: Sequence[str] = ("none", "causal", "key_padding", "document"),
          mask_kinds: Sequence[str] = ("bool", "float", "is_causal"),
          L=None, S=None, B=None, heads_=None, E=None, Ev=None,
          scale=None, magnitude=None, alibi=st.just(False), max_heads: int = 4,
          batch_max: int = 3, seed=None):
    """A :class:`Case`. Every argument left as None is drawn; pass a strategy to narrow it.

    ``policies`` names which visibility patterns may be drawn ("none" = every key visible);
    ``mask_kinds`` how a pattern reaches the kernel (bool / float mask, or is_causal for the
    causal pattern).
    """
    b = draw(B if B is not None else st.integers(1, batch_max))
    H, Hkv = draw(heads_ if heads_ is not None else heads(max_heads))
    e = draw(E if E is not None else st.sampled_from(HEAD_DIMS))
    ev = draw(Ev if Ev is not None else st.one_of(st.just(e), st.sampled_from(HEAD_DIMS)))
    l = draw(L if L is not None else lengths())
    s = draw(S if S is not None else st.one_of(st.just(l), lengths()))
    pol_name = draw(st.sampled_from(list(policies)))
    if pol_name == "none":
        policy, mask = "full()", "none"
    else:
        policy, l, s = draw(POLICY_STRATEGIES[pol_name](b, l, s))
        kinds = [k for k in mask_kinds if k != "is_causal" or policy == "causal()"]
        mask = draw(st.sampled_from(kinds))
    use_alibi = False
    shape = "BHLS"
    if mask in ("bool", "float"):
        use_alibi = mask == "float" and draw(alibi)
        deps = _policy_deps(policy) | ({"h", "q"} if use_alibi else frozenset())
        shapes = [k for k, carries in MASK_SHAPES.items() if deps <= carries]
        shape = draw(st.sampled_from(sorted(shapes, key=lambda k: (len(MASK_SHAPES[k]), k))))
    return Case(
        B=b, H=H, Hkv=Hkv, L=l, S=s, E=e, Ev=ev, policy=policy, mask=mask, mask_shape=shape,
        alibi=use_alibi,
        scale=draw(scale if scale is not None else scales()),
        magnitude=draw(magnitude if magnitude is not None else st.just(1.0)),
        seed=draw(seed if seed is not None else st.integers(0, 2**31 - 1)),
    )
