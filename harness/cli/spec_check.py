"""Usage errors that need neither torch nor a kernel: spec strings read with ``ast`` and option values,
answered before ``check`` starts any process or imports torch (under 0.5 s; importing torch alone
takes seconds), with a suggestion where one can be made.

A spec that passes here can still fail to load (an import error, a hang, an object that is not
callable): that is :mod:`harness.preload`'s, in a child process. Only what is certain from the
source is an error here; a module whose names are made at run time (``from x import *``,
``globals()``, a module ``__getattr__``) is left to the loader.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.machinery
import importlib.util
import os
from typing import Optional

from harness.cli.usage import UsageError

ENTRY_POINT_GROUP = "attention_harness.backends"  # = harness.loading.ENTRY_POINT_GROUP (which imports torch)
_DYNAMIC_CALLS = {"globals", "setattr", "vars", "exec", "eval", "__import__"}


@functools.lru_cache(maxsize=None)
def _builtin_names() -> tuple:
    """The keys of ``harness.builtins.BUILTINS``, read from its source (importing it imports torch)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "builtins.py")
    tree = _parse(path)
    for node in tree.body if tree is not None else []:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "BUILTINS" and isinstance(node.value, ast.Dict):
            return tuple(k.value for k in node.value.keys if isinstance(k, ast.Constant))
    return ()


def plugin_names() -> list:
    from importlib.metadata import entry_points

    try:
        return [ep.name for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in _builtin_names()]
    except Exception:  # noqa: BLE001 - a broken distribution's metadata is the loader's to report
        return []


def _parse(path: str) -> Optional[ast.Module]:
    try:
        with open(path, encoding="utf-8") as f:
            return ast.parse(f.read(), filename=path)
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return None  # the loader reports it, with the line


def _bound_names(tree: ast.Module) -> Optional[set]:
    """Names the module's top level binds, or None when some are made at run time."""
    names: set = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _DYNAMIC_CALLS:
            return None
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            return None

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, (ast.If, ast.Try, ast.For, ast.While, ast.With)):
                for sub in ("body", "orelse", "finalbody"):
                    visit(getattr(node, sub, []) or [])
                for h in getattr(node, "handlers", []) or []:
                    visit(h.body)
            for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                ast.ClassDef, ast.Lambda)) else ():
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    names.add(sub.id)
    visit(tree.body)
    if "__getattr__" in names:
        return None
    return names


def qkv_callables(tree: Optional[ast.Module]) -> tuple:
    """(top-level functions whose first parameters are (query, key, value) or (q, k, v), and
    adapter classes; other functions with three or more positional parameters)."""
    if tree is None:
        return [], []
    named, others = [], []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            pos = [a.arg for a in node.args.posonlyargs + node.args.args]
            if len(pos) >= 3 or node.args.vararg is not None:
                (named if tuple(pos[:3]) in (("query", "key", "value"), ("q", "k", "v")) else others).append(node.name)
        elif isinstance(node, ast.ClassDef):
            bases = [b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases]
            if any(b.endswith("Adapter") for b in bases):
                named.append(node.name)
    key = lambda n: n.startswith("_")  # noqa: E731 - private helpers last
    return sorted(named, key=key), sorted(others, key=key)


def _did_you_mean(target: str, attr: Optional[str], found: tuple) -> str:
    named, others = found
    if not named:
        if others:
            return (f"no function in it takes (query, key, value); functions with three or more positional "
                    f"parameters: {', '.join(others[:8])}")
        return f"it defines no function taking (query, key, value); name one as {target}:FUNCTION"
    close = difflib.get_close_matches(attr, named, n=1) if attr else []
    first = close[0] if close else named[0]
    more = [c for c in named if c != first]
    return f"did you mean {target}:{first}?" + (f" (also taking (query, key, value): {', '.join(more[:8])})"
                                                  if more else "")


def _module_source(modname: str) -> tuple:
    """(found, path of the module's source or None), without importing anything: a module
    that cannot be found is certain only for the top-level package."""
    parts = modname.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return False, None
    for part in parts[1:]:
        locations = spec.submodule_search_locations
        if locations is None:
            return True, None
        spec = importlib.machinery.PathFinder.find_spec(part, list(locations))
        if spec is None:
            return True, None  # a package may make submodules at import: the loader decides
    origin = spec.origin if spec.origin and spec.origin.endswith(".py") else None
    return True, origin


