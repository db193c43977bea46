"""Semantic fingerprint: what an implementation actually does where conventions differ.

Read black-box from small fixed probes: causal alignment when L != S, boolean mask polarity,
fully-masked-row behaviour, default scale, GQA head mapping and determinism. The fingerprint
suite reports it (info) and fails the gate where it contradicts the declared contract.
"""

from __future__ import annotations

import math

import torch

from harness import probes
from harness.cases import Case
from harness.reference import attention_reference


# The fixed probe inputs, by fingerprint entry; a failing gate test reports its case from here.
CASES = {
    "causal_alignment": Case(L=2, S=4, E=8, Ev=8, policy="causal()", mask="is_causal"),
    "mask_polarity": Case(L=2, S=4, E=8, Ev=8, policy="key_padding([3])", mask="bool", mask_shape="B11S"),
    "fully_masked_rows": Case(L=2, S=3, E=8, Ev=8, mask="bool", mask_shape="LS"),
    # Self-attention kernels (L == S) take other paths than cross-attention ones: probed too.
    "fully_masked_rows_square": Case(L=3, S=3, E=8, Ev=8, mask="bool", mask_shape="LS"),
    "default_scale": Case(L=3, S=5, E=16, Ev=8, seed=3),
    "explicit_scale_honoured": Case(L=3, S=5, E=16, Ev=8, seed=4, scale=0.9),
    "gqa_mapping": Case(B=1, H=4, Hkv=2, L=1, S=2, E=8, Ev=8),
    "deterministic": Case(B=2, H=2, Hkv=2, L=33, S=33, E=16, Ev=16, seed=5),
}


def case_for(name: str, dtype: str = "float32", device: str = "cpu", caps=None) -> Case:
    """The probe's case, moved inside ``caps`` (head dims, value dim...) when given; a probe
    that cannot be expressed there is ``unsupported``."""
    case = CASES[name].replace(dtype=dtype, device=device)
    if caps is None:
        return case
    fitted = case.fit(caps, dtype, device)
    if fitted is None:
        import pytest

        pytest.skip(f"unsupported: the {name} probe ({case.short()}) is outside the declared capabilities")
    return fitted


def _inputs(impl, name: str, dtype: str, device: str):
    return case_for(name, dtype, device, getattr(impl, "capabilities", None)).materialize()


def causal_alignment(impl, dtype="float32", device="cpu") -> str:
    """top_left | bottom_right | none (is_causal ignored) | other."""
    inp = _inputs(impl, "causal_alignment", dtype, device)
    w = probes.effective_weights(impl, inp)[0, 0] > 0
    tl = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    br = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    if torch.equal(w, tl):
        return "top_left"
    if torch.equal(w, br):
        return "bottom_right"
    if bool(w.all()):
        return "none"
    return "other: " + str(w.int().tolist())


def mask_polarity(impl, dtype="float32", device="cpu") -> str:
    """'true=keep' (SDPA) | 'true=mask' (nn.MultiheadAttention) | 'ignored' | 'other'."""
    inp = _inputs(impl, "mask_polarity", dtype, device)
    w = probes.effective_weights(impl, inp)[0, 0]
    keep = inp.attn_mask.reshape(-1)
    if bool((w[:, ~keep] == 0).all()) and bool((w[:, keep] > 0).all()):
        return "true=keep"
    if bool((w[:, keep] == 0).all()):
        return "true=mask"
    if bool((w > 0).all()):
        return "ignored"
    return "other"


def _fully_masked_row(impl, name, dtype, device) -> str:
    inp = _inputs(impl, name, dtype, device)
    L, S = inp.case.L, inp.case.S
    # row 1 sees nothing; row 0 all but the last key, any further rows everything
    m = torch.ones(L, S, dtype=torch.bool, device=inp.q.device)
    m[0, -1] = False
    m[1] = False
    inp = inp.replace(attn_mask=m, visible=m.expand(1, 1, L, S))
    out = probes.call(impl, inp).detach().double()[0, 0, 1]
    if bool(torch.isnan(out).any()):
        return "nan"
    if bool((out == 0).all()):
        return "zero"
    if bool(torch.allclose(out, inp.v.double()[0, 0].mean(0), atol=1e-2)):
        return "uniform"
    return "other"


