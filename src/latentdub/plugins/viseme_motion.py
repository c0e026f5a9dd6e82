"""Offline speech -> mouth shape: pocketsphinx phones -> visemes -> coarticulated mouth track.

Registers the motion model ``visemes`` (kind ``mouth``): codes float32
``[T, 3]`` = (opening, width, protrusion) per output frame, see
:data:`latentdub.toolkit.phonemes.VISEME_SHAPES` for the targets.

Pipeline: resample to 16 kHz; phones by forced alignment of a transcript or
by phone recognition (:mod:`latentdub.toolkit.phonemes`); each phone becomes
one viseme target spanning it (diphthongs two); targets are blended with
dominance functions (Cohen and Massaro 1993 style): a target weighs
``dominance * exp(-(d / tau)^2)`` at distance ``d`` seconds outside its span,
``tau = smoothing_ms``, and the shape at time ``t`` is the weighted mean of
the targets. Bilabials have a high dominance so P/B/M closures still close
the lips, tongue consonants borrow the opening of their vowels. Frame ``t``
is sampled at ``t / fps - latency_ms / 1000`` s (the timing convention of
:mod:`latentdub.toolkit.timing`). The ``energy`` fallback maps the
300-3000 Hz RMS envelope to opening only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np

from latentdub.toolkit.errors import BadInputError
from latentdub.toolkit.hookspecs import hookimpl
from latentdub.toolkit.types import Audio, Motion


@dataclasses.dataclass(frozen=True)
class VisemeConfig:
    """Settings of the viseme motion model.

    ``method``: ``auto`` (align when a transcript is given, else recognise;
    falls back to ``energy`` when pocketsphinx finds no speech), ``align``,
    ``recognize`` or ``energy``; ``transcript``: the spoken words;
    ``transcript_file``: UTF-8 text file with them (used when ``transcript``
    is None); ``smoothing_ms``: coarticulation reach of each target, ms;
    ``gain``: scale on the opening; ``latency_ms``: delay of the mouth
    relative to the sound, ms (negative = the mouth leads the sound).
    """

    method: Literal["auto", "align", "recognize", "energy"] = "auto"
    transcript: Optional[str] = None
    transcript_file: Optional[Path] = None
    smoothing_ms: float = 40.0
    gain: float = 1.0
    latency_ms: float = 0.0


@hookimpl
def register_motion_models(register):
    register("visemes", build_visemes, config=VisemeConfig, summary="pocketsphinx phones -> visemes -> mouth shape (offline, CPU)")


def build_visemes(config: VisemeConfig, context: Any) -> "VisemeMotion":
    """Factory: validates the config and returns a :class:`VisemeMotion`."""
    return VisemeMotion(config)


class VisemeMotion:
    """Speech to mouth shapes; ``predict`` returns :class:`Motion` kind ``mouth``."""

    kind = "mouth"

    def __init__(self, config: VisemeConfig = VisemeConfig()) -> None:
        if config.smoothing_ms <= 0:
            raise BadInputError(f"motion.smoothing_ms: must be > 0 ms, got {config.smoothing_ms}")
        if config.gain < 0:
            raise BadInputError(f"motion.gain: must be >= 0, got {config.gain}")
        self.config = config
        self.transcript = self._read_transcript(config)
        if config.method == "align" and self.transcript is None:
            raise BadInputError("motion.method: 'align' needs motion.transcript or motion.transcript_file; set one or use method: recognize")
        from latentdub.toolkit.phonemes import PhoneDecoder

        self.decoder = PhoneDecoder()

    @staticmethod
    def _read_transcript(config: VisemeConfig) -> Optional[str]:
        if config.transcript is not None:
            return config.transcript
        if config.transcript_file is None:
            return None
        path = Path(config.transcript_file)
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInputError(f"{path}: cannot read transcript_file ({exc.__class__.__name__}); give a UTF-8 text file") from None

    def phones(self, audio: Audio) -> tuple[list[Any], str]:
        """Phone segments of ``audio`` and the method that produced them (``energy``: none)."""
        method = self.config.method
        where = str(self.config.transcript_file) if self.config.transcript is None and self.config.transcript_file else "motion.transcript"
        if method == "energy":
            return [], "energy"
        if method == "align" or (method == "auto" and self.transcript is not None):
            try:
                return self.decoder.align(audio, self.transcript or "", where=where), "align"
            except BadInputError:
                if method == "align":
                    raise
        segments = self.decoder.recognize(audio)
        if method == "recognize" or any(s.phone != "SIL" for s in segments):
            return segments, "recognize"
        return [], "energy"

    def predict(self, audio: Audio, fps: float, n_frames: int, identity: Optional[Any] = None) -> Motion:
        """Mouth codes float32 ``[n_frames, 3]`` for frames at ``t / fps`` s; ``identity`` is unused."""
        if not fps > 0 or n_frames < 0:
            raise BadInputError(f"motion: need fps > 0 and n_frames >= 0, got fps={fps}, n_frames={n_frames}")
        from latentdub.toolkit.audio import SPEECH_RATE, resample

        audio = resample(audio, SPEECH_RATE)
        times = np.arange(n_frames, dtype=np.float64) / fps - self.config.latency_ms / 1000.0
        segments, method = self.phones(audio)
        if method == "energy":
            codes = np.zeros((n_frames, 3), np.float32)
            codes[:, 0] = energy_opening(audio, times, self.config.smoothing_ms)
        else:
            codes = blend_visemes(segments, times, self.config.smoothing_ms)
        codes[:, 0] *= self.config.gain
        return Motion(
            kind="mouth",
            codes=codes.astype(np.float32),
            fps=float(fps),
            extra={"phones": [s.to_dict() for s in segments], "method": method},
        )


def blend_visemes(segments: list[Any], times: np.ndarray, smoothing_ms: float) -> np.ndarray:
    """Coarticulated mouth shapes float32 ``[len(times), 3]`` from phone segments (times in s).

    Before the first and after the last segment the mouth is closed (silence).
    """
    from latentdub.toolkit.phonemes import VISEME_SHAPES, phone_targets

    targets = [t for s in segments for t in phone_targets(s.phone, s.start, s.end)]
    end = max((s.end for s in segments), default=0.0)
    targets = [(-1e9, 0.0, "SIL"), *targets, (end, 1e9, "SIL")]
    starts = np.array([t[0] for t in targets])[:, None]
    ends = np.array([t[1] for t in targets])[:, None]
    shapes = np.array([VISEME_SHAPES[t[2]] for t in targets])  # [K, 4]
    tau = smoothing_ms / 1000.0
    t = np.asarray(times, np.float64)[None, :]
    dist = np.maximum(np.maximum(starts - t, t - ends), 0.0)  # [K, F] seconds outside each span
    weight = shapes[:, 3:4] * np.exp(-((dist / tau) ** 2))
    weight = weight / np.maximum(weight.sum(0, keepdims=True), 1e-12)
    return (weight.T @ shapes[:, :3]).astype(np.float32)


def energy_opening(audio: Audio, times: np.ndarray, smoothing_ms: float, peak_opening: float = 0.25) -> np.ndarray:
    """Opening float32 ``[len(times)]`` from the 300-3000 Hz RMS envelope (10 ms hop, 25 ms window).

    Level in dB is mapped linearly from the clip's noise floor (10th
    percentile) to its loud speech (95th percentile) onto 0..``peak_opening``.
    """
    from scipy.ndimage import gaussian_filter1d
    from scipy.signal import butter, sosfiltfilt

    sr = audio.sample_rate
    x = audio.samples.astype(np.float64)
    if len(x) > 27:
        x = sosfiltfilt(butter(4, [300, min(3000, sr / 2 * 0.95)], btype="band", fs=sr, output="sos"), x)
    hop, win = int(0.01 * sr), int(0.025 * sr)
    pad = np.pad(x, (win // 2, win))
    n = max(len(x) // hop + 1, 1)
    idx = np.arange(n)[:, None] * hop + np.arange(win)[None, :]
    rms = np.sqrt((pad[np.minimum(idx, len(pad) - 1)] ** 2).mean(1))
    db = 20 * np.log10(rms + 1e-6)
    lo, hi = np.percentile(db, 10), np.percentile(db, 95)
    level = np.clip((db - lo) / max(hi - lo, 6.0), 0.0, 1.0)
    if hi < -60:  # digital silence
        level[:] = 0.0
    level = gaussian_filter1d(level, smoothing_ms / 10.0 / 2.0, mode="nearest")
    env_t = np.arange(n) * 0.01
    return (peak_opening * np.interp(times, env_t, level, left=0.0, right=0.0)).astype(np.float32)
