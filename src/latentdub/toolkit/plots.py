"""Static plots (matplotlib, Agg canvas, no pyplot state): the review page's timeline and ``evaluate --plot``.

Every figure is drawn with matplotlib's object API on its own Agg canvas, so
nothing touches a global backend (safe inside notebooks and worker
processes). Times are seconds on the x axis.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import BadInputError

#: File types ``evaluate --plot`` writes, by suffix.
PLOT_SUFFIXES = (".png", ".svg", ".pdf")
#: Colour of each frame kind in the review strip: passed through, dubbed, dubbed by the renderer's fallback.
KIND_COLOURS = ("#b8b8b8", "#2a9d5c", "#e07b00")
KIND_NAMES = ("passed through", "dubbed", "fallback")
#: Horizontal extent of every review axis, as fractions of the figure width (the page's playhead uses them).
REVIEW_X = (0.065, 0.985)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def waveform_envelope(samples: np.ndarray, sample_rate: int, bins: int = 2400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin centre times s, min, max), float64 ``[B]`` each, of mono ``samples`` cut into at most ``bins`` spans."""
    x = np.asarray(samples, np.float64)
    if x.size == 0:
        return np.zeros(1), np.zeros(1), np.zeros(1)
    n = max(1, min(int(bins), x.size))
    edges = np.linspace(0, x.size, n + 1).astype(np.int64)
    lo = np.minimum.reduceat(x, edges[:-1])
    hi = np.maximum.reduceat(x, edges[:-1])
    return (edges[:-1] + edges[1:]) / 2.0 / sample_rate, lo, hi


def review_figure(
    fps: float,
    output: np.ndarray,
    source: np.ndarray,
    target: Optional[np.ndarray],
    speech: tuple[np.ndarray, np.ndarray, np.ndarray],
    kinds: np.ndarray,
) -> bytes:
    """PNG of the review timeline (1200 px wide): mouth opening, speech waveform, frame kinds.

    ``output``/``source``/``target``: float ``[T]`` mouth opening per output
    frame (inner-lip gap / inter-ocular distance; NaN where unmeasured,
    ``target`` None when the motion model gives none); ``speech``: the
    waveform envelope of :func:`waveform_envelope`; ``kinds``: uint8 ``[T]``
    codes indexing :data:`KIND_COLOURS`. Every axis spans
    :data:`REVIEW_X` of the width and ``[0, T / fps]`` seconds.
    """
    from matplotlib.colors import ListedColormap

    n = len(kinds)
    end = max(n, 1) / fps
    times = np.arange(n) / fps
    fig = _figure(12.0, 4.6)
    left, right = REVIEW_X
    width = right - left
    mouth = fig.add_axes((left, 0.45, width, 0.50))
    wave = fig.add_axes((left, 0.22, width, 0.19), sharex=mouth)
    strip = fig.add_axes((left, 0.12, width, 0.06), sharex=mouth)
    if target is not None:
        mouth.plot(times, target, color="#7b61c9", lw=1.4, ls="--", label="target (motion model)")
    mouth.plot(times, source, color="#8a8a8a", lw=1.2, label="source (measured)")
    mouth.plot(times, output, color="#d1495b", lw=1.8, label="output (measured on the dub)")
    mouth.set_ylabel("mouth opening\n(lip gap / eye distance)")
    mouth.set_ylim(bottom=0.0)
    mouth.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8, ncol=3, frameon=False, borderaxespad=0.1)
    mouth.grid(alpha=0.25)
    mouth.tick_params(labelbottom=False)
    t, lo, hi = speech
    wave.fill_between(t, lo, hi, color="#3b6ea5", lw=0)
    peak = max(float(np.max(np.abs(np.concatenate([lo, hi])))), 1e-3)
    wave.set_ylim(-peak, peak)
    wave.set_yticks([])
    wave.set_ylabel("speech", rotation=0, ha="right", va="center")
    wave.tick_params(labelbottom=False)
    strip.imshow(np.asarray(kinds, np.int64)[None, :], aspect="auto", interpolation="nearest", extent=(0, end, 0, 1),
                 cmap=ListedColormap(KIND_COLOURS), vmin=-0.5, vmax=len(KIND_COLOURS) - 0.5)
    strip.set_yticks([])
    strip.set_ylabel("frames", rotation=0, ha="right", va="center")
    strip.set_xlabel("time (s)")
    mouth.set_xlim(0, end)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def check_plot_path(path: str | Path) -> Path:
    """``path`` when a plot can be written there (known suffix, writable folder), else a one-line error."""
    from .files import check_writable_file

    path = check_writable_file(path, "metrics.png")
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise BadInputError(f"{path}: unknown plot type {path.suffix or '(none)'}; use {', '.join(PLOT_SUFFIXES)}")
    return path


def metrics_over_time(series: dict[str, Sequence[tuple[str, np.ndarray, np.ndarray]]], path: str | Path, units: dict[str, str]) -> Path:
    """Plot per-frame metric values over time, one panel per column, one line per clip; write ``path`` atomically.

    ``series``: column -> [(clip name, times s, values)] (NaN values leave
    gaps: frames a metric could not score); ``units``: column -> axis label
    suffix. More than 12 clips are drawn thin without a legend, with their
    mean over clips (on a 0.1 s grid) in black.
    """
    path = check_plot_path(path)
    columns = [c for c, lines in series.items() if lines]
    if not columns:
        raise BadInputError(f"{path}: no per-frame metric to plot; run PSNR, SSIM, LMD or CPBD (--metrics psnr,ssim,lmd)")
    fig = _figure(11.0, 1.0 + 2.2 * len(columns))
    axes = fig.subplots(len(columns), 1, sharex=True, squeeze=False)[:, 0]
    for ax, column in zip(axes, columns):
        lines = series[column]
        many = len(lines) > 12
        for name, times, values in lines:
            ax.plot(times, values, lw=0.6 if many else 1.3, alpha=0.35 if many else 0.9, label=None if many else name)
        if many:
            end = max(float(t[-1]) for _, t, _ in lines if len(t))
            grid = np.arange(0.0, end + 1e-9, 0.1)
            stacked = np.stack([np.interp(grid, t, v, left=np.nan, right=np.nan) if len(t) else np.full_like(grid, np.nan) for _, t, v in lines])
            with np.errstate(all="ignore"):
                counts = np.sum(np.isfinite(stacked), axis=0)
                mean = np.where(counts > 0, np.nansum(stacked, axis=0) / np.maximum(counts, 1), np.nan)
            ax.plot(grid, mean, color="black", lw=1.8, label=f"mean of {len(lines)} clips")
        ax.set_ylabel(f"{column}{units.get(column, '')}")
        ax.grid(alpha=0.25)
    axes[0].legend(loc="best", fontsize=8, frameon=False, ncol=1 if many else min(4, max(1, math.ceil(len(series[columns[0]]) / 4))))
    axes[-1].set_xlabel("time (s)")
    axes[0].set_title("per-frame scores over time", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.part")
    try:
        fig.savefig(tmp, format=path.suffix.lower().lstrip("."))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