def fully_masked_rows(impl, dtype="float32", device="cpu") -> str:
    """zero | nan | uniform | other, for a query row whose every key is masked out, probed with
    L != S and with L == S (as far as the declared capabilities reach); two different answers
    are reported as ``"<a> (L=2, S=3), <b> (L=3, S=3)"``."""
    import pytest

    seen = {}
    for name in ("fully_masked_rows", "fully_masked_rows_square"):
        try:
            case = case_for(name, dtype, device, getattr(impl, "capabilities", None))
        except pytest.skip.Exception:
            continue
        key = f"L={case.L}, S={case.S}"
        if key in seen:  # a self-attention kernel's two probes fit to the same shape
            continue
        try:
            seen[key] = _fully_masked_row(impl, name, dtype, device)
        except pytest.skip.Exception:
            if len(seen) == 0 and name == "fully_masked_rows_square":
                raise
    if not seen:
        pytest.skip("unsupported: no fully-masked-row probe fits the declared capabilities")
    got = set(seen.values())
    if len(got) == 1:
        return got.pop()
    return ", ".join(f"{v} ({k})" for k, v in seen.items())


def default_scale(impl, dtype="float32", device="cpu") -> str:
    """'1/sqrt(E)' | '1' | 'other' for scale=None, and whether an explicit scale is honoured."""
    inp = _inputs(impl, "default_scale", dtype, device)
    out = probes.call(impl, inp).detach().double()
    E = inp.case.E
    cands = {"1/sqrt(E)": 1 / math.sqrt(E), "1": 1.0, "1/E": 1 / E}
    errs = {k: float((out - attention_reference(inp.q, inp.k, inp.v, scale=s)).abs().max()) for k, s in cands.items()}
    best = min(errs, key=errs.get)
    return best if errs[best] < 0.05 else "other"


def explicit_scale_honoured(impl, dtype="float32", device="cpu") -> bool:
    inp = _inputs(impl, "explicit_scale_honoured", dtype, device)
    out = probes.call(impl, inp).detach().double()
    return float((out - inp.reference()).abs().max()) < 0.05


def gqa_mapping(impl, dtype="float32", device="cpu") -> str:
    """'interleave' (h reads kv head h // (H/Hkv), SDPA) | 'tile' (h reads h % Hkv) | 'other'."""
    inp = _inputs(impl, "gqa_mapping", dtype, device)
    v = torch.zeros_like(inp.v)
    v[:, 0] = 1.0  # kv head 0 carries ones, kv head 1 zeros
    out = probes.call(impl, inp, v=v).detach().double()[0, :, 0, 0]
    reads = [0 if abs(float(x) - 1) < 0.05 else 1 if abs(float(x)) < 0.05 else -1 for x in out]
    if reads == [0, 0, 1, 1]:
        return "interleave"
    if reads == [0, 1, 0, 1]:
        return "tile"
    return f"other: {reads}"


def deterministic(impl, dtype="float32", device="cpu") -> bool:
    inp = _inputs(impl, "deterministic", dtype, device)
    a = probes.call(impl, inp).detach()
    b = probes.call(impl, inp).detach()
    return bool(torch.equal(a, b))


def fingerprint(impl, dtype="float32", device="cpu", caps=None) -> dict:
    """Everything above in one dict; entries the implementation cannot express are 'unsupported'."""
    import pytest

    caps = caps or impl.capabilities
    fp = {}
    probes_ = {"causal_alignment": (causal_alignment, caps.causal is not None and caps.cross_attention),
               "mask_polarity": (mask_polarity, "bool" in caps.mask_kinds),
               "fully_masked_rows": (fully_masked_rows, "bool" in caps.mask_kinds),
               "default_scale": (default_scale, True),
               "explicit_scale_honoured": (explicit_scale_honoured, True),
               "gqa_mapping": (gqa_mapping, caps.gqa),
               "deterministic": (deterministic, True)}
    for name, (fn, ok) in probes_.items():
        if not ok:
            fp[name] = "unsupported"
            continue
        try:
            fp[name] = fn(impl, dtype, device)
        except pytest.skip.Exception:
            fp[name] = "unsupported"
        except Exception as e:  # the fingerprint reports; the gate tests judge
            fp[name] = f"error: {type(e).__name__}: {e}"[:200]
    return fp
