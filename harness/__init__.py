"""attention-harness: correctness and leakage tests for attention implementations.

The contract is torch SDPA's; see :mod:`harness.contract`. The float64 reference is
:func:`harness.reference.attention_reference`; mask policies live in :mod:`harness.masks`.
In-process checks: :func:`harness.check` and :func:`harness.assert_passes` (:mod:`harness.api`).

Names are resolved lazily (PEP 562): the pytest plugin imports this package in every pytest run
on the machine, and that must not cost a torch import.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Adapter": "harness.contract", "Capabilities": "harness.contract", "Implementation": "harness.contract",
    "LoadError": "harness.contract", "capabilities": "harness.contract", "load": "harness.loading",
    "check": "harness.api", "assert_passes": "harness.api", "Report": "harness.api",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))
