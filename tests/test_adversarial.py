"""Adversarial inputs through the real CLI: every case either dubs correctly or refuses cleanly.

A clean refusal is the documented exit code, exactly one line ``error: ...``
naming the file or the setting, no traceback, nothing left at the output
(no result, no ``.part``, no lock) and every input byte-for-byte unchanged.
Media are real GRID clips (CC BY 4.0, Cooke et al. 2006), cut short and
re-encoded once per module; runs use the ``tiny`` preset. Most cases run
in-process through click's CliRunner; signals and concurrent runs use
subprocesses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from latentdub.cli import cli
from latentdub.toolkit.core.config import CHECKS, NAMES_WEIGHTS, marked_settings, parse_config, setting_types, split_annotation
from latentdub.toolkit.core.plugins import components
from latentdub.toolkit.media.video import probe_video, read_frames

from . import media as M

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SECONDS = 0.6  # length of the test clip and speech


# --------------------------------------------------------------------------- media, made once


@pytest.fixture(scope="module")
def media(grid_clips, portrait, tmp_path_factory) -> Path:
    """A folder of real and deliberately broken inputs (see each name below)."""
    d = tmp_path_factory.mktemp("adversarial")
    src, other = str(grid_clips[0]), str(grid_clips[1])
    t = str(SECONDS)
    M.ffmpeg("-i", src, "-t", t, "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-movflags", "+faststart", str(d / "clip.mp4"))
    M.ffmpeg("-i", other, "-t", t, "-ac", "1", "-ar", "16000", str(d / "speech.wav"))
    shutil.copy(portrait, d / "portrait.png")
    # moov atom at the end, cut off; and a faststart file cut in half (its index promises frames that are gone)
    M.ffmpeg("-i", src, "-t", t, "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(d / "tail-moov.mp4"))
    data = (d / "tail-moov.mp4").read_bytes()
    (d / "moovless.mp4").write_bytes(data[: len(data) * 2 // 3])
    (d / "tail-moov.mp4").unlink()
    data = (d / "clip.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    M.garbage(d / "garbage.mp4", 20_000)
    (d / "empty.mp4").write_bytes(b"")
    (d / "empty.wav").write_bytes(b"")
    (d / "folder.mp4").mkdir()
    M.without_audio(d / "clip.mp4", d / "silent-video.mp4")
    M.ffmpeg("-i", str(d / "clip.mp4"), "-frames:v", "1", "-an", "-c:v", "libx264", str(d / "one-frame.mp4"))
    M.ffmpeg("-i", str(d / "clip.mp4"), "-frames:v", "3", "-vf", "scale=4000:4000,setsar=1", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "copy", str(d / "huge.mp4"))
    M.ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=7700x4400:d=0.04", "-c:v", "libx264", "-preset", "ultrafast", str(d / "over-8k.mp4"))
    Image.new("RGB", (9000, 9000)).save(d / "over-8k.png")
    M.ffmpeg("-i", str(d / "clip.mp4"), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le", "-c:a", "copy", str(d / "ten-bit.mp4"))
    M.ffmpeg("-i", str(d / "clip.mp4"), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p", "-c:a", "copy", str(d / "yuv444.mp4"))
    M.ffmpeg("-i", str(d / "speech.wav"), "-ac", "8", "-ar", "96000", str(d / "eight-channels-96k.wav"))
    M.ffmpeg("-i", str(d / "speech.wav"), "-ar", "8000", "-c:a", "pcm_u8", str(d / "8k-8bit.wav"))
    M.ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "600", "-c:a", "pcm_s16le", str(d / "ten-minutes-silence.wav"))
    # two audio tracks: the speech first, a loud tone second (the first track is the one used)
    M.ffmpeg("-i", str(d / "speech.wav"), "-f", "lavfi", "-t", t, "-i", "sine=frequency=2000:sample_rate=16000",
             "-map", "0:a", "-map", "1:a", "-c:a", "aac", str(d / "two-tracks.m4a"))
    wav = bytearray((d / "speech.wav").read_bytes())  # a header that promises ten times the samples present
    at = wav.find(b"data")
    wav[at + 4 : at + 8] = struct.pack("<I", struct.unpack("<I", wav[at + 4 : at + 8])[0] * 10)
    wav[4:8] = struct.pack("<I", len(wav) * 10)
    (d / "lying-header.wav").write_bytes(bytes(wav))
    spaced = d / "ünï cödé 🎬 folder"
    spaced.mkdir()
    shutil.copy(d / "clip.mp4", spaced / "clip with spaces ✓.mp4")
    shutil.copy(d / "speech.wav", spaced / "speech — ü.wav")
    _checkpoints(d)
    return d


class _Payload:
    """Unpickling this calls ``open(MARKER, "w")``: the marker file proves whether a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _checkpoints(d: Path) -> None:
    """Checkpoints that must never load: raw pickles, torch zips with a code global, and wrong tensors."""
    import torch

    payload = _Payload(d / "PAYLOAD-RAN")
    (d / "pickle.pt").write_bytes(pickle.dumps({"g_ema": payload, "state_dict": payload}, protocol=4))
    (d / "pickle.pkl").write_bytes(pickle.dumps({"G_ema": payload}, protocol=4))
    torch.save({"state_dict": payload}, d / "torch-zip-with-code.pt")
    torch.save({"conv.weight": torch.zeros(3, 3)}, d / "wrong-shape.pt")


