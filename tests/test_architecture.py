"""The layout's rules: project imports point one way (no import cycle between modules, none
between the stages), and each stage imports only the stages below it."""

from __future__ import annotations

import ast
import os

import pytest
from conftest import REPO

pytestmark = pytest.mark.unit

PACKAGES = ("mammoray", "preprocessing", "jobs")
# Each stage and what it may import (besides itself). Listed bottom-up.
ALLOWED = {
    "mammoray": set(),  # the package's own __init__ (its version)
    "mammoray.core": {"mammoray"},
    "mammoray.synthetic": {"mammoray"},
    "preprocessing": {"mammoray", "mammoray.core"},
    "mammoray.model": {"mammoray", "mammoray.core"},
    "mammoray.training": {"mammoray", "mammoray.core", "mammoray.model"},
    "mammoray.inference": {"mammoray", "mammoray.core", "mammoray.model", "preprocessing"},
    "mammoray.tuning": {"mammoray", "mammoray.core", "mammoray.model", "mammoray.training"},
    "mammoray.evaluation": {"mammoray", "mammoray.core", "mammoray.model",
                            "mammoray.inference"},
    "jobs": {"mammoray", "mammoray.core", "mammoray.synthetic", "preprocessing",
             "mammoray.model", "mammoray.training", "mammoray.inference", "mammoray.tuning",
             "mammoray.evaluation"},
}


def project_modules() -> dict[str, str]:
    """module name -> file, for every module of the project's packages."""
    out = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, name), REPO)[:-3]
                    module = rel.replace(os.sep, ".").removesuffix(".__init__")
                    out[module] = os.path.join(folder, name)
    return out


def imports(path: str, module: str, known: set[str]) -> set[str]:
    """The project modules ``module`` imports anywhere in its file (function-local imports
    included: they hide cycles, they do not remove them)."""
    found = set()
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(open(path).read())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {m: imports(path, m, set(modules)) for m, path in modules.items()}


def stage_of(module: str) -> str:
    return max((s for s in ALLOWED if module == s or module.startswith(s + ".")), key=len)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``edges`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_modules():
    edges = graph()
    assert len(edges) > 40 and "mammoray.training.loop" in edges
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_stages_import_only_the_stages_below():
    wrong = []
    for module, targets in graph().items():
        stage = stage_of(module)
        for target in targets:
            other = stage_of(target)
            if other != stage and other not in ALLOWED[stage]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(wrong)
    stages = {s: {o for o in allowed if o != "mammoray"} for s, allowed in ALLOWED.items()}
    assert find_cycle(stages) is None
