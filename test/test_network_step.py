"""The network's step (sfm_ros.odometry.network): which frames the pose net sees, and how its poses compose."""

from __future__ import annotations

import numpy as np
import pytest

from sfm_ros.backends import preprocess
from sfm_ros.bundle import BundleMetadata
from sfm_ros.camera import CameraModel
from sfm_ros.geometry import euler_to_matrix
from sfm_ros.odometry.network import (
    PoseWindow,
    depth_frame_before,
    grey_from_preprocessed,
    network_step,
    relative_pose,
    remember_frame,
)
from test.odometry_support import euler_xyz

HEIGHT, WIDTH = 8, 16


def camera_pose(x: float, z: float, yaw: float) -> np.ndarray:
    """T_world_camera [4,4]: the camera at (x, 0, z), turned by ``yaw`` about its y axis."""
    T = np.eye(4)
    T[:3, :3] = euler_to_matrix(0.0, yaw, 0.0)
    T[:3, 3] = (x, 0.0, z)
    return T


# Three frames of a camera driving forward and turning: t-2, t-1, t.
DRIVE = [camera_pose(0.0, 0.0, 0.0), camera_pose(0.1, 1.0, 0.05), camera_pose(0.3, 2.1, 0.12)]


class TruthBackend:
    """Gives the poses of ``DRIVE`` as a pose net would: T_source_target for sources (t-2, t) about target t-1, as
    [tx ty tz rx ry rz]; depth 1/disparity of 0.5 everywhere."""

    metadata = BundleMetadata(height=HEIGHT, width=WIDTH)

    def __init__(self, check_frames: bool = False) -> None:
        self.pose_calls, self.check_frames = 0, check_frames

    def infer_depth(self, image: np.ndarray) -> np.ndarray:
        return np.full((1, 1, HEIGHT, WIDTH), 0.5, np.float32)

    def infer_pose(self, target: np.ndarray, sources: np.ndarray):
        self.pose_calls += 1
        if self.check_frames:  # each frame is filled with its index in the window: t-1 is the target
            assert target.shape == (1, 3, HEIGHT, WIDTH) and sources.shape == (1, 2, 3, HEIGHT, WIDTH)
            assert np.all(target == 1) and np.all(sources[0, 0] == 0) and np.all(sources[0, 1] == 2)
        vectors = []
        for source in (0, 2):
            T = np.linalg.inv(DRIVE[source]) @ DRIVE[1]
            vectors.append(np.r_[T[:3, 3], euler_xyz(T[:3, :3])])
        return np.asarray(vectors), None


def frames(count: int) -> list[np.ndarray]:
    """Preprocessed frames [1,3,H,W], oldest first, each filled with its index."""
    return [np.full((1, 3, HEIGHT, WIDTH), index, np.float32) for index in range(count)]


def test_the_pose_of_the_newest_frame_and_the_catch_up_compose_from_the_window_by_hand() -> None:
    T_prev_current, T_catch_up, mask = relative_pose(TruthBackend(check_frames=True), frames(3), first=True)
    np.testing.assert_allclose(T_prev_current, np.linalg.inv(DRIVE[1]) @ DRIVE[2], atol=1e-9)
    np.testing.assert_allclose(T_catch_up, np.linalg.inv(DRIVE[0]) @ DRIVE[1], atol=1e-9)
    assert mask is None
    assert relative_pose(TruthBackend(), frames(3), first=False)[1] is None


def test_a_frame_enters_the_window_only_after_the_pose_interval_and_the_first_full_window_catches_up() -> None:
    backend, window = TruthBackend(), PoseWindow(3)
    camera = CameraModel(K=np.diag([20.0, 20.0, 1.0]), height=HEIGHT, width=WIDTH)
    rgb = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    steps = []
    for stamp_s in (0.0, 0.1, 0.15, 0.2, 0.3):  # 0.15 s comes 0.05 s after the last frame in the window
        steps.append(network_step(backend, window, int(stamp_s * 1e9), rgb, camera, None, 0.09, needs_grey=True)[0])
    assert [step.T_prev_current is not None for step in steps] == [False, False, False, True, True]
    assert [step.T_catch_up is not None for step in steps] == [False, False, False, True, False]
    assert [step.grey is not None for step in steps] == [True, True, False, True, True]
    assert backend.pose_calls == 2
    assert steps[3].dt_s == pytest.approx(0.1) and steps[2].dt_s is None
    np.testing.assert_allclose(steps[0].depth_units, 2.0)
    np.testing.assert_allclose(steps[0].K, np.diag([20.0, 20.0, 1.0]))  # the input is already the network's size


