"""``Target``: what every property receives, the implementation under test in one dtype.

How to write a property (see CONTRIBUTING.md for the planted bug and catalog entry it needs)::

    @given(case=hs.cases(policies=("causal", "key_padding")))
    @example(case=Case(B=1, H=2, Hkv=2, L=5, S=7, E=16, Ev=16, policy="causal()", mask="is_causal"))
    def test_something(target, case):
        # docstring: what is checked, in its first paragraph (the reports show it)
        target.require(mask_kind="bool")     # skip as unsupported when the declaration excludes it
        case = target.fit(case)              # into the declared capabilities, or rejected
        inp = case.materialize()
        probes.judge(target, probes.call(target.impl, inp), inp)  # records the worst ratio

A property raises :class:`harness.probes.PropertyViolation` with the numbers when it fails;
``target.record(...)`` keeps the worst comparison of the examples for the report.
"""

from __future__ import annotations

from typing import Optional

import pytest

from harness.defaults import BACKWARD_FACTOR, FORWARD_FACTOR


class Target:
    """The implementation under test in one dtype on one device, as seen by a property."""

    def __init__(self, impl, dtype: str, device: str, replay: Optional[str], item,
                 forward_factor: float = FORWARD_FACTOR, backward_factor: float = BACKWARD_FACTOR):
        self.impl = impl
        self.forward_factor = forward_factor
        self.backward_factor = backward_factor
        self.dtype = dtype
        self.device = device
        self.caps = impl.capabilities
        self._replay = replay
        self.cases = 0
        self.last_case = None
        self.last_extras: dict = {}
        self.worst: dict = {}
        self.forbid_ops: list = []  # aten op patterns the integrity suite must not see (--forbid-ops)
        self.replay_example: Optional[dict] = None  # with --case: the counterexample's other arguments

    @property
    def name(self) -> str:
        return self.impl.name

    def require(self, **needs):
        """Skip as ``unsupported`` when the declared capabilities exclude what the property needs."""
        why = self.caps.why_not(**needs)
        if why:
            pytest.skip(f"unsupported: {why}")

    def require_mask(self):
        """Skip as unsupported unless the implementation takes a dense bool or float mask."""
        if not ({"bool", "float"} & set(self.caps.mask_kinds)):
            pytest.skip("unsupported: needs dense boolean or float masks")

    def fit(self, case):
        """The drawn case moved inside this implementation's capabilities (or the case given
        with ``--case``); cases that cannot be expressed here are rejected."""
        from hypothesis import assume
        from harness.cases import Case

        if self._replay:
            case = eval(self._replay, {"Case": Case})  # noqa: S307 - the user's own repro string
        fitted = case.fit(self.caps, self.dtype, self.device)
        assume(fitted is not None)
        self.cases += 1
        self.last_case = fitted
        return fitted

    def record(self, comparison=None, **numbers):
        """Keep the worst comparison seen across the examples, for the report."""
        if comparison is not None:
            d = comparison.to_dict()
            if not comparison.ok:
                from harness.ulps import note

                note({"ulps": d.get("ulps"), "rule": comparison.rule()})  # for the failure record
            r = d["ratio"] if isinstance(d["ratio"], float) else float("inf")
            cur = self.worst.get("ratio", -1.0)
            cur = cur if isinstance(cur, float) else float("inf")
            if r >= cur:
                self.worst = {**d, **numbers, "case": self.last_case.short() if self.last_case else None}
        elif numbers:
            self.worst = {**self.worst, **numbers}
