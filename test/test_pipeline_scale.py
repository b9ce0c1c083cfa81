"""The ROS-free pipeline, metric scale, replay and the newest-frame-wins worker, on real KITTI-derived bags."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from sfm_ros.bags import read_camera_frames, read_odometry
from sfm_ros.camera import CameraModel
from sfm_ros.config import PipelineConfig, ScaleConfig
from sfm_ros.geometry import backproject, pose_vec_to_mat
from sfm_ros.odometry.pipeline import FrameError, Pipeline, RestartCause
from sfm_ros.scale import ExternalSpeedScale, GroundPlaneScale, ScaleObservation, fit_ground_plane
from sfm_ros.worker import LatestFrameWorker

K_NET = np.array([[120.0, 0, 103.5], [0, 120.0, 31.5], [0, 0, 1]])


class FakeBackend:
    """A deterministic backend: constant disparity and a fixed relative pose (for exact pipeline checks)."""

    name = "fake"
    description = "fake"
    has_mask = False

    def __init__(self, metadata, disparity: float = 0.1, pose: np.ndarray | None = None) -> None:
        self.metadata = metadata
        self.disparity = disparity
        self.pose = pose if pose is not None else np.array([0, 0, -0.1, 0, 0, 0.0])  # target->source per frame
        self.calls = 0

    def infer_depth(self, image: np.ndarray) -> np.ndarray:
        return np.full((1, 1, *image.shape[-2:]), self.disparity, np.float32)

    def infer_pose(self, target: np.ndarray, sources: np.ndarray):
        self.calls += 1
        # sources = (t-2, t); T_source_target: t-2 is behind the target (t-1), t is ahead. With constant motion
        # T_(t-2)<-(t-1) is the inverse of T_t<-(t-1): the negated vector for the pure translations and single-axis
        # rotations used here.
        return np.stack([-self.pose, self.pose]).astype(np.float32), None


def fake_pipeline(**config: object) -> tuple[Pipeline, FakeBackend]:
    from sfm_ros.bundle import BundleMetadata

    backend = FakeBackend(BundleMetadata(height=64, width=208))
    scale = config.pop("scale", ScaleConfig(source="fixed", fixed_factor=2.0))
    return Pipeline(PipelineConfig(**config), scale, backend=backend), backend


CAMERA = CameraModel(K=K_NET * [[2], [2], [1]] + [[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]], height=128, width=416,
                     frame_id="cam")


def frame(value: int = 100) -> np.ndarray:
    return np.full((128, 416, 3), value, np.uint8)


def test_pose_from_the_window_has_no_frame_of_delay_and_is_scaled() -> None:
    pipeline, backend = fake_pipeline()
    first = pipeline.process(0, frame(), CAMERA)
    second = pipeline.process(100_000_000, frame(), CAMERA)
    assert first.T_prev_current is None and second.T_prev_current is None and backend.calls == 0
    third = pipeline.process(200_000_000, frame(), CAMERA)
    # T_t<-(t-1) is the pose vector's transform; the pose of t in t-1 is its inverse: 0.1 forward, x2 scale.
    np.testing.assert_allclose(third.T_prev_current[:3, 3], [0, 0, 0.2], atol=1e-9)
    # The first window also gave frame 1 in frame 0 (0.2): at frame 2 the camera is 0.4 from frame 0, no step lost.
    np.testing.assert_allclose((np.linalg.inv(first.T_odom_camera) @ third.T_odom_camera)[:3, 3], [0, 0, 0.4],
                               atol=1e-9)
    fourth = pipeline.process(300_000_000, frame(), CAMERA)
    # In the first camera's optical frame the camera moved 3 x 0.2 along z ...
    in_first_camera = np.linalg.inv(first.T_odom_camera) @ fourth.T_odom_camera
    np.testing.assert_allclose(in_first_camera[:3, 3], [0, 0, 0.6], atol=1e-9)
    # ... which is x (forward) in odom and for base_link (REP 103/105).
    np.testing.assert_allclose(fourth.T_odom_base[:3, 3], [0.6, 0, 0], atol=1e-9)
    np.testing.assert_allclose(fourth.T_odom_camera[:3, 3], [0.6, 0, 0], atol=1e-9)
    assert third.depth_m.shape == (64, 208) and float(third.depth_m[0, 0]) == pytest.approx(20.0)
    np.testing.assert_allclose(third.camera_info_scaled.K, K_NET, atol=1e-9)
    assert set(third.timings_ms) == {"preprocess", "depth", "pose", "scale", "refine", "ground", "total"}
    assert third.timings_ms["total"] >= third.timings_ms["depth"] + third.timings_ms["scale"]


def test_rotation_composes_in_the_camera_frame() -> None:
    # The chain's odometry: the fake's frames are featureless, and what an alignment makes of them is not the point.
    pipeline, backend = fake_pipeline(odometry="chain")
    backend.pose = np.array([0, 0, 0, 0, 0.05, 0])  # a yaw about the optical y axis, no translation
    estimates = [pipeline.process(i * 100_000_000, frame(), CAMERA) for i in range(5)]
    # Four relative poses of inverse(R_y(0.05)) each (frames 0 -> 4), in the first camera's frame.
    in_first_camera = np.linalg.inv(estimates[0].T_odom_camera) @ estimates[-1].T_odom_camera
    np.testing.assert_allclose(in_first_camera, np.linalg.matrix_power(
        np.linalg.inv(pose_vec_to_mat(backend.pose)), 4), atol=1e-12)


def test_covariance_grows_never_zero_and_inflates_on_resets() -> None:
    pipeline, _ = fake_pipeline()
    stamps = [0, 1, 2, 3, 4]
    estimates = [pipeline.process(s * 100_000_000, frame(), CAMERA) for s in stamps]
    traces = [np.trace(e.covariance) for e in estimates]
    assert all(t > 0 for t in traces)
    assert traces[-1] > traces[2]
    backwards = pipeline.process(100_000_000, frame(), CAMERA)
    assert any("time went backwards" in e for e in backwards.events)
    assert np.trace(backwards.covariance) > traces[-1] * 10
    assert backwards.T_prev_current is None  # the window restarted


INITIAL = np.diag([1e-6] * 3 + [1e-6] * 3)  # the pose covariance at a (re)start: 1 mm and 1 mrad


def test_covariance_grows_with_motion_not_time_and_the_heading_error_swings_the_position() -> None:
    pipeline, _ = fake_pipeline()  # fixed metric scale x2: each step moves 0.1 x 2 = 0.2 m forward
    estimates = [pipeline.process(i * 100_000_000, frame(), CAMERA) for i in range(4)]
    np.testing.assert_allclose(estimates[0].covariance, INITIAL, atol=1e-15)
    np.testing.assert_allclose(estimates[1].covariance, INITIAL, atol=1e-15)
    # A step of L = 0.2 m: translation std 0.05 x 0.2 = 0.01 m (variance 1e-4 on each axis), rotation std 5e-4 x 0.2
    # = 1e-4 rad (variance 1e-8). Frame 2 is N = 2 steps on (the first window's catch-up and its own), frame 3 three.
    # By hand, driving straight along base_link x: a heading error before step k swings every later step sideways,
    # so the sideways error is the sum of the steps' own, the start's heading error over all N L metres, and step i's
    # rotation error over the (N - i) steps after it; yaw swings y, pitch swings z the other way (nose up, z down).
    sigma_t2, sigma_r2, start2, length = 1e-4, 1e-8, 1e-6, 0.2
    for frame_index, steps in ((2, 2), (3, 3)):
        lever = sum((steps - i) ** 2 for i in range(1, steps))
        lever_sum = sum(steps - i for i in range(1, steps))
        sideways = start2 + steps * sigma_t2 + start2 * (steps * length) ** 2 + sigma_r2 * length**2 * lever
        heading = start2 + steps * sigma_r2
        sideways_heading = start2 * steps * length + sigma_r2 * length * lever_sum
        expected = np.diag([start2 + steps * sigma_t2, sideways, sideways, heading, heading, heading])
        expected[1, 5] = expected[5, 1] = sideways_heading
        expected[2, 4] = expected[4, 2] = -sideways_heading
        np.testing.assert_allclose(estimates[frame_index].covariance, expected, rtol=1e-6, atol=1e-15)
    # Standing still at 30 Hz for a second adds nothing.
    still, still_backend = fake_pipeline()
    still_backend.pose = np.zeros(6)
    for i in range(30):
        estimate = still.process(i * 33_333_333, frame(), CAMERA)
    np.testing.assert_allclose(estimate.covariance, INITIAL, atol=1e-15)


def test_unhealthy_scale_multiplies_standard_deviations() -> None:
    pipeline, _ = fake_pipeline(scale=ScaleConfig(source="none"))  # not metric: steps of 0.1 network units
    estimates = [pipeline.process(i * 100_000_000, frame(), CAMERA) for i in range(3)]
    # sigma = 0.05 x 0.1 x 10 (unscaled_sigma_factor) = 0.05 -> variance 2.5e-3 per step, two steps at frame 2 (along
    # the travel, base_link x, where no heading error reaches).
    assert estimates[2].covariance[0, 0] == pytest.approx(1e-6 + 2 * 2.5e-3, rel=1e-6)
    pipeline.reset("test")
    after_reset = pipeline.process(10**9, frame(), CAMERA)
    np.testing.assert_allclose(after_reset.T_odom_base, np.eye(4), atol=1e-15)
    np.testing.assert_allclose(after_reset.covariance, INITIAL, atol=1e-15)


def test_twist_is_the_body_velocity_of_the_last_step() -> None:
    pipeline, backend = fake_pipeline(odometry="chain")  # featureless frames: the chain's steps, exactly
    estimates = [pipeline.process(i * 100_000_000, frame(), CAMERA) for i in range(3)]
    assert estimates[1].twist is None and np.all(np.diag(estimates[1].twist_covariance) >= 1e6)
    # 0.2 m forward in 0.1 s: 2 m/s along base_link x; std 0.01 m / 0.1 s = 0.1 m/s (above the 0.05 floor),
    # angular std 1e-4 rad / 0.1 s = 1e-3 rad/s, below the floor 0.01.
    np.testing.assert_allclose(estimates[2].twist, [2.0, 0, 0, 0, 0, 0], atol=1e-9)
    np.testing.assert_allclose(np.diag(estimates[2].twist_covariance), [1e-2] * 3 + [1e-4] * 3, rtol=1e-6)
    assert estimates[2].dt_s == pytest.approx(0.1)
    # A yaw of 0.05 rad a frame about the optical y axis (down) is a left turn about base_link z: +0.5 rad/s.
    turning, backend = fake_pipeline(odometry="chain")
    backend.pose = np.array([0, 0, 0, 0, 0.05, 0])
    estimates = [turning.process(i * 100_000_000, frame(), CAMERA) for i in range(3)]
    np.testing.assert_allclose(estimates[2].twist, [0, 0, 0, 0, 0, 0.5], atol=1e-9)
    # At 30 Hz with min_pose_interval_s 0.09 the step spans the frames it skipped: 0.2 m in 0.1 s.
    fast, _ = fake_pipeline(min_pose_interval_s=0.09)
    estimates = [fast.process(i * 33_333_333, frame(), CAMERA) for i in range(0, 10)]
    with_twist = [e for e in estimates if e.twist is not None]
    assert with_twist and with_twist[0].dt_s == pytest.approx(0.1)
    np.testing.assert_allclose(with_twist[0].twist[0], 0.2 / 0.1, rtol=1e-6)


def test_gaps_size_changes_and_bad_frames() -> None:
    pipeline, _ = fake_pipeline(max_frame_gap_s=0.5)
    pipeline.process(0, frame(), CAMERA)
    gap = pipeline.process(2_000_000_000, frame(), CAMERA)
    assert any("gap of 2.000 s" in e for e in gap.events)
    small = CameraModel(K=K_NET, height=64, width=208)
    resized = pipeline.process(2_100_000_000, np.zeros((64, 208, 3), np.uint8), small)
    assert any("image size changed from 416x128 to 208x64" in e for e in resized.events)
    with pytest.raises(FrameError, match="uint8"):
        pipeline.process(3_000_000_000, np.zeros((64, 208, 3), np.float32), small)
    with pytest.raises(FrameError, match="camera model is 208x64"):
        pipeline.process(3_000_000_000, frame(), small)
    pipeline.reset("test")
    assert pipeline.process(4_000_000_000, frame(), CAMERA).events == ("reset: test",)


def test_depth_at_input_size_and_far_depth_is_infinite() -> None:
    pipeline, _backend = fake_pipeline(depth_output_size="input", max_depth_m=10.0)
    estimate = pipeline.process(0, frame(), CAMERA)
    assert estimate.depth_m.shape == (128, 416) and np.isinf(estimate.depth_m).all()  # 20 m > 10 m
    np.testing.assert_allclose(estimate.camera_info_scaled.K, CAMERA.K)


def test_min_pose_interval_subsamples_a_fast_camera() -> None:
    pipeline, backend = fake_pipeline(min_pose_interval_s=0.09)
    for i in range(9):  # a 30 Hz camera: every third frame enters the pose window
        pipeline.process(i * 33_333_333, frame(), CAMERA)
    assert backend.calls == 1


def plane_depth(height_m: float, K: np.ndarray, shape: tuple[int, int], tilt: float = 0.0) -> np.ndarray:
    """Depth of a ground plane height_m below the camera (optical y down), optionally pitched."""
    v, _u = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    ray_y = (v - K[1, 2]) / K[1, 1] + tilt
    with np.errstate(divide="ignore"):
        depth = np.where(ray_y > 0.02, height_m / ray_y, 200.0)
    return depth


LEVEL = np.array([0.0, 1.0, 0.0])  # the ground's normal, pointing down, of a level camera (optical frame)


@pytest.mark.parametrize("ground_plane", ["mounting", "fit"])
def test_ground_plane_on_a_synthetic_plane_gives_the_exact_scale(ground_plane: str) -> None:
    config = ScaleConfig(camera_height_m=1.65, smoothing=0.0, ground_plane=ground_plane)
    estimator = GroundPlaneScale(config)
    depth = plane_depth(0.5, K_NET, (64, 208))  # the network thinks the camera is 0.5 units high
    estimate = estimator.update(ScaleObservation(depth=depth, K=K_NET, ground_normal=LEVEL))
    assert estimate.healthy and estimate.factor == pytest.approx(1.65 / 0.5, rel=1e-6)
    if ground_plane == "mounting":  # the ground ahead, within 3 m sideways, in the lower 40 %
        assert estimate.ground[40:].any() and not estimate.ground[:38].any()
    else:
        assert estimate.ground is None


def test_the_mountings_plane_needs_the_mounting() -> None:
    estimate = GroundPlaneScale(ScaleConfig()).update(ScaleObservation(depth=plane_depth(0.5, K_NET, (64, 208)),
                                                                       K=K_NET))
    assert not estimate.healthy and "mounting" in estimate.reason


def test_the_mountings_plane_ignores_objects_on_the_ground_and_fails_without_ground() -> None:
    """Something standing on the road breaks the depth's ratio to the mounting's plane and drops out, so the scale
    stays exact; a wall filling the view agrees with the plane nowhere: a failure that says so, not a number."""
    depth = plane_depth(0.5, K_NET, (64, 208))
    depth[44:, 95:115] *= 0.8  # something standing on the road ahead
    estimate = GroundPlaneScale(ScaleConfig(smoothing=0.0)).update(
        ScaleObservation(depth=depth, K=K_NET, ground_normal=LEVEL))
    assert estimate.healthy and estimate.factor == pytest.approx(3.3, rel=1e-6)
    assert not estimate.ground[44:, 95:115].any() and estimate.ground[44:, 60:95].any()
    wall = GroundPlaneScale(ScaleConfig(smoothing=0.0)).update(ScaleObservation(
        depth=np.full((64, 208), 5.0), K=K_NET, ground_normal=LEVEL))
    assert not wall.healthy and "agrees with the ground plane" in wall.reason


def test_before_the_first_healthy_scale_a_partly_hidden_road_gives_a_provisional_one() -> None:
    """A car ahead hides most of the road: 22 % of the lower image agrees with the mounting's plane, too little to be
    healthy. Before any healthy scale, the ratio of the road that does agree stands (exactly 1.65 / 0.5), flagged
    unhealthy and provisional, and is held through a frame that offers none, instead of the network's units (factor 1,
    not metric). A wall filling the view agrees along a band of rows at one depth, which gives none, whatever the
    ground region (18-28 % of it agree). After a healthy scale, the healthy one is held."""
    hidden = plane_depth(0.5, K_NET, (64, 208))
    hidden[38:, 70:140] = 4.0  # a car's back, 4 units away, across the road ahead
    wall = np.full((64, 208), 5.0)

    def observe(estimator: GroundPlaneScale, depth: np.ndarray):
        return estimator.update(ScaleObservation(depth=depth, K=K_NET, ground_normal=LEVEL))

    for region in (0.4, 0.3, 0.2):
        blocked = observe(GroundPlaneScale(ScaleConfig(smoothing=0.0, ground_region=region)), wall)
        assert not blocked.healthy and not blocked.metric and blocked.factor == 1.0, region
    estimator = GroundPlaneScale(ScaleConfig(smoothing=0.0))
    first = observe(estimator, hidden)
    assert not first.healthy and first.metric and "provisional" in first.reason and "22%" in first.reason
    assert first.factor == pytest.approx(3.3, rel=1e-6)
    held = observe(estimator, wall)
    assert not held.healthy and held.metric and held.factor == pytest.approx(3.3, rel=1e-6)
    assert "holding the provisional scale" in held.reason
    healthy = observe(estimator, plane_depth(0.25, K_NET, (64, 208)))
    assert healthy.healthy and healthy.factor == pytest.approx(6.6, rel=1e-6)
    held = observe(estimator, hidden)
    assert not held.healthy and held.factor == pytest.approx(6.6, rel=1e-6) and "holding the last" in held.reason


def test_ground_plane_is_robust_to_objects_above_the_ground() -> None:
    # RANSAC is random: judge it over 100 seeds (one seed's error ranges 0-8 %; over 200 seeds the median is 1.2 %).
    errors = []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        depth = plane_depth(0.5, K_NET, (64, 208))
        depth[40:, 80:130] = rng.uniform(2, 4, size=(24, 50))  # a car's rear in the lower image
        estimator = GroundPlaneScale(ScaleConfig(smoothing=0.0, ground_plane="fit"), seed=seed)
        estimate = estimator.update(ScaleObservation(depth=depth, K=K_NET))
        assert estimate.healthy
        errors.append(abs(estimate.factor / 3.3 - 1))
    assert np.median(errors) < 0.02 and np.percentile(errors, 90) < 0.06 and max(errors) < 0.10
    rng = np.random.default_rng(0)
    points = backproject(depth, K_NET)[40:].reshape(-1, 3)
    fit = fit_ground_plane(points, rng, 200, 0.02, 30.0)
    assert fit is not None and fit[1] == pytest.approx(0.5, rel=0.01) and fit[2] < 0.9


@pytest.mark.parametrize(("tilt_deg", "found"), [(0.0, True), (20.0, True), (45.0, False)])
def test_ground_plane_tilt_limit(tilt_deg: float, found: bool) -> None:
    rng = np.random.default_rng(1)
    tilt = np.radians(tilt_deg)
    normal = np.array([np.sin(tilt), np.cos(tilt), 0.0])  # a slope rising to the left, 1.2 below the camera
    in_plane = np.cross(normal, [0.0, 0.0, 1.0]), np.array([0.0, 0.0, 1.0])
    coords = rng.uniform(-5, 5, size=(1500, 2)) + np.array([0.0, 10.0])
    points = 1.2 * normal + coords[:, :1] * in_plane[0] + coords[:, 1:] * in_plane[1]
    fit = fit_ground_plane(points, rng, 100, 0.01, max_tilt_deg=30.0)
    if not found:
        assert fit is None
        return
    assert fit is not None
    np.testing.assert_allclose(fit[0], normal, atol=1e-9)
    assert fit[1] == pytest.approx(1.2, rel=1e-9) and fit[2] == 1.0


def test_no_ground_is_a_failure_flag_not_a_number() -> None:
    wall = np.full((64, 208), 5.0)  # a fronto-parallel wall fills the view: no plane near horizontal
    estimate = GroundPlaneScale(ScaleConfig()).update(ScaleObservation(depth=wall, K=K_NET))
    assert not estimate.healthy and not estimate.metric and "no ground" in estimate.reason


def test_external_speed_scale_and_standstill() -> None:
    estimator = ExternalSpeedScale(ScaleConfig(smoothing=0.0, min_speed_mps=0.3))
    assert not estimator.update(ScaleObservation(translation_units=0.1, dt_s=0.1)).healthy  # no speed yet
    estimator.observe_speed(10.0)
    estimate = estimator.update(ScaleObservation(translation_units=0.5, dt_s=0.1))
    assert estimate.healthy and estimate.factor == pytest.approx(2.0)
    estimator.observe_speed(0.0)
    standstill = estimator.update(ScaleObservation(translation_units=0.01, dt_s=0.1))
    assert not standstill.healthy and "standstill" in standstill.reason and standstill.factor == pytest.approx(2.0)


def test_a_speed_that_is_not_finite_is_refused_and_the_scale_stays_finite() -> None:
    """One NaN twist from wheel odometry used to be smoothed into the factor, which then stayed NaN for good: every
    later frame was dropped as not finite, and a reset did not help."""
    pipeline, _ = fake_pipeline(scale=ScaleConfig(source="external_speed", smoothing=0.5), odometry="chain")
    pipeline.set_speed(5.0)
    for i in range(4):
        pipeline.process(i * 100_000_000, frame(), CAMERA)
    with pytest.raises(ValueError, match="finite"):
        pipeline.set_speed(float("nan"))
    for i in range(4, 7):
        estimate = pipeline.process(i * 100_000_000, frame(), CAMERA)
        assert estimate.scale.healthy and np.isfinite(estimate.T_odom_base).all()
        # 5 m/s held over 0.1 s: each step 0.5 m long.
        assert np.linalg.norm(estimate.T_prev_current[:3, 3]) == pytest.approx(0.5, rel=1e-6)
    # The estimator itself refuses a measurement that is not a positive number and holds its factor.
    estimator = ExternalSpeedScale(ScaleConfig(smoothing=0.0))
    estimator.observe_speed(10.0)
    assert estimator.update(ScaleObservation(translation_units=0.5, dt_s=0.1)).factor == pytest.approx(2.0)
    estimator.observe_speed(float("inf"))
    refused = estimator.update(ScaleObservation(translation_units=0.5, dt_s=0.1))
    assert not refused.healthy and "not a positive number" in refused.reason
    assert refused.factor == pytest.approx(2.0) and estimator.factor == pytest.approx(2.0)
    # Nor a speed of 0 let through (min_speed_mps 0): a factor of 0 would publish every depth as 0 m.
    still = ExternalSpeedScale(ScaleConfig(smoothing=0.0, min_speed_mps=0.0))
    still.observe_speed(0.0)
    assert not still.update(ScaleObservation(translation_units=0.5, dt_s=0.1)).healthy and still.factor is None


def test_external_speed_from_a_ground_truth_odometry_topic(odometry_bag: Path, small_bundle: Path) -> None:
    """Speed from the bag's ground-truth Odometry makes the per-frame translation metric."""
    stamps, poses, _ = read_odometry(odometry_bag)
    speeds = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1) / (np.diff(stamps) / 1e9)
    config = PipelineConfig(bundle=str(small_bundle), backend="onnxruntime")
    pipeline = Pipeline(config, ScaleConfig(source="external_speed", smoothing=0.0))
    steps = []
    for i, camera_frame in enumerate(read_camera_frames(odometry_bag)):
        if i:
            pipeline.set_speed(speeds[i - 1])
        estimate = pipeline.process(camera_frame.stamp_ns, camera_frame.rgb, camera_frame.camera)
        if estimate.T_prev_current is not None and estimate.scale.healthy:
            steps.append((np.linalg.norm(estimate.T_prev_current[:3, 3]), speeds[i - 1] * 0.1))
        if i > 12:
            break
    steps = np.asarray(steps)
    assert len(steps) > 5
    np.testing.assert_allclose(steps[:, 0], steps[:, 1], rtol=1e-6)  # speed x dt, whatever the network says


