"""The package's layering, read from the source: which module may import which.

* the library (everything in `cliptbp_kernels` but `pipeline`) never imports the pipeline;
* `cliptbp_kernels.backends` imports only itself, `cliptbp_kernels._options` and the compiled
  modules, never the public face;
* `cliptbp_kernels._options` imports nothing from the package;
* the pipeline uses only the public face (no backend, no private module);
* no import circle inside `cliptbp_kernels`, nor inside `bench`.

Every import counts, at module level or inside a function. The scripts that name test files
by path name files that exist.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, List, Set

import pytest

from paths import REPO

ROOT = REPO
PUBLIC = {"cliptbp_kernels", "cliptbp_kernels.api", "cliptbp_kernels.criterion",
          "cliptbp_kernels.aux_loss", "cliptbp_kernels.labels", "cliptbp_kernels.adapters",
          "cliptbp_kernels.distributed"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, package_roots: Set[str]) -> Set[str]:
    """Modules of `package_roots` that `path` imports (``from X import y`` counts as X.y when
    that is a module of the tree, else as X)."""
    name = _module_name(path)
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        out.update(t for t in targets if t.split(".")[0] in package_roots)
    return out


def _graph(root: str) -> Dict[str, Set[str]]:
    files = sorted((ROOT / root).rglob("*.py"))
    modules = {_module_name(f): f for f in files}
    graph = {}
    for mod, path in modules.items():
        deps = set()
        for t in _imports(path, {root}):
            while t and t not in modules:  # `from pkg import name`: the module that holds it
                t = t.rpartition(".")[0]
            # `from pkg import mod` imports pkg's __init__ first in any case, as every import
            # of a submodule does: that edge is implicit and not counted
            if t and t != mod:
                deps.add(t)
        graph[mod] = deps
    return graph


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Import circles, each as the list of modules around it."""
    seen, stack, on_stack, out = set(), [], set(), []

    def visit(m):
        seen.add(m)
        stack.append(m)
        on_stack.add(m)
        for d in sorted(graph.get(m, ())):
            if d in on_stack:
                out.append(stack[stack.index(d):] + [d])
            elif d not in seen:
                visit(d)
        stack.pop()
        on_stack.discard(m)

    for m in sorted(graph):
        if m not in seen:
            visit(m)
    return out


LIB = _graph("cliptbp_kernels")


def test_graph_is_read():
    # the parse found the modules and their edges (a broken parse would pass everything)
    assert "cliptbp_kernels.backends.triton.launch" in LIB
    assert "cliptbp_kernels.backends._ops" in LIB["cliptbp_kernels.backends.cpu"]
    assert "cliptbp_kernels.api" in LIB["cliptbp_kernels"]


@pytest.mark.parametrize("root", ["cliptbp_kernels", "bench"])
def test_no_import_circle(root):
    assert _cycles(_graph(root)) == []


def test_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_library_never_imports_the_pipeline():
    bad = {m: sorted(d for d in deps if d.startswith("cliptbp_kernels.pipeline"))
           for m, deps in LIB.items() if not m.startswith("cliptbp_kernels.pipeline")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_backends_do_not_import_the_face():
    allowed = ("cliptbp_kernels.backends", "cliptbp_kernels._options")
    bad = {m: sorted(d for d in deps if not d.startswith(allowed))
           for m, deps in LIB.items() if m.startswith("cliptbp_kernels.backends")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_options_module_is_the_bottom_layer():
    assert LIB["cliptbp_kernels._options"] == set()


def test_pipeline_uses_only_the_public_face():
    bad = {m: sorted(d for d in deps
                     if not (d in PUBLIC or d.startswith("cliptbp_kernels.pipeline")))
           for m, deps in LIB.items() if m.startswith("cliptbp_kernels.pipeline")}
    assert {m: d for m, d in bad.items() if d} == {}


# the scripts that name test files by path
PATH_USERS = ["scripts/gpu_check.sh", "scripts/sanitize.sh", "scripts/test.sh", ".ci/run"]


@pytest.mark.parametrize("script", PATH_USERS)
def test_paths_named_by_scripts_exist(script):
    text = (ROOT / script).read_text()
    named = set(re.findall(r"(?<![\w./-])((?:tests|bench|scripts)/[\w./-]*\w)", text))
    assert named or script == ".ci/run", f"{script} names no path: the pattern is off"
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert missing == [], f"{script} names paths that do not exist: {missing}"
