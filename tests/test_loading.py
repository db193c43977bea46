"""Loading specs, and built-in names registered by other packages through entry points."""

import importlib.metadata

import pytest

from harness import loading
from harness.contract import LoadError


def _fake_entry_points(*eps):
    def entry_points(group=None, **kw):
        return [e for e in eps if e.group == group]

    return entry_points


def test_a_package_registers_a_backend_by_entry_point(monkeypatch):
    ep = importlib.metadata.EntryPoint(name="vendor-attn", value="harness.reference:attention_reference",
                                       group=loading.ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", _fake_entry_points(ep))
    impl = loading.load("vendor-attn")
    assert impl.name == "vendor-attn" and impl.spec == "vendor-attn"
    from harness.reference import attention_reference

    assert impl.fn is attention_reference


def test_a_broken_entry_point_is_a_load_error_naming_it(monkeypatch):
    ep = importlib.metadata.EntryPoint(name="broken", value="no_such_vendor_pkg.mod:attn",
                                       group=loading.ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", _fake_entry_points(ep))
    with pytest.raises(LoadError, match="no_such_vendor_pkg.mod:attn"):
        loading.load("broken")
    with pytest.raises(LoadError, match="known: .*broken"):
        loading.load("still-unknown")


def test_an_entry_point_cannot_shadow_a_builtin(monkeypatch):
    ep = importlib.metadata.EntryPoint(name="sdpa", value="harness.reference:attention_reference",
                                       group=loading.ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", _fake_entry_points(ep))
    from harness.reference import attention_reference

    assert loading.load("sdpa").fn is not attention_reference
