"""Diagnostics people look at: attention maps and entropy dashboards on a few fixed inputs.

Everything here is read black-box off the implementation (weights via one-hot values,
:func:`harness.probes.effective_weights`) and compared with the float64 reference weights
(:func:`harness.reference.attention_weights_reference`) on :data:`CANONICAL` inputs:

- :func:`attention_maps` ``(impl, dtype, device)``: per canonical input, the mask, the reference
  weights and the implementation's weights of one (batch, head) slice (LxS lists; batch 0, head 0,
  except the GQA input, which shows head 1: there the correct map ``h // (H // Hkv)`` and a tiled
  one ``h % Hkv`` read different kv heads), the leaked cells and the max |difference| from the
  reference.
- :func:`entropy_stats` ``(weights, visible)``: per-row entropy normalised by log(#visible keys),
  per head and summarised (mean, 10-bin histogram over [0, 1], collapse and over-diffusion
  fractions); :func:`compare_entropy` puts an implementation next to the reference and flags a
  shifted mean (a missing scale factor shows up as shifted entropy).
- :func:`diagnose` both at once (one set of kernel calls), compact enough for ``report.json``.
- :func:`plot_maps` / :func:`plot_entropy`: PNG pictures (matplotlib, Agg backend).

Read the pictures with :data:`CAVEAT` in mind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

CAVEAT = ("Attention weights are a trace of information flow, not an explanation: residual connections, "
          "MLPs, layer norms and later layers can change or override what a single attention map appears "
          "to show; use ablations and causal interventions too.")

WHICH = "batch 0, head 0"  # the slice each map shows, unless its Canonical names another head
ENTROPY_BINS = 10
COLLAPSE_BELOW = 0.05
DIFFUSE_ABOVE = 0.95
FLAG_MEAN_DELTA = 0.05  # dashboard flag
GATE_MEAN_DELTA = 0.02  # the diagnostics suite's gate


@dataclass(frozen=True)
class Canonical:
    key: str
    title: str
    case: object  # harness.cases.Case (float32 cpu; moved to the dtype/device asked for)
    head: int = 0  # the query head the map shows (batch 0)


def _canonical():
    from harness.cases import Case

    return (
        Canonical("causal", "Causal decoder (L=S=12): each token reads itself and earlier tokens",
                  Case(B=1, H=2, Hkv=2, L=12, S=12, E=16, Ev=16, policy="causal()", mask="is_causal",
                       magnitude=2.0, seed=11)),
        Canonical("padding", "Ragged batch (B=2, lengths 5 and 12): padded keys must get zero weight",
                  Case(B=2, H=2, Hkv=2, L=12, S=12, E=16, Ev=16, policy="key_padding([5, 12])", mask="bool",
                       mask_shape="B11S", magnitude=2.0, seed=12)),
        Canonical("rag", "RAG prompt rag(2, [3, 3], 3): retrieved chunks never read each other",
                  Case(B=1, H=2, Hkv=2, L=11, S=11, E=16, Ev=16, policy="rag(2, [3, 3], 3)", mask="bool",
                       mask_shape="LS", magnitude=2.0, seed=13)),
        Canonical("gqa", "Grouped-query attention (H=4, Hkv=2, L=S=8, causal): query head 1 must read kv head 0 "
                         "(h // 2), not kv head 1 (a tiled h % 2 map)",
                  Case(B=1, H=4, Hkv=2, L=8, S=8, E=16, Ev=16, policy="causal()", mask="bool",
                       mask_shape="LS", magnitude=2.0, seed=14), head=1),
    )


CANONICAL = _canonical()


def _as_impl(impl):
    """An Implementation from an Implementation, a spec string or a plain SDPA-like callable."""
    from harness.contract import Implementation
    from harness.loading import _from_object, load

    if isinstance(impl, Implementation):
        return impl
    if isinstance(impl, str):
        return load(impl)
    return _from_object(impl, getattr(impl, "__name__", repr(impl)), getattr(impl, "__name__", "callable"))


def _skip_exception():
    try:
        import pytest

        return pytest.skip.Exception
    except Exception:  # pragma: no cover - pytest is a dependency
        return ()


def _weights(impl, canon: Canonical, dtype: str, device: str) -> dict:
    """{"case", "inp", "impl" (B,H,L,S float64) or None, "ref", "unsupported": reason or None}."""
    from harness import probes
    from harness.reference import attention_weights_reference

    case = canon.case.fit(impl.capabilities, dtype, device)
    if case is None and canon.case.mask == "is_causal":  # no is_causal: the same policy as a mask
        case = canon.case.replace(mask="bool", mask_shape="LS").fit(impl.capabilities, dtype, device)
    if case is None:
        return {"case": canon.case.replace(dtype=dtype, device=device), "inp": None, "impl": None, "ref": None,
                "unsupported": "outside the declared capabilities"}
    inp = case.materialize()
    ref = attention_weights_reference(inp.q, inp.k, causal_alignment=case.alignment, **inp.kwargs())
    try:
        w = probes.effective_weights(impl, inp)
    except _skip_exception() as e:  # probes.call turns NotImplementedError into pytest.skip
        msg = str(getattr(e, "msg", e)).replace("unsupported: ", "", 1)
        return {"case": case, "inp": inp, "impl": None, "ref": ref, "unsupported": msg or "unsupported"}
    return {"case": case, "inp": inp, "impl": w.cpu(), "ref": ref.cpu(), "unsupported": None}


def _grid(t: torch.Tensor, nd: int = 4) -> list:
    out = []
    for row in t.double().tolist():
        r = []
        for x in row:
            r.append(round(x, nd) if math.isfinite(x) else None)  # JSON has no NaN/Inf: None
        out.append(r)
    return out


def _max_abs(t: torch.Tensor):
    """max |t| rounded to 6 decimals; the string "inf" when any entry is not finite (JSON has no Infinity)."""
    v = float(t.abs().nan_to_num(float("inf")).max()) if t.numel() else 0.0
    return round(v, 6) if math.isfinite(v) else "inf"


def _map_entry(canon: Canonical, w: dict) -> dict:
    case = w["case"]
    h = min(canon.head, case.H - 1)
    entry = {"key": canon.key, "title": canon.title, "case": repr(case), "which": f"batch 0, head {h}",
             "head": h, "unsupported": w["unsupported"]}
    if w["inp"] is None:
        entry.update(mask=None, reference=None, implementation=None, leaked=None, leaked_total=None,
                     max_abs_diff=None, max_abs_diff_total=None)
        return entry
    vis = w["inp"].visible.cpu().expand(w["ref"].shape)
    entry["mask"] = vis[0, h].int().tolist()
    entry["reference"] = _grid(w["ref"][0, h])
    if w["impl"] is None:
        entry.update(implementation=None, leaked=None, leaked_total=None, max_abs_diff=None, max_abs_diff_total=None)
        return entry
    wi = w["impl"]
    entry["implementation"] = _grid(wi[0, h])
    leak = (~vis) & (wi != 0)  # NaN != 0 counts as leaked too
    entry["leaked"] = int(leak[0, h].sum())
    entry["leaked_total"] = int(leak.sum())
    diff = wi - w["ref"]
    entry["max_abs_diff"] = _max_abs(diff[0, h])  # the slice shown ("inf": non-finite weights)
    entry["max_abs_diff_total"] = _max_abs(diff)  # every batch and head
    return entry


def attention_maps(impl, dtype: str = "float32", device: str = "cpu") -> list:
    """One dict per canonical input: ``title``, ``case`` (repr), ``which`` and ``head`` (the slice
    shown: batch 0, head 0; head 1 for the GQA input), ``mask`` (LxS 0/1), ``reference`` and
    ``implementation`` (LxS weights, 4 decimals; None where unsupported), ``leaked`` (forbidden
    cells with non-zero weight in the slice shown), ``leaked_total`` (over all batches and heads),
    ``max_abs_diff`` (max |implementation - reference| in the slice shown; the string "inf" for
    non-finite weights), ``max_abs_diff_total`` (over all batches and heads) and ``unsupported`` (reason or None)."""
    impl = _as_impl(impl)
    return [_map_entry(c, _weights(impl, c, dtype, device)) for c in CANONICAL]


# --- entropy ---------------------------------------------------------------------------------

def row_entropy(weights: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(entropy (B, H, L) normalised by log(#visible keys), counted (B, H, L) bool).

    Rows with fewer than two visible keys are defined as 0 and not counted; rows whose weights are
    not finite are not counted either. Weights are taken as given (negative ones clipped to 0)
    and renormalised per row, so the number describes the shape of the distribution."""
    w = weights.detach().double().cpu().clamp(min=0)
    vis = visible.detach().cpu().expand_as(w)
    n = vis.sum(-1)
    finite = torch.isfinite(w).all(-1)
    w = torch.where(torch.isfinite(w), w, torch.zeros_like(w))
    tot = w.sum(-1, keepdim=True)
    p = w / torch.where(tot > 0, tot, torch.ones_like(tot))
    h = -(torch.where(p > 0, p * torch.log(p.clamp(min=1e-300)), torch.zeros_like(p))).sum(-1)
    counted = (n >= 2) & finite & (tot.squeeze(-1) > 0)
    norm = torch.log(n.clamp(min=2).double())
    ent = torch.where(counted, h / norm, torch.zeros_like(h))
    return ent, counted


