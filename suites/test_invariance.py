"""K. Invariance certificates (opt-in: ``--certify invariance``): bitwise, the kernel against itself.

Not tolerance properties: a kernel can be right to the last allowed ulp and still give a prompt
different tokens depending on its batch-mates. Each property measures one certificate (see
:mod:`harness.invariance`) and fails only where the kernel declares it (``batch_invariant``,
``split_invariant``, ``deterministic``); otherwise the measured result is reported. The results go
into the report's own certificates section, and into the gate only with ``--certify invariance``.

Catches: a reduction order chosen from the batch size (split-KV heuristics), a chunked-prefill or
decode path that rounds differently, atomics in a backward pass (run-to-run nondeterminism).
"""

import pytest

from harness import invariance, probes
from harness.ulps import note

pytestmark = pytest.mark.tier("certify")


def _certify(target, kind: str, **kw):
    cert, declared = invariance.certify(target.impl, kind, target.dtype, target.device,
                                        getattr(target, "seed", 0) or 0, **kw)
    field = invariance.CERTIFICATES[kind][1]
    target.cases += 1
    target.certificate = {**cert.to_dict(), "declared": declared, "declared_as": field}
    if cert.held is None:
        pytest.skip(f"unsupported: {cert.compared}")
    if cert.held:
        return
    fd = cert.first_difference or {}
    note({"ulps": fd.get("ulps"), "rule": {"kind": "bitwise", "compared": cert.compared, "factor": 0.0,
                                          "baseline": "the kernel's own output for the same row"}})
    if declared:
        raise probes.PropertyViolation(f"declares {field}=True, but the certificate is {cert.describe()}")
    pytest.skip(f"unsupported: not declared ({field}=False); measured: {cert.describe()}")


def test_batch_invariance(target):
    """A batch element's output is bitwise the same alone (B=1) and at a random position inside
    batches of 2 to 128 random batch-mates (no mask, causal, key padding), where the kernel
    declares ``batch_invariant=True``."""
    _certify(target, "batch")


def test_split_invariance(target):
    """Each query of a causal prefill gets bitwise the same output computed whole, in chunks of
    1, 4 and 7 queries, and decoded one token at a time, where the kernel declares
    ``split_invariant=True``."""
    _certify(target, "split")


def test_rerun_determinism(target):
    """N repeated forward and backward calls on one input give bitwise-equal output, dq, dk and dv
    (``--reruns N``), where the kernel declares ``deterministic=True`` (the default)."""
    _certify(target, "rerun", reruns=getattr(target, "reruns", None) or invariance.RERUNS)
