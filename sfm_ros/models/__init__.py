"""Networks (torch): DispNet for depth, PoseExpNet for ego-motion and explainability."""

from sfm_ros.models.dispnet import DispNet, dispnet
from sfm_ros.models.posenet import PoseExpNet, posenet

__all__ = ["DispNet", "PoseExpNet", "dispnet", "posenet"]
