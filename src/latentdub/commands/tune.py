"""``latentdub tune``: Stage 2, an identity profile from an image or a video of one person."""

from __future__ import annotations

from pathlib import Path

import click

from .options import input_file, load_preset, maybe_dry_run, overwrite_option, preset_options
from .run import _log


@click.command("tune")
@click.argument("source", metavar="IMAGE_OR_VIDEO", type=input_file)
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Identity profile to write (safetensors), for --profile of dub/animate.")
@preset_options
@overwrite_option
def tune_command(source, output, preset, overrides, device, dry_run, quiet, overwrite):
    """Tune the generator to the person in IMAGE_OR_VIDEO (pivotal tuning) and write the profile OUTPUT."""
    from latentdub.toolkit.learning.tuning import tune

    log = _log(quiet)
    resolved = load_preset(preset, tuple(overrides), device, log)
    if maybe_dry_run(resolved, dry_run):
        return
    summary = tune(source, output, preset=resolved, progress=not quiet, log=log, overwrite=overwrite)
    if not quiet:
        for line in summary.lines():
            click.echo(line, err=True)
