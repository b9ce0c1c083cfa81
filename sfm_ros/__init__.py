"""sfm_ros: SfMLearner monocular depth and visual odometry for ROS 2.

Runtime modules import only numpy at module level; torch lives in `sfm_ros.models`, `sfm_ros.export`
and the torch backend, so the node runs with onnxruntime or TensorRT and no torch installed.
"""

__version__ = "0.1.0"
