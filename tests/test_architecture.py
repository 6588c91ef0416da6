"""The package's architecture: dependencies point one way, there is no import cycle, and
imports sit at the top of modules.

Layers, lowest first (docs/architecture.md "Layout"). A module may import only from its own layer or lower
ones; within a layer, packages and modules do not import each other except as listed in
``SAME_LAYER``. Imports inside functions are allowed only for heavy optional dependencies that
are deliberately lazy (matplotlib, tf-keras-vis, LiteRT, ONNX, Ray and pyarrow) and in the package's own ``__getattr__``
(``import retinaface_tf`` stays cheap for the CLI).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "retinaface_tf"

LAYERS = (
    ("errors", "constants", "assets", "environment"),  # assets: package data (the demo photo), no code; environment: settings made before TensorFlow loads
    ("fileio",),
    ("config",),
    ("ops", "convert", "alignment"),  # alignment: numpy + OpenCV only
    ("models",),
    ("runtimes",),  # how the network is run (LiteRT, ...): above its definition, below inference
    ("data",),
    ("losses",),
    ("training",),
    ("inference", "serving"),
    ("evaluation",),
    ("vis",),
    ("video",),  # frames through the Detector, drawn by vis
    ("datasets",),  # whole datasets on Ray Data (FaceDetector actors, Parquet output), beside the commands' rooms
    ("commands",),
    ("cli",),
    ("__main__", ""),  # "": the package's own __init__ (lazy Detector / Config)
)
LAZY_ALLOWED = ("matplotlib", "tf_keras_vis", "ai_edge_litert", "onnx", "onnxruntime", "tf2onnx", "ray", "pyarrow")
# Modules that do not follow the rule yet, each with what is left to do; delete the entry when done.
PENDING: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    """``{dotted name: file}`` of every module of the package on disk."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def _unit(module: str) -> str:
    """The layer unit of a module: its first package level below ``retinaface_tf``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(module: str) -> int:
    unit = _unit(module)
    for i, units in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"{module}: not in any layer of LAYERS (add its package to the table and to docs/architecture.md 'Layout')")


def _imports(path: Path, modules: dict[str, Path]):
    """``(imported package module, line, at top level)`` for every import of the package."""
    tree = ast.parse(path.read_text(), str(path))
    top = set(id(n) for n in tree.body)
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            yield name, node.lineno, id(node) in top


def _package_imports(path: Path, modules: dict[str, Path]):
    for name, line, top in _imports(path, modules):
        if name in modules and name != "retinaface_tf":
            yield name, line, top


def test_every_module_is_in_a_layer():
    for module in _modules():
        _layer(module)
    assert set(PENDING) <= set(_modules()), "PENDING names a module that is gone: remove its entry"


def test_imports_point_down_the_layers():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        if module in PENDING:
            continue
        for target, line, _ in _package_imports(path, modules):
            same_unit = _unit(target) == _unit(module)
            if not same_unit and _layer(target) >= _layer(module):
                wrong.append(f"{path.relative_to(REPO)}:{line}: {module} (layer {_layer(module)}) imports "
                             f"{target} (layer {_layer(target)})")
    assert not wrong, "imports that do not point to a lower layer:\n" + "\n".join(wrong)


def _function_imports(tree):
    """``(function name, import node)`` for every import inside a function (innermost function)."""
    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield from visit(child, child.name)
            elif isinstance(child, (ast.Import, ast.ImportFrom)) and function is not None:
                yield function, child
            else:
                yield from visit(child, function)

    yield from visit(tree, None)


def test_imports_at_the_top_except_lazy_optional_dependencies():
    lazy = []
    for module, path in _modules().items():
        if module in PENDING:
            continue
        for function, node in _function_imports(ast.parse(path.read_text(), str(path))):
            if module in ("retinaface_tf", "retinaface_tf.datasets") and function == "__getattr__":
                continue  # `import retinaface_tf` stays cheap; Detector / Config load on first use; Ray's
                # read tasks import retinaface_tf.datasets.sources without TensorFlow
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name.split(".")[0] not in LAZY_ALLOWED:
                    lazy.append(f"{path.relative_to(REPO)}:{node.lineno}: import {name} inside {function}()")
    assert not lazy, "imports inside functions:\n" + "\n".join(lazy)


def _import_order() -> list[str]:
    """The package's modules in dependency order (top-level imports); a cycle fails."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        # explicit imports only: a package's __init__ importing its submodules is no cycle (Python
        # registers the package before it runs them), one of them importing a name from it would be
        graph[module] = {t for t, _, top in _package_imports(path, modules) if top and t != module}
    try:
        return list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_no_import_cycle():
    assert _import_order()[0] == "retinaface_tf"


def test_every_module_imports_in_a_fresh_interpreter_in_dependency_order():
    """Each module imports with only the modules below it already imported (no hidden cycle
    broken by a lucky import order, no module needing a side effect of a higher one)."""
    order = [m for m in _import_order() if m != "retinaface_tf.__main__"]
    code = ("import importlib, sys\n"
            f"for name in {order!r}:\n"
            "    importlib.import_module(name)\n"
            "print('IMPORTED', len(sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                         cwd=REPO)
    assert out.returncode == 0 and "IMPORTED" in out.stdout, out.stderr[-3000:]
