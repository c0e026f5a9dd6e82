"""End-to-end dubbing on real GRID clips through the real detector and ffmpeg."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from latentdub.cli import cli
from latentdub.toolkit.media.audio import load_audio
from latentdub.toolkit.media.video import probe_video, read_frames

from . import media

pytestmark = pytest.mark.slow


def dub_cli(*args):
    return CliRunner().invoke(cli, ["dub", *map(str, args), "--quiet"])


@pytest.fixture(scope="module")
def pair(grid_clips):
    """Clip A (footage) and clip B (speech) from two different GRID speakers."""
    return grid_clips[0], grid_clips[3]


@pytest.mark.parametrize("policy", ["trim", "pad"])
def test_tiny_dub_end_to_end(pair, tmp_path, policy):
    video, speech = pair
    out = tmp_path / f"dub-{policy}.mp4"
    result = dub_cli(video, speech, "-o", out, "--preset", "tiny", "--set", f"timing.length_policy={policy}")
    assert result.exit_code == 0, result.output
    info, src = probe_video(out), probe_video(video)
    assert info.has_audio and info.fps == pytest.approx(src.fps)
    speech_seconds = load_audio(speech).duration
    expected = speech_seconds if policy == "trim" else src.duration
    assert info.duration == pytest.approx(expected, abs=0.1)
    frames = sum(1 for _ in read_frames(out))
    assert abs(frames - round(expected * src.fps)) <= 1
    # the resolved preset is written beside the output and reproduces the run's settings
    saved = yaml.safe_load((tmp_path / f"dub-{policy}.latentdub.yaml").read_text())
    assert saved["timing"]["length_policy"] == policy and saved["renderer"]["plugin"] == "neural"


def test_tiny_dub_changes_only_the_face(pair, tmp_path):
    video, speech = pair
    out = tmp_path / "dub.mp4"
    assert dub_cli(video, speech, "-o", out, "--preset", "tiny", "--set", "output.crf=0").exit_code == 0
    original = next(read_frames(video)).image.astype(np.int16)
    dubbed = next(read_frames(out)).image.astype(np.int16)
    diff = np.abs(original - dubbed).max(axis=2)
    changed = diff > 12  # beyond yuv420p rounding
    assert changed.any(), "nothing was composited"
    ys, xs = np.nonzero(changed)
    h, w = diff.shape
    # all substantial changes sit inside the face region, not at the frame borders
    assert xs.min() > w * 0.15 and xs.max() < w * 0.85 and ys.min() > h * 0.15


@pytest.mark.parametrize("policy, factor", [("loop", 2.0), ("pingpong", 2.0), ("hold", 2.0)])
def test_length_policies_follow_long_speech(pair, tmp_path, policy, factor):
    video, speech = pair
    long_speech = media.looped(speech, tmp_path / "long.mp4", 2)
    out = tmp_path / "out.mp4"
    result = dub_cli(video, long_speech, "-o", out, "--preset", "preview", "--set", f"timing.length_policy={policy}")
    assert result.exit_code == 0, result.output
    assert probe_video(out).duration == pytest.approx(load_audio(long_speech).duration, abs=0.12)


def test_animate_portrait(portrait, grid_clips, tmp_path):
    out = tmp_path / "talk.mp4"
    result = CliRunner().invoke(cli, ["animate", str(portrait), str(grid_clips[1]), "-o", str(out), "--preset", "tiny", "--quiet"])
    assert result.exit_code == 0, result.output
    info = probe_video(out)
    assert info.has_audio and info.fps == 25 and (info.width, info.height) == (512, 512)
    assert info.duration == pytest.approx(load_audio(grid_clips[1]).duration, abs=0.1)


def test_preview_and_contact_sheet(pair, tmp_path):
    video, speech = pair
    out = tmp_path / "o.mp4"
    result = dub_cli(video, speech, "-o", out, "--preset", "preview", "--set", "output.preview=true", "--set", "output.contact_sheet=true")
    assert result.exit_code == 0, result.output
    side = probe_video(tmp_path / "o.preview.mp4")
    assert side.width == 2 * probe_video(video).width
    assert (tmp_path / "o.contact.png").stat().st_size > 10_000


def test_python_api(pair, tmp_path):
    import latentdub

    video, speech = pair
    summary = latentdub.dub(video, speech, tmp_path / "api.mp4", preset="preview", log=lambda m: None)
    assert summary.frames == summary.frames_with_face + summary.frames_passed_through
    assert summary.frames_with_face >= 0.95 * summary.frames
    assert {"analyse", "motion", "render", "encode"} <= set(summary.stage_seconds)


def test_readme_main_command_offline(pair, tmp_path):
    """The README's main command, as a user types it: console script, `auto` preset, no network."""
    import os
    import shutil
    import subprocess
    import sys

    video, speech = pair
    exe = shutil.which("latentdub", path=os.path.dirname(sys.executable)) or shutil.which("latentdub")
    assert exe, "the latentdub console script is not installed"
    env = {**os.environ, "LATENTDUB_OFFLINE": "1", "LATENTDUB_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "dubbed.mp4"
    proc = subprocess.run([exe, "dub", str(video), str(speech), "-o", str(out)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "using the offline backend (preset offline)" in proc.stderr
    info = probe_video(out)
    assert info.has_audio and info.fps == 25 and sum(1 for _ in read_frames(out)) >= 74


def test_an_offline_dub_never_imports_torch(pair, tmp_path):
    """Presets on the CPU name the device without torch (importing it takes about 1.6 s of a dub's start);
    torch takes that name wherever a device goes. Nor scipy.signal (0.5 s): the landmark smoothing and the speech
    band's filter are numpy's."""
    import subprocess
    import sys

    import torch

    from latentdub.toolkit.core.devices import CpuDevice, resolve_device

    video, speech = pair
    script = ("import sys; from latentdub.toolkit.dubbing.pipeline import dub; "
              f"dub({str(video)!r}, {str(speech)!r}, {str(tmp_path / 'o.mp4')!r}, preset='offline', log=lambda m: None); "
              "print('torch' in sys.modules, 'scipy.signal' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False False"
    cpu = resolve_device("cpu")
    assert isinstance(cpu, CpuDevice) and cpu.type == "cpu" and cpu.index is None
    assert torch.zeros(2, device=cpu).device == torch.device(cpu) == torch.device("cpu")


def test_speech_edits_from_the_preset(pair, tmp_path):
    video, speech = pair
    out = tmp_path / "edited.mp4"
    result = dub_cli(video, speech, "-o", out, "--preset", "preview", "--set", "timing.length_policy=trim",
                     "--set", "speech.trim_start=0.5", "--set", "speech.trim_end=2.0", "--set", "speech.fade_out=0.2",
                     "--set", "speech.loudness=-20")
    assert result.exit_code == 0, result.output
    assert probe_video(out).duration == pytest.approx(1.5, abs=0.08)
    audio = load_audio(out)
    rms = 20 * np.log10(np.sqrt(np.mean(audio.samples[: int(1.2 * audio.sample_rate)] ** 2)) + 1e-9)
    assert -24 < rms < -16
    tail = audio.samples[-int(0.02 * audio.sample_rate):]
    assert np.abs(tail).max() < 0.05  # faded out


def test_references_come_from_the_analysis_pass(pair, tmp_path, monkeypatch):
    """The clip is decoded twice (analysis, synthesis), not a third time for the reference crops."""
    from latentdub.toolkit.dubbing import pipeline

    video, speech = pair
    opened = []
    real = pipeline.read_frames

    def counting(path, *args, **kwargs):
        opened.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pipeline, "read_frames", counting)
    pipeline.dub(video, speech, tmp_path / "o.mp4", preset="preview", log=lambda m: None)
    assert len(opened) == 2


def test_references_fall_back_to_decoding_when_no_kept_frame_shows_the_face(pair):
    """If none of the frames kept in pass 1 has the face, the reference frames are decoded from the clip."""
    from latentdub.toolkit.core.plugins import get_component
    from latentdub.toolkit.core.presets import TrackConfig
    from latentdub.toolkit.dubbing import pipeline
    from latentdub.toolkit.faces.track import analyse_video

    video = pair[0]
    comp = get_component("detector", "dlib")
    info = probe_video(video)
    track = analyse_video(read_frames(video), comp.factory(comp.config(), None), TrackConfig(crop_size=64))
    crops, lms = pipeline._video_references(video, info, track, kept={})
    assert crops.shape == (pipeline.N_REFERENCES, 64, 64, 3) and lms.shape == (pipeline.N_REFERENCES, 68, 2)
    kept = {i: f.image for f in read_frames(video) for i in [f.index] if i in (0, 40)}
    from_kept, _ = pipeline._video_references(video, info, track, kept=kept)
    assert len(from_kept) == 2
    np.testing.assert_array_equal(from_kept[0], crops[0])  # frame 0 is the first pick either way
