"""Figures as files: matplotlib on its own Agg canvas (no pyplot, no global backend), written atomically.

Used by the review page (:mod:`latentdub.toolkit.dubbing.review`) and
``evaluate --plot`` (:mod:`latentdub.toolkit.evaluation.plots`); times are
seconds on their x axes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..core.errors import BadInputError
from ..core.files import check_writable_file, write_bytes_atomic

#: Figure file types, by suffix.
FIGURE_SUFFIXES = (".png", ".svg", ".pdf")


def new_figure(width: float, height: float):
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches at 100 dpi with its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def check_figure_path(path: str | Path, example: str = "figure.png") -> Path:
    """``path`` when a figure can be written there (a known suffix, a writable folder), else a one-line error."""
    path = check_writable_file(path, example)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise BadInputError(f"{path}: unknown plot type {path.suffix or '(none)'}; use {', '.join(FIGURE_SUFFIXES)}")
    return path


def figure_bytes(fig, kind: str = "png") -> bytes:
    """``fig`` encoded as ``kind`` (png, svg or pdf)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=kind)
    return buf.getvalue()


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` in the type its suffix names, atomically."""
    path = check_figure_path(path)
    return write_bytes_atomic(path, figure_bytes(fig, path.suffix.lower().lstrip(".")))


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
