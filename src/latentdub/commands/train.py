"""``latentdub train``: Stage-1 training of the audio2latent motion model on a prepared dataset."""

from __future__ import annotations

from pathlib import Path

import click

from .options import load_preset, maybe_dry_run, preset_options


@click.command("train")
@click.argument("dataset_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--output", "-o", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run folder: log.csv, checkpoints, audio2latent.safetensors.")
@click.option("--steps", type=int, default=None, help="Total optimiser steps (default: motion.train.steps of the preset).")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in OUTPUT (optimizer state included).")
@preset_options
def train_command(dataset_dir, run_dir, steps, resume, preset, overrides, device, dry_run, quiet):
    """Train the preset's audio2latent motion model on DATASET_DIR (from `latentdub dataset prepare`).

    Hyperparameters are the preset's motion.train settings, e.g.
    --set motion.train.lr=3e-4 --set motion.train.batch_size=32.
    """
    from latentdub.toolkit.learning.training import train

    log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    resolved = load_preset(preset, tuple(overrides), device, log)
    if maybe_dry_run(resolved, dry_run):
        return
    summary = train(dataset_dir, run_dir, preset=resolved, steps=steps, resume=resume, log=log, progress=not quiet)
    if not quiet:
        for line in summary.lines():
            click.echo(line, err=True)