def test_the_grey_image_undoes_the_normalisation() -> None:
    metadata = BundleMetadata(height=HEIGHT, width=WIDTH, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    rgb = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    grey = grey_from_preprocessed(preprocess(rgb, metadata), metadata)
    assert grey.dtype == np.float32 and grey.shape == (HEIGHT, WIDTH)
    np.testing.assert_allclose(grey, rgb.mean(axis=-1) / 255.0, atol=1e-6)


class PairRecordingBackend(TruthBackend):
    """A two-frame depth net's backend that records the frame indices of each depth input (frames are filled with
    their index, which the normalisation maps to index / 127.5 - 1)."""

    metadata = BundleMetadata(height=HEIGHT, width=WIDTH, dispnet={"alpha": 10.0, "beta": 0.01, "input_frames": 2})

    def __init__(self) -> None:
        super().__init__()
        self.pairs: list[tuple[int, int]] = []

    def infer_depth(self, image: np.ndarray) -> np.ndarray:
        assert image.shape == (1, 6, HEIGHT, WIDTH)
        indices = np.rint((image[0, [0, 3]].reshape(2, -1) + 1.0) * 127.5)
        assert np.all(indices == indices[:, :1])
        self.pairs.append((int(indices[0, 0]), int(indices[1, 0])))
        return super().infer_depth(image)


@pytest.mark.parametrize(("interval_s", "expected"), [
    # every frame enters the window: each frame is paired with the one just before it, the first with itself
    (0.0, [(0, 0), (1, 0), (2, 1), (3, 2), (4, 3)]),
    # 30 Hz with a 0.09 s window spacing (frames 0 and 3 enter the pose window): frame 4's gaps are 0.133, 0.1, 0.067
    # and 0.033 s to frames 0-3, and 0.1 (frame 1, which never entered the window) is the nearest to 0.09
    (0.09, [(0, 0), (1, 0), (2, 0), (3, 0), (4, 1)]),
])
def test_a_two_frame_depth_net_reads_the_frame_then_the_recent_frame_nearest_the_spacing(
        interval_s: float, expected: list[tuple[int, int]]) -> None:
    backend, window = PairRecordingBackend(), PoseWindow(3)
    camera = CameraModel(K=np.diag([20.0, 20.0, 1.0]), height=HEIGHT, width=WIDTH)
    for index in range(5):
        rgb = np.full((HEIGHT, WIDTH, 3), index, np.uint8)
        network_step(backend, window, round(index / 30 * 1e9), rgb, camera, None, interval_s, needs_grey=False)
    assert backend.pairs == expected


def test_the_depth_frame_before_is_the_nearest_gap_to_the_spacing_and_the_newer_on_a_tie() -> None:
    recent = [(stamp_ns, np.full((1, 3, 1, 1), value, np.float32))
              for stamp_ns, value in ((0, 0.0), (250_000_000, 1.0), (500_000_000, 2.0))]
    # from 0.625 s: gaps 0.125 (frame 2) and 0.375 (frame 1) are both 0.125 from 0.25: the newer wins
    assert depth_frame_before(recent, 625_000_000, 0.25)[0, 0, 0, 0] == 2.0
    assert depth_frame_before(recent, 625_000_000, 0.6)[0, 0, 0, 0] == 0.0
    assert depth_frame_before(recent, 500_000_000, 0.0)[0, 0, 0, 0] == 1.0  # a frame is never its own before
    assert depth_frame_before(recent, 0, 0.1) is None and depth_frame_before([], 5, 0.1) is None


def test_recent_frames_keep_only_what_a_later_frame_could_pair_with() -> None:
    recent: list = []
    for index in range(6):  # 0.05 s apart, spacing 0.1 s
        recent = remember_frame(recent, index * 50_000_000, np.full(1, index), 0.1)
    # at 0.25 s frame 3 (0.1 s back) is the newest at least the spacing old: frames 0-2 can never be nearer for a later
    # frame, whose gaps to them only grow
    assert [int(frame[0]) for _, frame in recent] == [3, 4, 5]
    kept = []
    for index in range(3):  # spacing 0: only the newest frame is kept
        kept = remember_frame(kept, index, np.full(1, index), 0.0)
    assert [int(frame[0]) for _, frame in kept] == [1, 2]
