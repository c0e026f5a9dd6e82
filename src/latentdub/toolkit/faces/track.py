"""Face tracking: target selection, following one person, gap bridging and landmark smoothing.

Pass 1 of the pipeline (:func:`analyse_video`) streams the frames once,
detects faces, keeps following one chosen person, bridges short gaps,
smooths the landmarks over time and returns a :class:`FaceTrack` holding only
per-frame numbers (boxes, landmarks, alignment matrices), never images.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Protocol, Sequence

import numpy as np

from ..core.errors import BadInputError, NoFaceError
from ..core.presets import TrackConfig
from ..core.types import Alignment, Face, Frame, TrackedFace
from .align import ffhq_alignment

#: Per-frame status codes stored in :attr:`FaceTrack.status`.
NO_FACE, DETECTED, REFIT, BRIDGED = 0, 1, 2, 3
_SKIPPED = 4  # not detected on purpose (detect_every); resolved before the track is returned
#: Most frames each side the mouth points (48-67) are smoothed over: at 25 fps a
#: quadratic Savitzky-Golay over 5 frames keeps ~0.95 correlation with the raw lip gap.
MOUTH_SMOOTHING = 2
#: Frames settled at a time by :func:`analyse_video` (each time the last ``2 * settle_lag + SETTLE_EVERY`` frames are finished again).
SETTLE_EVERY = 4


# --------------------------------------------------------------------------- measures


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


# --------------------------------------------------------------------------- selection


class FaceReference(Protocol):
    """Who to dub in ``select: reference`` mode: smaller distance = more alike."""

    def distance(self, image: np.ndarray, face: Face) -> float:
        """Identity distance of ``face`` (in ``image``) to the reference person."""


class EmbeddingReference:
    """The person in a reference photo, compared through a :class:`~latentdub.toolkit.core.protocols.FaceEmbedder`."""

    def __init__(self, embedder, embedding: np.ndarray) -> None:
        self.embedder = embedder
        self.embedding = embedding

    @classmethod
    def from_image(cls, image: np.ndarray, detector, embedder, source: str = "reference image") -> "EmbeddingReference":
        """Embed the best face that ``detector`` finds in ``image`` (NoFaceError when none)."""
        faces = detector.detect(image)
        if not faces:
            raise NoFaceError(f"{source}: no face found; give track.reference_image a photo with one clear face")
        return cls(embedder, np.asarray(embedder.embed(image, faces[0]), np.float32))

    def distance(self, image: np.ndarray, face: Face) -> float:
        """Euclidean distance between the embeddings of ``face`` and the reference."""
        return float(np.linalg.norm(np.asarray(self.embedder.embed(image, face), np.float32) - self.embedding))


def usable_faces(faces: Iterable[Face], min_score: float, min_size: float) -> list[Face]:
    """Faces with ``score >= min_score`` and ``size >= min_size`` (px), order kept."""
    return [f for f in faces if f.score >= min_score and f.size >= min_size]


def select_target(
    faces: Sequence[Face],
    mode: str,
    image_shape: Sequence[int],
    reference: Optional[FaceReference] = None,
    image: Optional[np.ndarray] = None,
) -> Optional[int]:
    """Index into ``faces`` of the face to dub, or None when ``faces`` is empty.

    ``largest``: biggest box; ``central``: box centre nearest the image
    centre (distance relative to the image diagonal, ties to the larger);
    ``reference``: smallest ``reference.distance(image, face)`` (needs both).
    """
    if not faces:
        return None
    if mode == "largest":
        return int(np.argmax([f.size for f in faces]))
    if mode == "central":
        centre = np.array([image_shape[1] / 2, image_shape[0] / 2])
        diag = float(np.hypot(image_shape[0], image_shape[1]))
        keys = [np.linalg.norm(f.centre - centre) / diag - 1e-3 * f.size / diag for f in faces]
        return int(np.argmin(keys))
    if mode == "reference":
        if reference is None or image is None:
            raise BadInputError("track.select=reference needs track.reference_image (a photo of the person to dub)")
        return int(np.argmin([reference.distance(image, f) for f in faces]))
    raise BadInputError(f"track.select: unknown mode {mode!r} (largest, central, reference)")


def _landmark_frame(landmarks5: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and scale (px) of a face from its five points, for box prediction."""
    pts = np.asarray(landmarks5, np.float64)
    eye_mid = (pts[0] + pts[1]) / 2
    mouth_mid = (pts[3] + pts[4]) / 2
    return pts.mean(0), float(max(np.hypot(*(pts[1] - pts[0])), np.hypot(*(mouth_mid - eye_mid)), 1e-3))


