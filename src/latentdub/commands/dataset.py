"""``latentdub dataset prepare``: Stage-1 training data from a folder of talking-head clips."""

from __future__ import annotations

from pathlib import Path

import click

from latentdub.toolkit.learning.dataset import LAYOUTS

from .options import load_preset, maybe_dry_run, preset_options


@click.group("dataset")
def dataset_group() -> None:
    """Prepare training data for `latentdub train`."""


@dataset_group.command("prepare")
@click.argument("source_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--output", "-o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Dataset folder (created; an existing one is resumed).")
@click.option("--layout", type=click.Choice(LAYOUTS), default="folder", show_default=True, help="How clips and speakers are laid out in SOURCE_DIR.")
@click.option("--speaker-map", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Text file of 'CLIP SPEAKER' lines (overrides the layout's speakers).")
@click.option("--val-fraction", type=float, default=0.1, show_default=True, help="Share of speakers held out for validation.")
@click.option("--test-fraction", type=float, default=0.1, show_default=True, help="Share of speakers held out for testing.")
@click.option("--seed", type=int, default=None, help="Seed of the speaker split (default: the preset's seed).")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Crops inverted per encoder call.")
@preset_options
def prepare_command(source_dir, out_dir, layout, speaker_map, val_fraction, test_fraction, seed, batch_size, preset, overrides, device, dry_run, quiet):
    """Track, align and invert every frame of the clips in SOURCE_DIR, with their MFCC windows.

    Writes one shard per clip, manifest.json and speaker-disjoint
    splits/{train,val,test}.txt to OUTPUT; a second run skips finished clips.
    """
    from latentdub.toolkit.learning.dataset import prepare_dataset

    log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    resolved = load_preset(preset, tuple(overrides), device, log)
    if maybe_dry_run(resolved, dry_run):
        return
    summary = prepare_dataset(
        source_dir, out_dir, layout=layout, preset=resolved, speaker_map=speaker_map, val_fraction=val_fraction,
        test_fraction=test_fraction, seed=seed, batch_size=batch_size, log=log, progress=not quiet,
    )
    if not quiet:
        for line in summary.lines():
            click.echo(line, err=True)
