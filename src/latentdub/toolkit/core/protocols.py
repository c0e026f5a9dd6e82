"""Protocols each component kind implements; the pipeline relies on nothing else.

Shapes: ``B`` batch, ``L`` number of W+ styles (18 at 1024 px), ``S`` crop
side in pixels, ``T`` output frames. Torch images are float ``[B, 3, S, S]``
in [-1, 1]; numpy images are uint8 ``[H, W, 3]`` RGB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Protocol, runtime_checkable

import numpy as np

from .types import Alignment, Audio, ClipPair, Face, FramePair, Motion, RenderReport


@runtime_checkable
class Detector(Protocol):
    """Finds faces; ``dense_landmarks`` is True when faces carry 68 points."""

    dense_landmarks: bool

    def detect(self, image: np.ndarray) -> list[Face]:
        """All faces in a uint8 RGB image ``[H, W, 3]``, best first."""


@runtime_checkable
class FaceEmbedder(Protocol):
    """Identity vectors of faces, for following one person (``track.select: reference``)."""

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        """float32 ``[D]`` for ``face`` in uint8 RGB ``image`` ``[H, W, 3]``; same person = small Euclidean distance."""


@runtime_checkable
class Encoder(Protocol):
    """Image encoder E_I (inversion to W+)."""

    size: int
    n_styles: int

    def encode(self, images: Any) -> Any:
        """Aligned crops ``[B, 3, size, size]`` in [-1, 1] -> W+ ``[B, n_styles, 512]``."""


@runtime_checkable
class Generator(Protocol):
    """Image generator G; ``module`` is the trainable ``torch.nn.Module``."""

    size: int
    n_styles: int
    module: Any

    def synthesize(self, w: Any) -> Any:
        """W+ ``[B, n_styles, 512]`` -> images ``[B, 3, size, size]`` in [-1, 1] (constant noise)."""

    def fingerprint(self) -> str:
        """SHA-256 of the base weights, used to match identity profiles."""


@runtime_checkable
class AudioFeatures(Protocol):
    """Speech features aligned to video frames."""

    sample_rate: int

    def compute(self, audio: Audio, fps: float, n_frames: int) -> np.ndarray:
        """float32 ``[n_frames, ...]``: one feature window centred on each frame."""


@runtime_checkable
class MotionModel(Protocol):
    """Speech to per-frame motion codes of one :class:`Motion` kind."""

    kind: str

    def predict(self, audio: Audio, fps: float, n_frames: int, identity: Optional[Any] = None) -> Motion:
        """Motion for ``n_frames`` frames at ``fps``; ``identity`` comes from the renderer."""


@runtime_checkable
class Renderer(Protocol):
    """Draws the speaking face in the aligned crop.

    ``motion_kinds`` lists the :class:`Motion` kinds it accepts. ``prepare``
    sees a few aligned reference crops of the target and returns the identity
    handed to the motion model (a W+ latent for neural renderers, ``None``
    for warping ones).
    """

    motion_kinds: tuple[str, ...]

    def prepare(self, crops: np.ndarray, landmarks: np.ndarray) -> Optional[Any]:
        """Reference crops uint8 ``[N, S, S, 3]`` and their landmarks ``[N, P, 2]`` (crop px)."""

    def render(self, crops: np.ndarray, landmarks: np.ndarray, motion: Motion, frames: np.ndarray) -> np.ndarray:
        """Crops uint8 ``[B, S, S, 3]``, landmarks ``[B, P, 2]``, output frame indices ``[B]`` -> uint8 ``[B, S, S, 3]``."""


@runtime_checkable
class SourceStudent(Protocol):
    """Optional capability of a renderer or motion model: it studies the source before ``prepare``.

    When the built renderer or motion model has ``study``, the pipeline runs
    a study pass after tracking: every source frame with a tracked face, in
    frame order and in batches, as aligned crops uint8 ``[B, S, S, 3]``, their
    crop landmarks ``[B, P, 2]`` and source frame indices int64 ``[B]``.
    ``animate`` shows the one portrait. The component keeps what it needs,
    bounded in memory (disk for large clips).
    """

    def study(self, crops: np.ndarray, landmarks: np.ndarray, frames: np.ndarray) -> None:
        """Look at one batch of aligned source crops (see the class docstring)."""


@runtime_checkable
class RunReporter(Protocol):
    """Optional capability of a renderer: what it tells the run summary after the last frame."""

    def report(self) -> RenderReport:
        """Notes and the output frames it served by a fallback path."""


@runtime_checkable
class Compositor(Protocol):
    """Pastes a rendered crop back into its frame through a soft mask."""

    def composite(self, frame: np.ndarray, rendered: np.ndarray, alignment: Alignment, landmarks: np.ndarray) -> np.ndarray:
        """Frame uint8 ``[H, W, 3]``, crop uint8 ``[S, S, 3]``, landmarks in frame px ``[P, 2]`` -> new frame.

        Pixels outside the mask are returned unchanged.
        """


@runtime_checkable
class TorchRenderer(Protocol):
    """Optional capability of a renderer: it renders crops that are already torch tensors on its device.

    Used by the staged synthesis pass with ``runtime.frame_ops: torch``, so the
    crops stay on the GPU from the warp to the composite.
    """

    def render_torch(self, crops: Any, landmarks: np.ndarray, motion: Motion, frames: np.ndarray) -> Any:
        """Crops uint8 tensor ``[B, S, S, 3]`` -> rendered uint8 tensor ``[B, S, S, 3]`` on the same device (see ``render``)."""


@runtime_checkable
class TorchCompositor(Protocol):
    """Optional capability of a compositor: it blends torch tensors on their device (``runtime.frame_ops: torch``)."""

    def composite_torch(self, frame: Any, rendered: Any, alignment: Alignment, landmarks: np.ndarray) -> Any:
        """Frame uint8 tensor ``[H, W, 3]``, crop uint8 tensor ``[S, S, 3]`` -> new uint8 frame tensor, as ``composite``
        within one or two levels; pixels outside the mask unchanged."""


@runtime_checkable
class Trainer(Protocol):
    """Stage 1: trains one motion model; ``latentdub train`` (the core's loop) drives it.

    ``loop`` is its :class:`~latentdub.toolkit.learning.training.LoopConfig`
    (steps, batch, optimiser, checkpoints); ``loss_parts`` names the scalar
    parts :meth:`loss` reports (CSV columns); ``final_name`` is the file
    written at the end of a run.
    """

    loop: Any
    loss_parts: tuple[str, ...]
    final_name: str

    def start(self, data: Any, checkpoint: Optional[Path]) -> list[str]:
        """Build the model from the training data (or load ``checkpoint`` to resume); return notes for the summary."""

    def parameters(self) -> Any:
        """The parameters the optimiser updates."""

    def train(self, mode: bool) -> None:
        """Training (True) or evaluation (False) mode."""

    def loss(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[Any, dict[str, float]]:
        """Differentiable loss of one batch and its named parts."""

    def save(self, path: Path, extra: dict[str, Any]) -> Path:
        """Write the model to ``path`` with ``extra`` metadata."""

    def describe(self) -> dict[str, Any]:
        """JSON-ready description stored beside each checkpoint."""


@runtime_checkable
class Finetuner(Protocol):
    """Stage 2: adapts a generator to one identity."""

    def tune(self, generator: Generator, encoder: Encoder, crops: np.ndarray, out: Path) -> Path:
        """Tune on aligned crops uint8 ``[N, S, S, 3]`` and write an identity profile to ``out``."""


@runtime_checkable
class ClipScorer(Protocol):
    """Per-clip state of one metric."""

    def add(self, pair: FramePair) -> None:
        """Take one frame pair."""

    def result(self) -> dict[str, float]:
        """``{column: value}`` for the clip (NaN when undefined); extra keys go to CSV/JSON only."""


@runtime_checkable
class Metric(Protocol):
    """A built metric component."""

    columns: tuple[str, ...]

    def start(self, clip: ClipPair) -> ClipScorer:
        """A fresh scorer for ``clip``."""
