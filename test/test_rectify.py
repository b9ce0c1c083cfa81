"""Undistorting raw images (``camera.Rectifier``, the node's and replay's ``rectify``): each lens model against its
distortion written out by hand here (the ROS/OpenCV equations), through a CameraInfo in a real bag, and the errors
that name what cannot be undistorted."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from sfm_ros import kitti
from sfm_ros.bags import BagWriter, read_camera_frames
from sfm_ros.camera import CameraModel, LensError, Rectifier
from sfm_ros.cli import main
from sfm_ros.ros_io import make_header, rgb_to_image_msg
from test.conftest import ODOMETRY_06

HEIGHT, WIDTH = 200, 300
K_RAW = np.array([[250.0, 0, 152.0], [0, 245.0, 97.0], [0, 0, 1]])
K_RECTIFIED = np.array([[230.0, 0, 148.0], [0, 230.0, 101.0], [0, 0, 1]])
R_SMALL = cv2.Rodrigues(np.array([0.01, -0.02, 0.015]))[0]  # a stereo rectification's small turn


def plumb_bob(x: np.ndarray, y: np.ndarray, D: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Brown-Conrady: D = k1 k2 p1 p2 k3 (rational_polynomial: then k4 k5 k6 dividing the radial factor)."""
    k1, k2, p1, p2, k3, *rational = (*D, 0.0)[:5] if len(D) <= 5 else D
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
    if rational:
        k4, k5, k6 = rational
        radial = radial / (1 + k4 * r2 + k5 * r2**2 + k6 * r2**3)
    return (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
            y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)


def equidistant(x: np.ndarray, y: np.ndarray, D: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Kannala-Brandt: theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8), theta = atan(r)."""
    r = np.sqrt(x * x + y * y)
    theta = np.arctan(r)
    k1, k2, k3, k4 = D
    theta_d = theta * (1 + k1 * theta**2 + k2 * theta**4 + k3 * theta**6 + k4 * theta**8)
    ratio = np.where(r > 0, theta_d / np.maximum(r, 1e-12), 1.0)
    return x * ratio, y * ratio


def pattern(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A smooth grey pattern over raw pixel coordinates (periods of 41 and 31 pixels)."""
    return 127.0 + 100.0 * np.sin(2 * np.pi * u / 41.0) * np.cos(2 * np.pi * v / 31.0)


