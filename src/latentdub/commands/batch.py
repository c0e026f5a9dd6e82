"""``latentdub batch``: dub every clip of a manifest, resumably."""

from __future__ import annotations

from pathlib import Path

import click

#: Exit code when the batch finished but some clips failed (documented in toolkit.core.errors.EXIT_CODES).
EXIT_SOME_FAILED = 6


@click.command("batch")
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--workers", "-j", type=click.IntRange(min=1), default=1, show_default=True, help="Clips dubbed at the same time.")
@click.option(
    "--executor", type=click.Choice(["inline", "local", "ray"]), default=None,
    help="inline (this process), local (a pool of --workers processes) or ray. Default: inline for one worker, else local.",
)
@click.option("--ray-address", default=None, help="Address of a running Ray cluster (default: start a local Ray).")
@click.option("--retries", type=click.IntRange(min=0), default=1, show_default=True, help="Extra tries for a clip that failed for a reason other than bad input.")
@click.option("--preset", "-p", default=None, help="Preset for clips that name none (replaces the manifest's top-level preset).")
@click.option("--set", "overrides", multiple=True, metavar="STAGE.KEY=VALUE", help="Override a preset setting for every clip (repeatable).")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (same as --set device=...).")
@click.option("--summary", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the summary (FILE.csv and FILE.json; default beside the journal).")
@click.option("--quiet", "-q", is_flag=True, help="Only the final table (no progress bars or log lines).")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs this batch's journal did not make (its own are redone only when they changed).")
@click.pass_context
def batch_command(ctx, manifest, workers, executor, ray_address, retries, preset, overrides, device, summary, quiet, overwrite):
    """Dub every clip listed in MANIFEST (.yaml or .csv; see docs/batch.md).

    A journal beside the outputs records each clip; running the same command
    again skips clips that are finished and still verify, redoes interrupted
    ones and retries failures. Exits 6 when some clips failed.
    """
    from latentdub.toolkit.batch.run import run_batch

    executor = executor or ("inline" if workers == 1 else "local")
    log = (lambda message: None) if quiet else (lambda message: click.echo(message, err=True))
    result = run_batch(
        manifest, workers=workers, executor=executor, ray_address=ray_address, retries=retries, preset=preset,
        overrides=[*overrides, *([f"device={device}"] if device else [])], log=log,
        progress=not quiet, summary=summary, verbose=not quiet, overwrite=overwrite,
    )
    click.echo("\n".join(result.lines()))
    if not result.ok:
        ctx.exit(EXIT_SOME_FAILED)
