"""Every explicit @example of every property fits the default contract in each CPU dtype.

An example that ``Case.fit`` rejects (a causal policy with no mask kind to express it, say) is
silently skipped by ``target.fit``'s ``assume``: the property loses its fixed case, and a kernel
wrong everywhere is then found only by generation plus half a minute of shrinking."""

import importlib.util
from pathlib import Path

import pytest

from harness.cases import Case
from harness.contract import Capabilities

SUITES = sorted((Path(__file__).resolve().parents[1] / "suites").glob("test_*.py"))


def _examples(path):
    spec = importlib.util.spec_from_file_location(f"_examples_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, fn in vars(mod).items():
        for ex in getattr(fn, "hypothesis_explicit_examples", None) or []:
            case = ex.kwargs.get("case")
            if isinstance(case, Case):
                yield name, case


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.stem)
def test_explicit_examples_fit_the_default_contract(path):
    bad = [f"{name}: {case!r} [{dtype}]" for name, case in _examples(path)
           for dtype in ("float32", "bfloat16", "float16") if case.fit(Capabilities(), dtype, "cpu") is None]
    assert bad == [], "explicit examples rejected by Case.fit:\n" + "\n".join(bad)


def test_a_rejected_example_is_seen():
    # A causal policy needs a mask kind: without one the case cannot be expressed.
    assert Case(B=1, H=1, Hkv=1, L=3, S=3, E=8, Ev=8, policy="causal()").fit(Capabilities(), "float32", "cpu") is None
