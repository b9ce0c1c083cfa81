"""Keyframes (`pipeline.odometry: keyframes`): each frame aligned to the last keyframe, so a camera standing still
neither wanders nor grows less certain, while a moving camera is followed and gets new keyframes as the view moves
on."""

from __future__ import annotations

import numpy as np

from sfm_ros import kitti
from sfm_ros.camera import CameraModel
from sfm_ros.config import PipelineConfig, ScaleConfig
from sfm_ros.geometry import orthonormalised
from sfm_ros.odometry.pipeline import Pipeline
from test.odometry_support import STREETS as SAMPLE
from test.odometry_support import BiasedTruth, drive_street, in_odom
from training.synth_streets import load_street_split

# The pose net's error on every step: 9 cm and 0.6 degrees (a still camera's steps are this error alone).
NETWORK_ERROR = [0.05, 0.0, 0.08, 0.0, 0.01, 0.0]
STILL_FRAMES = 30


def stand_still(config: PipelineConfig, scale_config: ScaleConfig | None = None,
                network_error: list[float] = NETWORK_ERROR) -> dict:
    """Drive frames 10-14 of a held-out street, then hold frame 14 for STILL_FRAMES frames at 30 Hz with sensor
    noise (std 2 grey levels, seeded)."""
    split = load_street_split(SAMPLE / "val")
    paths = kitti.image_files(split.folders[0])
    backend = BiasedTruth(split, 0, network_error)
    pipeline = Pipeline(config, scale_config or ScaleConfig(source="fixed"), backend=backend)
    camera = CameraModel(K=split.K, height=64, width=208)
    *_, (_, estimate) = drive_street(pipeline, backend, split, 0, range(10, 15))
    held = kitti.load_rgb(paths[14]).astype(np.float32)
    rng = np.random.default_rng(0)
    start, sigmas, keyframes = estimate.T_odom_camera, [], []
    for k in range(STILL_FRAMES):
        backend.show(14)
        noisy = np.clip(held + rng.normal(0, 2.0, held.shape), 0, 255).astype(np.uint8)
        estimate = pipeline.process(1_400_000_000 + (k + 1) * 33_333_333, noisy, camera)
        sigmas.append(float(np.sqrt(np.trace(estimate.covariance[:3, :3]))))
        keyframes.append(estimate.keyframe)
    moved = np.linalg.inv(start) @ estimate.T_odom_camera
    return {"moved_m": float(np.linalg.norm(moved[:3, 3])), "sigmas": sigmas, "keyframes": keyframes}


def test_a_camera_standing_still_stays_put_with_keyframes() -> None:
    chain = stand_still(PipelineConfig(odometry="chain"))
    # Without the side-slip prior: noise makes each alignment trade yaw for sideways motion, and the prior (on by
    # default) removes most of that wander (below); these lines judge the alignment and its covariance alone.
    refined = stand_still(PipelineConfig(odometry="frame_to_frame", side_slip_sigma=0.0))
    no_slip = stand_still(PipelineConfig(odometry="frame_to_frame"))
    assert no_slip["moved_m"] < refined["moved_m"] / 3
    keyframed = stand_still(PipelineConfig(odometry="keyframes", side_slip_sigma=0.0))
    # The network's error alone walks 9.4 cm a frame; aligning to the previous frame removes most of it, but each
    # noisy alignment's error is kept; aligning to one keyframe does not add them up.
    assert chain["moved_m"] > 0.09 * STILL_FRAMES * 0.9
    assert keyframed["moved_m"] < 0.01
    assert keyframed["moved_m"] < refined["moved_m"]
    assert not any(keyframed["keyframes"]), "standing still must not make new keyframes"
    # Uncertainty: each aligned step's covariance (the alignment's sigma^2 H^-1) is carried into the pose's, and the
    # result is honest: its growth matches how far the noisy alignments actually wandered. Against the keyframe the
    # alignment's covariance replaces the last one instead of adding to it.
    refined_growth = refined["sigmas"][-1] ** 2 - refined["sigmas"][0] ** 2
    assert refined_growth > 0
    assert 1 / 3 < refined["moved_m"] / np.sqrt(refined_growth) < 3
    assert abs(keyframed["sigmas"][-1] ** 2 - keyframed["sigmas"][0] ** 2) < 0.1 * refined_growth


