"""The package's imports run one way: no cycle in harness/, counting imports inside functions.

A cycle hidden by a function-level import works until someone moves that import to the top of a
module; then the package fails to import. The graph is read with ``ast``, nothing is imported."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "harness"
# The top-level modules shipped beside the package (the pytest entry point and the defaults it
# shares with the package): a cycle through them breaks the package's import just the same.
TOP_LEVEL = ("attention_harness_plugin", "attention_harness_defaults")


def _modules() -> dict:
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = ("harness",) + p.relative_to(PKG).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = p
    for name in TOP_LEVEL:
        mods[name] = PKG.parent / f"{name}.py"
    return mods


def _resolve(name: str, mods: dict) -> str:
    while name and name not in mods:
        name = name.rsplit(".", 1)[0] if "." in name else ""
    return name


def import_graph() -> dict:
    """module -> the harness modules it imports, anywhere in its body."""
    mods = _modules()
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        package = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                r = _resolve(t, mods)
                # The package root only re-exports lazily (PEP 562); importing it is not an edge.
                if r and r != m and r != "harness":
                    graph[m].add(r)
    return graph


def cycles(graph: dict) -> list:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert "harness.loading" in graph and "harness.contract" in graph["harness.loading"]
    found = cycles(graph)
    assert found == [], "import cycles: " + "; ".join(
        " <-> ".join(f"{a} (imports {sorted(graph[a] & set(c))})" for a in c) for c in found)


def test_the_cycle_finder_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


MAX_LINES = 500  # a module past this has become two concepts: split it (see CONTRIBUTING.md)


def test_no_module_in_the_package_is_over_the_line_limit():
    pkg = Path(__file__).resolve().parents[1] / "harness"
    long = {str(p.relative_to(pkg)): n for p in sorted(pkg.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_domain_modules_hold_no_command_line_code():
    """Subcommands live in harness/cli/: a domain module with argparse or a register(subparsers)
    is a second home for the same concern."""
    pkg = Path(__file__).resolve().parents[1] / "harness"
    offenders = []
    for p in sorted(pkg.rglob("*.py")):
        if p.relative_to(pkg).parts[0] == "cli":
            continue
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                    a.name == "argparse" for a in node.names) or (
                    isinstance(node, ast.FunctionDef) and node.name == "register"):
                offenders.append(str(p.relative_to(pkg)))
                break
    assert not offenders, f"command-line code outside harness/cli/: {offenders}"


def test_the_defaults_home_imports_nothing():
    """The pytest entry point reads the defaults in every pytest run on the machine: their module
    imports nothing at all, and the package and the entry point both read them from it."""
    tree = ast.parse((PKG.parent / "attention_harness_defaults.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    graph = import_graph()
    assert "attention_harness_defaults" in graph["harness.defaults"]
    assert "attention_harness_defaults" in graph["attention_harness_plugin"]
    assert not any("attention_harness_plugin" in deps for m, deps in graph.items() if m.startswith("harness"))


def test_the_deprecated_aliases_are_gone():
    """harness.compare, html_report, report_model and report_writer were kept one version as
    aliases of their homes in harness.report, then removed (the README's changelog says so)."""
    import importlib

    import pytest

    for old in ("compare", "html_report", "report_model", "report_writer"):
        assert not (PKG / f"{old}.py").exists(), old
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(f"harness.{old}")