@pytest.mark.parametrize("bundle_fixture", ["small_bundle", "two_frame_bundle"])  # one-frame and two-frame depth
def test_replay_writes_one_depth_per_input_frame(odometry_bag: Path, bundle_fixture: str, tmp_path: Path,
                                                 request: pytest.FixtureRequest) -> None:
    from rosbags.rosbag2 import Reader

    from sfm_ros.replay import replay_bag

    bundle = request.getfixturevalue(bundle_fixture)
    pipeline = Pipeline(PipelineConfig(bundle=str(bundle), backend="onnxruntime"), ScaleConfig(source="none"))
    summary = replay_bag(odometry_bag, pipeline, tmp_path / "replay", progress=False, publish_mask=True)
    assert summary.frames_in == summary.frames_out == 51 and summary.dropped == 0
    input_stamps = [f.stamp_ns for f in read_camera_frames(odometry_bag)]
    with Reader(summary.output_bag) as reader:
        topics = {c.topic: c.msgcount for c in reader.connections}
        depth_stamps = [t for c, t, _ in reader.messages() if c.topic == "/sfm/depth/image"]
    assert depth_stamps == input_stamps
    assert topics["/sfm/odom"] == topics["/tf"] == topics["/sfm/depth/camera_info"] == 51
    assert topics["/sfm/explainability"] == 49
    assert (tmp_path / "replay" / "trajectory.tum").is_file()
    assert summary.evaluation is not None and (tmp_path / "replay" / "report" / "index.html").is_file()
    assert (tmp_path / "replay" / "report" / "depth_preview.png").stat().st_size > 10_000
    assert "depth_preview.png" in (tmp_path / "replay" / "report" / "index.html").read_text()
    assert set(summary.latency_ms) == {"p50", "p90", "p99", "max"}


