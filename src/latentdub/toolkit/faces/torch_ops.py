"""Torch versions of the per-frame image work: crop warps, feathered masks, soft compositing.

They run on any torch device (the GPU in the fast ``dub`` path, see
``runtime.frame_ops``) and follow the numpy/OpenCV functions they stand for
(:func:`.align.warp_to_crop`, :func:`.masks.region_mask` and the ``soft``
compositor's blend) closely enough to be interchangeable: images agree within
one or two levels of 255, three on a few pixels per million (OpenCV
interpolates in fixed point; these ops round sampling positions to the same
1/32 px grid but weigh the bicubic taps in floating point) and every pixel where the mask
is 0 is returned bit-identical to the input frame.

What stays on the CPU is what is cheap there and shared with the numpy path:
the alignment matrices, the region's polygon and its rasterised coverage
(:func:`.masks.fill_polygon` on the feather's reduced grid, :func:`.masks.feather_grid`).
The Gaussian feather (a separable filter) and its interpolation back to
pixels, the warps (``grid_sample``) and the blend run on the device.

Layouts: frames uint8 ``[H, W, 3]`` RGB tensors; crops uint8 ``[S, S, 3]``;
internally float32 ``[1, C, H, W]``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from ..core.types import Alignment
from .align import crop_source_region
from .masks import MIN_RING_PIXELS, Region, feather_grid, fill_polygon, region_outline

#: OpenCV's warps place sampling positions on a 1/32 px grid (``INTER_BITS = 5``), summing the
#: shares of a row and a column each rounded to 1/1024 px (``AB_BITS = 10``).
_INTER_TAB = 32
_AB_SCALE = 1024
_AB_STEP = _AB_SCALE // _INTER_TAB
_ROUND_DELTA = _AB_STEP // 2
#: Colour-match modes these ops implement (``lab`` and Poisson blending stay on the numpy path).
TORCH_COLOR_MATCH = ("none", "mean_std")


def frame_tensor(image: np.ndarray, device: Any) -> Any:
    """uint8 ``[H, W, 3]`` numpy image -> uint8 tensor on ``device`` (through pinned memory, asynchronously, on CUDA).

    Decoded frames are read-only views of the decoder's buffer: they are copied once,
    into the pinned buffer on CUDA or into a fresh tensor elsewhere.
    """
    import torch

    if torch.device(device).type == "cuda":
        pinned = torch.empty(image.shape, dtype=torch.uint8, pin_memory=True)
        pinned.numpy()[...] = image
        return pinned.to(device, non_blocking=True)
    return torch.from_numpy(image if image.flags.writeable else image.copy()).to(device)


def _chw(image: Any) -> Any:
    """uint8 ``[H, W, C]`` -> float32 ``[1, C, H, W]``."""
    return image.permute(2, 0, 1)[None].float()


def _hwc_uint8(x: Any) -> Any:
    """float ``[1, C, H, W]`` in 0..255 -> uint8 ``[H, W, C]``, rounding half up (as OpenCV)."""
    import torch

    return torch.floor(x[0] + 0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)


def pyr_down(x: Any) -> Any:
    """``cv2.pyrDown`` of float ``[1, C, H, W]`` holding uint8 values: 5-tap binomial blur, reflect-101 border, every second pixel, rounded."""
    import torch
    import torch.nn.functional as F

    c = x.shape[1]
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype, device=x.device) / 16.0
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c, stride=(1, 2))
    x = F.conv2d(x, taps.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c, stride=(2, 1))
    return torch.floor(x + 0.5)


def _sample(
    src: Any, to_src: np.ndarray, out_hw: tuple[int, int], padding: Literal["zeros", "border", "reflection"],
    mode: Literal["bilinear", "bicubic"] = "bilinear",
) -> Any:
    """Samples of ``src`` ``[1, C, h, w]`` at ``to_src @ (x, y, 1)`` for each output pixel (x, y); float32 ``[1, C, H, W]``.

    ``bicubic`` is OpenCV's ``INTER_CUBIC`` kernel (a = -0.75, as torch's).

    Positions are rounded to OpenCV's 1/32 px grid the way ``cv2.warpAffine`` rounds them.
    """
    import torch
    import torch.nn.functional as F

    h_out, w_out = out_hw
    h, w = src.shape[-2:]
    m = torch.as_tensor(np.asarray(to_src, np.float64), dtype=torch.float64, device=src.device)
    ys, xs = torch.meshgrid(
        torch.arange(h_out, dtype=torch.float64, device=src.device), torch.arange(w_out, dtype=torch.float64, device=src.device), indexing="ij"
    )
    # OpenCV's fixed point: each row's and each column's share rounded to 1/1024 px, the sum rounded to 1/32 px
    sx = torch.floor((torch.round((m[0, 1] * ys + m[0, 2]) * _AB_SCALE) + torch.round(m[0, 0] * xs * _AB_SCALE) + _ROUND_DELTA) / _AB_STEP) / _INTER_TAB
    sy = torch.floor((torch.round((m[1, 1] * ys + m[1, 2]) * _AB_SCALE) + torch.round(m[1, 0] * xs * _AB_SCALE) + _ROUND_DELTA) / _AB_STEP) / _INTER_TAB
    grid = torch.stack([(2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1], dim=-1)[None].to(src.dtype)
    return F.grid_sample(src, grid, mode=mode, padding_mode=padding, align_corners=False)


def warp_to_crop_torch(frame: Any, alignment: Alignment) -> Any:
    """Aligned crop uint8 ``[S, S, 3]`` of frame tensor uint8 ``[H, W, 3]``, as :func:`.align.warp_to_crop`.

    The same region of interest, the same Gaussian pyramid steps when the crop
    shrinks the face more than 2x, bicubic sampling with reflected borders.
    """
    (x0, y0, x1, y1), m, k = crop_source_region(alignment, frame.shape[:2])
    x = _chw(frame[y0:y1, x0:x1])
    while k < 0.5 and min(x.shape[-2:]) > 8:
        x = pyr_down(x)
        m[:, :2] *= 2.0
        k *= 2.0
    return _hwc_uint8(_sample(x, Alignment(m, alignment.size).inverse_matrix(), (alignment.size, alignment.size), "reflection", "bicubic"))


def warp_crops(frames: list[Any], alignments: list[Alignment]) -> Any:
    """uint8 ``[B, S, S, 3]``: :func:`warp_to_crop_torch` of each frame tensor with its alignment."""
    import torch

    return torch.stack([warp_to_crop_torch(f, a) for f, a in zip(frames, alignments)])


def gaussian_taps(sigma: float) -> np.ndarray:
    """float32 taps of OpenCV's Gaussian of ``sigma`` truncated at 3 sigma (``cv2.getGaussianKernel``)."""
    import cv2

    radius = int(np.ceil(3 * sigma))
    return cv2.getGaussianKernel(2 * radius + 1, sigma, cv2.CV_32F).reshape(-1)


