"""MFCC windows per video frame (ATVGnet layout) on real speech and controlled tones."""

from __future__ import annotations

import numpy as np
import pytest

from latentdub.plugins.mfcc import MfccConfig, MfccFeatures
from latentdub.toolkit.core.config import parse_config
from latentdub.toolkit.core.errors import BadInputError
from latentdub.toolkit.core.plugins import get_component
from latentdub.toolkit.core.types import Audio
from latentdub.toolkit.media.audio import load_audio

SR = 16000


@pytest.fixture(scope="module")
def grid_audio(grid_clips) -> Audio:
    return load_audio(grid_clips[0])


def _noise_with_burst(burst_at: float | None, seconds: float = 3.0) -> Audio:
    x = 0.01 * np.random.default_rng(0).standard_normal(int(seconds * SR))
    if burst_at is not None:
        n = int(0.02 * SR)
        start = int(burst_at * SR) - n // 2  # 20 ms 1 kHz burst centred on burst_at
        x[start:start + n] += 0.5 * np.sin(2 * np.pi * 1000 * np.arange(n) / SR)
    return Audio(x.astype(np.float32), SR)


def test_registered_and_built_from_config():
    comp = get_component("audio_features", "mfcc")
    cfg = parse_config(comp.config, {"window": 20, "normalise": False}, "audio_features")
    feats = comp.factory(cfg, None)
    assert feats.sample_rate == SR
    assert feats.compute(_noise_with_burst(None, 1.0), 25.0, 25).shape == (25, 20, 12)


@pytest.mark.parametrize("fps, n_frames", [(25.0, 75), (30.0, 89), (29.97, 89), (60.0, 179)])
def test_one_window_per_video_frame(grid_audio, fps, n_frames):
    out = MfccFeatures().compute(grid_audio, fps, n_frames)
    assert out.shape == (n_frames, 28, 12) and out.dtype == np.float32
    assert np.isfinite(out).all()


def test_frames_past_the_audio_are_silence(grid_audio):
    out = MfccFeatures().compute(grid_audio, 25.0, 100)  # 4 s of video for 2.98 s of speech
    assert out.shape == (100, 28, 12)
    assert np.allclose(out[-1], out[-1, :1])  # constant rows: silence


@pytest.mark.parametrize("fps", [25.0, 30.0])
def test_tone_burst_at_one_second_lands_in_the_window_centre(fps):
    feats = MfccFeatures(MfccConfig(normalise=False))
    n = int(3 * fps)
    base = feats.compute(_noise_with_burst(None), fps, n)
    burst = feats.compute(_noise_with_burst(1.0), fps, n)
    change = np.abs(burst - base).sum(axis=2)  # [frames, window]
    frame = int(fps)  # frame at exactly 1.0 s
    assert abs(int(np.argmax(change[frame])) - 14) <= 1  # centre row of the 28-hop window
    touched = np.flatnonzero(change.max(axis=1) > 0.1 * change.max())
    times = touched / fps
    assert times.min() >= 1.0 - 0.16 and times.max() <= 1.0 + 0.16  # window spans +-0.14 s
    assert frame in touched and change[int(0.5 * fps)].max() == 0.0


def test_same_time_gives_same_window_at_any_fps(grid_audio):
    feats = MfccFeatures()
    at25 = feats.compute(grid_audio, 25.0, 75)
    at50 = feats.compute(grid_audio, 50.0, 150)
    assert np.allclose(at25[10], at50[20]) and np.allclose(at25[40], at50[80])


def test_per_utterance_normalisation(grid_audio):
    raw = MfccFeatures(MfccConfig(normalise=False)).compute(grid_audio, 25.0, 75)
    norm = MfccFeatures().compute(grid_audio, 25.0, 75)
    centre = norm[:, 14]  # one row per frame covers the utterance
    assert np.abs(centre.mean(0)).max() < 0.3 and np.all(np.abs(centre.std(0) - 1) < 0.35)
    assert np.abs(raw[:, 14].mean(0)).max() > 1.0
    speech, silence = norm[37, 14], norm[3, 14]  # GRID: silence before 0.5 s, speech at 1.5 s
    assert np.abs(speech - silence).max() > 1.0


def test_bad_settings():
    with pytest.raises(BadInputError, match="hop_ms"):
        MfccFeatures(MfccConfig(hop_ms=10.03))
    with pytest.raises(BadInputError, match="n_mfcc"):
        MfccFeatures(MfccConfig(n_mfcc=40, n_mels=40))
    with pytest.raises(BadInputError, match="fps"):
        MfccFeatures().compute(_noise_with_burst(None, 1.0), 0.0, 10)