def test_replay_refuses_to_overwrite(odometry_bag: Path, small_bundle: Path, tmp_path: Path) -> None:
    from sfm_ros.bags import BagError
    from sfm_ros.replay import replay_bag

    (tmp_path / "sfm_output").mkdir()
    pipeline = Pipeline(PipelineConfig(bundle=str(small_bundle), backend="onnxruntime"))
    with pytest.raises(BagError, match="exists already, not overwriting"):
        replay_bag(odometry_bag, pipeline, tmp_path, progress=False)


def test_replay_with_no_usable_frame_leaves_no_output_bag(odometry_bag: Path, tmp_path: Path) -> None:
    from sfm_ros.bags import BagError
    from sfm_ros.replay import replay_bag

    class Refusing:
        restarts: ClassVar[dict] = {}

        def process(self, *_args: object) -> None:
            raise FrameError("camera intrinsics are unusable: K = [[0, 0, 0]]")

    with pytest.raises(BagError, match="no frame of .* could be processed"):
        replay_bag(odometry_bag, Refusing(), tmp_path, progress=False)
    assert not (tmp_path / "sfm_output").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # nor its hidden temporary folder


def test_worker_keeps_the_newest_and_survives_errors() -> None:
    seen: list[int] = []
    gate = threading.Event()

    def handler(item: int) -> None:
        gate.wait(5)
        if item == 3:
            raise ValueError("bad frame: step mismatch")
        seen.append(item)

    reported: list[str] = []
    worker = LatestFrameWorker(handler, lambda kind, exc: reported.append(kind))
    worker.submit(0)
    time.sleep(0.05)  # the worker takes 0 and blocks on the gate
    for item in range(1, 30):
        worker.submit(item)  # 1..28 are replaced before the worker is free: only 29 survives
    gate.set()
    assert worker.wait_idle()
    assert seen == [0, 29] and worker.dropped == 28
    worker.submit(3)
    worker.submit(3) if worker.wait_idle() else None
    assert worker.wait_idle()
    worker.submit(40)
    assert worker.wait_idle()
    worker.stop()
    assert seen[-1] == 40 and worker.errors["ValueError: bad frame"] == 2 and reported == ["ValueError: bad frame"]