class _Tracker:
    """Online: picks the target once, then follows it by box overlap / centre distance."""

    def __init__(self, detector, config: TrackConfig, reference: Optional[FaceReference]) -> None:
        self.detector = detector
        self.config = config
        self.reference = reference
        self.refit = getattr(detector, "landmarks_in_box", None)
        self.last: Optional[Face] = None  # target in the latest frame that had it
        self.missed = 0  # consecutive frames since the target was last seen
        self.box_rel = np.zeros(4)  # detector box relative to the landmark frame at the last detection

    def step(self, index: int, image: np.ndarray) -> tuple[Optional[Face], int, int]:
        """Target face, status code and number of usable faces for one frame."""
        cfg = self.config
        tracking = self.last is not None and self.missed == 0
        if tracking and index % max(cfg.detect_every, 1) != 0:
            if self.refit is None:
                return None, _SKIPPED, 0
            face = self._refit(image)
            if face is not None:
                self.last, self.missed = face, 0
                return face, REFIT, 0
        faces = usable_faces(self.detector.detect(image), cfg.min_score, cfg.min_size)
        if self.last is not None and self.missed <= cfg.max_gap:
            pick = self._match(faces)
        else:
            pick = select_target(faces, cfg.select, image.shape, self.reference, image)
        if pick is None:
            self.missed += 1
            return None, NO_FACE, len(faces)
        face = faces[pick]
        centre, scale = _landmark_frame(face.landmarks5)
        self.box_rel = (np.asarray(face.box, np.float64) - np.tile(centre, 2)) / scale
        self.last, self.missed = face, 0
        return face, DETECTED, len(faces)

    def _match(self, faces: list[Face]) -> Optional[int]:
        assert self.last is not None
        best, best_key = None, None
        for i, f in enumerate(faces):
            iou = box_iou(f.box, self.last.box)
            dist = float(np.linalg.norm(f.centre - self.last.centre)) / max(self.last.size, 1.0)
            if iou < 0.3 and dist > 0.5:
                continue
            key = (iou, -dist)
            if best_key is None or key > best_key:
                best, best_key = i, key
        return best

    def _refit(self, image: np.ndarray) -> Optional[Face]:
        assert self.last is not None
        centre, scale = _landmark_frame(self.last.landmarks5)
        box = (np.tile(centre, 2) + self.box_rel * scale).astype(np.float32)
        face = self.refit(image, box, score=self.last.score)
        h, w = image.shape[:2]
        c = face.centre
        if face.size < self.config.min_size or not (0 <= c[0] < w and 0 <= c[1] < h):
            return None
        return face


# --------------------------------------------------------------------------- the track


