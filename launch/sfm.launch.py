"""Launch the sfm node: `ros2 launch sfm_ros sfm.launch.py bundle:=/path/to/bundle image:=/camera/image_raw`.

The parameter file (params_file) holds the node's settings; bundle, backend, use_sim_time and publish_tf override
it only when given. The two switches accept the spellings ROS users type: true/True/TRUE/1/yes/on and
false/False/FALSE/0/no/off; anything else stops the launch with a message naming the argument.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchContext, LaunchDescription

TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
# Node parameters and the launch argument that overrides each when given (not empty).
OVERRIDES = {"pipeline.bundle": "bundle", "pipeline.backend": "backend", "use_sim_time": "use_sim_time",
             "publish_tf": "publish_tf"}
SWITCHES = ("use_sim_time", "publish_tf")


def switch(name: str, text: str) -> bool:
    """A launch argument's true/false in any of the spellings ROS users type; a ValueError naming it otherwise."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"launch argument {name}:={text!r} must be one of true/false (also True, 1, 0, yes, no, on, off)")


def given_overrides(context: LaunchContext) -> dict:
    """The parameters the launch arguments given on the command line set (the empty default: not given)."""
    overrides = {}
    for parameter, argument in OVERRIDES.items():
        text = LaunchConfiguration(argument).perform(context)
        if text.strip():
            overrides[parameter] = switch(argument, text) if argument in SWITCHES else text
    return overrides


def _node(context: LaunchContext) -> list:
    image = LaunchConfiguration("image").perform(context)
    remappings = [("image", image), ("image/compressed", f"{image}/compressed"),
                  ("camera_info", LaunchConfiguration("camera_info").perform(context))]
    overrides = given_overrides(context)
    parameters = [LaunchConfiguration("params_file").perform(context), *([overrides] if overrides else [])]
    return [Node(package="sfm_ros", executable="sfm_node", name="sfm", namespace=LaunchConfiguration("namespace"),
                 output="screen", emulate_tty=True, remappings=remappings, parameters=parameters)]


def generate_launch_description() -> LaunchDescription:
    default_params = str(Path(get_package_share_directory("sfm_ros")) / "config" / "sfm.yaml")
    unset = " (default: as in params_file)"
    arguments = [
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="camera image topic"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="CameraInfo topic"),
        DeclareLaunchArgument("bundle", default_value="", description="model bundle folder (sfm.json + ONNX)" + unset),
        DeclareLaunchArgument("backend", default_value="", description="auto, tensorrt, onnxruntime or torch" + unset),
        DeclareLaunchArgument("params_file", default_value=default_params, description="node parameter file"),
        DeclareLaunchArgument("use_sim_time", default_value="",
                              description="true with `ros2 bag play --clock` (true/false, True, 1/0)" + unset),
        DeclareLaunchArgument("publish_tf", default_value="",
                              description="broadcast odom_frame -> base_frame (true/false, True, 1/0)" + unset),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_node)])
