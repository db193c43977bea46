"""Hypothesis strategies for flash_attn-convention cases.

``flash_cases()`` draws every dimension at once (ragged lengths with empty sequences and length
1, windows, soft-caps, ALiBi, sinks, explicit scales, page sizes 1 to 256, prefix-shared pages,
appended tokens, split counts); :func:`harness.flash.probes.fit` then moves a drawn case inside a
kernel's convention and declaration. Every choice lists its simplest value first, so a failure
shrinks to few sequences, short lengths and no variant but the one that matters; keyword
arguments pin a dimension (``window=st.just((2, 0))``).
"""

from __future__ import annotations

from hypothesis import strategies as st

from harness.flash.cases import FlashCase

WINDOWS = st.one_of(st.just((-1, -1)), st.tuples(st.integers(0, 8), st.sampled_from([-1, 0, 1, 3])),
                    st.tuples(st.just(-1), st.integers(0, 4)))
SOFTCAPS = st.sampled_from([0.0, 5.0, 1.0, 30.0])
SCALES = st.sampled_from([None, 0.3, 1.0, 0.05])
PAGE_SIZES = st.sampled_from([16, 1, 4, 256])


def _fit_len(xs, B: int) -> tuple:
    # a pinned list may be drawn for a larger batch: the first B entries
    xs = list(xs)[:B]
    return tuple(xs + xs[-1:] * (B - len(xs)))


@st.composite
def flash_cases(draw, max_batch: int = 4, max_q: int = 12, max_k: int = 24, **pinned):
    """A :class:`FlashCase` with every dimension drawn; ``pinned`` maps field names to strategies."""

    def pick(name, default):
        return draw(pinned[name]) if name in pinned else draw(default)

    B = pick("B", st.integers(1, max_batch))
    H = pick("H", st.sampled_from([2, 1, 4]))
    Hkv = pick("Hkv", st.sampled_from([h for h in (1, 2, 4) if H % h == 0 and h <= H][::-1]))
    seqlens_q = _fit_len(pick("seqlens_q", st.lists(st.integers(0, max_q), min_size=B, max_size=B)), B)
    seqlens_k = _fit_len(pick("seqlens_k", st.lists(st.integers(0, max_k), min_size=B, max_size=B)), B)
    page_size = pick("page_size", PAGE_SIZES)
    shared = pick("shared_pages", st.sampled_from([0, 1]))
    return FlashCase(
        B=B, H=H, Hkv=Hkv, E=pick("E", st.sampled_from([16, 8, 32, 64])), seqlens_q=seqlens_q, seqlens_k=seqlens_k,
        new=pick("new", st.sampled_from([0, 1, 3])), causal=pick("causal", st.booleans()),
        window=pick("window", WINDOWS), softcap=pick("softcap", SOFTCAPS), alibi=pick("alibi", st.sampled_from([False, True, "per_batch"])),
        sinks=pick("sinks", st.booleans()), scale=pick("scale", SCALES), page_size=page_size,
        shared_pages=shared if page_size * shared <= min(seqlens_k) else 0,
        num_splits=pick("num_splits", st.sampled_from([0, 2, 3])),
        magnitude=pick("magnitude", st.sampled_from([1.0, 8.0])), seed=pick("seed", st.integers(0, 2 ** 16)))
