"""The camera model the pipeline works with: pinhole intrinsics of the incoming images, and the undistortion of raw
images into them (ROS-free, numpy and OpenCV only)."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

__all__ = ["DISTORTION_MODELS", "OPENCV_COEFFICIENT_COUNTS", "CameraModel", "LensError", "Rectifier",
           "rectification_maps"]

# sensor_msgs/CameraInfo's distortion models this package undistorts (image_geometry's names).
DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant")
# The distortion vector lengths OpenCV's pinhole model takes (k1 k2 p1 p2 [k3 [k4 k5 k6 [s1 s2 s3 s4 [tx ty]]]]),
# as image_geometry passes them for plumb_bob and rational_polynomial alike.
OPENCV_COEFFICIENT_COUNTS = (4, 5, 8, 12, 14)


class LensError(ValueError):
    """A raw image that cannot be undistorted with its CameraInfo: a model not in DISTORTION_MODELS, a D of a length
    the model does not take or not finite, raw intrinsics or a rotation that are not usable, or an image of another
    size."""


@dataclasses.dataclass(frozen=True)
class CameraModel:
    """Pinhole intrinsics of the images the pipeline sees: K [3,3] pixels at (height, width), CameraInfo's rectified
    projection P when set; frame_id is optical. The raw lens, as CameraInfo describes it: distortion_model and D, and
    for undistorting raw images the raw intrinsics K_raw [3,3] and the rectification rotation R [3,3] (None where
    the camera model did not come from a CameraInfo)."""

    K: np.ndarray
    height: int
    width: int
    frame_id: str = "camera_optical_frame"
    distortion_model: str = "plumb_bob"
    D: tuple[float, ...] = ()
    K_raw: np.ndarray | None = None
    R: np.ndarray | None = None

    @property
    def distorted(self) -> bool:
        """Whether the CameraInfo describes lens distortion (a non-zero D): the pipeline is a pinhole model and
        needs rectified images (image_proc's image_rect, or the node's ``rectify``) from such a camera."""
        return any(d != 0.0 for d in self.D)


class Rectifier:
    """Undistorts raw images as image_proc's rectify does (image_geometry's rectifyImage): each pixel of the
    rectified image (K, R, size of the camera model) looks up the raw image through D and K_raw, bilinearly; pixels
    that see outside the raw image are black. Keeps the lookup maps of the last camera model (CameraInfo seldom
    changes)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._maps: tuple[np.ndarray, np.ndarray] | None = None

    def __call__(self, rgb: np.ndarray, camera: CameraModel) -> np.ndarray:
        """rgb [H,W,3] raw, of the camera model's size -> rgb [H,W,3] rectified; raises LensError for a camera model
        it cannot undistort with."""
        if rgb.shape[:2] != (camera.height, camera.width):
            raise LensError(f"raw image is {rgb.shape[1]}x{rgb.shape[0]} but its CameraInfo is "
                            f"{camera.width}x{camera.height} (binning and ROI are not applied here)")
        maps = self._maps_for(camera)
        if maps is None:
            return rgb
        return cv2.remap(rgb, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def _maps_for(self, camera: CameraModel) -> tuple[np.ndarray, np.ndarray] | None:
        K_raw = camera.K if camera.K_raw is None else camera.K_raw
        R = np.eye(3) if camera.R is None or not np.any(camera.R) else camera.R  # an unset R is all zeros
        key = (camera.distortion_model, camera.D, K_raw.tobytes(), R.tobytes(), np.asarray(camera.K).tobytes(),
               camera.height, camera.width)
        if key != self._key:
            self._maps, self._key = rectification_maps(camera.distortion_model, camera.D, K_raw, R,
                                                       np.asarray(camera.K, dtype=np.float64),
                                                       (camera.height, camera.width)), key
        return self._maps


def rectification_maps(distortion_model: str, D: tuple[float, ...], K_raw: np.ndarray, R: np.ndarray,
                       K: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """For each pixel of the rectified image (K [3,3], size (height, width)) where it lies in the raw image (K_raw
    [3,3], distortion_model with D, the rectification rotation R [3,3]): (map_x, map_y) float32 [H,W], for cv2.remap;
    None where the rectified image is the raw one (no distortion, no rotation, the same intrinsics). An empty D is no
    distortion. Unlike image_geometry, which copies the raw image whenever D is zero, a zero D with another K or R is
    still remapped: the pipeline reads the image through K (CameraInfo's P)."""
    coefficients = np.asarray(D, dtype=np.float64)
    if not (np.isfinite(K_raw).all() and np.isfinite(R).all() and K_raw[0, 0] > 0 and K_raw[1, 1] > 0):
        raise LensError(f"CameraInfo's raw intrinsics K = {K_raw.ravel().tolist()} or rectification R = "
                        f"{R.ravel().tolist()} cannot undistort")
    if not np.isfinite(coefficients).all():
        raise LensError(f"CameraInfo's distortion D = {coefficients.tolist()} is not finite")
    if not coefficients.any() and np.allclose(R, np.eye(3)) and np.allclose(K_raw, K):
        return None
    if distortion_model not in DISTORTION_MODELS:
        raise LensError(f"distortion model {distortion_model!r} cannot be undistorted here (supported: "
                        f"{', '.join(DISTORTION_MODELS)}); rectify with image_proc instead")
    height, width = size
    if distortion_model == "equidistant":
        if coefficients.size != 4:
            raise LensError(f"equidistant distortion needs 4 coefficients (k1 k2 k3 k4), CameraInfo has "
                            f"{coefficients.size}")
        return cv2.fisheye.initUndistortRectifyMap(K_raw, coefficients, R, K, (width, height), cv2.CV_32FC1)
    if coefficients.size == 0:
        coefficients = np.zeros(5)
    if coefficients.size not in OPENCV_COEFFICIENT_COUNTS:
        raise LensError(f"{distortion_model} distortion needs {', '.join(map(str, OPENCV_COEFFICIENT_COUNTS))} "
                        f"coefficients (OpenCV's), CameraInfo has {coefficients.size}")
    return cv2.initUndistortRectifyMap(K_raw, coefficients, R, K, (width, height), cv2.CV_32FC1)
