"""A step's metric length from the ground's image motion (scale.ground_motion): the plane's depth and the mounting's
normal by hand, the ground mask, the measurement on rendered frames with exact depth and on real KITTI frames with
true poses, and the pipeline's scale following it behind its flag."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from sfm_ros import kitti
from sfm_ros.config import PipelineConfig, ScaleConfig
from sfm_ros.geometry import R_BASE_OPTICAL, ground_normal_in_camera, ground_plane_depth
from sfm_ros.odometry.align import GROUND_SOLVER, ground_translation, translation_parallax_px
from sfm_ros.scale import ground_mask
from test.conftest import ODOMETRY_06, REPO
from test.odometry_support import BiasedTruth, OvershootingTruth, drive_street, grey
from training.synth_streets import load_street_split

SAMPLE = REPO / "test" / "data" / "synth_streets"
LEVEL = np.array([0.0, 1.0, 0.0])
K_HAND = np.array([[100.0, 0, 50], [0, 100.0, 40], [0, 0, 1]])


def angle_between_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


def test_ground_plane_depth_by_hand() -> None:
    depth = ground_plane_depth((80, 100), K_HAND, LEVEL, 1.5)
    # Row 60 looks 20 px = 0.2 below the optical axis: the ground 1.5 m down is 1.5 / 0.2 = 7.5 m ahead, in every
    # column (a level camera's rays meet the ground at a depth that depends on the row only).
    assert depth[60, 50] == pytest.approx(7.5) and depth[60, 3] == pytest.approx(7.5)
    assert np.isinf(depth[40]).all() and np.isinf(depth[:40]).all()  # the horizon and the sky
    # A camera pitched so that the normal is (0, 0.6, 0.8): the centre ray (0, 0, 1) meets it at 1.5 / 0.8, the ray
    # of row 0 (y = -0.4) at 1.5 / (0.8 - 0.24).
    tilted = ground_plane_depth((80, 100), K_HAND, np.array([0.0, 0.6, 0.8]), 1.5)
    assert tilted[40, 50] == pytest.approx(1.875) and tilted[0, 50] == pytest.approx(1.5 / 0.56)


def test_ground_normal_from_the_mounting_by_hand() -> None:
    T = np.eye(4)
    T[:3, :3] = R_BASE_OPTICAL  # the default mounting: optical axes, level
    np.testing.assert_allclose(ground_normal_in_camera(T), [0, 1, 0], atol=1e-12)
    # Pitched down by 10 degrees: the camera's axes in base_link are x = right = (0, -1, 0), z = forward and down
    # = (cos, 0, -sin), y = z cross x = (-sin, 0, -cos); down (0, 0, -1) in those axes is (0, cos, sin).
    pitch = np.radians(10.0)
    T[:3, :3] = np.array([[0, -np.sin(pitch), np.cos(pitch)], [-1, 0, 0], [0, -np.cos(pitch), -np.sin(pitch)]])
    np.testing.assert_allclose(ground_normal_in_camera(T), [0, np.cos(pitch), np.sin(pitch)], atol=1e-12)


def test_ground_mask_keeps_the_ground_and_drops_what_stands_on_it() -> None:
    plane = ground_plane_depth((80, 100), K_HAND, LEVEL, 1.65)
    depth = np.where(np.isfinite(plane), plane / 4.0, 20.0)  # the network's units: 4 m each
    depth[60:75, 30:60] = plane[60:75, 30:60] / 8.0  # a box standing on the road, half as far as the ground behind
    mask, metres_per_unit, _ = ground_mask(depth, K_HAND, LEVEL, 1.65, region=0.5, tolerance=0.05)
    assert metres_per_unit == pytest.approx(4.0, rel=1e-9)
    expected = np.zeros((80, 100), dtype=bool)
    expected[41:] = True  # the lower half, below the horizon (row 40)
    expected[60:75, 30:60] = False
    np.testing.assert_array_equal(mask, expected)
    empty, none, _ = ground_mask(np.full((80, 100), np.inf), K_HAND, LEVEL, 1.65, region=0.5, tolerance=0.05)
    assert none is None and not empty.any()


def test_ground_mask_keeps_only_the_ground_ahead_within_its_lateral_limit() -> None:
    # Row 60 meets the ground 1.5 / 0.2 = 7.5 m ahead; column u lies (u - 50) / 100 x 7.5 m sideways, so 3 m allows
    # |u - 50| <= 40. Row 79 (0.39 below the axis) meets it 3.85 m ahead: 3 m sideways is 78 px, every column.
    plane = ground_plane_depth((80, 100), K_HAND, LEVEL, 1.5)
    depth = np.where(np.isfinite(plane), plane, 20.0)
    mask, _, _ = ground_mask(depth, K_HAND, LEVEL, 1.5, region=0.5, tolerance=0.05, max_lateral_m=3.0)
    np.testing.assert_array_equal(np.flatnonzero(mask[60]), np.arange(10, 91))
    assert mask[79].all()
    unlimited, _, _ = ground_mask(depth, K_HAND, LEVEL, 1.5, region=0.5, tolerance=0.05)
    assert unlimited[41:].all()


@pytest.mark.parametrize("frame", [10, 30, 45])
def test_measures_the_step_on_rendered_frames_from_the_ground_alone(frame: int) -> None:
    """The rendered camera is level and exactly 1.65 m over flat ground. From a start 30 % short and 4 degrees off
    the true direction (the rotation true: it is held), the ground's motion alone gives the step within 5 % (within
    1 % on frames 10 and 45; 4 % on frame 30, where the edge of a car ahead hides and shows the road); the mask comes
    from the exact depth, as ``ground_mask`` takes it from the network's."""
    split = load_street_split(SAMPLE / "val")
    paths = kitti.image_files(split.folders[0])
    poses = split.T_world_cam[0]
    truth = np.linalg.inv(poses[frame + 1]) @ poses[frame]
    depth = split.depth[0, frame].astype(np.float64)
    mask, metres_per_unit, _ = ground_mask(np.where(depth > 0, depth, np.inf), split.K, LEVEL, 1.65, 0.4, 0.05)
    # The sample's depth, area-reduced to 64x208, puts the ground 1-2 % nearer than the plane says.
    assert metres_per_unit == pytest.approx(1.0, abs=0.02) and mask.sum() > 1000
    start = truth.copy()
    start[:3, 3] = 0.7 * cv2.Rodrigues(np.array([0.0, np.radians(4), 0.0]))[0] @ truth[:3, 3]
    result = ground_translation(grey(paths[frame]), grey(paths[frame + 1]), split.K, start, mask, LEVEL, 1.65)
    assert result.accepted and result.residual_after < 0.5 * result.residual_before
    assert np.linalg.norm(result.translation) / np.linalg.norm(truth[:3, 3]) == pytest.approx(1.0, abs=0.05)
    assert angle_between_deg(result.translation, truth[:3, 3]) < 1.0
    # The whole lower image instead of its ground (side walls too) is what the mask is for: a longer step.
    walls_too = np.zeros_like(mask)
    walls_too[int(64 * 0.6):] = True
    biased = ground_translation(grey(paths[frame]), grey(paths[frame + 1]), split.K, start, walls_too, LEVEL, 1.65)
    assert np.linalg.norm(biased.translation) > np.linalg.norm(result.translation)


