"""J. Semantic fingerprint: what the implementation does where conventions differ, reported
(info), and a gate failure wherever it contradicts the declared contract.

Catches: bottom-right causal alignment in a plain SDPA callable, inverted boolean polarity
(nn.MultiheadAttention's convention), a wrong default scale, an ignored explicit scale, GQA
heads tiled instead of interleaved, NaN for fully masked rows (probed with L != S and L == S,
so self-attention-only kernels get the check too), nondeterminism in a kernel that declares
itself deterministic.
"""

import pytest

from harness import fingerprint as F
from harness import probes


@pytest.mark.tier("info")
def test_fingerprint(target):
    """Detected causal alignment, mask polarity, fully-masked-row behaviour, default scale, GQA
    head mapping and determinism (reported, never fails)."""
    fp = F.fingerprint(target.impl, target.dtype, target.device, target.caps)
    target.cases += 1
    target.record(fingerprint=fp)
    if fp and all(v == "unsupported" for v in fp.values()):
        # nothing was detected: a "pass" would claim a fingerprint that was never taken
        pytest.skip(f"unsupported: every fingerprint entry is unsupported ({', '.join(fp)})")
    probed = {k: v for k, v in fp.items() if v != "unsupported"}
    if probed and all(isinstance(v, str) and v.startswith("error:") for v in probed.values()):
        # Every call raised: nothing was fingerprinted, and a "pass" would say it was.
        first = next(iter(probed.items()))
        raise probes.ImplementationError(f"every fingerprint probe raised ({len(probed)}); {first[0]}: {first[1]}")


# What a detected behaviour is called in a capabilities declaration, where one exists.
_DECLARABLE = {
    "causal_alignment": ("causal", {"top_left", "bottom_right"}),
    "fully_masked_rows": ("fully_masked_rows", {"zero", "uniform"}),
    "fully_masked_rows_square": ("fully_masked_rows", {"zero", "uniform"}),
}


def _expect(target, name, probe, got, want):
    target.cases += 1
    target.last_case = F.case_for(probe, target.dtype, target.device, target.caps)
    target.record(detected=got, declared=want)
    if got != want:
        whose = "the declared contract" if getattr(target.impl, "declared", True) else "the default contract"
        msg = f"{name}: detected {got!r}, {whose} says {want!r}"
        field, values = _DECLARABLE.get(probe, (None, ()))
        if field and isinstance(got, str) and got in values:
            from harness.contract import declaration_hint

            msg += "; " + declaration_hint(target.impl, **{field: got})
        raise probes.PropertyViolation(msg)


def test_causal_alignment(target):
    """is_causal with L != S is aligned as declared (top-left for plain SDPA callables)."""
    target.require(is_causal=True, cross=True)
    _expect(target, "causal alignment (L=2, S=4)", "causal_alignment", F.causal_alignment(target.impl, target.dtype, target.device),
            target.caps.causal)


def test_mask_polarity(target):
    """Boolean masks: True means the key takes part."""
    target.require(mask_kind="bool")
    _expect(target, "boolean mask polarity", "mask_polarity", F.mask_polarity(target.impl, target.dtype, target.device), "true=keep")


def test_default_scale(target):
    """scale=None means 1/sqrt(E)."""
    _expect(target, "default scale", "default_scale", F.default_scale(target.impl, target.dtype, target.device), "1/sqrt(E)")


def test_explicit_scale_honoured(target):
    """An explicit scale is honoured (its own property: a fixed-scale kernel that raises
    NotImplementedError here is unsupported here, and still gets the default-scale check)."""
    _expect(target, "explicit scale=0.9 honoured", "explicit_scale_honoured",
            F.explicit_scale_honoured(target.impl, target.dtype, target.device), True)


def test_gqa_head_mapping(target):
    """With enable_gqa, query head h reads kv head h // (H // Hkv)."""
    target.require(gqa=True)
    _expect(target, "GQA head mapping (H=4, Hkv=2)", "gqa_mapping", F.gqa_mapping(target.impl, target.dtype, target.device),
            "interleave")


def test_fully_masked_rows(target):
    """A query row with no visible key gives the declared output (zero by default), never NaN."""
    target.require(mask_kind="bool", fully_masked_rows=True)
    got = F.fully_masked_rows(target.impl, target.dtype, target.device)
    square = not target.caps.cross_attention or "L=3, S=3" in got
    _expect(target, "fully masked row", "fully_masked_rows_square" if square else "fully_masked_rows", got,
            target.caps.fully_masked_rows)


def test_deterministic(target):
    """The same input twice gives bitwise-equal output, unless the implementation declares
    ``deterministic=False`` (then the detected behaviour is only reported)."""
    got = F.deterministic(target.impl, target.dtype, target.device)
    if not target.caps.deterministic:
        target.cases += 1
        target.record(detected=got, declared="nondeterministic allowed")
        return
    _expect(target, "deterministic forward (same input twice)", "deterministic", got, True)
