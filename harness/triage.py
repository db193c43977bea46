"""Root-cause triage: one implementation's failures grouped into causes a person reads in ten
seconds.

One bug reaches many properties in every dtype (a kernel that ignores ``attn_mask`` fails about a
hundred property x dtype results). A *cause* is a set of those failures that one explanation
accounts for. The explanations come only from what the results already hold: which properties
failed and which passed (a weights-zero property passing while a perturbation one fails says the
mask is applied after the softmax), the fingerprint probes' verdicts, and what every failing
counterexample has in common (only bool masks, only head dims over 128, only non-contiguous
layouts, only S >= 17, only half precision). Rules run from the most specific evidence to the
least; each claims the failures it explains, and whatever no rule explains stays a cause of its
own, one per property, named by that property. Nothing is dropped: every failure is in exactly
one cause.

:func:`triage` runs where results are assembled (``attn-harness check``, :func:`harness.check`);
reports store its output (``implementations[].causes``) and render it, computing nothing.
"""

from __future__ import annotations

import re
from typing import Callable, Optional

from harness.flash.triage import FLASH_RULES  # flash_attn-convention variants: the most specific evidence
from harness.tiers import enforced

LEAK_SUITES = ("causal", "padding", "boundaries", "isolation", "strict", "paged")
WEIGHTS_ZERO = ("causal::test_future_weights_zero", "padding::test_padding_weights_zero",
                "boundaries::test_policy_weights_zero")
HALF = ("bfloat16", "float16")


def key(r: dict) -> str:
    """``suite::property [dtype]``: how a cause names the results it explains."""
    return f"{r.get('suite')}::{r.get('property')} [{r.get('dtype')}]"


def _prop(r: dict) -> str:
    return f"{r.get('suite')}::{r.get('property')}"


def _ce(r: dict) -> dict:
    c = r.get("counterexample")
    return c if isinstance(c, dict) else {}


# Properties that pass an explicit attn_mask whatever their counterexample's own mask field says:
# chunked prefill builds each chunk's causal-with-offset mask itself (bool where the kernel takes
# bool masks).
EXPLICIT_MASK = {"decode::test_chunked_prefill_matches": "bool"}


def _mask(r: dict) -> Optional[str]:
    """How the failing call got its mask: none, bool, float or is_causal (None: no case)."""
    return EXPLICIT_MASK.get(_prop(r)) or _ce(r).get("mask")


def _first_line(r: dict) -> str:
    m = (r.get("message") or "").strip()
    return m.splitlines()[0] if m else ""


def _size(r: dict) -> int:
    c = _ce(r)
    try:
        return int(c.get("B", 1)) * int(c.get("H", 1)) * int(c.get("L", 1)) * int(c.get("S", 1)) * int(c.get("E", 1))
    except (TypeError, ValueError):
        return 1 << 62


def _backward(r: dict) -> bool:
    return r.get("suite") == "backward" or "gradient" in str(r.get("property"))


def telling(r: dict) -> tuple:
    """Sort key of a cause's results, most telling first: a leak or contract property before a
    bound (it names the forbidden key or the convention), forward before backward, then the
    smallest case."""
    rank = 0 if r.get("suite") in LEAK_SUITES else 1 if r.get("suite") in ("fingerprint", "integrity") else 2
    return (_backward(r), rank, r.get("counterexample") is None, _size(r), r.get("dtype") != "float32")


class Evidence:
    """What the rules read: the unexplained failures, and which properties passed."""

    def __init__(self, results: list, strict: bool):
        self.bad = [r for r in results if r.get("status") in ("fail", "error")
                    and enforced(r.get("tier", "gate"), strict)]
        self.passed = {_prop(r) for r in results if r.get("status") == "pass"}
        self.ran_dtypes = {r.get("dtype") for r in results if r.get("status") == "pass"}

    def failing(self, left: list, *props: str) -> list:
        return [r for r in left if _prop(r) in props]


Rule = Callable[[list, Evidence], list]  # -> [(kind, title, claimed results)]


def _claim(left, pred):
    return [r for r in left if pred(r)]


def _masks(rs):
    return {_mask(r) for r in rs if _ce(r)}


def _all_cases(left, pred, at_least=1):
    """Every failure has a counterexample and it satisfies ``pred`` (and there are enough)."""
    return len(left) >= at_least and all(_ce(r) and pred(_ce(r)) for r in left)


def _detected(r) -> str:
    m = re.search(r"detected '?([^',]+)'?", _first_line(r))
    return m.group(1) if m else "?"


# --- rules, most specific evidence first ------------------------------------------------------