def test_translation_parallax_by_hand() -> None:
    K = np.array([[100.0, 0, 50], [0, 100.0, 40], [0, 0, 1]])
    depth = np.full((80, 100), 10.0)
    depth[0, 0] = np.inf
    sideways = np.eye(4)
    sideways[0, 3] = 1.0  # 1 m to the side: every point 10 m away moves 100 x 1 / 10 = 10 px
    parallax = translation_parallax_px(depth, K, sideways)
    assert parallax[40, 50] == pytest.approx(10.0) and parallax[5, 90] == pytest.approx(10.0)
    assert parallax[0, 0] == 0.0  # no depth: no parallax
    forward = np.eye(4)
    forward[2, 3] = 1.0  # 1 m on, the points 11 m away: the centre stays; column 70 (X = 2 m) comes 20 px
    # off the centre to 100 x 2 / 11
    parallax = translation_parallax_px(depth, K, forward)
    assert parallax[40, 50] == pytest.approx(0.0, abs=1e-12) and parallax[40, 70] == pytest.approx(20 - 200 / 11)
    # A rotation moves every point alike; only the translation's part counts. Turned so that the centre point lands
    # at (6, 0, 8), then 2 m on: x/z goes from 0.75 to 0.6, 15 px.
    turned = np.eye(4)
    turned[:3, :3] = [[0.8, 0, 0.6], [0, 1, 0], [-0.6, 0, 0.8]]
    turned[2, 3] = 2.0
    assert translation_parallax_px(depth, K, turned)[40, 50] == pytest.approx(15.0)
    backward = np.eye(4)
    backward[2, 3] = -12.0  # every point ends up behind the camera
    assert np.isnan(translation_parallax_px(depth, K, backward)[40, 50])


