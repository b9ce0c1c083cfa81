"""Test support for the odometry: stand-in backends that give a rendered street's exact depth and true poses (with a
known error), and the frames' helpers the odometry tests share."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import cv2
import numpy as np

from sfm_ros import kitti
from sfm_ros.camera import CameraModel
from sfm_ros.config import PipelineConfig
from sfm_ros.geometry import transform_from_xyz_quaternion
from sfm_ros.odometry.align import se3_exp
from sfm_ros.odometry.pipeline import Estimate, Pipeline
from test.conftest import SAMPLE
from training.synth_streets import StreetSplit

STREETS = SAMPLE / "synth_streets"


def grey(path) -> np.ndarray:
    """An image file as grey float32 [H,W] in [0, 1], as the alignments take it."""
    return cv2.cvtColor(kitti.load_rgb(path), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255


def angle_deg(T: np.ndarray) -> float:
    """The rotation angle of T [4,4], degrees."""
    return float(np.degrees(np.linalg.norm(cv2.Rodrigues(T[:3, :3])[0])))


def euler_xyz(R: np.ndarray) -> np.ndarray:
    """Angles (rx, ry, rz) of R = Rx Ry Rz, by the closed form of that product's entries."""
    return np.array([math.atan2(-R[1, 2], R[2, 2]), math.asin(R[0, 2]), math.atan2(-R[0, 1], R[0, 0])])


def in_odom(T_first_current: np.ndarray) -> np.ndarray:
    """A camera pose relative to the first camera, in the pipeline's odom frame (base_link axes, REP 103) with the
    default mounting."""
    return transform_from_xyz_quaternion(PipelineConfig().T_base_camera) @ T_first_current


def drive_street(pipeline: Pipeline, backend: BiasedTruth, split: StreetSplit, street: int, frames: Iterable[int]
                 ) -> Iterator[tuple[int, Estimate]]:
    """Frames ``frames`` of a rendered street through ``pipeline`` at 10 Hz, its stand-in ``backend`` shown each frame
    first: yields (frame index, the pipeline's estimate)."""
    paths = kitti.image_files(split.folders[street])
    height, width = split.depth.shape[-2:]
    camera = CameraModel(K=split.K, height=height, width=width)
    for i in frames:
        backend.show(i)
        yield i, pipeline.process(i * 100_000_000, kitti.load_rgb(paths[i]), camera)


class BiasedTruth:
    """A backend that returns the exact depth of a rendered street and its true poses, each off by a known error
    ``error_xi`` (a twist applied to every T_source_target, as a pose net's bias). ``show(index)`` says which of the
    street's frames the pipeline is about to process; the pose window is the last three shown."""

    name = description = "biased truth"
    has_mask = False

    def __init__(self, split, street: int, error_xi) -> None:
        from sfm_ros.bundle import BundleMetadata

        self.metadata = BundleMetadata(height=64, width=208)
        self.split, self.street, self.error_xi = split, street, np.asarray(error_xi, dtype=np.float64)
        self.shown: list[int] = []

    def show(self, index: int) -> None:
        self.shown.append(index)

    def infer_depth(self, image: np.ndarray) -> np.ndarray:
        depth = self.split.depth[self.street, self.shown[-1]].astype(np.float64)
        return np.where(depth > 0, 1 / np.maximum(depth, 1e-6), 1e-3)[None, None].astype(np.float32)

    def infer_pose(self, target: np.ndarray, sources: np.ndarray):
        from sfm_ros.geometry import pose_vec_to_mat

        poses = self.split.T_world_cam[self.street]
        before, centre, after = self.shown[-3:]
        vectors = []
        for source in (before, after):
            T = se3_exp(self.error_xi) @ np.linalg.inv(poses[source]) @ poses[centre]
            vectors.append(np.r_[T[:3, 3], euler_xyz(T[:3, :3])])
            np.testing.assert_allclose(pose_vec_to_mat(vectors[-1]), T, atol=1e-9)
        return np.asarray(vectors, np.float32), None


class OvershootingTruth(BiasedTruth):
    """The exact depth of a rendered street and its true rotations, with every translation ``factor`` times too
    long: a pose net whose steps disagree with its depth."""

    def __init__(self, split, street: int, factor: float) -> None:
        super().__init__(split, street, np.zeros(6))
        self.factor = factor

    def infer_pose(self, target: np.ndarray, sources: np.ndarray):
        vectors, mask = super().infer_pose(target, sources)
        vectors[:, :3] *= self.factor
        return vectors, mask
