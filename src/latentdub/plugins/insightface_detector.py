"""insightface detector: SCRFD boxes + five points, optional 68 points, from a local model folder.

Nothing is downloaded: give ``model_dir``, a folder such as insightface's
``buffalo_l`` (``det_10g.onnx``, ``1k3d68.onnx``, ``2d106det.onnx``, ...),
which insightface fetches into ``~/.insightface/models/`` on a machine with
network access (``insightface.app.FaceAnalysis(name="buffalo_l")``). The
insightface model packs are licensed for non-commercial research only.

Dense points come from ``1k3d68.onnx`` (68 points in the iBUG order; its
depth column is dropped). ``2d106det.onnx`` alone is not mapped to the iBUG
68 scheme: with only that model the detector reports five points
(``dense_landmarks`` False).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import numpy as np

from latentdub.toolkit.core.config import Range
from latentdub.toolkit.core.errors import MissingWeightsError
from latentdub.toolkit.core.hookspecs import hookimpl
from latentdub.toolkit.core.types import Face

HOW_TO_GET = (
    "download an insightface model pack (e.g. buffalo_l: det_10g.onnx, 1k3d68.onnx; non-commercial licence) "
    "and set detector.model_dir to its folder"
)
DENSE_MODEL = "1k3d68.onnx"


@dataclasses.dataclass(frozen=True)
class InsightfaceConfig:
    """Settings of the insightface detector.

    ``model_dir``: folder holding the ONNX models (required, never downloaded);
    ``det_size``: detector input side, px; ``min_score``: drop faces below
    this probability; ``dense``: also fit 68 points when ``1k3d68.onnx`` is present.
    """

    model_dir: Path
    det_size: Annotated[int, Range(ge=64, le=2048)] = 640
    min_score: Annotated[float, Range(ge=0, le=1)] = 0.5
    dense: bool = True


def detection_model(model_dir: Path) -> Path:
    """The SCRFD detection model in ``model_dir`` (``det_*.onnx`` or ``scrfd*.onnx``)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise MissingWeightsError(f"{model_dir}: insightface model folder not found; {HOW_TO_GET}")
    found = sorted([*model_dir.glob("det_*.onnx"), *model_dir.glob("scrfd*.onnx")])
    if not found:
        raise MissingWeightsError(f"{model_dir}: no detection model (det_*.onnx or scrfd*.onnx) in the folder; {HOW_TO_GET}")
    return found[0]


def _providers(device) -> list[str]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    wanted = ["CUDAExecutionProvider"] if getattr(device, "type", str(device)) == "cuda" else []
    return [p for p in wanted if p in available] + ["CPUExecutionProvider"]


class InsightfaceDetector:
    """SCRFD detection with five points; 68 points from ``1k3d68.onnx`` when present."""

    def __init__(self, config: InsightfaceConfig, device=None) -> None:
        from insightface.model_zoo import get_model

        self.config = config
        providers = _providers(device)
        self._det = get_model(str(detection_model(config.model_dir)), providers=providers)
        self._det.prepare(-1 if providers == ["CPUExecutionProvider"] else 0, input_size=(config.det_size, config.det_size), det_thresh=config.min_score)
        dense = Path(config.model_dir) / DENSE_MODEL
        self._landmarks = get_model(str(dense), providers=providers) if config.dense and dense.is_file() else None
        self.dense_landmarks = self._landmarks is not None

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in uint8 RGB ``[H, W, 3]``, highest probability first."""
        from insightface.app.common import Face as InsightFace

        bgr = np.ascontiguousarray(image[:, :, ::-1])
        dets, kpss = self._det.detect(bgr)
        faces = []
        for i in np.argsort(-dets[:, 4], kind="stable"):
            score = float(dets[i, 4])
            if score < self.config.min_score:
                continue
            box = dets[i, :4].astype(np.float32)
            five = kpss[i].astype(np.float32) if kpss is not None else None
            dense = None
            if self._landmarks is not None:
                dense = np.asarray(self._landmarks.get(bgr, InsightFace(bbox=box)), np.float32)[:, :2]
            if five is None:
                if dense is None:
                    continue
                from latentdub.toolkit.faces.align import five_from_68

                five = five_from_68(dense)
            faces.append(Face(box=box, score=score, landmarks5=five, landmarks68=dense))
        return faces


def build_insightface(config: InsightfaceConfig, context) -> InsightfaceDetector:
    """insightface SCRFD (+ 68 points) from a local model folder."""
    return InsightfaceDetector(config, context.device)


@hookimpl
def register_detectors(register):
    register(
        "insightface",
        build_insightface,
        config=InsightfaceConfig,
        summary="insightface SCRFD + 68 points from a local model folder (non-commercial models)",
    )