def slow_street_steps():
    """(previous grey, current grey, K, true T_current_previous, the previous frame's ground mask from the exact
    depth) for the second rendered street's frames 14-30: slow (0.62-0.77 m a frame) and turning."""
    split = load_street_split(SAMPLE / "val")
    paths = kitti.image_files(split.folders[1])
    poses = split.T_world_cam[1]
    for frame in range(14, 31):
        truth = np.linalg.inv(poses[frame + 1]) @ poses[frame]
        depth = split.depth[1, frame].astype(np.float64)
        mask = ground_mask(np.where(depth > 0, depth, np.inf), split.K, LEVEL, 1.65, 0.4, 0.05, 3.0)[0]
        yield grey(paths[frame]), grey(paths[frame + 1]), split.K, truth, mask


def test_ground_points_that_barely_move_make_a_slow_step_short() -> None:
    """The second rendered street, frames 14-30: slow (0.62-0.77 m a frame) and turning. With the exact rotation and
    a start 10 % short, every ground point gives the step about 11 % short (the median): its far points move less
    than a pixel, and resampling their fine texture pulls them toward no motion. Only the points the step moves a
    pixel or more (``min_parallax_px``, the node's default) give it within 2 %."""
    ratios: dict[float, list[float]] = {0.0: [], 1.0: []}
    for previous, current, K, truth, mask in slow_street_steps():
        start = truth.copy()
        start[:3, 3] *= 0.9
        for min_parallax_px, found in ratios.items():
            result = ground_translation(previous, current, K, start, mask, LEVEL, 1.65, min_parallax_px=min_parallax_px)
            assert result.accepted
            found.append(np.linalg.norm(result.translation) / np.linalg.norm(truth[:3, 3]))
    assert np.median(ratios[0.0]) < 0.93
    assert np.median(ratios[1.0]) == pytest.approx(1.0, abs=0.02)


def test_refuses_a_featureless_ground() -> None:
    split = load_street_split(SAMPLE / "val")
    truth = np.linalg.inv(split.T_world_cam[0, 11]) @ split.T_world_cam[0, 10]
    flat = np.full((64, 208), 0.5, np.float32)
    result = ground_translation(flat, flat, split.K, truth, np.ones((64, 208), bool), LEVEL, 1.65)
    assert not result.accepted and "textured" in result.reason
    np.testing.assert_array_equal(result.translation, truth[:3, 3])


def test_measures_the_step_on_real_kitti_frames() -> None:
    """KITTI odometry 06 with its true poses; the road ahead (lower quarter, middle columns) as the ground, the
    camera taken as level 1.65 m up. From a start 30 % short the measurement comes within 20 % of the true step,
    on the long side: the real camera's small pitch and the road's camber are not in the model."""
    sequence = kitti.kitti_odometry_sequence(ODOMETRY_06)
    height, width = sequence.size
    road = np.zeros((height, width), dtype=bool)
    road[int(height * 0.75):, int(width * 0.3):int(width * 0.7)] = True
    ratios = []
    for frame in (5, 25, 45):
        truth = np.linalg.inv(sequence.poses[frame + 1]) @ sequence.poses[frame]
        start = truth.copy()
        start[:3, 3] *= 0.7
        result = ground_translation(grey(sequence.image_paths[frame]), grey(sequence.image_paths[frame + 1]),
                                    sequence.K, start, road, LEVEL, 1.65,
                                    solver=dataclasses.replace(GROUND_SOLVER, levels=4))
        assert result.accepted and angle_between_deg(result.translation, truth[:3, 3]) < 2.0
        ratios.append(np.linalg.norm(result.translation) / np.linalg.norm(truth[:3, 3]))
    assert all(1.0 < ratio < 1.2 for ratio in ratios), ratios


