"""The package's shape stays as DESIGN.md draws it: imports point down (no circle),
and each command function stays short enough to read at a glance."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import typer

import svmtool
from svmtool.cli import app

PACKAGE = Path(svmtool.__file__).parent
COMMAND_MAX_LINES = 120  # a command function, options and docstring included


def module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts).removesuffix(".__init__")
        names[name] = path
    return names


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The svmtool modules ``path`` imports, at module level or inside a function
    (a function's import runs too, later: a circle through it is still a circle)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # ``from svmtool.io import cifar`` imports the module svmtool.io.cifar.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in modules}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (module -> modules it imports), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_circle_and_only_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_every_module_imports_and_no_import_circle():
    modules = module_names()
    for name in modules:
        if name != "svmtool.__main__":  # runs the app
            importlib.import_module(name)
    graph = {name: imports_of(path, set(modules)) - {name} for name, path in modules.items()}
    # The package itself (``from svmtool import __version__``) is below everything.
    graph["svmtool"] = set()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def _commands(group) -> list:
    found = []
    for command in group.commands.values():
        found.extend(_commands(command) if hasattr(command, "commands") else [command])
    return found


def test_no_command_function_is_over_120_lines():
    commands = _commands(typer.main.get_command(app))
    assert len(commands) >= 8  # download train evaluate predict gradcheck visualize, cache x2
    for command in commands:
        function = inspect.unwrap(command.callback)
        lines = len(inspect.getsourcelines(function)[0])
        assert lines <= COMMAND_MAX_LINES, f"{function.__module__}.{function.__name__}: {lines}"


MODULE_MAX_LINES = 650  # the issue's ~600, with room for a docstring or two


def test_no_module_is_over_650_lines():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines())
             for name, path in module_names().items()}  # fmt: skip
    over = {name: lines for name, lines in sizes.items() if lines > MODULE_MAX_LINES}
    assert not over, over
    assert max(sizes.values()) > 100  # the count reads real files