def errors(left, ev):
    out = {}
    for r in left:
        if r.get("status") == "error":
            sym = re.sub(r"[-+]?\d[\d.e+-]*", "#", _first_line(r))[:100] or "(no message)"
            out.setdefault(sym, []).append(r)
    return [("error", f"errors instead of answering: {sym}", rs) for sym, rs in out.items()]


def fingerprint(left, ev):
    out = []
    fp = {r.get("property"): r for r in left if r.get("suite") == "fingerprint"}
    if "test_mask_polarity" in fp:
        got = _detected(fp["test_mask_polarity"])
        if got == "ignored":
            out.append(("mask_ignored", "ignores attn_mask (bool and float masks): masked keys get weight",
                        _claim(left, lambda r: _mask(r) in ("bool", "float"))))
        else:
            out.append(("bool_mask", f"reads a bool attn_mask as {got} (the contract: True = takes part)",
                        _claim(left, lambda r: _mask(r) == "bool")))
    if "test_causal_alignment" in fp:
        got = _detected(fp["test_causal_alignment"])
        out.append(("causal_alignment", f"aligns is_causal {got} when L != S (the contract: top-left)",
                    _claim(left, lambda r: r is fp["test_causal_alignment"] or r.get("suite") == "decode" or (
                        (_ce(r).get("mask") == "is_causal" or "causal()" in str(_ce(r).get("policy")))
                        and _ce(r).get("L") != _ce(r).get("S")))))
    if "test_default_scale" in fp:
        got = _detected(fp["test_default_scale"])
        out.append(("scale", f"default scale is {got}, not 1/sqrt(E)",
                    _claim(left, lambda r: r.get("suite") not in LEAK_SUITES + ("integrity",)
                           and (r.get("suite") != "fingerprint" or "scale" in str(r.get("property"))))))
    elif "test_explicit_scale_honoured" in fp:
        out.append(("scale", "ignores the explicit scale argument (always its own default)",
                    _claim(left, lambda r: r is fp["test_explicit_scale_honoured"] or _ce(r).get("scale") is not None)))
    if "test_gqa_head_mapping" in fp:
        out.append(("gqa", f"GQA maps query heads to the wrong kv heads (detected '{_detected(fp['test_gqa_head_mapping'])}'; "
                           "the contract: head h reads kv head h // (H // Hkv))",
                    _claim(left, lambda r: _ce(r) and _ce(r).get("H") != _ce(r).get("Hkv"))))
    if "test_fully_masked_rows" in fp:
        out.append(("fully_masked_rows", f"a row with no visible key gives {_detected(fp['test_fully_masked_rows'])} "
                                         "(the contract: zero)",
                    _claim(left, lambda r: r is fp["test_fully_masked_rows"] or "NaN entr" in _first_line(r))))
    if "test_deterministic" in fp:
        out.append(("nondeterministic", "the same input twice gives different bits (nondeterministic forward)",
                    [fp["test_deterministic"]]))
    return out


# The invariance tier's certificates (joined to the failures when --certify makes them count) and
# the options a kernel accepts but drops in some combination (suites/test_applied.py).
CERTIFIED = {
    "invariance::test_batch_invariance": ("batch_invariance", "not batch-invariant: a prompt's bits change with its "
                                                              "batch-mates or the batch size"),
    "invariance::test_split_invariance": ("split_invariance", "not split-invariant: a chunked prefill or decode gives "
                                                              "other bits than the whole prompt"),
    "invariance::test_rerun_determinism": ("nondeterministic", "the same call repeated gives different bits "
                                                               "(run-to-run nondeterminism: atomics or a per-call order)"),
}


def tiers(left, ev):
    out = [(kind, title, ev.failing(left, prop)) for prop, (kind, title) in CERTIFIED.items()]
    bool_off = ev.failing(left, "applied::test_bool_mask_applied")
    float_off = ev.failing(left, "applied::test_float_mask_applied")
    if bool_off and float_off:  # changing either kind of mask changes nothing
        out.append(("mask_ignored", "ignores attn_mask (bool and float masks): changing the mask changes nothing",
                    _claim(left, lambda r: _mask(r) in ("bool", "float"))))
    elif ev.failing(left, "applied::test_scale_applied") and not (bool_off or float_off):
        out.append(("scale", "drops the explicit scale in some calls (with a mask, say): changing it changes nothing",
                    _claim(left, lambda r: r.get("property") == "test_scale_applied" or _ce(r).get("scale") is not None)))
    if ev.failing(left, "applied::test_causal_applied"):
        out.append(("causal", "drops is_causal when an attn_mask is given too: future keys get weight",
                    ev.failing(left, "applied::test_causal_applied")))
    return [o for o in out if o[2]]


