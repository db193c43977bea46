"""L. Diagnostics: attention maps and entropy dashboards on fixed canonical inputs (causal,
ragged padding, a RAG prompt, GQA), stored in the report for people to look at (info), and a gate
on the row-entropy distribution.

Catches: a missing or wrong softmax scale (sharper or flatter rows: shifted mean normalised
entropy), temperature or logit-scaling bugs in general, scores computed in a way that collapses or
flattens the weights. The maps also show leaks (forbidden cells with weight, outlined in red in
report.html), which the causal, padding and isolation suites gate on.

Attention weights are a trace of information flow, not an explanation (see
``harness.diagnostics.CAVEAT``).
"""

import pytest

from harness import diagnostics as D
from harness import probes


_CACHE: dict = {}


def _diagnose(target):
    """Both properties read the same kernel calls (cached per implementation, dtype and device).
    With ``--case`` only that case is run."""
    replay = getattr(target, "_replay", None)
    key = (id(target.impl), target.dtype, target.device, replay)
    if key not in _CACHE:
        inputs = None
        if replay:
            from harness.cases import Case

            inputs = [D.Canonical("replay", "Replayed case", eval(replay, {"Case": Case}))]  # noqa: S307
        _CACHE.clear()
        _CACHE[key] = D.diagnose(target.impl, target.dtype, target.device, inputs=inputs)
    return _CACHE[key]


def _compact_entropy(e):
    keep = ("rows", "mean", "histogram", "collapse", "diffuse", "per_head")
    side = lambda s: {k: s.get(k) for k in keep if k in s} if s else s  # noqa: E731
    if e is None:
        return None
    return {"implementation": side(e["implementation"]), "reference": side(e["reference"]),
            "mean_delta": e["mean_delta"], "flags": e["flags"]}


@pytest.mark.tier("info")
def test_attention_maps_and_entropy(target):
    """Attention maps (mask, reference, implementation, max |difference|; batch 0, head 0, head 1 for
    the GQA input) and normalised row entropy, per head too, against the reference on the canonical
    inputs (reported, never fails)."""
    d = _diagnose(target)
    target.cases += len(d["maps"]) - len(d["unsupported"])
    maps = [{k: m.get(k) for k in ("key", "title", "case", "which", "head", "mask", "reference", "implementation",
                                   "leaked", "leaked_total", "max_abs_diff", "max_abs_diff_total", "unsupported")}
            for m in d["maps"]]
    ent = d["entropy"]
    target.record(diagnostics={
        "dtype": d["dtype"], "which": d["which"], "caveat": D.CAVEAT, "maps": maps,
        "entropy": {"overall": _compact_entropy(ent["overall"]),
                    "per_case": {k: _compact_entropy(v) for k, v in ent["per_case"].items()}},
        "unsupported": d["unsupported"]})
    if len(d["unsupported"]) == len(d["maps"]):
        pytest.skip("unsupported: none of the canonical inputs is inside the declared capabilities")


def test_entropy_matches_reference(target):
    """The mean normalised row entropy on the canonical inputs is within 0.02 of the reference's
    (a missing scale factor sharpens every row)."""
    d = _diagnose(target)
    target.cases += len(d["maps"]) - len(d["unsupported"])
    overall = d["entropy"]["overall"]
    if overall is None:
        pytest.skip("unsupported: none of the canonical inputs is inside the declared capabilities")
    si, sr = overall["implementation"], overall["reference"]
    delta = overall["mean_delta"]
    target.record(entropy_mean=si["mean"], reference_entropy_mean=sr["mean"], entropy_delta=delta)
    if si["mean"] is None or delta is None or abs(delta) > D.GATE_MEAN_DELTA:
        per_case = d["entropy"]["per_case"]
        worst = max(per_case, key=lambda k: abs(per_case[k]["mean_delta"])
                    if per_case[k]["mean_delta"] is not None else float("inf"))
        target.last_case = d["cases"][worst]  # the report's counterexample and --case repro
        w = per_case[worst]
        raise probes.PropertyViolation(
            f"mean normalised row entropy {si['mean']} vs reference {sr['mean']} over {sr['rows']} rows "
            f"(|delta| {abs(delta) if delta is not None else 'n/a'} > {D.GATE_MEAN_DELTA}); collapsed rows "
            f"{si['collapse']} vs {sr['collapse']}, near-uniform {si['diffuse']} vs {sr['diffuse']}; worst input "
            f"{worst}: {w['implementation']['mean']} vs {w['reference']['mean']}")
