"""The explicit video/speech length policy."""

from __future__ import annotations

import numpy as np
import pytest

from latentdub.toolkit.core.errors import BadInputError
from latentdub.toolkit.dubbing.timing import frame_times, is_monotonic, n_frames_for, plan_timeline, segments, timeline_audio
from latentdub.toolkit.media.audio import load_audio

N, FPS = 75, 25.0  # a GRID clip: 3 s of video


@pytest.mark.parametrize(
    "policy, speech, frames",
    [
        ("trim", 2.0, 50), ("trim", 5.0, 125),
        ("loop", 2.0, 50), ("loop", 5.0, 125),
        ("pingpong", 2.0, 50), ("pingpong", 5.0, 125),
        ("hold", 2.0, 75), ("hold", 5.0, 125),
        ("pad", 2.0, 75), ("pad", 5.0, 75),
    ],
)
def test_output_length_per_policy(policy, speech, frames):
    tl = plan_timeline(N, FPS, speech, policy)
    assert tl.n_frames == frames and tl.source_index.dtype == np.int64
    assert tl.source_index.min() >= 0 and tl.source_index.max() <= N - 1
    assert tl.audio_duration == pytest.approx(frames / FPS)
    assert tl.pad_audio_seconds == pytest.approx(frames / FPS - speech)


def test_source_frames_per_policy():
    assert plan_timeline(N, FPS, 2.0, "trim").source_index.tolist() == list(range(50))
    trim_long = plan_timeline(N, FPS, 5.0, "trim").source_index
    assert trim_long[:75].tolist() == list(range(75)) and set(trim_long[75:].tolist()) == {74}
    loop = plan_timeline(N, FPS, 5.0, "loop").source_index
    assert loop[:75].tolist() == list(range(75)) and loop[75:].tolist() == list(range(50))
    hold = plan_timeline(N, FPS, 5.0, "hold").source_index
    assert hold[-1] == 74 and hold[:75].tolist() == list(range(75))
    assert plan_timeline(N, FPS, 5.0, "pad").source_index.tolist() == list(range(75))


def test_pingpong_reflects_without_repeating_ends():
    tl = plan_timeline(4, 1.0, 12.0, "pingpong")
    assert tl.source_index.tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1]
    assert plan_timeline(1, 25.0, 1.0, "pingpong").source_index.tolist() == [0] * 25


def test_frame_count_rounds_to_nearest_ties_up():
    assert n_frames_for(1.02, 25.0) == 26  # 25.5 frames
    assert n_frames_for(1.019, 25.0) == 25
    assert n_frames_for(0.0, 25.0) == 1
    assert plan_timeline(N, 30.0, 2.0, "trim").n_frames == 60
    assert plan_timeline(N, 29.97, 2.0, "trim").n_frames == 60


def test_audio_offset_moves_the_speech():
    later = plan_timeline(N, FPS, 2.0, "trim", audio_offset=0.5)
    assert later.n_frames == 63  # 2.5 s * 25 = 62.5 -> 63
    earlier = plan_timeline(N, FPS, 2.0, "trim", audio_offset=-0.5)
    assert earlier.n_frames == 38  # 1.5 s * 25 = 37.5 -> 38
    assert earlier.audio_offset == -0.5


def test_monotonic_reading():
    assert is_monotonic(plan_timeline(N, FPS, 5.0, "trim"))
    assert is_monotonic(plan_timeline(N, FPS, 5.0, "hold"))
    assert is_monotonic(plan_timeline(N, FPS, 2.0, "pad"))
    assert is_monotonic(plan_timeline(N, FPS, 2.0, "loop"))  # no wrap needed
    loop = plan_timeline(N, FPS, 7.0, "loop")
    assert not is_monotonic(loop) and segments(loop) == [(0, 75), (75, 150), (150, 175)]
    assert not is_monotonic(plan_timeline(N, FPS, 5.0, "pingpong"))


def test_frame_times_convention():
    assert frame_times(3, 25.0).tolist() == [0.0, 0.04, 0.08]
    assert plan_timeline(N, FPS, 2.0, "trim").frame_times()[-1] == pytest.approx(49 / 25)


def test_timeline_audio_matches_output_length(grid_clips):
    speech = load_audio(grid_clips[0])
    for policy in ("trim", "pad", "hold", "loop"):
        tl = plan_timeline(60, FPS, speech.duration, policy, audio_offset=0.2)
        track = timeline_audio(speech, tl)
        assert len(track.samples) == round(tl.n_frames / FPS * 16000)
        assert not track.samples[:3200].any()  # 0.2 s of leading silence
        assert np.array_equal(track.samples[3200:3300], speech.samples[:100])


def test_bad_arguments():
    with pytest.raises(BadInputError, match="length_policy"):
        plan_timeline(N, FPS, 2.0, "stretch")
    with pytest.raises(BadInputError, match="no frames"):
        plan_timeline(0, FPS, 2.0, "pad")
    with pytest.raises(BadInputError, match="frame rate"):
        plan_timeline(N, 0.0, 2.0, "pad")


def test_a_ping_pong_timeline_serves_every_source_frame_as_decoded(grid_clips, tmp_path):
    """Frames stepped back to come from the source's frame file, pixel for pixel the decoder's, in any order."""
    from latentdub.toolkit.dubbing.pipeline import FrameSource
    from latentdub.toolkit.media.video import probe_video, read_frames

    clip = grid_clips[0]
    info = probe_video(clip)
    decoded = [f.image for f in read_frames(clip, info=info)]
    order = plan_timeline(len(decoded), info.fps, 3 * len(decoded) / info.fps, "pingpong").source_index
    assert (np.diff(order) < 0).any()  # it does step back
    source = FrameSource(clip, info, random_access=True, workdir=tmp_path)
    try:
        for index in order:
            frame = source.get(int(index))
            assert frame.index == index and np.array_equal(frame.image, decoded[index])
    finally:
        source.close()