@pytest.fixture(autouse=True)
def inputs_unchanged(request):
    """Every file of the media folder has the same SHA-256 after the test, and no pickle payload ran."""
    if "media" not in request.fixturenames:
        yield
        return
    folder = request.getfixturevalue("media")
    before = _digests(folder)
    yield
    assert _digests(folder) == before
    assert not (folder / "PAYLOAD-RAN").exists()


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- helpers


def run(*args) -> "click.testing.Result":  # noqa: F821
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="latentdub")


def dub(video, audio, out, *extra):
    return run("dub", video, audio, "-o", out, "-p", "tiny", "-q", *extra)


def refused(result, code: int, *words: str, out: Path | None = None) -> str:
    """Assert a clean refusal; returns the message."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]
    if out is not None:
        assert not out.exists()
        _no_leftovers(out.parent)
    return lines[0]


def _no_leftovers(folder: Path) -> None:
    left = [p.name for p in folder.iterdir() if ".part" in p.name or p.name.endswith(".lock")] if folder.is_dir() else []
    assert not left, left


def dubbed(result, out: Path, frames: int | None = None) -> None:
    """Assert a successful dub: exit 0, no output lines with -q, a playable video with audio, no leftovers."""
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "", result.output
    info = probe_video(out)
    assert info.has_audio
    if frames is not None:
        assert sum(1 for _ in read_frames(out)) == frames
    _no_leftovers(out.parent)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- the output is never an input


def test_output_equal_to_the_video_is_refused(media, tmp_path):
    clip = shutil.copy(media / "clip.mp4", tmp_path / "mine.mp4")
    before = sha(Path(clip))
    refused(dub(clip, media / "speech.wav", clip), 2, "mine.mp4", "is the video of this run", "choose another output")
    assert sha(Path(clip)) == before and [p.name for p in tmp_path.iterdir()] == ["mine.mp4"]


def test_output_equal_to_the_speech_is_refused(media):
    refused(dub(media / "clip.mp4", media / "speech.wav", media / "speech.wav"), 2, "speech.wav", "is the speech audio")


def test_output_reaching_the_video_through_a_symlink_is_refused(media, tmp_path):
    link = tmp_path / "link.mp4"
    link.symlink_to(media / "clip.mp4")
    refused(dub(media / "clip.mp4", media / "speech.wav", link), 2, "link.mp4", "through a link")
    assert link.is_symlink()


def test_output_that_is_a_hard_link_of_the_video_is_refused(media, tmp_path):
    os.link(media / "clip.mp4", tmp_path / "hard.mp4")
    refused(dub(media / "clip.mp4", media / "speech.wav", tmp_path / "hard.mp4"), 2, "hard.mp4", "through a link")


def test_output_equal_to_the_video_through_a_dotted_path_is_refused(media):
    dotted = media / "folder.mp4" / ".." / "." / "clip.mp4"
    refused(dub(media / "clip.mp4", media / "speech.wav", dotted), 2, "is the video of this run")


def test_output_equal_to_the_profile_is_refused(media, tmp_path):
    profile = tmp_path / "actor.mp4"  # an odd name for a profile, but a file the run reads
    profile.write_bytes(b"profile bytes")
    refused(dub(media / "clip.mp4", media / "speech.wav", profile, "--profile", profile), 2, "actor.mp4", "is the profile")
    assert profile.read_bytes() == b"profile bytes"


def test_resolved_preset_beside_the_output_may_not_replace_the_preset_file(media, tmp_path):
    preset = tmp_path / "take.latentdub.yaml"
    preset.write_text("description: mine\n")
    out = tmp_path / "take.mp4"
    refused(dub(media / "clip.mp4", media / "speech.wav", out, "-p", preset), 2, "take.latentdub.yaml", "is the preset")
    assert preset.read_text() == "description: mine\n" and not out.exists()


def test_animate_output_equal_to_its_speech_is_refused(media, tmp_path):
    speech = tmp_path / "speech.mp4"
    shutil.copy(media / "clip.mp4", speech)
    result = run("animate", media / "portrait.png", speech, "-o", speech, "-p", "tiny", "-q")
    refused(result, 2, "speech.mp4", "is the speech audio")


def test_tune_profile_equal_to_its_source_is_refused(media, tmp_path):
    source = shutil.copy(media / "clip.mp4", tmp_path / "person.mp4")
    refused(run("tune", source, "-o", source, "-p", "tiny", "-q"), 2, "person.mp4", "is the source")


def test_evaluate_report_equal_to_a_clip_is_refused(media, tmp_path):
    reference = shutil.copy(media / "clip.mp4", tmp_path / "reference.mp4")
    result = run("evaluate", media / "clip.mp4", reference, "--csv", reference, "--metrics", "psnr", "-q")
    refused(result, 2, "reference.mp4", "is the reference clip")


def test_batch_output_equal_to_another_clips_video_is_refused_before_anything_runs(media, tmp_path):
    shutil.copy(media / "clip.mp4", tmp_path / "a.mp4")
    shutil.copy(media / "speech.wav", tmp_path / "s.wav")
    manifest = tmp_path / "m.yaml"
    manifest.write_text("clips:\n  - {video: a.mp4, audio: s.wav, output: b.mp4}\n  - {video: b.mp4, audio: s.wav, output: a.mp4}\n")
    refused(run("batch", manifest, "-p", "tiny", "-q"), 2, "m.yaml", "clips[0]: output", "b.mp4", "is the video of clips[1]")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "m.yaml", "s.wav"]


# --------------------------------------------------------------------------- existing outputs


def test_existing_output_is_kept_without_overwrite_and_replaced_with_it(media, tmp_path):
    out = tmp_path / "o.mp4"
    out.write_bytes(b"an earlier cut the editor wants to keep")
    refused(dub(media / "clip.mp4", media / "speech.wav", out), 2, "o.mp4", "already exists", "--overwrite")
    assert out.read_bytes() == b"an earlier cut the editor wants to keep"
    dubbed(dub(media / "clip.mp4", media / "speech.wav", out, "--overwrite"), out, frames=15)
    dubbed(dub(media / "clip.mp4", media / "speech.wav", out, "--set", "output.overwrite=true"), out, frames=15)


def test_existing_resolved_preset_beside_the_output_is_kept_too(media, tmp_path):
    sidecar = tmp_path / "o.latentdub.yaml"
    sidecar.write_text("my notes\n")
    refused(dub(media / "clip.mp4", media / "speech.wav", tmp_path / "o.mp4"), 2, "o.latentdub.yaml", "already exists")
    assert sidecar.read_text() == "my notes\n" and not (tmp_path / "o.mp4").exists()


def test_batch_keeps_outputs_its_journal_did_not_make_and_skips_its_own(media, tmp_path):
    shutil.copy(media / "clip.mp4", tmp_path / "a.mp4")
    shutil.copy(media / "speech.wav", tmp_path / "s.wav")
    (tmp_path / "theirs.mp4").write_bytes(b"not ours")
    manifest = tmp_path / "m.yaml"
    manifest.write_text("clips:\n  - {video: a.mp4, audio: s.wav, output: ours.mp4}\n  - {video: a.mp4, audio: s.wav, output: theirs.mp4}\n")
    first = run("batch", manifest, "-p", "tiny", "-q")
    assert first.exit_code == 6 and "already exists and this batch's journal did not make it" in first.output, first.output
    assert (tmp_path / "theirs.mp4").read_bytes() == b"not ours" and probe_video(tmp_path / "ours.mp4").has_audio
    made = sha(tmp_path / "ours.mp4")
    second = run("batch", manifest, "-p", "tiny", "-q", "--overwrite")
    assert second.exit_code == 0, second.output
    assert sha(tmp_path / "ours.mp4") == made  # verified and skipped, not redone
    assert probe_video(tmp_path / "theirs.mp4").has_audio


# --------------------------------------------------------------------------- broken and odd files


@pytest.mark.parametrize("name, role, words", [
    ("moovless.mp4", "video", ("moovless.mp4", "not a readable video")),
    ("garbage.mp4", "video", ("garbage.mp4", "not a readable video")),
    ("empty.mp4", "video", ("empty.mp4", "is empty (0 bytes)")),
    ("empty.wav", "audio", ("empty.wav", "is empty (0 bytes)")),
    ("folder.mp4", "video", ("folder.mp4", "is a folder")),
    ("folder.mp4", "audio", ("folder.mp4", "is a folder")),
    ("portrait.png", "video", ("portrait.png", "is a still image", "latentdub animate")),
    ("silent-video.mp4", "audio", ("silent-video.mp4", "has no audio stream")),
    ("missing.mp4", "video", ("missing.mp4", "file not found")),
])
def test_unusable_input_files_are_refused(media, tmp_path, name, role, words):
    video, audio = (media / name, media / "speech.wav") if role == "video" else (media / "clip.mp4", media / name)
    refused(dub(video, audio, tmp_path / "o.mp4"), 2, *words, out=tmp_path / "o.mp4")


def test_a_video_given_as_the_portrait_is_refused(media, tmp_path):
    result = run("animate", media / "clip.mp4", media / "speech.wav", "-o", tmp_path / "o.mp4", "-p", "tiny", "-q")
    refused(result, 2, "clip.mp4", "not a readable image", out=tmp_path / "o.mp4")


def test_truncated_mp4_dubs_the_frames_that_decode(media, tmp_path):
    readable = sum(1 for _ in read_frames(media / "truncated.mp4"))
    assert 0 < readable < 15
    dubbed(dub(media / "truncated.mp4", media / "speech.wav", tmp_path / "o.mp4"), tmp_path / "o.mp4", frames=readable)


@pytest.mark.parametrize("audio", ["eight-channels-96k.wav", "8k-8bit.wav", "lying-header.wav", "two-tracks.m4a"])
def test_unusual_speech_files_are_decoded(media, tmp_path, audio):
    out = tmp_path / "o.mp4"
    dubbed(dub(media / "clip.mp4", media / audio, out), out, frames=15)


def test_the_first_of_two_audio_tracks_is_the_speech(media, tmp_path):
    from latentdub.toolkit.media.audio import load_audio, speech_envelope

    out = tmp_path / "o.mp4"
    dubbed(dub(media / "clip.mp4", media / "two-tracks.m4a", out), out)
    muxed = load_audio(out)
    spectrum = np.abs(np.fft.rfft(muxed.samples))
    freqs = np.fft.rfftfreq(len(muxed.samples), 1 / muxed.sample_rate)
    assert spectrum[np.abs(freqs - 2000) < 20].max() < 0.2 * spectrum.max()  # the tone track was not used
    assert speech_envelope(muxed).max() > -40


def test_ten_minutes_of_silence_is_cut_to_the_clip(media, tmp_path):
    out = tmp_path / "o.mp4"
    dubbed(dub(media / "clip.mp4", media / "ten-minutes-silence.wav", out), out, frames=15)
    assert probe_video(out).duration == pytest.approx(SECONDS, abs=0.1)


@pytest.mark.parametrize("video, frames", [("one-frame.mp4", 1), ("ten-bit.mp4", 15), ("yuv444.mp4", 15)])
def test_unusual_videos_are_dubbed(media, tmp_path, video, frames):
    out = tmp_path / "o.mp4"
    dubbed(dub(media / video, media / "speech.wav", out), out, frames=frames)


def test_a_4000x4000_video_is_dubbed_at_full_size(media, tmp_path):
    out = tmp_path / "o.mp4"
    dubbed(dub(media / "huge.mp4", media / "speech.wav", out), out, frames=3)
    info = probe_video(out)
    assert (info.width, info.height) == (4000, 4000)


def test_frames_beyond_8k_are_refused_before_decoding(media, tmp_path):
    out = tmp_path / "o.mp4"
    refused(dub(media / "over-8k.mp4", media / "speech.wav", out), 2, "over-8k.mp4", "7700x4400", "7680x4320", out=out)
    result = run("animate", media / "over-8k.png", media / "speech.wav", "-o", out, "-p", "tiny", "-q")
    refused(result, 2, "over-8k.png", "9000x9000", "scale it down", out=out)


def test_unicode_and_spaces_in_every_path(media, tmp_path):
    folder = media / "ünï cödé 🎬 folder"
    out_dir = tmp_path / "résumé ✓ dir"
    out_dir.mkdir()
    out = out_dir / "dubbed — ü 🎬.mp4"
    dubbed(dub(folder / "clip with spaces ✓.mp4", folder / "speech — ü.wav", out), out, frames=15)
    assert (out_dir / "dubbed — ü 🎬.latentdub.yaml").is_file()


# --------------------------------------------------------------------------- read-only and full disks


@contextlib.contextmanager
def _tmpfs(folder: Path, options: str):
    folder.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'mount failed'}); needs root outside an unprivileged container")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_read_only_output_folder_is_refused(media, tmp_path):
    with _tmpfs(tmp_path / "ro", "ro,size=1m") as folder:
        refused(dub(media / "clip.mp4", media / "speech.wav", folder / "o.mp4"), 2, "o.mp4", "not writable", out=folder / "o.mp4")


def test_read_only_input_files_are_fine(media, tmp_path):
    clip = Path(shutil.copy(media / "clip.mp4", tmp_path / "ro.mp4"))
    clip.chmod(0o444)
    out = tmp_path / "o.mp4"
    dubbed(dub(clip, media / "speech.wav", out), out, frames=15)
    assert clip.stat().st_mode & 0o777 == 0o444


def test_full_disk_fails_cleanly(media, tmp_path):
    with _tmpfs(tmp_path / "full", "size=24k") as folder:
        out = folder / "o.mp4"
        refused(dub(media / "clip.mp4", media / "speech.wav", out), 2, "o.mp4", "No space left on device", out=out)
        assert list(folder.iterdir()) == []


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("setting, words", [
    ("output.crf=-1", ("output.crf", "-1", "0 to 51")),
    ("output.crf=52", ("output.crf", "52", "0 to 51")),
    ("output.fps=0", ("output.fps", "> 0")),
    ("output.audio_bitrate=loud", ("output.audio_bitrate", "'loud'", "128k")),
    ("track.crop_size=0", ("track.crop_size", "32 to 4096")),
    ("track.detect_every=0", ("track.detect_every", "1 to 100")),
    ("timing.audio_offset=.inf", ("timing.audio_offset", "not a finite number")),
    ("speech.loudness=5", ("speech.loudness", "-70 to 0")),
    ("generator.size=48", ("generator.size", "a power of two")),
    ("motion.conv_channels=[8,0]", ("motion.conv_channels[1]", "0", ">= 1")),
    ("output.crf=high", ("output.crf", "expected int", "'high'")),
    ("output.crff=20", ("output.crff", "unknown setting", "known: ")),
    ("outputs.crf=20", ("outputs", "unknown preset section")),
    ("output=20", ("output: expected a mapping of settings, got 20",)),
    ("detector=dlib", ("detector: expected a mapping naming the plugin",)),
])
def test_bad_settings_are_refused_before_any_work(media, tmp_path, setting, words):
    refused(dub(media / "clip.mp4", media / "speech.wav", tmp_path / "o.mp4", "--set", setting), 2, *words, out=tmp_path / "o.mp4")


def _registered_configs() -> list[tuple[str, str, type]]:
    return [(kind, name, c.config) for kind, table in components().items() for name, c in sorted(table.items())]


def _numbers_without_a_check(cls: type, prefix: str = "") -> list[str]:
    found = []
    for name, tp in setting_types(cls).items():
        base, extras = split_annotation(tp)
        inner = [split_annotation(a) for a in getattr(base, "__args__", ())]
        if any(isinstance(e, CHECKS) for e in extras) or any(isinstance(e, CHECKS) for _, es in inner for e in es):
            continue
        if hasattr(base, "__dataclass_fields__"):
            found += _numbers_without_a_check(base, f"{prefix}{name}.")
        elif base in (int, float) or any(b in (int, float) for b, _ in inner):
            found.append(prefix + name)
    return found


def test_every_numeric_setting_of_every_registered_config_declares_its_range():
    from latentdub.toolkit.core.presets import CORE_SECTIONS

    configs = [("core", name, cls) for name, cls in CORE_SECTIONS.items()] + _registered_configs()
    missing = {f"{kind}:{name}": found for kind, name, cls in configs if (found := _numbers_without_a_check(cls))}
    assert missing == {}, "declare a Range (config.Range) on these settings"
    for kind, name, cls in configs:  # the defaults pass their own checks (configs with required settings have none to check)
        if all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING for f in dataclasses.fields(cls)):
            assert parse_config(cls, {}, name) == cls()


def test_yaml_bomb_in_a_preset_is_refused_quickly(media, tmp_path):
    keys = ["layers", "conv_channels", "gain", "window", "overlap", "batch", "components", "audio_dim", "hidden"]
    lines = ["motion:", "  plugin: audio2latent", f"  {keys[0]}: &l0 [{', '.join(['1'] * 9)}]"]
    lines += [f"  {key}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i, key in enumerate(keys[1:], 1)]  # 9**9 leaves
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    message = refused(dub(media / "clip.mp4", media / "speech.wav", tmp_path / "o.mp4", "-p", bomb), 2, "motion.conv_channels[0]")
    assert time.perf_counter() - start < 20 and len(message) < 200


def test_deeply_nested_yaml_is_refused(media, tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("motion: " + "[" * 3000 + "]" * 3000 + "\n")
    refused(dub(media / "clip.mp4", media / "speech.wav", tmp_path / "o.mp4", "-p", deep), 2, "deep.yaml", "nested too deeply")


def test_python_tags_in_a_preset_never_run(media, tmp_path):
    marker = tmp_path / "TAG-RAN"
    preset = tmp_path / "tagged.yaml"
    preset.write_text(f"description: !!python/object/apply:os.system ['touch {marker}']\n")
    refused(dub(media / "clip.mp4", media / "speech.wav", tmp_path / "o.mp4", "-p", preset), 2, "tagged.yaml", "not valid YAML")
    assert not marker.exists()


def test_usage_errors_are_one_line(media, tmp_path):
    refused(dub(media / "clip.mp4", media / "speech.wav", tmp_path / "o.mp4", "--no-such-option"), 2, "--no-such-option", "latentdub dub --help")


# --------------------------------------------------------------------------- checkpoints that must never load


#: How a weight setting of each component kind is exercised: the command that reads it.
RUNS = {
    "detector": lambda m, out: ("dub", m / "clip.mp4", m / "speech.wav", "-o", out, "-p", "tiny"),
    "encoder": lambda m, out: ("dub", m / "clip.mp4", m / "speech.wav", "-o", out, "-p", "tiny"),
    "generator": lambda m, out: ("dub", m / "clip.mp4", m / "speech.wav", "-o", out, "-p", "tiny"),
    "motion": lambda m, out: ("dub", m / "clip.mp4", m / "speech.wav", "-o", out, "-p", "tiny"),
    "finetuner": lambda m, out: ("tune", m / "portrait.png", "-o", out.with_suffix(".profile"), "-p", "tiny", "--set", "finetuner.lpips_random_backbone=false"),
    "metric": lambda m, out: ("evaluate", m / "clip.mp4", m / "clip.mp4"),
}


def _load_file_args(media: Path, out: Path, kind: str, plugin: str, setting: str, path: Path) -> tuple:
    """Command-line arguments that make ``plugin`` (a ``kind``) read ``path`` through ``setting``."""
    if kind == "metric":
        return (*RUNS[kind](media, out), "--metrics", plugin, "--set", f"{plugin}.{setting}={path}")
    config = components()[kind][plugin].config
    random = ("--set", f"{kind}.random_init=false") if "random_init" in setting_types(config) else ()
    return (*RUNS[kind](media, out), "--set", f"{kind}.plugin={plugin}", *random, "--set", f"{kind}.{setting}={path}")


#: Weight settings read only by `latentdub train` (covered by the training run below).
TRAIN_SETTINGS = {("motion", "audio2latent", "train.lpips_weights")}


def _weight_settings() -> list[tuple[str, str, str]]:
    """(kind, plugin, setting) of every weight setting, each config once (a trainer shares its motion model's)."""
    first = {}
    for kind, name, cls in _registered_configs():
        first.setdefault(cls, (kind, name))
    return [(*first[cls], setting) for cls in first for setting in marked_settings(cls, NAMES_WEIGHTS)]


def test_every_weight_setting_is_covered_below():
    settings = _weight_settings()
    assert {("audio2latent", "checkpoint"), ("audio2latent", "train.lpips_weights"), ("stylegan2", "checkpoint"), ("psp", "checkpoint"),
            ("e4e", "checkpoint"), ("dlib", "predictor"), ("pti", "lpips_weights"), ("fid", "weights"), ("lse", "weights"),
            ("clipfit", "prior")} <= {(p, s) for _, p, s in settings}
    assert all(kind in RUNS for kind, _, _ in settings)


@pytest.mark.parametrize("kind, plugin, setting", [s for s in _weight_settings() if s not in TRAIN_SETTINGS])
@pytest.mark.parametrize("bad", ["pickle.pt", "torch-zip-with-code.pt", "wrong-shape.pt"])
def test_checkpoints_with_code_or_the_wrong_tensors_are_refused(media, tmp_path, kind, plugin, setting, bad):
    out = tmp_path / "o.mp4"
    refused(run(*_load_file_args(media, out, kind, plugin, setting, media / bad), "-q"), 2, bad, out=out)


def test_an_nvidia_pickle_is_not_unpickled_unless_asked(media, tmp_path):
    out = tmp_path / "o.mp4"
    result = run(*_load_file_args(media, out, "generator", "stylegan2", "checkpoint", media / "pickle.pkl"), "-q")
    refused(result, 2, "pickle.pkl", "refusing to unpickle", "allow_pickle", out=out)


def test_a_pickled_lpips_backbone_for_training_never_runs(media, tmp_path):
    dataset = tmp_path / "dataset"
    (tmp_path / "src").mkdir()
    shutil.copy(media / "clip.mp4", tmp_path / "src" / "s1_clip.mp4")
    prepared = run("dataset", "prepare", tmp_path / "src", "-o", dataset, "-p", "tiny", "-q", "--val-fraction", "0", "--test-fraction", "0")
    assert prepared.exit_code == 0, prepared.output
    for bad in ("pickle.pt", "torch-zip-with-code.pt"):
        result = run("train", dataset, "-o", tmp_path / "run", "-p", "tiny", "--steps", "1", "-q",
                     "--set", "motion.train.lpips_random_backbone=false", "--set", f"motion.train.lpips_weights={media / bad}")
        refused(result, 2, bad)
        assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- signals and concurrent runs (subprocesses)


def _long_clip(media: Path, folder: Path) -> tuple[Path, int]:
    """The test clip looped to 2.4 s (long enough to be caught mid-render) and its frame count."""
    clip = M.looped(media / "clip.mp4", folder / "long.mp4", 4)
    return clip, sum(1 for _ in read_frames(clip))


def _start(*args, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "latentdub.cli", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kw)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if ".part" in p.name]


