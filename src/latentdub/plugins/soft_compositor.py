"""Compositors "soft" and "poisson": paste the rendered crop back through a feathered face-region mask.

The mask is a convex hull of landmarks (mouth, lower face or whole face),
grown and feathered by amounts given in inter-ocular distances (IOD), so it
depends only on the (smoothed) landmarks and is identical for identical
landmarks. All work happens on the mask's bounding box; every pixel where the
mask is 0 is returned bit-identical to the input frame.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

import cv2
import numpy as np

from latentdub.toolkit.core.config import Range
from latentdub.toolkit.core.errors import BadInputError
from latentdub.toolkit.core.hookspecs import hookimpl
from latentdub.toolkit.core.types import Alignment
from latentdub.toolkit.faces.masks import Region, match_colour, region_mask


@dataclasses.dataclass(frozen=True)
class SoftCompositorConfig:
    """Settings of the soft-mask compositor (lengths in IOD, the inter-ocular distance)."""

    #: Face region replaced: 'mouth' (lips), 'lower_face' (jaw, lips, below the nostrils) or 'face'.
    region: Region = "lower_face"
    #: Outward growth of the region's convex hull, in IOD.
    dilate: Annotated[float, Range(ge=0, le=1)] = 0.05
    #: Gaussian sigma of the soft edge, in IOD; the mask reaches 0 at 3 sigma beyond the grown hull.
    feather: Annotated[float, Range(ge=0, le=1)] = 0.12
    #: Extra room below the jaw line for a lowered chin, in IOD ('lower_face' and 'face').
    jaw_margin: Annotated[float, Range(ge=0, le=2)] = 0.25
    #: Colour transfer from frame to crop, measured in the feather band: 'none', 'mean_std' (RGB) or 'lab'.
    color_match: Literal["none", "mean_std", "lab"] = "mean_std"
    #: Poisson-blend (cv2.seamlessClone, NORMAL_CLONE) inside the mask before the alpha blend.
    poisson: bool = False


@dataclasses.dataclass(frozen=True)
class PoissonCompositorConfig(SoftCompositorConfig):
    """Settings of the Poisson compositor: the soft compositor with gradient-domain blending on."""

    #: Poisson-blend (cv2.seamlessClone, NORMAL_CLONE) inside the mask before the alpha blend.
    poisson: bool = True


class SoftCompositor:
    """Warps a crop back with the inverse alignment and alpha-blends it inside a feathered landmark mask."""

    def __init__(self, config: SoftCompositorConfig = SoftCompositorConfig()):
        for name in ("dilate", "feather", "jaw_margin"):
            if getattr(config, name) < 0:
                raise BadInputError(f"compositor.{name}: must be >= 0, got {getattr(config, name)}")
        self.config = config

    def mask(self, frame_shape: tuple[int, int], landmarks: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """(float32 alpha ``[h, w]``, (x0, y0, x1, y1) box in frame px) for landmarks ``[5|68, 2]`` in frame px."""
        c = self.config
        return region_mask(landmarks, frame_shape, c.region, c.dilate, c.feather, c.jaw_margin)

    def composite(self, frame: np.ndarray, rendered: np.ndarray, alignment: Alignment, landmarks: np.ndarray) -> np.ndarray:
        """Frame uint8 ``[H, W, 3]``, crop uint8 ``[S, S, 3]``, landmarks ``[5|68, 2]`` frame px -> new uint8 frame.

        The input frame is not modified; pixels where the mask is 0 keep their exact values.
        """
        if frame.dtype != np.uint8 or frame.ndim != 3 or rendered.dtype != np.uint8 or rendered.ndim != 3:
            raise BadInputError(f"compositor: expected uint8 [H, W, 3] frame and [S, S, 3] crop, got {frame.dtype}{frame.shape} and {rendered.dtype}{rendered.shape}")
        out = frame.copy()
        alpha, (x0, y0, x1, y1) = self.mask(frame.shape[:2], landmarks)
        if alpha.size == 0:
            return out
        # crop -> ROI of the frame: dst(x, y) = crop(M @ (x + x0, y + y0, 1))
        m = np.asarray(alignment.matrix, np.float64)
        to_crop = np.concatenate([m[:, :2], (m[:, :2] @ np.array([x0, y0], np.float64) + m[:, 2])[:, None]], axis=1)
        size = (x1 - x0, y1 - y0)
        flags = cv2.WARP_INVERSE_MAP
        # bicubic, as warp_to_crop: the round trip keeps the mouth's detail
        warped = cv2.warpAffine(rendered, to_crop, size, flags=cv2.INTER_CUBIC | flags, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        if not _inside_crop(to_crop, size, rendered.shape[:2]):
            inside = cv2.warpAffine(np.ones(rendered.shape[:2], np.float32), to_crop, size, flags=cv2.INTER_LINEAR | flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            alpha = alpha * np.where(inside > 1 - 1e-3, np.float32(1), inside)
        base = frame[y0:y1, x0:x1].astype(np.float32)
        if self.config.color_match != "none":
            warped = match_colour(warped, base, alpha, self.config.color_match)
        if self.config.poisson:
            warped = _poisson(warped, base, alpha)
        blended = np.subtract(warped, base, out=warped)  # base + alpha * (warped - base), in place
        blended *= alpha[..., None]
        blended += base
        out[y0:y1, x0:x1] = np.clip(np.rint(blended, out=blended), 0, 255, out=blended).astype(np.uint8)
        return out

    def composite_torch(self, frame, rendered, alignment: Alignment, landmarks: np.ndarray):
        """:meth:`composite` on uint8 tensors (frame ``[H, W, 3]``, crop ``[S, S, 3]``) on their device.

        Runs as torch ops for ``color_match`` none/mean_std without Poisson
        blending (within one or two levels of :meth:`composite`); otherwise
        the numpy path on a CPU copy.
        """
        import torch

        from latentdub.toolkit.faces.torch_ops import TORCH_COLOR_MATCH, composite_torch

        c = self.config
        if c.poisson or c.color_match not in TORCH_COLOR_MATCH:
            out = self.composite(frame.cpu().numpy(), rendered.cpu().numpy(), alignment, landmarks)
            return torch.from_numpy(out).to(frame.device)
        return composite_torch(frame, rendered, alignment, landmarks, c.region, c.dilate, c.feather, c.jaw_margin, c.color_match)


def _inside_crop(to_crop: np.ndarray, size: tuple[int, int], crop_hw: tuple[int, int]) -> bool:
    """Whether every pixel of a ``size`` (w, h) box maps, through ``to_crop`` ``[2, 3]``, at least one crop pixel
    inside the crop's edges (its bilinear coverage is then 1 everywhere)."""
    w, h = size
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], np.float64) @ to_crop.T
    return bool((corners >= 1).all() and (corners[:, 0] <= crop_hw[1] - 2).all() and (corners[:, 1] <= crop_hw[0] - 2).all())


