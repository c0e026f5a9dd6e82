"""Speech input and output: decode any media file to mono float32, edit, write WAV.

Decoding goes through the ffmpeg binary bundled with ``imageio-ffmpeg`` (no
ffprobe is needed): ``ffmpeg -i FILE -map 0:a:0 -ac 1 -ar RATE -f f32le -``
pipes raw float32 PCM of the first audio stream, downmixed to mono by
averaging the channels and resampled by ffmpeg's resampler. Editing uses
pydub on PCM built in memory (never ``AudioSegment.from_file``, which needs
ffprobe).

A file that decodes to zero samples is an error; a file of pure silence is
valid speech input (motion models turn it into a closed mouth).
"""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..core.errors import BadInputError, OutputError
from ..core.types import Audio

#: Sample rate every speech model in latentdub works at, in Hz.
SPEECH_RATE = 16000


def ffmpeg_exe() -> str:
    """Path of the bundled ffmpeg binary."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def load_audio(path: str | Path, sample_rate: int = SPEECH_RATE) -> Audio:
    """Decode the first audio stream of any file ffmpeg reads to mono float32 at ``sample_rate`` Hz.

    Raises :class:`BadInputError` for a missing file, a file ffmpeg cannot
    decode, a file without an audio stream, or one that holds no samples.
    """
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path}: audio file not found; check the path")
    if not path.is_file():
        raise BadInputError(f"{path}: is not a file; give an audio or video file with speech")
    if sample_rate <= 0:
        raise BadInputError(f"{path}: sample rate must be positive, got {sample_rate}")
    cmd = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-i", str(path),
        "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(int(sample_rate)), "-f", "f32le", "-",
    ]
    proc = subprocess.run(cmd, capture_output=True)
    err = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        if "matches no streams" in err:
            raise BadInputError(f"{path}: has no audio stream; give a file that contains speech")
        reason = _last_line(err) or f"ffmpeg exit code {proc.returncode}"
        raise BadInputError(f"{path}: cannot decode audio ({reason}); check the file or re-encode it to WAV")
    samples = np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)
    if samples.size == 0:
        raise BadInputError(f"{path}: audio stream holds no samples; give a file with speech")
    np.clip(samples, -1.0, 1.0, out=samples)
    return Audio(samples=samples, sample_rate=int(sample_rate), path=path)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def save_wav(audio: Audio, path: str | Path) -> Path:
    """Write ``audio`` as 16-bit PCM mono WAV, atomically (``.part`` then rename)."""
    import wave

    path = Path(path)
    pcm = _to_pcm16(audio.samples)
    tmp = path.with_name(path.name + ".part")
    try:
        with open(tmp, "wb") as fh, wave.open(fh, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(int(audio.sample_rate))
            out.writeframes(pcm.tobytes())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write WAV ({exc.strerror or exc}); check the folder exists and is writable") from None
    return path


def _to_pcm16(samples: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(samples, np.float32), -1.0, 1.0)
    return np.round(x * 32767.0).astype("<i2")


def resample(audio: Audio, sample_rate: int) -> Audio:
    """``audio`` at ``sample_rate`` Hz (polyphase filter; unchanged when the rate already matches)."""
    if int(sample_rate) == int(audio.sample_rate):
        return audio
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(int(sample_rate), int(audio.sample_rate))
    out = resample_poly(audio.samples.astype(np.float64), int(sample_rate) // g, int(audio.sample_rate) // g)
    return Audio(np.clip(out, -1, 1).astype(np.float32), int(sample_rate), audio.path)


def speech_envelope(audio: Audio, hop: float = 0.01, window: float = 0.025, band: tuple[float, float] = (300.0, 3000.0)) -> np.ndarray:
    """Level of the speech band in dBFS, float64 ``[n]``: value ``j`` is the RMS of
    ``band``-passed audio over ``window`` seconds centred at ``j * hop`` s
    (``n = floor(duration / hop) + 1``; digital silence reads -120 dB)."""
    from scipy.signal import butter, sosfiltfilt

    sr = audio.sample_rate
    x = audio.samples.astype(np.float64)
    high = min(band[1], 0.45 * sr)
    if len(x) > 27 and band[0] < high:
        x = sosfiltfilt(butter(4, [band[0], high], btype="band", fs=sr, output="sos"), x)
    step, win = max(int(round(hop * sr)), 1), max(int(round(window * sr)), 1)
    n = len(x) // step + 1
    power = np.concatenate([[0.0], np.cumsum(np.pad(x, (win // 2, win)) ** 2)])
    starts = np.arange(n) * step
    mean_power = (power[starts + win] - power[starts]) / win
    return 10 * np.log10(mean_power + 1e-12)


def fit_duration(audio: Audio, duration: float, offset: float = 0.0) -> Audio:
    """``audio`` shifted by ``offset`` seconds and cut or padded with silence to exactly ``duration`` s.

    ``offset > 0`` inserts that much silence before the speech; ``offset < 0``
    drops the first ``-offset`` seconds. Lengths round to whole samples.
    """
    sr = audio.sample_rate
    n_out = int(round(duration * sr))
    shift = int(round(offset * sr))
    out = np.zeros(max(n_out, 0), np.float32)
    src = audio.samples[max(-shift, 0):]
    start = max(shift, 0)
    n = max(min(len(src), n_out - start), 0)
    out[start:start + n] = src[:n]
    return Audio(out, sr, audio.path)


def _pydub() -> Any:
    """pydub's AudioSegment class, pointed at the bundled ffmpeg (silencing its import-time warnings)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # pydub imports audioop
        from pydub import AudioSegment
    AudioSegment.converter = ffmpeg_exe()
    return AudioSegment