def test_standing_still_with_the_grounds_step_lengths_does_not_jitter() -> None:
    """The node's defaults (the ground measures each alignment's length against the keyframe): held one step from its
    keyframe, each noisy frame's measurement of that step differs by a centimetre or so; with no step since the last
    frame long enough to measure, the last length stands and the camera stays put."""
    still = stand_still(PipelineConfig(), ScaleConfig())
    assert still["moved_m"] < 0.002 and not any(still["keyframes"])


def test_an_alignment_that_fails_from_the_chain_is_retried_from_the_previous_frame() -> None:
    """A pose net that reports a 17-degree turn and 30 cm every frame while the camera stands still starts each
    alignment further off than an alignment may change (0.2 rad): from there it is refused. From the previous frame's
    pose it succeeds, so the camera stays put and keeps its keyframe (without the retry: 30 refusals, 30 keyframes,
    1.96 m walked). In one frame of 30 both starts fail, and so does the alignment to the previous frame from the
    network's step: the network's step stands (0.3 m)."""
    still = stand_still(PipelineConfig(), network_error=[0.0, 0.0, 0.3, 0.0, 0.3, 0.0])
    assert still["moved_m"] < 0.35 and sum(still["keyframes"]) <= 1


def test_a_moving_camera_is_followed_and_gets_new_keyframes() -> None:
    split = load_street_split(SAMPLE / "val")
    poses = split.T_world_cam[0]
    frames = range(10, 30)

    def run(config: PipelineConfig) -> tuple[float, int]:
        backend = BiasedTruth(split, 0, NETWORK_ERROR)
        pipeline = Pipeline(config, ScaleConfig(source="fixed"), backend=backend)
        keyframes = 0
        for _, estimate in drive_street(pipeline, backend, split, 0, frames):
            keyframes += int(estimate.keyframe)
            rotation = estimate.T_odom_camera[:3, :3]
            np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)  # stays rigid
        moved = np.linalg.inv(poses[frames[0]]) @ poses[frames[-1]]
        return float(np.linalg.norm(estimate.T_odom_camera[:3, 3] - in_odom(moved)[:3, 3])), keyframes

    error, keyframes = run(PipelineConfig(odometry="keyframes"))
    assert error < 0.3  # 19 steps of about 1 m; the network alone is off by more than 1 m here
    assert 2 <= keyframes < len(frames) - 2  # renewed as the view moves on, not on every frame
    # A baseline limit of 0 renews the keyframe on every frame after the first full window.
    _, every_frame = run(PipelineConfig(odometry="keyframes", keyframe_max_baseline=0.0))
    assert every_frame == len(frames) - 2


def test_orthonormalised_is_the_nearest_rotation() -> None:
    angle = 0.3
    R = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    T = np.eye(4)
    T[:3, :3] = R * 1.001  # a uniform stretch: the nearest rotation is R itself
    T[:3, 3] = [1.0, 2.0, 3.0]
    out = orthonormalised(T)
    np.testing.assert_allclose(out[:3, :3], R, atol=1e-12)
    np.testing.assert_allclose(out[:3, 3], [1.0, 2.0, 3.0])
    # A symmetric error e (R (I + e)) is removed to first order, and the result is a proper rotation.
    skewed = R @ (np.eye(3) + np.array([[0, 1e-4, 0], [1e-4, 0, 0], [0, 0, 0]]))
    T[:3, :3] = skewed
    out = orthonormalised(T)[:3, :3]
    np.testing.assert_allclose(out @ out.T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(out), 1.0)
    np.testing.assert_allclose(out, R, atol=1e-8)