def test_worker_commands_run_on_its_thread_between_items() -> None:
    threads: dict[str, list[str]] = {"items": [], "commands": []}
    order: list[str] = []
    gate = threading.Event()

    def handler(item: int) -> None:
        gate.wait(5)
        threads["items"].append(threading.current_thread().name)
        order.append(f"item {item}")

    worker = LatestFrameWorker(handler)
    worker.submit(0)
    time.sleep(0.05)  # inside item 0
    worker.submit(1)
    worker.call(lambda: order.append("command"))  # queued behind item 0, ahead of item 1
    gate.set()
    assert worker.call(lambda: threads["commands"].append(threading.current_thread().name) or 42, timeout_s=5) == 42
    assert worker.wait_idle()
    assert order == ["item 0", "command", "item 1"]
    assert set(threads["items"]) == set(threads["commands"]) == {"sfm-inference"}
    with pytest.raises(ZeroDivisionError):
        worker.call(lambda: 1 / 0, timeout_s=5)
    blocker = threading.Event()
    worker.call(blocker.wait)  # the worker is busy until the blocker is set
    with pytest.raises(TimeoutError):
        worker.call(lambda: None, timeout_s=0.05)
    blocker.set()
    worker.stop()


def test_metric_depth_evaluation_on_lidar_with_camera_height_scale(tmp_path: Path) -> None:
    """A backend that predicts a flat road 0.5 units below the camera: the camera-height scale (1.65 m) must make it
    metric without median scaling, and LiDAR agrees on the ratio of medians."""
    from sfm_ros.bundle import BundleMetadata
    from sfm_ros.evaluate import depth_samples_from_drive, evaluate_depth
    from test.conftest import DRIVE_0060

    class FlatRoadBackend(FakeBackend):
        def infer_depth(self, image: np.ndarray) -> np.ndarray:
            height, width = image.shape[-2:]
            K = np.array([[721.5377 * width / 1242, 0, 609.56 * width / 1242],
                          [0, 721.5377 * height / 375, 172.85 * height / 375], [0, 0, 1]])
            depth = plane_depth(0.5, K, (height, width))
            return (1.0 / depth)[None, None].astype(np.float32)

    backend = FlatRoadBackend(BundleMetadata(height=128, width=416))
    samples = depth_samples_from_drive(DRIVE_0060)[:4]
    report = evaluate_depth(backend, samples, tmp_path / "metric", progress=False,
                            metric_scale=ScaleConfig(camera_height_m=1.65))
    assert report["scale_failures"] == 0 and "camera height" in report["protocol"]
    # Flat-road depth is right where LiDAR sees road and too far on cars: a metric, not a perfect, prediction.
    assert 0.5 < report["metrics"]["median_ratio"] < 1.2
    median_scaled = evaluate_depth(backend, samples, progress=False)
    assert median_scaled["metrics"]["abs_rel"] != pytest.approx(report["metrics"]["abs_rel"])
    assert (tmp_path / "metric" / "index.html").is_file()