def to_segment(audio: Audio) -> Any:
    """A pydub ``AudioSegment`` of ``audio`` (32-bit integer PCM, mono)."""
    segment_cls = _pydub()
    x = np.clip(audio.samples.astype(np.float64), -1.0, 1.0)
    pcm = np.round(x * 2147483647.0).astype("<i4")
    return segment_cls(data=pcm.tobytes(), sample_width=4, frame_rate=int(audio.sample_rate), channels=1)


def from_segment(segment: Any, path: Optional[Path] = None) -> Audio:
    """Mono float32 :class:`Audio` of a pydub ``AudioSegment``."""
    segment = segment.set_channels(1)
    if segment.sample_width not in (2, 4):
        segment = segment.set_sample_width(4)
    width = segment.sample_width
    raw = np.frombuffer(segment.raw_data, dtype=f"<i{width}").astype(np.float64)
    full = float(2 ** (8 * width - 1))
    return Audio((raw / full).astype(np.float32), int(segment.frame_rate), path)


def edit_audio(
    audio: Audio,
    trim: Optional[tuple[float, Optional[float]]] = None,
    pad_start: float = 0.0,
    pad_end: float = 0.0,
    fade_in: float = 0.0,
    fade_out: float = 0.0,
    target_dbfs: Optional[float] = None,
) -> Audio:
    """Trim, pad, fade and loudness-normalise speech; every time is in seconds.

    Applied in this order: ``trim=(start, end)`` keeps ``[start, end)``
    (``end`` None = to the end; sample-exact); ``pad_start``/``pad_end``
    add silence; ``fade_in``/``fade_out`` ramp the gain (in dB, pydub's
    fade) over the first/last seconds; ``target_dbfs`` scales the whole clip
    so its RMS level is that many dB below full scale (e.g. -20), but never
    so far that the peak would clip: the gain is capped at peak = 0 dBFS.
    Silent audio is left unscaled.
    """
    for name, value in (("pad_start", pad_start), ("pad_end", pad_end), ("fade_in", fade_in), ("fade_out", fade_out)):
        if value < 0:
            raise BadInputError(f"{name}: must be >= 0 seconds, got {value}")
    seg = to_segment(audio)
    sr = audio.sample_rate
    if trim is not None:
        start, end = trim
        n = len(audio.samples)
        a = int(round(max(start, 0.0) * sr))
        b = n if end is None else int(round(min(end * sr, n)))
        if not 0 <= a < b:
            raise BadInputError(f"trim={trim}: empty range for audio of {audio.duration:.3f} s; give start < end within the clip")
        seg = seg.get_sample_slice(a, b)
    if pad_start or pad_end:
        silence = type(seg)
        head = silence(data=b"\0" * (4 * int(round(pad_start * sr))), sample_width=4, frame_rate=sr, channels=1)
        tail = silence(data=b"\0" * (4 * int(round(pad_end * sr))), sample_width=4, frame_rate=sr, channels=1)
        seg = head + seg + tail
    if fade_in:
        seg = seg.fade_in(int(round(fade_in * 1000)))
    if fade_out:
        seg = seg.fade_out(int(round(fade_out * 1000)))
    if target_dbfs is not None and seg.rms > 0:
        gain = min(float(target_dbfs) - seg.dBFS, -seg.max_dBFS)
        seg = seg.apply_gain(gain)
    return from_segment(seg, audio.path)
