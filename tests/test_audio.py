"""Audio decoding, WAV output and editing on the real GRID clips (CC BY 4.0, Cooke et al. 2006)."""

from __future__ import annotations

import wave

import numpy as np
import pytest

from latentdub.toolkit.core.errors import BadInputError, OutputError
from latentdub.toolkit.core.types import Audio
from latentdub.toolkit.media.audio import edit_audio, fit_duration, load_audio, save_wav


def _rms_dbfs(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2))))


@pytest.fixture(scope="module")
def grid_audio(grid_clips) -> Audio:
    return load_audio(grid_clips[0])


def test_load_grid_clip_decodes_mp2_to_mono_16k(grid_audio, grid_clips):
    a = grid_audio
    assert a.sample_rate == 16000 and a.samples.dtype == np.float32 and a.samples.ndim == 1
    assert a.duration == pytest.approx(2.98, abs=0.03)
    assert a.path == grid_clips[0]
    assert np.abs(a.samples).max() <= 1.0 and _rms_dbfs(a.samples) > -40  # real speech, not silence


def test_load_at_native_rate_keeps_duration(grid_clips, grid_audio):
    a = load_audio(grid_clips[0], sample_rate=44100)
    assert a.sample_rate == 44100
    assert a.duration == pytest.approx(grid_audio.duration, abs=0.01)


def test_wav_round_trip(tmp_path, grid_audio):
    out = save_wav(grid_audio, tmp_path / "speech.wav")
    assert not (tmp_path / "speech.wav.part").exists()
    back = load_audio(out)
    assert len(back.samples) == len(grid_audio.samples)
    assert np.abs(back.samples - grid_audio.samples).max() < 2.0 / 32767


def test_silence_is_valid_input(tmp_path):
    path = save_wav(Audio(np.zeros(8000, np.float32), 16000), tmp_path / "silence.wav")
    a = load_audio(path)
    assert a.duration == pytest.approx(0.5) and not a.samples.any()


def _one_line(exc: pytest.ExceptionInfo, name: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and name in msg
    return msg


def test_missing_file_error(tmp_path):
    with pytest.raises(BadInputError) as exc:
        load_audio(tmp_path / "nope.wav")
    assert "not found" in _one_line(exc, "nope.wav")


def test_directory_error(tmp_path):
    with pytest.raises(BadInputError) as exc:
        load_audio(tmp_path)
    _one_line(exc, str(tmp_path))


def test_corrupt_file_error(tmp_path):
    bad = tmp_path / "garbage.mp3"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(BadInputError) as exc:
        load_audio(bad)
    assert "cannot decode" in _one_line(exc, "garbage.mp3")


def test_no_audio_stream_error(portrait):
    with pytest.raises(BadInputError) as exc:
        load_audio(portrait)
    assert "no audio stream" in _one_line(exc, "astronaut.png")


def test_zero_length_audio_error(tmp_path):
    path = tmp_path / "empty.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    with pytest.raises(BadInputError) as exc:
        load_audio(path)
    assert "no samples" in _one_line(exc, "empty.wav")


def test_save_wav_into_missing_folder_is_output_error(tmp_path, grid_audio):
    target = tmp_path / "missing" / "x.wav"
    with pytest.raises(OutputError) as exc:
        save_wav(grid_audio, target)
    _one_line(exc, "x.wav")
    assert not target.parent.exists()


def test_trim_and_pad_are_sample_exact(grid_audio):
    sr = grid_audio.sample_rate
    out = edit_audio(grid_audio, trim=(0.5, 1.5), pad_start=0.25, pad_end=0.125)
    assert len(out.samples) == sr + sr // 4 + sr // 8
    assert not out.samples[: sr // 4].any() and not out.samples[-sr // 8:].any()
    body = out.samples[sr // 4: sr // 4 + sr]
    assert np.abs(body - grid_audio.samples[sr // 2: sr // 2 + sr]).max() < 1e-6


def test_trim_open_end_and_bad_range(grid_audio):
    out = edit_audio(grid_audio, trim=(2.0, None))
    assert len(out.samples) == len(grid_audio.samples) - 32000
    with pytest.raises(BadInputError):
        edit_audio(grid_audio, trim=(2.5, 1.0))


def test_fades_ramp_the_ends(grid_audio):
    out = edit_audio(grid_audio, trim=(0.6, 1.6), fade_in=0.2, fade_out=0.2)
    src = grid_audio.samples[9600:25600]
    assert abs(out.samples[0]) < 1e-3
    assert np.abs(out.samples[:800]).sum() < 0.2 * np.abs(src[:800]).sum()
    mid = slice(6000, 10000)
    assert np.abs(out.samples[mid] - src[mid]).max() < 1e-6
    assert np.abs(out.samples[-800:]).sum() < 0.2 * np.abs(src[-800:]).sum()


def test_loudness_normalisation(grid_audio):
    quiet = Audio(grid_audio.samples * 0.05, grid_audio.sample_rate)
    out = edit_audio(quiet, target_dbfs=-26.0)
    assert _rms_dbfs(out.samples) == pytest.approx(-26.0, abs=0.1)
    loud = edit_audio(quiet, target_dbfs=0.0)  # would clip: capped at peak 0 dBFS
    assert np.abs(loud.samples).max() <= 1.0
    assert _rms_dbfs(loud.samples) < -3.0
    silent = edit_audio(Audio(np.zeros(1600, np.float32), 16000), target_dbfs=-20.0)
    assert not silent.samples.any()


def test_fit_duration_offsets_and_pads(grid_audio):
    sr = grid_audio.sample_rate
    late = fit_duration(grid_audio, 4.0, offset=0.5)
    assert len(late.samples) == 4 * sr and not late.samples[: sr // 2].any()
    assert np.array_equal(late.samples[sr // 2: sr // 2 + 100], grid_audio.samples[:100])
    early = fit_duration(grid_audio, 1.0, offset=-0.5)
    assert np.array_equal(early.samples, grid_audio.samples[sr // 2: sr // 2 + sr])


def test_the_band_pass_is_the_butterworth_filter_run_forwards_and_backwards(grid_audio):
    """Against scipy's design and zero-phase filter: the same samples away from the ends, the same speech levels."""
    from scipy.signal import butter, sosfiltfilt

    from latentdub.toolkit.media.audio import band_passed, speech_envelope

    x = grid_audio.samples.astype(np.float64)
    sr = grid_audio.sample_rate
    ours = band_passed(x, sr, 300.0, 3000.0)
    theirs = sosfiltfilt(butter(4, [300.0, 3000.0], btype="band", fs=sr, output="sos"), x)
    inner = slice(sr // 20, -sr // 20)
    assert np.abs(ours - theirs)[inner].max() < 1e-4 * np.abs(theirs).max()
    assert np.abs(ours - theirs).max() < 0.05 * np.abs(theirs).max()  # the ends: a slightly different extension
    level = speech_envelope(grid_audio)
    assert level.max() > -40 and level.min() < level.max() - 30  # speech and pauses
    x_low = np.sin(2 * np.pi * 50 * np.arange(sr) / sr)  # a 50 Hz hum is far outside the band
    assert np.abs(band_passed(x_low, sr, 300.0, 3000.0)[sr // 10 : -sr // 10]).max() < 1e-3
