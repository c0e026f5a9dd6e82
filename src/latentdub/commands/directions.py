"""``latentdub directions fit`` and ``show``: shared mouth directions for portraits, short clips and as a prior of per-clip fits."""

from __future__ import annotations

from pathlib import Path

import click

from .options import load_preset, maybe_dry_run, preset_options
from .run import _log


@click.group("directions")
def directions_group() -> None:
    """Fit and inspect shared mouth directions in W+ (used by the clipfit motion model)."""


@directions_group.command("fit")
@click.argument("source", metavar="DATASET_OR_CLIPS", type=click.Path(path_type=Path))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Directions file to write (.safetensors); name it mouth-directions.safetensors in the cache to make it the default prior.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Crops inverted per encoder call (clips, not datasets).")
@preset_options
def fit_command(source, output, batch_size, preset, overrides, device, dry_run, quiet):
    """Fit mouth directions over many clips: a prepared dataset (`latentdub dataset prepare`), a folder of clips or one video.

    The preset's detector, encoder and generator are used; its motion
    section (clipfit) gives the layers and the frames used per clip.
    """
    from ..toolkit.learning.directions import fit_directions

    log = _log(quiet)
    resolved = load_preset(preset, tuple(overrides), device, log)
    if maybe_dry_run(resolved, dry_run):
        return
    shared = fit_directions(source, output, resolved, batch_size=batch_size, log=log, progress=not quiet)
    if not quiet:
        for line in describe(shared):
            click.echo(line, err=True)
        click.echo(f"wrote {output}", err=True)


@directions_group.command("show")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def show_command(file):
    """Print how the directions FILE (path or weight name) was fitted."""
    from ..toolkit.core.weights import resolve
    from ..toolkit.learning.directions import SharedDirections

    for line in describe(SharedDirections.load(resolve(str(file)))):
        click.echo(line)


def describe(shared) -> list[str]:
    """Summary lines of :class:`~latentdub.toolkit.learning.directions.SharedDirections`."""
    info = shared.info
    lo, hi = shared.mouth_range
    return [
        f"mouth directions over {info.get('clips')} clips, {info.get('frames')} frames, layers {list(shared.layers)} of {shared.directions.shape[1]}",
        f"cross-validated R^2 {info.get('r2')} overall, {info.get('r2_mouth')} from the mouth beyond head pose ({info.get('folds')} folds, lambda {info.get('alpha'):.0e})",
        "mouth range seen: " + ", ".join(f"{name} {a:.3f}..{b:.3f}" for name, a, b in zip(shared.features, lo, hi)),
        f"generator fingerprint {shared.fingerprint[:16]}, encoder {info.get('encoder', {}).get('plugin')}",
    ]