@dataclasses.dataclass(frozen=True)
class FaceTrack:
    """The target face through a clip, as per-frame arrays (NaN where there is none).

    ``boxes`` float32 ``[N, 4]``; ``scores`` float32 ``[N]``; ``landmarks5``
    float32 ``[N, 5, 2]``; ``landmarks68`` float32 ``[N, 68, 2]`` or None when
    the detector has no dense points; ``matrices`` float64 ``[N, 2, 3]``
    (frame px -> crop px, see :class:`Alignment`); ``status`` uint8 ``[N]``
    (:data:`NO_FACE`, :data:`DETECTED`, :data:`REFIT`, :data:`BRIDGED`).
    ``n_faces_max`` is the most usable faces seen in one detected frame and
    ``best_frame`` the detected frame best suited as a reference (confident
    and frontal), -1 when there is none.
    """

    n_frames: int
    crop_size: int
    boxes: np.ndarray
    scores: np.ndarray
    landmarks5: np.ndarray
    landmarks68: Optional[np.ndarray]
    matrices: np.ndarray
    status: np.ndarray
    n_faces_max: int
    best_frame: int

    @property
    def n_with_face(self) -> int:
        """Frames that have a target face (detected, refitted or bridged)."""
        return int(np.count_nonzero(self.status != NO_FACE))

    def require_face(self, source: Path) -> "FaceTrack":
        """The track itself, or :class:`NoFaceError` naming ``source`` when no frame has a face."""
        if self.n_with_face == 0:
            raise NoFaceError(
                f"{source}: no face found in any of {self.n_frames} frames; "
                "check the clip shows a frontal face, or try --set detector.plugin=mtcnn"
            )
        return self

    def __len__(self) -> int:
        return self.n_frames

    def __getitem__(self, index: int) -> TrackedFace:
        """The :class:`TrackedFace` of frame ``index`` (built on demand)."""
        i = range(self.n_frames)[index]
        if self.status[i] == NO_FACE:
            return TrackedFace(frame_index=i, face=None, alignment=None)
        lm68 = None if self.landmarks68 is None else self.landmarks68[i]
        face = Face(box=self.boxes[i], score=float(self.scores[i]), landmarks5=self.landmarks5[i], landmarks68=lm68)
        return TrackedFace(frame_index=i, face=face, alignment=Alignment(self.matrices[i], self.crop_size))

    def __iter__(self) -> Iterator[TrackedFace]:
        return (self[i] for i in range(self.n_frames))


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open [start, end) runs where ``mask`` is True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _bridge(status: np.ndarray, arrays: list[np.ndarray], max_gap: int) -> None:
    """Fill gaps between face frames in place: linear interpolation; skipped tails are held."""
    has = (status == DETECTED) | (status == REFIT)
    for start, end in _runs(~has):
        inner = status[start:end]
        only_skipped = bool(np.all(inner == _SKIPPED))
        if start > 0 and end < len(status) and (end - start <= max_gap or only_skipped):
            t = (np.arange(start, end) - (start - 1)) / (end - start + 1)
            for arr in arrays:
                a, b = arr[start - 1], arr[end]
                arr[start:end] = a + (b - a) * t.reshape((-1,) + (1,) * (arr.ndim - 1))
            status[start:end] = BRIDGED
        elif only_skipped and start > 0 and end == len(status):
            for arr in arrays:
                arr[start:end] = arr[start - 1]
            status[start:end] = BRIDGED
    status[status == _SKIPPED] = NO_FACE


def smooth_series(values: np.ndarray, half_width: int) -> np.ndarray:
    """Savitzky-Golay filter along axis 0 (window ``2 * half_width + 1``, quadratic; linear below 5).

    Every value is the least-squares polynomial through the window centred on
    it, evaluated there; the first and last ``half_width`` values come from the
    polynomial through the first and last window (computed in float64).
    Short series use the largest window that fits; ``half_width`` 0 returns a copy.
    """
    n = values.shape[0]
    window = min(2 * half_width + 1, n if n % 2 else n - 1)
    if half_width <= 0 or window < 3:
        return values.copy()
    half = window // 2
    fit = _fitted_values(window, 2 if window >= 5 else 1)
    x = values.astype(np.float64)
    out = np.empty_like(x)
    windows = np.lib.stride_tricks.sliding_window_view(x, window, axis=0)  # [n - window + 1, ..., window]
    out[half : n - half] = windows @ fit[half]
    out[:half] = np.tensordot(fit[:half], x[:window], axes=(1, 0))
    out[n - half :] = np.tensordot(fit[half + 1 :], x[n - window :], axes=(1, 0))
    return out.astype(values.dtype)


