"""Registry of named weight files (placeholder API; being completed)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """A named weight file: where it comes from, its checksum, size and licence."""

    name: str
    filename: str
    url: str
    sha256: str
    size: int
    licence: str
    description: str = ""
