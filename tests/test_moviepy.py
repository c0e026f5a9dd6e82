"""The moviepy effect dubs part of an edit of real GRID clips (CC BY 4.0, Cooke et al. 2006)."""

from __future__ import annotations

import numpy as np
import pytest

moviepy = pytest.importorskip("moviepy")
from moviepy import AudioFileClip, ColorClip, CompositeVideoClip, VideoFileClip, concatenate_videoclips  # noqa: E402

from latentdub.moviepy import DubbedClip, LipSync  # noqa: E402
from latentdub.toolkit.core.errors import BadInputError  # noqa: E402
from latentdub.toolkit.dubbing.review import review_paths  # noqa: E402
from latentdub.toolkit.media.video import probe_video  # noqa: E402

pytestmark = pytest.mark.slow
START, END = 2.0, 4.0  # the dubbed part spans the cut between the two takes (at 2.98 s)


def envelope(samples: np.ndarray, rate: int) -> np.ndarray:
    """RMS per 10 ms of mono or stereo samples."""
    x = samples.mean(axis=1) if samples.ndim == 2 else samples
    hop = rate // 100
    n = len(x) // hop
    return np.sqrt((x[: n * hop].reshape(n, hop) ** 2).mean(axis=1))


@pytest.fixture(scope="module")
def edit(grid_clips):
    """Two GRID takes cut together, a 2 s line of a third speaker as a moviepy AudioClip, and the edit with that part dubbed."""
    takes = [VideoFileClip(str(grid_clips[0])), VideoFileClip(str(grid_clips[1]))]
    edit = concatenate_videoclips(takes)
    line = AudioFileClip(str(grid_clips[3])).subclipped(0.4, 2.4)
    dubbed = edit.subclipped(START, END).with_effects([LipSync(line, preset="preview", log=lambda m: None)])
    final = concatenate_videoclips([edit.subclipped(0, START), dubbed, edit.subclipped(END)])
    yield edit, line, dubbed, final
    for clip in (*takes, line):
        clip.close()


def test_dubbing_a_subclip_of_a_concatenation(edit):
    original, line, dubbed, final = edit
    assert isinstance(dubbed, DubbedClip) and dubbed.fps == original.fps
    assert dubbed.duration == pytest.approx(END - START, abs=1e-9) and final.duration == pytest.approx(original.duration, abs=1e-9)
    assert dubbed.summary.frames == 50 and dubbed.summary.frames_with_face == 50  # both takes' faces were dubbed
    # frames outside the dubbed part are the edit's own frames, bit for bit
    for t in (0.0, 1.0, START - 0.04, END, 5.0, original.duration - 0.05):
        np.testing.assert_array_equal(final.get_frame(t), original.get_frame(t))
    # inside it the mouth moved; the rest of the picture stayed (up to H.264 rounding)
    changed = 0
    for t in np.arange(START + 0.1, END, 0.25):
        diff = np.abs(final.get_frame(t).astype(np.int16) - original.get_frame(t).astype(np.int16)).max(axis=2)
        assert np.mean(diff > 24) < 0.02  # under 2 % of the pixels change by more than yuv rounding
        changed += diff.max() > 40
    assert changed >= 4
    # the audio: the new line inside the dubbed part, the edit's own sound outside
    rate = final.audio.fps
    mixed, own, speech = final.audio.to_soundarray(), original.audio.to_soundarray(), line.to_soundarray()  # native rates
    a, b = int(START * rate), int(END * rate)
    np.testing.assert_array_equal(mixed[: a - 10], own[: a - 10])
    np.testing.assert_array_equal(mixed[b + 10 :], own[b + 10 : len(mixed)])
    inside, wanted = envelope(mixed[a:b], rate), envelope(speech, line.fps)
    n = min(len(inside), len(wanted))
    assert n >= 195 and np.corrcoef(inside[:n], wanted[:n])[0, 1] > 0.95


def test_composes_with_a_composite_clip(edit, tmp_path):
    original, _, dubbed, _ = edit
    inset = dubbed.resized(0.5).with_position(("right", "bottom"))
    composite = CompositeVideoClip([original.subclipped(START, END), inset])
    frame = composite.get_frame(1.0)
    h, w = inset.size[1], inset.size[0]
    np.testing.assert_array_equal(frame[-h:, -w:], inset.get_frame(1.0))
    out = tmp_path / "composite.mp4"
    composite.write_videofile(str(out), codec="libx264", audio_codec="aac", preset="ultrafast", logger=None)
    info = probe_video(out)
    assert info.has_audio and info.duration == pytest.approx(END - START, abs=0.1)


def test_speech_path_and_preset_options_are_honoured(grid_clips, tmp_path):
    take = VideoFileClip(str(grid_clips[2]))
    speech = grid_clips[4]
    out = tmp_path / "kept.mp4"
    effect = LipSync(speech, preset="preview", overrides=["timing.length_policy=trim", "output.review=true", "output.crf=28"],
                     output=out, log=lambda m: None)
    dubbed = take.subclipped(0.0, 2.5).with_effects([effect])
    line = probe_video(speech).duration
    assert line > 2.9 and dubbed.duration == pytest.approx(line, abs=0.041)  # trim: as long as the speech (the last frame held)
    page, assets = review_paths(out)
    assert out.is_file() and page.is_file() and (assets / "source.mp4").is_file()
    assert "crf: 28" in (tmp_path / "kept.latentdub.yaml").read_text()
    take.close()


def test_bad_inputs_name_the_fix(grid_clips, tmp_path):
    still = ColorClip((64, 64), color=(10, 20, 30), duration=1.0)  # no fps
    with pytest.raises(BadInputError, match="with_fps"):
        still.with_effects([LipSync(grid_clips[0])])
    take = VideoFileClip(str(grid_clips[0]))
    with pytest.raises(BadInputError, match="missing.wav: speech file not found"):
        take.with_effects([LipSync(tmp_path / "missing.wav", output=tmp_path / "o.mp4")])
    assert not list(tmp_path.iterdir())
    take.close()
