"""The pictures of ``report.html``: PNGs drawn with matplotlib (through :mod:`harness.diagnostics`,
which never imports pyplot) and embedded as base64 data URIs, so the page stays one file."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from typing import Callable, Optional

_IMG_CACHE: dict = {}


def png_data_uri(draw: Callable, key_obj=None) -> Optional[str]:
    """Run ``draw(file_like)`` (a matplotlib writer) and return a data:image/png URI. Cached by
    the JSON of ``key_obj``: the CLI re-renders the page after every implementation."""
    key = None
    if key_obj is not None:
        key = hashlib.sha1(json.dumps(key_obj, sort_keys=True, default=str).encode()).hexdigest()
        if key in _IMG_CACHE:
            return _IMG_CACHE[key]
    buf = io.BytesIO()
    draw(buf)
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    if key is not None:
        if len(_IMG_CACHE) > 256:
            _IMG_CACHE.clear()
        _IMG_CACHE[key] = uri
    return uri


def num(x):
    """``float(x)`` where it converts, else ``x`` unchanged."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return x


def grid(rows):
    """A list of lists of numbers as a float array (NaN where a value is not a number), or None."""
    import numpy as np

    if not (isinstance(rows, list) and rows and all(isinstance(r, list) for r in rows)):
        return None
    nh = max(len(r) for r in rows)
    a = np.full((len(rows), max(nh, 1)), np.nan)
    for i, row in enumerate(rows):
        for j, x in enumerate(row):
            v = num(x)
            a[i, j] = v if isinstance(v, float) else np.nan
    return a


def plot_maps(maps: list, f):
    from harness import diagnostics as D

    return D.plot_maps(maps, f)


def plot_entropy(ent: dict, f):
    from harness import diagnostics as D

    return D.plot_entropy(ent, f)


def plot_ablation(ab: dict, f):
    """Layers x heads heatmaps: impact of ablating each head, and its attention entropy if given."""
    from harness.diagnostics import _Figures, _save

    panels = [("impact of ablating the head", grid(ab["impact"]), "magma")]
    ent = grid(ab.get("entropy"))
    if ent is not None:
        panels.append(("attention entropy", ent, "viridis"))
    a0 = panels[0][1]
    fig, axes = _Figures.subplots(1, len(panels), squeeze=False,
                                  figsize=(min(14, len(panels) * (1.8 + 0.45 * a0.shape[1])), min(10, 1.6 + 0.4 * a0.shape[0])))
    for ax, (title, a, cmap) in zip(axes[0], panels):
        im = ax.imshow(a, cmap=cmap, interpolation="nearest", aspect="auto")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(title, fontsize=12)
        fig.colorbar(im, ax=ax)
    _save(fig, f)
