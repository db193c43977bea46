"""Loading: a spec string (a built-in name, ``path/to/file.py:function`` or
``package.module:function``) becomes an :class:`~harness.contract.Implementation`.

It sits above :mod:`harness.contract` (pure types) and :mod:`harness.builtins` (the built-in
backends), so neither imports the other. Other packages add built-in names through the
``attention_harness.backends`` entry-point group: each entry point names an object loadable
like a spec (a function, an adapter class or an ``Implementation``), under the entry point's name.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from typing import Any

from harness import builtins
from harness.contract import APIS, Adapter, Capabilities, Implementation, LoadError, split_api

ENTRY_POINT_GROUP = "attention_harness.backends"


def _plugin_backends() -> dict:
    """Built-in names registered by installed packages (name -> entry point)."""
    from importlib.metadata import entry_points

    try:
        eps = entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # a broken distribution's metadata must not break loading
        return {}
    return {ep.name: ep for ep in eps if ep.name not in builtins.BUILTINS}


def _from_object(obj: Any, spec: str, name: str) -> Implementation:
    if inspect.isclass(obj) and issubclass(obj, Adapter):
        try:
            obj = obj()
        except Exception as e:  # an adapter that cannot start is a load error, not a test failure
            raise LoadError(f"{spec}: could not construct adapter {obj.__name__}: {e}") from None
    if isinstance(obj, Implementation):
        return obj
    if not callable(obj):
        raise LoadError(f"{spec}: {name} is not callable (got {type(obj).__name__})")
    caps = getattr(obj, "capabilities", None)
    if not isinstance(caps, Capabilities):
        caps = getattr(obj, "__harness_capabilities__", None)
    declared = isinstance(caps, Capabilities)
    if not declared:
        caps = Capabilities()
    nm = getattr(obj, "name", None) if isinstance(obj, Adapter) else None
    return Implementation(name=nm or name, spec=spec, fn=obj, capabilities=caps,
                          description=(inspect.getdoc(obj) or "").split("\n")[0], declared=declared)


def _load_file(path: str, attr: str, spec: str) -> Implementation:
    if not os.path.isfile(path):
        raise LoadError(f"{spec}: file not found: {path}")
    modname = "harness_user_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    mod_spec = importlib.util.spec_from_file_location(modname, os.path.abspath(path))
    if mod_spec is None or mod_spec.loader is None:
        raise LoadError(f"{spec}: cannot import {path} (not a Python file?)")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[modname] = module
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:
        raise LoadError(f"{spec}: importing {path} failed: {type(e).__name__}: {e}") from None
    if not hasattr(module, attr):
        raise LoadError(f"{spec}: {path} has no attribute {attr!r}")
    return _from_object(getattr(module, attr), spec, attr)


def _load_module(modname: str, attr: str, spec: str) -> Implementation:
    try:
        module = importlib.import_module(modname)
    except Exception as e:
        raise LoadError(f"{spec}: cannot import module {modname!r}: {type(e).__name__}: {e}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise LoadError(f"{spec}: module {modname!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return _from_object(obj, spec, attr)


def load(spec: str, api: str = None) -> Implementation:
    """Turn a spec string into an :class:`Implementation`.

    ``name`` (a built-in, see :func:`harness.builtins.available`), ``path/to/file.py:function``,
    or ``package.module:function``, optionally followed by ``@flash_attn`` (or given ``api``): a
    kernel written to flash-attn's public signatures (:mod:`harness.flash.convention`). Raises
    :class:`LoadError` with a one-line reason.
    """
    spec = spec.strip()
    base, suffix_api = split_api(spec)
    api = api or suffix_api
    if api not in APIS:
        raise LoadError(f"{spec}: unknown call convention {api!r} (known: {', '.join(APIS)})")
    if api != "sdpa":
        from harness.flash.convention import implementation

        impl = load(base, "sdpa")
        impl.spec = base if split_api(base)[1] == api else f"{base}@{api}"
        return implementation(impl)
    spec = base
    if not spec:
        raise LoadError("empty implementation spec")
    if ":" not in spec:
        if spec in builtins.BUILTINS:
            return builtins.get(spec)
        plugins = _plugin_backends()
        if spec in plugins:
            try:
                obj = plugins[spec].load()
            except Exception as e:
                raise LoadError(f"{spec}: the backend registered by entry point {plugins[spec].value!r} "
                                f"cannot be imported: {type(e).__name__}: {e}") from None
            impl = _from_object(obj, spec, spec)
            impl.name = spec
            return impl
        known = [*builtins.BUILTINS, *plugins]
        raise LoadError(f"{spec}: unknown built-in (known: {', '.join(known)}); "
                        "use path/to/file.py:function or package.module:function")
    target, attr = spec.rsplit(":", 1)
    if not attr:
        raise LoadError(f"{spec}: missing function name after ':'")
    if target.endswith(".py") or os.sep in target or "/" in target:
        return _load_file(target, attr, spec)
    return _load_module(target, attr, spec)


def load_all(specs) -> list:
    """Load several specs (LoadError on the first that fails); two specs that load functions with
    the same name are told apart by their spec strings."""
    impls = [load(spec) for spec in specs]
    names = [i.name for i in impls]
    for i, n in enumerate(names):
        if names.count(n) > 1:
            impls[i].name = impls[i].spec
    return impls
