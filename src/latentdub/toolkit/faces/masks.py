"""Face-region geometry shared by compositors and warping renderers.

Everything here works on landmarks in the pixels of one image, either the
iBUG 68-point scheme or the 5-point scheme of :data:`~.types.FIVE_POINT_NAMES`;
:func:`dense_landmarks` completes 5 points to an approximate 68-point shape so
the rest of the code handles one layout. Lengths given "in IOD" are fractions
of the inter-ocular distance (between the two eye centres), which keeps every
setting independent of resolution.

Masks are pure functions of the landmarks (no image content, no thresholds on
pixel values), so a mask is identical for identical landmarks and changes
smoothly when the landmarks move by a fraction of a pixel.
"""

from __future__ import annotations

from typing import Literal, Optional

import cv2
import numpy as np

from ..core.errors import BadInputError

#: Mean iBUG 68-point shape of closed-mouth frontal faces, measured with dlib's
#: 68-point predictor on GRID frames and made left-right symmetric. Units: IOD;
#: origin midway between the eye centres; x along the eye line, y downwards.
TEMPLATE_68 = np.array(
    [
        (-1.137, -0.000), (-1.110, 0.315), (-1.067, 0.628), (-1.022, 0.941), (-0.938, 1.235), (-0.784, 1.497),
        (-0.565, 1.710), (-0.302, 1.868), (0.000, 1.921), (0.302, 1.868), (0.565, 1.710), (0.784, 1.497),
        (0.938, 1.235), (1.022, 0.941), (1.067, 0.628), (1.110, 0.315), (1.137, -0.000), (-0.932, -0.254),
        (-0.790, -0.385), (-0.588, -0.413), (-0.384, -0.368), (-0.191, -0.286), (0.191, -0.286), (0.384, -0.368),
        (0.588, -0.413), (0.790, -0.385), (0.932, -0.254), (0.000, -0.059), (0.000, 0.145), (0.000, 0.344),
        (0.000, 0.555), (-0.226, 0.724), (-0.117, 0.765), (0.000, 0.794), (0.117, 0.765), (0.226, 0.724),
        (-0.698, -0.005), (-0.574, -0.068), (-0.425, -0.066), (-0.291, 0.021), (-0.430, 0.058), (-0.582, 0.060),
        (0.291, 0.021), (0.425, -0.066), (0.574, -0.068), (0.698, -0.005), (0.582, 0.060), (0.430, 0.058),
        (-0.411, 1.164), (-0.254, 1.101), (-0.105, 1.057), (0.000, 1.089), (0.105, 1.057), (0.254, 1.101),
        (0.411, 1.164), (0.257, 1.269), (0.113, 1.316), (0.000, 1.329), (-0.113, 1.316), (-0.257, 1.269),
        (-0.341, 1.167), (-0.107, 1.160), (0.000, 1.175), (0.107, 1.160), (0.341, 1.167), (0.106, 1.176),
        (0.000, 1.190), (-0.106, 1.176),
    ],
    np.float64,
)

#: Landmark indices (68-point scheme) of the outer and inner lip contours, in contour order.
OUTER_LIP = np.arange(48, 60)
INNER_LIP = np.arange(60, 68)
#: Pairs (upper, lower) of inner-lip points whose distances define the mouth opening.
INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))
#: Template points matching the 5-point scheme: eye centres, nose tip (30), mouth corners (48, 54).
_FIVE_FROM_68 = np.stack([TEMPLATE_68[36:42].mean(0), TEMPLATE_68[42:48].mean(0), TEMPLATE_68[30], TEMPLATE_68[48], TEMPLATE_68[54]])

Region = Literal["mouth", "lower_face", "face"]
#: Vertical supersampling of polygon rasterisation.
_ROW_SUPERSAMPLING = 4
#: Feather-band pixels (0 < alpha < 1) needed before colour statistics are trusted (:func:`match_colour`).
MIN_RING_PIXELS = 32
#: Fewest cells per Gaussian sigma of the reduced grid a feather is computed on (:func:`feather_grid`).
FEATHER_CELLS_PER_SIGMA = 3.0


def _as_points(landmarks: np.ndarray) -> np.ndarray:
    pts = np.asarray(landmarks, np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] not in (5, 68):
        raise BadInputError(f"landmarks: expected [5, 2] or [68, 2] points, got shape {pts.shape}; pass Face.landmarks5 or Face.landmarks68")
    return pts


def eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres (x, y) of the image-left and image-right eye from 5 or 68 landmarks."""
    pts = _as_points(landmarks)
    if len(pts) == 5:
        return pts[0], pts[1]
    return pts[36:42].mean(0), pts[42:48].mean(0)


def face_frame(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(origin, x axis, y axis, IOD): origin between the eyes, unit axes along and across the eye line (y down), IOD in px."""
    left, right = eye_centres(landmarks)
    d = right - left
    iod = float(np.hypot(*d))
    if iod < 1e-6:
        raise BadInputError("landmarks: both eye centres coincide; the detector returned a degenerate face")
    u = d / iod
    return (left + right) / 2, u, np.array([-u[1], u[0]]), iod


def inter_ocular(landmarks: np.ndarray) -> float:
    """Distance between the eye centres in px."""
    return face_frame(landmarks)[3]


def dense_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """68-point float64 ``[68, 2]`` landmarks: returned as given, or fitted from 5 points.

    Five points are completed with the least-squares affine map that carries
    the template's eye centres, nose tip and mouth corners onto them, so the
    result has the right pose and mouth width but a closed, average mouth.
    """
    pts = _as_points(landmarks)
    if len(pts) == 68:
        return pts.copy()
    src = np.concatenate([_FIVE_FROM_68, np.ones((5, 1))], axis=1)
    affine, *_ = np.linalg.lstsq(src, pts, rcond=None)  # [3, 2]
    return np.concatenate([TEMPLATE_68, np.ones((68, 1))], axis=1) @ affine


def mouth_opening(landmarks68: np.ndarray) -> float:
    """Mean inner-lip gap (pairs 61-67, 62-66, 63-65) divided by the IOD; 0 = closed."""
    pts = _as_points(landmarks68)
    gaps = [np.hypot(*(pts[lo] - pts[up])) for up, lo in INNER_LIP_PAIRS]
    return float(np.mean(gaps)) / inter_ocular(pts)


def mouth_openings(landmarks68: np.ndarray) -> np.ndarray:
    """:func:`mouth_opening` of each frame of ``[N, 68, 2]`` landmarks, float64 ``[N]``; NaN where a frame's points are NaN."""
    pts = np.asarray(landmarks68, np.float64)
    return np.array([np.nan if np.isnan(p).any() else mouth_opening(p) for p in pts], np.float64).reshape(len(pts))


def mouth_width(landmarks68: np.ndarray) -> float:
    """Distance between the outer mouth corners (48, 54) divided by the IOD."""
    pts = _as_points(landmarks68)
    return float(np.hypot(*(pts[54] - pts[48]))) / inter_ocular(pts)


def region_points(landmarks: np.ndarray, region: Region, jaw_margin: float = 0.0) -> np.ndarray:
    """Points float64 ``[K, 2]`` whose convex hull is ``region``.

    ``mouth``: the outer lip contour; ``lower_face``: jaw points 2-14 and the
    nostrils (31-35); ``face``: the whole jaw line and the eyebrows. Jaw points
    3-13 are pushed ``jaw_margin`` IOD further from the nose base, leaving
    room for a chin that a renderer lowers.
    """
    pts = dense_landmarks(landmarks)
    if region == "mouth":
        return pts[OUTER_LIP]
    jaw = pts[0:17].copy()
    if jaw_margin:
        iod = inter_ocular(pts)
        out = jaw[3:14] - pts[33]
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)
        jaw[3:14] += out * (jaw_margin * iod)
    if region == "lower_face":
        return np.concatenate([jaw[2:15], pts[31:36]])
    if region == "face":
        return np.concatenate([jaw, pts[17:27]])
    raise BadInputError(f"region: unknown face region {region!r} (use mouth, lower_face or face)")


def grown_hull(points: np.ndarray, radius: float) -> np.ndarray:
    """Convex hull of ``points`` grown outward by ``radius`` px (rounded corners), float64 ``[K, 2]``."""
    pts = np.asarray(points, np.float64)
    if radius > 0:
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        disc = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        pts = (pts[:, None, :] + disc[None]).reshape(-1, 2)
    hull = cv2.convexHull(pts.astype(np.float32))
    return hull.reshape(-1, 2).astype(np.float64)