@pytest.mark.parametrize("keyframes", [False, True])
def test_the_pipelines_steps_take_the_grounds_length_behind_its_flag(keyframes: bool) -> None:
    """The mounting's plane scales the exact depth right (1 m per unit). Alone, the pose net's 30 % overshoot passes
    to the chained odometry; with scale.ground_motion the steps come out the true length, while the depth keeps its
    right scale (the ground measures the steps, not the depth). With keyframes the alignment to the keyframe finds
    the true length from the exact depth by itself; the ground agrees with it."""
    from sfm_ros.odometry.pipeline import Pipeline

    split = load_street_split(SAMPLE / "val")
    poses = split.T_world_cam[0]

    def run(ground_motion: bool) -> tuple[list[float], list[float], Pipeline]:
        backend = OvershootingTruth(split, 0, 1.3)
        pipeline = Pipeline(PipelineConfig(odometry="keyframes" if keyframes else "chain"),
                            ScaleConfig(smoothing=0.5, ground_motion=ground_motion), backend=backend)
        ratios, factors = [], []
        for i, estimate in drive_street(pipeline, backend, split, 0, range(5, 35)):
            if estimate.T_prev_current is not None and i >= 20:
                truth = np.linalg.inv(poses[i - 1]) @ poses[i]
                ratios.append(np.linalg.norm(estimate.T_prev_current[:3, 3]) / np.linalg.norm(truth[:3, 3]))
                factors.append(estimate.scale.factor)
        assert (estimate.timings_ms["ground"] > 0) == ground_motion
        return ratios, factors, pipeline

    alone, alone_factors, _ = run(False)
    assert np.median(alone) == pytest.approx(1.0 if keyframes else 1.3, abs=0.05)
    assert np.median(alone_factors) == pytest.approx(1.0, abs=0.03)
    with_ground, ground_factors, pipeline = run(True)
    assert np.median(with_ground) == pytest.approx(1.0, abs=0.05)
    assert np.median(ground_factors) == pytest.approx(1.0, abs=0.03)
    # The ratio of the ground's lengths to the aligned ones: the chain's steps were 1.3 times too long.
    assert pipeline.step_length.ratio == pytest.approx(1.0 if keyframes else 1 / 1.3, abs=0.05)
    # The speed that gates the measurements is the camera's (frames 0.1 s apart; with keyframes each step is the
    # difference of two positions measured against the keyframe).
    true_speeds = [np.linalg.norm((np.linalg.inv(poses[i - 1]) @ poses[i])[:3, 3]) / 0.1 for i in range(31, 35)]
    assert pipeline.step_length.correction.speed_mps == pytest.approx(np.mean(true_speeds), rel=0.05)


def test_step_length_correction_by_hand() -> None:
    from sfm_ros.odometry.ground import StepLengthCorrection

    correction = StepLengthCorrection(smoothing=0.5, max_jump=1.5)
    assert correction.correct(None) == 1.0  # nothing measured yet: the aligned length stands
    assert correction.correct(1.4) == 1.4 and correction.ratio == 1.4  # the first measurement within 1.5x of 1
    assert correction.correct(None) == 1.4  # an unmeasured step gets the ratio
    assert correction.correct(2.0) == 2.0 and correction.ratio == pytest.approx(1.7)  # 0.5 * 1.4 + 0.5 * 2.0
    assert correction.correct(2.6) == pytest.approx(1.7)  # more than 1.5x off 1.7 (2.55): an outlier
    assert correction.correct(1.1) == pytest.approx(1.7)  # below 1.7 / 1.5: an outlier too
    assert correction.correct(float("nan")) == pytest.approx(1.7)
    assert correction.correct(2.7) == pytest.approx(1.7)  # outliers that disagree (2.6, 1.1, 2.7) never take over
    assert correction.correct(1.8) == 1.8 and correction.ratio == pytest.approx(1.75)  # an inlier again