def feathered_polygon_torch(polygon: np.ndarray, sigma: float, shape: tuple[int, int], origin: tuple[float, float], device: Any) -> Any:
    """:func:`.masks.feathered_polygon` as a float32 ``[h, w]`` tensor on ``device``: separable Gaussian on the reduced grid, bilinear back, tails clipped."""
    import torch
    import torch.nn.functional as F

    step, cell_sigma = feather_grid(sigma)
    x = torch.from_numpy(fill_polygon(polygon, shape, origin, step)).to(device)[None, None]
    if step > 1:
        x = F.pad(x, (1, 1, 1, 1))  # the empty cell each side of the numpy version
    if cell_sigma > 0:
        taps = torch.as_tensor(gaussian_taps(cell_sigma), device=device)
        r = (len(taps) - 1) // 2
        x = F.conv2d(F.pad(x, (r, r, 0, 0)), taps.view(1, 1, 1, -1))
        x = F.conv2d(F.pad(x, (0, 0, r, r)), taps.view(1, 1, -1, 1))
    if step > 1:
        h, w = shape
        x = F.interpolate(x, scale_factor=step, mode="bilinear", align_corners=False)[..., step : step + h, step : step + w]
    x = x[0, 0]
    x = torch.where(x < 1 / 255, torch.zeros_like(x), x)
    return torch.where(x > 1 - 1 / 255, torch.ones_like(x), x)


