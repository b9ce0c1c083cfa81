"""How errors are counted: a stable key per kind of error, shared by the frame worker, the node and the bag reader."""

from __future__ import annotations

import re

__all__ = ["error_kind"]

# A number standing alone (3, 0.5, 640x480, (480, 640, 3)), not digits inside a word (32FC1, mono16, rgb8).
_NUMBER = re.compile(r"\b\d+(?:[.x]\d+)*\b")


def error_kind(exc: BaseException) -> str:
    """A stable key for counting errors: the class and the message's shape, its numbers (sizes, counts, stamps)
    replaced by N; digits inside words stay, so an encoding such as 32FC1 is still readable."""
    return f"{type(exc).__name__}: {_NUMBER.sub('N', str(exc).split(':')[0].split(';')[0])[:80]}"