def test_turning_keyframes_off_and_on_at_run_time_starts_a_new_keyframe() -> None:
    """A live parameter change: the keyframe kept from before keyframes were turned off is not reused."""
    import dataclasses

    split = load_street_split(SAMPLE / "val")
    paths = kitti.image_files(split.folders[0])
    backend = BiasedTruth(split, 0, NETWORK_ERROR)
    scale = ScaleConfig(source="fixed")
    # Only a missing keyframe (or a failed alignment) makes a new one here.
    config = PipelineConfig(odometry="keyframes", keyframe_max_baseline=10.0, keyframe_min_overlap=0.0)
    pipeline = Pipeline(config, scale, backend=backend)
    camera = CameraModel(K=split.K, height=64, width=208)
    flags = []
    for i in range(10, 20):
        if i == 15:
            pipeline.configure(dataclasses.replace(config, odometry="chain"), scale)
        if i == 17:
            pipeline.configure(config, scale)
        backend.show(i)
        flags.append(pipeline.process(i * 100_000_000, kitti.load_rgb(paths[i]), camera).keyframe)
    assert flags[2] and not any(flags[5:7])  # the first keyframe; none while off
    assert flags[7], "back on: the frame becomes a new keyframe instead of aligning to the stale one"


def test_a_frame_that_cannot_be_aligned_to_its_keyframe_takes_its_step_from_the_previous_frame() -> None:
    """A keyframe the frame cannot be aligned to (here: no depth, so no points) makes the frame the next keyframe.
    Its step then comes from the previous frame, aligned through that frame's depth from the network's step, as
    'frame_to_frame' does: a pose net whose step is twice the truth (as on surfaces a model never saw) gets the true
    length back (the chain's step is twice the truth)."""
    from sfm_ros.config import ScaleSource
    from sfm_ros.odometry.ground import StepLength
    from sfm_ros.odometry.tracking import Chain, Decision, Keyframe, PreviousView, Tracker
    from sfm_ros.scale import ScaleEstimate
    from test.odometry_support import grey

    split = load_street_split(SAMPLE / "val")
    paths, poses = kitti.image_files(split.folders[0]), split.T_world_cam[0]
    frame = 20
    truth = np.linalg.inv(poses[frame - 1]) @ poses[frame]  # T_prev_current
    network = truth.copy()
    network[:3, 3] *= 2.0
    depth = split.depth[0, frame - 1].astype(np.float32)
    previous = PreviousView(grey(paths[frame - 1]), np.where(depth > 0, depth, np.inf), None)
    no_depth = np.zeros_like(depth)
    keyframe = Keyframe(grey(paths[frame - 3]), no_depth, 10.0, np.eye(4), np.eye(6) * 1e-4)
    chain = Chain(np.eye(4), network, 1.0, 0.1)
    scale = ScaleEstimate(1.0, True, ScaleSource.FIXED)
    tracker = Tracker(PipelineConfig(), np.eye(4), StepLength(ScaleConfig(source="fixed")))
    tracked = tracker.to_keyframe(keyframe, None, grey(paths[frame]), split.K, chain, scale, np.array([0.0, 1.0, 0.0]),
                                  previous, network)
    assert tracked.decision is Decision.ALIGNMENT_FAILED and tracked.on_keyframe is None
    assert tracked.events[0].startswith("keyframe alignment not used (a new keyframe): too few points")
    true_length = float(np.linalg.norm(truth[:3, 3]))
    assert 0.5 < true_length < 1.5
    assert abs(np.linalg.norm(tracked.T_world_camera[:3, 3]) / true_length - 1) < 0.03


