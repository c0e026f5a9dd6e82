"""Speech input and output: decode any media file to mono float32, edit, write WAV.

Decoding goes through the ffmpeg binary bundled with ``imageio-ffmpeg`` (no
ffprobe is needed): ``ffmpeg -i FILE -map 0:a:0 -ac 1 -ar RATE -f f32le -``
pipes raw float32 PCM of the first audio stream, downmixed to mono by
averaging the channels and resampled by ffmpeg's resampler: the analysis copy
every speech model hears. :func:`probe_audio` reads the stream's own rate,
channels and sample format for the delivered track (toolkit/dubbing/soundtrack.py).
Editing (:class:`SpeechPlan`) is numpy on ``[n]`` or ``[n, channels]``
samples at any rate, sample-exact, and reads long speech in blocks.

A file that decodes to zero samples is an error; a file of pure silence is
valid speech input (motion models turn it into a closed mouth).
"""

from __future__ import annotations

import dataclasses
import re
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..core.errors import BadInputError, OutputError
from ..core.types import Audio, AudioInfo
from .video import ffmpeg_exe

#: Sample rate every speech model in latentdub works at, in Hz.
SPEECH_RATE = 16000


def load_audio(path: str | Path, sample_rate: int = SPEECH_RATE) -> Audio:
    """Decode the first audio stream of any file ffmpeg reads to mono float32 at ``sample_rate`` Hz.

    Raises :class:`BadInputError` for a missing file, a file ffmpeg cannot
    decode, a file without an audio stream, or one that holds no samples.
    """
    path = _check_audio_file(path)
    if sample_rate <= 0:
        raise BadInputError(f"{path}: sample rate must be positive, got {sample_rate}")
    cmd = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-i", str(path),
        "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(int(sample_rate)), "-f", "f32le", "-",
    ]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise decode_failure(path, proc.stderr.decode("utf-8", "replace"), proc.returncode)
    samples = np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)
    if samples.size == 0:
        raise BadInputError(f"{path}: audio stream holds no samples; give a file with speech")
    np.clip(samples, -1.0, 1.0, out=samples)
    return Audio(samples=samples, sample_rate=int(sample_rate), path=path)


def _check_audio_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path}: audio file not found; check the path")
    if not path.is_file():
        raise BadInputError(f"{path}: is not a file; give an audio or video file with speech")
    return path


def decode_failure(path: Path, stderr: str, returncode: int) -> BadInputError:
    """The one-line error for an ffmpeg run that could not decode the audio of ``path``."""
    if "matches no streams" in stderr:
        return BadInputError(f"{path}: has no audio stream; give a file that contains speech")
    reason = _last_line(stderr) or f"ffmpeg exit code {returncode}"
    return BadInputError(f"{path}: cannot decode audio ({reason}); check the file or re-encode it to WAV")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


#: Codecs whose decoded samples are the encoded ones (besides every ``pcm_*``).
LOSSLESS_CODECS = frozenset({"flac", "alac", "wavpack", "tta", "ape", "mlp", "truehd", "shorten", "wmalossless", "mp4als"})
_SAMPLE_FORMAT = re.compile(r"^(u8|s16|s32|s64|flt|dbl)p?(?: \((\d+) bit\))?")


