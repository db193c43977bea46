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

from harness.cases import Case, MASK_SHAPES, TENSOR_LAYOUTS, layout_spec

# Shrink toward the first entries. Above 128 and the odd small ones are where head-dim-specific
# kernels break (FA#805, FA#1214); 192 with Ev=128 is the MLA shape.
HEAD_DIMS = (16, 8, 20, 32, 64, 72, 128, 1, 3, 96, 160, 192, 256)
THOROUGH_HEAD_DIMS = HEAD_DIMS + (512,)
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


def head_dims() -> st.SearchStrategy[int]:
    """Head dims of the active profile (the thorough one reaches 512)."""
    return st.deferred(lambda: st.sampled_from(THOROUGH_HEAD_DIMS if _profile == "thorough" else HEAD_DIMS))


def value_dims(e: int) -> st.SearchStrategy[int]:
    """Ev: mostly E, else any head dim; E=192 also draws the MLA value dim 128."""
    extra = [st.just(128)] if e == 192 else []
    return st.one_of(st.just(e), *extra, head_dims())


@st.composite
def layouts(draw) -> str:
    """A memory layout for q, k, v and the mask (see :data:`harness.cases.TENSOR_LAYOUTS`): half
    the draws contiguous, the rest a per-tensor mix. Shrinks toward contiguous."""
    if not draw(st.booleans()):
        return "contiguous"
    parts = {n: draw(st.sampled_from(TENSOR_LAYOUTS)) for n in ("q", "k", "v")}
    parts["kv"] = draw(st.sampled_from(["contiguous", "broadcast"]))
    parts["mask"] = draw(st.sampled_from(["contiguous", "expanded"]))
    return layout_spec(parts)


def examples(quick: int, default: int, thorough: int) -> int:
    """How many examples an expensive property draws under the active profile (sparse sampling
    of a costly region instead of dropping it)."""
    return {"quick": quick, "default": default, "thorough": thorough}[_profile]


def sparse_settings(quick: int, default: int, thorough: int):
    """Hypothesis settings for a property whose cases are expensive: a few draws per run under
    the active profile, and in the quick profile no explicit examples either (they would cost
    more than that profile's whole budget). Built at import, after the plugin loaded the profile."""
    from hypothesis import Phase, settings

    kw = dict(max_examples=examples(quick, default, thorough))
    if _profile == "quick":
        kw["phases"] = [Phase.generate, Phase.target, Phase.shrink]
    return settings(**kw)


def lengths(min_value: int = 1, max_value: Optional[int] = None) -> st.SearchStrategy[int]:
    return st.deferred(lambda: st.integers(min_value, max_value if max_value is not None else max_len()))


@st.composite
def heads(draw, max_heads: int = 4):
    """(H, Hkv) with Hkv dividing H: MHA, GQA and MQA. Shrinks to (1, 1)."""
    H = draw(st.sampled_from([h for h in (1, 2, 4, 6, 8) if h <= max_heads]))
    Hkv = draw(st.sampled_from([d for d in range(H, 0, -1) if H % d == 0]))
    return H, Hkv


# Explicit scales bugs hide at: 0.0 is valid (every visible key weighs the same; ``scale or
# default`` makes it the default), a negative one (abs(), a clamp at 0, a row max taken before
# the scale), tiny and large ones (a clamp to a "sane" range). Simplest first, for shrinking.
EDGE_SCALES = (0.0, -0.5, 1e-4, 10.0)
# Finite float-mask entries at full precision (Case.mask_bias): none, then offsets up to 1, 1e4
# (ALiBi at long distances) and 30 (relative-position biases).
MASK_BIASES = (0.0, 1.0, 1e4, 30.0)


def scales(edges: bool = False) -> st.SearchStrategy[Optional[float]]:
    """None (1/sqrt(E)) or an explicit softmax scale; with ``edges`` also :data:`EDGE_SCALES`."""
    return st.one_of(st.none(), st.sampled_from([0.5, 0.125, 1.0, 0.07, 2.0] + list(EDGE_SCALES if edges else ())))


def mask_biases() -> st.SearchStrategy[float]:
    """:data:`MASK_BIASES`, shrinking toward no bias."""
    return st.sampled_from(MASK_BIASES)


# --- mask policies -------------------------------------------------------------------------
# Each draws a policy spec for a given (B, L, S); they return (spec, L, S) because some policies
# fix the sequence length they describe.

PADDING_PLACEMENTS = ("right", "left", "middle", "scattered")


