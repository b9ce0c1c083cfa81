"""Typed configuration: frozen dataclasses loaded from YAML, with dotted command-line overrides.

Every default lives in a dataclass field, once. YAML files in ``config/`` and ``key.sub=value`` overrides
only change fields that exist; an unknown key or a value of the wrong type is a ``ConfigError`` naming
the key, the expected type and the value found. Field metadata carries the description and range that
the node turns into ROS parameter descriptors.
"""

from __future__ import annotations

import array
import dataclasses
import enum
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sfm_ros.backends import BACKEND_CHOICES
from sfm_ros.bundle import PRECISIONS

__all__ = ["ODOMETRY_MODES", "ConfigError", "NodeConfig", "OdometryMode", "ParameterSpec", "PipelineConfig",
           "ScaleConfig", "ScaleSource", "apply_overrides", "from_dict", "load_config", "nest", "param",
           "parameter_table", "render_parameter_file", "to_dict"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is invalid."""


def param(default: Any, description: str, *, choices: tuple[str, ...] | None = None,
          range: tuple[float, float] | None = None, read_only: bool = False) -> Any:
    """A dataclass field with the metadata a ROS parameter descriptor needs."""
    metadata = {"description": description, "choices": choices, "range": range, "read_only": read_only}
    return dataclasses.field(default=default, metadata=metadata)


def _check_field(owner: str, field: dataclasses.Field, value: Any) -> None:
    choices, value_range = field.metadata.get("choices"), field.metadata.get("range")
    if choices and value not in choices:
        raise ConfigError(f"{owner}.{field.name} must be one of {list(choices)}, got {value!r}")
    if value_range and not value_range[0] <= value <= value_range[1]:
        raise ConfigError(f"{owner}.{field.name} must be in [{value_range[0]}, {value_range[1]}], got {value!r}")


def _coerce(key: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping for {hint.__name__}, got {value!r}")
        return from_dict(hint, value, prefix=key)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, arg, value)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} fits none of {hint}: {'; '.join(errors)}")
    if origin in (tuple, list):
        # array.array: what rclpy's parameter service hands over for double and integer arrays (ros2 param set, rqt).
        if not isinstance(value, list | tuple | array.array):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (item_hint, *_rest) = typing.get_args(hint) or (Any,)
        return tuple(_coerce(f"{key}[{i}]", item_hint, v) for i, v in enumerate(value))
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            # YAML 1.1 reads 1e-4 (no dot) as a string; a number written so is still a number.
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (possibly partial) nested dict; missing keys keep their defaults."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = prefix or cls.__name__
        raise ConfigError(f"unknown key(s) {unknown} in {where}; known: {sorted(fields)}")
    values = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        values[name] = _coerce(key, hints[name], value)
        _check_field(prefix or cls.__name__, fields[name], values[name])
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from exc


def to_dict(config: Any) -> dict[str, Any]:
    """Nested plain dict (tuples as lists) of a dataclass, for YAML/JSON."""
    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(dataclasses.asdict(config))


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings (values parsed as YAML) to a nested dict; returns a new dict."""
    result = yaml.safe_load(yaml.safe_dump(data)) or {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override must look like key.sub=value, got {override!r}")
        node = result
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {override!r}: {part} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return result


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Load ``cls`` from a YAML file (optional) plus overrides; the dataclass holds every default. A ROS 2 parameter
    file's values, nested under ``<node>: ros__parameters:``, are read from there."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must hold a mapping, got {type(data).__name__}")
        nodes = list(data.values())
        if len(nodes) == 1 and isinstance(nodes[0], dict) and "ros__parameters" in nodes[0]:
            data = nodes[0]["ros__parameters"] or {}
    return from_dict(cls, apply_overrides(data, overrides))


# ---- run-time configuration (pipeline, scale, node) -------------------------------------------------------

class ScaleSource(str, enum.Enum):
    """scale.source: where metric scale comes from (sfm_ros.scale has an estimator for each)."""

    CAMERA_HEIGHT = "camera_height"
    EXTERNAL_SPEED = "external_speed"
    FIXED = "fixed"
    NONE = "none"


class OdometryMode(str, enum.Enum):
    """pipeline.odometry: how a frame's pose is found (sfm_ros.odometry.tracking)."""

    CHAIN = "chain"
    FRAME_TO_FRAME = "frame_to_frame"
    KEYFRAMES = "keyframes"


ODOMETRY_MODES = tuple(mode.value for mode in OdometryMode)


@dataclasses.dataclass(frozen=True)
class ScaleConfig:
    """Metric scale recovery (sfm_ros.scale)."""

    source: str = param("camera_height", "where metric scale comes from",
                        choices=tuple(source.value for source in ScaleSource))
    camera_height_m: float = param(1.65, "camera height above the ground plane, metres (KITTI: 1.65)",
                                   range=(0.05, 10.0))
    fixed_factor: float = param(1.0, "metres per network unit when source is 'fixed'", range=(1e-6, 1e6))
    smoothing: float = param(0.9, "exponential smoothing of the scale over frames (0 = none)", range=(0.0, 0.999))
    ground_region: float = param(0.4, "bottom fraction of the image searched for the ground plane",
                                 range=(0.1, 0.9))
    min_speed_mps: float = param(0.3, "below this external speed the scale is not updated (standstill)",
                                 range=(0.0, 100.0))
    ground_plane: str = param("mounting", "source camera_height: the ground plane the camera's mounting "
                                          "(T_base_camera) and height give, its scale the ratio of its depth to the "
                                          "predicted depth where they agree; or 'fit': a plane of any tilt fitted "
                                          "to the predicted depth (RANSAC)", choices=("mounting", "fit"))
    ground_motion: bool = param(True, "with source camera_height: each step's length (against the keyframe with "
                                      "pipeline.odometry keyframes) measured from the image motion of the ground; "
                                      "steps it cannot measure get the recent ratio of measured to aligned lengths; "
                                      "the published depth keeps the ground plane's scale")
    ground_pitch_from_travel: int = param(10, "ground_motion: once this many straight aligned steps are in, tilt "
                                              "the mounting's ground plane by the median elevation of the latest "
                                              "such steps' direction of travel (up to 100) above it "
                                              "where it stands out from their spread (a vehicle travels along its "
                                              "road; a camera's pitch is seldom calibrated); 0: the mounting as "
                                              "given", range=(0, 1000))

    @property
    def uses_ground_motion(self) -> bool:
        """ground_motion measures steps for the camera-height scale; the other sources ignore it."""
        return self.ground_motion and self.source == ScaleSource.CAMERA_HEIGHT.value


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """The visual-odometry core (sfm_ros.odometry.pipeline)."""

    bundle: str = param("", "model bundle folder (sfm.json + weights/ONNX)", read_only=True)
    backend: str = param("auto", "inference backend", choices=BACKEND_CHOICES, read_only=True)
    device: str = param("auto", "device for onnxruntime/torch: auto, cpu or cuda", choices=("auto", "cpu", "cuda"),
                        read_only=True)
    precision: str = param("fp16", "fp16/fp32 on a GPU (a CPU runs fp32); int8: onnxruntime CPU or TensorRT, "
                           "after `sfm export --precision int8 --int8-bag BAG`", choices=PRECISIONS,
                           read_only=True)
    threads: int = param(0, "CPU threads for onnxruntime/torch (0 = library default)", range=(0, 256),
                         read_only=True)
    engine_cache_dir: str = param("~/.cache/sfm_ros/engines", "where TensorRT engines are built and cached",
                                  read_only=True)
    depth_output_size: str = param("network", "publish depth at the network size or resized to the input",
                                   choices=("network", "input"))
    max_frame_gap_s: float = param(0.5, "a larger gap between frames resets odometry tracking", range=(0.01, 60.0))
    min_pose_interval_s: float = param(0.0, "feed a frame to the pose window only this long after the last one "
                                            "(0.1 for a 10 Hz-trained model on a 30 Hz camera); a two-frame depth net "
                                            "pairs each frame with the one nearest this far back", range=(0.0, 10.0))
    max_depth_m: float = param(80.0, "depth beyond this is published as +inf", range=(0.1, 1000.0))
    odometry: str = param("keyframes", "how each frame's pose is found: 'chain', the pose net's steps alone (the "
                                       "paper's odometry); 'frame_to_frame', each step refined by aligning the frame "
                                       "to the previous one through that frame's predicted depth (its Hessian gives "
                                       "the step's covariance); 'keyframes', each frame aligned to the last keyframe "
                                       "instead, so errors do not add up while the camera stands still or creeps",
                          choices=ODOMETRY_MODES)
    side_slip_sigma: float = param(0.001, "std-dev of the base's sideways motion off a circular arc during an "
                                          "alignment, as a fraction of its length (at least 1 mm): a car's or a "
                                          "differential-drive robot's base_link on its rear axle does not slip "
                                          "sideways, which ties the yaw to the direction of travel; 0: off (a "
                                          "robot that strafes, a drone, a hand-held camera)", range=(0.0, 10.0))
    # 1.6 by measurement (RESULTS, Odometry): with the ground's lengths unbiased (ground.GROUND_MIN_PARALLAX_PX), 1.6
    # gave the lowest streets' ATE and drift on three models and beat the network's chain on KITTI on all three;
    # 0.8 lost to the chain on KITTI on one, 2.4 raised the streets' ATE on two.
    alignment_depth_sigma: float = param(1.6, "the predicted depth's relative error (std) in an alignment: each "
                                              "residual counts less the more that error moves it, so the rotation "
                                              "rests on far points; 0: off", range=(0.0, 10.0))
    keyframe_min_overlap: float = param(0.7, "a new keyframe when less than this share of the keyframe's points "
                                             "stays in view", range=(0.0, 1.0))
    keyframe_max_baseline: float = param(0.1, "a new keyframe when the camera is this far from the keyframe, as a "
                                              "fraction of the keyframe's median depth (parallax)", range=(0.0, 10.0))
    # The odometry covariance (sfm_ros.odometry.uncertainty): each step's error, carried into the pose's, grows with
    # the distance and rotation of that step and not with time, so a camera standing still keeps its uncertainty.
    translation_sigma: float = param(0.05, "translation std-dev of a step as a fraction of its length (healthy "
                                           "metric scale)", range=(1e-4, 10.0))
    rotation_sigma_rad_per_m: float = param(5e-4, "rotation std-dev of a step per metre it travels, radians "
                                                  "(5e-4: 2.9 deg per 100 m)", range=(0.0, 1.0))
    rotation_sigma: float = param(0.05, "rotation std-dev of a step as a fraction of its rotation angle",
                                  range=(0.0, 10.0))
    unscaled_sigma_factor: float = param(10.0, "multiplies the standard deviations of steps whose scale is "
                                               "unhealthy or not metric", range=(1.0, 1e6))
    min_velocity_sigma_mps: float = param(0.05, "floor of the twist's linear std-dev, m/s (a still camera's "
                                                "velocity is not known exactly)", range=(1e-6, 100.0))
    min_angular_velocity_sigma_radps: float = param(0.01, "floor of the twist's angular std-dev, rad/s",
                                                    range=(1e-6, 100.0))
    T_base_camera: tuple[float, ...] = param(
        (0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5),
        "camera optical frame in base_link: x y z qx qy qz qw (default: at the origin, REP 103 optical axes)")

    def __post_init__(self) -> None:
        if len(self.T_base_camera) != 7 or not sum(q * q for q in self.T_base_camera[3:]) > 1e-12:
            raise ValueError(f"T_base_camera must be x y z qx qy qz qw with a non-zero quaternion, got "
                             f"{list(self.T_base_camera)}")


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    """The ROS 2 node: topics, frames, QoS and publishing options, plus the pipeline and scale."""

    image_transport: str = param("raw", "subscribe to sensor_msgs/Image (raw) or CompressedImage",
                                 choices=("raw", "compressed"), read_only=True)
    use_camera_info: bool = param(True, "take intrinsics from the camera_info topic (else from 'intrinsics')",
                                  read_only=True)
    intrinsics: tuple[float, ...] = param((0.0, 0.0, 0.0, 0.0), "fx fy cx cy in pixels when use_camera_info is "
                                                               "false", read_only=True)
    rectify: bool = param(False, "the image topic carries raw images: undistort them with camera_info's K, D and "
                                 "R into its P (plumb_bob, rational_polynomial, equidistant), as image_proc does; "
                                 "false for rectified images (image_rect); read-only: frames of both kinds would mix "
                                 "in one odometry", read_only=True)
    odom_frame: str = param("sfm_odom", "odometry frame id (REP 105's odom); not 'odom', which a mobile base's "
                                        "wheel odometry owns")
    base_frame: str = param("base_link", "robot body frame id (REP 105)")
    camera_frame: str = param("", "camera optical frame id; empty = the image header's frame_id")
    publish_tf: bool = param(False, "broadcast odom_frame -> base_frame; only where no other node publishes a "
                                    "parent of base_frame (wheel odometry, robot_localization): a frame has one parent")
    publish_mask: bool = param(False, "publish the explainability mask as mono8 (needs a mask-exporting bundle)")
    lookup_extrinsic_from_tf: bool = param(True, "read base_link -> camera from TF when available "
                                                 "(else pipeline.T_base_camera); read-only: the TF listener is "
                                                 "created at start", read_only=True)
    qos_reliability: str = param("best_effort", "image subscription reliability (sensor data QoS)",
                                 choices=("best_effort", "reliable"), read_only=True)
    qos_depth: int = param(1, "image subscription queue depth; 1 keeps only the newest frame", range=(1, 100),
                           read_only=True)
    speed_topic: str = param("", "speed topic for scale.source 'external_speed' (wheel odometry)", read_only=True)
    speed_topic_type: str = param("odometry", "message type of speed_topic", choices=("odometry", "twist_stamped"),
                                  read_only=True)
    pipeline: PipelineConfig = dataclasses.field(default_factory=PipelineConfig)
    scale: ScaleConfig = dataclasses.field(default_factory=ScaleConfig)

    def __post_init__(self) -> None:
        for name in ("odom_frame", "base_frame"):
            if not getattr(self, name).strip():
                raise ValueError(f"{name} is empty: a frame id names the TF frame of the published odometry")
        if self.odom_frame == self.base_frame:
            raise ValueError(f"odom_frame and base_frame are both {self.odom_frame!r}: the odometry is the transform "
                             "between two frames (REP 105: odom -> base_link)")
        if not all(math.isfinite(v) for v in self.pipeline.T_base_camera):
            raise ValueError(f"pipeline.T_base_camera must be finite, got {list(self.pipeline.T_base_camera)}")
        if self.rectify and not self.use_camera_info:
            raise ValueError("rectify needs the lens from camera_info (use_camera_info: true): 'intrinsics' has no "
                             "distortion to undo")
        if not self.use_camera_info and (len(self.intrinsics) != 4 or not all(map(math.isfinite, self.intrinsics))
                                         or min(self.intrinsics[:2]) <= 0):
            raise ValueError(f"use_camera_info is false, so intrinsics must be fx fy cx cy with fx, fy > 0, got "
                             f"{list(self.intrinsics)}")

    def camera_matrix(self) -> Any:
        """K [3,3] (numpy) from ``intrinsics`` (fx fy cx cy, pixels of the incoming image)."""
        import numpy as np

        fx, fy, cx, cy = self.intrinsics
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


@dataclasses.dataclass(frozen=True)
class ParameterSpec:
    """One flattened parameter (``pipeline.bundle``) with what a ROS ParameterDescriptor needs."""

    name: str
    default: Any
    description: str
    choices: tuple[str, ...] | None
    range: tuple[float, float] | None
    read_only: bool


def parameter_table(cls: type = NodeConfig, prefix: str = "") -> list[ParameterSpec]:
    """Every leaf field of a config dataclass as a dotted parameter, in declaration order."""
    specs: list[ParameterSpec] = []
    instance = cls()
    for field in dataclasses.fields(cls):
        name = f"{prefix}{field.name}"
        value = getattr(instance, field.name)
        if dataclasses.is_dataclass(value):
            specs += parameter_table(type(value), f"{name}.")
            continue
        metadata = field.metadata
        specs.append(ParameterSpec(name, value, metadata.get("description", ""), metadata.get("choices"),
                                   metadata.get("range"), bool(metadata.get("read_only", False))))
    return specs


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{'a.b': 1} -> {'a': {'b': 1}} (ROS parameter names back to the config structure)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return nested


def render_parameter_file(cls: type = NodeConfig, node_name: str = "/**") -> str:
    """The ROS 2 parameter file (config/sfm.yaml) documenting every parameter with its default.

    Regenerate with: python -m sfm_ros.config --yaml > config/sfm.yaml
    """
    import json

    lines = ["# Parameters of the sfm node (ROS 2 parameter file), generated from sfm_ros/config.py (NodeConfig):",
             "# every value is the default there. (ro) = read-only: restart the node to change it.",
             "# Usage: ros2 launch sfm_ros sfm.launch.py params_file:=/path/to/this.yaml bundle:=/path/to/bundle",
             "# '/**' applies it to the node whatever its namespace (launch's namespace:=) or name.",
             f"{node_name}:", "  ros__parameters:"]
    section = None
    for spec in parameter_table(cls):
        *parents, leaf = spec.name.split(".")
        if parents and parents[0] != section:
            lines.append(f"    {parents[0]}:")
        section = parents[0] if parents else None
        indent = "      " if parents else "    "
        note = spec.description
        if spec.choices:
            note += f"; one of {list(spec.choices)}"
        if spec.range:
            note += f"; range {list(spec.range)}"
        if spec.read_only:
            note += " (ro)"
        value = list(spec.default) if isinstance(spec.default, tuple) else spec.default
        lines += [f"{indent}# {note}", f"{indent}{leaf}: {json.dumps(value)}"]
    return "\n".join(lines) + "\n"


# The parameter reference (docs/parameters.md) sits between these two lines; `python -m sfm_ros.config --markdown
# docs/parameters.md` rewrites what lies between them, and test/test_docs.py fails when the page and the code disagree.
MARKDOWN_BEGIN = ("<!-- parameters: generated by `python -m sfm_ros.config --markdown docs/parameters.md`; "
                  "do not edit -->")
MARKDOWN_END = "<!-- parameters: end -->"


def _markdown_value(value: Any) -> str:
    import json

    return f"`{json.dumps(list(value) if isinstance(value, tuple) else value)}`"


def render_parameter_markdown(cls: type = NodeConfig) -> str:
    """The node's parameters as Markdown tables, one per section (the node's own, then each nested config).

    A section's heading is its dataclass's docstring; each row gives the dotted name, the default, when a change
    applies (``live``: from the next frame; ``restart``: read-only) and the description with its choices or range.
    """
    sections: dict[str, list[ParameterSpec]] = {}
    for spec in parameter_table(cls):
        sections.setdefault(spec.name.rpartition(".")[0], []).append(spec)
    hints = typing.get_type_hints(cls)
    lines: list[str] = []
    for section, specs in sections.items():
        owner = hints[section] if section else cls
        heading = (owner.__doc__ or "").strip().splitlines()[0]
        lines += [f"**`{section}.*`**: {heading}" if section else f"**{heading}**", "",
                  "| parameter | default | applies | description |", "| --- | --- | --- | --- |"]
        for spec in specs:
            note = spec.description
            if spec.choices:
                note += f"; one of {', '.join(f'`{choice}`' for choice in spec.choices)}"
            if spec.range:
                note += f"; range [{spec.range[0]}, {spec.range[1]}]"
            applies = "restart" if spec.read_only else "live"
            lines.append(f"| `{spec.name}` | {_markdown_value(spec.default)} | {applies} | "
                         f"{note.replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


def replace_marked_section(text: str, content: str, begin: str = MARKDOWN_BEGIN, end: str = MARKDOWN_END) -> str:
    """``text`` with what lies between the ``begin`` and ``end`` lines replaced by ``content``."""
    head, found_begin, rest = text.partition(begin + "\n")
    _old, found_end, tail = rest.partition(end)
    if not found_begin or not found_end:
        raise ConfigError(f"the parameter table's markers are missing: expected a line {begin!r} and later {end!r}")
    return head + begin + "\n" + content + end + tail


def main(argv: list[str] | None = None) -> int:
    """``python -m sfm_ros.config --yaml`` prints config/sfm.yaml; ``--markdown FILE`` rewrites FILE's table."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sfm_ros.config",
                                     description="Render the node's parameters from NodeConfig.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--yaml", action="store_true", help="print the ROS 2 parameter file (config/sfm.yaml)")
    group.add_argument("--markdown", metavar="FILE", nargs="?", const="-",
                       help="rewrite the table between the markers in FILE (docs/parameters.md); '-' or none: print it")
    args = parser.parse_args(argv)
    if args.yaml:
        print(render_parameter_file(), end="")
    elif args.markdown == "-":
        print(render_parameter_markdown(), end="")
    else:
        path = Path(args.markdown)
        path.write_text(replace_marked_section(path.read_text(), render_parameter_markdown()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
