"""The camera model the pipeline works with: pinhole intrinsics of the incoming images (ROS-free, numpy only)."""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["CameraModel"]


@dataclasses.dataclass(frozen=True)
class CameraModel:
    """Pinhole intrinsics of the incoming images: K [3,3] pixels at (height, width); frame_id is optical."""

    K: np.ndarray
    height: int
    width: int
    frame_id: str = "camera_optical_frame"
    distortion_model: str = "plumb_bob"
    D: tuple[float, ...] = ()
