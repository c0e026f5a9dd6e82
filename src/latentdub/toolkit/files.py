"""Checks on output paths, made before any work starts."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import OutputError


def check_writable_file(path: str | Path, example: str) -> Path:
    """``path`` (user-expanded) if a file can be created there, else :class:`OutputError`.

    ``example`` is a file name suggested when ``path`` is a folder.
    """
    path = Path(path).expanduser()
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name such as {path / example}")
    if not parent.is_dir():
        raise OutputError(f"{path}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{path}: folder {parent} is not writable; choose another output path")
    return path
