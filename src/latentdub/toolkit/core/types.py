"""Frozen data types that flow between pipeline stages.

Conventions used everywhere in latentdub:

* images are ``numpy.uint8`` arrays ``[height, width, 3]`` in RGB order;
* pixel coordinates are ``float32`` ``(x, y)`` in pixels of the image they
  belong to, origin at the top-left corner of the top-left pixel's centre;
* times are seconds (float) from the start of the stream;
* audio is mono ``float32`` in ``[-1, 1]``;
* W+ latents are ``torch.float32`` tensors ``[frames, n_styles, 512]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

#: Indices of the 20 mouth points (outer lip 48-59, inner lip 60-67) in the
#: iBUG 68-point landmark scheme.
MOUTH_68 = slice(48, 68)
#: Indices of the five-point scheme shared by MTCNN, insightface and dlib's
#: 5-point model once reordered: left eye, right eye, nose tip, mouth left,
#: mouth right ("left" is the subject's right, i.e. the image's left).
FIVE_POINT_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True)
class VideoInfo:
    """What the decoder reports about a video file.

    ``fps`` is the constant output rate frames are delivered at (variable
    frame rate input is resampled to it); ``rotation`` is the display
    rotation in degrees already applied to decoded frames.
    ``variable_frame_rate`` is unknown (False) from the container header;
    the dub sets it after scanning the frame times
    (:func:`~latentdub.toolkit.media.frame_timing.measure_frame_timing`).
    """

    path: Path
    width: int
    height: int
    fps: float
    n_frames: int
    duration: float
    has_audio: bool
    rotation: int = 0
    variable_frame_rate: bool = False


@dataclass(frozen=True)
class AudioInfo:
    """What the decoder reports about the first audio stream of a file.

    ``codec``: ffmpeg's decoder name (``pcm_s24le``, ``flac``, ``aac``...);
    ``layout``: ffmpeg's channel layout name (``stereo``, ``5.1(side)``,
    ``2 channels``); ``sample_format``: decoded sample type without the
    planar ``p`` (``s16``, ``s32``, ``flt``, ``dbl``, ``u8``); ``bits``:
    significant bits per sample of an integer lossless stream (24 for
    ``s32 (24 bit)``), None for float or lossy streams.
    """

    path: Path
    codec: str
    sample_rate: int
    channels: int
    layout: str
    sample_format: str
    bits: Optional[int]
    lossless: bool


@dataclass(frozen=True)
class Frame:
    """One decoded frame: ``image`` is uint8 ``[H, W, 3]`` RGB, ``time`` in seconds."""

    index: int
    time: float
    image: np.ndarray


@dataclass(frozen=True)
class Audio:
    """Mono speech: ``samples`` float32 ``[n]`` in [-1, 1] at ``sample_rate`` Hz."""

    samples: np.ndarray
    sample_rate: int
    path: Optional[Path] = None

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / float(self.sample_rate)


@dataclass(frozen=True)
class Face:
    """A detected face in frame pixels.

    ``box``: float32 ``[4]`` (x0, y0, x1, y1); ``score``: detector confidence
    in [0, 1]; ``landmarks5``: float32 ``[5, 2]`` in the order of
    :data:`FIVE_POINT_NAMES`; ``landmarks68``: float32 ``[68, 2]`` (iBUG
    scheme) when the detector provides dense points, else ``None``.
    """

    box: np.ndarray
    score: float
    landmarks5: np.ndarray
    landmarks68: Optional[np.ndarray] = None

    @property
    def size(self) -> float:
        """Geometric mean of box width and height, in pixels."""
        w = float(self.box[2] - self.box[0])
        h = float(self.box[3] - self.box[1])
        return float(np.sqrt(max(w, 0.0) * max(h, 0.0)))

    @property
    def centre(self) -> np.ndarray:
        """Box centre, float32 ``[2]`` (x, y)."""
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2], np.float32)


@dataclass(frozen=True)
class Alignment:
    """Similarity transform from frame pixels to a square crop of ``size`` px.

    ``matrix`` is float64 ``[2, 3]``: ``crop_xy = matrix[:, :2] @ frame_xy + matrix[:, 2]``.
    """

    matrix: np.ndarray
    size: int

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map frame points ``[n, 2]`` into crop pixels ``[n, 2]``."""
        pts = np.asarray(points, np.float64)
        return (pts @ self.matrix[:, :2].T + self.matrix[:, 2]).astype(np.float32)

    def inverse_matrix(self) -> np.ndarray:
        """The ``[2, 3]`` matrix mapping crop pixels back to frame pixels."""
        a = self.matrix[:, :2]
        inv = np.linalg.inv(a)
        return np.concatenate([inv, -inv @ self.matrix[:, 2:3]], axis=1)

    def invert(self, points: np.ndarray) -> np.ndarray:
        """Map crop points ``[n, 2]`` back to frame pixels ``[n, 2]``."""
        m = self.inverse_matrix()
        pts = np.asarray(points, np.float64)
        return (pts @ m[:, :2].T + m[:, 2]).astype(np.float32)


