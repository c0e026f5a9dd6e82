"""``latentdub plugins`` and ``latentdub presets``."""

from __future__ import annotations

import click


@click.command("plugins")
@click.option("--components", is_flag=True, help="Also list every registered component by kind.")
@click.option("--traceback", "show_traceback", is_flag=True, help="Show the traceback of each plugin that failed.")
def plugins_command(components: bool, show_traceback: bool) -> None:
    """List loaded plugins, their hooks and versions, and plugins that failed to load."""
    from latentdub.toolkit.core.plugins import components as all_components
    from latentdub.toolkit.core.plugins import failed_plugins, plugin_report

    for row in plugin_report():
        version = f" ({row['version']})" if row["version"] else ""
        hooks = ", ".join(row["hooks"]) if row["hooks"] else "-"
        click.echo(f"{row['name']}{version}: {row['status']}; hooks: {hooks}")
    if show_traceback:
        for failed in failed_plugins():
            click.echo(f"\n{failed.name}:\n{failed.detail}")
    if components:
        for kind, table in all_components().items():
            names = sorted({c.name for c in table.values()})
            click.echo(f"{kind}: {', '.join(names) or '-'}")


@click.group("presets")
def presets_group() -> None:
    """List and show presets."""


@presets_group.command("list")
def presets_list() -> None:
    """Shipped presets with their descriptions."""
    from latentdub.toolkit.core.presets import load_preset_data, preset_names

    for name in preset_names():
        click.echo(f"{name}: {load_preset_data(name).get('description', '')}")


@presets_group.command("show")
@click.argument("name")
def presets_show(name: str) -> None:
    """Print preset NAME (or a YAML path) fully resolved, every default filled in."""
    from latentdub.toolkit.core.presets import resolve_preset

    click.echo(resolve_preset(name).to_yaml(), nl=False)


@click.command("doctor")
def doctor_command() -> None:
    """Report what works on this machine: device, ffmpeg, detectors, weights, and what `--preset auto` picks."""
    import os
    import platform
    import subprocess

    import torch

    from latentdub.toolkit.core import weights
    from latentdub.toolkit.core.devices import resolve_device
    from latentdub.toolkit.core.plugins import failed_plugins, plugin_report
    from latentdub.toolkit.core.presets import choose_auto_preset
    from latentdub.toolkit.media.video import ffmpeg_exe

    click.echo(f"python {platform.python_version()}, torch {torch.__version__}; device auto -> {resolve_device('auto')}")
    version = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    click.echo(f"ffmpeg: {version or 'not runnable'} ({ffmpeg_exe()})")
    folder = os.environ.get("LATENTDUB_INSIGHTFACE_DIR")
    click.echo(f"insightface models: {folder if folder else 'no folder (set LATENTDUB_INSIGHTFACE_DIR or detector.model_dir)'}")
    specs = weights.all_weights()
    present = [name for name in specs if weights.locate(name) is not None]
    click.echo(f"weights: {len(present)}/{len(specs)} present{': ' + ', '.join(present) if present else ''} (cache {weights.cache_dir()})")
    rows = plugin_report()
    click.echo(f"plugins: {sum(r['status'] == 'ok' for r in rows)} loaded, {len(failed_plugins())} failed")
    choose_auto_preset(lambda message: click.echo(message))