INTEGRITY = {
    "test_outputs_stay_outputs": ("output_integrity", "returns an output it does not own (a reused buffer, an input's "
                                                      "storage or a lazy tensor)"),
    "test_inputs_stay_inputs": ("inputs_modified", "changes its inputs in place"),
    "test_fresh_data_same_storage": ("cached_answer", "answers from a cache: new values in the same tensors get the "
                                                      "old answer"),
    "test_no_free_answer_from_allocator": ("uninitialised_output", "returns memory it never wrote (an empty output "
                                                                   "left unfilled)"),
    "test_op_trace": ("forbidden_ops", "calls an operator --forbid-ops forbids"),
}


def integrity(left, ev):
    return [(kind, title, rs) for prop, (kind, title) in INTEGRITY.items()
            if (rs := ev.failing(left, f"integrity::{prop}"))]


def regions(left, ev):
    out = []
    if ev.failing(left, "regions::test_batch_heads_limit"):
        out.append(("grid_limit", "wrong once B x H passes 65,535 (a launch grid limit: programs wrap or are dropped)",
                    _claim(left, lambda r: _ce(r) and _ce(r).get("B", 1) * _ce(r).get("H", 1) >= 65535)))
    if ev.failing(left, "regions::test_index_width_boundaries"):
        out.append(("index_width", "wrong only past 2^15 positions (S or L >= 32,768): 16-bit positions, offsets or "
                                   "tile counters",
                    _claim(left, lambda r: _ce(r) and max(_ce(r).get("S", 0), _ce(r).get("L", 0)) >= 2 ** 15)))
    return out


def scale_edges(left, ev):
    """Every failing case has an explicit scale far from 1/sqrt(E) (0, negative, tiny or large), or
    a float mask with large full-precision values: the two regions only those draws reach."""
    edge = lambda c: c.get("scale") is not None and (c["scale"] <= 0 or c["scale"] < 1e-3 or c["scale"] > 5)  # noqa: E731
    if _all_cases(left, edge) and _no_mask_passes(ev):
        vals = ", ".join(f"{v:g}" for v in sorted({_ce(r)["scale"] for r in left}))
        return [("scale", f"wrong only at explicit scales far from 1/sqrt(E) (failing: {vals}): `scale or default` "
                          "treating 0 as unset, abs() or a clamp?", list(left))]
    if _all_cases(left, lambda c: c.get("mask") == "float" and c.get("mask_bias")) and _no_mask_passes(ev):
        return [("float_mask", "wrong only for additive masks with large full-precision values (biases up to "
                               f"{max(_ce(r)['mask_bias'] for r in left):g}): the float mask is stored or added in a "
                               "lower precision than the query?", list(left))]
    return []


def _common_layout(left) -> str:
    parts = [set(str(_ce(r).get("layout")).split(",")) for r in left]
    common = sorted(set.intersection(*parts)) if parts else []
    return ",".join(common) or "non-contiguous"


def _no_mask_passes(ev) -> bool:
    return "correctness::test_base_case" in ev.passed or not ev.bad


def common_factor(left, ev):
    """What every failing counterexample shares, where the simplest case passes."""
    if not left or any(_prop(r) == "correctness::test_base_case" for r in left):
        return []
    if _all_cases(left, lambda c: max(c.get("E", 0), c.get("Ev", 0)) > 128):
        low = min(max(_ce(r)["E"], _ce(r)["Ev"]) for r in left)
        return [("head_dim", f"wrong only for head dims over 128 (every failing case has E or Ev >= {low}): "
                             "features past 128 dropped?", list(left))]
    if _all_cases(left, lambda c: c.get("layout", "contiguous") != "contiguous"):
        return [("layout", f"wrong only for non-contiguous inputs (every failing case has layout {_common_layout(left)}): "
                           "strides or storage offsets ignored", list(left))]
    if all(r.get("dtype") in HALF for r in left) and "float32" in ev.ran_dtypes:
        return [("half_precision", "wrong only in bfloat16/float16 (float32 passes)", list(left))]
    if all(r.get("suite") == "decode" for r in left):
        return [("decode", "prefill and decode disagree (the L == 1 path or the chunk offset drops or misplaces a "
                           "key)", list(left))]
    return []


