"""Speed and memory of clipfit's per-clip fit at paper size (18 x 512 W+, layers 0-7) and of the pooled fit.

Run with ``python -m pytest tests/benchmarks/test_bench_clipfit.py --benchmark-enable``.
The memory check (the study keeps at most max_frames latents whatever the clip length) runs every time.
"""

from __future__ import annotations

import numpy as np
import pytest

from latentdub.toolkit.faces.masks import TEMPLATE_68
from latentdub.toolkit.learning.directions import PooledFit, fit_clip

LAYERS = 8 * 512


def clip(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Latents ``[n, 8 * 512]`` that follow a random mouth opening, and landmarks ``[n, 68, 2]``."""
    rng = np.random.default_rng(seed)
    opening = np.abs(np.sin(np.arange(n) / 3.0)) * 0.3
    lms = np.repeat(TEMPLATE_68[None] * 60 + 128, n, 0)
    lms[:, [65, 66, 67, 55, 56, 57, 58, 59], 1] += opening[:, None] * 60
    lms += rng.normal(0, 0.2, lms.shape)
    latents = opening[:, None] * rng.normal(size=LAYERS) + rng.normal(0, 0.05, (n, LAYERS))
    return latents.astype(np.float32), lms


def test_bench_per_clip_fit(benchmark):
    """One per-clip fit on 300 frames (16 PCA components, 15 penalties x 5 folds)."""
    latents, lms = clip(300)
    fit = benchmark(fit_clip, latents, lms, 16)
    assert fit.ridge.r2_mouth > 0.5


def test_bench_pooled_fit_per_clip(benchmark):
    """Adding one 300-frame clip to a pooled fit in W+ (per-fold sums)."""
    pooled = PooledFit()
    latents, lms = clip(300)
    benchmark(pooled.add, latents, lms)
    assert pooled.clips >= 1


@pytest.mark.parametrize("frames", [600, 6000])
def test_study_memory_is_bounded(frames):
    """The study keeps at most max_frames latents for any clip length."""
    from latentdub.plugins.clipfit import _EvenKeeper

    keeper = _EvenKeeper(300)
    row = np.zeros((18, 512), np.float32)
    for start in range(0, frames, 32):
        idx = np.arange(start, min(start + 32, frames))
        pick = keeper.wanted(idx)
        keeper.add(idx[pick], np.repeat(row[None], pick.sum(), 0), np.zeros((pick.sum(), 68, 2), np.float32))
    assert 150 <= len(keeper.rows) <= 300