def test_realtime_replay_drops_frames_it_cannot_keep_up_with(odometry_bag: Path, tmp_path: Path) -> None:
    from sfm_ros.bundle import BundleMetadata
    from sfm_ros.replay import replay_bag

    class SlowBackend(FakeBackend):
        def infer_depth(self, image: np.ndarray) -> np.ndarray:
            time.sleep(0.25)  # 4 Hz against a 10 Hz bag
            return super().infer_depth(image)

    backend = SlowBackend(BundleMetadata(height=64, width=208))
    pipeline = Pipeline(PipelineConfig(max_frame_gap_s=5.0), ScaleConfig(source="none"), backend=backend)
    tick = time.monotonic()
    summary = replay_bag(odometry_bag, pipeline, tmp_path, realtime=True, progress=False, evaluate=False)
    elapsed = time.monotonic() - tick
    assert summary.frames_in == 51 and summary.dropped > 20
    assert summary.frames_out + summary.dropped == 51
    assert elapsed < 9.0  # about the bag's 5 s: it kept pace by dropping, not by falling behind


def test_realtime_replay_keeps_the_recorded_pace_when_header_stamps_jump(tmp_path: Path, monkeypatch) -> None:
    """Paced by when the bag recorded each frame, not by the header stamps: a driver whose clock is set after its
    first frame (0, then the epoch) used to make the replay sleep 54 years, and a clock stepping back made it drop
    every later frame as late."""
    import sfm_ros.replay as replay
    from sfm_ros.bags import BagWriter
    from sfm_ros.ros_io import make_header, rgb_to_image_msg

    epoch = 1_700_000_000_000_000_000
    back = [1_000_000_000 + i * 100_000_000 for i in range(10)]
    headers = [0, epoch, epoch + 100_000_000, *back]  # the clock set after the first frame, then stepped back
    bag = tmp_path / "jumps"
    with BagWriter(bag) as writer:
        for i, stamp in enumerate(headers):  # recorded at 10 Hz
            message = rgb_to_image_msg(writer.types, frame(), make_header(writer.types, stamp, "cam"))
            writer.write("/camera/image_raw", message, 5_000_000_000 + i * 100_000_000)
    slept: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        real_sleep(min(seconds, 0.2))  # a runaway wait fails below instead of hanging the suite

    monkeypatch.setattr(replay.time, "sleep", sleep)
    pipeline, _ = fake_pipeline()
    summary = replay.replay_bag(bag, pipeline, tmp_path / "out", realtime=True, progress=False, evaluate=False,
                                intrinsics=CAMERA.K)
    assert summary.frames_in == len(headers)
    assert max(slept) <= 0.1 + 1e-9  # never longer than the recording's 0.1 s between frames
    assert summary.dropped <= 3  # the stamps stepping back: 10 later frames were all dropped as late