@dataclass(frozen=True)
class TrackedFace:
    """The target face in one source frame after selection and smoothing.

    ``face`` is ``None`` when the frame has no usable face (it then passes
    through untouched); ``alignment`` maps the frame into the generator crop.
    """

    frame_index: int
    face: Optional[Face]
    alignment: Optional[Alignment]


@dataclass(frozen=True)
class Motion:
    """Per-output-frame motion codes produced by a motion model.

    ``kind`` says how renderers read ``codes``:

    * ``"wplus"``: float32 ``[T, n_styles, 512]`` absolute W+ latents;
    * ``"wplus-offset"``: displacements in W+, either float32
      ``[T, n_styles, 512]`` or compact subspace coefficients ``[T, k]`` with
      ``extra["basis"]`` float32 ``[k, n_styles, 512]`` (memory stays small for
      long speech); ``extra["base"] == "identity"`` means they are added to the
      identity latent w_I, otherwise to each frame's own inverted latent;
    * ``"mouth"``: float32 ``[T, 3]`` mouth shape (opening, width, protrusion),
      opening and width relative to inter-ocular distance, 0 = closed/neutral.

    ``extra["notes"]`` (list of str), when present, is copied into the run
    summary (for example a fallback the model took and why). ``extra["mouth"]``
    (float32 ``[T, 3]``, as the ``"mouth"`` codes), when a model of another
    kind provides it, is the target mouth shape the review page plots.
    ``extra["source_index"]`` (int64 ``[T]``, set by the pipeline) is the
    source frame each output frame is drawn on.
    """

    kind: str
    codes: np.ndarray
    fps: float
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.codes.shape[0])


@dataclass(frozen=True)
class RenderReport:
    """What a renderer reports after a run.

    ``notes``: one line each for the run summary; ``fallback``: output frame
    index -> short reason, for frames it drew by a fallback path (for example
    a target shape its bank cannot serve).
    """

    notes: tuple[str, ...] = ()
    fallback: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClipPair:
    """One generated clip and the reference it is scored against; ``name`` labels the table row."""

    name: str
    generated: Path
    reference: Path


class FramePair:
    """A generated frame and its time-nearest reference frame (both uint8 RGB, same size).

    ``generated_face()`` / ``reference_face()`` run the shared detector once
    per frame and return the best face (or ``None``).
    """

    def __init__(self, index: int, time: float, generated: np.ndarray, reference: np.ndarray,
                 detect: Callable[[np.ndarray], list[Face]]) -> None:
        self.index = index
        self.time = time
        self.generated = generated
        self.reference = reference
        self._detect = detect
        self._faces: dict[str, Optional[Face]] = {}

    def _face(self, side: str) -> Optional[Face]:
        if side not in self._faces:
            faces = self._detect(self.generated if side == "generated" else self.reference)
            self._faces[side] = faces[0] if faces else None
        return self._faces[side]

    def generated_face(self) -> Optional[Face]:
        """Best face in the generated frame, or ``None``."""
        return self._face("generated")

    def reference_face(self) -> Optional[Face]:
        """Best face in the reference frame, or ``None``."""
        return self._face("reference")