def no_distortion(x: np.ndarray, y: np.ndarray, D: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    return x, y


@pytest.mark.parametrize(("model", "D", "distort"), [
    ("plumb_bob", (), no_distortion),  # an empty D: only the intrinsics and R change
    ("plumb_bob", (-0.3, 0.1, 5e-3, -8e-3, 0.01), plumb_bob),
    ("rational_polynomial", (-0.3, 0.1, 5e-3, -8e-3, 0.01, 0.05, -0.02, 0.01), plumb_bob),
    ("equidistant", (0.05, -0.02, 0.01, -0.005), equidistant),
])
def test_each_rectified_pixel_shows_the_raw_pixel_its_ray_lands_on(model: str, D: tuple, distort) -> None:
    """Rectified pixel (u, v) is the ray R^T K^-1 (u, v, 1) of the raw camera; distorted by hand and projected with
    K_raw, it lands on the raw pixel whose grey the rectified image must show (bilinear interpolation of a pattern
    with periods of 31-41 pixels, at OpenCV's 1/32-pixel lookup: within 2.5 grey levels; a wrong convention moves pixels
    by several, 20 grey levels each)."""
    u_raw, v_raw = np.meshgrid(np.arange(WIDTH, dtype=np.float64), np.arange(HEIGHT, dtype=np.float64))
    raw = np.repeat(np.round(pattern(u_raw, v_raw)).astype(np.uint8)[..., None], 3, axis=2)
    camera = CameraModel(K=K_RECTIFIED, height=HEIGHT, width=WIDTH, distortion_model=model, D=D, K_raw=K_RAW,
                         R=R_SMALL)
    rectified = Rectifier()(raw, camera)[..., 0].astype(np.float64)

    rays = np.linalg.inv(K_RECTIFIED) @ np.stack([u_raw.ravel(), v_raw.ravel(), np.ones(u_raw.size)])
    rays = R_SMALL.T @ rays
    x_d, y_d = distort(rays[0] / rays[2], rays[1] / rays[2], D)
    u_lands, v_lands = K_RAW[0, 0] * x_d + K_RAW[0, 2], K_RAW[1, 1] * y_d + K_RAW[1, 2]
    inside = (u_lands > 1) & (u_lands < WIDTH - 2) & (v_lands > 1) & (v_lands < HEIGHT - 2)
    assert inside.mean() > 0.6
    error = np.abs(rectified.ravel()[inside] - pattern(u_lands[inside], v_lands[inside]))
    assert error.mean() < 0.7 and error.max() < 2.5
    # The lens does move the pixels: the raw image itself is far from the rectified one.
    assert np.abs(raw[..., 0].ravel()[inside] - pattern(u_lands[inside], v_lands[inside])).mean() > 20
    # Pixels that see outside the raw image are black, as image_proc leaves them (where the lens lets any: a barrel
    # lens's raw image covers the whole rectified one).
    outside = (u_lands < -2) | (u_lands > WIDTH + 1) | (v_lands < -2) | (v_lands > HEIGHT + 1)
    assert outside.any() or (len(D) > 0 and D[0] < 0)
    assert not rectified.ravel()[outside].any()


def test_what_cannot_be_undistorted_is_named() -> None:
    raw = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    camera = CameraModel(K=K_RECTIFIED, height=HEIGHT, width=WIDTH, distortion_model="fov", D=(0.9,), K_raw=K_RAW)
    with pytest.raises(LensError, match="distortion model 'fov' cannot be undistorted here"):
        Rectifier()(raw, camera)
    wrong_length = CameraModel(K=K_RAW, height=HEIGHT, width=WIDTH, D=(0.1, 0.2, 0.0), K_raw=K_RAW)
    with pytest.raises(LensError, match="plumb_bob distortion needs 4, 5, 8, 12, 14 coefficients .OpenCV's., "
                                        "CameraInfo has 3"):
        Rectifier()(raw, wrong_length)
    with pytest.raises(LensError, match="raw image is 300x100 but its CameraInfo is 300x200"):
        Rectifier()(raw[:100], wrong_length)
    not_finite = CameraModel(K=K_RAW, height=HEIGHT, width=WIDTH, D=(np.nan, 0.0, 0.0, 0.0, 0.0), K_raw=K_RAW)
    with pytest.raises(LensError, match="distortion D = .nan, 0.0, 0.0, 0.0, 0.0. is not finite"):
        Rectifier()(raw, not_finite)
    no_raw_focal = CameraModel(K=K_RAW, height=HEIGHT, width=WIDTH, D=(0.1, 0.0, 0.0, 0.0, 0.0), K_raw=np.zeros((3, 3)))
    with pytest.raises(LensError, match="raw intrinsics K"):
        Rectifier()(raw, no_raw_focal)


def test_a_camera_without_distortion_passes_through() -> None:
    raw = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    pinhole = CameraModel(K=K_RAW, height=HEIGHT, width=WIDTH, D=(0.0,) * 5, K_raw=K_RAW, R=np.zeros((3, 3)))
    assert Rectifier()(raw, pinhole) is raw  # an unset R (all zeros, as some drivers send it) is the identity


D_KITTI_LIKE = (-0.37, 0.20, 1e-3, -5e-4, -0.07)  # KITTI's raw colour camera's lens, about


def _distorted_bag(path: Path, model: str = "plumb_bob", first_model: str | None = None
                   ) -> tuple[Path, list[np.ndarray]]:
    """Real KITTI frames, taken as the rectified view (CameraInfo's P and R), turned into raw ones of another focal
    length and principal point (K) through D_KITTI_LIKE: each raw pixel samples the rectified frame where OpenCV's
    undistortPoints puts it. ``first_model``: the first frame's CameraInfo names that distortion model instead."""
    sequence = kitti.kitti_odometry_sequence(ODOMETRY_06)
    originals = [kitti.load_rgb(p) for p in sequence.image_paths[:3]]
    height, width = originals[0].shape[:2]
    P = np.hstack([sequence.K, np.zeros((3, 1))])
    # The raw lens: 8 % longer and off-centre.
    K = sequence.K + np.array([[0.08 * sequence.K[0, 0], 0, 6.0], [0, 0.08 * sequence.K[1, 1], -4.0], [0, 0, 0]])
    pixels = np.stack(np.meshgrid(np.arange(width), np.arange(height)), axis=-1).reshape(-1, 1, 2).astype(np.float64)
    undistorted = cv2.undistortPoints(pixels, K, np.array(D_KITTI_LIKE), R=R_SMALL,
                                      P=P[:, :3]).reshape(height, width, 2)
    map_x, map_y = undistorted[..., 0].astype(np.float32), undistorted[..., 1].astype(np.float32)
    with BagWriter(path) as writer:
        types = writer.types
        for i, rgb in enumerate(originals):
            stamp = 1_000_000_000 + i * 100_000_000
            header = make_header(types, stamp, "camera")
            roi = types.RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
            info = types.CameraInfo(header=header, height=height, width=width,
                                    distortion_model=first_model if i == 0 and first_model else model,
                                    d=types.double_sequence(np.array(D_KITTI_LIKE)),
                                    k=types.double_array(K.reshape(-1)), r=types.double_array(R_SMALL.reshape(-1)),
                                    p=types.double_array(P.reshape(-1)), binning_x=0, binning_y=0, roi=roi)
            writer.write("/camera/camera_info", info, stamp)
            raw = cv2.remap(rgb, map_x, map_y, cv2.INTER_LINEAR)
            writer.write("/camera/image_raw", rgb_to_image_msg(types, raw, header), stamp)
    return path, originals


def test_raw_kitti_frames_from_a_bag_are_rectified_back(tmp_path: Path) -> None:
    """Through a real bag: the CameraInfo's lens (K, D, R) and rectified projection (P) reach the camera model, and
    rectifying the raw frames gives back the KITTI frames (the middle of the image, where both interpolations see the
    same pixels)."""
    bag, originals = _distorted_bag(tmp_path / "raw")
    rectifier = Rectifier()
    frames = list(read_camera_frames(bag))
    assert len(frames) == 3 and frames[0].camera.distorted
    for frame, original in zip(frames, originals, strict=True):
        height, width = original.shape[:2]
        middle = (slice(height // 8, -height // 8), slice(width // 8, -width // 8))
        rectified = rectifier(frame.rgb, frame.camera).astype(np.float64)
        back = np.abs(rectified[middle] - original[middle]).mean()
        as_recorded = np.abs(frame.rgb[middle].astype(np.float64) - original[middle]).mean()
        assert back < 0.3 * as_recorded, (back, as_recorded)


def test_the_bag_reader_rectifies_when_asked_and_counts_or_names_what_it_cannot(tmp_path: Path) -> None:
    """``read_camera_frames(rectify=True)``, which training and INT8 calibration read through, yields exactly the
    Rectifier's frames; a lens it cannot undistort is counted by kind with ``errors``, and otherwise raised naming the
    topic and the frame's record time."""
    bag, _ = _distorted_bag(tmp_path / "raw")
    rectifier = Rectifier()
    expected = [rectifier(frame.rgb, frame.camera) for frame in read_camera_frames(bag)]
    got = [frame.rgb for frame in read_camera_frames(bag, rectify=True)]
    assert len(got) == 3 and all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))

    fov, _ = _distorted_bag(tmp_path / "fov", model="fov")
    errors: dict[str, int] = {}
    assert list(read_camera_frames(fov, errors=errors, rectify=True)) == []
    assert list(errors.values()) == [3] and next(iter(errors)).startswith("LensError: distortion model 'fov'")
    with pytest.raises(LensError, match="^/camera/image_raw at 1000000000 ns: distortion model 'fov'"):
        next(read_camera_frames(fov, rectify=True))
    assert len(list(read_camera_frames(fov))) == 3  # without rectify the lens model is not read


def test_replay_training_and_int8_calibration_read_the_bag_rectified_when_asked(
        tmp_path: Path, small_bundle: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bag readers that feed a model take ``rectify`` as the node does, so that it trains, calibrates and runs on
    the same images: replay (``--set rectify=true``), a training source (``data.rectify``) and INT8 calibration
    (``sfm quantize --rectify``) each see the frames ``Rectifier`` makes from the bag's CameraInfo; a lens model
    that cannot be undistorted skips replay's frames and says why."""
    from sfm_ros.backends import preprocess
    from sfm_ros.bundle import read_metadata
    from sfm_ros.calibration import calibration_windows
    from sfm_ros.odometry.pipeline import Pipeline
    from training.config import DataConfig
    from training.data import DataError, open_source

    bag, _ = _distorted_bag(tmp_path / "raw")
    raw = [frame for frame in read_camera_frames(bag)]
    rectified = [Rectifier()(frame.rgb, frame.camera) for frame in raw]
    assert not np.array_equal(rectified[0], raw[0].rgb)

    seen = []
    process = Pipeline.process
    monkeypatch.setattr(Pipeline, "process", lambda self, stamp, rgb, camera: (seen.append(rgb),
                                                                                process(self, stamp, rgb, camera))[1])

    def replay(source: Path, output: str, *extra: str) -> int:
        return main(["replay", str(source), "--output", str(tmp_path / output), "--bundle", str(small_bundle),
                     "--backend", "onnxruntime", "--set", "scale.source=none", "--quiet", *extra])

    assert replay(bag, "rectified", "--set", "rectify=true") == 0
    assert len(seen) == 3 and all(np.array_equal(a, b) for a, b in zip(seen, rectified, strict=True))

    (sequence,) = open_source(bag, DataConfig(rectify=True))
    assert all(np.array_equal(a, b) for a, b in zip(sequence.frames(), rectified, strict=True))
    (as_recorded,) = open_source(bag, DataConfig())
    assert np.array_equal(next(as_recorded.frames()), raw[0].rgb)
    with pytest.raises(DataError, match="data.rectify needs the bag's CameraInfo"):
        open_source(bag, DataConfig(rectify=True, intrinsics=(700.0, 700.0, 600.0, 180.0)))

    metadata = read_metadata(small_bundle)
    window = next(calibration_windows(bag, metadata, rectify=True))
    assert np.array_equal(window["target"], preprocess(rectified[1], metadata))

    fov, _ = _distorted_bag(tmp_path / "fov", model="fov")
    capsys.readouterr()
    assert replay(fov, "plain") == 0
    captured = capsys.readouterr().out
    assert json.loads(captured[captured.index("{"):captured.rindex("}") + 1])["frames_out"] == 3
    assert replay(fov, "fov", "--set", "rectify=true") == 2
    assert "distortion model 'fov' cannot be undistorted here" in capsys.readouterr().err
    # A frame that cannot be rectified came in and was skipped, as the node counts it.
    mixed, _ = _distorted_bag(tmp_path / "mixed", first_model="fov")
    assert replay(mixed, "mixed", "--set", "rectify=true") == 0
    captured = capsys.readouterr().out
    summary = json.loads(captured[captured.index("{"):captured.rindex("}") + 1])
    assert summary["frames_in"] == 3 and summary["frames_out"] == 2
    assert sum(summary["malformed"].values()) == 1 and "LensError" in next(iter(summary["malformed"]))