def _poisson(warped: np.ndarray, base: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Gradient-domain blend of ``warped`` into ``base`` over the mask's support (both float32 ``[h, w, 3]``)."""
    pad = 4
    support = (alpha > 0).astype(np.uint8) * 255
    if not support.any():
        return warped
    src = cv2.copyMakeBorder(np.clip(np.rint(warped), 0, 255).astype(np.uint8), pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    dst = cv2.copyMakeBorder(base.astype(np.uint8), pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    mask = cv2.copyMakeBorder(support, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    x, y, w, h = cv2.boundingRect(mask)
    centre = (x + w // 2, y + h // 2)  # seamlessClone places the mask's bounding box at centre - size // 2
    cloned = cv2.seamlessClone(src, dst, mask, centre, cv2.NORMAL_CLONE)
    return cloned[pad:-pad, pad:-pad].astype(np.float32)


def build_soft(config: SoftCompositorConfig, context) -> SoftCompositor:
    """Soft-mask compositor."""
    return SoftCompositor(config)


@hookimpl
def register_compositors(register):
    register("soft", build_soft, config=SoftCompositorConfig, summary="feathered landmark mask, colour matching, optional Poisson blend")
    register("poisson", build_soft, config=PoissonCompositorConfig, summary="soft compositor with Poisson (seamlessClone) blending on")
