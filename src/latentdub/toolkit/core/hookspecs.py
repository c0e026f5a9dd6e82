"""Hook specifications: every extension point of latentdub.

Each hook receives a ``register`` callback and hands it factories, so the core
owns names, aliases and collisions. ``register(name, factory, config=Cls,
summary="...")``: ``factory(config, context)`` builds the component on
demand, ``config`` is a frozen dataclass of the component's typed settings
(validated from presets), and nothing heavy is imported or loaded until the
factory runs. Built-in components use these same hooks.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("latentdub")
hookimpl = pluggy.HookimplMarker("latentdub")


@hookspec
def register_detectors(register):
    """Register face detectors: ``detect(image) -> list[Face]`` on uint8 RGB frames."""


@hookspec
def register_face_embedders(register):
    """Register face embedders for ``track.select: reference``: ``embed(image, face) -> float32 [D]`` identity vectors."""


@hookspec
def register_encoders(register):
    """Register image encoders (inversion): aligned crops ``[B, 3, S, S]`` in [-1, 1] to W+ ``[B, L, 512]``."""


@hookspec
def register_generators(register):
    """Register generators: W+ latents ``[B, L, 512]`` to images ``[B, 3, S, S]`` in [-1, 1]."""


@hookspec
def register_motion_models(register):
    """Register motion-from-audio models: speech to per-frame :class:`Motion` codes."""


@hookspec
def register_renderers(register):
    """Register renderers: a source frame, its tracked face and a motion code to a new face image."""


@hookspec
def register_trainers(register):
    """Register Stage-1 trainers, one per trainable motion model and under its name: the core's training loop drives them."""


@hookspec
def register_finetuners(register):
    """Register fine-tuners (Stage 2): adapt a generator to one identity and return a profile."""


@hookspec
def register_compositors(register):
    """Register compositors: paste a rendered face back into the frame through a soft mask."""


@hookspec
def register_audio_features(register):
    """Register audio feature extractors: speech to per-video-frame feature windows."""


@hookspec
def register_metrics(register):
    """Register evaluation metrics computed by ``latentdub evaluate``."""


@hookspec
def register_weights(register):
    """Register named weight files: ``register(WeightSpec(...))``."""


@hookspec
def register_commands(cli):
    """Add extra click commands to the ``latentdub`` command group."""
