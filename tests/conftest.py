"""Shared fixtures: the real test media and a clean plugin state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _find_shared_data() -> Path | None:
    env = os.environ.get("LATENTDUB_TEST_DATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "data", REPO / "shared" / "data"]
    for path in candidates:
        if (path / "grid").is_dir():
            return path
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real test media (GRID clips, portrait); skips when absent."""
    path = _find_shared_data()
    if path is None:
        pytest.skip("real test media not found: set LATENTDUB_TEST_DATA or place shared/data beside the repo")
    return path


@pytest.fixture(scope="session")
def grid_clips(shared_data: Path) -> list[Path]:
    """The eight GRID corpus clips (CC BY 4.0, Cooke et al. 2006), sorted by name."""
    return sorted((shared_data / "grid").glob("*.mpg"))


@pytest.fixture(scope="session")
def portrait(shared_data: Path) -> Path:
    """The public-domain NASA astronaut portrait, 512x512 PNG."""
    return shared_data / "photos" / "astronaut.png"
