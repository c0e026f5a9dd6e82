"""Speed of the warp renderer and the compositors: 256 px crops of 360x288 GRID frames (dlib landmarks).

Run with ``pytest tests/benchmarks/test_bench_compositing.py --benchmark-enable``.
"""

from __future__ import annotations

import numpy as np
import pytest

from latentdub.toolkit.core.types import Motion
from tests.test_compositor import DlibLandmarks, align, build, crop_of, read_frames


@pytest.fixture(scope="module")
def face(grid_clips):
    """Frame 5 of GRID clip sbwe5n (mouth closed), its landmarks, alignment and 256 px crop."""
    clip = next(p for p in grid_clips if p.stem == "sbwe5n")
    frame = read_frames(clip, [5])[5]
    lm = DlibLandmarks()(frame)
    assert lm is not None
    alignment = align(lm, 256)
    return {"frame": frame, "landmarks": lm, "alignment": alignment, "crop": crop_of(frame, alignment), "crop_lm": alignment.apply(lm)}


@pytest.mark.benchmark(group="compositing")
@pytest.mark.parametrize("points", [68, 5])
def test_bench_warp_render(benchmark, face, points):
    from latentdub.plugins.warp_renderer import WarpRenderer

    lm = face["crop_lm"] if points == 68 else np.stack([face["crop_lm"][36:42].mean(0), face["crop_lm"][42:48].mean(0), *face["crop_lm"][[30, 48, 54]]])
    renderer = WarpRenderer()
    motion = Motion("mouth", np.array([[0.3, 0.1, 0.2]], np.float32), 25.0)
    out = benchmark(renderer.render, face["crop"][None], lm[None], motion, np.array([0]))
    assert out.shape == (1, 256, 256, 3)


@pytest.mark.benchmark(group="compositing")
@pytest.mark.parametrize(
    "name,settings",
    [("soft", {"color_match": "none"}), ("soft", {"color_match": "mean_std"}), ("soft", {"color_match": "lab"}), ("poisson", {"color_match": "none"})],
    ids=["soft-none", "soft-mean_std", "soft-lab", "poisson"],
)
def test_bench_composite(benchmark, face, name, settings):
    compositor = build(name, **settings)
    rendered = 255 - face["crop"]
    out = benchmark(compositor.composite, face["frame"], rendered, face["alignment"], face["landmarks"])
    assert out.shape == face["frame"].shape and not np.array_equal(out, face["frame"])
