"""attention-harness: correctness and leakage tests for attention implementations.

The contract is torch SDPA's; see :mod:`harness.contract`. The float64 reference is
:func:`harness.reference.attention_reference`; mask policies live in :mod:`harness.masks`.
"""

from harness.contract import Adapter, Capabilities, Implementation, LoadError, capabilities, load

__version__ = "0.1.0"
__all__ = ["Adapter", "Capabilities", "Implementation", "LoadError", "capabilities", "load", "__version__"]