def _summary(values: torch.Tensor) -> dict:
    v = values.double().flatten()
    n = int(v.numel())
    if n == 0:
        return {"rows": 0, "mean": None, "histogram": [0] * ENTROPY_BINS, "collapse": None, "diffuse": None}
    hist = torch.histc(v.clamp(0.0, 1.0), bins=ENTROPY_BINS, min=0.0, max=1.0)
    return {"rows": n, "mean": round(float(v.mean()), 6), "min": round(float(v.min()), 6),
            "max": round(float(v.max()), 6),
            "histogram": [int(x) for x in hist.tolist()],
            "collapse": round(float((v < COLLAPSE_BELOW).double().mean()), 6),
            "diffuse": round(float((v > DIFFUSE_ABOVE).double().mean()), 6)}


def entropy_stats(weights: torch.Tensor, visible: torch.Tensor) -> dict:
    """Summary of the normalised row entropy of ``weights`` (B, H, L, S) given ``visible``
    (broadcastable bool): ``rows`` counted, ``mean``, ``min``, ``max``, ``histogram`` (10 bins over
    [0, 1]), ``collapse`` (fraction < 0.05), ``diffuse`` (fraction > 0.95) and ``per_head`` (mean
    per head, None for a head without counted rows)."""
    ent, counted = row_entropy(weights, visible)
    s = _summary(ent[counted])
    per_head = []
    for h in range(ent.shape[1]):
        e = ent[:, h][counted[:, h]]
        per_head.append(round(float(e.mean()), 6) if e.numel() else None)
    s["per_head"] = per_head
    return s


