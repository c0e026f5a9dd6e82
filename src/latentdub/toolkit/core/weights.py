"""Registry of named weights: where each lives, how it is fetched and verified.

Plugins register weights through the ``register_weights`` hook::

    @hookimpl
    def register_weights(register):
        register(WeightSpec("stylegan2-ffhq-256", "stylegan2-ffhq-256.pt", URL, SHA256, SIZE, "Apache-2.0"))

Lookup order for a registered name: each folder in ``LATENTDUB_WEIGHTS_DIR``
(``os.pathsep``-separated, searched by file name), then the cache folder
(``LATENTDUB_CACHE``, else ``$XDG_CACHE_HOME/latentdub``, else
``~/.cache/latentdub``). A user-given file or folder path needs no registry.
Downloads stream to a unique ``.part`` file beside the target, are hashed
while streaming, and are moved into place only once size and SHA-256 match.
``LATENTDUB_OFFLINE=1`` (or ``offline=True``) forbids any network access.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import logging
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

from .errors import BadInputError, MissingWeightsError

log = logging.getLogger(__name__)

CACHE_ENV = "LATENTDUB_CACHE"
WEIGHTS_DIR_ENV = "LATENTDUB_WEIGHTS_DIR"
OFFLINE_ENV = "LATENTDUB_OFFLINE"

#: Bytes read per step when downloading or hashing.
CHUNK = 1 << 20
#: Seconds a socket may stay silent before a download is abandoned.
DEFAULT_TIMEOUT = 60.0
_SCHEMES = ("http", "https", "file")
_KINDS = ("file", "folder")


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """A named weight file or folder: where it comes from, its checksum, size and licence.

    ``sha256`` (lower-case hex) and ``size`` (bytes) describe the downloaded
    file; ``""`` and ``0`` mean unknown (not checked). ``kind="folder"`` means
    ``url`` serves a ``.zip`` archive that is unpacked into the folder
    ``filename`` (the checksum and size are the archive's). ``plugin`` is
    filled in by the registry with the name of the plugin that registered it.
    """

    name: str
    filename: str
    url: str
    sha256: str
    size: int
    licence: str
    description: str = ""
    kind: str = "file"
    plugin: str = ""


@dataclasses.dataclass(frozen=True)
class Duplicate:
    """A weight name registered twice: the later registration (``winner``) is kept."""

    name: str
    loser: str
    winner: str


@dataclasses.dataclass
class _Registry:
    specs: dict[str, WeightSpec]
    duplicates: list[Duplicate]
    failures: list[tuple[str, str]]


_last = _Registry({}, [], [])


# ---------------------------------------------------------------- settings


def cache_dir() -> Path:
    """The cache folder downloads go to (it is not created here)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "latentdub"


def weights_dirs() -> list[Path]:
    """The user's local weight folders from ``LATENTDUB_WEIGHTS_DIR``, in search order."""
    env = os.environ.get(WEIGHTS_DIR_ENV, "")
    return [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]


def is_offline(offline: Optional[bool] = None) -> bool:
    """``offline`` if given, else whether ``LATENTDUB_OFFLINE`` is set to a true value."""
    if offline is not None:
        return bool(offline)
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


# ---------------------------------------------------------------- registry


def _check_spec(spec: object) -> WeightSpec:
    if not isinstance(spec, WeightSpec):
        raise BadInputError(f"register_weights: expected a WeightSpec, got {type(spec).__name__}")
    fname = spec.filename
    if not spec.name or not fname or fname in (".", "..") or "/" in fname or "\\" in fname:
        raise BadInputError(f"register_weights: weight {spec.name!r} needs a plain file name, got {fname!r}")
    if spec.kind not in _KINDS:
        raise BadInputError(f"register_weights: weight {spec.name!r} has kind {spec.kind!r}; use one of {', '.join(_KINDS)}")
    return spec


def all_weights() -> dict[str, WeightSpec]:
    """Every registered weight, ``{name: WeightSpec}``, sorted by name.

    Plugins are asked in registration order, so a later plugin (third party,
    test) overrides a built-in of the same name; see :func:`duplicate_weights`.
    A plugin whose hook raises is skipped and listed in :func:`failed_weight_plugins`.
    """
    from .plugins import call_each

    specs: dict[str, WeightSpec] = {}
    duplicates: list[Duplicate] = []

    def make_register(plugin: str) -> Callable[[WeightSpec], None]:
        def register(spec: WeightSpec) -> None:
            spec = dataclasses.replace(_check_spec(spec), plugin=plugin)
            if spec.name in specs:
                duplicates.append(Duplicate(spec.name, specs[spec.name].plugin, plugin))
            specs[spec.name] = spec

        return register

    failures = [(f.name, f.error) for f in call_each("register_weights", make_register)]
    for plugin, error in failures:
        log.warning("plugin %s failed to register weights: %s", plugin, error)
    _last.specs = dict(sorted(specs.items()))
    _last.duplicates = duplicates
    _last.failures = failures
    return dict(_last.specs)


def duplicate_weights() -> list[Duplicate]:
    """Names registered more than once at the last :func:`all_weights` call."""
    return list(_last.duplicates)


def failed_weight_plugins() -> list[tuple[str, str]]:
    """``(plugin, error)`` for plugins whose ``register_weights`` raised at the last :func:`all_weights` call."""
    return list(_last.failures)


def get_spec(name: str) -> WeightSpec:
    """The registered spec of ``name``, or :class:`BadInputError` listing the known names."""
    specs = all_weights()
    try:
        return specs[name]
    except KeyError:
        known = ", ".join(specs) or "none"
        raise BadInputError(f"unknown weight {name!r} (registered: {known}); see `latentdub weights list`") from None


# ---------------------------------------------------------------- lookup


def path(name: str) -> Path:
    """Where the registered weight ``name`` lives in the cache (whether or not it is there)."""
    return cache_dir() / get_spec(name).filename


def _size_problem(spec: WeightSpec, where: Path) -> Optional[str]:
    """Why ``where`` cannot be the weight (missing, wrong kind or size), or None."""
    if spec.kind == "folder":
        return None if where.is_dir() else ("not a folder" if where.exists() else "missing")
    if not where.is_file():
        return "not a file" if where.exists() else "missing"
    if spec.size > 0 and where.stat().st_size != spec.size:
        return f"size {where.stat().st_size} bytes, expected {spec.size}"
    return None


def _candidates(spec: WeightSpec) -> list[Path]:
    return [d / spec.filename for d in weights_dirs()] + [cache_dir() / spec.filename]


def locate(name: str) -> Optional[Path]:
    """The first usable copy of registered ``name`` (weights dirs, then cache), or None; never downloads."""
    spec = get_spec(name)
    return next((p for p in _candidates(spec) if _size_problem(spec, p) is None), None)


def _looks_like_path(value: Union[str, os.PathLike]) -> bool:
    if isinstance(value, os.PathLike):
        return True
    return "/" in value or os.sep in value or value.startswith(("~", "."))


def resolve(name_or_path: Union[str, os.PathLike], offline: Optional[bool] = None, fetch: bool = False) -> Path:
    """A local path for a registered weight name or a user-given file or folder path.

    A path (``Path``, or a string with a separator or a leading ``~``/``.``)
    is returned as is when it exists. A registered name is looked up in
    :func:`weights_dirs` then :func:`cache_dir` (size checked, not hashed);
    when absent it is downloaded if ``fetch`` and not offline. Raises
    :class:`MissingWeightsError` with the paths looked at and the fix.
    """
    if _looks_like_path(name_or_path):
        given = Path(name_or_path).expanduser()
        if given.exists():
            return given
        raise MissingWeightsError(f"weight file {given} does not exist; pass an existing file or folder, or a name from `latentdub weights list`")
    name = str(name_or_path)
    specs = all_weights()
    if name not in specs:
        if Path(name).exists():
            return Path(name)
        known = ", ".join(specs) or "none"
        raise MissingWeightsError(f"weight {name!r} is neither a registered name (registered: {known}) nor an existing file; pass a path to a local file")
    spec = specs[name]
    looked = []
    for candidate in _candidates(spec):
        problem = _size_problem(spec, candidate)
        if problem is None:
            return candidate
        looked.append(str(candidate) if problem == "missing" else f"{candidate} ({problem})")
    offline_now = is_offline(offline)
    if fetch and not offline_now:
        return _fetch(spec, progress=True, force=False)
    mode = f" (offline mode: {OFFLINE_ENV}=1)" if offline_now and fetch else ""
    raise MissingWeightsError(
        f"weight {name!r} ({spec.filename}) not found{mode}; looked at: {', '.join(looked)}; "
        f"fetch it with `latentdub weights fetch {name}`, put {spec.filename} in {WEIGHTS_DIR_ENV}, or pass a local path"
    )


# ---------------------------------------------------------------- download


def fetch(
    name: str,
    progress: bool = True,
    force: bool = False,
    offline: Optional[bool] = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download registered weight ``name`` into the cache and return its path.

    An existing cached copy of the right size is kept unless ``force``.
    Streams with a progress bar on stderr (``progress``), hashes while
    streaming, and moves the file into place only after size and SHA-256
    match; any failure leaves nothing at the final path. ``timeout`` is the
    socket timeout in seconds. Raises :class:`MissingWeightsError` when
    offline, when the download fails, or on a checksum mismatch.
    """
    spec = get_spec(name)
    if is_offline(offline):
        raise MissingWeightsError(
            f"offline mode ({OFFLINE_ENV}=1): not downloading weight {name!r}; "
            f"copy {spec.filename} to {cache_dir() / spec.filename} or into {WEIGHTS_DIR_ENV}, or unset {OFFLINE_ENV}"
        )
    return _fetch(spec, progress=progress, force=force, timeout=timeout)


def _fetch(spec: WeightSpec, progress: bool, force: bool, timeout: float = DEFAULT_TIMEOUT) -> Path:
    final = cache_dir() / spec.filename
    if not force and _size_problem(spec, final) is None:
        return final
    if not spec.url:
        raise MissingWeightsError(
            f"weight {spec.name!r} has no download URL (licence: {spec.licence or 'unknown'}); "
            f"obtain {spec.filename} yourself and put it in {final.parent} or {WEIGHTS_DIR_ENV}, or pass its path"
        )
    scheme = urllib.parse.urlsplit(spec.url).scheme
    if scheme not in _SCHEMES:
        raise MissingWeightsError(f"weight {spec.name!r}: URL scheme {scheme!r} of {spec.url} is not supported (use http, https or file)")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MissingWeightsError(f"cannot create the weights cache {final.parent} ({exc}); set {CACHE_ENV} to a writable folder") from None
    with _locked(final):
        if not force and _size_problem(spec, final) is None:  # another process finished it meanwhile
            return final
        fd, part_name = tempfile.mkstemp(dir=final.parent, prefix=f".{spec.filename}.", suffix=".part")
        part = Path(part_name)
        try:
            with os.fdopen(fd, "wb") as out:
                digest, total = _download(spec, out, progress, timeout)
                out.flush()
                os.fsync(out.fileno())
            _check_download(spec, digest, total)
            os.chmod(part, 0o644)  # mkstemp makes it private; a cache is readable like any download
            if spec.kind == "folder":
                _install_folder(spec, part, final)
            else:
                os.replace(part, final)
        finally:
            part.unlink(missing_ok=True)
    return final


def _download(spec: WeightSpec, out, progress: bool, timeout: float) -> tuple[str, int]:
    """Stream ``spec.url`` into ``out``; returns (sha256 hex, bytes received)."""
    from tqdm import tqdm

    sha = hashlib.sha256()
    total = 0
    fail = f"download of weight {spec.name!r} from {spec.url} failed"
    retry = f"retry with `latentdub weights fetch {spec.name}`"
    try:
        with urllib.request.urlopen(spec.url, timeout=timeout) as response:
            announced = response.headers.get("Content-Length")
            expected = int(announced) if announced and announced.isdigit() else (spec.size or None)
            with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=spec.filename,
                      file=sys.stderr, disable=not progress) as bar:
                while chunk := response.read(CHUNK):
                    sha.update(chunk)
                    out.write(chunk)
                    total += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise MissingWeightsError(f"{fail}: HTTP {exc.code} {exc.reason}; {retry} or check the URL") from None
    except urllib.error.URLError as exc:
        raise MissingWeightsError(f"{fail}: {exc.reason}; {retry}") from None
    except (http.client.HTTPException, OSError) as exc:  # includes timeouts and resets
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise MissingWeightsError(f"{fail} after {total} bytes ({reason}); {retry}") from None
    if announced and announced.isdigit() and total != int(announced):
        raise MissingWeightsError(f"{fail}: connection closed after {total} of {announced} bytes; {retry}")
    return sha.hexdigest(), total


def _check_download(spec: WeightSpec, digest: str, total: int) -> None:
    if spec.size > 0 and total != spec.size:
        raise MissingWeightsError(
            f"download of weight {spec.name!r} from {spec.url} has {total} bytes, expected {spec.size}; "
            f"the file was discarded (retry `latentdub weights fetch {spec.name}`)"
        )
    if spec.sha256 and digest != spec.sha256.lower():
        raise MissingWeightsError(
            f"checksum mismatch for weight {spec.name!r} from {spec.url}: expected sha256 {spec.sha256.lower()}, "
            f"got {digest}; the file was discarded (retry `latentdub weights fetch {spec.name}`)"
        )
    if not spec.sha256:
        log.warning("weight %r has no registered sha256; downloaded file has sha256 %s", spec.name, digest)


def _install_folder(spec: WeightSpec, archive: Path, final: Path) -> None:
    """Unpack the zip ``archive`` into a temporary folder, then move it to ``final``."""
    if not zipfile.is_zipfile(archive):
        raise MissingWeightsError(f"weight {spec.name!r}: {spec.url} is not a zip archive; folder weights must be served as .zip")
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{spec.filename}.", suffix=".unpack"))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(staging)  # zipfile drops absolute and ".." components
        entries = list(staging.iterdir())
        # an archive holding one top-level folder is unpacked as that folder's content
        content = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
        os.replace(content, final)
        if old is not None and old.is_dir():
            shutil.rmtree(old)
        elif old is not None:
            old.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _locked(final: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``final``'s ``.lock`` file (POSIX ``flock``; no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # Windows: the unique .part name still keeps writers apart
        yield
        return
    with open(final.with_name(f".{final.name}.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------- verification


def file_sha256(file: Union[str, os.PathLike]) -> str:
    """SHA-256 (lower-case hex) of a file, read in :data:`CHUNK`-byte pieces."""
    sha = hashlib.sha256()
    with open(file, "rb") as handle:
        while chunk := handle.read(CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def verify(names: Optional[Sequence[str]] = None) -> list[tuple[str, str]]:
    """Check the copies :func:`resolve` would use; ``[(name, status)]`` for ``names`` (default: all).

    ``status`` is ``"ok"``, ``"missing"``, ``"unverified: ..."`` (no
    registered checksum, or a folder) or ``"corrupt: ..."`` (wrong size or
    checksum, with the path). Files are hashed in chunks, never loaded whole.
    """
    specs = all_weights()
    rows = []
    for name in names if names is not None else list(specs):
        spec = specs.get(name) or get_spec(name)
        rows.append((name, _verify_one(spec)))
    return rows


def _verify_one(spec: WeightSpec) -> str:
    found, problems = None, []
    for candidate in _candidates(spec):
        problem = _size_problem(spec, candidate)
        if problem is None:
            found = candidate
            break
        if problem != "missing":
            problems.append(f"{candidate}: {problem}")
    if found is None:
        return f"corrupt: {problems[0]}" if problems else "missing"
    if spec.kind == "folder":
        return f"unverified: {found} is a folder (its archive's checksum is not kept)"
    if not spec.sha256:
        return f"unverified: {found} has no registered sha256 (actual {file_sha256(found)})"
    actual = file_sha256(found)
    if actual != spec.sha256.lower():
        return f"corrupt: {found}: sha256 {actual}, expected {spec.sha256.lower()}"
    return "ok"
