"""latentdub: re-lip-sync talking-head video through a pre-trained StyleGAN2's latent space.

The public Python API mirrors the command line::

    import latentdub
    latentdub.dub("clip.mp4", "speech.wav", "out.mp4", preset="preview")
    latentdub.animate("portrait.png", "speech.wav", "talk.mp4")
    latentdub.tune("actor.mp4", "actor.profile")
    latentdub.prepare_dataset("GRID/", "grid-data/", layout="grid")
    latentdub.train("grid-data/", "runs/grid")
    latentdub.fit_directions("clips/", "mouth-directions.safetensors")
    latentdub.evaluate("out/", "reference/")
    latentdub.batch("manifest.yaml")

Every function takes ``preset`` (a shipped name or a YAML path) and
``overrides`` (``["stage.key=value", ...]``) like the CLI's ``--preset`` and
``--set``. Heavy modules are imported on first call.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "dub": "latentdub.toolkit.dubbing.pipeline:dub",
    "animate": "latentdub.toolkit.dubbing.pipeline:animate",
    "tune": "latentdub.toolkit.learning.tuning:tune",
    "prepare_dataset": "latentdub.toolkit.learning.dataset:prepare_dataset",
    "train": "latentdub.toolkit.learning.training:train",
    "fit_directions": "latentdub.toolkit.learning.directions:fit_directions",
    "evaluate": "latentdub.toolkit.evaluation.evaluate:evaluate",
    "batch": "latentdub.toolkit.batch.run:run_batch",
    "resolve_preset": "latentdub.toolkit.core.presets:resolve_preset",
    "register_plugin": "latentdub.toolkit.core.plugins:register_plugin",
    "unregister_plugin": "latentdub.toolkit.core.plugins:unregister_plugin",
    "hookimpl": "latentdub.toolkit.core.hookspecs:hookimpl",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        module, attr = _API[name].split(":")
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'latentdub' has no attribute {name!r}")