def test_step_length_correction_is_not_locked_by_a_wild_measurement() -> None:
    """A first measurement 6x off (a wrong match, or the road's edge taken for the road) used to set the ratio, and
    every right measurement after it was refused as an outlier: the steps came out 5x too long for the rest of the
    drive (seen on a rendered street with a ground tolerance of 3 %). Now the first reference is 1 (the aligned
    length is metric), and five outliers in a row that agree (all but one) replace a ratio gone wrong; a burst of
    three (seen on KITTI: a stretch of road the ground mask gets wrong) does not."""
    from sfm_ros.odometry.ground import StepLengthCorrection

    correction = StepLengthCorrection(smoothing=0.5, max_jump=1.5)
    assert correction.correct(6.0) == 1.0 and correction.ratio is None  # refused: the aligned length stands
    assert correction.correct(1.2) == 1.2 and correction.ratio == 1.2
    # A burst of three that agree with each other, then right measurements again: the ratio holds.
    assert [correction.correct(r) for r in (2.0, 2.1, 1.9)] == [1.2, 1.2, 1.2]
    assert correction.correct(1.3) == 1.3 and correction.ratio == pytest.approx(1.25)
    # The ratio has gone wrong (the scene changed, or the reference was bad): five that agree take over.
    assert [correction.correct(r) for r in (2.0, 2.1, 1.9, 2.2)] == [1.25] * 4
    assert correction.correct(2.05) == 2.05 and correction.ratio == pytest.approx(2.05)  # their median
    assert correction.correct(1.95) == 1.95  # an inlier of the new ratio
    # Where the ratio is far from 1 from the start (a 128x416 model on KITTI: 1.6-2.2), a wild one among five does not
    # stop them taking over: 1.6, 1.8, 1.9, 1.65 lie within 1.5x of their median 1.8; 3.8 does not.
    far = StepLengthCorrection(smoothing=0.5, max_jump=1.5)
    assert [far.correct(r) for r in (1.6, 1.8, 3.8, 1.9)] == [1.0] * 4
    assert far.correct(1.65) == 1.65 and far.ratio == pytest.approx(1.8)


def test_step_length_correction_gates_by_speed_once_it_has_one() -> None:
    """A measurement is gated by its step's speed (m/s), not by its ratio to the aligned length: the ratio changes with
    each keyframe's depth (KITTI 00 150-199: seven right measurements refused by the ratio), a car's speed does not."""
    from sfm_ros.odometry.ground import SPEED_SMOOTHING, StepLengthCorrection

    correction = StepLengthCorrection(smoothing=0.5, max_jump=1.5)
    assert correction.correct(1.2, 10.0) == 1.2  # the first: within 1.5x of 1 (no speed yet)
    assert correction.ratio == 1.2 and correction.speed_mps == 10.0
    # A new keyframe's depth halves the ratio; the speed agrees (9 within 10 / 1.5 .. 10 * 1.5): accepted.
    assert correction.correct(0.5, 9.0) == 0.5
    assert correction.ratio == pytest.approx(0.85)  # 0.5 * 1.2 + 0.5 * 0.5
    assert correction.speed_mps == pytest.approx(SPEED_SMOOTHING * 10.0 + (1 - SPEED_SMOOTHING) * 9.0)
    speed = correction.speed_mps
    # A ratio that agrees but a speed that does not (3 m/s below 9.5 / 1.5): refused, the ratio applies.
    assert correction.correct(0.9, 3.0) == pytest.approx(0.85) and correction.speed_mps == speed
    # A step whose time is unknown is gated by the ratio: 1.0 lies within 1.5x of 0.85.
    assert correction.correct(1.0, None) == 1.0 and correction.speed_mps == speed
    # Five refused speeds that agree (the vehicle did speed up, or the recent speed was wrong) take over, ratio too.
    assert [correction.correct(r, v) for r, v in ((2.0, 20.0), (2.2, 21.0), (1.9, 19.0), (2.1, 22.0))] == [
        pytest.approx(0.925)] * 4
    assert correction.correct(2.05, 20.5) == 2.05
    assert correction.speed_mps == pytest.approx(20.5) and correction.ratio == pytest.approx(2.05)


