"""A single worker thread where the newest frame wins: keeps up with a fast camera by dropping stale frames,
never by queueing without bound. ROS-free, so it is tested here and used by the node.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["LatestFrameWorker", "error_kind"]


def error_kind(exc: BaseException) -> str:
    """A stable key for counting errors: the class and the message's shape, without sizes and counts."""
    return f"{type(exc).__name__}: {re.sub(r'[0-9]+', 'N', str(exc).split(':')[0].split(';')[0])[:80]}"


class LatestFrameWorker:
    """Runs ``handler(item)`` on its own thread for the newest submitted item.

    A submit that finds an unprocessed item replaces it (counted in ``dropped``). An exception in the handler is
    counted by its kind (``errors``), reported once per kind through ``on_new_error``, and the worker goes on.
    """

    def __init__(self, handler: Callable[[Any], None], on_new_error: Callable[[str, BaseException], None] | None = None,
                 name: str = "sfm-inference") -> None:
        self._handler = handler
        self._on_new_error = on_new_error
        self._condition = threading.Condition()
        self._pending: Any = None
        self._has_pending = False
        self._stopping = False
        self.submitted = 0
        self.processed = 0
        self.dropped = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.last_latency_s = 0.0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> None:
        """Offer a new item; an older unprocessed one is dropped."""
        with self._condition:
            self.submitted += 1
            if self._has_pending:
                self.dropped += 1
            self._pending, self._has_pending = item, True
            self._condition.notify()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._has_pending and not self._stopping:
                    self._condition.wait()
                if self._stopping:
                    return
                item, self._pending, self._has_pending = self._pending, None, False
            tick = time.perf_counter()
            try:
                self._handler(item)
            except Exception as exc:  # the node must survive any bad frame; the kind is counted and reported
                kind = error_kind(exc)
                self.errors[kind] += 1
                if self.errors[kind] == 1 and self._on_new_error is not None:
                    self._on_new_error(kind, exc)
            finally:
                self.processed += 1
                self.last_latency_s = time.perf_counter() - tick

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Wait until nothing is pending and the handler is done (for tests and shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._condition:
                if not self._has_pending and self.processed + self.dropped >= self.submitted:
                    return True
            time.sleep(0.005)
        return False

    def stop(self, timeout_s: float = 5.0) -> None:
        with self._condition:
            self._stopping = True
            self._condition.notify()
        self._thread.join(timeout_s)