def mask_after_softmax(left, ev):
    perturbed = [r for r in left if "invariance" in str(r.get("property")) or r.get("suite") == "normalization"]
    # a weights property may still fail on the visible side (huge additive biases leave a row's
    # visible keys no weight once the masked ones take it), never by weight on a masked key
    weights = ev.failing(left, *WEIGHTS_ZERO)
    leaked = [r for r in weights if "get weight" in _first_line(r)]
    weights_ok = [p for p in WEIGHTS_ZERO if p in ev.passed] + [r for r in weights if r not in leaked]
    if weights_ok and not leaked and perturbed and _no_mask_passes(ev):
        return [("mask_after_softmax", "masked keys still count in the softmax: their weights are zero but the rows "
                                       "are not renormalised (mask applied after the softmax)",
                 _claim(left, lambda r: _mask(r) not in (None, "none")))]
    return []


def mask_kind(left, ev):
    """Only explicit masks fail: which kind, and which shapes."""
    masked = [r for r in left if _mask(r) in ("bool", "float")]
    if len(masked) < 2 or len(masked) < len(left) or not _no_mask_passes(ev):
        return []
    kinds = _masks(masked)
    if all("H" in str(_ce(r).get("mask_shape")) and _ce(r).get("H", 1) > 1 for r in masked):
        shapes = ", ".join(sorted({str(_ce(r)["mask_shape"]) for r in masked}))
        return [("mask_broadcast", f"per-head masks misread: every failing case has a mask with a head axis ({shapes}) "
                                   "and H > 1 (reduced to one head?)", masked)]
    if all(_ce(r).get("L") == _ce(r).get("S") and "L" in str(_ce(r).get("mask_shape")) for r in masked) and len(masked) >= 3:
        return [("mask_layout", "square masks misread: every failing case has L == S and a mask with a query axis "
                                "(read transposed?)", masked)]
    if all("key_visible(" in str(_ce(r).get("policy")) for r in masked) and any(r.get("suite") == "padding" for r in masked):
        return [("padding_placement", "padding handled only on the right: every failing case pads on the left, in the "
                                      "middle or at scattered keys", masked)]
    if kinds == {"bool"}:
        return [("bool_mask", "bool attn_mask misread: every failing case passes a bool mask (float masks and "
                              "is_causal pass)", masked)]
    if kinds == {"float"}:
        return [("float_mask", "float (additive) attn_mask ignored or misread: every failing case passes a float "
                               "mask (bool masks and is_causal pass)", masked)]
    return [("mask_ignored", "ignores attn_mask (bool and float masks): every failing case passes one, unmasked and "
                             "is_causal cases pass", masked)]


def length(left, ev):
    ss = [_ce(r).get("S", 0) for r in left]
    if left and _all_cases(left, lambda c: c.get("S", 0) > 16) and "correctness::test_base_case" in ev.passed:
        return [("length", f"wrong only for longer key rows (every failing case has S >= {min(ss)}; short ones pass): "
                           "tiling, online-softmax rescaling or truncation", list(left))]
    return []


def leaks(left, ev):
    out = []
    leak = [r for r in left if r.get("suite") in ("causal", "padding", "boundaries")]
    suites = {r.get("suite") for r in leak}
    kinds = _masks(leak)
    if len(suites) >= 2 and "is_causal" in kinds and kinds & {"bool", "float"}:
        out.append(("mask_leak", f"forbidden keys leak under every kind of mask (is_causal, bool and float; "
                                 f"{', '.join(sorted(suites))}): the mask is applied too coarsely?",
                    _claim(left, lambda r: _mask(r) not in (None, "none"))))
        return out
    causal = [r for r in left if r.get("suite") == "causal"]
    if causal:
        hides = any("no weight to any visible key" in _first_line(r) for r in causal)
        title = ("the causal mask hides keys a query may see (its own position?)" if hides else
                 "the causal mask lets queries see future keys")
        out.append(("causal", title, _claim(left, lambda r: r.get("suite") == "causal" or (
            _ce(r).get("mask") == "is_causal" and r.get("suite") != "decode"))))
    named = [("padding", "padding::", "padding keys reach real tokens"),
             ("boundary_leak", "boundaries::", "segments read across their boundaries (documents, turns, windows, "
                                               "prefixes)"),
             ("batch_leak", "isolation::test_batch_isolation", "batch elements read each other's keys or values"),
             ("head_leak", "isolation::test_head_isolation", "heads read each other's keys or values"),
             ("nan_leak", "strict::test_nan_in_masked_slots", "NaN or inf in masked slots reaches rows that may not "
                                                              "read them (0 x NaN)")]
    for kind, prefix, title in named:
        rs = [r for r in left if _prop(r).startswith(prefix)]
        if rs:
            out.append((kind, title, rs))
    return out


