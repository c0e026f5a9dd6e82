"""Renderer "warp": reshapes the real mouth and jaw to a target mouth shape, no neural network.

For each crop the source lips are first closed according to their own
measured opening, then opened, widened and rounded to the motion code; the
jaw follows the lower lip. The new landmark positions drive a piecewise-affine
warp of a fixed triangle mesh (landmarks plus fixed anchors on the cheeks and
neck), so displacement falls to zero at the mesh border and the upper face
is untouched. Mouth interior that the source does not show is painted: a dark
oral cavity with a band of upper teeth under the upper lip, in colours taken
from the speaker's reference crops when :meth:`WarpRenderer.prepare` saw open
mouths.

Motion codes (kind ``"mouth"``, float32 ``[T, 3]``): opening = inner-lip gap
in IOD (0 closed, ~0.15-0.35 in speech); width = relative change of mouth
width from the speaker's neutral width; protrusion = lip rounding (positive
narrows and pouts, as for 'oo'/'w').
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Annotated, Optional

import cv2
import numpy as np

from latentdub.toolkit.core.config import Range
from latentdub.toolkit.core.errors import BadInputError
from latentdub.toolkit.core.hookspecs import hookimpl
from latentdub.toolkit.core.types import Motion
from latentdub.toolkit.faces.masks import (
    INNER_LIP,
    INNER_LIP_PAIRS,
    OUTER_LIP,
    TEMPLATE_68,
    dense_landmarks,
    face_frame,
    fill_polygon,
    mouth_opening,
    mouth_width,
)

#: Jaw points that may move, and how much of the chin's displacement each takes.
_JAW_WEIGHTS = {3: 0.1, 4: 0.3, 5: 0.55, 6: 0.8, 7: 0.95, 8: 1.0, 9: 0.95, 10: 0.8, 11: 0.55, 12: 0.3, 13: 0.1}
#: Relative inner-lip gap of the pairs 61-67, 62-66, 63-65 in an open mouth (mean 1).
_GAP_PROFILE = np.array([0.95, 1.1, 0.95])
#: Outer lip point -> (inner lip point it follows vertically, fraction of that motion).
_OUTER_FOLLOW = {
    49: (61, 0.6), 50: (61, 1.0), 51: (62, 1.0), 52: (63, 1.0), 53: (63, 0.6),
    55: (65, 0.6), 56: (65, 1.0), 57: (66, 1.0), 58: (67, 1.0), 59: (67, 0.6),
}
_UPPER_OUTER = np.array([49, 50, 51, 52, 53])
_LOWER_OUTER = np.array([55, 56, 57, 58, 59])
_CORNERS = np.array([48, 54, 60, 64])
#: Fixed mesh anchors: jaw points 2-14 pushed out from this template point by _NECK_SCALE, and two cheek points (template units).
_NECK_CENTRE = np.array([0.0, 0.8])
_NECK_SCALE = 1.4
_CHEEKS = np.array([[-0.6, 0.68], [0.6, 0.68]])
#: Template points used to place the anchors on a real face (upper jaw, brows, nose, eyes: they do not move with speech).
_STABLE = np.r_[0:3, 14:48]
#: RGB -> luma weights (ITU-R BT.601).
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)

_LIP_BAND = (
    (48, 49, 60), (49, 61, 60), (49, 50, 61), (50, 51, 61), (51, 62, 61), (51, 52, 62), (52, 63, 62), (52, 53, 63),
    (53, 54, 63), (54, 64, 63), (54, 55, 64), (55, 65, 64), (55, 56, 65), (56, 57, 65), (57, 66, 65), (57, 58, 66),
    (58, 67, 66), (58, 59, 67), (59, 48, 67), (48, 60, 67),
)
_INTERIOR = ((60, 61, 67), (61, 62, 67), (62, 66, 67), (62, 63, 66), (63, 65, 66), (63, 64, 65))


@dataclasses.dataclass(frozen=True)
class WarpRendererConfig:
    """Settings of the landmark-warp renderer (lengths in IOD, the inter-ocular distance)."""

    #: Share of an opening change taken by the upper lip; the lower lip and jaw take the rest.
    upper_share: Annotated[float, Range(ge=0, le=1)] = 0.25
    #: Chin displacement per unit of lower-lip displacement.
    jaw_follow: Annotated[float, Range(ge=0, le=3)] = 1.0
    #: Largest target opening accepted, in IOD (codes above are clamped).
    max_opening: Annotated[float, Range(gt=0, le=2)] = 0.5
    #: Opacity of the upper-teeth band painted into newly opened mouths (0 = no teeth).
    teeth: Annotated[float, Range(ge=0, le=1)] = 0.8
    #: Least opacity of the painted mouth interior where the target opens wider than the source
    #: (0: paint only the share of the opening the source lacks; 1: paint it all, never stretch the source's interior).
    paint_floor: Annotated[float, Range(ge=0, le=1)] = 0.0


def anchors(points68: np.ndarray) -> np.ndarray:
    """Fixed mesh anchors ``[15, 2]`` (13 below the jaw, 2 on the cheeks) for a 68-point face in px."""
    tmpl = np.concatenate([TEMPLATE_68[_STABLE], np.ones((len(_STABLE), 1))], axis=1)
    affine, *_ = np.linalg.lstsq(tmpl, points68[_STABLE], rcond=None)  # template units -> px, [3, 2]
    placed = np.concatenate([np.vstack([_NECK_CENTRE, _CHEEKS]), np.ones((3, 1))], axis=1) @ affine
    neck = placed[0] + (points68[2:15] - placed[0]) * _NECK_SCALE
    return np.concatenate([neck, placed[1:]])


@functools.lru_cache(maxsize=1)
def mesh() -> tuple[np.ndarray, np.ndarray]:
    """The warp mesh over landmarks + anchors: (int32 triangles ``[T, 3]``, bool ``[T]`` True for mouth interior).

    Lips and mouth interior are triangulated explicitly (so the interior can
    collapse when the mouth closes); the rest is a Delaunay triangulation of
    the template face outside the outer lip contour.
    """
    from scipy.spatial import Delaunay

    nodes = np.concatenate([TEMPLATE_68, anchors(TEMPLATE_68)])
    outside = np.array([i for i in range(len(nodes)) if i not in set(INNER_LIP)])
    tris = outside[Delaunay(nodes[outside]).simplices]
    lips = nodes[OUTER_LIP].astype(np.float32)
    tris = [t for t in tris if cv2.pointPolygonTest(lips, tuple(float(v) for v in nodes[t].mean(0)), False) < 0]
    all_tris = np.array([*_INTERIOR, *_LIP_BAND, *tris], np.int32)
    interior = np.zeros(len(all_tris), bool)
    interior[: len(_INTERIOR)] = True
    return all_tris, interior


class WarpRenderer:
    """Warps the lower face of aligned crops to per-frame mouth codes (see the module doc)."""

    motion_kinds = ("mouth",)

    def __init__(self, config: WarpRendererConfig = WarpRendererConfig()):
        self.config = config
        #: Speaker's neutral mouth width in IOD (None: treat each source frame's width as neutral).
        self.neutral_width: Optional[float] = None
        #: RGB colours (float32 [3]) of the oral cavity and the teeth measured on references, or None.
        self.cavity_colour: Optional[np.ndarray] = None
        self.teeth_colour: Optional[np.ndarray] = None

    def prepare(self, crops: np.ndarray, landmarks: np.ndarray) -> None:
        """Measure the speaker's neutral mouth width and mouth-interior colours on reference crops.

        ``crops`` uint8 ``[N, S, S, 3]``, ``landmarks`` ``[N, 5|68, 2]`` crop px. Returns None (no identity latent).
        """
        crops = np.asarray(crops)
        if crops.ndim != 4 or len(crops) != len(landmarks):
            raise BadInputError(f"warp renderer: expected crops [N, S, S, 3] and landmarks [N, P, 2], got {crops.shape} and {np.shape(landmarks)}")
        if np.shape(landmarks)[1] != 68:
            return None  # five points carry no mouth shape: keep the per-frame defaults
        pts = [dense_landmarks(p) for p in landmarks]
        openings = np.array([mouth_opening(p) for p in pts])
        widths = np.array([mouth_width(p) for p in pts])
        closed = openings < 0.05
        self.neutral_width = float(np.median(widths[closed] if closed.any() else widths))
        inside = []
        for crop, p, o in zip(crops, pts, openings):
            if o >= 0.1:
                m = fill_polygon(p[INNER_LIP], crop.shape[:2]) > 0.99
                inside.append(crop[m].astype(np.float32))
        if inside:
            pix = np.concatenate(inside)
            lum = pix @ _LUMA
            order = np.argsort(lum)
            self.cavity_colour = pix[order[: max(1, int(0.4 * len(order)))]].mean(0)
            bright = pix[order[-max(1, int(0.1 * len(order))):]].mean(0)
            if bright @ _LUMA > self.cavity_colour @ _LUMA + 60:
                self.teeth_colour = bright
        return None

    def render(self, crops: np.ndarray, landmarks: np.ndarray, motion: Motion, frames: np.ndarray) -> np.ndarray:
        """Crops uint8 ``[B, S, S, 3]``, landmarks ``[B, 5|68, 2]`` crop px, indices ``[B]`` into ``motion.codes`` -> uint8 ``[B, S, S, 3]``."""
        if motion.kind not in self.motion_kinds:
            raise BadInputError(f"renderer 'warp': needs motion of kind 'mouth', got {motion.kind!r}; pick a mouth motion model (e.g. viseme) or a neural renderer")
        crops = np.asarray(crops)
        if crops.dtype != np.uint8 or crops.ndim != 4 or len(crops) != len(landmarks) or len(crops) != len(frames):
            raise BadInputError(f"renderer 'warp': expected uint8 crops [B, S, S, 3] with B landmarks and frame indices, got {crops.dtype}{crops.shape}")
        codes = np.asarray(motion.codes, np.float32)
        return np.stack([self.render_one(c, p, codes[int(f)]) for c, p, f in zip(crops, landmarks, frames)])

    def target_shape(self, points68: np.ndarray, code: np.ndarray) -> np.ndarray:
        """Landmarks float64 ``[68, 2]`` px of the source face ``points68`` with its mouth set to ``code`` (opening, width, protrusion)."""
        cfg = self.config
        opening = float(np.clip(code[0], 0.0, cfg.max_opening))
        width = float(np.clip(code[1], -0.5, 0.5))
        protrusion = float(np.clip(code[2], -1.0, 1.0))
        _, u, v, iod = face_frame(points68)
        centre = (points68[48] + points68[54]) / 2
        rel = points68 - centre
        a, b = rel @ u / iod, rel @ v / iod  # mouth-centred coordinates in IOD, b downwards
        a_new, b_new = a.copy(), b.copy()
        # vertical: close each inner pair at its seam, then open it to the target gap
        # an open source keeps its own gap profile; a nearly closed one gets the average profile
        gaps = np.array([b[lo] - b[up] for up, lo in INNER_LIP_PAIRS])
        source_opening = max(float(gaps.mean()), 1e-6)
        own = float(np.clip(source_opening / 0.1, 0.0, 1.0))
        profile = own * np.clip(gaps, 0.0, None) / source_opening + (1.0 - own) * _GAP_PROFILE
        dv = {}
        for (up, lo), gap, share in zip(INNER_LIP_PAIRS, gaps, profile):
            seam = b[up] + cfg.upper_share * gap
            target = opening * share
            dv[up] = seam - cfg.upper_share * target - b[up]
            dv[lo] = seam + (1 - cfg.upper_share) * target - b[lo]
        for outer, (inner, share) in _OUTER_FOLLOW.items():
            b_new[outer] += share * dv[inner]
        for i in dv:
            b_new[i] += dv[i]
        lower = float(np.mean([dv[lo] for _, lo in INNER_LIP_PAIRS]))
        b_new[_CORNERS] += 0.35 * lower
        for j, w in _JAW_WEIGHTS.items():
            b_new[j] += cfg.jaw_follow * w * lower
        # rounding pouts the lips outward from the seam
        b_new[_UPPER_OUTER] -= 0.05 * protrusion
        b_new[_LOWER_OUTER] += 0.05 * protrusion
        # horizontal: width relative to the neutral width, narrowed by rounding
        source_width = 0.0 if self.neutral_width is None else mouth_width(points68) / self.neutral_width - 1.0
        scale = (1.0 + width) * (1.0 - 0.25 * protrusion) / (1.0 + source_width)
        mouth = np.r_[48:68]
        a_new[mouth] *= scale
        a_new[[60, 64]] *= 1.0 - 0.25 * max(protrusion, 0.0)
        return centre + iod * (a_new[:, None] * u + b_new[:, None] * v)

    def render_one(self, crop: np.ndarray, landmarks: np.ndarray, code: np.ndarray) -> np.ndarray:
        """One crop uint8 ``[S, S, 3]`` and its landmarks ``[5|68, 2]`` crop px, code float ``[3]`` -> uint8 ``[S, S, 3]``."""
        src68 = dense_landmarks(landmarks)
        return self.moved(crop, src68, self.target_shape(src68, code))

    def moved(self, crop: np.ndarray, src68: np.ndarray, tgt68: np.ndarray, paint: bool = True) -> np.ndarray:
        """Crop uint8 ``[S, S, 3]`` with its lower face moved from landmarks ``src68`` to ``tgt68`` (``[68, 2]`` crop px),
        and, with ``paint``, cavity and teeth painted where the mouth opens wider than the crop shows."""
        size_y, size_x = crop.shape[:2]
        src = np.concatenate([src68, anchors(src68)])
        tgt = np.concatenate([tgt68, src[68:]])
        tris, interior = mesh()
        shifted = np.abs(tgt - src).max(axis=1) > 1e-3
        active = shifted[tris].any(axis=1)
        out = crop.copy()
        if not active.any():
            return out
        tris, interior = tris[active], interior[active]
        corners = np.concatenate([src[tris].reshape(-1, 2), tgt[tris].reshape(-1, 2)])
        x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int) - 1, 0)
        x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 2, (size_x, size_y))
        if x1 <= x0 or y1 <= y0:
            return out
        origin = np.array([x0, y0], np.float64)
        map_x, map_y, _ = piecewise_affine_map(src[tris], tgt[tris] - origin, interior, (y1 - y0, x1 - x0), origin)
        warped = cv2.remap(crop, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if paint:
            warped = self._paint_interior(warped, src68, tgt68, origin, crop)
        out[y0:y1, x0:x1] = warped
        return out

    def _paint_interior(self, roi: np.ndarray, src68: np.ndarray, tgt68: np.ndarray, origin: np.ndarray, crop: np.ndarray) -> np.ndarray:
        """Paint cavity and teeth where the target opening exceeds what the source shows (``roi`` uint8 at ``origin``).

        Opacity is the share of the target gap the source cannot supply,
        ``(target - source) / target`` (at least ``paint_floor``), so a source
        that already shows its mouth interior keeps it. Works on the opening's bounding box only.
        """
        _, u, v, iod = face_frame(tgt68)
        gap_t, gap_s = mouth_opening(tgt68), mouth_opening(src68)
        if gap_t * iod < 1.0 or gap_t <= gap_s:
            return roi
        strength = max((gap_t - gap_s) / gap_t, self.config.paint_floor)
        contour = _smooth_closed(tgt68[INNER_LIP])
        # the opening's box inside the ROI, with room for the soft edge
        bx0, by0 = np.maximum(np.floor(contour.min(0) - origin).astype(int) - 3, 0)
        bx1, by1 = np.minimum(np.ceil(contour.max(0) - origin).astype(int) + 4, roi.shape[1::-1])
        if bx1 <= bx0 or by1 <= by0:
            return roi
        box_origin = origin + [bx0, by0]
        shape = (by1 - by0, bx1 - bx0)
        hole = fill_polygon(contour, shape, box_origin)
        cavity, teeth = self._colours(crop, src68)
        # cavity: darkest in the middle of the opening, lighter toward the lips
        core = cv2.GaussianBlur(hole, (0, 0), max(gap_t * iod / 4, 0.5))
        colour = cavity * (1.3 - 0.6 * core)[..., None]
        # teeth: the part of the opening within `band` below its upper edge, darker toward the corners
        band = min(0.35 * gap_t, 0.08) * iod
        if self.config.teeth > 0 and band >= 1.0:
            below = fill_polygon(contour + band * v, shape, box_origin)
            upper_band = cv2.GaussianBlur(hole * (1.0 - below), (0, 0), max(band / 8, 0.5))
            centre = (tgt68[60] + tgt68[64]) / 2 - box_origin
            half = max(float(np.hypot(*(tgt68[64] - tgt68[60]))) / 2, 1.0)
            across = ((np.arange(shape[1], dtype=np.float32)[None] - centre[0]) * u[0] + (np.arange(shape[0], dtype=np.float32)[:, None] - centre[1]) * u[1]) / half
            shade = np.clip(1.0 - 0.7 * across**2, 0.25, 1.0)[..., None]
            colour = colour + (self.config.teeth * upper_band)[..., None] * (teeth * shade - colour)
        alpha = (cv2.GaussianBlur(hole, (0, 0), 0.7) * strength)[..., None]
        box = roi[by0:by1, bx0:bx1].astype(np.float32)
        out = roi.copy()
        out[by0:by1, bx0:bx1] = np.clip(np.rint(box + alpha * (colour - box)), 0, 255).astype(np.uint8)
        return out

    def _colours(self, crop: np.ndarray, src68: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cavity, teeth) RGB float32 ``[3]``: measured in prepare, else derived from this crop's lip colour."""
        cavity, teeth = self.cavity_colour, self.teeth_colour
        if cavity is None or teeth is None:
            x0, y0 = np.maximum(np.floor(src68[OUTER_LIP].min(0)).astype(int), 0)
            x1, y1 = np.minimum(np.ceil(src68[OUTER_LIP].max(0)).astype(int) + 1, crop.shape[1::-1])
            shape, origin = (max(y1 - y0, 0), max(x1 - x0, 0)), (x0, y0)
            lips = (fill_polygon(src68[OUTER_LIP], shape, origin) > 0.99) & ~(fill_polygon(src68[INNER_LIP], shape, origin) > 0)
            pixels = crop[y0:y1, x0:x1][lips]
            lip = np.median(pixels, axis=0).astype(np.float32) if len(pixels) else np.array([170, 100, 95], np.float32)
            if cavity is None:
                cavity = lip * np.array([0.28, 0.18, 0.2], np.float32)
            if teeth is None:  # off-white, as bright as the brightest lip channel
                teeth = min(230.0, 1.15 * float(lip.max())) * np.array([1.0, 0.93, 0.82], np.float32)
        return np.asarray(cavity, np.float32), np.asarray(teeth, np.float32)


