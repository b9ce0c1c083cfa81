"""A single worker thread where the newest frame wins: keeps up with a fast camera by dropping stale frames,
never by queueing without bound. ROS-free, so it is tested here and used by the node.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

from sfm_ros.errors import error_kind

__all__ = ["LatestFrameWorker"]


class LatestFrameWorker:
    """Runs ``handler(item)`` on its own thread for the newest submitted item.

    A submit that finds an unprocessed item replaces it (counted in ``dropped``). An exception in the handler is
    counted by its kind (``errors``), reported once per kind through ``on_new_error``, and the worker goes on.
    Commands (``call``) run on the same thread between items, so state the handler uses (the pipeline) is only
    ever touched by one thread.
    """

    def __init__(self, handler: Callable[[Any], None], on_new_error: Callable[[str, BaseException], None] | None = None,
                 name: str = "sfm-inference") -> None:
        self._handler = handler
        self._on_new_error = on_new_error
        self._condition = threading.Condition()
        self._pending: Any = None
        self._has_pending = False
        self._commands: collections.deque[Callable[[], None]] = collections.deque()
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

    def call(self, command: Callable[[], Any], timeout_s: float | None = None) -> Any:
        """Run ``command`` on the worker thread before the next item.

        timeout_s None: return at once. Otherwise wait for it and return its result (or raise its exception);
        TimeoutError when the worker has not run it within ``timeout_s`` (it still runs later).
        """
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["value"] = command()
            except Exception as exc:  # handed to the caller, or reported like a frame's error
                outcome["error"] = exc
                if timeout_s is None and self._on_new_error is not None:
                    self._on_new_error(error_kind(exc), exc)
            finally:
                done.set()

        with self._condition:
            self._commands.append(run)
            self._condition.notify()
        if timeout_s is None:
            return None
        if not done.wait(timeout_s):
            raise TimeoutError(f"the worker did not run the command within {timeout_s} s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._has_pending and not self._commands and not self._stopping:
                    self._condition.wait()
                if self._stopping:
                    return
                commands = list(self._commands)
                self._commands.clear()
                if not commands:
                    item, self._pending, self._has_pending = self._pending, None, False
            if commands:
                for command in commands:
                    command()
                continue  # then the newest item, or more commands
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
                if not self._has_pending and not self._commands and self.processed + self.dropped >= self.submitted:
                    return True
            time.sleep(0.005)
        return False

    def stop(self, timeout_s: float = 5.0) -> None:
        with self._condition:
            self._stopping = True
            self._condition.notify()
        self._thread.join(timeout_s)
