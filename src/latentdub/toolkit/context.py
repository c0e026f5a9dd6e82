"""What a component factory receives: the device, the weights resolver, and its siblings."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional


@dataclasses.dataclass
class BuildContext:
    """Passed to every ``factory(config, context)``.

    ``device``: the ``torch.device`` to run on; ``weights(name_or_path)``
    returns a local path for a registered weight name or a user path (raising
    :class:`~latentdub.toolkit.errors.MissingWeightsError`); ``build(stage)``
    builds the component configured for another stage of the same preset
    (for example a renderer asking for the ``generator`` stage), cached so each
    stage is built once; ``seed`` seeds random initialisation.
    """

    device: Any
    weights: Callable[[str], Path]
    build: Callable[[str], Any]
    seed: int = 0
    profile: Optional[Path] = None
    log: Callable[[str], None] = print
