"""The package's walls, read from its source: folders by concern that import downward only.

The order, from the top: ``commands`` > ``bench`` > ``train`` > ``inference`` > ``evaluate`` > ``weights`` >
``transform`` > ``data`` > ``model`` > ``common`` (docs/code-layout.md). A folder imports itself and the
folders below it; only ``commands/`` parses arguments; no ``_private`` name crosses a folder; no module
imports another in a loop; no module is over 500 lines and no class over 200. The top level holds only
``__init__.py``, ``__main__.py`` and ``api.py``, and the ``python -m`` entry points of module paths that moved
(a folder holding nothing but an ``__init__`` docstring and a ``__main__`` calling one command).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "brasyn"
ORDER = [
    "common",
    "model",
    "data",
    "transform",
    "weights",
    "evaluate",
    "inference",
    "train",
    "bench",
    "commands",
]
"""From the ground up: each folder may import the folders before it and itself."""
TOP_LEVEL = {"__init__.py", "__main__.py", "api.py"}
ENTRY_FOLDERS = {"baselines", "quality", "example"}
"""``python -m brasyn.baselines`` and friends: module paths that moved, kept as entry points."""
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 200


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    imports: list[tuple[str, list[str], int]] = field(default_factory=list)
    """(imported module, names taken from it, line) for every import anywhere in the file."""

    @property
    def folder(self) -> str | None:
        parts = self.name.split(".")
        return parts[1] if len(parts) > 2 or (self.path.name == "__init__.py" and len(parts) == 2) else None

    @property
    def is_entry(self) -> bool:
        return self.path.name == "__main__.py" or self.folder in ENTRY_FOLDERS


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.name.split(".")
    if module.path.name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def _modules() -> dict[str, Module]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = Module(_module_name(path), path, ast.parse(path.read_text(), str(path)))
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Import):
                module.imports += [(alias.name, [], node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(module, node)
                names = [alias.name for alias in node.names]
                module.imports.append((target, names, node.lineno))
        modules[module.name] = module
    return modules


MODULES = _modules()


def _internal(target: str, names: list[str]) -> list[str]:
    """The brasyn modules an import statement loads (``from brasyn.x import y`` may name a module y)."""
    if target != "brasyn" and not target.startswith("brasyn."):
        return []
    found = [target] if target in MODULES else []
    found += [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
    return found or [target]


def _folder_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ORDER else None


def _where(module: Module, line: int) -> str:
    return f"{module.path.relative_to(PACKAGE.parent)}:{line}"


def test_the_top_level_holds_only_the_package_face_the_entry_point_and_the_api():
    files = {p.name for p in PACKAGE.glob("*.py")}
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert files == TOP_LEVEL
    assert folders == set(ORDER) | ENTRY_FOLDERS
    for name in ENTRY_FOLDERS:
        assert {p.name for p in (PACKAGE / name).glob("*.py")} == {"__init__.py", "__main__.py"}
        main = (PACKAGE / name / "__main__.py").read_text()
        assert len(main.strip().splitlines()) <= 5, f"brasyn/{name}/__main__.py only hands over to a command"
    for folder in ORDER:
        assert (PACKAGE / folder / "__init__.py").is_file(), f"brasyn/{folder} is a package"


def test_every_folder_imports_only_itself_and_the_folders_below_it():
    upward = []
    for module in MODULES.values():
        own = module.folder
        if own not in ORDER or module.is_entry:
            continue
        for target, names, line in module.imports:
            for loaded in _internal(target, names):
                other = _folder_of(loaded)
                if loaded == "brasyn":
                    upward.append(f"{_where(module, line)} imports {names} from the package's face")
                if other is not None and ORDER.index(other) > ORDER.index(own):
                    upward.append(f"{_where(module, line)}: {own}/ imports {loaded} (above it)")
    assert not upward, "\n".join(upward)


def test_the_top_level_modules_use_the_library_and_not_the_command_lines():
    # the Python API and the package face are a library; only the entry points reach commands/
    for name in ("brasyn", "brasyn.api"):
        for target, names, line in MODULES[name].imports:
            for loaded in _internal(target, names):
                assert _folder_of(loaded) != "commands", _where(MODULES[name], line)


def test_only_the_commands_parse_arguments():
    found = [
        _where(m, line)
        for m in MODULES.values()
        if m.folder != "commands"
        for target, _, line in m.imports
        if target == "argparse" or target.startswith("argparse.")
    ]
    assert not found, f"argparse imported outside brasyn/commands: {found}"


def test_nothing_outside_the_commands_imports_them():
    found = [
        _where(m, line)
        for m in MODULES.values()
        if m.folder != "commands" and not m.is_entry
        for target, names, line in m.imports
        for loaded in _internal(target, names)
        if _folder_of(loaded) == "commands"
    ]
    assert not found, found


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_private_name_crosses_a_folder():
    crossing = []
    for module in MODULES.values():
        for target, names, line in module.imports:
            if _folder_of(target) is None or _folder_of(target) == module.folder:
                continue
            crossing += [f"{_where(module, line)}: {n} from {target}" for n in names if _private(n)]
        for node in ast.walk(module.tree):
            # brasyn.x.y._name through a module object
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                chain = ast.unparse(node.value)
                if chain.startswith("brasyn.") and _folder_of(chain) not in (None, module.folder):
                    crossing.append(f"{_where(module, node.lineno)}: {chain}.{node.attr}")
    assert not crossing, "\n".join(crossing)


def test_a_folder_face_lists_only_its_own_names():
    # no re-export shims: an __init__ may name its folder's public names, nothing from elsewhere
    for folder in ORDER:
        module = MODULES[f"brasyn.{folder}"]
        for target, names, line in module.imports:
            for loaded in _internal(target, names):
                assert loaded.startswith(f"brasyn.{folder}."), _where(module, line)


def test_a_module_lists_only_what_it_defines():
    # an old import path kept alive by re-exporting a moved name is a shim; its users import the new home
    shims = []
    for module in MODULES.values():
        if module.path.name == "__init__.py":
            continue
        imported = {
            alias.asname or alias.name
            for node in module.tree.body
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
        for node in module.tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                listed = {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
                shims += [f"{module.name}: {name}" for name in sorted(listed & imported)]
    assert not shims, shims


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for module in MODULES.values():
        for target, names, _ in module.imports:
            for loaded in _internal(target, names):
                # importing brasyn.a.b runs brasyn.a's face first; the faces import nothing of note
                if loaded in MODULES and loaded != module.name:
                    graph[module.name].add(loaded)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_another_in_a_loop():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_loop():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_500_lines_and_no_class_over_200(name):
    module = MODULES[name]
    lines = len(module.path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module.path.name}: {lines} lines; split it along its concerns"
    for node in ast.walk(module.tree):
        if isinstance(node, ast.ClassDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_CLASS_LINES, f"{name}.{node.name}: {length} lines"


def figures(package: Path = PACKAGE) -> dict[str, int]:
    """The structure in numbers, for any checkout of brasyn (flat or in folders): modules, folders,
    module-to-module import arrows, import loops and the longest chain of imports (in modules)."""
    global PACKAGE, MODULES
    saved = PACKAGE, MODULES
    PACKAGE, MODULES = package.resolve(), {}
    try:
        MODULES = _modules()
        graph = _graph()
        loops = _cycles(graph)
        merged = {m: min(c) for c in loops for m in c}

        def node(m: str) -> str:
            return merged.get(m, m)

        dag: dict[str, set[str]] = {}
        for m, outs in graph.items():
            dag.setdefault(node(m), set()).update(node(o) for o in outs if node(o) != node(m))
        depth: dict[str, int] = {}

        def level(m: str) -> int:
            if m not in depth:
                depth[m] = 1 + max((level(o) for o in dag.get(m, ())), default=0)
            return depth[m]

        return {
            "modules": sum(1 for m in MODULES.values() if m.path.name != "__init__.py" or m.name == "brasyn"),
            "folders": len({m.path.parent for m in MODULES.values()}),
            "import_arrows": sum(len(outs) for outs in graph.values()),
            "import_loops": len(loops),
            "import_levels": max(level(m) for m in dag),
        }
    finally:
        PACKAGE, MODULES = saved


if __name__ == "__main__":
    # python -m tests.test_layout [PATH/TO/brasyn]
    import json
    import sys

    print(json.dumps(figures(Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE), indent=2))
