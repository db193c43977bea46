""""The option was applied": a registry of the contract's options, each with a trial that changes
the option and says where the output must change and where it must stay bitwise the same.

The bug class: a parameter that is accepted and silently ignored (a soft-cap, sinks, FP8
descales, a window; an explicit scale once a mask is given; ``is_causal`` once ``attn_mask`` is
given too). A tolerance property only sees it when its drawn inputs happen to make the option
matter; a trial makes it matter on purpose, in one pair of calls:

- where the option must change the output (the float64 answers with and without it are at
  least :data:`MIN_GAP` of the row's value scale apart), the kernel's output must be closer to
  the answer with the option than to the answer without it (and its first call the other way
  round). No tolerance factor is involved: a kernel that applies the option is always far closer
  to its own answer;
- where the option must not change anything, the two outputs must be bitwise equal.

A new option (another convention's window, soft-cap, sinks, ALiBi slopes, FP8 descales) is one
:class:`AppliedOption` given to :func:`add_option` plus a three-line property that calls
:func:`check` with it; its trial may bring its own ``call`` and references when the option is not
an SDPA argument.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Optional

import pytest
import torch

from harness import probes
from harness.cases import Inputs
from harness.reference import attention_reference, causal_bool

# The answers with and without the option must be this far apart, relative to the row's value
# scale, for a row to count as one where the output must change: far beyond any dtype's rounding
# (bfloat16's eps is 0.0078), so "closer to the new answer" never depends on a tolerance.
MIN_GAP = 0.05


@dataclass
class Trial:
    """Two calls that differ only in one option."""
    what: str
    base: Inputs
    changed: Inputs
    keep: torch.Tensor  # (B, H, L) rows whose output must stay bitwise unchanged
    ref_base: Optional[torch.Tensor] = None  # float64 answers (default: each Inputs' reference)
    ref_changed: Optional[torch.Tensor] = None
    may_reject: bool = False  # the changed call may raise: a combination torch SDPA itself rejects
    call: Optional[Callable] = None  # how to call the kernel (default probes.call_kept)


@dataclass(frozen=True)
class AppliedOption:
    name: str
    doc: str
    why_not: Callable  # (Capabilities) -> reason the option is not declared, or None
    trial: Callable  # (Case, Capabilities, random.Random) -> Trial, or None when the case cannot carry it


OPTIONS: dict = {}


def add_option(option: AppliedOption) -> AppliedOption:
    OPTIONS[option.name] = option
    return option


def check(target, option: AppliedOption, case, choice: int = 0) -> None:
    """Run ``option``'s trial on ``case`` (drawn by the property) against the target."""
    from hypothesis import assume

    why = option.why_not(target.caps)
    if why:
        pytest.skip(f"unsupported: {why}")
    case = target.fit(case)
    trial = option.trial(case, target.caps, random.Random(case.seed * 7919 + choice))
    assume(trial is not None)
    call = trial.call or (lambda inp: probes.call_kept(target.impl, inp))
    out_a = call(trial.base)
    try:
        out_b = call(trial.changed)
    except probes.ImplementationError as e:
        if not trial.may_reject:
            raise
        # Raising on a combination is loud, not silent: nothing was ignored.
        target.record(rejected=f"{trial.what}: {str(e)[:200]}")
        return
    ref_a = trial.base.reference() if trial.ref_base is None else trial.ref_base
    ref_b = trial.changed.reference() if trial.ref_changed is None else trial.ref_changed
    ref_a, ref_b = ref_a.to(out_a.device), ref_b.to(out_a.device)
    scale = torch.clamp(torch.maximum(ref_a.abs().amax(-1), ref_b.abs().amax(-1)), min=1e-3)
    gap = (ref_a - ref_b).abs().amax(-1)
    must = gap > MIN_GAP * scale
    assume(bool(must.any()) or bool(trial.keep.any()))
    _moved(out_b, ref_b, ref_a, must, gap, out_a, f"{trial.what}: the call with the option ignored it")
    _moved(out_a, ref_a, ref_b, must, gap, out_b, f"{trial.what}: the call without the option applied it anyway")
    target.record(rows_that_must_change=int(must.sum()), rows_kept=int(trial.keep.sum()))
    keep = trial.keep.to(out_a.device) & ~must
    if bool(keep.any()):
        probes.assert_rows_unchanged(out_a, out_b, keep, f"{trial.what}, where it must not change anything")


def _moved(out, own, other, must, gap, out_other, what: str) -> None:
    d_own = _row_dist(out, own)
    d_other = _row_dist(out, other)
    bad = must & ~(d_own < d_other)
    if not bool(bad.any()):
        return
    from harness.ulps import note, ulp_distance

    b, h, i = (int(x) for x in bad.nonzero()[0])
    ulps = float(ulp_distance(out[b, h, i], out_other[b, h, i]).max())
    note({"ulps": ulps if math.isfinite(ulps) else "inf",
          "rule": {"kind": "applied", "factor": 0.5, "baseline": "the float64 answers with and without the option: "
                   "the output must be closer to its own", "baseline_error": float(gap[b, h, i])}})
    raise probes.PropertyViolation(
        f"{what}: {int(bad.sum())} of {int(must.sum())} rows that must change did not follow it; "
        f"first (b={b}, h={h}, row={i}): {float(d_own[b, h, i]):.3g} from its own float64 answer and "
        f"{float(d_other[b, h, i]):.3g} from the answer of the other call (the answers are {float(gap[b, h, i]):.3g} "
        f"apart); the two calls' outputs differ there by {ulps:g} ulps")


def _row_dist(x, ref) -> torch.Tensor:
    d = (x.detach().double() - ref.double()).abs()
    return torch.where(torch.isfinite(d), d, torch.full_like(d, float("inf"))).amax(-1)