def test_aligning_again_after_the_chain_alone_does_not_use_a_stale_previous_view() -> None:
    """A live parameter change: the chain alone (without the ground's lengths) keeps no grey views, so the last one is
    from before it. Aligned again, the first frame must not be aligned to that view, six frames back, from one frame's
    step (an alignment accepted 1.1 m off before the fix): its step is the chain's, and the frames after it are aligned
    as usual."""
    import dataclasses

    split = load_street_split(SAMPLE / "val")
    poses = split.T_world_cam[0]
    backend = BiasedTruth(split, 0, NETWORK_ERROR)
    scale = ScaleConfig(source="fixed")
    aligned = PipelineConfig(odometry="frame_to_frame")
    pipeline = Pipeline(aligned, scale, backend=backend)
    estimates = {}
    for i, estimate in drive_street(pipeline, backend, split, 0, range(10, 26)):
        estimates[i] = estimate
        if i == 13:
            pipeline.configure(dataclasses.replace(aligned, odometry="chain"), scale)
        if i == 18:
            assert pipeline._state.track.previous is None  # white-box: the view from frame 13 is gone
            pipeline.configure(aligned, scale)

    def step_error_m(i: int) -> float:
        estimated = np.linalg.inv(estimates[i - 1].T_odom_camera) @ estimates[i].T_odom_camera
        return float(np.linalg.norm(estimated[:3, 3] - (np.linalg.inv(poses[i - 1]) @ poses[i])[:3, 3]))

    chain_error = max(step_error_m(i) for i in range(15, 19))  # the network's own steps, NETWORK_ERROR off
    assert chain_error > 0.05
    assert step_error_m(19) <= chain_error + 1e-6  # the chain's step, not one aligned to frame 13's view
    assert max(step_error_m(i) for i in range(21, 26)) < 0.5 * chain_error  # aligned again


def test_every_frame_aligned_to_the_keyframe_carries_the_keyframes_covariance(monkeypatch) -> None:
    """A frame aligned to the keyframe is the keyframe's pose and one alignment, whether it keeps the keyframe or
    becomes the next one (too far, too little overlap): its covariance is the keyframe's carried along that
    alignment, never the previous frame's plus the alignment (which would count the previous frame's alignment
    again). Spied: the covariance each step is composed from, against the keyframe's at that frame."""
    from sfm_ros.odometry import pipeline as pipeline_module
    from sfm_ros.odometry.tracking import Decision, Tracker

    split = load_street_split(SAMPLE / "val")
    backend = BiasedTruth(split, 0, NETWORK_ERROR)
    pipeline = Pipeline(PipelineConfig(odometry="keyframes"), ScaleConfig(source="fixed"), backend=backend)
    bases, decisions = [], []
    compose = pipeline_module.uncertainty.composed_covariance
    to_keyframe = Tracker.to_keyframe

    def spy_compose(covariance, *rest):
        bases.append(covariance)
        return compose(covariance, *rest)

    def spy_to_keyframe(self, keyframe, *rest):
        tracked = to_keyframe(self, keyframe, *rest)
        decisions.append((tracked.decision, tracked.on_keyframe is not None, keyframe.covariance))
        return tracked

    monkeypatch.setattr(pipeline_module.uncertainty, "composed_covariance", spy_compose)
    monkeypatch.setattr(Tracker, "to_keyframe", spy_to_keyframe)
    checked, previous_decision, renewed_after_keeping = 0, None, 0
    frames = range(10, 40)
    paths = kitti.image_files(split.folders[0])
    camera = CameraModel(K=split.K, height=64, width=208)
    for i in frames:
        bases.clear()
        decisions.clear()
        backend.show(i)
        pipeline.process(i * 100_000_000, kitti.load_rgb(paths[i]), camera)
        decision = decisions[-1][0] if decisions else None
        if decisions and decisions[-1][1]:  # aligned to the keyframe
            assert bases[-1] is decisions[-1][2], decision
            checked += 1
            renewed_after_keeping += int(decision.new_keyframe and previous_decision is Decision.KEEP)
        previous_decision = decision
    assert checked > 10 and renewed_after_keeping >= 1  # a keyframe renewed a frame after one kept it
