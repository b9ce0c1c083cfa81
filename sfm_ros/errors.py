"""How errors are counted: a stable key per kind of error, shared by the frame worker, the node and the bag reader."""

from __future__ import annotations

import re

__all__ = ["error_kind"]


def error_kind(exc: BaseException) -> str:
    """A stable key for counting errors: the class and the message's shape, without sizes and counts."""
    return f"{type(exc).__name__}: {re.sub(r'[0-9]+', 'N', str(exc).split(':')[0].split(';')[0])[:80]}"
