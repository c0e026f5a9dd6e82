"""Error hierarchy of latentdub and the CLI exit code each one maps to.

Every error carries a one-line message that names the offending file or
setting and, where there is one, the fix. The CLI prints ``error: <message>``
and exits with the class's ``exit_code``.
"""

from __future__ import annotations


class LatentdubError(Exception):
    """Base class; exit code 1 is reserved for unexpected internal errors."""

    exit_code = 1


class BadInputError(LatentdubError):
    """An input file, argument, preset or manifest is unusable (exit 2)."""

    exit_code = 2


class ConfigError(BadInputError):
    """A preset or override names an unknown key or a value of the wrong type (exit 2)."""


class MissingWeightsError(LatentdubError):
    """A named weight file is neither cached nor given locally (exit 3)."""

    exit_code = 3


class NoFaceError(LatentdubError):
    """No usable face was found where one is required (exit 4)."""

    exit_code = 4


class PluginError(LatentdubError):
    """A plugin is missing, failed to load, or raised while building (exit 5)."""

    exit_code = 5


class CannotServeError(LatentdubError):
    """A component cannot serve this input (for example a per-clip fit too weak to trust) (exit 7).

    Raised during ``study``, ``prepare`` or ``predict``; the run then goes on
    with the preset's ``fallback`` preset and says why. Exit 7 only when the
    preset names no fallback.
    """

    exit_code = 7


class OutputError(BadInputError):
    """The output path cannot be written (exit 2)."""


#: Exit code of a run stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130

EXIT_CODES = {
    0: "success",
    1: "internal error (a bug: please report it with the traceback from --debug)",
    2: "bad input: a file, argument, preset or manifest is unusable",
    3: "missing weights: fetch them with `latentdub weights fetch NAME` or pass a local path",
    4: "no face: no usable face in the input where one is required",
    5: "plugin error: a plugin is missing, failed to load or failed to build",
    6: "batch finished with failed clips (see the summary)",
    7: "cannot serve: the preset cannot handle this input and names no fallback preset (the message says why)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C or SIGTERM); partial files were removed",
}
