"""Options shared by the commands that run a preset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import click

from latentdub.toolkit.core.presets import Preset, resolve_preset


def preset_options(func: Callable) -> Callable:
    """--preset, --set, --device, --dry-run, --quiet."""
    func = click.option("--quiet", "-q", is_flag=True, help="No progress bars or summary.")(func)
    func = click.option("--dry-run", is_flag=True, help="Print the resolved preset and exit without running.")(func)
    func = click.option("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (same as --set device=...).")(func)
    func = click.option(
        "--set", "overrides", multiple=True, metavar="STAGE.KEY=VALUE",
        help="Override a preset setting, e.g. --set output.crf=20 or --set detector.plugin=mtcnn (repeatable).",
    )(func)
    func = click.option(
        "--preset", "-p", default="auto", show_default=True,
        help="Shipped preset name (see `latentdub presets list`) or a YAML file. `auto` uses the neural "
        "preset when its weights are present, else the `offline` preset (CPU, no downloads: the clip's own mouths).",
    )(func)
    return func


def overwrite_option(func: Callable) -> Callable:
    """--overwrite: let the run replace existing output files (never its inputs)."""
    return click.option(
        "--overwrite", is_flag=True, default=None,
        help="Replace existing output files (same as --set output.overwrite=true); inputs are never replaced.",
    )(func)


def load_preset(preset: str, overrides: tuple[str, ...], device: str | None, log: Callable[[str], None]) -> Preset:
    """Resolve the preset named on the command line, with overrides applied."""
    from latentdub.toolkit.core.presets import choose_auto_preset

    extra = list(overrides) + ([f"device={device}"] if device else [])
    if preset == "auto":
        preset = choose_auto_preset(log)
    return resolve_preset(preset, extra)


def transcript_override(transcript: str | None) -> list[str]:
    """The ``motion.transcript`` override for ``transcript`` (the spoken text, or a text file holding it); none for None."""
    if not transcript:
        return []
    path = Path(transcript)
    text = path.read_text().strip() if path.is_file() else transcript
    return [f"motion.transcript={json.dumps(text)}"]  # a JSON string is a YAML string, whatever quotes the text holds


def maybe_dry_run(preset: Preset, dry_run: bool) -> bool:
    """Print the resolved preset when --dry-run was given; True means stop."""
    if dry_run:
        click.echo(preset.to_yaml(), nl=False)
    return dry_run


#: A file argument checked by the toolkit (one message for missing, folder, empty and unreadable files).
input_file = click.Path(path_type=Path)