def region_mask_torch(
    landmarks: np.ndarray, image_shape: tuple[int, int], device: Any, region: Region = "lower_face",
    dilate: float = 0.05, feather: float = 0.12, jaw_margin: float = 0.25,
) -> tuple[Any, tuple[int, int, int, int]]:
    """:func:`.masks.region_mask` with the feather on ``device``: (float32 mask tensor ``[y1-y0, x1-x0]``, box (x0, y0, x1, y1))."""
    import torch

    hull, sigma, (x0, y0, x1, y1) = region_outline(landmarks, image_shape, region, dilate, feather, jaw_margin)
    if x1 <= x0 or y1 <= y0:
        return torch.zeros((0, 0), dtype=torch.float32, device=device), (0, 0, 0, 0)
    return feathered_polygon_torch(hull, sigma, (y1 - y0, x1 - x0), (x0, y0), device), (x0, y0, x1, y1)


def match_colour_torch(warped: Any, base: Any, alpha: Any) -> Any:
    """Mean/std colour transfer (RGB) of ``warped`` to ``base`` in the feather band; float32 ``[1, 3, h, w]`` 0..255."""
    import torch

    ring = (alpha > 0.02) & (alpha < 0.98)
    n = int(ring.sum())
    if n < MIN_RING_PIXELS:
        return warped
    s = warped[0][:, ring]  # [3, n]
    r = base[0][:, ring]
    s_mean, r_mean = s.mean(1), r.mean(1)
    s_std, r_std = s.std(1, unbiased=False), r.std(1, unbiased=False)
    gain = torch.clamp(r_std / torch.clamp(s_std, min=1e-3), 0.5, 2.0)
    matched = (warped - s_mean.view(1, 3, 1, 1)) * gain.view(1, 3, 1, 1) + r_mean.view(1, 3, 1, 1)
    return matched.clamp(0, 255)


def composite_torch(
    frame: Any, rendered: Any, alignment: Alignment, landmarks: np.ndarray, region: Region = "lower_face",
    dilate: float = 0.05, feather: float = 0.12, jaw_margin: float = 0.25, color_match: str = "mean_std",
    mask: tuple[Any, tuple[int, int, int, int]] | None = None,
) -> Any:
    """The ``soft`` compositor's blend on tensors: frame uint8 ``[H, W, 3]``, crop uint8 ``[S, S, 3]`` -> new uint8 frame.

    ``color_match``: ``none`` or ``mean_std``; ``mask``: a precomputed
    :func:`region_mask_torch` result. The input frame is not modified; pixels
    where the mask is 0 keep their exact values.
    """
    import torch

    if color_match not in TORCH_COLOR_MATCH:
        raise ValueError(f"color_match {color_match!r}: torch compositing does {', '.join(TORCH_COLOR_MATCH)}; use runtime.frame_ops=numpy")
    out = frame.clone()
    h, w = int(frame.shape[0]), int(frame.shape[1])
    alpha, (x0, y0, x1, y1) = mask if mask is not None else region_mask_torch(landmarks, (h, w), frame.device, region, dilate, feather, jaw_margin)
    if alpha.numel() == 0:
        return out
    m = np.asarray(alignment.matrix, np.float64)
    to_crop = np.concatenate([m[:, :2], (m[:, :2] @ np.array([x0, y0], np.float64) + m[:, 2])[:, None]], axis=1)
    size = (y1 - y0, x1 - x0)
    crop = _chw(rendered)
    warped = torch.floor(_sample(crop, to_crop, size, "border", "bicubic") + 0.5).clamp_(0, 255)  # OpenCV returns the warp as uint8
    ones = torch.ones((1, 1) + tuple(rendered.shape[:2]), dtype=torch.float32, device=frame.device)
    inside = _sample(ones, to_crop, size, "zeros")[0, 0]
    alpha = alpha * torch.where(inside > 1 - 1e-3, torch.ones_like(inside), inside)
    base = _chw(frame[y0:y1, x0:x1])
    if color_match == "mean_std":
        warped = match_colour_torch(warped, base, alpha)
    blended = base + alpha[None, None] * (warped - base)
    out[y0:y1, x0:x1] = torch.round(blended[0]).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)
    return out
