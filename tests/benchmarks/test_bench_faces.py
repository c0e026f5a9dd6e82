"""Speed of face detection and of pass 1 (analyse_video) on 360x288 GRID frames (CC BY 4.0).

Run with ``pytest tests/benchmarks/test_bench_faces.py --benchmark-enable``;
``extra_info['fps']`` holds frames per second of the mean round.
"""

from __future__ import annotations

import numpy as np
import pytest

from latentdub.toolkit.core.presets import TrackConfig
from latentdub.toolkit.faces.track import analyse_video
from latentdub.toolkit.media.video import read_frames


@pytest.fixture(scope="module")
def frames(grid_clips):
    """All 75 decoded frames of GRID clip bbaf2n."""
    return list(read_frames(grid_clips[0]))


def _detector(name: str):
    if name == "mtcnn":
        from latentdub.plugins.mtcnn_detector import MtcnnConfig, MtcnnDetector

        return MtcnnDetector(MtcnnConfig(), "cpu")
    from latentdub.plugins.dlib_detector import DlibConfig, DlibDetector

    return DlibDetector(DlibConfig())


def _fps(benchmark, n: int) -> None:
    if benchmark.stats is not None:
        benchmark.extra_info["fps"] = round(n / benchmark.stats.stats.mean, 1)


@pytest.mark.benchmark(group="face-detection")
@pytest.mark.parametrize("name", ["mtcnn", "dlib"])
def test_bench_detect(benchmark, frames, name):
    detector = _detector(name)
    images = [f.image for f in frames[:10]]
    found = benchmark.pedantic(lambda: [detector.detect(im) for im in images], rounds=3, warmup_rounds=1)
    _fps(benchmark, len(images))
    assert all(len(faces) == 1 for faces in found)


@pytest.mark.benchmark(group="face-detection")
def test_bench_dlib_landmarks_in_box(benchmark, frames):
    detector = _detector("dlib")
    box = detector.detect(frames[0].image)[0].box
    images = [f.image for f in frames[:10]]
    faces = benchmark.pedantic(lambda: [detector.landmarks_in_box(im, box) for im in images], rounds=3, warmup_rounds=1)
    _fps(benchmark, len(images))
    assert all(f.landmarks68.shape == (68, 2) for f in faces)


@pytest.mark.benchmark(group="analyse-video")
@pytest.mark.parametrize("name,every", [("dlib", 1), ("dlib", 5), ("mtcnn", 5)])
def test_bench_analyse_video(benchmark, frames, name, every):
    detector = _detector(name)
    config = TrackConfig(detect_every=every)
    track = benchmark.pedantic(lambda: analyse_video(frames, detector, config), rounds=2, warmup_rounds=0)
    _fps(benchmark, len(frames))
    assert track.n_with_face == len(frames) and np.isfinite(track.matrices).all()
