"""The native module's type stub lists exactly its functions, with the same parameters."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import qure
from qure import _core

STUB = Path(qure.__file__).with_name("_core.pyi")


def _stub_functions() -> dict[str, list[str]]:
    tree = ast.parse(STUB.read_text())
    return {
        node.name: [a.arg for a in node.args.args + node.args.kwonlyargs]
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
    }


def test_stub_and_py_typed_ship_with_the_package():
    assert STUB.is_file()
    assert STUB.with_name("py.typed").is_file()


def test_stub_matches_native_functions():
    stub = _stub_functions()
    native = {
        name: obj for name, obj in vars(_core).items() if callable(obj) and not name.startswith("_")
    }
    assert set(stub) == set(native)
    for name, params in stub.items():
        signature = inspect.signature(native[name])
        assert list(signature.parameters) == params, name