def test_five_frame_model_composes_the_pose_of_the_newest_frame() -> None:
    """With 4 sources the target is the window's centre (t-2); T(t-1 -> t) = T_t<-c @ inv(T_(t-1)<-c)."""
    from sfm_ros.bundle import BundleMetadata

    step = 0.3

    class FiveFrameBackend(FakeBackend):
        def infer_pose(self, target: np.ndarray, sources: np.ndarray):
            self.calls += 1
            # Sources at window positions 0, 1, 3, 4 around the centre 2; constant forward motion of `step` per frame:
            # a target point is (k - 2) * step nearer in source k, so its T_source_target translation is -(k-2)*step.
            return np.array([[0, 0, -(k - 2) * step, 0, 0, 0] for k in (0, 1, 3, 4)], np.float32), None

    backend = FiveFrameBackend(BundleMetadata(height=64, width=208, num_sources=4))
    pipeline = Pipeline(PipelineConfig(), ScaleConfig(source="none"), backend=backend)
    estimates = [pipeline.process(i * 100_000_000, frame(), CAMERA) for i in range(6)]
    assert [e.T_prev_current is None for e in estimates] == [True] * 4 + [False] * 2
    np.testing.assert_allclose(estimates[-1].T_prev_current[:3, 3], [0, 0, step], atol=1e-6)
    # The first full window (frames 0-4) places frame 4 four steps from frame 0; frame 5 five.
    for i in (4, 5):
        moved = np.linalg.inv(estimates[0].T_odom_camera) @ estimates[i].T_odom_camera
        np.testing.assert_allclose(moved[:3, 3], [0, 0, i * step], atol=1e-6)


