"""The package's shape: no module reaches into another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import qure

PACKAGE = Path(qure.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    """Whether ``dotted`` (``qure.x.y``) names a module or package of qure (private ones such as
    ``qure._core`` and ``qure._arrays`` may be imported: they are modules, not private names)."""
    base = PACKAGE.parent.joinpath(*dotted.split("."))
    return base.is_dir() or any(base.with_suffix(s).exists() for s in (".py", ".pyi"))


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    if not is_package:
        parts = parts[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_module_imports_another_modules_private_names():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        imported_modules: dict[str, str] = {}  # local alias -> qure module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = _resolve(node, module, path.name == "__init__.py")
                if not source.startswith("qure"):
                    continue
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    if _is_module(full):
                        imported_modules[alias.asname or alias.name] = full
                    elif _private(alias.name) and source != module:
                        problems.append(f"{path.name}: from {source} import {alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("qure"):
                        imported_modules[alias.asname or alias.name.split(".")[0]] = alias.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in imported_modules
                and _private(node.attr)
                and not _is_module(f"{imported_modules[node.value.id]}.{node.attr}")
            ):
                problems.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert not problems, "private names used across modules:\n" + "\n".join(problems)