# --- the SDPA contract's options ------------------------------------------------------------

def _scale_trial(case, caps, rng) -> Optional[Trial]:
    """The default scale vs an explicit one, under whatever mask the case draws. Rows with one
    visible key average nothing: their output is that key's value at any scale."""
    base = case.replace(scale=None, magnitude=max(case.magnitude, 2.0)).materialize()
    s = rng.choice((0.3, 2.5)) / math.sqrt(case.E)
    changed = base.replace(scale=s, case=base.case.replace(scale=s))
    keep = base.visible.sum(-1) == 1
    return Trial(f"scale={s:.4g} instead of the default 1/sqrt({case.E}) ({case.mask} mask)", base, changed, keep)


# Every trial but the scale's runs at the default scale: each isolates its own option, so an
# ignored scale fails the scale's property (and the tolerance ones), not the mask's.


def _mask_trial(kind: str):
    def trial(case, caps, rng) -> Optional[Trial]:
        """One more key hidden in one row of the mask as the kernel gets it (in its broadcast
        shape, so a (B,1,1,S) change reaches every head and query of that batch element). Rows
        whose visible keys are the same in both masks must not change at all."""
        if case.mask != kind:
            return None
        base = case.replace(scale=None).materialize()
        m = base.attn_mask
        vis_m = m if m.dtype == torch.bool else m != float("-inf")
        rows = vis_m.sum(-1) >= 2
        if not bool(rows.any()):
            return None
        cand = (vis_m & rows.unsqueeze(-1)).nonzero()
        pos = tuple(int(x) for x in cand[rng.randrange(cand.shape[0])])
        m2 = m.clone()
        m2[pos] = False if m.dtype == torch.bool else float("-inf")
        vis2 = base.visible & (m2 if m2.dtype == torch.bool else m2 != float("-inf")).expand(base.visible.shape)
        changed = base.replace(attn_mask=m2, visible=vis2)
        keep = (vis2 == base.visible).all(-1)
        return Trial(f"{kind} mask ({case.mask_shape}) with key {pos[-1]} hidden at mask index {pos[:-1]}",
                     base, changed, keep)
    return trial


def _causal_trial(case, caps, rng) -> Optional[Trial]:
    """is_causal=False vs True on the same inputs, and, where bool masks are declared, the same
    pair with an all-True attn_mask given too: a kernel may reject that combination (torch SDPA's
    math path does), but one that takes it must still apply is_causal. Rows that see every key
    either way (the last query when L == S) do not change."""
    base = case.replace(policy="full()", mask="none", alignment=caps.causal, scale=None).materialize()
    B, H, L, S = base.visible.shape
    vis = causal_bool(L, S, caps.causal, device=base.q.device).expand(B, H, L, S)
    if caps.fully_masked_rows != "zero" and not bool(vis.any(-1).all()):
        return None  # bottom-right with L > S leaves early queries no key: their output is not fixed
    ccase = base.case.replace(policy="causal()" if caps.causal == "top_left" else f"causal({S - L})", mask="is_causal")
    changed = base.replace(is_causal=True, visible=vis, case=ccase)
    keep = vis.all(-1)
    if "bool" in caps.mask_kinds and rng.random() < 0.5:
        ones = torch.ones(L, S, dtype=torch.bool, device=base.q.device)
        base = base.replace(attn_mask=ones, case=base.case.replace(policy="full()", mask="bool", mask_shape="LS"))
        changed = changed.replace(attn_mask=ones)
        ref = attention_reference(base.q, base.k, base.v, attn_mask=vis, scale=base.scale, enable_gqa=base.enable_gqa)
        return Trial("is_causal=True together with an all-True bool attn_mask", base, changed, keep,
                     ref_changed=ref, may_reject=True)
    return Trial("is_causal=True instead of False", base, changed, keep)


def _gqa_trial(case, caps, rng) -> Optional[Trial]:
    """New keys and values in one kv head: the query heads of its group (h // (H // Hkv)) must
    change, every other head must not."""
    if case.Hkv == case.H:
        return None
    base = case.replace(scale=None).materialize()
    j = rng.randrange(case.Hkv)
    g = torch.Generator().manual_seed(case.seed + 17)
    k, v = base.k.clone(), base.v.clone()
    k[:, j] = (torch.randn(k[:, j].shape, generator=g) * base.k.double().std().clamp(min=1.0).item()).to(k.dtype)
    v[:, j] = torch.randn(v[:, j].shape, generator=g).to(v.dtype)
    changed = base.replace(k=k, v=v)
    heads = torch.arange(case.H) // (case.H // case.Hkv)
    keep = (heads != j).view(1, -1, 1).expand(case.B, case.H, case.L).to(base.q.device)
    return Trial(f"new keys and values in kv head {j} of {case.Hkv} (H={case.H})", base, changed, keep)


def _needs_mask(kind):
    return lambda caps: None if kind in caps.mask_kinds else f"{kind} masks not supported"


add_option(AppliedOption("scale", "an explicit scale, under every declared mask kind", lambda caps: None, _scale_trial))
add_option(AppliedOption("bool_mask", "a boolean attn_mask", _needs_mask("bool"), _mask_trial("bool")))
add_option(AppliedOption("float_mask", "an additive float attn_mask", _needs_mask("float"), _mask_trial("float")))
add_option(AppliedOption("causal", "is_causal, alone and with an all-True attn_mask",
                       lambda caps: None if caps.causal is not None else "is_causal not supported", _causal_trial))
add_option(AppliedOption("gqa", "enable_gqa's head map", lambda caps: None if caps.gqa else "GQA not supported",
                       _gqa_trial))