def backward(left, ev):
    if not left or not all(_backward(r) for r in left):
        return []
    if ev.failing(left, "backward::test_masked_gradients_zero"):
        return [("backward", "backward ignores the mask: gradients reach masked keys (the forward passes)", list(left))]
    grads = sorted({m.group(1) for r in left if (m := re.match(r"(d[qkv]):", _first_line(r)))})
    return [("backward", f"backward only: {', '.join(grads) or 'gradients'} wrong (the forward passes)", list(left))]


def stability(left, ev):
    if not left or not all(r.get("suite") == "stability" for r in left):
        return []
    if any("NaN entr" in _first_line(r) or "inf entr" in _first_line(r) for r in left):
        return [("stability", "overflows at large logits: NaN or inf where the reference is finite (row max not "
                              "subtracted?)", list(left))]
    return [("stability", "loses precision at large or spread-out logits (scores rounded to half precision?)", list(left))]


def normalization(left, ev):
    if ev.failing(left, "normalization::test_ones_values_give_ones"):
        return [("normalization", "weights do not sum to one over the visible keys (softmax over the wrong axis, "
                                  "keys that should not exist, dropout left on)",
                 _claim(left, lambda r: r.get("suite") in ("correctness", "normalization", "stability", "diagnostics")))]
    return []


def cached(left, ev):
    if ev.failing(left, "correctness::test_fresh_inputs") and "correctness::test_base_case" in ev.passed:
        return [("cached_answer", "answers a new input with an earlier answer (cached by shape?)",
                 _claim(left, lambda r: r.get("suite") == "correctness"))]
    return []


def core(left, ev):
    if ev.failing(left, "correctness::test_base_case"):
        return [("core", "wrong on the simplest case (no mask, B = H = 1, L = S = 4): the scores, softmax or weighted "
                         "sum itself", _claim(left, lambda r: not _backward(r) and r.get("suite") not in LEAK_SUITES))]
    return []


RULES: list = [errors, *FLASH_RULES, fingerprint, tiers, integrity, regions, scale_edges, common_factor, mask_after_softmax, mask_kind,
               length, leaks, backward, stability, normalization, cached, core]


def triage(results: list, strict: bool = False) -> list:
    """The causes of one implementation's enforced failures, most telling first: a list of dicts
    (``kind``, ``title``, ``properties``, ``dtypes``, ``results``, ``example``,
    ``counterexample``, ``message``, ``repro``; see :class:`harness.report.model.Cause`). Every
    enforced failure is in exactly one cause's ``results``."""
    ev = Evidence(results, strict)
    left = list(ev.bad)
    causes = []
    rules = RULES
    if any(_prop(r) == "correctness::test_base_case" for r in left):
        # Wrong on the simplest case: that is the first thing to fix, whatever else fails.
        head = RULES.index(regions) + 1
        rules = RULES[:head] + [normalization, core] + [r for r in RULES[head:] if r not in (normalization, core)]
    for rule in rules:
        try:
            found = rule(left, ev)
        except Exception:  # noqa: BLE001 - an odd record costs that rule, never the report
            found = []
        for kind, title, claimed in found:
            claimed = [r for r in claimed if any(r is x for x in left)]
            if claimed:
                causes.append(_cause(kind, title, claimed))
                left = [r for r in left if not any(r is c for c in claimed)]
        if not left:
            break
    by: dict = {}
    for r in left:  # no explanation fits: the property is its own cause, named honestly
        by.setdefault(_prop(r), []).append(r)
    for prop, rs in by.items():
        causes.append(_cause("property", f"{prop} fails: {_first_line(min(rs, key=telling))[:160]}", rs))
    return causes


def _cause(kind: str, title: str, rs: list) -> dict:
    best = min(rs, key=telling)
    return {"kind": kind, "title": title, "properties": len({_prop(r) for r in rs}),
            "dtypes": sorted({str(r.get("dtype")) for r in rs}), "results": [key(r) for r in rs],
            "example": key(best), "counterexample": best.get("counterexample_text"),
            "message": _first_line(best)[:300], "repro": best.get("repro") or ""}


def cause_line(c: dict, limit: Optional[int] = None) -> str:
    """One line: what the cause is, how much it explains, the most telling counterexample."""
    n, d = c.get("properties", 0), c.get("dtypes") or []
    line = (f"{c.get('title')} [{n} {'property' if n == 1 else 'properties'} x {len(d)} "
            f"{'dtype' if len(d) == 1 else 'dtypes'}: {', '.join(d)}] e.g. {c.get('example')}: {c.get('message')}")
    if c.get("counterexample") and str(c["counterexample"]) not in str(c.get("message")):
        line += f" (case {c['counterexample']})"
    return line if limit is None or len(line) <= limit else line[:limit - 3] + "..."