def test_ground_motion_refines_only_the_camera_height_scale() -> None:
    assert ScaleConfig().uses_ground_motion  # the default
    assert not ScaleConfig(ground_motion=False).uses_ground_motion
    for source in ("external_speed", "fixed", "none"):
        assert not ScaleConfig(source=source).uses_ground_motion


def test_the_grounds_direction_prior_keeps_the_starts_direction() -> None:
    """The first rendered street's frames 10 and 45, from a start 30 % short and 4 degrees off the true direction
    (the rotation true). Free, the ground finds the direction too (within 1 degree of the truth); with
    ``direction_sigma`` 0.001 (5 mm across, the floor) it stays within 1 degree of the start's, over 3 degrees off
    the truth, and measures the length along it within 5 % (the truth's part along it is cos 4 degrees = 0.998 of
    it). The prior is soft: 2000 exact ground points still move the direction by up to 0.9 degrees."""
    split = load_street_split(SAMPLE / "val")
    paths = kitti.image_files(split.folders[0])
    poses = split.T_world_cam[0]
    for frame in (10, 45):
        truth = np.linalg.inv(poses[frame + 1]) @ poses[frame]
        depth = split.depth[0, frame].astype(np.float64)
        mask = ground_mask(np.where(depth > 0, depth, np.inf), split.K, LEVEL, 1.65, 0.4, 0.05)[0]
        start = truth.copy()
        start[:3, 3] = 0.7 * cv2.Rodrigues(np.array([0.0, np.radians(4), 0.0]))[0] @ truth[:3, 3]
        args = (grey(paths[frame]), grey(paths[frame + 1]), split.K, start, mask, LEVEL, 1.65)
        free = ground_translation(*args)
        held = ground_translation(*args, direction_sigma=0.001)
        assert free.accepted and held.accepted
        assert angle_between_deg(free.translation, truth[:3, 3]) < 1.0
        assert angle_between_deg(held.translation, start[:3, 3]) < 1.0
        assert angle_between_deg(held.translation, truth[:3, 3]) > 3.0
        assert np.linalg.norm(held.translation) / np.linalg.norm(truth[:3, 3]) == pytest.approx(1.0, abs=0.05)


def test_travel_elevation_and_the_plane_along_it_by_hand() -> None:
    """A camera on the level mounting that travels 2 degrees above its optical axis (its translation (0, -sin 2,
    cos 2): y points down) moves 2 degrees away from the mounting's plane. The road it travels along has the normal
    (0, cos 2, sin 2): perpendicular to the travel, and the normal of a mounting pitched 2 degrees down
    (``ground_normal_in_camera``, by hand above)."""
    from sfm_ros.odometry.ground import normal_along_travel, travel_elevation

    angle = np.radians(2.0)
    travel = 1.3 * np.array([0.0, -np.sin(angle), np.cos(angle)])
    assert travel_elevation(travel, LEVEL) == pytest.approx(angle, abs=1e-12)
    assert travel_elevation(travel * [1, -1, 1], LEVEL) == pytest.approx(-angle, abs=1e-12)
    assert travel_elevation(np.array([0.3, 0.0, 1.0]), LEVEL) == 0.0  # sideways along the plane
    normal = normal_along_travel(LEVEL, angle)
    np.testing.assert_allclose(normal, [0.0, np.cos(angle), np.sin(angle)], atol=1e-12)
    assert normal @ travel == pytest.approx(0.0, abs=1e-12)
    pitched = np.eye(4)
    pitched[:3, :3] = [[0, -np.sin(angle), np.cos(angle)], [-1, 0, 0], [0, -np.cos(angle), -np.sin(angle)]]
    np.testing.assert_allclose(normal, ground_normal_in_camera(pitched), atol=1e-12)