def compare_entropy(impl_weights: torch.Tensor, ref_weights: torch.Tensor, visible: torch.Tensor,
                    threshold: float = FLAG_MEAN_DELTA) -> dict:
    """``{"implementation": stats, "reference": stats, "mean_delta", "flags": [...]}``; a flag when
    the means differ by more than ``threshold`` or collapse/over-diffusion fractions drift."""
    si, sr = entropy_stats(impl_weights, visible), entropy_stats(ref_weights, visible)
    return _with_flags({"implementation": si, "reference": sr}, threshold)


def _with_flags(d: dict, threshold: float) -> dict:
    si, sr = d["implementation"], d["reference"]
    flags = []
    delta = None
    if si.get("mean") is not None and sr.get("mean") is not None:
        delta = round(si["mean"] - sr["mean"], 6)
        if abs(delta) > threshold:
            direction = "lower (sharper: larger logits, e.g. a missing scale)" if delta < 0 else \
                "higher (flatter: smaller logits, e.g. a doubled scale)"
            flags.append(f"mean normalised entropy {si['mean']:.3f} vs reference {sr['mean']:.3f}: "
                         f"{abs(delta):.3f} {direction}")
        for k, what in (("collapse", "rows collapsed onto one key (< 0.05)"),
                        ("diffuse", "rows spread almost uniformly (> 0.95)")):
            if si.get(k) is not None and sr.get(k) is not None and si[k] - sr[k] > 0.1:
                flags.append(f"{what}: {si[k]:.0%} vs reference {sr[k]:.0%}")
    elif si.get("rows") == 0 and sr.get("rows"):
        flags.append("no finite rows in the implementation's weights")
    return {**d, "mean_delta": delta, "threshold": threshold, "flags": flags}


