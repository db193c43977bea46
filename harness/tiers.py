"""Property tiers: ``gate`` properties fail the run, ``strict`` ones only with --strict, ``info``
ones are reported and never fail. One rule, used by the plugin, the runner and every report."""

# "certify": the invariance certificates (harness.certify), in the gate only with --certify.
TIERS = ("gate", "strict", "info", "certify")


def enforced(tier: str, strict: bool) -> bool:
    """Whether a failure in this tier fails the run."""
    return tier == "gate" or (tier == "strict" and bool(strict))