def test_a_non_finite_step_leaves_the_plane_alone() -> None:
    """A NaN step (a model or an alignment that failed; the pipeline drops that frame) is no elevation: ten straight
    steps 2 degrees above the mounting's plane tilt it to (0, cos 2, sin 2) with or without NaN steps among them."""
    from sfm_ros.odometry.ground import GroundPlane

    angle, config = np.radians(2.0), ScaleConfig(ground_motion=True)
    step, broken = np.eye(4), np.full((4, 4), np.nan)
    step[:3, 3] = 1.3 * np.array([0.0, -np.sin(angle), np.cos(angle)])
    plane = GroundPlane(LEVEL)
    for _ in range(config.ground_pitch_from_travel):
        plane.follow(broken, config)
        plane.follow(step, config)
    assert plane.tilted
    np.testing.assert_allclose(plane.normal, [0.0, np.cos(angle), np.sin(angle)], atol=1e-9)


def test_significant_travel_elevation_by_hand() -> None:
    """Elevations 0.1, -0.1, 0.3, -0.3, 0.2: median 0.1, deviations from it 0, 0.2, 0.2, 0.4, 0.1 (MAD 0.2), so the
    median's standard error is 1.858 x 0.2 / sqrt(5) = 0.166 and 0.1 is within 3 of them: 0, the mounting stands.
    The same spread around 1.1 stands out: 1.1. Without spread any median counts."""
    from sfm_ros.odometry.ground import TRAVEL_SIGNIFICANCE, significant_travel_elevation

    spread = np.array([0.1, -0.1, 0.3, -0.3, 0.2])
    assert TRAVEL_SIGNIFICANCE == 3.0
    assert significant_travel_elevation(spread) == 0.0
    assert significant_travel_elevation(spread + 1.0) == pytest.approx(1.1)
    assert significant_travel_elevation(-spread - 1.0) == pytest.approx(-1.1)
    # 0.5: 3 standard errors would be 0.498, just inside.
    assert significant_travel_elevation(spread + 0.4) == pytest.approx(0.5)
    assert significant_travel_elevation(np.full(10, 0.01)) == pytest.approx(0.01)


def _mounting_pitched(degrees: float) -> tuple[float, ...]:
    """pipeline.T_base_camera (x y z qx qy qz qw) of a camera pitched ``degrees`` down, 0 m from base_link."""
    from scipy.spatial.transform import Rotation

    angle = np.radians(degrees)
    R = np.array([[0, -np.sin(angle), np.cos(angle)], [-1, 0, 0], [0, -np.cos(angle), -np.sin(angle)]])
    return (0.0, 0.0, 0.0, *Rotation.from_matrix(R).as_quat())


def test_the_pipeline_tilts_a_miscalibrated_ground_to_the_travel_behind_its_flag() -> None:
    """The rendered camera is level, but the mounting says it looks 1 degree down. With exact depth and true poses
    the aligned steps travel about level, 1 degree below the mounting's plane; with scale.ground_pitch_from_travel 10
    the ground's normal comes within 0.15 degrees of the level one after 20 steps, and the metric scale of the
    depth with it (1 m per unit, the exact depth's) within 3 %; without it the normal stays the mounting's, 1 degree
    off, and the scale about 9 % off."""
    from sfm_ros.odometry.pipeline import Pipeline

    split = load_street_split(SAMPLE / "val")
    for steps in (0, 10):
        backend = BiasedTruth(split, 1, np.zeros(6))
        pipeline = Pipeline(PipelineConfig(T_base_camera=_mounting_pitched(1.0)),
                            ScaleConfig(smoothing=0.5, ground_pitch_from_travel=steps), backend=backend)
        assert ScaleConfig().ground_pitch_from_travel == 10  # the default
        factors, tilted = [], []
        for _, estimate in drive_street(pipeline, backend, split, 1, range(5, 28)):
            factors.append(estimate.scale.factor)
            tilted += [event for event in estimate.events if event.startswith("ground plane tilted")]
        off_level = angle_between_deg(pipeline.ground_normal, LEVEL)
        assert len(tilted) == (1 if steps else 0), tilted  # said once, when first applied
        if steps:
            assert off_level < 0.15 and np.median(factors[-5:]) == pytest.approx(1.0, abs=0.03), (off_level, factors)
            assert "of 10 straight steps" in tilted[0] and "-0.9" in tilted[0], tilted  # -1 degree, 0.06 noise
        else:
            assert off_level == pytest.approx(1.0, abs=1e-9)
            assert abs(np.median(factors[-5:]) - 1.0) > 0.06, factors




