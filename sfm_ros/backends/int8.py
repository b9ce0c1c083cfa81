"""INT8 calibration for TensorRT from the frames of a bag (entropy calibrator, cached beside the engines).

Needs tensorrt and pycuda; not exercised on machines without them (the TensorRT tests skip there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sfm_ros.bundle import read_metadata
from sfm_ros.calibration import calibration_windows

try:  # the base class must exist at class-definition time
    import tensorrt as trt

    _Base: Any = trt.IInt8EntropyCalibrator2
except ImportError:  # pragma: no cover - TensorRT machines only
    _Base = object


class BagCalibrator(_Base):
    """Feeds the frame windows of a bag (``sfm_ros.calibration.calibration_windows``), inputs served by name."""

    def __init__(self, bag: str | Path, bundle: str | Path, cache_dir: str | Path, max_frames: int = 200) -> None:
        if _Base is object:
            raise ImportError("INT8 calibration needs the tensorrt package")
        super().__init__()
        import pycuda.driver as cuda

        self._cuda = cuda
        metadata = read_metadata(bundle)
        self._windows = list(calibration_windows(bag, metadata, max_windows=max_frames))
        if not self._windows:
            raise ValueError(f"{bag} gave no window of {metadata.num_sources + 1} frames; INT8 calibration needs one")
        self._index = 0
        self._device: dict[str, Any] = {}
        self._cache = Path(cache_dir).expanduser() / "int8_calibration.cache"

    def get_batch_size(self) -> int:
        return 1

    def get_batch(self, names: list[str]) -> list[int] | None:
        if self._index >= len(self._windows):
            return None
        feeds = self._windows[self._index]
        self._index += 1
        pointers = []
        for name in names:
            array = np.ascontiguousarray(feeds[name], dtype=np.float32)
            if name not in self._device:
                self._device[name] = self._cuda.mem_alloc(array.nbytes)
            self._cuda.memcpy_htod(self._device[name], array)
            pointers.append(int(self._device[name]))
        return pointers

    def read_calibration_cache(self) -> bytes | None:
        return self._cache.read_bytes() if self._cache.is_file() else None

    def write_calibration_cache(self, cache: bytes) -> None:
        self._cache.parent.mkdir(parents=True, exist_ok=True)
        self._cache.write_bytes(bytes(cache))