def diagnose(impl, dtype: str = "float32", device: str = "cpu", threshold: float = FLAG_MEAN_DELTA,
             inputs=None) -> dict:
    """Maps and entropy for the canonical inputs (or ``inputs``, a list of :class:`Canonical`)
    with one set of kernel calls::

        {"dtype", "device", "which", "caveat", "maps": [attention_maps entries],
         "entropy": {"per_case": {key: compare_entropy(...)}, "overall": compare_entropy over all rows},
         "unsupported": [keys], "cases": {key: the Case actually run (not JSON)}}
    """
    impl = _as_impl(impl)
    maps, per_case, unsupported, cases = [], {}, [], {}
    ei, er = [], []
    for c in (CANONICAL if inputs is None else inputs):
        w = _weights(impl, c, dtype, device)
        maps.append(_map_entry(c, w))
        cases[c.key] = w["case"]
        if w["impl"] is None:
            unsupported.append(c.key)
            continue
        vis = w["inp"].visible.cpu()
        per_case[c.key] = compare_entropy(w["impl"], w["ref"], vis, threshold)
        for src, acc in ((w["impl"], ei), (w["ref"], er)):
            ent, counted = row_entropy(src, vis)
            acc.append(ent[counted])
    overall = None
    if ei:
        overall = _with_flags({"implementation": _summary(torch.cat(ei)), "reference": _summary(torch.cat(er))},
                              threshold)
    which = "; ".join(dict.fromkeys(f"{m['key']}: {m['which']}" for m in maps if m["which"] != WHICH))
    which = WHICH + (f" ({which})" if which else "")
    return {"dtype": dtype, "device": device, "which": which, "caveat": CAVEAT, "maps": maps,
            "entropy": {"per_case": per_case, "overall": overall}, "unsupported": unsupported, "cases": cases}


# --- pictures --------------------------------------------------------------------------------

# Legible in report.html without zooming: figures are drawn about 13 in wide and shown at page
# width, so text below ~11 pt ends up a few pixels tall.
_RC = {"font.size": 11, "xtick.labelsize": 10, "ytick.labelsize": 10, "legend.fontsize": 10,
       # A fixed title height: matplotlib otherwise measures every axis's tick labels at draw time
       # to lift titles clear of them (a third of a maps figure's drawing time).
       "axes.titley": 1.0}


class _Figures:
    """``subplots``/``close`` on bare :class:`matplotlib.figure.Figure` objects: no pyplot, so no
    global backend switch in a notebook or GUI session that renders a report."""

    @staticmethod
    def subplots(nrows=1, ncols=1, figsize=None, squeeze=True, **kw):
        import matplotlib
        from matplotlib.figure import Figure

        with matplotlib.rc_context(_RC):
            fig = Figure(figsize=figsize)
            return fig, fig.subplots(nrows, ncols, squeeze=squeeze, **kw)

    @staticmethod
    def close(fig):
        pass  # no pyplot registry holds the figure; clearing it would only rebuild every axis


def _arr(grid):
    import numpy as np

    return np.array([[float("nan") if x is None else float(x) for x in row] for row in grid], dtype=float)


def _save(fig, path, title=None, adjust=None):
    if title:
        fig.suptitle(title, fontsize=13)
    if adjust:  # a fixed layout: tight_layout draws the whole figure once more just to measure it
        fig.subplots_adjust(**adjust)
    else:
        fig.tight_layout()
    fig.savefig(path, format="png", dpi=80)
    _Figures.close(fig)
    return path


def plot_maps(maps: list, path, title: Optional[str] = None):
    """One row per map: mask, reference, implementation, difference (implementation - reference).
    Forbidden cells that got weight are outlined in red on the implementation and difference panels.
    ``maps`` as returned by :func:`attention_maps` (or stored in a report). Returns ``path``."""
    import numpy as np
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator

    plt = _Figures
    maps = [m for m in maps if m.get("mask") is not None] or maps
    n = max(1, len(maps))
    fig, axes = plt.subplots(n, 4, figsize=(13, 3.2 * n + (0.5 if title else 0)), squeeze=False)
    for r, m in enumerate(maps):
        ax_row = axes[r]
        if m.get("mask") is None:
            for ax in ax_row:
                ax.axis("off")
            ax_row[0].text(0, 0.5, f"{m.get('title', '')}: unsupported ({m.get('unsupported')})", fontsize=11)
            continue
        mask = _arr(m["mask"])
        ref = _arr(m["reference"]) if m.get("reference") is not None else np.full(mask.shape, np.nan)
        has_impl = m.get("implementation") is not None
        imp = _arr(m["implementation"]) if has_impl else np.full(mask.shape, np.nan)
        diff = imp - ref
        vmax = np.nanmax(np.abs(diff)) if has_impl and np.isfinite(diff).any() else 1.0
        identical = has_impl and float(vmax) <= 1e-12  # a colour bar would only show rounding noise
        vmax = max(float(vmax), 1e-12)
        panels = [("visible keys (white)", mask, dict(cmap="gray", vmin=0, vmax=1)),
                  ("reference (float64)", ref, dict(cmap="viridis", vmin=0, vmax=1)),
                  ("implementation" if has_impl else "implementation: unsupported", imp,
                   dict(cmap="viridis", vmin=0, vmax=1)),
                  ("difference: identical within 1e-12" if identical else
                   f"difference (max |diff| {_diff_text(m, vmax)})" if has_impl else "difference", diff,
                   dict(cmap="RdBu_r", vmin=-vmax, vmax=vmax))]
        for c, (name, data, kw) in enumerate(panels):
            ax = ax_row[c]
            im = ax.imshow(data, interpolation="nearest", **kw)
            ax.set_title(name, fontsize=12)
            ax.set_xlabel("key", fontsize=11)
            if c == 0:
                t = m.get("title", "") + (f" [{m['which']}]" if m.get("which") else "")
                ax.set_ylabel(("\n".join(_wrap(t, 38)) + "\nquery"), fontsize=10)
            ax.tick_params(labelsize=10)
            # token positions, never 2.5; few of them: every tick is an artist matplotlib builds
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
            # one colour bar for the two weight panels (both 0..1), one for the difference
            if c == 2 or (c == 3 and not identical):
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=10)
            if c >= 2 and has_impl:
                bad = (mask == 0) & ((imp != 0) | np.isnan(imp))
                for (i, j) in zip(*np.nonzero(bad)):
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
        if has_impl and m.get("leaked"):
            ax_row[2].set_title(f"implementation: {m['leaked']} leaked cells", fontsize=12, color="red")
    n_rows = max(1, len(maps))
    inches = 3.2 * n_rows + (0.5 if title else 0)
    return _save(fig, path, title, adjust=dict(left=0.14, right=0.96, wspace=0.35, hspace=0.45,
                                               bottom=0.6 / inches, top=1 - (0.9 if title else 0.4) / inches))


