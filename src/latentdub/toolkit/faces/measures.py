"""Mouth shape and head pose measured from landmarks, in the units of the ``mouth`` motion codes.

The three mouth features are those the ``visemes`` motion model predicts
(:data:`MOUTH_FEATURES`, see :class:`~latentdub.toolkit.core.types.Motion`), all in
inter-ocular distances (IOD) so they do not depend on resolution:

* ``opening``: the inner-lip gap (:func:`~latentdub.toolkit.faces.masks.mouth_opening`), 0 = closed;
* ``width``: the mouth-corner distance relative to the speaker's neutral width, minus 1
  (spread "ee" > 0, rounded "oo" < 0), as the ``warp`` renderer reads it;
* ``protrusion``: lip rounding, read in a frontal view as lips thicker than
  neutral (outer-lip height minus inner gap); one unit is
  :data:`PROTRUSION_THICKNESS` IOD of extra thickness, the amount the
  ``warp`` renderer pouts the lips per unit (a 2D proxy of a 3D motion).

The neutral mouth (:func:`neutral_mouth`) is the median over the closed-mouth
frames of a clip (the portrait itself for a still). Head pose
(:func:`head_pose`) uses the eyes and the nose tip only, so speech does not
move it: ``yaw`` and ``pitch`` are the nose tip's offset from the eye
midpoint along and across the eye line, over the IOD (proxies, monotonic in
the angles, not angles); ``roll`` is the eye line's angle in radians (image y
down).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..core.errors import BadInputError
from .masks import inter_ocular, mouth_opening, mouth_width

#: Column names of :func:`mouth_shapes` (the ``mouth`` motion codes) and of :func:`head_pose`.
MOUTH_FEATURES = ("opening", "width", "protrusion")
POSE_FEATURES = ("yaw", "pitch", "roll")
#: Extra lip thickness (upper plus lower, IOD) of one unit of protrusion.
PROTRUSION_THICKNESS = 0.1
#: Frames whose opening is at most this quantile of the clip's count as closed for :func:`neutral_mouth`.
CLOSED_QUANTILE = 0.25


@dataclasses.dataclass(frozen=True)
class NeutralMouth:
    """A speaker's resting mouth: corner distance ``width`` and lip ``thickness``, both in IOD."""

    width: float
    thickness: float


def _dense(landmarks: np.ndarray, what: str) -> np.ndarray:
    pts = np.asarray(landmarks, np.float64)
    if pts.ndim != 3 or pts.shape[1:] != (68, 2):
        raise BadInputError(f"{what}: mouth features need 68-point landmarks [N, 68, 2], got shape {pts.shape}; use a detector with dense landmarks (detector.plugin: dlib)")
    return pts


def lip_thickness(landmarks68: np.ndarray) -> np.ndarray:
    """Outer-lip height (51-57) minus the inner gap, per frame, in IOD: float64 ``[N]``."""
    pts = _dense(landmarks68, "lip_thickness")
    outer = np.linalg.norm(pts[:, 57] - pts[:, 51], axis=1) / np.array([inter_ocular(p) for p in pts])
    return outer - np.array([mouth_opening(p) for p in pts])


def neutral_mouth(landmarks68: np.ndarray) -> NeutralMouth:
    """Median width and lip thickness over the frames whose opening is in the lowest :data:`CLOSED_QUANTILE`."""
    pts = _dense(landmarks68, "neutral_mouth")
    if len(pts) == 0:
        raise BadInputError("neutral_mouth: no landmarks given")
    opening = np.array([mouth_opening(p) for p in pts])
    closed = opening <= np.quantile(opening, CLOSED_QUANTILE)
    widths = np.array([mouth_width(p) for p in pts[closed]])
    return NeutralMouth(float(np.median(widths)), float(np.median(lip_thickness(pts[closed]))))


def mouth_shapes(landmarks68: np.ndarray, neutral: NeutralMouth) -> np.ndarray:
    """Mouth features float64 ``[N, 3]`` (:data:`MOUTH_FEATURES`) of landmarks ``[N, 68, 2]`` (any pixels)."""
    pts = _dense(landmarks68, "mouth_shapes")
    opening = np.array([mouth_opening(p) for p in pts])
    width = np.array([mouth_width(p) for p in pts]) / max(neutral.width, 1e-6) - 1.0
    protrusion = (lip_thickness(pts) - neutral.thickness) / PROTRUSION_THICKNESS
    return np.stack([opening, width, protrusion], axis=1)


def head_pose(landmarks: np.ndarray) -> np.ndarray:
    """Pose features float64 ``[N, 3]`` (:data:`POSE_FEATURES`) of landmarks ``[N, 5|68, 2]`` (see the module docstring)."""
    pts = np.asarray(landmarks, np.float64)
    if pts.ndim != 3 or pts.shape[1:] not in ((5, 2), (68, 2)):
        raise BadInputError(f"head_pose: expected landmarks [N, 5, 2] or [N, 68, 2], got shape {pts.shape}")
    if pts.shape[1] == 68:
        from .align import five_from_68

        pts = np.stack([five_from_68(p) for p in pts]).astype(np.float64)
    eye_l, eye_r, nose = pts[:, 0], pts[:, 1], pts[:, 2]
    axis = eye_r - eye_l
    ocular = np.maximum(np.linalg.norm(axis, axis=1), 1e-6)
    x_hat = axis / ocular[:, None]
    y_hat = np.stack([-x_hat[:, 1], x_hat[:, 0]], axis=1)
    rel = (nose - (eye_l + eye_r) / 2) / ocular[:, None]
    yaw = np.einsum("ij,ij->i", rel, x_hat)
    pitch = np.einsum("ij,ij->i", rel, y_hat)
    roll = np.arctan2(axis[:, 1], axis[:, 0])
    return np.stack([yaw, pitch, roll], axis=1)
