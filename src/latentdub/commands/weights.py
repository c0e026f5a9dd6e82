"""``latentdub weights``: list, fetch, verify and locate named weights.

Errors propagate as :class:`~latentdub.toolkit.core.errors.LatentdubError`; the
top-level CLI turns them into ``error: <message>`` and the class's exit code.
"""

from __future__ import annotations

import click

from latentdub.toolkit.core import weights as registry
from latentdub.toolkit.core.errors import MissingWeightsError


def _human(size: int) -> str:
    if size <= 0:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@click.group("weights")
def weights() -> None:
    """Named weights: list, fetch, verify and locate them."""


@weights.command("list")
def list_weights() -> None:
    """One row per registered weight: name, size, whether it is on disk, licence."""
    specs = registry.all_weights()
    if not specs:
        click.echo("no weights registered")
        return
    rows = [("NAME", "SIZE", "CACHED", "LICENCE")]
    for name, spec in specs.items():
        found = registry.locate(name)
        if found is None:
            cached = "no"
        elif found == registry.cache_dir() / spec.filename:
            cached = "yes"
        else:
            cached = "local"
        rows.append((name, _human(spec.size), cached, spec.licence or "?"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])
    for dup in registry.duplicate_weights():
        click.echo(f"note: weight {dup.name!r} from {dup.loser} is overridden by {dup.winner}", err=True)
    for plugin, error in registry.failed_weight_plugins():
        click.echo(f"warning: plugin {plugin} failed to register weights: {error}", err=True)


@weights.command("fetch")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option("--force", is_flag=True, help="Download again even if a copy of the right size is cached.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def fetch_weights(names: tuple[str, ...], force: bool, quiet: bool) -> None:
    """Download weights into the cache, verified by size and SHA-256; prints each path."""
    for name in names:
        click.echo(str(registry.fetch(name, progress=not quiet, force=force)))


@weights.command("verify")
@click.argument("names", nargs=-1, metavar="[NAME...]")
def verify_weights(names: tuple[str, ...]) -> None:
    """Hash the weights on disk against their registered SHA-256 (default: all registered).

    Fails (exit 3) when a copy is corrupt, or when a NAME given explicitly is missing.
    """
    rows = registry.verify(list(names) or None)
    for name, status in rows:
        click.echo(f"{name}: {status}")
    bad = [name for name, status in rows if status.startswith("corrupt") or (names and status == "missing")]
    if bad:
        raise MissingWeightsError(
            f"{len(bad)} weight(s) failed verification: {', '.join(bad)}; re-download with `latentdub weights fetch NAME --force`"
        )


@weights.command("path")
@click.argument("name")
def path_weights(name: str) -> None:
    """Print where NAME is found on disk, else where `fetch` would put it."""
    click.echo(str(registry.locate(name) or registry.path(name)))
