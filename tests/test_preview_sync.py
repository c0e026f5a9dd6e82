"""The offline preview backend moves the mouth with the new speech (issue 8's acceptance test).

For eight GRID speakers (GRID corpus, Cooke et al. 2006, CC BY 4.0), clip A is
dubbed with the speech of clip B. Mouth opening (inner-lip gap over
inter-ocular distance, dlib 68 points) is measured frame by frame on the
output, on B (ground truth for that speech) and on A (the do-nothing
baseline).
"""

from __future__ import annotations

import numpy as np
import pytest

from latentdub.toolkit.core.plugins import get_component
from latentdub.toolkit.core.presets import TrackConfig
from latentdub.toolkit.dubbing.pipeline import dub
from latentdub.toolkit.faces.masks import mouth_opening
from latentdub.toolkit.faces.track import analyse_video
from latentdub.toolkit.media.video import read_frames

pytestmark = pytest.mark.slow
MAX_LAG = 3


@pytest.fixture(scope="module")
def measure():
    """Per-frame mouth opening of a video, from dlib landmarks with light smoothing."""
    comp = get_component("detector", "dlib")
    detector = comp.factory(comp.config(), None)
    config = TrackConfig(detect_every=1, smoothing=1)

    def openings(path):
        track = analyse_video(read_frames(path), detector, config)
        return np.array([mouth_opening(lm) if not np.isnan(lm).any() else np.nan for lm in track.landmarks68])

    return openings


def pearson(a, b):
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    ok = ~(np.isnan(a) | np.isnan(b))
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def best_lag(out, truth):
    lags = range(-MAX_LAG, MAX_LAG + 1)
    scores = [pearson(out[max(lag, 0):], truth[max(-lag, 0):]) for lag in lags]
    return list(lags)[int(np.argmax(scores))]


@pytest.fixture(scope="module")
def results(grid_clips, shared_data, measure, tmp_path_factory):
    transcripts = dict(
        line.split("\t") for line in (shared_data / "grid" / "TRANSCRIPTS.tsv").read_text().splitlines() if not line.startswith("#")
    )
    folder = tmp_path_factory.mktemp("sync")
    truth = {clip: measure(clip) for clip in grid_clips}
    rows = []
    for i, clip_a in enumerate(grid_clips):
        clip_b = grid_clips[(i + 1) % len(grid_clips)]
        row = {"a": clip_a.stem, "b": clip_b.stem, "baseline": pearson(truth[clip_a], truth[clip_b])}
        for mode, extra in (("speech", []), ("transcript", [f"motion.transcript={transcripts[clip_b.name]}"])):
            out = folder / f"{clip_a.stem}-{clip_b.stem}-{mode}.mp4"
            dub(clip_a, clip_b, out, preset="preview", overrides=["timing.length_policy=trim", *extra], log=lambda m: None)
            opening = measure(out)
            row[mode] = pearson(opening, truth[clip_b])
            row[f"{mode}_lag"] = best_lag(opening, truth[clip_b])
        rows.append(row)
    print("\nA -> B            baseline  speech (lag)  transcript (lag)")
    for r in rows:
        print(f"{r['a']:>8} -> {r['b']:<8} {r['baseline']:+.2f}    {r['speech']:+.2f} ({r['speech_lag']:+d})    {r['transcript']:+.2f} ({r['transcript_lag']:+d})")
    return rows


def test_output_beats_the_do_nothing_baseline(results):
    baseline = np.mean([r["baseline"] for r in results])
    dubbed = np.mean([r["speech"] for r in results])
    assert dubbed > baseline + 0.25, (dubbed, baseline)
    assert dubbed > 0.35
    assert sum(r["speech"] > r["baseline"] for r in results) >= len(results) - 1


def test_output_is_in_sync(results):
    lags = [r["speech_lag"] for r in results]
    assert abs(np.median(lags)) <= 1, lags
    mean_r = {lag: np.mean([r["speech"] for r in results if r["speech_lag"] == lag]) for lag in set(lags)}
    assert max(mean_r, key=lambda lag: (sum(x == lag for x in lags), mean_r[lag])) in (-1, 0, 1)


def test_transcript_is_at_least_as_good(results):
    with_text = np.mean([r["transcript"] for r in results])
    without = np.mean([r["speech"] for r in results])
    assert with_text >= without - 0.02, (with_text, without)
    assert abs(np.median([r["transcript_lag"] for r in results])) <= 1