def test_a_step_nothing_measures_takes_its_length_from_the_recent_speed() -> None:
    """The previous frame has no depth to align through and its ground no texture, so neither measures the step:
    after one accepted measurement at 10 m/s, a step the network makes 2.4 m long over 0.1 s is 1.0 m, its rotation
    and direction the network's, its covariance that of a 1 m step. The network's length stands with no speed yet,
    without the step's time, after a standstill (a step too short to measure) until the ground measures again, and
    with pipeline.odometry 'chain', which does not align. The events say why."""
    from sfm_ros.config import ScaleSource
    from sfm_ros.geometry import pose_vec_to_mat
    from sfm_ros.odometry import uncertainty
    from sfm_ros.odometry.ground import StepLength
    from sfm_ros.odometry.tracking import Chain, PreviousView, Tracker
    from sfm_ros.scale import ScaleEstimate

    K = np.array([[120.0, 0.0, 103.5], [0.0, 120.0, 31.5], [0.0, 0.0, 1.0]])
    flat = np.full((64, 208), 0.5, dtype=np.float32)  # no texture anywhere
    previous = PreviousView(flat, np.zeros((64, 208), np.float32), np.ones((64, 208), bool))
    T_prev_current = pose_vec_to_mat(np.array([0.1, 0.0, 2.4, 0.0, 0.02, 0.0]))
    network_length = float(np.linalg.norm(T_prev_current[:3, 3]))
    scale = ScaleEstimate(1.0, True, ScaleSource.CAMERA_HEIGHT)
    config = PipelineConfig()

    def step(step_length: StepLength, T: np.ndarray = T_prev_current, dt_s: float | None = 0.1,
             pipeline_config: PipelineConfig = config):
        chain = Chain(np.eye(4), T, 1.0, dt_s)
        return Tracker(pipeline_config, np.eye(4), step_length).to_previous(previous, flat, K, chain, T, scale,
                                                                            np.array([0.0, 1.0, 0.0]))

    def moving() -> StepLength:
        step_length = StepLength(ScaleConfig())
        assert step_length.correction.correct(1.0, 10.0) == 1.0  # one accepted measurement: 10 m/s
        return step_length

    tracked = step(moving())
    pose = tracked.T_world_camera
    assert np.linalg.norm(pose[:3, 3]) == pytest.approx(1.0, rel=1e-9)
    np.testing.assert_allclose(pose[:3, :3], T_prev_current[:3, :3], atol=1e-12)
    np.testing.assert_allclose(pose[:3, 3], T_prev_current[:3, 3] / network_length, atol=1e-12)
    np.testing.assert_allclose(tracked.step_covariance, uncertainty.step_covariance(pose, scale, config), rtol=1e-12)
    assert tracked.events[0].startswith("pose refinement not used: too few points")
    assert tracked.events[1].startswith("ground motion not measured: too few textured ground points")
    assert tracked.events[1].endswith("the step's length from the recent speed (10.00 m/s)")

    def network_length_stands(tracked) -> None:
        assert np.linalg.norm(tracked.T_world_camera[:3, 3]) == pytest.approx(network_length, rel=1e-9)
        assert "recent speed" not in " ".join(tracked.events)

    network_length_stands(step(StepLength(ScaleConfig())))  # no speed yet
    network_length_stands(step(moving(), dt_s=None))
    network_length_stands(step(moving(), pipeline_config=PipelineConfig(odometry="chain")))
    stopped = moving()
    step(stopped, T=pose_vec_to_mat(np.array([0.0, 0.0, 0.01, 0.0, 0.0, 0.0])))  # 1 cm: standing still
    network_length_stands(step(stopped))