def _smooth_closed(polygon: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Chaikin corner cutting of a closed polygon ``[n, 2]`` -> ``[n * 2**iterations, 2]`` (rounds the lip contour)."""
    pts = np.asarray(polygon, np.float64)
    for _ in range(iterations):
        nxt = np.roll(pts, -1, axis=0)
        pts = np.stack([0.75 * pts + 0.25 * nxt, 0.25 * pts + 0.75 * nxt], axis=1).reshape(-1, 2)
    return pts


def piecewise_affine_map(
    src: np.ndarray, tgt: np.ndarray, interior: np.ndarray, shape: tuple[int, int], origin: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cv2.remap maps float32 ``[h, w]`` (source px) for an output ROI whose pixel (0, 0) is at ``origin``, and bool ``[h, w]`` True where a triangle covers the pixel.

    ``src``/``tgt``: triangle corners ``[T, 3, 2]`` in source px / ROI px.
    Pixels outside every target triangle map to themselves; degenerate
    target triangles (a closed mouth interior) are skipped; the interior is
    drawn first so lip triangles win on shared edges.
    """
    h, w = shape
    n = len(tgt)
    ids = np.full((h, w), n, np.int32)  # n: no triangle, the identity entry appended below
    e1, e2 = tgt[:, 1] - tgt[:, 0], tgt[:, 2] - tgt[:, 0]
    area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    keep = area > 0.25
    order = [i for i in np.argsort(~interior, kind="stable") if keep[i]]
    fixed = np.round(tgt * 16).astype(np.int32)
    for i in order:
        cv2.fillConvexPoly(ids, fixed[i], int(i), lineType=cv2.LINE_8, shift=4)
    # affine tgt -> src per triangle: [x, y, 1] @ A = src, A [T, 3, 2]; entry n maps ROI px to themselves
    lhs = np.concatenate([tgt, np.ones(tgt.shape[:2] + (1,))], axis=2)
    lhs[~keep] = np.eye(3)
    affine = np.concatenate([np.linalg.solve(lhs, src), [[[1, 0], [0, 1], origin]]]).astype(np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x = xs * affine[:, 0, 0].take(ids) + ys * affine[:, 1, 0].take(ids) + affine[:, 2, 0].take(ids)
    map_y = xs * affine[:, 0, 1].take(ids) + ys * affine[:, 1, 1].take(ids) + affine[:, 2, 1].take(ids)
    return map_x, map_y, ids < n


def build_warp(config: WarpRendererConfig, context) -> WarpRenderer:
    """Landmark-driven warp renderer (the mesh is triangulated here, not on the first frame)."""
    mesh()
    return WarpRenderer(config)


@hookimpl
def register_renderers(register):
    register("warp", build_warp, config=WarpRendererConfig, summary="offline preview: warps the real mouth and jaw to mouth codes (no network)")
