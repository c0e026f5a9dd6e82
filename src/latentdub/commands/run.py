"""``latentdub dub`` and ``latentdub animate``."""

from __future__ import annotations

from pathlib import Path

import click

from .options import input_file, load_preset, maybe_dry_run, overwrite_option, preset_options, transcript_override

REVIEW_HELP = "Also write OUTPUT's review page (OUT.review.html): source and dub in step, mouth opening over time (same as --set output.review=true)."


def _log(quiet: bool):
    return (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))


def _run(action, source, audio, output, profile, transcript, review, preset, overrides, device, dry_run, quiet, overwrite) -> None:
    """Resolve the preset as the options say, then run ``action`` (pipeline.dub or pipeline.animate)."""
    log = _log(quiet)
    extra = (*transcript_override(transcript), *(["output.review=true"] if review else []))
    resolved = load_preset(preset, tuple(overrides) + extra, device, log)
    if maybe_dry_run(resolved, dry_run):
        return
    summary = action(source, audio, output, preset=resolved, profile=profile, progress=not quiet, log=log, overwrite=overwrite)
    if not quiet:
        for line in summary.lines():
            click.echo(line, err=True)


@click.command("dub")
@click.argument("video", type=input_file)
@click.argument("audio", type=input_file)
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="Output video (.mp4).")
@click.option("--profile", type=click.Path(path_type=Path), default=None, help="Identity profile from `latentdub tune`.")
@click.option("--transcript", default=None, help="Text (or a text file) of the speech; improves the offline backends' timing.")
@click.option("--review", is_flag=True, help=REVIEW_HELP)
@preset_options
@overwrite_option
def dub_command(video, audio, output, profile, transcript, review, preset, overrides, device, dry_run, quiet, overwrite):
    """Re-lip-sync VIDEO to the speech in AUDIO and write OUTPUT."""
    from latentdub.toolkit.dubbing.pipeline import dub

    _run(dub, video, audio, output, profile, transcript, review, preset, overrides, device, dry_run, quiet, overwrite)


@click.command("animate")
@click.argument("image", type=input_file)
@click.argument("audio", type=input_file)
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="Output video (.mp4).")
@click.option("--profile", type=click.Path(path_type=Path), default=None, help="Identity profile from `latentdub tune`.")
@click.option("--transcript", default=None, help="Text (or a text file) of the speech.")
@click.option("--review", is_flag=True, help=REVIEW_HELP)
@preset_options
@overwrite_option
def animate_command(image, audio, output, profile, transcript, review, preset, overrides, device, dry_run, quiet, overwrite):
    """Animate the portrait IMAGE with the speech in AUDIO and write OUTPUT."""
    from latentdub.toolkit.dubbing.pipeline import animate

    _run(animate, image, audio, output, profile, transcript, review, preset, overrides, device, dry_run, quiet, overwrite)
