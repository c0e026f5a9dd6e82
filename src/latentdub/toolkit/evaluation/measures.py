"""Evaluation metrics as pure functions on numpy arrays.

Images are uint8 ``[H, W, 3]`` RGB (or ``[H, W]`` grey) unless stated;
landmarks are float ``[68, 2]`` (iBUG scheme) or ``[20, 2]`` mouth points in
pixels; features are float ``[N, D]``. Definitions (see docs/evaluation.md):

* :func:`psnr` — 10 log10(255^2 / MSE) over all pixels and channels, capped
  at :data:`PSNR_CAP_DB` (identical images give the cap, never ``inf``).
* :func:`ssim` — Wang et al. 2004 with an 11-tap Gaussian window (sigma 1.5),
  K1 0.01, K2 0.03, population covariances, computed per RGB channel and
  averaged; the 5-pixel border the window does not fully cover is excluded.
* :func:`mouth_landmark_distance` — LMD: mouth points 48-67 of each set minus
  that set's mean, then the Euclidean distance of corresponding points,
  averaged (default) or summed over the 20 points.
* :func:`frechet_distance` / :class:`FeatureStats` — FID from streamed
  Inception pool3 features.
* :func:`cpbd` — cumulative probability of blur detection (Narvekar & Karam
  2011), higher is sharper.
* :func:`sync_distance_confidence` / :func:`syncnet_mfcc` — LSE-D / LSE-C
  following the Wav2Lip protocol on SyncNet embeddings.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Literal

import numpy as np

#: PSNR reported for identical images (MSE 0), in dB.
PSNR_CAP_DB = 100.0
#: Mouth points of the iBUG 68-point scheme (outer lip 48-59, inner 60-67).
MOUTH_POINTS = slice(48, 68)
#: Outer eye corners of the 68-point scheme (subject's right, left), used to normalise LMD.
OUTER_EYE_CORNERS = (36, 45)


def psnr(generated: np.ndarray, reference: np.ndarray, data_range: float = 255.0, cap: float = PSNR_CAP_DB) -> float:
    """Peak signal-to-noise ratio in dB of two same-shaped images, at most ``cap``."""
    a, b = _same_shape(generated, reference)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return float(cap)
    return float(min(cap, 10.0 * math.log10(data_range**2 / mse)))


def ssim(generated: np.ndarray, reference: np.ndarray, data_range: float = 255.0) -> float:
    """Structural similarity in [-1, 1]: Gaussian window 11 px / sigma 1.5, mean over channels.

    Agrees with ``skimage.metrics.structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1)``.
    """
    import cv2

    a, b = _same_shape(generated, reference)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if min(a.shape[:2]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels, got {a.shape[1]}x{a.shape[0]}")
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    values = []
    for c in range(a.shape[2]):
        x, y = np.ascontiguousarray(a[..., c]), np.ascontiguousarray(b[..., c])
        mx, my = blur(x), blur(y)
        vx = blur(x * x) - mx * mx
        vy = blur(y * y) - my * my
        cxy = blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        values.append(s[5:-5, 5:-5].mean())
    return float(np.mean(values))


def mouth_landmark_distance(
    generated: np.ndarray,
    reference: np.ndarray,
    reduce: Literal["mean", "sum"] = "mean",
    normalise: bool = False,
) -> float:
    """LMD of one frame pair, in pixels (or in inter-ocular units when ``normalise``).

    ``generated``/``reference``: ``[68, 2]`` landmarks (or ``[20, 2]`` mouth
    points when not normalising). Each mouth set is centred on its own mean
    (translation removed); the per-point Euclidean distances are averaged
    (``reduce="mean"``) or summed (``"sum"``). ``normalise`` divides by the
    reference's outer-eye-corner distance (points 36 and 45).
    """
    g = np.asarray(generated, np.float64)
    r = np.asarray(reference, np.float64)
    if g.shape != r.shape or g.shape not in ((68, 2), (20, 2)):
        raise ValueError(f"LMD needs two [68, 2] or [20, 2] landmark arrays, got {g.shape} and {r.shape}")
    scale = 1.0
    if normalise:
        if r.shape[0] != 68:
            raise ValueError("normalised LMD needs full 68-point landmarks (eye corners 36 and 45)")
        scale = float(np.linalg.norm(r[OUTER_EYE_CORNERS[0]] - r[OUTER_EYE_CORNERS[1]]))
    if g.shape[0] == 68:
        g, r = g[MOUTH_POINTS], r[MOUTH_POINTS]
    g = g - g.mean(axis=0)
    r = r - r.mean(axis=0)
    dist = np.linalg.norm(g - r, axis=1)
    total = dist.sum() if reduce == "sum" else dist.mean()
    return float(total / scale)


@dataclasses.dataclass
class FeatureStats:
    """Running first and second moments of feature vectors (memory independent of N).

    ``add(features [N, D])`` accumulates in float64; ``+`` merges two stats.
    """

    dim: int
    count: int = 0
    total: np.ndarray | None = None
    outer: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.total is None:
            self.total = np.zeros(self.dim, np.float64)
        if self.outer is None:
            self.outer = np.zeros((self.dim, self.dim), np.float64)

    def add(self, features: np.ndarray) -> None:
        """Accumulate a batch ``[N, D]``."""
        f = np.asarray(features, np.float64).reshape(-1, self.dim)
        self.count += f.shape[0]
        self.total += f.sum(axis=0)
        self.outer += f.T @ f

    def __add__(self, other: "FeatureStats") -> "FeatureStats":
        if other.dim != self.dim:
            raise ValueError(f"cannot merge feature stats of dimension {self.dim} and {other.dim}")
        return FeatureStats(self.dim, self.count + other.count, self.total + other.total, self.outer + other.outer)

    def mean(self) -> np.ndarray:
        """Mean feature ``[D]``."""
        return self.total / max(self.count, 1)

    def covariance(self) -> np.ndarray:
        """Unbiased covariance ``[D, D]`` (divides by N - 1, like ``numpy.cov``)."""
        if self.count < 2:
            raise ValueError(f"FID needs at least 2 frames per side, got {self.count}")
        mu = self.mean()
        return (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    ``||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2))``. When
    the product is singular enough for ``sqrtm`` to fail, ``eps`` is added to
    both diagonals; imaginary parts from rounding are dropped (an error when
    they exceed 1e-3 relative). Clamped at 0.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(s1.shape[0]) * eps
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        scale = max(1.0, float(np.abs(covmean).max()))
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3 * scale):
            raise ValueError(f"FID: matrix square root has imaginary component {np.abs(covmean.imag).max():.3g}")
        covmean = covmean.real
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean)
    return float(max(value, 0.0))


def fid_from_stats(generated: FeatureStats, reference: FeatureStats) -> float:
    """FID between two accumulated feature sets."""
    return frechet_distance(generated.mean(), generated.covariance(), reference.mean(), reference.covariance())


# --- CPBD -----------------------------------------------------------------

#: Block side (px) over which CPBD measures local contrast.
CPBD_BLOCK = 64
#: Fraction of Canny edge pixels above which a block counts as an edge block.
CPBD_EDGE_BLOCK_FRACTION = 0.002
#: Slope of the psychometric function P = 1 - exp(-|w / w_JNB|^beta).
CPBD_BETA = 3.6
#: Probability of blur detection at the just-noticeable blur.
CPBD_P_JNB = 0.63


def luma(image: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma float64 ``[H, W]`` in [0, 255] of an RGB ``[H, W, 3]`` or grey image."""
    x = np.asarray(image, np.float64)
    if x.ndim == 2:
        return x
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def _canny_edges(gray: np.ndarray) -> np.ndarray:
    """Canny edges with automatic thresholds, as MATLAB's ``edge(I, 'canny')`` picks them.

    The gradient magnitude (after a sigma sqrt(2) Gaussian) is binned into 64
    steps of its maximum; the high threshold is the upper edge of the bin
    where 70 % of the pixels are reached, the low threshold 0.4 of it.
    """
    import cv2

    smooth = cv2.GaussianBlur(gray, (0, 0), math.sqrt(2.0))
    u8 = np.clip(np.rint(smooth), 0, 255).astype(np.uint8)
    gx = cv2.Sobel(u8, cv2.CV_64F, 1, 0, ksize=3)
    gy = cv2.Sobel(u8, cv2.CV_64F, 0, 1, ksize=3)
    magnitude = np.hypot(gx, gy)
    peak = float(magnitude.max())
    if peak <= 0:
        return np.zeros(gray.shape, bool)
    counts, _ = np.histogram(magnitude / peak, bins=64, range=(0.0, 1.0))
    step = int(np.searchsorted(np.cumsum(counts), 0.7 * magnitude.size, side="right")) + 1
    high = min(step, 64) / 64.0 * peak
    return cv2.Canny(u8, 0.4 * high, high, L2gradient=True) > 0