def _diff_text(m: dict, vmax: float) -> str:
    d = m.get("max_abs_diff")
    try:
        return f"{float(d):.2g}"
    except (TypeError, ValueError):
        return f"{vmax:.2g}"


def _wrap(text: str, width: int) -> list:
    import textwrap

    return textwrap.wrap(str(text), width) or [""]


def plot_entropy(stats: dict, path, title: Optional[str] = None):
    """Entropy dashboard: histograms of normalised row entropy (implementation vs reference) and
    per-case means. ``stats`` is :func:`diagnose`'s ``entropy`` dict ({"per_case", "overall"}) or
    a single :func:`compare_entropy` result. Returns ``path``."""
    import numpy as np

    plt = _Figures
    if "implementation" in stats:
        per_case, overall = {}, stats
    else:
        per_case, overall = stats.get("per_case") or {}, stats.get("overall")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    ax = axes[0]
    edges = np.linspace(0, 1, ENTROPY_BINS + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    width = (edges[1] - edges[0]) * 0.4
    if overall:
        for off, key, color in ((-width / 2, "reference", "tab:gray"), (width / 2, "implementation", "tab:blue")):
            s = overall.get(key) or {}
            h = np.array(s.get("histogram") or [0] * ENTROPY_BINS, dtype=float)
            h = h / h.sum() if h.sum() else h
            mean = s.get("mean")
            ax.bar(centers + off, h, width=width, color=color,
                   label=f"{key} (mean {mean:.3f})" if mean is not None else key)
        ax.axvspan(0, COLLAPSE_BELOW, color="red", alpha=0.1)
        ax.axvspan(DIFFUSE_ABOVE, 1, color="orange", alpha=0.1)
        ax.legend(fontsize=10)
        flags = overall.get("flags") or []
        ax.set_title(("FLAG: " + flags[0][:70]) if flags else "normalised row entropy (all canonical inputs)",
                     fontsize=11, color="red" if flags else "black")
    else:
        ax.text(0.5, 0.5, "no entropy data", ha="center")
    ax.set_xlabel("entropy / log(#visible keys)", fontsize=11)
    ax.set_ylabel("fraction of rows", fontsize=11)
    ax = axes[1]
    keys = list(per_case)
    if keys:
        x = np.arange(len(keys))
        ri = [per_case[k]["reference"].get("mean") or 0 for k in keys]
        ii = [per_case[k]["implementation"].get("mean") or 0 for k in keys]
        ax.bar(x - 0.2, ri, 0.4, color="tab:gray", label="reference")
        ax.bar(x + 0.2, ii, 0.4, color=["tab:red" if per_case[k].get("flags") else "tab:blue" for k in keys],
               label="implementation")
        ax.set_xticks(x)
        ax.set_xticklabels(keys, fontsize=11)
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=10)
        ax.set_title("mean normalised entropy per input (red: flagged)", fontsize=11)
    else:
        ax.axis("off")
    return _save(fig, path, title)
