"""The length policy: which source frame each output frame shows, and how long the audio runs.

Time convention used by every audio-to-frame mapping in latentdub: output
frame ``t`` is shown at time ``t / fps`` (its presentation timestamp) and
features and mouth shapes for that frame are taken at that instant.

Speech placement: the speech starts at ``audio_offset`` seconds in the output
(``> 0`` inserts leading silence, ``< 0`` drops the first ``-audio_offset``
seconds), so the speech span is ``S = audio_duration + audio_offset``
(never below 0). With ``N`` source frames the video lasts ``V = N / fps``.

Output length ``D`` and source frame ``source_index[t]`` per policy:

=========  =====================  ==================================================
policy     D                      source frame of output frame ``t``
=========  =====================  ==================================================
trim       S                      ``min(t, N-1)`` (speech longer than the video
                                  holds the last frame)
loop       S                      ``t mod N``
pingpong   S                      0..N-1, N-2..1, 0, 1.. (period ``2N-2``)
hold       max(V, S)              ``min(t, N-1)`` (freeze the last frame while
                                  speech lasts; shorter speech is padded)
pad        V                      ``t`` (the video is kept whole; speech padded
                                  with silence, or cut when longer)
=========  =====================  ==================================================

Frame count: ``T = N`` for ``pad`` (and for ``hold`` when the video is the
longer one); otherwise ``T = max(1, floor(D * fps + 0.5))``, i.e. the
nearest whole frame, ties rounding up, so picture and sound differ by at most
half a frame. The audio track of the output always lasts exactly ``T / fps``:
speech is padded with silence at the end (``pad_audio_seconds > 0``) or cut
(``pad_audio_seconds < 0``); :func:`timeline_audio` builds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.errors import BadInputError
from ..core.types import Audio

POLICIES = ("trim", "loop", "pingpong", "hold", "pad")


@dataclass(frozen=True)
class Timeline:
    """Output frames and audio span of one dub.

    ``source_index``: int64 ``[T]`` source frame shown at each output frame;
    ``fps``: output frame rate; ``audio_duration``: seconds of the output's
    audio track (``T / fps``); ``pad_audio_seconds``: silence appended to the
    (offset) speech to reach it, negative when speech is cut;
    ``audio_offset``: start of the speech in the output, seconds.
    """

    source_index: np.ndarray
    fps: float
    audio_duration: float
    pad_audio_seconds: float
    policy: str
    audio_offset: float = 0.0

    @property
    def n_frames(self) -> int:
        """Number of output frames ``T``."""
        return int(self.source_index.shape[0])

    def frame_times(self) -> np.ndarray:
        """float64 ``[T]`` presentation time of each output frame, seconds."""
        return frame_times(self.n_frames, self.fps)


def frame_times(n_frames: int, fps: float) -> np.ndarray:
    """float64 ``[n_frames]``: frame ``t`` is at ``t / fps`` seconds."""
    return np.arange(int(n_frames), dtype=np.float64) / float(fps)


def n_frames_for(duration: float, fps: float) -> int:
    """Whole frames covering ``duration`` seconds at ``fps``: nearest, ties up, at least 1."""
    return max(1, int(math.floor(duration * fps + 0.5)))


def plan_timeline(n_video_frames: int, fps: float, audio_duration: float, policy: str, audio_offset: float = 0.0) -> Timeline:
    """Plan the output frames of a dub (see the module docstring for each policy)."""
    if policy not in POLICIES:
        raise BadInputError(f"timing.length_policy: unknown policy {policy!r}; use one of {', '.join(POLICIES)}")
    if n_video_frames < 1:
        raise BadInputError("timing: the video has no frames; give a video with at least one frame")
    if not fps > 0:
        raise BadInputError(f"timing: frame rate must be positive, got {fps}")
    if audio_duration < 0:
        raise BadInputError(f"timing: audio duration must be >= 0, got {audio_duration}")
    n = int(n_video_frames)
    speech = max(audio_duration + audio_offset, 0.0)
    video = n / fps
    if policy == "pad" or (policy == "hold" and video >= speech):
        t = n
    else:
        t = n_frames_for(speech, fps)
        if policy == "hold":
            t = max(t, n)
    i = np.arange(t, dtype=np.int64)
    if policy == "loop":
        index = i % n
    elif policy == "pingpong":
        period = max(2 * n - 2, 1)
        phase = i % period
        index = np.where(phase < n, phase, period - phase) if n > 1 else np.zeros_like(i)
    elif policy == "pad":
        index = i
    else:  # trim, hold
        index = np.minimum(i, n - 1)
    out_seconds = t / fps
    return Timeline(
        source_index=index,
        fps=float(fps),
        audio_duration=out_seconds,
        pad_audio_seconds=out_seconds - speech,
        policy=policy,
        audio_offset=float(audio_offset),
    )


def is_monotonic(timeline: Timeline) -> bool:
    """True when source frames never go backwards, so a forward-only reader serves them.

    ``loop`` restarts at frame 0 (a reader can reopen the stream at each
    wrap, see :func:`segments`), but the full index is not monotonic;
    ``pingpong`` plays frames backwards and needs random access or a buffer.
    """
    idx = timeline.source_index
    return bool(np.all(np.diff(idx) >= 0))


def segments(timeline: Timeline) -> list[tuple[int, int]]:
    """Runs ``(start, stop)`` of output frames whose source frames never decrease.

    A streaming reader serves each run with one forward pass (one run for
    ``trim``/``hold``/``pad``, one per wrap for ``loop``).
    """
    idx = timeline.source_index
    breaks = np.flatnonzero(np.diff(idx) < 0) + 1
    bounds = [0, *breaks.tolist(), len(idx)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def timeline_audio(audio: Audio, timeline: Timeline) -> Audio:
    """The output's audio track: ``audio`` placed at ``audio_offset`` and fitted to ``T / fps`` seconds."""
    from ..media.audio import fit_duration

    return fit_duration(audio, timeline.audio_duration, timeline.audio_offset)
