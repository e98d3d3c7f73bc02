"""The layering and shape of the product code, checked over the real sources.

Import rules (also in pyproject's ``[tool.importlinter]``, run by ``lint-imports`` in CI):
kmr imports nothing of export or client; client imports only kmr.contract and
kmr.vocabulary of ours; only the demo command imports client from export; no cycles;
tests never import benchmarks. And no product function is longer than 60 lines of code
without a one-line ``# long-function:`` reason.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

from tests.support.code_shape import ROOT, long_functions, product_sources

CLIENT_MAY_IMPORT = {"kmr", "kmr.contract", "kmr.vocabulary"}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("kmr", "export", "client", exclude_type_checking_imports=True)


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    adjacency = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(adjacency):
        if root in index:
            continue
        work = [(root, iter(adjacency[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(adjacency.get(child, ()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_import_linter_contracts_are_kept_when_linted() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    assert lint.is_file(), f"import-linter missing ({lint}): pip install -e '.[test]'"
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_import_graph_has_no_cycles_when_built(graph) -> None:
    assert _cycles(graph) == []


def test_cycle_finder_reports_a_cycle_when_two_modules_import_each_other() -> None:
    fake = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.a"), ("p.b", "p.c")):
        fake.add_import(importer=a, imported=b)
    assert _cycles(fake) == [["p.a", "p.b"]]


def test_client_imports_only_contract_and_vocabulary_of_kmr_when_built(graph) -> None:
    imported = {m for c in graph.find_descendants("client") | {"client"}
                for m in graph.find_modules_directly_imported_by(c) if m.split(".")[0] == "kmr"}
    assert imported <= CLIENT_MAY_IMPORT, sorted(imported - CLIENT_MAY_IMPORT)
    assert "kmr.contract" in imported  # the check sees the real imports


def test_only_the_demo_command_imports_client_when_export_is_scanned(graph) -> None:
    importers = {m for m in graph.find_descendants("export") | {"export"}
                 if any(i.split(".")[0] == "client"
                        for i in graph.find_modules_directly_imported_by(m))}
    assert importers == {"export.cli.demo"}


def test_tests_never_import_benchmarks_when_scanned() -> None:
    hits = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            hits += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names
                     if n.split(".")[0] in ("benchmarks", "loadgen", "_common")]
    assert hits == []


# Modules the serving runtime provides (Triton's python backend), not a pip install.
RUNTIME_PROVIDED = {"triton_python_backend_utils"}


def _declared(extras: tuple[str, ...]) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = project["dependencies"] + [d for e in extras
                                       for d in project["optional-dependencies"][e]]
    return {re.split(r"[\[=<>!~; ]", d, maxsplit=1)[0].lower().replace("_", "-")
            for d in specs}


def _third_party_imports(package: str) -> dict[str, str]:
    """Top-level third-party module -> first file:line importing it, over ``package``."""
    own = {"kmr", "export", "client"}
    found: dict[str, str] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {n.split(".")[0] for n in names} - own - set(sys.stdlib_module_names):
                found.setdefault(top, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


@pytest.mark.parametrize(("package", "extras"), [("client", ()), ("kmr", ("export",)),
                                                 ("export", ("export",))])
def test_every_third_party_import_is_a_declared_dependency_when_scanned(package,
                                                                        extras) -> None:
    # A bare `pip install .[export]` must be enough (scipy was once only in `bench`).
    declared = _declared(extras)
    distributions = importlib.metadata.packages_distributions()
    missing = {module: where for module, where in _third_party_imports(package).items()
               if module not in RUNTIME_PROVIDED and not any(
                   d.lower().replace("_", "-") in declared
                   for d in distributions.get(module, [module]))}
    assert missing == {}, f"imported but not in pyproject {extras or 'base'} deps: {missing}"


def test_product_functions_are_short_or_say_why_when_measured() -> None:
    unexplained = [f for p in product_sources() for f in long_functions(p) if f.reason is None]
    assert unexplained == [], "\n".join(
        f"{f.path}:{f.line} {f.name}: {f.code_lines} lines of code (max 60; add a "
        "'# long-function: <reason>' comment above it, or split it)" for f in unexplained)


def test_function_length_check_flags_a_long_function_when_given_one(tmp_path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    source = tmp_path / "mod.py"
    source.write_text(f'def f():\n    """Doc.\n\n    More.\n    """\n{body}\n\n\n'
                      f"# long-function: a table of constants\ndef g():\n{body}\n")
    found = long_functions(source, root=tmp_path)
    assert [(f.name, f.code_lines, f.reason) for f in found] == [
        ("f", 62, None), ("g", 62, "a table of constants")]
