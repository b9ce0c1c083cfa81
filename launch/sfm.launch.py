"""Launch the sfm node: `ros2 launch sfm_ros sfm.launch.py bundle:=/path/to/bundle image:=/camera/image_raw`."""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    default_params = str(Path(get_package_share_directory("sfm_ros")) / "config" / "sfm.yaml")
    arguments = [
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="camera image topic"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="CameraInfo topic"),
        DeclareLaunchArgument("bundle", default_value="", description="model bundle folder (sfm.json + ONNX)"),
        DeclareLaunchArgument("backend", default_value="auto", description="auto, tensorrt, onnxruntime or torch"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="node parameter file"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="true with `ros2 bag play --clock`"),
        DeclareLaunchArgument("publish_tf", default_value="true", description="broadcast odom -> base_link"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
    ]
    overrides = {"pipeline.backend": LaunchConfiguration("backend"),
                 "use_sim_time": PythonExpression(["'", LaunchConfiguration("use_sim_time"), "' == 'true'"]),
                 "publish_tf": PythonExpression(["'", LaunchConfiguration("publish_tf"), "' == 'true'"])}
    remappings = [("image", LaunchConfiguration("image")), ("image/compressed", [LaunchConfiguration("image"),
                                                                                 "/compressed"]),
                  ("camera_info", LaunchConfiguration("camera_info"))]
    has_bundle = PythonExpression(["'", LaunchConfiguration("bundle"), "' != ''"])

    def node(condition: object, extra: dict) -> Node:
        return Node(package="sfm_ros", executable="sfm_node", name="sfm", namespace=LaunchConfiguration("namespace"),
                    output="screen", emulate_tty=True, condition=condition, remappings=remappings,
                    parameters=[LaunchConfiguration("params_file"), {**overrides, **extra}])

    return LaunchDescription([
        *arguments,
        # The bundle argument overrides the parameter file only when given.
        node(IfCondition(has_bundle), {"pipeline.bundle": LaunchConfiguration("bundle")}),
        node(UnlessCondition(has_bundle), {}),
    ])