def probe_audio(path: str | Path) -> AudioInfo:
    """Codec, rate, channels and sample format of the first audio stream of ``path``.

    One short ffmpeg run: its report names the codec, layout and sample
    format; the WAV header it writes for the first 50 ms gives the rate and
    channel count. Raises :class:`BadInputError` like :func:`load_audio`.
    """
    path = _check_audio_file(path)
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-i", str(path), "-map", "0:a:0", "-vn", "-t", "0.05", "-f", "wav", "-"]
    proc = subprocess.run(cmd, capture_output=True)
    report = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise decode_failure(path, report, proc.returncode)
    header = proc.stdout
    stream = re.search(r"Stream #\S+.*?: Audio: (.*)", report.split("\nOutput #")[0])
    if len(header) < 28 or header[12:16] != b"fmt " or stream is None:
        raise BadInputError(f"{path}: audio stream holds no samples; give a file with speech")
    channels, rate = struct.unpack("<HI", header[22:28])
    parts = [p.strip() for p in stream.group(1).split(",")]
    hz = next((i for i, p in enumerate(parts) if p.endswith(" Hz")), 0)
    layout = parts[hz + 1] if hz + 1 < len(parts) else f"{channels} channels"
    fmt = _SAMPLE_FORMAT.match(parts[hz + 2] if hz + 2 < len(parts) else "")
    sample_format = fmt.group(1) if fmt else "flt"
    codec = parts[0].split()[0]
    lossless = codec.startswith("pcm_") or codec in LOSSLESS_CODECS
    width = {"u8": 8, "s16": 16, "s32": 32, "s64": 64}.get(sample_format)
    bits = (int(fmt.group(2)) if fmt and fmt.group(2) else width) if lossless and width else None
    return AudioInfo(path=path, codec=codec, sample_rate=int(rate), channels=int(channels), layout=layout,
                     sample_format=sample_format, bits=bits, lossless=lossless)


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


#: Order of the Butterworth band-pass of :func:`band_passed`.
BAND_PASS_ORDER = 4


def band_passed(x: np.ndarray, sample_rate: int, low: float, high: float, order: int = BAND_PASS_ORDER) -> np.ndarray:
    """float64 ``[n]`` samples through a Butterworth band-pass ``low``-``high`` Hz of ``order``, forwards and backwards
    (zero phase; the bilinear design with prewarped edges, so the gain is exact at every frequency).

    The gain of the two passes, ``1 / (1 + q ** (2 * order))`` with ``q = (w**2 - w_low * w_high) / ((w_high - w_low) * w)``
    at the prewarped frequency ``w = 2 fs tan(pi f / fs)``, is applied to the spectrum. The ends are extended by an
    odd reflection of 50 ms (and zeros beyond), so no step at the first or last sample rings into the band.
    """
    n = len(x)
    pad = min(n - 1, int(0.05 * sample_rate))
    extended = np.concatenate([2 * x[0] - x[pad:0:-1], x, 2 * x[-1] - x[-2 : -pad - 2 : -1]]) if pad > 0 else x
    size = 1 << int(len(extended) + 2 * pad).bit_length()  # zeros after the signal: the filter's tail does not wrap around
    spectrum = np.fft.rfft(extended, size)
    warp = 2.0 * sample_rate * np.tan(np.pi * np.fft.rfftfreq(size, 1.0 / sample_rate) / sample_rate)
    w_low, w_high = (2.0 * sample_rate * np.tan(np.pi * f / sample_rate) for f in (low, high))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = (warp**2 - w_low * w_high) / ((w_high - w_low) * warp)
        gain = 1.0 / (1.0 + q ** (2 * order))
    gain[~np.isfinite(gain)] = 0.0  # 0 Hz and the Nyquist frequency
    return np.fft.irfft(spectrum * gain, size)[pad : pad + n]


