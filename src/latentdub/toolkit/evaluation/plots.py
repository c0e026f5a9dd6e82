"""``evaluate --plot``: per-frame scores of every clip over time, one panel per metric column."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..core.errors import BadInputError
from ..media.figures import check_figure_path, new_figure, save_figure
from .evaluate import Evaluation

#: Axis label suffix of each per-frame column.
UNITS = {"PSNR": " (dB)", "LMD": " (px)"}
#: More clips than this are drawn thin, without a legend, under their mean.
MAX_LEGEND = 12


def check_plot_path(path: str | Path) -> Path:
    """Fail before any scoring when the plot cannot be written to ``path``."""
    return check_figure_path(path, "scores.png")


def write_plot(evaluation: Evaluation, path: str | Path) -> Path:
    """Plot per-frame values over time to ``path`` (.png, .svg or .pdf): one panel per column with a series, one line per clip.

    Frames a metric could not score (NaN) leave gaps. With more than
    :data:`MAX_LEGEND` clips the lines are thin and their mean over clips (on
    a 0.1 s grid) is drawn in black.
    """
    path = check_plot_path(path)
    units = dict(UNITS)
    if evaluation.settings.get("lmd", {}).get("normalise"):
        units["LMD"] = " (eye distances)"
    series = {
        column: [(r.clip.name, *r.series[column]) for r in evaluation.clips if column in r.series]
        for column in evaluation.columns if column not in evaluation.unavailable
    }
    columns = [c for c, lines in series.items() if lines]
    if not columns:
        raise BadInputError(f"{path}: no per-frame metric to plot; run PSNR, SSIM, LMD or CPBD (--metrics psnr,ssim,lmd)")
    fig = new_figure(11.0, 1.0 + 2.2 * len(columns))
    axes = fig.subplots(len(columns), 1, sharex=True, squeeze=False)[:, 0]
    many = len(evaluation.clips) > MAX_LEGEND
    for ax, column in zip(axes, columns):
        lines = series[column]
        for name, times, values in lines:
            ax.plot(times, values, lw=0.6 if many else 1.3, alpha=0.35 if many else 0.9, label=None if many else name)
        if many:
            grid, mean = _mean_over_clips(lines)
            ax.plot(grid, mean, color="black", lw=1.8, label=f"mean of {len(lines)} clips")
        ax.set_ylabel(f"{column}{units.get(column, '')}")
        ax.grid(alpha=0.25)
    axes[0].legend(loc="best", fontsize=8, frameon=False, ncol=1 if many else min(4, max(1, math.ceil(len(evaluation.clips) / 4))))
    axes[-1].set_xlabel("time (s)")
    axes[0].set_title("per-frame scores over time", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _mean_over_clips(lines) -> tuple[np.ndarray, np.ndarray]:
    """(grid s, mean) of clips' values interpolated on a 0.1 s grid, NaN where no clip has a value."""
    end = max(float(t[-1]) for _, t, _ in lines if len(t))
    grid = np.arange(0.0, end + 1e-9, 0.1)
    stacked = np.stack([np.interp(grid, t, v, left=np.nan, right=np.nan) if len(t) else np.full_like(grid, np.nan) for _, t, v in lines])
    counts = np.sum(np.isfinite(stacked), axis=0)
    return grid, np.where(counts > 0, np.nansum(stacked, axis=0) / np.maximum(counts, 1), np.nan)
