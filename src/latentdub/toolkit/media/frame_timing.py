"""The source's real frame timing, read from its packet timestamps (no decoding).

``ffmpeg -i`` reports one frame rate per stream, even for variable-frame-rate
footage (phone clips, screen recordings, edited MKVs). The pipeline decodes at
a constant rate (:func:`~latentdub.toolkit.media.video.read_frames` repeats or drops
frames to fit); :func:`measure_frame_timing` lists the video packets'
timestamps (``-c copy -f framecrc``: the file is read, nothing is decoded) so
the run summary can say when that conversion happened and what it did.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .video import ffmpeg_exe


@dataclass(frozen=True)
class FrameTiming:
    """Frames of a video stream and their spacing.

    ``average_fps``: frames per second over the span of the timestamps;
    ``min_interval``/``max_interval``: shortest and longest gap between
    consecutive frames, seconds; ``variable``: gaps differ by more than
    timestamp rounding (1.5 ticks of the stream's time base, or 5 %).
    """

    frames: int
    average_fps: float
    min_interval: float
    max_interval: float
    variable: bool


def measure_frame_timing(path: str | Path) -> Optional[FrameTiming]:
    """Timing of the first video stream of ``path``; None when it has fewer than two timed frames."""
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "framecrc", "-"]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    base = re.search(r"^#tb 0: (\d+)/(\d+)", proc.stdout, re.M)
    if proc.returncode != 0 or base is None:
        return None
    tick = int(base.group(1)) / int(base.group(2))
    pts = []
    for line in proc.stdout.splitlines():
        fields = line.split(",")
        if line.startswith("#") or len(fields) < 3:
            continue
        value = int(fields[2])
        if value > -(2**62):  # packets without a timestamp carry INT64_MIN
            pts.append(value)
    if len(pts) < 2:
        return None
    ticks = np.sort(np.asarray(pts, np.int64))
    gaps = np.diff(ticks).astype(np.float64) * tick
    span = (ticks[-1] - ticks[0]) * tick
    median = float(np.median(gaps))
    variable = float(gaps.max() - gaps.min()) > max(1.5 * tick, 0.05 * median)
    return FrameTiming(len(ticks), float((len(ticks) - 1) / span) if span > 0 else 0.0, float(gaps.min()), float(gaps.max()), bool(variable))


def rate_conversion_note(name: str, timing: Optional[FrameTiming], fps: float, frames_out: int) -> Optional[str]:
    """A summary note when the source's frames were retimed to a constant ``fps`` (``frames_out`` frames), else None."""
    if timing is None or not (timing.variable or abs(timing.average_fps - fps) > 0.01 * fps):
        return None
    change = frames_out - timing.frames
    effect = f"{change} frames repeated" if change > 0 else f"{-change} frames dropped" if change < 0 else "no frame repeated or dropped"
    if timing.variable:
        source = (f"variable frame rate ({timing.frames} frames, average {timing.average_fps:.3f} fps, "
                  f"gaps {1000 * timing.min_interval:.0f}-{1000 * timing.max_interval:.0f} ms)")
    else:
        source = f"{timing.average_fps:.3f} fps"
    return f"{name}: {source} converted to constant {fps:g} fps: {effect}"
