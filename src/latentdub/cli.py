"""The ``latentdub`` command group: a thin shell over the commands/ modules.

Commands are imported on first use and plugins are loaded only when a
command needs them, so a broken plugin never breaks ``latentdub --help``.
Errors print one line (``error: ...``) and exit with the code documented in
:mod:`latentdub.toolkit.core.errors`; warnings and log lines of third-party
libraries are kept off the terminal unless ``--debug`` is given.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import sys
import warnings
from typing import Iterator

import click

from latentdub.toolkit.core.errors import EXIT_CODES, EXIT_INTERRUPTED, LatentdubError

#: Loggers of libraries that print routine chatter (shown with --debug).
NOISY_LOGGERS = ("torch", "numba", "librosa", "pydub", "onnxruntime", "insightface", "PIL", "matplotlib", "urllib3")

#: Built-in commands: name -> "module:attribute" (imported lazily).
COMMANDS = {
    "dub": "latentdub.commands.run:dub_command",
    "animate": "latentdub.commands.run:animate_command",
    "tune": "latentdub.commands.tune:tune_command",
    "dataset": "latentdub.commands.dataset:dataset_group",
    "train": "latentdub.commands.train:train_command",
    "directions": "latentdub.commands.directions:directions_group",
    "evaluate": "latentdub.commands.evaluate:evaluate_command",
    "batch": "latentdub.commands.batch:batch_command",
    "weights": "latentdub.commands.weights:weights",
    "plugins": "latentdub.commands.info:plugins_command",
    "doctor": "latentdub.commands.info:doctor_command",
    "presets": "latentdub.commands.info:presets_group",
}

EXIT_CODE_HELP = "\b\nExit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items())


class LazyGroup(click.Group):
    """Imports built-in commands on demand and adds commands from plugins."""

    def _plugin_commands(self) -> dict[str, click.Command]:
        if not hasattr(self, "_extra"):
            self._extra: dict[str, click.Command] = {}
            try:
                from latentdub.toolkit.core.plugins import get_plugin_manager

                holder = click.Group()
                get_plugin_manager().hook.register_commands(cli=holder)
                self._extra = dict(holder.commands)
            except Exception as exc:  # a broken plugin must not break the CLI
                click.echo(f"warning: plugin commands unavailable ({type(exc).__name__}: {exc})", err=True)
        return self._extra

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands) | set(self._plugin_commands()))

    def get_command(self, ctx: click.Context, name: str):
        if name in self.commands:
            return self.commands[name]
        if name in COMMANDS:
            module, attr = COMMANDS[name].split(":")
            try:
                return getattr(importlib.import_module(module), attr)
            except Exception as exc:  # keep --help and the other commands working
                return _unavailable(name, exc)
        return self._plugin_commands().get(name)

    def invoke(self, ctx: click.Context):
        debug = bool(ctx.params.get("debug") or os.environ.get("LATENTDUB_DEBUG"))
        if debug:
            return super().invoke(ctx)
        with _third_party_quiet():
            try:
                return super().invoke(ctx)
            except (click.exceptions.Exit, click.Abort):
                raise
            except LatentdubError as exc:
                _fail(ctx, str(exc), exc.exit_code)
            except click.UsageError as exc:  # bad options of a sub-command: one line, not click's usage block
                where = exc.ctx.command_path if exc.ctx else ctx.command_path
                _fail(ctx, f"{exc.format_message()} (see `{where} --help`)", exc.exit_code)
            except click.ClickException as exc:
                _fail(ctx, exc.format_message(), exc.exit_code)
            except KeyboardInterrupt:
                _fail(ctx, "interrupted; partial files were removed", EXIT_INTERRUPTED)
            except OSError as exc:  # the system refused a file operation no check foresaw (disk full, permissions)
                where = f"{exc.filename}: " if exc.filename else ""
                _fail(ctx, f"{where}{exc.strerror or exc}; check free space and permissions", 2)
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                _fail(ctx, f"internal error ({type(exc).__name__}: {first}); this is a bug: rerun with --debug and report the traceback", 1)


def _fail(ctx: click.Context, message: str, code: int) -> None:
    click.echo(f"error: {' '.join(message.split())}", err=True)
    ctx.exit(code)


@contextlib.contextmanager
def _third_party_quiet() -> Iterator[None]:
    """Drop warnings (here and in worker processes) and lower :data:`NOISY_LOGGERS` to errors while a command runs."""
    loggers = {name: logging.getLogger(name) for name in NOISY_LOGGERS}
    levels = {name: logger.level for name, logger in loggers.items()}
    env = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = "ignore"  # spawned batch workers inherit it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for logger in loggers.values():
                logger.setLevel(logging.ERROR)
            yield
    finally:
        for name, logger in loggers.items():
            logger.setLevel(levels[name])
        if env is None:
            os.environ.pop("PYTHONWARNINGS", None)
        else:
            os.environ["PYTHONWARNINGS"] = env


def _unavailable(name: str, exc: Exception) -> click.Command:
    reason = f"{type(exc).__name__}: {exc}".splitlines()[0]

    @click.command(name, help=f"(unavailable: {reason})", context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args):
        click.echo(f"error: command {name!r} is unavailable ({reason}); reinstall latentdub", err=True)
        raise SystemExit(5)

    return command


@click.group(cls=LazyGroup, epilog=EXIT_CODE_HELP)
@click.version_option(package_name="latentdub")
@click.option("--debug", is_flag=True, help="Show full tracebacks and third-party warnings instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Re-lip-sync talking-head video to new speech (StyleGAN2 latent-space dubbing)."""
    ctx.obj = {"debug": debug or bool(os.environ.get("LATENTDUB_DEBUG"))}


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Console entry point; SIGTERM stops a run as Ctrl-C does (partial files removed, exit 130)."""
    signal.signal(signal.SIGTERM, _interrupt)
    cli.main(args=argv, prog_name="latentdub")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
