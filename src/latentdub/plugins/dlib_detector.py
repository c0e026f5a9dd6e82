"""dlib face detector: HOG frontal detector + 68-point shape predictor (offline).

The model files come from the ``face-recognition-models`` package (found
through its import spec: importing it needs ``pkg_resources``). The 68-point
model is trained on iBUG 300-W, whose licence excludes commercial use.

Scores: dlib's HOG detector returns an SVM margin ``m`` (0 is dlib's own
threshold, clear frontal faces score 1-3). It is mapped to [0, 1] by
``score = 1 / (1 + exp(-2 m))``: m = 0 -> 0.5, m = 1 -> 0.88, m = 2 -> 0.98.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np

from latentdub.toolkit.core.config import NAMES_WEIGHTS, NoConfig, Range
from latentdub.toolkit.core.errors import BadInputError, MissingWeightsError
from latentdub.toolkit.core.hookspecs import hookimpl
from latentdub.toolkit.core.types import Face
from latentdub.toolkit.faces.align import ffhq_alignment, five_from_68, warp_to_crop

PACKAGE = "face_recognition_models"


@dataclasses.dataclass(frozen=True)
class DlibConfig:
    """Settings of the dlib detector.

    ``upsample``: times the image is doubled before HOG (0 finds faces of
    about 80 px and up, each step halves that and costs ~4x time);
    ``min_score``: drop faces below this mapped score (0.5 = dlib's default
    threshold); ``max_side``: frames whose longer side exceeds this many px
    are downscaled for the HOG pass only (0 = never), landmarks use full
    resolution; ``predictor``: path of a 68-point ``.dat`` to use instead of
    the packaged one.
    """

    upsample: Annotated[int, Range(ge=0, le=3)] = 0
    min_score: Annotated[float, Range(ge=0, le=1)] = 0.5
    max_side: Annotated[int, Range(ge=0)] = 640
    predictor: Annotated[Optional[Path], NAMES_WEIGHTS] = None


def model_file(name: str) -> Path:
    """Path of a ``.dat`` model shipped by ``face-recognition-models``."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / "models" / name
            if path.is_file():
                return path
    raise MissingWeightsError(f"{name}: dlib model not found; install it with `pip install face-recognition-models`")


def margin_to_score(margin: float) -> float:
    """Map dlib's HOG SVM margin to [0, 1] (see the module docstring)."""
    return 1.0 / (1.0 + math.exp(-2.0 * margin))


def score_to_margin(score: float) -> float:
    """Inverse of :func:`margin_to_score` (clamped to a finite margin)."""
    p = min(max(score, 1e-6), 1 - 1e-6)
    return 0.5 * math.log(p / (1 - p))


@functools.lru_cache(maxsize=2)
def _models(predictor: Path, mtime_ns: int) -> tuple[Any, Any]:
    """dlib's HOG detector and the shape predictor read from ``predictor`` (loaded once per file version: seconds each)."""
    import dlib

    try:
        shape = dlib.shape_predictor(str(predictor))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise BadInputError(f"{predictor}: not a dlib shape predictor ({reason[:120]}); give a 68-point .dat file as detector.predictor") from None
    points = shape(np.zeros((16, 16, 3), np.uint8), dlib.rectangle(0, 0, 15, 15)).num_parts
    if points != 68:
        raise BadInputError(f"{predictor}: predicts {points} points, not 68; give a 68-point .dat file as detector.predictor")
    return dlib.get_frontal_face_detector(), shape


class DlibDetector:
    """HOG detection and 68 landmarks; :meth:`landmarks_in_box` refits without detecting."""

    dense_landmarks = True

    def __init__(self, config: DlibConfig) -> None:
        import dlib

        self.config = config
        predictor = Path(config.predictor) if config.predictor else model_file("shape_predictor_68_face_landmarks.dat")
        if not predictor.is_file():
            raise MissingWeightsError(f"{predictor}: detector.predictor file not found; give a dlib 68-point .dat file")
        self._dlib = dlib
        self._hog, self._shape = _models(predictor.resolve(), predictor.stat().st_mtime_ns)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in uint8 RGB ``[H, W, 3]``, highest score first."""
        image = np.ascontiguousarray(image)
        small, factor = image, 1.0
        longest = max(image.shape[:2])
        if self.config.max_side and longest > self.config.max_side:
            import cv2

            factor = longest / self.config.max_side
            size = (round(image.shape[1] / factor), round(image.shape[0] / factor))
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        rects, margins, _ = self._hog.run(small, self.config.upsample, score_to_margin(self.config.min_score))
        faces = []
        for rect, margin in sorted(zip(rects, margins), key=lambda rm: -rm[1]):
            box = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], np.float32) * factor
            faces.append(self.landmarks_in_box(image, box, score=margin_to_score(margin)))
        return faces

    def landmarks_in_box(self, image: np.ndarray, box: np.ndarray, score: float = 1.0) -> Face:
        """Fit the 68 points inside ``box`` (x0, y0, x1, y1 px, HOG-like framing) without detecting."""
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        rect = self._dlib.rectangle(x0, y0, x1 - 1, y1 - 1)
        shape = self._shape(np.ascontiguousarray(image), rect)
        pts = np.array([(p.x, p.y) for p in shape.parts()], np.float32)
        return Face(box=np.asarray(box, np.float32), score=float(score), landmarks5=five_from_68(pts), landmarks68=pts)


class DlibEmbedder:
    """dlib's ResNet face embedding (128-d); distances below ~0.6 usually mean the same person.

    Faces are aligned with :func:`~latentdub.toolkit.faces.align.ffhq_alignment`
    zoomed to dlib's chip framing (padding 0.25) at 150 px, the input the
    network was trained on.
    """

    def __init__(self) -> None:
        import dlib

        self._model = dlib.face_recognition_model_v1(str(model_file("dlib_face_recognition_resnet_model_v1.dat")))

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        """float32 ``[128]`` for ``face`` in uint8 RGB ``image``."""
        chip = warp_to_crop(image, ffhq_alignment(face.landmarks5, 150, scale=0.75))
        return np.asarray(self._model.compute_face_descriptor(chip), np.float32)


def build_dlib(config: DlibConfig, context) -> DlibDetector:
    """dlib HOG + 68-point predictor, CPU, offline."""
    return DlibDetector(config)


@hookimpl
def register_detectors(register):
    register("dlib", build_dlib, config=DlibConfig, summary="dlib HOG + 68-point landmarks (offline, CPU, fast)")


@hookimpl
def register_face_embedders(register):
    register("dlib", lambda config, context: DlibEmbedder(), config=NoConfig, summary="dlib ResNet 128-d face embedding (offline, CPU)")
