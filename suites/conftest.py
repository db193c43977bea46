"""Nothing here on purpose: options and fixtures come from the installed plugin
(harness.pytest_plugin, entry point pytest11), so the suites behave the same from a checkout,
from an installed wheel, and inside another project's CI."""
