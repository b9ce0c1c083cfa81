"""The package as users meet it: `sfm --help`, ament layout, installed data files, lint."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from sfm_ros.cli import build_parser, main
from test.conftest import REPO


@pytest.mark.parametrize("command", [[], ["prepare"], ["prepare", "cache"], ["prepare", "kitti-to-bag"], ["train"],
                                     ["export"], ["replay"], ["eval"], ["eval", "depth"], ["eval", "pose"],
                                     ["bench"], ["demo"]])
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: sfm" in capsys.readouterr().out


def test_sfm_help_lists_the_subcommands() -> None:
    result = subprocess.run([sys.executable, "-m", "sfm_ros.cli", "--help"], capture_output=True, text=True, cwd=REPO)
    for command in ("prepare", "train", "export", "replay", "eval", "bench", "demo"):
        assert command in result.stdout


def test_errors_are_one_line_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path / "nope"), "--output", str(tmp_path / "o"), "--bundle", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sfm replay: error:") and "sfm.json is missing" in err and "Traceback" not in err


def test_package_xml_declares_the_ros_dependencies() -> None:
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "sfm_ros"
    depends = {e.text for e in root if e.tag.endswith("depend")}
    # tf2_ros_py gives the Python module tf2_ros (Humble and later); python3-onnxruntime-pip is rosdistro's rosdep key
    # (rosdep/python.yaml) for the default CPU backend; launch needs ament_index_python, the node rcl_interfaces.
    for needed in ("rclpy", "rcl_interfaces", "sensor_msgs", "nav_msgs", "geometry_msgs", "std_srvs", "tf2_ros_py",
                   "diagnostic_msgs", "python3-numpy", "python3-opencv", "python3-yaml",
                   "python3-onnxruntime-pip", "launch", "launch_ros", "ament_index_python"):
        assert needed in depends, needed
    assert "tf2_ros" not in depends  # the C++ library: no Python module on Humble
    assert "cv_bridge" not in depends  # the node converts images itself (cv_bridge shears rows padded to a pitch)
    assert root.find("export/build_type").text == "ament_python"


@pytest.mark.slow
def test_wheel_installs_launch_and_config(tmp_path: Path) -> None:
    import shutil

    # Build from a copy: setuptools writes build/ and *.egg-info next to setup.py.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "runs",
                                                                 "demo_output", "__pycache__", "data"))
    shutil.copytree(REPO / "sfm_ros" / "data", source / "sfm_ros" / "data")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                             str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("sfm_ros-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith("data/share/sfm_ros/launch/sfm.launch.py") for n in names)
    assert any(n.endswith("data/share/sfm_ros/config/sfm.yaml") for n in names)
    assert any(n.endswith("data/share/ament_index/resource_index/packages/sfm_ros") for n in names)
    assert "sfm_ros/data/trt10_supported_ops.txt" in names and "training/trainer.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "sfm = sfm_ros.cli:main" in text and "sfm_node = sfm_ros.node:main" in text


def test_ruff_is_clean() -> None:
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed in this environment (make test installs it)")
    result = subprocess.run([str(ruff), "check", str(REPO)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]


def test_launch_file_names_real_parameters_topics_and_the_installed_executable() -> None:
    """`launch` and `launch_ros` are not installable here (the workflow runs the file on ROS images), so read it:
    every parameter it overrides must be a node parameter, every remapping one of the node's topics, and its
    executable the console script setup.py installs."""
    import ast

    from sfm_ros.config import parameter_table

    tree = ast.parse((REPO / "launch" / "sfm.launch.py").read_text())
    dict_keys = {key.value for node in ast.walk(tree) if isinstance(node, ast.Dict)
                 for key in node.keys if isinstance(key, ast.Constant)}
    node_parameters = {spec.name for spec in parameter_table()} | {"use_sim_time"}  # use_sim_time: rclpy's own
    assert dict_keys and dict_keys <= node_parameters, dict_keys - node_parameters
    remapped = {element.elts[0].value for node in ast.walk(tree) if isinstance(node, ast.List)
                for element in node.elts if isinstance(element, ast.Tuple)}
    node_source = (REPO / "sfm_ros" / "node.py").read_text()
    assert remapped == {"image", "image/compressed", "camera_info"}
    assert all(f'"{topic}", self._on_' in node_source for topic in remapped)
    keywords = {kw.arg: kw.value.value for node in ast.walk(tree) if isinstance(node, ast.Call)
                for kw in node.keywords if isinstance(kw.value, ast.Constant)}
    assert keywords["package"] == "sfm_ros"
    assert f"{keywords['executable']} = sfm_ros.node:main" in (REPO / "setup.py").read_text().replace("'", "")
    arguments = {node.args[0].value for node in ast.walk(tree) if isinstance(node, ast.Call)
                 and getattr(node.func, "id", "") == "DeclareLaunchArgument"}
    readme = (REPO / "README.md").read_text()
    assert all(f"{argument}:=" in readme for argument in arguments), arguments