def fill_polygon(polygon: np.ndarray, shape: tuple[int, int], origin: tuple[float, float] = (0.0, 0.0), step: int = 1) -> np.ndarray:
    """Anti-aliased coverage float32 ``[h, w]`` in [0, 1] of ``polygon`` (px) in an image whose top-left pixel sits at ``origin``.

    Vertices keep 1/16 px precision and rows are rasterised 4 times
    supersampled (OpenCV's anti-aliasing only smooths along rows), so the
    coverage follows sub-pixel motion in both directions. With ``step`` > 1
    the result is the mean coverage of cells of ``step`` x ``step`` px,
    ``[ceil(h / step), ceil(w / step)]`` (cell (i, j) covering pixels
    ``[step * i, step * (i + 1))`` x ``[step * j, step * (j + 1))``), to 1/255.
    """
    h, w = -(-shape[0] // step) * step, -(-shape[1] // step) * step
    canvas = np.zeros((h * _ROW_SUPERSAMPLING, w), np.uint8)
    pts = np.asarray(polygon, np.float64) - np.asarray(origin, np.float64)
    # pixel centres at integers: row r of the supersampled canvas covers y = (r + 0.5) / k - 0.5
    pts = np.stack([pts[:, 0], (pts[:, 1] + 0.5) * _ROW_SUPERSAMPLING - 0.5], axis=1)
    cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
    canvas[shape[0] * _ROW_SUPERSAMPLING :], canvas[:, shape[1] :] = 0, 0  # the image ends inside the last cells
    if step == 1:
        coverage = canvas.reshape(h, _ROW_SUPERSAMPLING, w).mean(axis=1, dtype=np.float32)
    else:
        coverage = cv2.resize(canvas, (w // step, h // step), interpolation=cv2.INTER_AREA).astype(np.float32)
    return coverage * np.float32(1 / 255)


def gaussian_blur(mask: np.ndarray, sigma: float) -> np.ndarray:
    """float32 ``mask`` blurred with a Gaussian of ``sigma`` px truncated at 3 sigma, zero beyond the border (``mask`` itself for ``sigma`` 0)."""
    if sigma <= 0:
        return mask
    radius = int(np.ceil(3 * sigma))
    return cv2.GaussianBlur(mask, (2 * radius + 1, 2 * radius + 1), sigma, borderType=cv2.BORDER_CONSTANT)


def clip_tails(mask: np.ndarray) -> np.ndarray:
    """float32 ``mask`` with values below 1/255 set to exactly 0 and above 1 - 1/255 to exactly 1, in place (a hard outer limit, a solid core)."""
    mask[mask < 1 / 255] = 0
    mask[mask > 1 - 1 / 255] = 1
    return mask


def feather_grid(sigma: float) -> tuple[int, float]:
    """(cell side ``step`` px, blur sigma in cells) on which a feather of ``sigma`` px is computed.

    ``step`` keeps :data:`FEATHER_CELLS_PER_SIGMA` cells per sigma (1, full
    resolution, for small feathers); the cells' own width and the bilinear
    interpolation back to pixels add a spread of about ``(step**2 - 1) / 4``
    px squared, which the blur leaves out.
    """
    step = max(1, int(sigma / FEATHER_CELLS_PER_SIGMA))
    return step, float(np.sqrt(max(sigma**2 - (step**2 - 1) / 4, 0.0))) / step


def feathered_polygon(polygon: np.ndarray, sigma: float, shape: tuple[int, int], origin: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Soft mask float32 ``[h, w]`` in [0, 1]: the coverage of ``polygon`` (px, image top-left pixel at ``origin``) blurred
    with a Gaussian of ``sigma`` px truncated at 3 sigma, tails clipped (:func:`clip_tails`).

    The blur runs on the reduced grid of :func:`feather_grid` and is
    interpolated back bilinearly (the mask is smooth on that scale: within
    0.006 of the full-resolution blur, 0.0005 on average, at a seventh of its
    cost for the soft compositor's feather at 720p).
    """
    step, cell_sigma = feather_grid(sigma)
    if step == 1:
        return clip_tails(gaussian_blur(fill_polygon(polygon, shape, origin), sigma))
    # an empty cell each side, so the interpolation back follows the fall towards the edges of the image
    cells = cv2.copyMakeBorder(fill_polygon(polygon, shape, origin, step), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    alpha = cv2.resize(gaussian_blur(cells, cell_sigma), (cells.shape[1] * step, cells.shape[0] * step), interpolation=cv2.INTER_LINEAR)
    h, w = shape
    return clip_tails(alpha[step : step + h, step : step + w])


def region_outline(
    landmarks: np.ndarray, image_shape: tuple[int, int], region: Region, dilate: float, feather: float, jaw_margin: float,
) -> tuple[np.ndarray, float, tuple[int, int, int, int]]:
    """What :func:`region_mask` draws: the grown hull ``[K, 2]`` px, the feather sigma (px) and the
    box (x0, y0, x1, y1) clipped to the image where the mask can be non-zero (empty when x1 <= x0 or y1 <= y0)."""
    iod = inter_ocular(landmarks)
    hull = grown_hull(region_points(landmarks, region, jaw_margin), dilate * iod)
    sigma = feather * iod
    pad = int(np.ceil(3 * sigma)) + 2
    h, w = image_shape
    x0 = max(int(np.floor(hull[:, 0].min())) - pad, 0)
    y0 = max(int(np.floor(hull[:, 1].min())) - pad, 0)
    x1 = min(int(np.ceil(hull[:, 0].max())) + pad + 1, w)
    y1 = min(int(np.ceil(hull[:, 1].max())) + pad + 1, h)
    return hull, sigma, (x0, y0, x1, y1)


def region_mask(
    landmarks: np.ndarray,
    image_shape: tuple[int, int],
    region: Region = "lower_face",
    dilate: float = 0.05,
    feather: float = 0.12,
    jaw_margin: float = 0.25,
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Soft mask of a face region, restricted to the box where it is non-zero.

    ``landmarks``: ``[5|68, 2]`` px in an image of ``image_shape`` (h, w).
    ``dilate``, ``feather`` (Gaussian sigma) and ``jaw_margin`` are in IOD:
    alpha is about 0.5 on the hull grown by ``dilate`` and exactly 0 beyond a
    further ``3 * feather``. Returns (float32 mask ``[y1-y0, x1-x0]`` in [0, 1],
    (x0, y0, x1, y1) box in image px, clipped to the image; empty when the
    face lies outside it).
    """
    hull, sigma, (x0, y0, x1, y1) = region_outline(landmarks, image_shape, region, dilate, feather, jaw_margin)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0), np.float32), (0, 0, 0, 0)
    mask = feathered_polygon(hull, sigma, (y1 - y0, x1 - x0), (x0, y0))
    return mask, (x0, y0, x1, y1)


def match_colour(warped: np.ndarray, base: np.ndarray, alpha: np.ndarray, mode: str) -> np.ndarray:
    """Shift the per-channel mean and scale the spread of ``warped`` to ``base`` in the feather band of ``alpha``.

    ``warped``, ``base``: float32 RGB ``[h, w, 3]`` in 0-255; ``alpha`` float32 ``[h, w]``; ``mode`` ``mean_std``
    (RGB) or ``lab``. Statistics come from pixels with 0.02 < alpha < 0.98 (at least
    :data:`MIN_RING_PIXELS`, else ``warped`` is returned as is); gains are clipped to 0.5-2.
    """
    transfer = colour_transfer(warped, base, alpha, mode)
    return warped if transfer is None else apply_colour_transfer(warped, transfer, mode)


def colour_transfer(warped: np.ndarray, base: np.ndarray, alpha: np.ndarray, mode: str) -> Optional[np.ndarray]:
    """The per-channel ``gain * x + offset`` of :func:`match_colour`, float32 ``[3, 4]`` (in Lab for ``lab``), or None
    when the feather band of ``alpha`` has too few pixels."""
    ring = ((alpha > 0.02) & (alpha < 0.98)).astype(np.uint8)
    if cv2.countNonZero(ring) < MIN_RING_PIXELS:
        return None
    src, ref = (_colour_space(x, mode) for x in (warped, base))
    (s_mean, s_std), (r_mean, r_std) = (np.asarray(cv2.meanStdDev(x, mask=ring), np.float32).reshape(2, 3) for x in (src, ref))
    gain = np.clip(r_std / np.maximum(s_std, 1e-3), 0.5, 2.0)
    return np.concatenate([np.diag(gain), (r_mean - s_mean * gain)[:, None]], axis=1).astype(np.float32)


def apply_colour_transfer(warped: np.ndarray, transfer: np.ndarray, mode: str) -> np.ndarray:
    """``warped`` float32 RGB ``[h, w, 3]`` through a :func:`colour_transfer` ``[3, 4]``, clipped to 0-255."""
    matched = cv2.transform(_colour_space(warped, mode), transfer)
    if mode == "lab":
        matched = cv2.cvtColor(matched, cv2.COLOR_Lab2RGB) * np.float32(255)
    return np.clip(matched, 0, 255, out=matched)


def _colour_space(rgb: np.ndarray, mode: str) -> np.ndarray:
    """float32 RGB 0-255 in the space colours are matched in: itself for ``mean_std``, CIE Lab for ``lab``."""
    return cv2.cvtColor(rgb * np.float32(1 / 255), cv2.COLOR_RGB2Lab) if mode == "lab" else rgb
