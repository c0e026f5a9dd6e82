"""The delivered sound track: the speech at its own rate, channels and depth, on real GRID speech (CC BY 4.0).

Speech is a GRID clip's audio made 48 kHz stereo 24-bit (or FLAC) by the
bundled ffmpeg; outputs are dubbed with the preview preset and read back
with the bundled ffmpeg (decoded samples and the stream report).
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from latentdub.cli import cli
from latentdub.toolkit.core.errors import BadInputError
from latentdub.toolkit.dubbing import pipeline
from latentdub.toolkit.dubbing.pipeline import animate, dub
from latentdub.toolkit.media.audio import SpeechPlan, edit_plan, loudness_gain, probe_audio, spans
from latentdub.toolkit.media.frame_timing import measure_frame_timing, rate_conversion_note

from . import media

RATE, SECONDS = 48000, 2.61  # the speech; the GRID footage lasts 3.00 s (75 frames at 25 fps)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("soundtrack")


@pytest.fixture(scope="module")
def footage(grid_clips):
    return grid_clips[0]


@pytest.fixture(scope="module")
def speech(grid_clips, work):
    """2.61 s of another speaker, 48 kHz stereo 24-bit WAV."""
    return media.studio_speech(grid_clips[3], work / "speech48k.wav", SECONDS)


@pytest.fixture(scope="module")
def speech_samples(speech):
    return media.decode_s32(speech, 2)


def quiet(message: str) -> None:
    pass


def test_speech_fixture_is_48k_stereo_24_bit(speech, speech_samples):
    info = probe_audio(speech)
    assert (info.codec, info.sample_rate, info.channels, info.bits, info.lossless) == ("pcm_s24le", RATE, 2, 24, True)
    assert len(speech_samples) == round(SECONDS * RATE)  # the file's length, sample-exact
    assert np.count_nonzero(speech_samples & 0xFF00) > 0.9 * speech_samples.size  # the low byte of 24 bits is used
    assert not np.array_equal(speech_samples[:, 0], speech_samples[:, 1])


# ---------------------------------------------------------------- pcm in .mov: bit-exact after the same edits


@pytest.fixture(scope="module")
def pcm_run(footage, speech, work):
    out = work / "pcm.mov"
    edits = ["output.audio_codec=pcm", "speech.trim_start=0.3", "speech.fade_out=0.25", "timing.audio_offset=0.2"]
    return out, dub(footage, speech, out, preset="preview", overrides=edits, log=quiet)


def test_pcm_mov_keeps_rate_channels_and_24_bits(pcm_run):
    out, _ = pcm_run
    info = probe_audio(out)
    assert (info.codec, info.sample_rate, info.channels, info.bits) == ("pcm_s24le", RATE, 2, 24)


def test_pcm_mov_samples_are_the_input_after_the_same_edits(pcm_run, speech_samples):
    out, _ = pcm_run
    got = media.decode_s32(out, 2)
    src = speech_samples
    start, shift, fade = round(0.3 * RATE), round(0.2 * RATE), round(0.25 * RATE)
    kept = len(src) - start
    assert len(got) == 3 * RATE  # the track lasts as long as the 75-frame picture
    assert not got[:shift].any()  # timing.audio_offset: silence first
    np.testing.assert_array_equal(got[shift : shift + kept - fade], src[start:-fade])  # untouched samples: bit-exact
    ramp = (fade - 1 - np.arange(fade, dtype=np.float64)) / fade  # linear fade to 0 on the last sample
    expected_tail = np.round(src[-fade:] / 256 * ramp[:, None]).astype(np.int64) * 256
    np.testing.assert_array_equal(got[shift + kept - fade : shift + kept], expected_tail)
    assert not got[shift + kept :].any()  # padded with digital silence to the end
    assert np.count_nonzero(got[shift : shift + kept] & 0xFF00) > 0.9 * 2 * kept  # 24 bits, not 16


def test_summary_states_the_real_speech_length_and_the_padding(pcm_run):
    _, summary = pcm_run
    assert summary.speech_seconds == pytest.approx(SECONDS, abs=1e-4)
    assert summary.speech_kept_seconds == pytest.approx(SECONDS - 0.3, abs=1e-4)
    assert summary.audio_offset == 0.2 and summary.audio_seconds == pytest.approx(3.0)
    assert summary.audio_pad_seconds == pytest.approx(3.0 - (SECONDS - 0.3 + 0.2), abs=1e-3)
    lines = summary.lines()
    assert lines[0].endswith("(75 frames at 25 fps, 3.00 s)")
    assert lines[1] == ("speech: 2.61 s, 2.31 s kept by the speech edits, starting at +0.20 s (timing.audio_offset), "
                        "0.49 s of silence added at the end; the track lasts 3.00 s")
    assert lines[2] == "audio: pcm, 48000 Hz, stereo, 24-bit (lossless)"


# ---------------------------------------------------------------- aac default, flac with overrides, copy, animate


def test_default_aac_keeps_48k_stereo(footage, speech, speech_samples, work):
    out = work / "default.mp4"
    summary = dub(footage, speech, out, preset="preview", log=quiet)
    info = probe_audio(out)
    assert (info.codec, info.sample_rate, info.channels) == ("aac", RATE, 2)
    got = media.decode_s32(out, 2).astype(np.float64)
    assert abs(len(got) - 3 * RATE) <= 2048  # AAC frames of 1024 samples
    n = len(speech_samples)
    src = speech_samples.astype(np.float64)
    for ch in range(2):  # each channel is its own channel: no swap, no downmix
        assert np.corrcoef(got[:n, ch], src[:, ch])[0, 1] > 0.95
    assert summary.lines()[1] == "speech: 2.61 s, 0.39 s of silence added at the end; the track lasts 3.00 s"
    assert summary.lines()[2] == "audio: aac 160k, 48000 Hz, stereo (lossy)"


def test_flac_with_rate_and_channel_overrides_and_loudness(footage, speech, work):
    out = work / "mono32k.mkv"
    summary = dub(footage, speech, out, preset="preview", log=quiet, overrides=[
        "output.audio_codec=flac", "output.audio_rate=32000", "output.audio_channels=1", "speech.loudness=-23"])
    info = probe_audio(out)
    assert (info.codec, info.sample_rate, info.channels, info.bits) == ("flac", 32000, 1, 24)
    got = media.decode_s32(out, 1)[: round(SECONDS * 32000), 0] / 2.0**31
    assert 20 * np.log10(np.sqrt(np.mean(got**2))) == pytest.approx(-23.0, abs=0.05)
    assert any(n.startswith("speech.loudness=-23 dBFS: gain") for n in summary.notes)
    assert summary.lines()[2] == "audio: flac, 32000 Hz, mono, 24-bit (lossless)"


def test_copy_keeps_the_stream_when_nothing_changes_it(footage, grid_clips, work):
    flac = media.studio_speech(grid_clips[3], work / "speech.flac", SECONDS, codec="flac")
    out = work / "copied.mkv"
    summary = dub(footage, flac, out, preset="preview", log=quiet, overrides=["output.audio_codec=copy", "timing.length_policy=trim"])
    assert probe_audio(out).codec == "flac"
    np.testing.assert_array_equal(media.decode_s32(out, 2), media.decode_s32(flac, 2))
    assert summary.frames == 65  # 2.61 s at 25 fps rounds to 65 frames = 2.60 s
    assert "copied as it is, 0.010 s longer than the picture" in summary.lines()[1]
    assert summary.lines()[2] == "audio: copied unchanged (flac, 48000 Hz, stereo, 24-bit)"


def test_animate_delivers_alac_bit_exact(portrait, speech, speech_samples, work):
    out = work / "portrait.m4v"
    summary = animate(portrait, speech, out, preset="preview", overrides=["output.audio_codec=alac"], log=quiet)
    info = probe_audio(out)
    assert (info.codec, info.sample_rate, info.channels, info.bits) == ("alac", RATE, 2, 24)
    got = media.decode_s32(out, 2)
    assert summary.frames == 65 and len(got) == round(2.6 * RATE)  # the held portrait rounds 2.61 s to 65 frames: 0.01 s cut
    np.testing.assert_array_equal(got, speech_samples[: len(got)])
    assert "the last 0.01 s cut" in summary.lines()[1]


# ---------------------------------------------------------------- settings that cannot work fail before any work


@pytest.mark.parametrize("name, overrides, words", [
    ("o.mp4", ["output.audio_codec=pcm"], "output.audio_codec=pcm: o.mp4: .mp4 files do not take pcm audio (they take aac, flac, alac); write a .mov or .mkv file"),
    ("o.mov", ["output.audio_codec=flac"], "output.audio_codec=flac: o.mov: .mov files do not take flac audio"),
    ("o.mkv", ["output.audio_codec=copy", "speech.fade_in=0.1"], "output.audio_codec=copy: speech48k.wav cannot be copied unchanged: the speech.* edits change it"),
    ("o.mkv", ["output.audio_codec=copy"], "the output runs 0.39 s longer than the speech (timing.length_policy=pad); use timing.length_policy=trim"),
    ("o.mkv", ["output.audio_codec=copy", "timing.length_policy=trim", "output.audio_rate=44100"], "drop output.audio_rate or choose"),
    ("o.mp4", ["output.audio_rate=1000"], "output.audio_rate: 1000 is out of range (allowed: 8000 to 384000)"),
])
def test_bad_audio_settings_fail_before_the_analysis(footage, speech, work, monkeypatch, name, overrides, words):
    monkeypatch.setattr(pipeline, "read_frames", lambda *a, **k: pytest.fail("decoded the footage before checking the audio settings"))
    out = work / "bad" / name
    out.parent.mkdir(exist_ok=True)
    with pytest.raises(BadInputError) as exc:
        dub(footage, speech, out, preset="preview", overrides=overrides, log=quiet)
    message = str(exc.value)
    assert words in message and "\n" not in message
    assert not out.exists()


def test_copy_refuses_a_codec_the_container_does_not_take(footage, grid_clips, work):
    result = CliRunner().invoke(cli, ["dub", str(footage), str(grid_clips[3]), "-o", str(work / "mp2.mp4"), "--preset", "preview",
                                      "--quiet", "--set", "output.audio_codec=copy", "--set", "timing.length_policy=trim"])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: output.audio_codec=copy: {grid_clips[3].name} holds mp2 audio, which .mp4 files do not take "
                                     "(aac, alac, flac, mp3, opus, ac3, eac3); write a .mkv file or choose aac, pcm, flac or alac")


# ---------------------------------------------------------------- the edit plan itself


def test_plan_is_the_same_in_blocks_as_whole(speech_samples):
    """Streaming the delivered track block by block gives exactly the whole-array result (any block size)."""
    plan = edit_plan(len(speech_samples), RATE, (0.1, 2.4), fade_in=0.05, fade_out=0.3)
    plan = plan.placed(2.9, 0.15, RATE)
    plan = SpeechPlan(**{**plan.__dict__, "gain": 0.7})
    whole = plan.render(speech_samples, 2.0**-31)
    for size in (997, 48000):
        blocks = np.concatenate([plan.block(speech_samples, a, b, 2.0**-31) for a, b in spans(plan.total, size)])
        np.testing.assert_array_equal(blocks, whole)
    gains = [loudness_gain(plan, speech_samples, -20.0, 2.0**-31, block) for block in (1013, 1 << 20)]
    assert gains[0] == pytest.approx(gains[1], rel=1e-12)


def test_plan_keeps_the_same_times_at_any_rate():
    """The 16 kHz analysis copy and the 48 kHz track trim and fade the same instants."""
    low = edit_plan(16000 * 3, 16000, (0.25, 2.5), 0.1, 0.2).placed(3.2, 0.3, 16000)
    high = edit_plan(48000 * 3, 48000, (0.25, 2.5), 0.1, 0.2).placed(3.2, 0.3, 48000)
    for field in ("start", "length", "total", "shift", "fade_in", "fade_out"):
        assert getattr(high, field) == 3 * getattr(low, field), field


# ---------------------------------------------------------------- frame timing


def test_frame_timing_of_constant_and_variable_clips(footage, work):
    constant = measure_frame_timing(footage)
    assert constant is not None and constant.frames == 75 and constant.average_fps == pytest.approx(25.0) and not constant.variable
    assert rate_conversion_note("a.mpg", constant, 25.0, 75) is None
    vfr = measure_frame_timing(media.variable_frame_rate(footage, work / "vfr.mkv"))
    assert vfr is not None and vfr.variable and vfr.frames == 75
    assert (vfr.min_interval, vfr.max_interval) == pytest.approx((0.04, 0.08))
    assert vfr.average_fps == pytest.approx(74 / 3.76)
    assert rate_conversion_note("vfr.mkv", vfr, 25.0, 95) == (
        "vfr.mkv: variable frame rate (75 frames, average 19.681 fps, gaps 40-80 ms) converted to constant 25 fps: 20 frames repeated")
