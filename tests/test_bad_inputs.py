"""Bad inputs: one-line errors, documented exit codes or fallbacks, and no partial output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from latentdub.cli import cli
from latentdub.toolkit.media.video import probe_video

from . import media

pytestmark = pytest.mark.slow


def dub(video, audio, out: Path, *extra):
    result = CliRunner().invoke(cli, ["dub", str(video), str(audio), "-o", str(out), "--preset", "preview", "--quiet", *extra])
    return result


def assert_clean_failure(result, out: Path, code: int, words: str):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert words in lines[0]
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if ".part" in p.name]
    assert not leftovers


def test_corrupt_video(grid_clips, tmp_path):
    bad = media.garbage(tmp_path / "broken.mp4")
    out = tmp_path / "o.mp4"
    assert_clean_failure(dub(bad, grid_clips[1], out), out, 2, "broken.mp4")


def test_audio_given_as_video(grid_clips, tmp_path):
    wav = media.audio_only(grid_clips[1], tmp_path / "speech.wav")
    out = tmp_path / "o.mp4"
    assert_clean_failure(dub(wav, grid_clips[1], out), out, 2, "no video stream")


def test_video_without_audio_as_audio(grid_clips, tmp_path):
    silent = media.without_audio(grid_clips[1], tmp_path / "silent.mp4")
    out = tmp_path / "o.mp4"
    assert_clean_failure(dub(grid_clips[0], silent, out), out, 2, "silent.mp4")


def test_video_without_audio_as_footage_is_fine(grid_clips, tmp_path):
    silent = media.without_audio(grid_clips[0], tmp_path / "silent.mp4")
    out = tmp_path / "o.mp4"
    result = dub(silent, grid_clips[1], out)
    assert result.exit_code == 0, result.output
    assert probe_video(out).has_audio


def test_empty_audio(grid_clips, tmp_path):
    empty = media.empty_wav(tmp_path / "empty.wav")
    out = tmp_path / "o.mp4"
    assert_clean_failure(dub(grid_clips[0], empty, out), out, 2, "empty.wav")


def test_clip_without_a_face(grid_clips, tmp_path):
    clip = media.faceless(tmp_path / "noface.mp4")
    out = tmp_path / "o.mp4"
    assert_clean_failure(dub(clip, grid_clips[1], out), out, 4, "no face")


def test_two_faces_dubs_the_largest(grid_clips, tmp_path):
    clip = media.two_faces(grid_clips[0], grid_clips[2], tmp_path / "two.mp4")
    out = tmp_path / "o.mp4"
    result = CliRunner().invoke(cli, ["dub", str(clip), str(grid_clips[1]), "-o", str(out), "--preset", "preview"])
    assert result.exit_code == 0, result.output
    assert "faces per frame; dubbing the largest one" in result.output
    assert probe_video(out).width == probe_video(clip).width


def test_variable_frame_rate_clip(grid_clips, tmp_path):
    """VFR footage is dubbed at a constant rate, and the summary says so (source average, output rate, frames repeated)."""
    from latentdub.toolkit.dubbing.pipeline import dub as dub_api

    clip = media.variable_frame_rate(grid_clips[0], tmp_path / "vfr.mkv")
    out = tmp_path / "o.mp4"
    summary = dub_api(clip, grid_clips[1], out, preset="preview", overrides=["output.fps=25"], log=lambda m: None)
    info = probe_video(out)
    assert info.fps == 25
    assert info.duration == pytest.approx(probe_video(clip).duration, abs=0.15)
    assert ("note: vfr.mkv: variable frame rate (75 frames, average 19.681 fps, gaps 40-80 ms) converted to constant 25 fps: "
            f"{summary.frames - 75} frames repeated") in summary.lines()


@pytest.mark.parametrize("target", ["missing-folder/o.mp4", "afile/o.mp4", "o.txt", "."])
def test_unwritable_output(grid_clips, tmp_path, target):
    (tmp_path / "afile").write_text("not a folder")
    out = tmp_path / target
    result = dub(grid_clips[0], grid_clips[1], out)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1


def test_missing_input_file(grid_clips, tmp_path):
    out = tmp_path / "o.mp4"
    assert_clean_failure(dub(tmp_path / "nope.mp4", grid_clips[1], out), out, 2, "nope.mp4: file not found")


def test_frames_without_a_face_pass_through_untouched(grid_clips, tmp_path):
    """A clip whose second half shows no face: those frames come out as they went in, and are counted."""
    from latentdub.toolkit.dubbing.pipeline import dub
    from latentdub.toolkit.media.video import read_frames

    noface = media.faceless(tmp_path / "noface.mp4", seconds=1.0)
    clip = tmp_path / "half.mp4"
    media.ffmpeg("-i", str(grid_clips[0]), "-i", str(noface), "-filter_complex",
                 "[1:v]scale=360:288,setsar=1[b];[0:v]setsar=1[a];[a][0:a][b][1:a]concat=n=2:v=1:a=1[v][au]",
                 "-map", "[v]", "-map", "[au]", "-c:v", "libx264", "-crf", "0", "-preset", "ultrafast", "-c:a", "aac", str(clip))
    out = tmp_path / "o.mp4"
    summary = dub(clip, grid_clips[1], out, preset="preview", overrides=["output.crf=0"], log=lambda m: None)
    assert summary.frames_passed_through >= 20 and summary.frames_with_face >= 70
    source = [f.image.astype(int) for f in read_frames(clip)]
    dubbed = [f.image.astype(int) for f in read_frames(out)]
    tail_diff = max(np.abs(s - d).max() for s, d in zip(source[-20:], dubbed[-20:]))
    assert tail_diff <= 3  # only lossless-encode rounding of yuv420p


def test_odd_frame_size(grid_clips, tmp_path):
    clip = tmp_path / "odd.mkv"
    media.ffmpeg("-i", str(grid_clips[0]), "-vf", "format=rgb24,crop=359:287:0:0", "-c:v", "ffv1", "-pix_fmt", "bgr0", "-c:a", "copy", str(clip))
    assert (probe_video(clip).width, probe_video(clip).height) == (359, 287)
    out = tmp_path / "o.mp4"
    result = dub(clip, grid_clips[1], out)
    assert result.exit_code == 0, result.output
    info = probe_video(out)
    assert (info.width, info.height) == (360, 288)  # padded by one pixel for yuv420p


def test_rotated_clip_is_decoded_upright(grid_clips, tmp_path):
    """Frames stored sideways with display-rotation metadata are dubbed upright."""
    sideways = tmp_path / "sideways.mp4"
    media.ffmpeg("-i", str(grid_clips[0]), "-vf", "transpose=clock", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(sideways))
    clip = tmp_path / "rotated.mp4"
    media.ffmpeg("-display_rotation", "90", "-i", str(sideways), "-c", "copy", str(clip))  # metadata only
    info = probe_video(clip)
    assert info.rotation in (90, 270) and (info.width, info.height) == (360, 288)
    out = tmp_path / "o.mp4"
    result = dub(clip, grid_clips[1], out)
    assert result.exit_code == 0, result.output
    assert (probe_video(out).width, probe_video(out).height) == (360, 288)