@functools.lru_cache(maxsize=8)
def _fitted_values(window: int, order: int) -> np.ndarray:
    """float64 ``[window, window]``: row ``i`` weighs a window's values into its least-squares polynomial of
    ``order`` evaluated at position ``i`` (the hat matrix of the fit)."""
    basis = np.vander(np.arange(window, dtype=np.float64) - window // 2, order + 1, increasing=True)
    return basis @ np.linalg.pinv(basis)


def _smooth(status: np.ndarray, arrays: list[Optional[np.ndarray]], widths: list[int]) -> None:
    """Smooth each run of face frames in place (never across a frame without a face)."""
    for start, end in _runs(status != NO_FACE):
        for arr, width in zip(arrays, widths):
            if arr is not None:
                arr[start:end] = smooth_series(arr[start:end], width)


def _frontal_score(face: Face) -> float:
    """Detector score discounted by left/right asymmetry of the eyes around the nose."""
    eye_l, eye_r, nose = (np.asarray(p, np.float64) for p in face.landmarks5[:3])
    ocular = max(np.linalg.norm(eye_r - eye_l), 1e-6)
    asym = abs(np.linalg.norm(nose - eye_l) - np.linalg.norm(nose - eye_r)) / ocular
    return float(face.score) * (1.0 - min(asym, 1.0))


def load_reference(config: TrackConfig, detector) -> Optional[FaceReference]:
    """The :class:`EmbeddingReference` for ``select: reference`` (None for other modes)."""
    if config.select != "reference":
        return None
    path = config.reference_image
    if path is None:
        raise BadInputError("track.select=reference needs track.reference_image: --set track.reference_image=PHOTO")
    from ..core.plugins import get_component
    from ..media.video import read_image

    component = get_component("face_embedder", config.reference_embedder)
    return EmbeddingReference.from_image(read_image(path), detector, component.factory(component.config(), None), source=str(path))


def settle_lag(config: TrackConfig) -> int:
    """Frames after which a frame's entry in the track is final.

    The smoothing of a frame reads ``smoothing`` frames each side, and the
    extent of its run when that run is shorter than the smoothing window, at
    most ``2 * smoothing`` frames on; where a run ends is known once the gap
    after it is too long to bridge (``max_gap + 1`` frames on) or the next
    detection has come (``detect_every`` frames on). The same span before a
    frame covers the gaps and runs a window of the track starts in.
    """
    return 2 * config.smoothing + max(config.max_gap + 1, config.detect_every)


def _finished(
    status: list[int], boxes: list[np.ndarray], scores: list[float], lm5: list[np.ndarray], lm68: list[np.ndarray], dense: bool,
    config: TrackConfig, n_faces_max: int = 0, best_frame: int = -1,
) -> FaceTrack:
    """The track of the per-frame detections given: gaps bridged, landmarks smoothed, alignments computed."""
    n = len(status)
    status_arr = np.array(status, np.uint8)
    box_arr = np.array(boxes, np.float32).reshape(n, 4)
    score_arr = np.array(scores, np.float32)
    lm5_arr = np.array(lm5, np.float32).reshape(n, 5, 2)
    lm68_arr = np.array(lm68, np.float32).reshape(n, 68, 2) if dense else None
    series = [box_arr, score_arr, lm5_arr] + ([lm68_arr] if lm68_arr is not None else [])
    _bridge(status_arr, series, config.max_gap)
    half = config.smoothing
    if lm68_arr is not None:
        face_pts, mouth = lm68_arr[:, :48], lm68_arr[:, 48:]
        _smooth(status_arr, [box_arr, lm5_arr, face_pts, mouth], [half, half, half, min(half, MOUTH_SMOOTHING)])
        lm68_arr = np.concatenate([face_pts, mouth], axis=1)
    else:
        _smooth(status_arr, [box_arr, lm5_arr], [half, half])
    matrices = np.full((n, 2, 3), np.nan, np.float64)
    for i in np.flatnonzero(status_arr != NO_FACE):
        matrices[i] = ffhq_alignment(lm5_arr[i], config.crop_size).matrix
    return FaceTrack(
        n_frames=n,
        crop_size=config.crop_size,
        boxes=box_arr,
        scores=score_arr,
        landmarks5=lm5_arr,
        landmarks68=lm68_arr,
        matrices=matrices,
        status=status_arr,
        n_faces_max=n_faces_max,
        best_frame=best_frame,
    )


def analyse_video(
    frames: Iterable[Frame],
    detector,
    config: TrackConfig,
    n_frames_hint: Optional[int] = None,
    progress: Optional[Callable[[int, Optional[int]], None]] = None,
    reference: Optional[FaceReference] = None,
    settled: Optional[Callable[[TrackedFace], None]] = None,
) -> FaceTrack:
    """Pass 1: detect, select, track, bridge, smooth and align the target face.

    Streams ``frames`` once and keeps no images: memory is
    O(frames x landmarks). Detection runs every ``config.detect_every``
    frames (and on every frame while the target is lost); in between,
    detectors with ``landmarks_in_box(image, box, score)`` refit landmarks
    in the box predicted from the previous frame, others are interpolated.
    Landmarks are smoothed over ``config.smoothing`` frames each side (mouth
    points 48-67 over at most :data:`MOUTH_SMOOTHING`, to keep speech motion). ``progress(done,
    total)`` is called per frame with ``total = n_frames_hint``. Frames are
    numbered from 0 in the order given.
    ``reference`` overrides the one loaded from ``config.reference_image``.
    ``settled(tracked)`` sees every frame's :class:`TrackedFace`, in order, as
    soon as it is final (exactly the returned track's entry): at most
    :func:`settle_lag` + :data:`SETTLE_EVERY` frames after the frame was read.
    """
    if reference is None:
        reference = load_reference(config, detector)
    tracker = _Tracker(detector, config, reference)
    dense = bool(getattr(detector, "dense_landmarks", False))
    nan4, nan5, nan68 = (np.full(s, np.nan, np.float32) for s in ((4,), (5, 2), (68, 2)))
    boxes, scores, lm5, lm68, status = [], [], [], [], []
    n_faces_max, best_frame, best_key = 0, -1, -np.inf
    lag, unsettled = settle_lag(config), 0  # the first frame not yet given to ``settled``
    count = 0
    for count, frame in enumerate(frames, start=1):
        index = count - 1
        face, code, n_faces = tracker.step(index, frame.image)
        n_faces_max = max(n_faces_max, n_faces)
        status.append(code)
        if face is None:
            boxes.append(nan4), scores.append(np.nan), lm5.append(nan5), lm68.append(nan68)
        else:
            boxes.append(np.asarray(face.box, np.float32))
            scores.append(float(face.score))
            lm5.append(np.asarray(face.landmarks5, np.float32))
            lm68.append(np.asarray(face.landmarks68, np.float32) if face.landmarks68 is not None else nan68)
            if code == DETECTED and _frontal_score(face) > best_key:
                best_frame, best_key = index, _frontal_score(face)
        if settled is not None and index - lag - unsettled + 1 >= SETTLE_EVERY:
            # the track of the last frames, from ``lag`` frames before the first unsettled one: final from that one
            # to ``lag`` frames before this one
            start = max(unsettled - lag, 0)
            recent = _finished(status[start:], boxes[start:], scores[start:], lm5[start:], lm68[start:], dense, config)
            for i in range(unsettled, index - lag + 1):
                settled(dataclasses.replace(recent[i - start], frame_index=i))
            unsettled = index - lag + 1
        if progress is not None:
            progress(count, n_frames_hint)
    track = _finished(status, boxes, scores, lm5, lm68, dense, config, n_faces_max, best_frame)
    if settled is not None:
        for index in range(unsettled, track.n_frames):
            settled(track[index])
    return track


def track_still(image: np.ndarray, detector, config: TrackConfig) -> TrackedFace:
    """The target face of a single picture with its alignment (``face`` None when there is none)."""
    reference = load_reference(config, detector)
    faces = usable_faces(detector.detect(image), config.min_score, config.min_size)
    pick = select_target(faces, config.select, image.shape, reference, image)
    if pick is None:
        return TrackedFace(frame_index=0, face=None, alignment=None)
    face = faces[pick]
    return TrackedFace(frame_index=0, face=face, alignment=ffhq_alignment(face.landmarks5, config.crop_size))


# --------------------------------------------------------------------------- keyframes


def keyframe_features(track: FaceTrack) -> tuple[np.ndarray, np.ndarray]:
    """Frames with a face and their shape/pose features.

    Returns ``(frames int64 [M], features float64 [M, F])`` with columns mouth
    opening and mouth width (over the inter-ocular distance; opening only
    with 68 points), yaw proxy (nose offset along the eye axis over the
    inter-ocular distance) and pitch proxy (nose offset across it over the
    inter-ocular distance; :func:`~latentdub.toolkit.faces.measures.head_pose`).
    Detected frames are preferred over bridged ones.
    """
    from .measures import head_pose

    status = np.asarray(track.status)
    lm5 = np.asarray(track.landmarks5, np.float64)
    ok = (status != NO_FACE) & np.isfinite(lm5).all(axis=(1, 2))
    if track.landmarks68 is not None:
        ok &= np.isfinite(np.asarray(track.landmarks68)).all(axis=(1, 2))
    measured = ok & (status != BRIDGED)
    frames = np.flatnonzero(measured if measured.any() else ok)
    pts = lm5[frames]
    yaw, pitch, _ = head_pose(pts).T
    width = np.linalg.norm(pts[:, 4] - pts[:, 3], axis=1) / np.maximum(np.linalg.norm(pts[:, 1] - pts[:, 0], axis=1), 1e-6)
    columns = [width, yaw, pitch]
    if track.landmarks68 is not None:
        from .masks import mouth_opening

        columns.insert(0, np.array([mouth_opening(track.landmarks68[i]) for i in frames]))
    return frames.astype(np.int64), np.stack(columns, axis=1)


def select_keyframes(track: FaceTrack, k: int) -> list[int]:
    """Up to ``k`` frame indices (sorted) spanning the mouth shapes and poses of ``track``.

    Features (:func:`keyframe_features`) are clipped to their 2nd-98th
    percentiles (landmark glitches do not win) and standardised; the first
    pick is the track's most frontal confident frame (else the frame nearest
    the median), then farthest-point sampling adds the frame farthest from
    all picks so far. Raises :class:`NoFaceError` when no frame has a face.
    """
    frames, feats = keyframe_features(track)
    if len(frames) == 0:
        raise NoFaceError(f"no face in any of the {track.n_frames} frames to choose keyframes from")
    lo, hi = np.percentile(feats, [2, 98], axis=0)
    feats = np.clip(feats, lo, hi)
    spread = feats.std(axis=0)
    z = np.where(spread > 1e-9, (feats - feats.mean(axis=0)) / np.maximum(spread, 1e-9), 0.0)
    best = int(getattr(track, "best_frame", -1))
    hits = np.flatnonzero(frames == best)
    first = int(hits[0]) if len(hits) else int(np.argmin(np.linalg.norm(z - np.median(z, axis=0), axis=1)))
    picks = [first]
    dist = np.linalg.norm(z - z[first], axis=1)
    while len(picks) < min(k, len(frames)):
        nxt = int(np.argmax(dist))
        if dist[nxt] <= 0 and len(picks) >= 1:
            break  # the remaining frames repeat picked ones
        picks.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(z - z[nxt], axis=1))
    return sorted(int(frames[i]) for i in picks)
