"""Speed of audio decoding, MFCC windows and the viseme mouth model on a 3 s GRID clip.

Run with ``pytest tests/benchmarks/test_bench_audio.py --benchmark-enable``.
"""

from __future__ import annotations

import pytest

from latentdub.plugins.mfcc import MfccFeatures
from latentdub.plugins.viseme_motion import VisemeConfig, VisemeMotion
from latentdub.toolkit.media.audio import load_audio

SWWP2S = "id2_vcd_swwp2s.mpg"


@pytest.fixture(scope="module")
def clip(shared_data):
    return shared_data / "grid" / SWWP2S


@pytest.fixture(scope="module")
def speech(clip):
    return load_audio(clip)


def test_bench_load_audio(benchmark, clip):
    audio = benchmark(load_audio, clip)
    assert audio.duration > 2.9


def test_bench_mfcc(benchmark, speech):
    feats = MfccFeatures()
    out = benchmark(feats.compute, speech, 25.0, 75)
    assert out.shape == (75, 28, 12)


@pytest.mark.parametrize("method", ["align", "recognize", "energy"])
def test_bench_visemes(benchmark, speech, method):
    model = VisemeMotion(VisemeConfig(method=method, transcript="set white with p two soon" if method == "align" else None))
    model.predict(speech, 25.0, 75)  # load the pocketsphinx models outside the timing
    motion = benchmark(model.predict, speech, 25.0, 75)
    assert motion.codes.shape == (75, 3) and motion.extra["method"] == method
