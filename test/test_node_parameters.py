"""Node parameters mean what they say: values that would publish NaN poses, frame ids TF cannot use, or a mask
that never comes are refused with the reason, at start and on a live change. Real rclpy, real onnxruntime."""

from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.rclpy, pytest.mark.skipif(
    importlib.util.find_spec("rclpy") is None,
    reason="rclpy is not installed (make test installs the ROS 2 Jazzy wheels; or source a ROS 2 installation)")]

OPTICAL = [0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5]
# (parameter, value, words of the reason)
BAD_VALUES = [
    ("pipeline.T_base_camera", [0.0, math.nan, *OPTICAL[2:]], "T_base_camera must be finite"),
    ("pipeline.T_base_camera", [*OPTICAL[:6], math.inf], "T_base_camera must be finite"),
    ("odom_frame", "", "odom_frame is empty"),
    ("base_frame", " ", "base_frame is empty"),
    ("base_frame", "sfm_odom", "odom_frame and base_frame are both 'sfm_odom'"),
]
NO_MASK = "publish_mask is true but the bundle's pose model has no explainability mask output"


@pytest.fixture(scope="module")
def maskless_bundle(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test bundle exported without the mask output (as `sfm export` does without --mask)."""
    from sfm_ros.export import export_bundle

    copy = tmp_path_factory.mktemp("maskless") / "bundle"
    shutil.copytree(small_bundle, copy)
    export_bundle(copy, fp16=False, with_mask=False)
    return copy


def _node(ros_context, bundle: Path, *extra):  # pragma: no cover - rclpy machines
    from rclpy.parameter import Parameter

    from sfm_ros.node import SfmNode

    overrides = [Parameter("pipeline.bundle", value=str(bundle)), Parameter("pipeline.backend", value="onnxruntime"),
                 Parameter("publish_tf", value=False), Parameter("lookup_extrinsic_from_tf", value=False),
                 Parameter("scale.source", value="none"), *extra]
    return SfmNode(context=ros_context, parameter_overrides=overrides)


@pytest.mark.parametrize(("name", "value", "reason"), BAD_VALUES)
def test_bad_values_are_refused_at_start(small_bundle: Path, ros_context, name: str, value: object,
                                         reason: str) -> None:  # pragma: no cover - rclpy machines
    from rclpy.parameter import Parameter

    from sfm_ros.config import ConfigError

    with pytest.raises(ConfigError, match=reason):
        _node(ros_context, small_bundle, Parameter(name, value=value))


def test_a_mask_the_bundle_cannot_give_is_refused_at_start(maskless_bundle: Path,
                                                          ros_context) -> None:  # pragma: no cover - rclpy
    from rclpy.parameter import Parameter

    from sfm_ros.backends import BackendError

    with pytest.raises(BackendError, match=NO_MASK):
        _node(ros_context, maskless_bundle, Parameter("publish_mask", value=True))


def test_bad_values_are_refused_live_with_the_reason(maskless_bundle: Path,
                                                    ros_context) -> None:  # pragma: no cover - rclpy
    from rclpy.parameter import Parameter

    node = _node(ros_context, maskless_bundle)
    try:
        for name, value, reason in [*BAD_VALUES, ("publish_mask", True, NO_MASK)]:
            before = node.get_parameter(name).value
            result = node.set_parameters([Parameter(name, value=value)])[0]
            assert not result.successful and reason in result.reason, (name, value, result.reason)
            assert node.get_parameter(name).value == before
        assert node.config.odom_frame == "sfm_odom" and node.config.base_frame == "base_link"
        assert node.mask_publisher is None  # nothing was created for the refused mask
        assert node.set_parameters([Parameter("base_frame", value="camera_rig")])[0].successful
    finally:
        node.destroy_node()