LOST = np.diag([100.0**2] * 3 + [np.pi**2] * 3)  # the pose covariance after a restart: 100 m and pi rad


def test_a_restart_sets_the_lost_covariance_and_restarts_never_compound() -> None:
    pipeline, _ = fake_pipeline(max_frame_gap_s=0.5)
    for i in range(4):
        pipeline.process(i * 100_000_000, frame(), CAMERA)
    backwards = pipeline.process(0, frame(), CAMERA)
    assert any("time went backwards by 0.300 s" in e for e in backwards.events)
    np.testing.assert_allclose(backwards.covariance, LOST, rtol=1e-12)
    # A 1 Hz camera under a 0.5 s gap limit: every frame restarts; the covariance stays the lost value, the pose stays.
    for i in range(1, 301):
        estimate = pipeline.process(i * 1_000_000_000, frame(), CAMERA)
    np.testing.assert_allclose(estimate.covariance, LOST, rtol=1e-12)
    assert pipeline.restarts == {RestartCause.BACKWARDS: 1, RestartCause.GAP: 300}
    # A long drive already less certain than "lost" keeps its own variances (a restart never lowers them).
    large = np.diag([2e4, 5.0, 1.0, 20.0, 1.0, 1.0]) + 0.5  # with correlations, which a restart drops
    from sfm_ros.odometry.uncertainty import lost_covariance

    np.testing.assert_allclose(lost_covariance(large), np.diag([2e4 + 0.5] + [1e4] * 2 + [20.5] + [np.pi**2] * 2))