def speech_envelope(audio: Audio, hop: float = 0.01, window: float = 0.025, band: tuple[float, float] = (300.0, 3000.0)) -> np.ndarray:
    """Level of the speech band in dBFS, float64 ``[n]``: value ``j`` is the RMS of
    ``band``-passed audio over ``window`` seconds centred at ``j * hop`` s
    (``n = floor(duration / hop) + 1``; digital silence reads -120 dB)."""
    sr = audio.sample_rate
    x = audio.samples.astype(np.float64)
    high = min(band[1], 0.45 * sr)
    if len(x) > 27 and band[0] < high:
        x = band_passed(x, sr, band[0], high)
    step, win = max(int(round(hop * sr)), 1), max(int(round(window * sr)), 1)
    n = len(x) // step + 1
    power = np.concatenate([[0.0], np.cumsum(np.pad(x, (win // 2, win)) ** 2)])
    starts = np.arange(n) * step
    mean_power = (power[starts + win] - power[starts]) / win
    return 10 * np.log10(mean_power + 1e-12)


@dataclass(frozen=True)
class SpeechPlan:
    """A sample-exact recipe for a speech track at one rate, for any number of channels.

    Output sample ``j`` (``0 <= j < total``) is ``gain * ramp(k) * source[start + k]``
    with ``k = j - shift`` while ``0 <= k < length``, and silence elsewhere.
    ``ramp`` rises linearly from 0 over the first ``fade_in`` samples and falls
    to 0 over the last ``fade_out`` (1 elsewhere). Trim, fades, loudness gain,
    offset and the fit to the output timeline are all this one mapping, so the
    16 kHz analysis copy and the delivered track at the speech's own rate are
    made by the same code; with no fade and unit gain the kept samples are
    copied exactly.
    """

    start: int
    length: int
    total: int
    shift: int = 0
    fade_in: int = 0
    fade_out: int = 0
    gain: float = 1.0

    def placed(self, duration: float, offset: float, sample_rate: int) -> "SpeechPlan":
        """This speech starting ``offset`` s into a track of ``duration`` s (silence around it, cut beyond it)."""
        return dataclasses.replace(self, shift=int(round(offset * sample_rate)), total=max(int(round(duration * sample_rate)), 0))

    def block(self, source: np.ndarray, first: int, stop: int, scale: float = 1.0) -> np.ndarray:
        """float64 ``[stop - first, *source.shape[1:]]``: output samples ``first:stop``.

        ``source`` is ``[n]`` or ``[n, channels]`` of any numeric dtype (an
        array-like that reads slices on demand works, see soundtrack.RawSamples); ``source * scale``
        is the signal in full-scale units.
        """
        out = np.zeros((stop - first, *source.shape[1:]), np.float64)
        k0, k1 = max(first - self.shift, 0), min(stop - self.shift, self.length)
        if k1 <= k0:
            return out
        seg = np.asarray(source[self.start + k0 : self.start + k1], np.float64)
        if scale != 1.0:
            seg = seg * scale
        ramp = self._ramp(k0, k1)
        if ramp is not None:
            seg = seg * ramp.reshape(-1, *([1] * (seg.ndim - 1)))
        out[k0 + self.shift - first : k1 + self.shift - first] = seg
        return out

    def _ramp(self, k0: int, k1: int) -> Optional[np.ndarray]:
        """float64 ``[k1 - k0]`` gain of edited samples ``k0:k1`` (None when it is 1 throughout)."""
        fade_in = k0 < self.fade_in
        fade_out = k1 > self.length - self.fade_out
        if not (fade_in or fade_out) and self.gain == 1.0:
            return None
        k = np.arange(k0, k1, dtype=np.float64)
        ramp = np.full(k1 - k0, self.gain, np.float64)
        if fade_in:
            ramp *= np.minimum(k / self.fade_in, 1.0)
        if fade_out:
            ramp *= np.minimum((self.length - 1 - k) / self.fade_out, 1.0)
        return ramp

    def render(self, source: np.ndarray, scale: float = 1.0, dtype: type = np.float64, block: int = 1 << 20) -> np.ndarray:
        """The whole track, ``dtype`` ``[total, *source.shape[1:]]``, made ``block`` samples at a time
        (so a float32 track needs no float64 copy of the whole speech)."""
        out = np.empty((self.total, *source.shape[1:]), dtype)
        for first, stop in spans(self.total, block):
            out[first:stop] = self.block(source, first, stop, scale)
        return out


def spans(total: int, size: int) -> Iterator[tuple[int, int]]:
    """``(first, stop)`` ranges of at most ``size`` covering ``0..total``."""
    for first in range(0, total, size):
        yield first, min(first + size, total)


def edit_plan(
    n_samples: int, sample_rate: int, trim: Optional[tuple[float, Optional[float]]] = None, fade_in: float = 0.0, fade_out: float = 0.0
) -> SpeechPlan:
    """The :class:`SpeechPlan` that trims ``n_samples`` of speech to ``trim=(start, end)`` seconds
    (``end`` None = to the end) and fades its ends; its track is the edited speech alone."""
    for name, value in (("speech.fade_in", fade_in), ("speech.fade_out", fade_out)):
        if value < 0:
            raise BadInputError(f"{name}: must be >= 0 seconds, got {value}")
    a, b = 0, n_samples
    if trim is not None:
        start, end = trim
        a = int(round(max(start, 0.0) * sample_rate))
        b = n_samples if end is None else int(round(min(end * sample_rate, n_samples)))
        if not 0 <= a < b:
            raise BadInputError(
                f"speech.trim_start={start}, speech.trim_end={end}: empty range for speech of {n_samples / sample_rate:.3f} s; "
                "give start < end within the speech"
            )
    length = b - a
    fades = [min(int(round(f * sample_rate)), length) for f in (fade_in, fade_out)]
    return SpeechPlan(start=a, length=length, total=length, fade_in=fades[0], fade_out=fades[1])


def loudness_gain(plan: SpeechPlan, source: np.ndarray, target_dbfs: float, scale: float = 1.0, block: int = 1 << 20) -> float:
    """Linear gain bringing the RMS level of ``plan``'s edited speech (all channels, fades applied)
    to ``target_dbfs``, capped so the peak stays at or below 0 dBFS; 1.0 for silence.

    Reads ``source`` in blocks of ``block`` samples, so hours of speech read from disk are fine.
    """
    edited = dataclasses.replace(plan, shift=0, total=plan.length, gain=1.0)
    power, count, peak = 0.0, 0, 0.0
    for first, stop in spans(edited.total, block):
        x = edited.block(source, first, stop, scale).ravel()
        power += float(np.dot(x, x))
        count += x.size
        peak = max(peak, float(np.abs(x).max(initial=0.0)))
    if power == 0.0:
        return 1.0
    rms_db = 10 * np.log10(power / count)
    return float(10 ** (min(float(target_dbfs) - rms_db, -20 * np.log10(peak)) / 20))


def fit_duration(audio: Audio, duration: float, offset: float = 0.0) -> Audio:
    """``audio`` shifted by ``offset`` seconds and cut or padded with silence to exactly ``duration`` s.

    ``offset > 0`` inserts that much silence before the speech; ``offset < 0``
    drops the first ``-offset`` seconds. Lengths round to whole samples.
    """
    n = len(audio.samples)
    plan = SpeechPlan(start=0, length=n, total=n).placed(duration, offset, audio.sample_rate)
    return Audio(plan.render(audio.samples, dtype=np.float32), audio.sample_rate, audio.path)


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
    (``end`` None = to the end; sample-exact); ``fade_in``/``fade_out`` ramp
    the amplitude linearly over the first/last seconds of the kept speech;
    ``target_dbfs`` scales it so its RMS level is that many dB below full
    scale (e.g. -20), but never so far that the peak would clip (the gain is
    capped at peak = 0 dBFS; silence is left unscaled); ``pad_start``/``pad_end``
    add silence. See :class:`SpeechPlan`.
    """
    for name, value in (("pad_start", pad_start), ("pad_end", pad_end)):
        if value < 0:
            raise BadInputError(f"{name}: must be >= 0 seconds, got {value}")
    sr = audio.sample_rate
    plan = edit_plan(len(audio.samples), sr, trim, fade_in, fade_out)
    if target_dbfs is not None:
        plan = dataclasses.replace(plan, gain=loudness_gain(plan, audio.samples, target_dbfs))
    head, tail = int(round(pad_start * sr)), int(round(pad_end * sr))
    plan = dataclasses.replace(plan, shift=head, total=head + plan.length + tail)
    return Audio(np.clip(plan.render(audio.samples, dtype=np.float32), -1.0, 1.0), sr, audio.path)
