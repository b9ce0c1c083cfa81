"""The network's step of a frame: the depth net on the frame, the pose net on the window of recent frames.

A two-frame depth net reads the frame and the recent frame whose gap is nearest the pose window's spacing
(``min_pose_interval_s``: on a camera faster than the training video, the gap between its snippets' frames), so the
pair is spaced as the pose net's frames are (``depth_frame_before``); by default (spacing 0) the frame just before.
The first frame after a (re)start, with none before it, is read twice.

``PoseWindow`` holds the frames the pose net sees (the tracking state owns it: a tracking restart replaces it), and
``network_step`` runs both networks for one frame. The pose net's window is (t-2, t-1, t) with t-1 as its target,
which gives the motion of frame t at once, so odometry has no frame of delay; the first full window after a
(re)start also gives the motion between its older frames (t-2 -> t-1), so the trajectory does not lag by a step.
"""

from __future__ import annotations

import collections
import dataclasses
import time

import numpy as np

from sfm_ros.backends import Backend, depth_input_from_frames, preprocess
from sfm_ros.bundle import BundleMetadata
from sfm_ros.camera import CameraModel
from sfm_ros.geometry import invert_transform, scale_intrinsics, window_transforms

__all__ = ["NetworkStep", "PoseWindow", "depth_frame_before", "grey_from_preprocessed", "network_step",
           "relative_pose", "remember_frame"]

# Below this disparity the depth is taken as this far (network units), so a zero disparity is not an infinite depth.
MIN_DISPARITY = 1e-6