def test_a_repeated_stamp_is_dropped_and_leaves_no_trace() -> None:
    pipeline, backend = fake_pipeline()
    pipeline.process(0, frame(), CAMERA)
    second = pipeline.process(100_000_000, frame(), CAMERA)
    with pytest.raises(FrameError, match="repeated stamp: 100000000 ns"):
        pipeline.process(100_000_000, frame(), CAMERA)
    third = pipeline.process(200_000_000, frame(), CAMERA)
    assert not any("restarted" in e for e in third.events) and not pipeline.restarts and backend.calls == 1
    # The window (0, 0.1, 0.2 s) is whole: the second frame is still at the start, the third adds the window's
    # catch-up step and its own, 2 x 0.2 m.
    np.testing.assert_allclose((np.linalg.inv(second.T_odom_base) @ third.T_odom_base)[:3, 3], [0.4, 0, 0],
                               atol=1e-9)


def test_a_non_finite_estimate_is_dropped_and_the_odometry_goes_on() -> None:
    pipeline, backend = fake_pipeline(scale=ScaleConfig(source="camera_height"))
    good = [pipeline.process(i * 100_000_000, frame(), CAMERA) for i in range(3)]
    backend.pose = np.array([0, 0, np.nan, 0, 0, 0])
    with pytest.raises(FrameError, match="non-finite estimate: the frame's pose, covariance, twist and twist "
                                         "covariance not finite"):
        pipeline.process(300_000_000, frame(), CAMERA)
    backend.pose = np.array([0, 0, -0.1, 0, 0, 0.0])
    backend.disparity = np.nan  # a model that gives NaN depth: the ground's scale cannot be measured
    nan_depth = pipeline.process(400_000_000, frame(), CAMERA)
    assert any("tracking restarted: the previous frame's pose, covariance, twist and twist covariance not finite" in e
               for e in nan_depth.events)
    backend.disparity = 0.1
    after = [pipeline.process(i * 100_000_000, frame(), CAMERA) for i in range(5, 10)]
    for estimate in [nan_depth, *after]:
        assert np.isfinite(estimate.T_odom_base).all() and np.isfinite(estimate.covariance).all()
        assert np.isfinite(estimate.twist_covariance).all()
    # The odometry kept the last good pose through the dropped frame and moves on from it.
    np.testing.assert_allclose(nan_depth.T_odom_base, good[-1].T_odom_base, atol=1e-12)
    assert after[-1].T_odom_base[0, 3] > good[-1].T_odom_base[0, 3]
    assert pipeline.restarts == {RestartCause.NOT_FINITE: 1}


def test_a_fuzz_of_2000_stamps_ends_finite_with_every_break_counted() -> None:
    """Repeated, backwards, 1 Hz-gapped and NaN-posed frames at random: every published estimate is finite and the
    counts are the ones the stamp sequence implies, worked out here from the stamps alone. The chain's odometry keeps
    2000 frames fast; the alignment's modes take the same admission and finite check (the test above)."""
    rng = np.random.default_rng(3)
    pipeline, backend = fake_pipeline(max_frame_gap_s=0.5, odometry="chain", scale=ScaleConfig(source="camera_height"))
    stamp, last, expected = 10**12, None, {"backwards": 0, "gap": 0, "repeated": 0, "not_finite": 0}
    for _ in range(2000):
        kind = rng.choice(["step", "repeat", "back", "gap", "nan"], p=[0.8, 0.05, 0.05, 0.05, 0.05])
        stamp = {"step": stamp + 100_000_000, "repeat": stamp, "back": stamp - int(rng.integers(1, 10**10)),
                 "gap": stamp + 1_000_000_000, "nan": stamp + 100_000_000}[str(kind)]
        backend.pose = np.array([0, 0, np.nan if kind == "nan" else -0.1, 0, 0, 0.0])
        try:
            estimate = pipeline.process(stamp, frame(), CAMERA)
        except FrameError as exc:
            key = "repeated" if "repeated stamp" in str(exc) else "not_finite"
            expected[key] += 1
        else:
            assert np.isfinite(estimate.T_odom_base).all() and np.isfinite(estimate.covariance).all()
            assert np.isfinite(estimate.twist_covariance).all() and np.all(np.diag(estimate.covariance) < 1.1e4)
        if last is not None and stamp < last:
            expected["backwards"] += 1
        elif last is not None and stamp - last > 500_000_000:
            expected["gap"] += 1
        if stamp != last:
            last = stamp
    assert expected["repeated"] > 50 and expected["not_finite"] > 20  # the fuzz did reach each case
    assert pipeline.restarts[RestartCause.BACKWARDS] == expected["backwards"]
    assert pipeline.restarts[RestartCause.GAP] == expected["gap"]
    # A NaN pose needs a full window: only those frames are dropped, each counted as a restart.
    assert pipeline.restarts[RestartCause.NOT_FINITE] == expected["not_finite"]
