"""``latentdub evaluate GENERATED REFERENCE``: the paper's metrics as a table, CSV and JSON."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import click

from latentdub.toolkit.core.errors import BadInputError


def _parse_sets(items: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        metric, dot, field = key.partition(".")
        if not sep or not dot or not metric or not field:
            raise BadInputError(f"--set {item}: expected METRIC.KEY=VALUE, e.g. --set lmd.reduce=sum")
        out.setdefault(metric.strip(), {})[field.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


@click.command("evaluate")
@click.argument("generated", type=click.Path(exists=False, path_type=Path))
@click.argument("reference", type=click.Path(exists=False, path_type=Path))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the full report as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write one row per clip (and the mean) as CSV.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Plot per-frame PSNR, SSIM, LMD and CPBD over time (.png, .svg or .pdf).")
@click.option("--metrics", default="psnr,ssim,fid,lmd,lse,cpbd", show_default=True, help="Comma-separated metric names (see `latentdub plugins --components`).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps (for FID and LSE networks).")
@click.option("--detector", default="dlib", show_default=True, help="Face detector plugin for LMD, LSE and face-region metrics.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Score at most this many frame pairs per clip.")
@click.option("--set", "overrides", multiple=True, metavar="METRIC.KEY=VALUE",
              help="Metric setting, e.g. --set lmd.reduce=sum, --set fid.weights=/path/pt_inception.pth (repeatable).")
@click.option("--split", default="test", show_default=True, help="Split scored when REFERENCE is a prepared dataset.")
@click.option("--quiet", "-q", is_flag=True, help="Do not print progress lines.")
@click.option("--overwrite", is_flag=True, help="Replace existing --json/--csv/--plot files.")
def evaluate_command(generated, reference, json_path, csv_path, plot_path, metrics, device, detector, max_frames, overrides, split, quiet, overwrite):
    """Score GENERATED against REFERENCE: two videos, two folders matched by file
    name, or a folder of clips named by clip id against a prepared dataset's split.

    Frames are paired by timestamp up to the shorter clip. Prints one row per
    clip and a mean row (PSNR, SSIM, FID, LMD, LSE-D, LSE-C, CPBD); metrics
    whose weights are missing are shown as unavailable, never dropped.
    """
    from latentdub.toolkit.core.files import check_not_an_input, claim_outputs, same_file
    from latentdub.toolkit.evaluation.evaluate import check_report_path, evaluate, format_table, pair_inputs, write_csv, write_json
    from latentdub.toolkit.evaluation.plots import check_plot_path, write_plot

    names = [m.strip() for m in metrics.split(",") if m.strip()]
    if not names:
        raise BadInputError("--metrics: give at least one metric name, e.g. --metrics psnr,ssim")
    reports = [path for path in (csv_path, json_path, plot_path) if path is not None]
    if any(same_file(a, b) for i, a in enumerate(reports) for b in reports[i + 1:]):
        raise BadInputError("--csv, --json and --plot: two of them name the same file; give each its own")
    clips, _ = pair_inputs(generated, reference, split)
    inputs = {f"{role} clip {clip.name}": path for clip in clips for role, path in (("generated", clip.generated), ("reference", clip.reference))}
    for path in reports:
        check_not_an_input(path, inputs)
        (check_plot_path if path is plot_path else check_report_path)(path)
    log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    with claim_outputs(reports, inputs, overwrite) if reports else contextlib.nullcontext():
        result = evaluate(
            generated, reference, metrics=names, device=device, max_frames=max_frames,
            detector=detector, settings=_parse_sets(overrides), log=log, split=split,
        )
        click.echo(format_table(result))
        for path, write in ((csv_path, write_csv), (json_path, write_json), (plot_path, write_plot)):
            if path is not None:
                write(result, path)
                log(f"wrote {path}")