@st.composite
def padding_rows(draw, B: int, S: int, placement: Optional[str] = None):
    """Per batch element, which of the S keys are real ("1") and padding ("0"), with the padding
    placed right, left, in the middle or at scattered positions, independent of how much there
    is. Now and then one batch row is padded entirely. Shrinks toward right padding."""
    # Key-by-key placement at tens of thousands of keys would cost more to draw than to run.
    where = placement or draw(st.sampled_from(PADDING_PLACEMENTS if S <= 4096 else PADDING_PLACEMENTS[:3]))
    where = "middle" if where == "scattered" and S > 4096 else where
    rows = []
    for _ in range(B):
        n = draw(st.integers(1, S))  # real tokens
        if where == "right":
            r = "1" * n + "0" * (S - n)
        elif where == "left":
            r = "0" * (S - n) + "1" * n
        elif where == "middle":
            a = draw(st.integers(0, n))
            r = "1" * a + "0" * (S - n) + "1" * (n - a)
        else:
            bits = draw(st.lists(st.booleans(), min_size=S, max_size=S))
            r = "".join("1" if x else "0" for x in bits)
            r = r if "1" in r else "1" + r[1:]
        rows.append(r)
    if draw(st.integers(0, 5)) == 5:
        rows[draw(st.integers(0, B - 1))] = "0" * S  # a batch row that is all padding
    return rows


def padding_spec(rows) -> str:
    """Right padding keeps its readable key_padding(lengths) spec; any other placement is
    spelled key by key."""
    lens = [r.count("1") for r in rows]
    if all(r == "1" * n + "0" * (len(r) - n) for r, n in zip(rows, lens)) and min(lens) > 0:
        return f"key_padding({lens})"
    from harness.masks.padding import spans_of

    return f"key_visible({len(rows[0])}, {[spans_of(c == '1' for c in r) for r in rows]})"


@st.composite
def padding_policy(draw, B: int, L: int, S: int):
    return padding_spec(draw(padding_rows(B, S))), L, S


@st.composite
def padded_causal_policy(draw, B: int, L: int, S: int):
    """Causal with key padding, mostly left padding: the padded query positions at the start
    see no key at all, the fully masked rows of transformers#47651."""
    rows = draw(padding_rows(B, S, draw(st.sampled_from(["left", "right", "middle", "scattered"]))))
    return f"and_masks(causal(), {padding_spec(rows)})", L, S


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
    "padded_causal": padded_causal_policy,
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
          batch_max: int = 3, seed=None, layout=None, mask_bias=st.just(0.0)):
    """A :class:`Case`. Every argument left as None is drawn; pass a strategy to narrow it.

    ``policies`` names which visibility patterns may be drawn ("none" = every key visible);
    ``mask_kinds`` how a pattern reaches the kernel (bool / float mask, or is_causal for the
    causal pattern); ``mask_bias`` (e.g. :func:`mask_biases`) what a float mask's finite
    entries carry.
    """
    b = draw(B if B is not None else st.integers(1, batch_max))
    H, Hkv = draw(heads_ if heads_ is not None else heads(max_heads))
    e = draw(E if E is not None else head_dims())
    ev = draw(Ev if Ev is not None else value_dims(e))
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
        layout=draw(layout if layout is not None else layouts()),
        mask_bias=draw(mask_bias) if mask == "float" else 0.0,
    )


# --- index widths and grid limits ------------------------------------------------------------
# Lengths either side of 2^15 (int16 positions, xformers#719) and 2^16 (pytorch#162588), and past
# 65,536; B*H either side of 65,535 (the CUDA grid's y/z limit, pytorch#142228). The other
# dimensions stay tiny so each case costs a fraction of a second on a CPU.
WIDE_LENGTHS = (32769, 65537, 32767, 32768, 65535, 65536, 70001)
GRID_BH = ((256, 256), (65536, 1), (1, 65536), (65537, 1), (1, 65537), (65535, 1), (255, 257), (1, 65535))


def index_width_cases() -> st.SearchStrategy[Case]:
    """One long side (S or L in :data:`WIDE_LENGTHS`) against at most 4 on the other, with no
    mask, causal, or key padding."""
    small = dict(B=st.just(1), heads_=heads(2), E=st.sampled_from([8, 16, 3]), Ev=st.just(8),
                 policies=("none", "causal", "key_padding"))
    return st.one_of(cases(L=st.integers(1, 4), S=st.sampled_from(WIDE_LENGTHS), **small),
                     cases(L=st.sampled_from(WIDE_LENGTHS), S=st.integers(1, 4), **small))


@st.composite
def grid_limit_cases(draw) -> Case:
    """B*H at 65,535, 65,536 and 65,537 (batch, heads or both), L, S <= 3, E <= 4."""
    B, H = draw(st.sampled_from(GRID_BH))
    Hkv = draw(st.sampled_from([H, 1]))
    return draw(cases(B=st.just(B), heads_=st.just((H, Hkv)), L=st.integers(1, 3), S=st.integers(1, 3),
                      E=st.sampled_from([4, 1]), Ev=st.just(4), policies=("none", "causal"),
                      mask_kinds=("is_causal", "bool")))
