"""``sfm replay BAG``: the node's pipeline over a recorded bag, without ROS.

Reads the camera topics with rosbags, runs ``Pipeline`` as fast as possible (or at recorded speed, dropping
frames it cannot keep up with, as the node does), and writes an MCAP bag with what the node named ``sfm``
publishes, each stamped like its input frame: ``/sfm/depth/image`` (32FC1) and ``/sfm/depth/camera_info``,
``/sfm/odom``, ``/tf`` (always: the bag is its own world) and optionally ``/sfm/explainability``; a TUM trajectory;
and, when the bag carries a ground-truth Odometry topic, the pose evaluation report.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from sfm_ros.bags import BagError, BagWriter, read_camera_frames, read_odometry
from sfm_ros.camera import LensError, Rectifier
from sfm_ros.errors import error_kind
from sfm_ros.odometry.estimate import FrameError
from sfm_ros.odometry.pipeline import Pipeline
from sfm_ros.ros_io import estimate_messages, make_header

__all__ = ["ReplaySummary", "replay_bag"]

PREVIEW_EVERY, PREVIEW_ROWS = 15, 4  # depth colour maps of every 15th output frame, at most 4


@dataclasses.dataclass
class ReplaySummary:
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    malformed: dict[str, int] = dataclasses.field(default_factory=dict)
    events: list[str] = dataclasses.field(default_factory=list)
    restarts: dict[str, int] = dataclasses.field(default_factory=dict)  # tracking restarts by cause, as the node's
    latency_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    output_bag: str = ""
    trajectory: str = ""
    evaluation: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def replay_bag(bag: str | Path, pipeline: Pipeline, output: str | Path, *, realtime: bool = False,
               gt_topic: str | None = None, odom_frame: str = "sfm_odom", base_frame: str = "base_link",
               publish_mask: bool = False, overwrite: bool = False, progress: bool = True,
               evaluate: bool = True, image_topic: str | None = None, info_topic: str | None = None,
               intrinsics: np.ndarray | None = None, rectify: bool = False) -> ReplaySummary:
    """Replay ``bag`` through ``pipeline``; write ``output``/replay.mcap-bag, trajectory.tum and report/.

    ``image_topic`` / ``info_topic`` pick the camera (None: auto-detected); ``intrinsics`` (K [3,3]) replaces the
    CameraInfo topic (the node's ``use_camera_info: false``); ``rectify`` undistorts raw images with the CameraInfo's
    lens (the node's ``rectify``). Frames and CameraInfo messages that cannot be decoded
    or used are skipped and counted in ``malformed`` by kind (CameraInfo ones as 'CameraInfo <kind>'), as the node
    counts them in its diagnostics.
    """
    from tqdm import tqdm

    from sfm_ros.evaluate import evaluate_pose, write_tum

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    summary = ReplaySummary(output_bag=str(output / "sfm_output"), trajectory=str(output / "trajectory.tum"))
    latencies, stamps, poses = [], [], []
    previews: list[tuple[str, np.ndarray, np.ndarray]] = []
    wall_start, bag_start = None, None
    bar = tqdm(desc="replay", unit="frame", disable=not progress)
    rectifier = Rectifier()
    with BagWriter(summary.output_bag, overwrite=overwrite) as writer:
        types = writer.types
        for frame in read_camera_frames(bag, intrinsics=intrinsics, errors=summary.malformed, image_topic=image_topic,
                                        info_topic=info_topic):
            summary.frames_in += 1
            bar.update(1)
            if realtime:
                # Paced by the bag's record times, as `ros2 bag play` plays it: a driver's header stamps may jump (a
                # clock set after the start, a loop), which the pipeline handles as the node would.
                now = time.perf_counter()
                if wall_start is None:
                    wall_start, bag_start = now, frame.recorded_ns
                behind = (now - wall_start) - (frame.recorded_ns - bag_start) / 1e9
                if behind > 0.05:  # newest frame wins, as in the node
                    summary.dropped += 1
                    continue
                if behind < 0:
                    time.sleep(-behind)
            tick = time.perf_counter()
            try:
                rgb = rectifier(frame.rgb, frame.camera) if rectify else frame.rgb
                estimate = pipeline.process(frame.stamp_ns, rgb, frame.camera)
            except (FrameError, LensError) as exc:
                key = error_kind(exc)
                summary.malformed[key] = summary.malformed.get(key, 0) + 1
                continue
            latencies.append((time.perf_counter() - tick) * 1e3)
            summary.events += [f"{frame.stamp_ns}: {e}" for e in estimate.events]
            header = make_header(types, frame.stamp_ns, frame.frame_id or "camera_optical_frame")
            # The node's own composition of its outputs, so what is recorded here is what the node publishes.
            messages = estimate_messages(types, estimate, header, odom_frame, base_frame, with_mask=publish_mask)
            writer.write("/sfm/depth/image", messages.depth, frame.stamp_ns)
            writer.write("/sfm/depth/camera_info", messages.depth_info, frame.stamp_ns)
            writer.write("/sfm/odom", messages.odometry, frame.stamp_ns)
            writer.write("/tf", types.TFMessage(transforms=[messages.transform]), frame.stamp_ns)
            if messages.mask is not None:
                writer.write("/sfm/explainability", messages.mask, frame.stamp_ns)
            summary.frames_out += 1
            if summary.frames_out % PREVIEW_EVERY == 1 and len(previews) < PREVIEW_ROWS:
                unit = "m" if estimate.scale.metric else "network units"
                previews.append((f"frame {summary.frames_out - 1} ({unit})", rgb, estimate.depth_m))
            stamps.append(frame.stamp_ns)
            poses.append(estimate.T_odom_camera)
        bar.close()
        summary.restarts = {cause.value: count for cause, count in pipeline.restarts.items()}
        if not stamps:  # raised inside the writer, so no empty output bag is renamed into place
            raise BagError(f"no frame of {bag} could be processed (malformed: {summary.malformed})")
    poses_array = np.linalg.inv(poses[0]) @ np.asarray(poses)
    write_tum(summary.trajectory, np.asarray(stamps), poses_array)
    values = np.asarray(latencies)
    summary.latency_ms = {"p50": float(np.percentile(values, 50)), "p90": float(np.percentile(values, 90)),
                          "p99": float(np.percentile(values, 99)), "max": float(values.max())}
    from sfm_ros.report import plot_depth_previews

    (output / "report").mkdir(exist_ok=True)
    plot_depth_previews(output / "report" / "depth_preview.png", previews)
    if evaluate:
        try:
            gt_stamps, gt_poses, topic = read_odometry(bag, gt_topic)
        except BagError as exc:
            summary.events.append(f"no evaluation: {exc}")
        else:
            summary.evaluation = evaluate_pose(gt_stamps, gt_poses, np.asarray(stamps), poses_array,
                                               output / "report", title=f"Replay of {Path(bag).name} vs {topic}")
    return summary