def _looks_like_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def check_spec(spec: str) -> None:
    """Raise :class:`UsageError` (one line, with a suggestion) for a spec certain not to load.
    A call-convention suffix (``SPEC@flash_attn``) is the loader's; the rest is checked here."""
    from harness.contract import split_api

    spec = split_api(spec.strip())[0]
    if not spec:
        raise UsageError("empty implementation spec")
    if ":" not in spec:
        if spec in _builtin_names() or spec in plugin_names():
            return
        if _looks_like_file(spec) and os.path.isfile(spec):
            raise UsageError(f"{spec}: a file, not a built-in; name the function: "
                             + _did_you_mean(spec, None, qkv_callables(_parse(spec))))
        if not _looks_like_file(spec) and "." in spec and _module_source(spec)[0]:
            found, src = _module_source(spec)
            raise UsageError(f"{spec}: a module, not a built-in; name the function: "
                             + _did_you_mean(spec, None, qkv_callables(_parse(src) if src else None)))
        known = [*_builtin_names(), *plugin_names()]
        close = difflib.get_close_matches(spec, known, n=1)
        raise UsageError(f"{spec}: unknown built-in" + (f"; did you mean {close[0]}?" if close else "")
                         + f" (known: {', '.join(known)}); use path/to/file.py:function or package.module:function")
    target, attr = spec.rsplit(":", 1)
    if _looks_like_file(target):
        if not os.path.isfile(target):
            folder = os.path.dirname(target) or "."
            try:
                files = [f for f in os.listdir(folder) if f.endswith(".py")]
            except OSError:
                files = []
            close = difflib.get_close_matches(os.path.basename(target), files, n=1, cutoff=0.75)
            hint = f"; did you mean {os.path.join(os.path.dirname(target), close[0])}:{attr}?" if close else ""
            raise UsageError(f"{spec}: file not found: {target}{hint}")
        source = target
    else:
        found, source = _module_source(target)
        if not found:
            raise UsageError(f"{spec}: cannot import module {target!r}: no module named {target.split('.')[0]!r} "
                             "(is it installed in this Python?)")
    if not attr:
        raise UsageError(f"{spec}: missing function name after ':'; "
                         + _did_you_mean(target, None, qkv_callables(_parse(source) if source else None)))
    tree = _parse(source) if source else None
    names = _bound_names(tree) if tree is not None else None
    if names is not None and attr.split(".")[0] not in names:
        where = target if _looks_like_file(target) else f"module {target!r}"
        raise UsageError(f"{spec}: {where} has no attribute {attr!r}; " + _did_you_mean(target, attr, qkv_callables(tree)))


def static_signature_problem(spec: str) -> Optional[str]:
    """The contract mismatch of a plain top-level ``def`` named by ``spec``, read from its source
    (so the diagnosis comes before torch is imported); None when fine or not certain from the source
    (a decorator other than ``capabilities``, a name bound twice, anything not a file or module,
    a kernel written to another call convention, whose adapter the loader builds)."""
    from harness.contract import split_api

    spec, api = split_api(spec)
    if ":" not in spec or api != "sdpa":
        return None
    target, attr = spec.rsplit(":", 1)
    source = target if _looks_like_file(target) else _module_source(target)[1]
    tree = _parse(source) if source and os.path.isfile(source) else None
    if tree is None or "." in attr:
        return None
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == attr]
    others = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == attr and isinstance(n.ctx, ast.Store)]
    if len(defs) != 1 or others:
        return None
    node = defs[0]

    def harmless(d):
        f = d.func if isinstance(d, ast.Call) else d
        return (f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")) == "capabilities"

    if not all(harmless(d) for d in node.decorator_list):
        return None
    shown = f"({ast.unparse(node.args)})"  # as written; the stub below has its defaults replaced
    a = node.args
    for arg in a.posonlyargs + a.args + a.kwonlyargs + [x for x in (a.vararg, a.kwarg) if x is not None]:
        arg.annotation = None
    a.defaults = [ast.Constant(None) for _ in a.defaults]
    a.kw_defaults = [None if d is None else ast.Constant(None) for d in a.kw_defaults]
    stub = ast.FunctionDef(name=node.name, args=a, body=[ast.Pass()], decorator_list=[], returns=None,
                           type_comment=None, **({"type_params": []} if hasattr(ast.FunctionDef, "type_params") else {}))
    namespace: dict = {}
    try:
        exec(compile(ast.fix_missing_locations(ast.Module(body=[stub], type_ignores=[])), source, "exec"), namespace)
    except Exception:  # noqa: BLE001 - not certain: the loader decides
        return None
    from harness.preload import signature_problem

    return signature_problem(namespace[node.name], shown)


def check_options(args) -> None:
    """Numeric option values that make no run: answered before anything starts."""
    positive = [("--impl-timeout", "impl_timeout"), ("--load-timeout", "load_timeout"),
                ("--forward-factor", "forward_factor"), ("--backward-factor", "backward_factor")]
    for flag, name in positive:
        v = getattr(args, name, None)
        if v is not None and not v > 0:
            raise UsageError(f"{flag} must be > 0 (got {v:g})")
    if getattr(args, "call_timeout", 0) < 0:  # 0: no per-call alarm (a hang is left to --impl-timeout)
        raise UsageError(f"--call-timeout must be >= 0 (got {args.call_timeout:g})")
    if getattr(args, "jobs", 1) < 1:
        raise UsageError(f"--jobs must be >= 1 (got {args.jobs})")
    if getattr(args, "shards", 0) < 0:
        raise UsageError(f"--shards must be >= 0 (0 = automatic; got {args.shards})")
    if getattr(args, "example", None):
        import json

        try:
            json.loads(args.example)
        except ValueError as e:
            raise UsageError(f"--example is not valid JSON: {e}") from None


def check_all(args) -> None:
    check_options(args)
    for spec in args.impl or []:
        check_spec(spec)
