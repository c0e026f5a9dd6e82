"""MTCNN face detector from facenet-pytorch (weights ship in its wheel; offline).

Gives a box, a probability in [0, 1] and five points (eyes, nose, mouth
corners; image-left first) per face; no dense landmarks.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

import numpy as np

from latentdub.toolkit.core.config import Range
from latentdub.toolkit.core.errors import ConfigError
from latentdub.toolkit.core.hookspecs import hookimpl
from latentdub.toolkit.core.types import Face


@dataclasses.dataclass(frozen=True)
class MtcnnConfig:
    """Settings of the MTCNN detector.

    ``min_face_size``: smallest face searched for, px (smaller is slower);
    ``thresholds``: P-, R- and O-net acceptance probabilities;
    ``factor``: image pyramid scale step; ``min_score``: drop faces whose
    final probability is below this.
    """

    min_face_size: Annotated[int, Range(ge=12)] = 40
    thresholds: tuple[Annotated[float, Range(ge=0, le=1)], ...] = (0.6, 0.7, 0.7)
    factor: Annotated[float, Range(gt=0, lt=1)] = 0.709
    min_score: Annotated[float, Range(ge=0, le=1)] = 0.9

    def check(self, where: str) -> None:
        """One threshold per MTCNN stage."""
        if len(self.thresholds) != 3:
            raise ConfigError(f"{where}.thresholds: {list(self.thresholds)} must hold 3 values (P-, R- and O-net), e.g. [0.6, 0.7, 0.7]")


class MtcnnDetector:
    """facenet-pytorch MTCNN returning :class:`Face` objects, most confident first."""

    dense_landmarks = False

    def __init__(self, config: MtcnnConfig, device) -> None:
        from facenet_pytorch import MTCNN

        self.config = config
        self._net = MTCNN(
            min_face_size=config.min_face_size,
            thresholds=list(config.thresholds),
            factor=config.factor,
            keep_all=True,
            select_largest=False,
            device=device,
        )

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in uint8 RGB ``[H, W, 3]``, highest probability first."""
        import torch

        with torch.inference_mode():
            boxes, probs, points = self._net.detect(np.ascontiguousarray(image), landmarks=True)
        if boxes is None:
            return []
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        probs = np.asarray(probs, np.float32).reshape(-1)
        points = np.asarray(points, np.float32).reshape(-1, 5, 2)
        order = np.argsort(-probs, kind="stable")
        return [
            Face(box=boxes[i], score=float(probs[i]), landmarks5=points[i])
            for i in order
            if probs[i] >= self.config.min_score
        ]


def build_mtcnn(config: MtcnnConfig, context) -> MtcnnDetector:
    """MTCNN (facenet-pytorch) on the context's device."""
    return MtcnnDetector(config, context.device)


@hookimpl
def register_detectors(register):
    register("mtcnn", build_mtcnn, config=MtcnnConfig, summary="MTCNN (facenet-pytorch), 5 points, offline")
