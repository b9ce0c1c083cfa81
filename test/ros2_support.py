"""Test support for the real ROS 2 launch system: composition_interfaces (which launch_ros imports) generated from
its interface files with the rosidl generators on PyPI, and sfm_ros installed into a prefix as colcon would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PACKAGE = "composition_interfaces"


def generate_composition_interfaces(interface_dir: Path, out: Path) -> Path:
    """Python message classes of ``interface_dir``'s .srv files under ``out/py``; returns that folder (for
    PYTHONPATH). Plain Python only: no C type support, which importing the module does not need."""
    from rosidl_adapter.srv import convert_srv_to_idl
    from rosidl_generator_py import generate_py
    from rosidl_generator_type_description import generate_type_hash

    share = Path(sys.prefix) / "share"
    idl_dir = out / "idl"
    idl_tuples = []
    for srv in sorted(interface_dir.glob("*.srv")):
        convert_srv_to_idl(interface_dir, PACKAGE, Path(srv.name), idl_dir / "srv")
        idl_tuples.append(f"{idl_dir}:srv/{srv.stem}.idl")
    descriptions = out / "type_description"
    arguments = {"package_name": PACKAGE, "output_dir": str(descriptions), "idl_tuples": idl_tuples,
                 "include_paths": [f"{name}:{share / name}" for name in
                                   ("rcl_interfaces", "builtin_interfaces", "service_msgs")]}
    (out / "type_description.json").write_text(json.dumps(arguments))
    generate_type_hash(str(out / "type_description.json"))
    python_root = out / "py"
    arguments = {"package_name": PACKAGE, "output_dir": str(python_root / PACKAGE),
                 "template_dir": str(share / "rosidl_generator_py" / "resource"), "idl_tuples": idl_tuples,
                 "ros_interface_dependencies": [], "target_dependencies": [],
                 "type_description_tuples": [f"srv/{p.stem}.idl:{p}" for p in sorted(descriptions.glob("srv/*.json"))]}
    (out / "generator_py.json").write_text(json.dumps(arguments))
    generate_py(str(out / "generator_py.json"), ["rosidl_typesupport_c"])
    (python_root / PACKAGE / "__init__.py").touch()
    return python_root


def install_into_prefix(repo: Path, prefix: Path, build: Path) -> Path:
    """``setup.py install`` into ``prefix``, as colcon's ament_python build does (executables in lib/sfm_ros, launch
    and config in share/sfm_ros, the ament index entry); returns the prefix's site-packages."""
    subprocess.run([sys.executable, "setup.py", "-q", "build", "--build-base", str(build), "egg_info", "--egg-base",
                    str(build), "install", "--prefix", str(prefix), "--single-version-externally-managed",
                    "--record", str(build / "installed.txt")], cwd=repo, check=True, capture_output=True,
                   timeout=300)
    return next(prefix.glob("lib/python3*/site-packages"))
