"""Imports flow one way: io and ROS on top, the run-time core below, maths at the bottom, and no cycles.

Each module of sfm_ros belongs to one layer (``LAYERS``) and may import only its own layer and those ``ALLOWED``
below it. Two checks: each module imported alone in a fresh interpreter loads no sfm_ros module of a layer it may not
use (what really happens at import, through packages' ``__init__`` too); and the import statements of every module,
the lazy ones inside functions included (not those under TYPE_CHECKING), point only down or sideways and form no
cycle. A new module must be given a layer here.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test.conftest import REPO

PACKAGE = REPO / "sfm_ros"

# Bottom to top.
LAYERS: dict[str, set[str]] = {
    # maths and plain values: numpy and OpenCV only
    "base": {"sfm_ros.geometry", "sfm_ros.camera", "sfm_ros.metrics", "sfm_ros.polyphase", "sfm_ros.errors"},
    # the networks, their bundles and inference backends
    "model": {"sfm_ros.bundle", "sfm_ros.backends", "sfm_ros.backends.onnxruntime_backend",
              "sfm_ros.backends.tensorrt_backend", "sfm_ros.backends.torch_backend", "sfm_ros.models",
              "sfm_ros.models.blocks", "sfm_ros.models.dispnet", "sfm_ros.models.inference", "sfm_ros.models.posenet",
              "sfm_ros.models.warp"},
    "config": {"sfm_ros.config"},
    # what the odometry gives, without its run time (the message conversions name it)
    "results": {"sfm_ros.odometry", "sfm_ros.odometry.estimate"},
    # the run-time core
    "core": {"sfm_ros.scale", "sfm_ros.odometry.align", "sfm_ros.odometry.ground", "sfm_ros.odometry.tracking",
             "sfm_ros.odometry.uncertainty", "sfm_ros.odometry.network", "sfm_ros.odometry.pipeline"},
    # data in and out: messages, bags, data sets, plots, the frame worker
    "io": {"sfm_ros.ros_io", "sfm_ros.bags", "sfm_ros.kitti", "sfm_ros.report", "sfm_ros.worker"},
    # entry points and tools: the node, the command line, replay, evaluation, export and quantisation, benchmarks
    "app": {"sfm_ros", "sfm_ros.node", "sfm_ros.cli", "sfm_ros.replay", "sfm_ros.evaluate", "sfm_ros.bench",
            "sfm_ros.benchmarks", "sfm_ros.benchmarks.classical_vo",
            "sfm_ros.benchmarks.node_load",
            "sfm_ros.export", "sfm_ros.quantize", "sfm_ros.calibration"},
}
ORDER = list(LAYERS)
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "model": {"base"},
    "config": {"model", "base"},
    "results": {"base"},
    "core": {"results", "config", "model", "base"},
    # reading a bag or building a message loads neither the run time nor the model
    "io": {"results", "base"},
    "app": {"io", "core", "results", "config", "model", "base"},
}
LAYER_OF = {module: layer for layer, modules in LAYERS.items() for module in modules}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(module_name(path) for path in PACKAGE.rglob("*.py"))


def may_import(importer: str, imported: str) -> bool:
    """Own layer, an allowed lower one, or the importer's own package (a submodule always loads its parents)."""
    if importer.startswith(imported + "."):
        return True
    mine, theirs = LAYER_OF[importer], LAYER_OF[imported]
    return theirs == mine or theirs in ALLOWED[mine]


def test_every_module_has_a_layer_and_the_layers_only_look_down() -> None:
    assert sorted(LAYER_OF) == MODULES, "give each new sfm_ros module a layer in LAYERS"
    for layer, below in ALLOWED.items():
        assert all(ORDER.index(other) < ORDER.index(layer) for other in below), layer


def _imports(path: Path) -> set[str]:
    """The sfm_ros modules a file imports anywhere (functions too), outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for block in ast.walk(tree)
               if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
               for statement in block.body for node in ast.walk(statement)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from sfm_ros.odometry import uncertainty`` imports a module; ``from sfm_ros.geometry import f`` does not
            found |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                      for alias in node.names}
    return {name for name in found if name in MODULES}


def test_import_statements_point_down_and_form_no_cycle() -> None:
    graph = {module: _imports(PACKAGE.parent / (module.replace(".", "/") + ".py")
                              if (PACKAGE.parent / (module.replace(".", "/") + ".py")).is_file()
                              else PACKAGE.parent / module.replace(".", "/") / "__init__.py")
             for module in MODULES}
    wrong = sorted(f"{a} ({LAYER_OF[a]}) imports {b} ({LAYER_OF[b]})" for a, edges in graph.items() for b in edges
                   if not may_import(a, b))
    assert not wrong, wrong
    # Depth-first search for a cycle; a submodule's import of its own package is no edge (Python loads it first).
    edges = {a: {b for b in bs if not a.startswith(b + ".")} for a, bs in graph.items()}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in sorted(edges[module]):
            assert state.get(other) != 1, f"import cycle: {' -> '.join([*path, module, other])}"
            if other not in state:
                visit(other, [*path, module])
        state[module] = 2

    for module in MODULES:
        if module not in state:
            visit(module, [])


def test_the_installed_packages_import_only_installed_packages() -> None:
    """A wheel installs sfm_ros and training (setup.py), not benchmarks/ or test/: a command that imported those would
    work in this checkout and fail for a user who installed the package."""
    local = {path.parent.name for path in REPO.glob("*/__init__.py")}
    installed = {"sfm_ros", "training"}
    assert '"training"' in (REPO / "setup.py").read_text() and installed < local
    wrong = []
    for package in sorted(installed):
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                         else [])
                wrong += [f"{path.relative_to(REPO)} imports {name}" for name in names
                          if name.split(".")[0] in local - installed]
    assert not wrong, wrong


PROBE = """
import importlib, json, sys
try:
    importlib.import_module(sys.argv[1])
except ImportError as exc:
    print(json.dumps({"missing": str(exc)}))
else:
    print(json.dumps({"loaded": sorted(name for name in sys.modules if name.split(".")[0] == "sfm_ros")}))
"""


@pytest.mark.parametrize("module", MODULES)
def test_importing_a_module_alone_loads_nothing_above_it(module: str) -> None:
    """In a fresh interpreter, as a user's ``import`` would."""
    result = subprocess.run([sys.executable, "-c", PROBE, module], capture_output=True, text=True, cwd=REPO,
                            check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if "missing" in report:
        pytest.skip(f"{module} needs an optional dependency: {report['missing']}")
    above = sorted(name for name in report["loaded"] if not may_import(module, name))
    assert not above, f"importing {module} loads {above}"


def test_reading_a_bag_loads_neither_the_run_time_nor_the_model() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE, "sfm_ros.bags"], capture_output=True, text=True, cwd=REPO,
                            check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1])["loaded"])
    assert not loaded & {"sfm_ros.odometry.pipeline", "sfm_ros.scale", "sfm_ros.backends", "sfm_ros.worker",
                         "sfm_ros.config"}, loaded
