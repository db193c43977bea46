"""pytest plugin (entry point ``pytest11: attention_harness``): runs the shipped property suites
against any implementation.

    pytest --pyargs harness.suites --attn-impl mypkg.attn:fn --attn-dtype float32,bfloat16

This module is loaded by every pytest run on a machine where attention-harness is installed, so
it is a guest there: it registers only ``--attn-*`` options (one group, the way pytest-benchmark
keeps to ``--benchmark-*``), imports neither torch nor the harness, and changes nothing unless the
run collects the harness suites. Then :mod:`harness.suite_plugin` is registered and does the work.
It is a top-level module, not ``harness.pytest_plugin``: a project with a ``harness`` package of
its own would otherwise fail to start pytest at all, because the entry point could not be imported.
Its defaults live in :mod:`attention_harness_defaults`, which imports nothing and which
:mod:`harness.defaults` re-exports: the package never imports this module.
``attn-harness check`` drives the very same tests through it: nothing is implemented twice.
"""

from __future__ import annotations

import os

# The option defaults: one home, shared with the package (harness.defaults reads the same module).
from attention_harness_defaults import (BACKWARD_FACTOR, CALL_TIMEOUT_S, DEFAULT_PROFILE, DEFAULT_SEED,
                                        FORWARD_FACTOR, PROFILES)


def pytest_addoption(parser):
    g = parser.getgroup("attention-harness", "attention-harness property suites (all options --attn-*)")
    g.addoption("--attn-impl", action="append", default=[], metavar="SPEC",
                help="implementation to test: built-in name, path/file.py:fn or package.module:fn "
                     "(repeatable; default: sdpa)")
    g.addoption("--attn-dtype", default=None, metavar="LIST",
                help="comma-separated dtypes (default: every dtype the implementation declares among "
                     "float32, bfloat16, float16)")
    g.addoption("--attn-device", default=None, choices=("cpu", "cuda"), help="device (default: cpu)")
    g.addoption("--attn-profile", default=DEFAULT_PROFILE, choices=tuple(PROFILES), help="example counts and sizes")
    g.addoption("--attn-strict", action="store_true", default=False,
                help="strict-tier properties fail the run (otherwise they are reported only)")
    g.addoption("--attn-seed", type=int, default=None,
                help=f"hypothesis seed for the harness suites (default {DEFAULT_SEED}; printed with every failure)")
    g.addoption("--attn-case", default=None, metavar="REPR",
                help="replay exactly this Case(...) instead of generating cases (from a report's repro)")
    g.addoption("--attn-example", default=None, metavar="JSON",
                help="with --attn-case: the other drawn arguments of the counterexample, e.g. '{\"cut\": 0.5}'")
    g.addoption("--attn-results", default=None, metavar="FILE", help="write per-property results as JSON")
    g.addoption("--attn-progress", action="store_true", default=False,
                help="print one machine-readable progress line per property")
    g.addoption("--attn-forward-factor", type=float, default=FORWARD_FACTOR,
                help="forward error may be this many times the same-dtype PyTorch error (default 2)")
    g.addoption("--attn-backward-factor", type=float, default=BACKWARD_FACTOR,
                help="gradient error may be this many times the same-dtype PyTorch error (default 3)")
    g.addoption("--attn-call-timeout", type=float, default=CALL_TIMEOUT_S, help="seconds one kernel call may take")
    g.addoption("--attn-reruns", type=int, default=None, metavar="N",
                help="repeated calls of the run-to-run determinism certificate (invariance suite)")
    g.addoption("--attn-forbid-ops", default=None, metavar="PATTERNS",
                help="comma-separated aten op patterns (fnmatch) the kernel must not call, e.g. "
                     "'aten::_scaled_dot_product*'; a match fails the integrity suite")
    g.addoption("--attn-stop-early", default=None, metavar="JSON",
                help="run nothing: record the base case as an error with these messages and every other "
                     "property as not run ({\"reason\": ..., \"base\": {dtype: message}}; attn-harness check "
                     "passes it for a kernel that cannot run the base case)")


def _suites_dir():
    """Where the shipped suites live, found without importing torch (the package's __init__
    is lazy). None when harness.suites cannot be found (a checkout that was never installed)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("harness.suites")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return os.path.abspath(list(spec.submodule_search_locations)[0])
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "suites")
    return here if os.path.isdir(here) else None


def runs_harness_suites(config) -> bool:
    """True when this pytest run targets the shipped suites (by --attn-impl, module or path)."""
    if config.getoption("attn_impl"):
        return True
    args = [str(a) for a in config.args]
    if any("harness.suites" in a for a in args):
        return True
    here = _suites_dir()
    if here is None:
        return False
    for a in args:
        p = os.path.abspath(a.split("::")[0])
        if p == here or p.startswith(here + os.sep):
            return True
    return False


def pytest_configure(config):
    # Hooks here run for every pytest session on the machine: never raise, never import torch
    # unless the harness suites are part of this run.
    if runs_harness_suites(config):
        from harness import suite_plugin  # noqa: PLC0415 - only for runs of our suites

        suite_plugin.ensure_registered(config)