def test_sigint_mid_render_removes_the_partial_file(media, tmp_path):
    clip, _ = _long_clip(media, tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "o.mp4"
    proc = _start("dub", clip, media / "speech.wav", "-o", out, "-p", "tiny", "-q")
    _wait_for(lambda: _temps(out_dir), proc)  # the encoder's temporary file exists: rendering has begun
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["error: interrupted; partial files were removed"] and stdout == ""
    assert list(out_dir.iterdir()) == []


def test_a_rerun_after_sigkill_succeeds_and_clears_what_the_killed_run_left(media, tmp_path):
    clip, frames = _long_clip(media, tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "o.mp4"
    proc = _start("dub", clip, media / "speech.wav", "-o", out, "-p", "tiny", "-q", start_new_session=True)
    _wait_for(lambda: _temps(out_dir), proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its ffmpeg children, as a crash would
    proc.communicate(timeout=60)
    assert _temps(out_dir) and not out.exists()
    dubbed(dub(clip, media / "speech.wav", out), out, frames=frames)
    assert sorted(p.name for p in out_dir.iterdir()) == ["o.latentdub.yaml", "o.mp4"]


def test_a_run_refuses_an_output_another_run_holds(media, tmp_path):
    from latentdub.toolkit.core.files import file_lock

    out = tmp_path / "o.mp4"
    with file_lock(out, wait=False):  # what a running dub holds on its output
        refused(dub(media / "clip.mp4", media / "speech.wav", out), 2, "o.mp4", "another latentdub run is writing it now")
    assert list(tmp_path.iterdir()) == []


def test_two_runs_writing_one_output_at_once_one_wins_whole(media, tmp_path):
    clip, frames = _long_clip(media, tmp_path)
    out = tmp_path / "o.mp4"
    runs = [_start("dub", clip, media / "speech.wav", "-o", out, "-p", "tiny", "-q") for _ in range(2)]
    results = sorted((proc.wait(timeout=300), proc.communicate()[1]) for proc in runs)
    (won, err_won), (lost, err_lost) = results
    assert (won, err_won) == (0, "")
    assert lost == 2 and len(err_lost.strip().splitlines()) == 1, err_lost
    assert err_lost.startswith(f"error: {out}: ") and ("another latentdub run is writing it now" in err_lost or "already exists" in err_lost)
    assert sum(1 for _ in read_frames(out)) == frames  # one run's whole result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.mp4", "o.latentdub.yaml", "o.mp4"]


def test_a_pickled_checkpoint_prints_one_line_and_no_library_warning(media, tmp_path):
    out = tmp_path / "o.mp4"
    proc = _start("dub", media / "clip.mp4", media / "speech.wav", "-o", out, "-p", "tiny", "-q",
                  "--set", "generator.random_init=false", "--set", f"generator.checkpoint={media / 'pickle.pt'}")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {media / 'pickle.pt'}: holds pickled Python objects"), stderr
    assert not out.exists()
