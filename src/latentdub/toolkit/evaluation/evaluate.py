"""``latentdub evaluate``: pair generated and reference clips, run metrics, report.

Pairing (see docs/evaluation.md):

* two files form one clip; two folders are matched by file stem (video
  suffixes only), unmatched stems are listed, not scored;
* frames are paired by timestamp: each generated frame at time ``t`` is
  compared with the reference frame whose time is nearest to ``t`` (ties go
  to the earlier frame); pairing stops at the shorter clip, whose duration is
  its frame count divided by its rate;
* a generated frame whose size differs from the reference is resized to the
  reference size (area filter when shrinking, bicubic when enlarging), so
  every pixel and landmark metric is in reference pixels.

Metrics are components of kind ``metric`` (hook ``register_metrics``). Each
built metric has ``columns`` (the table columns it fills) and
``start(clip) -> scorer``; a scorer takes every :class:`FramePair` of the clip
through ``add(pair)`` and returns ``{column: value}`` from ``result()``. A
metric may define ``pooled(scorers) -> {column: value}`` for the summary row
(FID pools all frames); otherwise the summary row is the mean over clips.
A metric whose factory raises :class:`MissingWeightsError` is reported as
``unavailable (missing weights: NAME)`` in every output, never dropped.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np

from ..core.build import BuildContext, build_with_defaults
from ..core.config import config_to_dict, parse_config
from ..core.errors import BadInputError, LatentdubError, MissingWeightsError, PluginError
from ..core.files import check_writable_file, write_text_atomic
from ..core.protocols import ClipScorer, Metric
from ..core.types import ClipPair, Face, Frame, FramePair

#: Metric names run by default, in table order.
DEFAULT_METRICS = ("psnr", "ssim", "fid", "lmd", "lse", "cpbd")
#: Face detector plugin (registered name) for face-based metrics.
DEFAULT_DETECTOR = "dlib"
#: Suffixes of the video files matched between two folders.
VIDEO_SUFFIXES = (".mp4", ".mpg", ".mpeg", ".avi", ".mov", ".mkv", ".webm", ".m4v")
#: Label of the summary row.
SUMMARY_ROW = "mean"


@dataclasses.dataclass
class ClipResult:
    """Scores of one clip: ``values`` by column, ``notes`` say why a value is NaN.

    ``series``: column -> (times s, values) per frame pair, for metrics whose
    scorer has ``series()`` (the per-frame ones: PSNR, SSIM, LMD, CPBD).
    """

    clip: ClipPair
    frames: int
    values: dict[str, float]
    notes: dict[str, str]
    series: dict[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Evaluation:
    """Everything ``evaluate`` reports.

    ``columns``: table columns in order; ``summary``: the summary row;
    ``unavailable``: column -> reason (e.g. ``missing weights: fid-inception``);
    ``unmatched``: files of either side without a partner; ``settings``:
    metric name -> its config as a dict.
    """

    columns: list[str]
    clips: list[ClipResult]
    summary: dict[str, float]
    unavailable: dict[str, str]
    unmatched: list[str]
    settings: dict[str, Any]


# ---------------------------------------------------------------- pairing


def _videos(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES}


def _dataset_references(dataset: Path, split: str) -> dict[str, Path]:
    """Source videos of the clips in ``split`` of a prepared dataset, by clip id."""
    from ..learning.dataset import load_manifest, read_split

    entries = load_manifest(dataset).get("clips", {})
    ids = read_split(dataset, split)
    if not ids:
        raise BadInputError(f"{dataset}: split {split!r} lists no clips; choose another with --split (train, val, test)")
    return {clip: Path(entries[clip]["source"]) for clip in ids if clip in entries}


def pair_inputs(generated: Path, reference: Path, split: str = "test") -> tuple[list[ClipPair], list[str]]:
    """Clips to score, and the unmatched files.

    ``generated``/``reference``: two files, two folders (matched by file stem),
    or a folder and a prepared dataset (``latentdub dataset prepare``), whose
    ``split`` clips are matched to generated files named by clip id.
    Raises :class:`BadInputError` for missing paths, a file paired with a
    folder, or no common names.
    """
    generated, reference = Path(generated), Path(reference)
    for path, role in ((generated, "GENERATED"), (reference, "REFERENCE")):
        if not path.exists():
            raise BadInputError(f"{path}: {role} not found; give a video file or a folder of videos")
    if generated.is_dir() and (reference / "manifest.json").is_file():
        gen, ref = _videos(generated), _dataset_references(reference, split)
        common = sorted(set(gen) & set(ref))
        if not common:
            raise BadInputError(f"{generated}: no file is named after a clip of {reference} split {split!r} (e.g. {next(iter(ref))}.mp4)")
        unmatched = [str(gen[s]) for s in sorted(set(gen) - set(ref))] + [f"{reference}:{s}" for s in sorted(set(ref) - set(gen))]
        return [ClipPair(s, gen[s], ref[s]) for s in common], unmatched
    if generated.is_file() and reference.is_file():
        return [ClipPair(generated.stem, generated, reference)], []
    if generated.is_dir() and reference.is_dir():
        gen, ref = _videos(generated), _videos(reference)
        common = sorted(set(gen) & set(ref))
        if not common:
            raise BadInputError(
                f"{generated} and {reference}: no video file names (stems) in common; "
                f"name each generated clip after its reference (e.g. s1.mp4 <-> s1.mpg)"
            )
        unmatched = [str(gen[s]) for s in sorted(set(gen) - set(ref))] + [str(ref[s]) for s in sorted(set(ref) - set(gen))]
        return [ClipPair(s, gen[s], ref[s]) for s in common], unmatched
    raise BadInputError(f"{generated} and {reference}: give two video files or two folders, not one of each")


def _fit(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if image.shape == shape:
        return image
    import cv2

    h, w = shape[:2]
    shrink = image.shape[0] * image.shape[1] > h * w
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def paired_frames(generated: Iterator[Frame], reference: Iterator[Frame], reference_fps: float) -> Iterator[tuple[Frame, Frame]]:
    """Pair each generated frame with the time-nearest reference frame, up to the shorter clip.

    Streams both sides (two frames of the reference are held at a time). The
    reference ends at its last frame's time plus one frame period.
    """
    ref_iter = iter(reference)
    current = next(ref_iter, None)
    if current is None:
        return
    following = next(ref_iter, None)
    end = math.inf
    for frame in generated:
        t = frame.time
        while following is not None and abs(following.time - t) < abs(current.time - t) - 1e-9:
            current, following = following, next(ref_iter, None)
        if following is None:
            end = current.time + 1.0 / reference_fps
        if t >= end - 1e-9:
            return
        yield frame, current


# ---------------------------------------------------------------- running


def _parse_settings(names: Sequence[str], overrides: Mapping[str, Mapping[str, Any]], components: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise BadInputError(f"--set {unknown[0]}.*: {unknown[0]!r} is not among the metrics run ({', '.join(names)})")
    return {name: parse_config(components[name].config, overrides.get(name, {}), name) for name in names}


def _unavailable_reason(exc: MissingWeightsError, config: Any) -> str:
    name = getattr(config, "weights", None)
    return f"missing weights: {name}" if name else f"missing weights: {exc}"


def evaluate(
    generated: Path,
    reference: Path,
    metrics: Sequence[str] = DEFAULT_METRICS,
    device: str = "auto",
    max_frames: Optional[int] = None,
    detector: str = DEFAULT_DETECTOR,
    settings: Optional[Mapping[str, Mapping[str, Any]]] = None,
    weights: Optional[Callable[[str], Path]] = None,
    log: Callable[[str], None] = lambda message: None,
    split: str = "test",
) -> Evaluation:
    """Score generated clip(s) against reference clip(s).

    ``generated``/``reference``: two video files or two folders (matched by
    stem). ``metrics``: registered metric names, in column order;
    ``max_frames``: score at most this many frame pairs per clip;
    ``detector``: face detector plugin used by face-based metrics;
    ``settings``: per-metric config overrides, e.g. ``{"lmd": {"reduce": "sum"}}``;
    ``weights``: resolver of weight names to paths (default: the weights registry);
    ``split``: the split scored when ``reference`` is a prepared dataset.
    """
    from ..core.devices import resolve_device
    from ..core.plugins import get_component
    from ..media.video import probe_video, read_frames

    clips, unmatched = pair_inputs(generated, reference, split)
    names = list(dict.fromkeys(metrics))
    components = {name: get_component("metric", name) for name in names}
    configs = _parse_settings(names, settings or {}, components)
    if weights is None:
        from ..core import weights as registry

        weights = registry.resolve

    built_detector: list[Any] = []

    def detect(image: np.ndarray) -> list[Face]:
        if not built_detector:
            built_detector.append(build_with_defaults("detector", detector, context))
        return built_detector[0].detect(image)

    def build(stage: str) -> Any:
        raise PluginError(f"metrics cannot build pipeline stage {stage!r}; evaluate provides faces through FramePair")

    context = BuildContext(device=resolve_device(device), weights=weights, build=build, log=log)
    built: dict[str, Metric] = {}
    unavailable: dict[str, str] = {}
    columns: list[str] = []
    for name in names:
        component = components[name]
        try:
            metric = component.factory(configs[name], context)
        except MissingWeightsError as exc:
            metric = None
            reason = _unavailable_reason(exc, configs[name])
            for column in _declared_columns(component):
                unavailable[column] = reason
            columns.extend(_declared_columns(component))
        except LatentdubError:
            raise
        except Exception as exc:
            raise PluginError(f"metric {name!r} ({component.plugin}) failed to build: {type(exc).__name__}: {exc}") from exc
        if metric is not None:
            built[name] = metric
            columns.extend(metric.columns)

    results: list[ClipResult] = []
    per_metric_scorers: dict[str, list[ClipScorer]] = {name: [] for name in built}
    for clip in clips:
        log(f"scoring {clip.name}")
        ref_info = probe_video(clip.reference)
        scorers = {name: metric.start(clip) for name, metric in built.items()}
        count = 0
        stream = paired_frames(read_frames(clip.generated), read_frames(clip.reference, info=ref_info), ref_info.fps)
        for gen, ref in stream:
            pair = FramePair(count, gen.time, _fit(gen.image, ref.image.shape), ref.image, detect)
            for scorer in scorers.values():
                scorer.add(pair)
            count += 1
            if max_frames is not None and count >= max_frames:
                stream.close()
                break
        values: dict[str, float] = {}
        notes: dict[str, str] = {}
        series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, scorer in scorers.items():
            if hasattr(scorer, "series"):
                series.update(scorer.series())
            try:
                values.update(scorer.result())
            except LatentdubError:
                raise
            except Exception as exc:
                for column in built[name].columns:
                    values[column] = math.nan
                    notes[column] = f"{type(exc).__name__}: {exc}"
            per_metric_scorers[name].append(scorer)
        for column, reason in _scorer_notes(scorers).items():
            notes.setdefault(column, reason)
        results.append(ClipResult(clip, count, values, notes, series))

    summary: dict[str, float] = {}
    for name, metric in built.items():
        pooled = getattr(metric, "pooled", None)
        if pooled is not None:
            summary.update(pooled(per_metric_scorers[name]))
            continue
        for column in metric.columns:
            vals = [r.values.get(column, math.nan) for r in results]
            finite = [v for v in vals if np.isfinite(v)]
            summary[column] = float(np.mean(finite)) if finite else math.nan
    return Evaluation(
        columns=columns,
        clips=results,
        summary=summary,
        unavailable=unavailable,
        unmatched=unmatched,
        settings={name: config_to_dict(configs[name]) for name in names},
    )


def _scorer_notes(scorers: Mapping[str, Any]) -> dict[str, str]:
    """Notes scorers leave about NaN values (``scorer.notes``: column -> reason)."""
    out: dict[str, str] = {}
    for scorer in scorers.values():
        out.update(getattr(scorer, "notes", {}) or {})
    return out


def _declared_columns(component: Any) -> tuple[str, ...]:
    """Columns a metric fills, read from its config class (``columns`` ClassVar) without building it."""
    columns = getattr(component.config, "columns", None)
    return tuple(columns) if columns else (component.name.upper(),)


# ---------------------------------------------------------------- reporting

_DECIMALS = {"PSNR": 2, "SSIM": 3, "FID": 2, "LMD": 3, "LSE-D": 3, "LSE-C": 3, "CPBD": 3}


def _cell(evaluation: Evaluation, column: str, value: Optional[float]) -> str:
    if column in evaluation.unavailable:
        return "n/a"
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:.{_DECIMALS.get(column, 3)}f}"


def format_table(evaluation: Evaluation) -> str:
    """The paper-style table: one row per clip, the summary row, then notes on unavailable metrics."""
    header = ["clip", "frames", *evaluation.columns]
    rows = [header]
    for r in evaluation.clips:
        rows.append([r.clip.name, str(r.frames), *(_cell(evaluation, c, r.values.get(c)) for c in evaluation.columns)])
    total = sum(r.frames for r in evaluation.clips)
    rows.append([SUMMARY_ROW, str(total), *(_cell(evaluation, c, evaluation.summary.get(c)) for c in evaluation.columns)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, "  ".join("-" * w for w in widths))
    by_reason: dict[str, list[str]] = {}
    for column, reason in evaluation.unavailable.items():
        by_reason.setdefault(reason, []).append(column)
    for reason, cols in by_reason.items():
        lines.append(f"{', '.join(cols)}: unavailable ({reason})")
    for r in evaluation.clips:
        for column, note in r.notes.items():
            lines.append(f"{r.clip.name} {column}: {note}")
    if "FID" in evaluation.columns and "FID" not in evaluation.unavailable:
        lines.append(f"FID in the {SUMMARY_ROW} row pools the frames of all clips; other columns average the clips.")
    for path in evaluation.unmatched:
        lines.append(f"not scored (no partner with the same name): {path}")
    return "\n".join(lines)


def _value_out(evaluation: Evaluation, column: str, value: Optional[float]) -> Any:
    if column in evaluation.unavailable:
        return f"unavailable ({evaluation.unavailable[column]})"
    if value is None or not np.isfinite(value):
        return None
    return float(value)


def to_dict(evaluation: Evaluation) -> dict[str, Any]:
    """JSON-ready report (NaN becomes ``null``, unavailable metrics carry their reason)."""
    extra = sorted({k for r in evaluation.clips for k in r.values} - set(evaluation.columns))
    return {
        "columns": evaluation.columns,
        "clips": [
            {
                "name": r.clip.name,
                "generated": str(r.clip.generated),
                "reference": str(r.clip.reference),
                "frames": r.frames,
                "metrics": {c: _value_out(evaluation, c, r.values.get(c)) for c in evaluation.columns},
                "extra": {k: _value_out(evaluation, k, r.values.get(k)) for k in extra if k in r.values},
                "notes": r.notes,
            }
            for r in evaluation.clips
        ],
        SUMMARY_ROW: {c: _value_out(evaluation, c, evaluation.summary.get(c)) for c in evaluation.columns},
        "unavailable": {c: f"unavailable ({reason})" for c, reason in evaluation.unavailable.items()},
        "unmatched": evaluation.unmatched,
        "settings": evaluation.settings,
    }


def check_report_path(path: Path) -> Path:
    """Fail before any work when a report cannot be written to ``path``."""
    return check_writable_file(path, "report.json")


def write_json(evaluation: Evaluation, path: Path) -> Path:
    """Write :func:`to_dict` as JSON (written to a temporary file, then renamed)."""
    return write_text_atomic(check_report_path(path), json.dumps(to_dict(evaluation), indent=2) + "\n")


def write_csv(evaluation: Evaluation, path: Path) -> Path:
    """One row per clip plus the summary row; unavailable cells hold their reason, NaN is empty."""
    extra = sorted({k for r in evaluation.clips for k in r.values} - set(evaluation.columns))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["clip", "generated", "reference", "frames", *evaluation.columns, *extra, "notes"])

    def cell(column: str, value: Optional[float]) -> Any:
        out = _value_out(evaluation, column, value)
        return "" if out is None else out

    for r in evaluation.clips:
        notes = "; ".join(f"{c}: {n}" for c, n in r.notes.items())
        writer.writerow([
            r.clip.name, r.clip.generated, r.clip.reference, r.frames,
            *(cell(c, r.values.get(c)) for c in evaluation.columns),
            *(cell(k, r.values.get(k)) for k in extra), notes,
        ])
    writer.writerow([
        SUMMARY_ROW, "", "", sum(r.frames for r in evaluation.clips),
        *(cell(c, evaluation.summary.get(c)) for c in evaluation.columns), *([""] * len(extra)), "",
    ])
    return write_text_atomic(check_report_path(path), buf.getvalue())
