"""Offline speech -> mouth shape: pocketsphinx phones -> visemes -> coarticulated mouth track.

Registers the motion model ``visemes`` (kind ``mouth``): codes float32
``[T, 3]`` = (opening, width, protrusion) per output frame, see
:data:`latentdub.toolkit.media.phonemes.VISEME_SHAPES` for the targets.

Pipeline: resample to 16 kHz; phones by forced alignment of a transcript or
by phone recognition (:mod:`latentdub.toolkit.media.phonemes`); each phone becomes
one viseme target spanning it (diphthongs two); targets are blended with
dominance functions (Cohen and Massaro 1993 style): a target weighs
``dominance * exp(-(d / tau)^2)`` at distance ``d`` seconds outside its span,
``tau = smoothing_ms``, and the shape at time ``t`` is the weighted mean of
the targets. Bilabials have a high dominance so P/B/M closures still close
the lips, tongue consonants borrow the opening of their vowels. Frame ``t``
is sampled at ``t / fps - latency_ms / 1000`` s (the timing convention of
:mod:`latentdub.toolkit.dubbing.timing`). Recognised phones during which the
300-3000 Hz band stays under the noise gate become silence; silence before
speech during which that band stays audible (above the gate) for at least
:data:`BREATH_MIN_S` is an inhalation (phone ``BREATH``: the lips part, as a
speaker breathing in before a sentence or after a pause does), and so is a
short, quiet island of recognised phones between two pauses (the recogniser
hears the breath's noise as a consonant); the lips stay parted from a breath
to the speech that follows it within :data:`BREATH_HOLD_S`. The ``energy``
fallback maps that band's level (noise gate -> 0, loud speech -> 0.25) to the
opening only; width and protrusion stay 0.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import numpy as np

from latentdub.toolkit.core.config import Range
from latentdub.toolkit.core.errors import BadInputError
from latentdub.toolkit.core.hookspecs import hookimpl
from latentdub.toolkit.core.types import Audio, Motion

#: Targets farther than this many ``tau`` from a frame are ignored (weight < exp(-25)).
REACH = 5.0
#: Hop of the speech-band envelope, seconds.
ENVELOPE_HOP = 0.01
#: Noise gate above the clip's noise floor, dB.
NOISE_MARGIN_DB = 6.0
#: Speech band below this level (dBFS) is silence whatever the clip.
ABSOLUTE_GATE_DB = -90.0
#: Shortest audible stretch of a pause that counts as a breath, seconds.
BREATH_MIN_S = 0.1
#: Sound within this long after speech ends is its decay, not a breath, seconds.
SPEECH_DECAY_S = 0.1
#: A silence this short between a breath and the speech (or breath) after it keeps the lips parted, seconds.
BREATH_HOLD_S = 0.4
#: Recognised phones between two pauses, lasting at most this long and never louder than this level (0..1,
#: :func:`speech_levels`), are the noise of a breath, not a word (recognition only, :func:`breath_islands`).
ISLAND_MAX_S, ISLAND_MAX_LEVEL = 0.2, 0.5


@dataclasses.dataclass(frozen=True)
class VisemeConfig:
    """Settings of the viseme motion model.

    ``method``: ``auto`` (align when a transcript is given, else recognise,
    or when the transcript cannot be aligned; ``energy`` when pocketsphinx
    finds no speech; the reason lands in ``Motion.extra["fallback"]``), ``align``,
    ``recognize`` or ``energy``; ``transcript``: the spoken words;
    ``transcript_file``: UTF-8 text file with them (used when ``transcript``
    is None); ``smoothing_ms``: coarticulation reach of each target, ms;
    ``gain``: scale on the opening; ``latency_ms``: delay of the mouth
    relative to the sound, ms (negative = the mouth leads the sound);
    ``breaths``: see :func:`mark_breaths` and :func:`breath_islands`.
    """

    method: Literal["auto", "align", "recognize", "energy"] = "auto"
    transcript: Optional[str] = None
    transcript_file: Optional[Path] = None
    smoothing_ms: Annotated[float, Range(ge=0, le=1000)] = 40.0
    gain: Annotated[float, Range(ge=0, le=10)] = 1.0
    latency_ms: Annotated[float, Range(ge=-1000, le=1000)] = 0.0
    #: Part the lips for breaths in the pauses before speech (``BREATH`` phones: :func:`mark_breaths`, :func:`breath_islands`).
    breaths: bool = True


@hookimpl
def register_motion_models(register):
    register("visemes", build_visemes, config=VisemeConfig, summary="pocketsphinx phones -> visemes -> mouth shape (offline, CPU)")


def build_visemes(config: VisemeConfig, context: Any) -> "VisemeMotion":
    """Factory: validates the config and returns a :class:`VisemeMotion`."""
    return VisemeMotion(config)


class VisemeMotion:
    """Speech to mouth shapes; ``predict`` returns :class:`Motion` kind ``mouth``."""

    kind = "mouth"
    #: Rate speech is analysed at, Hz (other rates are resampled).
    sample_rate = 16000

    def __init__(self, config: VisemeConfig = VisemeConfig()) -> None:
        if config.smoothing_ms <= 0:
            raise BadInputError(f"motion.smoothing_ms: must be > 0 ms, got {config.smoothing_ms}")
        if config.gain < 0:
            raise BadInputError(f"motion.gain: must be >= 0, got {config.gain}")
        self.config = config
        self.transcript = self._read_transcript(config)
        if config.method == "align" and self.transcript is None:
            raise BadInputError("motion.method: 'align' needs motion.transcript or motion.transcript_file; set one or use method: recognize")
        from latentdub.toolkit.media.phonemes import shared_decoder

        self.decoder = shared_decoder()

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

    def phones(self, audio: Audio) -> tuple[list[Any], str, Optional[str]]:
        """Phone segments of ``audio``, the method that produced them (``energy``: none),
        and why ``auto`` fell back from its first choice (else None)."""
        method = self.config.method
        if method == "energy" or len(audio.samples) == 0:
            return [], "energy", None
        fallback = None
        level = band_level(audio)
        if method == "align" or (method == "auto" and self.transcript is not None):
            where = "motion.transcript" if self.config.transcript is not None else str(self.config.transcript_file)
            try:
                return self._breathing(self.decoder.align(audio, self.transcript or "", where=where), level), "align", None
            except BadInputError as exc:
                if method == "align":
                    raise
                fallback = str(exc)
        segments = gate_silence(self.decoder.recognize(audio), level)
        if method == "recognize" or any(s.phone != "SIL" for s in segments):
            if self.config.breaths:
                segments = breath_islands(segments, level)
            return self._breathing(segments, level), "recognize", fallback
        return [], "energy", fallback or "phone recognition found no speech"

    def _breathing(self, segments: list[Any], level: np.ndarray) -> list[Any]:
        return mark_breaths(segments, level) if self.config.breaths else segments

    def predict(self, audio: Audio, fps: float, n_frames: int, identity: Optional[Any] = None) -> Motion:
        """Mouth codes float32 ``[n_frames, 3]`` for frames at ``t / fps`` s; ``identity`` is unused."""
        if not fps > 0 or n_frames < 0:
            raise BadInputError(f"motion: need fps > 0 and n_frames >= 0, got fps={fps}, n_frames={n_frames}")
        from latentdub.toolkit.media.audio import resample

        audio = resample(audio, self.sample_rate)
        times = np.arange(n_frames, dtype=np.float64) / fps - self.config.latency_ms / 1000.0
        segments, method, fallback = self.phones(audio)
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
            extra={
                "phones": [s.to_dict() for s in segments], "method": method, "fallback": fallback,
                "notes": [f"motion: fell back to {method}: {fallback}"] if fallback else [],
            },
        )


def blend_visemes(segments: list[Any], times: np.ndarray, smoothing_ms: float, chunk: int = 64) -> np.ndarray:
    """Coarticulated mouth shapes float32 ``[len(times), 3]`` from phone segments (times in s).

    Before the first and after the last segment the mouth is closed (silence).
    Frames are blended ``chunk`` at a time from the targets within reach
    (``REACH * tau``), so memory stays flat for long speech.
    """
    from latentdub.toolkit.media.phonemes import VISEME_SHAPES, phone_targets

    targets = [t for s in segments for t in phone_targets(s.phone, s.start, s.end)]
    end = max((s.end for s in segments), default=0.0)
    targets = [(-np.inf, 0.0, "SIL"), *sorted(targets), (end, np.inf, "SIL")]
    starts = np.array([t[0] for t in targets])
    ends = np.array([t[1] for t in targets])
    reach_end = np.maximum.accumulate(ends)  # targets are sorted by start; spans may nest
    shapes = np.array([VISEME_SHAPES[t[2]] for t in targets])  # [K, 4]
    tau = smoothing_ms / 1000.0
    times = np.asarray(times, np.float64)
    out = np.zeros((len(times), 3), np.float32)
    for a in range(0, len(times), chunk):
        t = times[a:a + chunk]
        lo = int(np.searchsorted(reach_end, t.min() - REACH * tau)) if len(t) else 0
        hi = int(np.searchsorted(starts, t.max() + REACH * tau, side="right")) if len(t) else 0
        dist = np.maximum(np.maximum(starts[lo:hi, None] - t[None], t[None] - ends[lo:hi, None]), 0.0)
        weight = shapes[lo:hi, 3:4] * np.exp(-((dist / tau) ** 2))  # [k, frames]
        weight /= np.maximum(weight.sum(0, keepdims=True), 1e-30)
        out[a:a + chunk] = weight.T @ shapes[lo:hi, :3]
    return out


def speech_levels(envelope: np.ndarray) -> np.ndarray:
    """Speech level 0..1 per envelope value (dBFS): 0 at the noise gate, 1 at the clip's loud speech.

    Loud speech is the 95th percentile of the clip; the gate sits
    :data:`NOISE_MARGIN_DB` above its noise floor (10th percentile) and never
    below :data:`ABSOLUTE_GATE_DB`, so digital silence reads 0.
    """
    hi = float(np.percentile(envelope, 95))
    lo = max(float(np.percentile(envelope, 10)) + NOISE_MARGIN_DB, ABSOLUTE_GATE_DB)
    if hi <= lo:
        return np.zeros_like(envelope)
    return np.clip((envelope - lo) / (hi - lo), 0.0, 1.0)


def band_level(audio: Audio) -> np.ndarray:
    """Speech level 0..1 (:func:`speech_levels`) of the 300-3000 Hz band of ``audio``, float ``[n]``, one every :data:`ENVELOPE_HOP` s."""
    from latentdub.toolkit.media.audio import speech_envelope

    return speech_levels(speech_envelope(audio, hop=ENVELOPE_HOP))


def _hops(start: float, end: float) -> slice:
    """The envelope values (one every :data:`ENVELOPE_HOP` s) from ``start`` to ``end`` seconds, at least one."""
    a = int(start / ENVELOPE_HOP)
    return slice(a, max(int(np.ceil(end / ENVELOPE_HOP)), a + 1))


def gate_silence(segments: list[Any], level: np.ndarray) -> list[Any]:
    """Relabel as ``SIL`` recognised phones during which the speech band (``level``, :func:`band_level`) stays below the noise gate."""
    out = []
    for seg in segments:
        if seg.phone != "SIL" and not level[_hops(seg.start, seg.end)].any():
            seg = dataclasses.replace(seg, phone="SIL")
        out.append(seg)
    return out


def mark_breaths(segments: list[Any], level: np.ndarray) -> list[Any]:
    """``segments`` with the audible stretches of each pause before speech relabelled ``BREATH``.

    A stretch is audible where the speech band is above the noise gate
    (``level`` > 0, :func:`band_level`) for at least :data:`BREATH_MIN_S`; the first
    :data:`SPEECH_DECAY_S` after speech and the silence after the last phone
    are never breaths (breathing in comes before speaking). Each breath then
    runs on over a silence of at most :data:`BREATH_HOLD_S` up to the next
    phone or breath.
    """
    spoken = [n for n, s in enumerate(segments) if s.phone != "SIL"]
    if not spoken:
        return list(segments)
    audible = level > 0
    out = []
    for n, seg in enumerate(segments):
        if seg.phone != "SIL" or n > spoken[-1]:
            out.append(seg)
            continue
        start = seg.start + (SPEECH_DECAY_S if n > spoken[0] else 0.0)
        a, b = int(np.ceil(start / ENVELOPE_HOP)), int(seg.end / ENVELOPE_HOP)
        edges = np.flatnonzero(np.diff(np.r_[False, audible[a:b], False].astype(np.int8)))
        done = seg.start
        for on, off in zip(edges[::2], edges[1::2]):
            if (off - on) * ENVELOPE_HOP < BREATH_MIN_S:
                continue
            begin, end = float((a + on) * ENVELOPE_HOP), float(min((a + off) * ENVELOPE_HOP, seg.end))
            if begin > done:
                out.append(dataclasses.replace(seg, start=done, end=begin))
            out.append(dataclasses.replace(seg, phone="BREATH", start=begin, end=end))
            done = end
        if done < seg.end:
            out.append(dataclasses.replace(seg, start=done, end=seg.end))
    return _held_open(out)


def _held_open(segments: list[Any]) -> list[Any]:
    """``segments`` with each ``BREATH`` stretched over a following silence of at most :data:`BREATH_HOLD_S` that
    ends in a phone or breath: the lips parted to breathe in stay parted until the speech starts."""
    out = list(segments)
    for n in range(len(out) - 2):
        gap = out[n + 1]
        if out[n].phone == "BREATH" and gap.phone == "SIL" and out[n + 2].phone != "SIL" and gap.end - gap.start <= BREATH_HOLD_S:
            out[n] = dataclasses.replace(out[n], end=gap.end)
            out[n + 1] = dataclasses.replace(gap, start=gap.end)
    return [s for s in out if s.end > s.start]


def breath_islands(segments: list[Any], level: np.ndarray) -> list[Any]:
    """Recognised ``segments`` with each island of phones between two pauses that lasts at most
    :data:`ISLAND_MAX_S`, never rises above :data:`ISLAND_MAX_LEVEL` (``level``, :func:`band_level`) and has
    speech after it relabelled one ``BREATH``: a word is longer or louder than that, a breath's noise is not."""
    spoken = [n for n, s in enumerate(segments) if s.phone != "SIL"]
    out, n = [], 0
    while n < len(segments):
        end = n
        while end < len(segments) and segments[end].phone != "SIL":
            end += 1
        if end == n:
            out.append(segments[n])
            n += 1
            continue
        first, last = segments[n], segments[end - 1]
        island = n > 0 and end < len(segments) and spoken[-1] >= end and last.end - first.start <= ISLAND_MAX_S
        if island and float(level[_hops(first.start, last.end)].max(initial=0.0)) <= ISLAND_MAX_LEVEL:
            out.append(dataclasses.replace(first, phone="BREATH", end=last.end))
        else:
            out.extend(segments[n:end])
        n = end
    return out


def energy_opening(audio: Audio, times: np.ndarray, smoothing_ms: float, peak_opening: float = 0.25) -> np.ndarray:
    """Opening float32 ``[len(times)]`` from the 300-3000 Hz level (:func:`speech_levels`) scaled to ``peak_opening``."""
    from scipy.ndimage import gaussian_filter1d

    level = gaussian_filter1d(band_level(audio), smoothing_ms / 1000.0 / ENVELOPE_HOP / 2.0, mode="nearest")
    env_t = np.arange(len(level)) * ENVELOPE_HOP
    return (peak_opening * np.interp(times, env_t, level, left=0.0, right=0.0)).astype(np.float32)
