"""Folders written all or nothing: built in a temporary sibling, renamed into place only when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["staged_directory"]


@contextlib.contextmanager
def staged_directory(out_dir: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out_dir``; on success it replaces ``out_dir`` (removed first if
    it exists), on any exception it is removed and ``out_dir`` is left as it was."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
