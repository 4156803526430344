"""Layering of the package, read statically from every module's imports (module level and inside functions).

shared <- prune <- deploy <- latency <- train <- cli: no layer imports one to its right; deploy/bench (timing,
reports, gates) imports no planning; outside latency/ only its package front (`vtpdeploy.latency`) is
imported; no import cycles between vtpdeploy modules; and importing vtpdeploy.prune loads no ONNX / ONNX
Runtime / OpenVINO.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "vtpdeploy"


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every .py under vtpdeploy/ (a package is named by its __init__)."""
    mods = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _owner(name: str, modules: set[str]) -> str | None:
    """The module that `name` (a module or an attribute of one) lives in: its longest known prefix."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: set[str]) -> set[str]:
    """vtpdeploy modules that `module` imports anywhere in its file, relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from X import y` imports the module X.y when y is a submodule, else X itself
            targets = [f"{stem}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            owner = _owner(target, modules)
            if owner is not None and owner != module:
                found.add(owner)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {mod: imports_of(mod, path, set(files)) for mod, path in files.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_graph_sees_relative_and_function_level_imports():
    """Guards the parser itself, so the layering checks below cannot pass by reading nothing."""
    graph = import_graph()
    assert len(graph) > 30
    assert "vtpdeploy.errors" in graph["vtpdeploy.prune.compact"]  # `from ..errors import ...`
    assert "vtpdeploy.prune.numerics" in graph["vtpdeploy.prune.compact"]  # inside compact_validated()
    assert "vtpdeploy.deploy.export.stage" in graph["vtpdeploy.deploy.export"]  # inside __getattr__


@pytest.mark.parametrize("layer,forbidden", [("prune", {"train", "deploy", "latency", "cli"}),
                                             ("deploy", {"train", "latency", "cli"}),
                                             ("latency", {"train", "cli"})])
def test_lower_layers_do_not_import_upper_ones(layer, forbidden):
    graph = import_graph()
    bad = sorted(f"{mod} imports {dep}" for mod, deps in graph.items() if _layer(mod) == layer
                 for dep in deps if _layer(dep) in forbidden)
    assert not bad, bad


PLANNING = ("vtpdeploy.latency", "vtpdeploy.prune.plan", "vtpdeploy.prune.widths", "vtpdeploy.prune.profiles")


def test_bench_only_measures_reports_and_gates():
    """deploy/bench imports no planning (latency tables and plans live in vtpdeploy.latency)."""
    graph = import_graph()
    assert any(m.startswith("vtpdeploy.latency.") for m in graph)  # the package is there to be found
    bad = sorted(f"{mod} imports {dep}" for mod, deps in graph.items() if mod.startswith("vtpdeploy.deploy.bench")
                 for dep in deps if dep.startswith(PLANNING))
    assert not bad, bad


def test_only_the_latency_package_front_is_imported_from_outside():
    graph = import_graph()
    bad = sorted(f"{mod} imports {dep}" for mod, deps in graph.items() if _layer(mod) != "latency"
                 for dep in deps if dep.startswith("vtpdeploy.latency."))
    assert not bad, bad


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules():
    """Function-level imports count too: hiding a back-import inside a function is still a cycle."""
    assert _cycles(import_graph()) == []


def test_every_package_folder_is_a_regular_package():
    """An `__init__.py` in every folder of vtpdeploy/: package walkers (pkgutil, API doc generators) and
    setuptools' `packages.find` skip namespace packages."""
    import pkgutil

    import vtpdeploy

    folders = {p.parent for p in PACKAGE_DIR.rglob("*.py")}
    assert sorted(str(f) for f in folders if not (f / "__init__.py").is_file()) == []
    walked = {m.name for m in pkgutil.walk_packages(vtpdeploy.__path__, "vtpdeploy.")}
    assert {"vtpdeploy.prune.plan", "vtpdeploy.deploy.bench.loop", "vtpdeploy.train.pipeline"} <= walked


def test_importing_prune_loads_no_onnx_runtime_or_openvino():
    code = ("import json, sys, vtpdeploy.prune, vtpdeploy.prune.compact, vtpdeploy.prune.plan; "
            "print(json.dumps(sorted(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "torch" in loaded and "vtpdeploy.prune.compact" in loaded  # the probe really imported prune
    heavy = [m for m in loaded if m.split(".")[0] in {"onnx", "onnxruntime", "openvino", "onnxslim", "tensorrt"}]
    assert heavy == []
    upper = [m for m in loaded if m.startswith(("vtpdeploy.train", "vtpdeploy.deploy", "vtpdeploy.cli"))]
    assert upper == []