@dataclasses.dataclass
class PoseWindow:
    """The pose net's window: (stamp ns, the preprocessed frame [1,3,H,W]) of its last ``length`` frames, and
    whether a full window has been used since the (re)start; and ``recent``, every frame since the last one at least
    the window's spacing old, which a two-frame depth net pairs with."""

    length: int
    frames: collections.deque[tuple[int, np.ndarray]] = dataclasses.field(init=False)
    complete: bool = False
    recent: list[tuple[int, np.ndarray]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.frames = collections.deque(maxlen=self.length)


@dataclasses.dataclass(frozen=True)
class NetworkStep:
    """The network's part of a frame: the preprocessed frame [1,3,h,w], K [3,3] at the network size, depth [h,w] in
    network units; the motion of frame t in frame t-1's camera [4,4] (network units; None without a full window),
    on the first full window also frame t-1's in the oldest frame's camera (else None), frame t's mask [h,w] or None;
    grey [h,w] for the alignments and the ground (None when unused or the frame did not enter the window); the time of
    the step (None without one)."""

    image: np.ndarray
    K: np.ndarray
    depth_units: np.ndarray
    T_prev_current: np.ndarray | None
    T_catch_up: np.ndarray | None
    mask: np.ndarray | None
    grey: np.ndarray | None
    dt_s: float | None


def network_step(backend: Backend, window: PoseWindow, stamp_ns: int, rgb: np.ndarray, camera: CameraModel,
                 dt_s: float | None, min_pose_interval_s: float, needs_grey: bool
                 ) -> tuple[NetworkStep, dict[str, float], float]:
    """The depth net on the frame ``rgb`` uint8 [H,W,3], and the pose net on ``window`` once the frame completes it (a
    frame enters the window only ``min_pose_interval_s`` after the last one). ``needs_grey``: the frame's grey image
    is used (alignment or the ground's lengths). Returns the step, the preprocess and depth timings (ms) and when
    the depth ended (``time.perf_counter``), from which the caller times the pose."""
    tick = time.perf_counter()
    metadata = backend.metadata
    K = scale_intrinsics(camera.K, metadata.width / camera.width, metadata.height / camera.height)
    image = preprocess(rgb, metadata)
    two_frames = metadata.depth_input_frames == 2
    previous = depth_frame_before(window.recent, stamp_ns, min_pose_interval_s) if two_frames else None
    depth_input = depth_input_from_frames(image, previous, metadata)
    if two_frames:  # a single-frame net pairs with nothing, so it keeps no history on the per-frame path
        window.recent = remember_frame(window.recent, stamp_ns, image, min_pose_interval_s)
    t_pre = time.perf_counter()
    disparity = backend.infer_depth(depth_input)[0, 0]
    t_depth = time.perf_counter()
    depth_units = 1.0 / np.maximum(disparity, MIN_DISPARITY)
    T_prev_current, T_catch_up, mask, grey = None, None, None, None
    window_dt = (stamp_ns - window.frames[-1][0]) / 1e9 if window.frames else None
    if not window.frames or window_dt >= min_pose_interval_s:
        window.frames.append((stamp_ns, image))
        if len(window.frames) == window.length:
            T_prev_current, T_catch_up, mask = relative_pose(backend, [frame for _, frame in window.frames],
                                                             first=not window.complete)
            window.complete = True
            dt_s = window_dt
        if needs_grey:
            grey = grey_from_preprocessed(image, metadata)
    timings = {"preprocess": (t_pre - tick) * 1e3, "depth": (t_depth - t_pre) * 1e3}
    return NetworkStep(image, K, depth_units, T_prev_current, T_catch_up, mask, grey, dt_s), timings, t_depth


def depth_frame_before(recent: list[tuple[int, np.ndarray]], stamp_ns: int, spacing_s: float) -> np.ndarray | None:
    """Of ``recent`` (stamp ns, frame) pairs, the frame stamped before ``stamp_ns`` whose gap to it is nearest
    ``spacing_s`` (the newer on a tie), or None when there is none: a two-frame depth net's second frame."""
    earlier = [(stamp, frame) for stamp, frame in reversed(recent) if stamp < stamp_ns]
    if not earlier:
        return None
    return min(earlier, key=lambda item: abs((stamp_ns - item[0]) / 1e9 - spacing_s))[1]


def remember_frame(recent: list[tuple[int, np.ndarray]], stamp_ns: int, frame: np.ndarray, spacing_s: float
                   ) -> list[tuple[int, np.ndarray]]:
    """``recent`` with (``stamp_ns``, ``frame``) appended, oldest first, less the frames older than the newest one at
    least ``spacing_s`` before ``stamp_ns``: a later frame's gap to those is longer still, so they are never the
    nearest to ``spacing_s`` (``depth_frame_before``)."""
    frames = [*recent, (stamp_ns, frame)]
    past_spacing = [i for i, (stamp, _) in enumerate(frames[:-1]) if (stamp_ns - stamp) / 1e9 >= spacing_s]
    return frames[past_spacing[-1]:] if past_spacing else frames


def relative_pose(backend: Backend, frames: list[np.ndarray], first: bool
                  ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Poses from a full window of preprocessed frames [1,3,H,W], oldest first (network units): frame t in frame
    t-1's camera [4,4]; on the ``first`` full window also frame t-1 in the oldest frame's camera (the steps before the
    newest one), else None; frame t's mask [h,w] or None."""
    length = len(frames)
    center = length // 2
    target = frames[center]
    sources = np.stack([f[0] for i, f in enumerate(frames) if i != center])[None]
    poses, masks = backend.infer_pose(target, sources)
    T_frame_target = window_transforms(poses)
    last, previous = length - 1, length - 2
    # Points of frame t-1 into frame t: T_t_target @ T_target_(t-1); the pose of t in t-1 is its inverse.
    T_current_prev = T_frame_target[last] @ invert_transform(T_frame_target[previous])
    # Frame k in frame j's camera: T_j<-c @ inv(T_k<-c), with c the target.
    T_catch_up = T_frame_target[0] @ invert_transform(T_frame_target[previous]) if first else None
    # The masks follow the sources, the window without its centre: the newest frame is the last source.
    mask = masks[-1] if masks is not None else None
    return invert_transform(T_current_prev), T_catch_up, mask


def grey_from_preprocessed(image: np.ndarray, metadata: BundleMetadata) -> np.ndarray:
    """The preprocessed [1,3,H,W] frame as grey float32 [H,W] in [0, 1] (the alignment's input): the normalisation
    undone, then the channels' mean."""
    mean = np.asarray(metadata.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(metadata.std, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((image[0] * std + mean).mean(axis=0), dtype=np.float32)
