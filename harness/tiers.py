"""Property tiers: ``gate`` properties fail the run, ``strict`` ones only with --strict, ``info``
ones are reported and never fail. One rule, used by the plugin, the runner and every report."""

TIERS = ("gate", "strict", "info")


def enforced(tier: str, strict: bool) -> bool:
    """Whether a failure in this tier fails the run."""
    return tier == "gate" or (tier == "strict" and bool(strict))
