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

    @property
    def distorted(self) -> bool:
        """Whether the CameraInfo describes lens distortion (a non-zero D): the pipeline is a pinhole model and
        needs rectified images (image_proc's image_rect) from such a camera."""
        return any(d != 0.0 for d in self.D)