def _vertical_edges(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thinned Sobel vertical edges and the sign of the horizontal gradient.

    An edge pixel has squared horizontal Sobel response above 4x its image
    mean, is a horizontal local maximum of that response, and its gradient
    is within 22.5 degrees of horizontal (so the width is measured across it).
    """
    import cv2

    gx = cv2.Sobel(gray, cv2.CV_64F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(gray, cv2.CV_64F, 0, 1, ksize=3) / 8.0
    b = gx * gx
    cutoff = 4.0 * b.mean()
    left = np.pad(b, ((0, 0), (1, 0)), mode="edge")[:, :-1]
    right = np.pad(b, ((0, 0), (0, 1)), mode="edge")[:, 1:]
    across = np.abs(gy) <= math.tan(math.radians(22.5)) * np.abs(gx)
    edges = (b > cutoff) & (b >= left) & (b > right) & across
    return edges, np.sign(gx)


def _run_lengths(steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For boolean ``steps [H, W-1]`` (step x -> x+1), the run of True steps starting at and ending at each pixel.

    Returns ``forward [H, W]`` (consecutive True steps from x to the right)
    and ``backward [H, W]`` (consecutive True steps arriving at x from the left).
    """
    h, w1 = steps.shape
    forward = np.zeros((h, w1 + 1), np.int32)
    backward = np.zeros((h, w1 + 1), np.int32)
    for x in range(w1 - 1, -1, -1):
        forward[:, x] = np.where(steps[:, x], forward[:, x + 1] + 1, 0)
    for x in range(1, w1 + 1):
        backward[:, x] = np.where(steps[:, x - 1], backward[:, x - 1] + 1, 0)
    return forward, backward


def edge_widths(gray: np.ndarray) -> np.ndarray:
    """Marziliano edge widths (px) at vertical edge pixels, 0 elsewhere; float64 ``[H, W]``.

    For a rising edge the width is the distance between the local minimum to
    its left and the local maximum to its right along the row (strictly
    monotone runs); falling edges mirror this.
    """
    edges, sign = _vertical_edges(gray)
    d = np.diff(gray, axis=1)
    up_fwd, up_bwd = _run_lengths(d > 0)
    down_fwd, down_bwd = _run_lengths(d < 0)
    rising = up_fwd + up_bwd
    falling = down_fwd + down_bwd
    widths = np.where(sign > 0, rising, np.where(sign < 0, falling, 0)).astype(np.float64)
    return np.where(edges, widths, 0.0)


def cpbd(image: np.ndarray) -> float:
    """Cumulative probability of blur detection in [0, 1] (higher = sharper).

    Narvekar & Karam 2011: the image (luma) is cut into 64 px blocks; blocks
    with more than 0.2 % Canny edge pixels are edge blocks; each vertical
    edge pixel of an edge block gets its Marziliano width ``w`` and the
    block's just-noticeable width ``w_JNB`` (5 px when the block's contrast
    max - min <= 50 grey levels, else 3 px); its blur detection probability
    is ``1 - exp(-(w / w_JNB)^3.6)``. CPBD is the fraction of those edge
    pixels whose probability, rounded to whole percent, is at most
    P_JNB = 63 % (so an edge exactly at its JNB width counts as sharp). Images smaller than a
    block are one block; partial border blocks are ignored. Returns 0 when
    there are no edges.
    """
    gray = luma(image)
    canny = _canny_edges(gray)
    widths = edge_widths(gray)
    h, w = gray.shape
    bh, bw = min(CPBD_BLOCK, h), min(CPBD_BLOCK, w)
    probs = []
    for y in range(0, h - bh + 1, bh):
        for x in range(0, w - bw + 1, bw):
            block = (slice(y, y + bh), slice(x, x + bw))
            if canny[block].mean() <= CPBD_EDGE_BLOCK_FRACTION:
                continue
            bw_ = widths[block]
            bw_ = bw_[bw_ > 0]
            if bw_.size == 0:
                continue
            contrast = gray[block].max() - gray[block].min()
            jnb = 5.0 if contrast <= 50 else 3.0
            probs.append(1.0 - np.exp(-((bw_ / jnb) ** CPBD_BETA)))
    if not probs:
        return 0.0
    p = np.concatenate(probs)
    return float(np.mean(np.rint(p * 100) <= round(CPBD_P_JNB * 100)))


# --- LSE (SyncNet) --------------------------------------------------------

#: SyncNet's audio rate, MFCC hop (10 ms) and MFCC steps per 25 fps video frame.
SYNCNET_SAMPLE_RATE = 16000
SYNCNET_FPS = 25.0
SYNCNET_MFCC_PER_FRAME = 4
#: Frames per SyncNet window (video) and MFCC steps per window (audio).
SYNCNET_WINDOW = 5
SYNCNET_MFCC_WINDOW = 20


def _mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def syncnet_mfcc(samples: np.ndarray, sample_rate: int = SYNCNET_SAMPLE_RATE) -> np.ndarray:
    """The 13 MFCCs SyncNet was trained on, float32 ``[13, T]`` at 100 Hz.

    ``samples``: mono float in [-1, 1] at 16 kHz (scaled to the int16 range
    internally, as SyncNet read 16-bit WAV). 25 ms frames every 10 ms,
    pre-emphasis 0.97, 512-point power spectrum, 26 mel filters up to
    Nyquist, log, orthonormal DCT-II, cepstral lifter 22, and c0 replaced by
    the log frame energy.
    """
    from scipy.fft import dct

    x = np.asarray(samples, np.float64) * 32768.0
    x = np.append(x[0], x[1:] - 0.97 * x[:-1]) if x.size else x
    frame_len = int(round(0.025 * sample_rate))
    step = int(round(0.010 * sample_rate))
    n_frames = 1 if x.size <= frame_len else 1 + int(math.ceil((x.size - frame_len) / step))
    padded = np.zeros((n_frames - 1) * step + frame_len)
    padded[: x.size] = x
    idx = np.arange(frame_len)[None, :] + step * np.arange(n_frames)[:, None]
    nfft = 512
    power = np.abs(np.fft.rfft(padded[idx], nfft)) ** 2 / nfft  # [T, 257]
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, np.finfo(float).eps, energy)
    n_filters = 26
    mel_points = np.linspace(_mel(np.array(0.0)), _mel(np.array(sample_rate / 2.0)), n_filters + 2)
    bins = np.floor((nfft + 1) * _hz(mel_points) / sample_rate).astype(int)
    bank = np.zeros((n_filters, nfft // 2 + 1))
    for j in range(n_filters):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        bank[j, lo:mid] = (np.arange(lo, mid) - lo) / max(mid - lo, 1)
        bank[j, mid:hi] = (hi - np.arange(mid, hi)) / max(hi - mid, 1)
    feat = power @ bank.T
    feat = np.where(feat == 0, np.finfo(float).eps, feat)
    cep = dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :13]
    lifter = 1.0 + 11.0 * np.sin(np.pi * np.arange(13) / 22.0)
    cep = cep * lifter
    cep[:, 0] = np.log(energy)
    return cep.T.astype(np.float32)


def syncnet_audio_windows(mfcc: np.ndarray, n_windows: int) -> np.ndarray:
    """MFCC windows for video windows 0..n-1: float32 ``[n, 1, 13, 20]`` (window i starts at step 4 i)."""
    out = np.stack([mfcc[:, 4 * i : 4 * i + SYNCNET_MFCC_WINDOW] for i in range(n_windows)])
    return out[:, None].astype(np.float32)


def syncnet_window_count(n_frames: int, n_samples: int, sample_rate: int = SYNCNET_SAMPLE_RATE) -> int:
    """Number of 5-frame windows the Wav2Lip/SyncNet protocol scores (min of video and audio length, minus 5)."""
    audio_frames = int(n_samples * SYNCNET_FPS // sample_rate)
    return max(min(n_frames, audio_frames) - SYNCNET_WINDOW, 0)


def sync_distance_confidence(video: np.ndarray, audio: np.ndarray, vshift: int = 15) -> tuple[int, float, float]:
    """AV offset (frames), LSE-D and LSE-C from SyncNet embeddings ``[N, D]`` of both streams.

    For each offset in [-vshift, vshift] the distance between each video
    embedding and the audio embedding shifted by that offset (zero padded)
    is averaged over windows; LSE-D is the minimum of these means and LSE-C
    the median minus the minimum.
    """
    v = np.asarray(video, np.float64)
    a = np.asarray(audio, np.float64)
    if v.shape != a.shape or v.ndim != 2 or v.shape[0] == 0:
        raise ValueError(f"sync scores need two equal [N, D] embedding arrays, got {v.shape} and {a.shape}")
    n = v.shape[0]
    window = 2 * vshift + 1
    padded = np.pad(a, ((vshift, vshift), (0, 0)))
    dists = np.empty((n, window))
    for k in range(window):
        dists[:, k] = np.linalg.norm(v - padded[k : k + n] + 1e-6, axis=1)
    mean = dists.mean(axis=0)
    best = int(np.argmin(mean))
    return vshift - best, float(mean[best]), float(np.median(mean) - mean[best])


def _same_shape(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    return a, b


def syncnet_crop(image: np.ndarray, box: np.ndarray, crop_scale: float = 0.4, size: int = 224) -> np.ndarray:
    """The SyncNet evaluation face crop: uint8 ``[size, size, 3]`` (same channel order as ``image``).

    ``box`` (x0, y0, x1, y1) px; with ``b`` = half the box's longer side and
    ``(cx, cy)`` its centre, the crop spans ``cx +- b (1 + crop_scale)``
    horizontally and ``cy - b`` to ``cy + b (1 + 2 crop_scale)`` vertically
    (the mouth sits in its lower half); outside the frame is grey 110.
    """
    import cv2

    x0, y0, x1, y1 = (float(v) for v in box)
    b = max(x1 - x0, y1 - y0) / 2.0
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    side = 2.0 * b * (1.0 + crop_scale)
    s = size / side
    left, top = cx - b * (1.0 + crop_scale), cy - b
    matrix = np.array([[s, 0.0, 0.5 * s - 0.5 - s * left], [0.0, s, 0.5 * s - 0.5 - s * top]])
    return cv2.warpAffine(np.ascontiguousarray(image), matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(110, 110, 110))
