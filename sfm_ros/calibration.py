"""Calibration frames for INT8: network inputs from consecutive frames of a bag, preprocessed as the pipeline does.

Below both ``sfm_ros.quantize`` (which writes the INT8 models for onnxruntime and TensorRT) and the backends, so
neither has to import the other for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sfm_ros.bundle import BundleMetadata

__all__ = ["calibration_windows"]


def calibration_windows(bag: str | Path, metadata: BundleMetadata, max_windows: int = 64, *,
                        image_topic: str | None = None, info_topic: str | None = None, rectify: bool = False
                        ) -> Iterator[dict[str, np.ndarray]]:
    """Network inputs from consecutive frames of a bag, preprocessed as the pipeline does.

    Yields {'image': [1,3F,H,W], 'target': [1,3,H,W], 'sources': [1,N,3,H,W]} for each window of N+1
    consecutive frames (target = the middle one, as in training; a two-frame depth net's image is the target, then
    the frame before it), at most ``max_windows``. ``image_topic`` /
    ``info_topic``: the camera's topics (None: auto-detected); ``rectify``: undistort raw images with the bag's
    CameraInfo first, as the node's ``rectify`` does.
    """
    from sfm_ros.backends import depth_input_from_frames, preprocess
    from sfm_ros.bags import read_camera_frames

    window = metadata.num_sources + 1
    frames: list[np.ndarray] = []
    produced = 0
    for frame in read_camera_frames(bag, image_topic=image_topic, info_topic=info_topic, rectify=rectify):
        frames.append(preprocess(frame.rgb, metadata))
        if len(frames) < window:
            continue
        center = window // 2
        sources = np.stack([f[0] for i, f in enumerate(frames) if i != center])[None]
        image = depth_input_from_frames(frames[center], frames[center - 1], metadata)
        yield {"image": image, "target": frames[center], "sources": sources}
        frames.pop(0)
        produced += 1
        if produced >= max_windows:
            return
