"""Checks on input and output files, made before any work starts, and the lock a run holds on its outputs.

The rules every command follows:

- an input is a readable, non-empty file (:func:`check_input_file`);
- an output is never one of the run's inputs, compared after resolving
  symlinks and by ``(st_dev, st_ino)`` so hard links count too
  (:func:`check_not_an_input`);
- an existing output is replaced only when the user asked (``--overwrite``
  or ``output.overwrite: true``), see :func:`claim_outputs`;
- two runs never write the same output at once: the second fails at the
  start (:func:`file_lock`);
- results are written to a temporary file beside the target
  (:func:`temp_beside`) and renamed into place when complete; temporary files
  a killed run left behind are removed by the next run that claims the output.

Large working data that must not grow the process's memory with the clip goes
to a :class:`RowFile` in the run's temporary folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np

from .errors import BadInputError, OutputError

#: Length of the random part ``tempfile`` puts in a name.
_RANDOM_CHARS = 8


def check_input_file(path: str | Path, what: str) -> Path:
    """``path`` (user-expanded) if it is a readable file with content, else :class:`BadInputError`.

    ``what`` names the input in the message (``"video"``, ``"speech audio"``).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise BadInputError(f"{path}: is a folder; give a {what} file")
    if not path.is_file():
        raise BadInputError(f"{path}: file not found; check the path of the {what}")
    if not os.access(path, os.R_OK):
        raise BadInputError(f"{path}: cannot be read (permission denied); check the file's permissions")
    if path.stat().st_size == 0:
        raise BadInputError(f"{path}: is empty (0 bytes); give a {what} file with content")
    return path


def check_writable_file(path: str | Path, example: str) -> Path:
    """``path`` (user-expanded) if a file can be created there, else :class:`OutputError`.

    ``example`` is a file name suggested when ``path`` is a folder.
    """
    path = Path(path).expanduser()
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name such as {path / example}")
    if not parent.is_dir():
        raise OutputError(f"{path}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{path}: folder {parent} is not writable; choose another output path")
    return path


def _identities(path: str | Path) -> list[tuple]:
    """What makes two paths one file: the path with symlinks resolved, and ``(st_dev, st_ino)`` when it exists."""
    path = Path(path).expanduser()
    keys: list[tuple] = [("path", path.resolve())]
    try:
        stat = path.stat()
    except OSError:
        return keys
    return keys + [("inode", stat.st_dev, stat.st_ino)]


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when ``a`` and ``b`` name one file: the same path once symlinks are resolved, or hard links of one inode."""
    return bool(set(_identities(a)) & set(_identities(b)))


def check_not_an_input(outputs: str | Path | Sequence[Path], inputs: Mapping[str, Optional[Path]]) -> None:
    """Raise :class:`OutputError` when an output is one of ``inputs`` (``{role: path}``; None entries are skipped)."""
    index = {key: (role, Path(path)) for role, path in inputs.items() if path is not None for key in _identities(path)}
    for output in [outputs] if isinstance(outputs, (str, Path)) else outputs:
        found = next((index[key] for key in _identities(output) if key in index), None)
        if found is not None:
            role, path = found
            plain = [os.path.normpath(Path(p).expanduser().absolute()) for p in (output, path)]
            via = "" if plain[0] == plain[1] else f" ({path}, through a link)"
            raise OutputError(f"{output}: is the {role} of this run{via}; writing it would destroy the input; choose another output path")


def check_not_existing(path: Path) -> None:
    """Raise :class:`OutputError` when ``path`` exists (or is a link) and may not be replaced."""
    if path.exists() or path.is_symlink():
        raise OutputError(f"{path}: already exists; pass --overwrite to replace it, or choose another output path")


@contextlib.contextmanager
def file_lock(target: Path, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``.NAME.lock`` beside ``target`` (a no-op where ``fcntl`` is missing).

    ``wait=False`` raises :class:`BlockingIOError` at once when another
    process holds it. The lock file is removed on release; the kernel drops
    the lock of a killed process, so a stale file never blocks anyone.
    """
    try:
        import fcntl
    except ImportError:  # Windows: the unique temporary names still keep writers apart
        yield
        return
    lock = target.with_name(f".{target.name}.lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            current = os.stat(lock).st_ino if lock.exists() else None
        except BaseException:
            os.close(fd)
            raise
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the holder removed the file while we waited: lock the new one
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # still held, so a waiter on this inode retries
        os.close(fd)


def temp_beside(path: Path) -> Path:
    """A new empty temporary file ``.NAME.XXXXXXXX.part.SUFFIX`` beside ``path`` (same folder, so a rename is atomic)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{path.suffix}", dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes files owner-only; results get the usual permissions
    return Path(tmp)


def stale_temps(path: Path) -> list[Path]:
    """Temporary files of :func:`temp_beside` for ``path`` (left by a run that was killed)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[^.]{{{_RANDOM_CHARS}}}\.part{re.escape(path.suffix)}")
    folder = path.parent if str(path.parent) else Path(".")
    return [p for p in folder.glob(f".{path.name}.*") if pattern.fullmatch(p.name)]


@contextlib.contextmanager
def claim_outputs(outputs: Sequence[Path], inputs: Mapping[str, Optional[Path]], overwrite: bool) -> Iterator[None]:
    """Hold the files a run will write (the first is the main output) for the duration of the run.

    Refuses (with :class:`OutputError`, before any work) an output that is
    an input, an output another run is writing, and, unless ``overwrite``,
    an output that exists. Removes temporary files a killed run left beside
    them, and, when the run fails or is interrupted, the ones it left itself
    (a signal can land between a temporary file's creation and the code that
    would clean it up).
    """
    check_not_an_input(outputs, inputs)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(outputs[0], wait=False))
        except BlockingIOError:
            raise OutputError(f"{outputs[0]}: another latentdub run is writing it now; wait for it to finish or choose another output path") from None
        if not overwrite:
            for output in outputs:
                check_not_existing(output)
        _remove_temps(outputs)
        try:
            yield
        except BaseException:
            _remove_temps(outputs)
            raise


def _remove_temps(outputs: Sequence[Path]) -> None:
    for output in outputs:
        for stale in stale_temps(output):
            stale.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`write_bytes_atomic`)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through :func:`temp_beside` and a rename, so a reader never sees half a file.

    Raises :class:`OutputError` when the disk refuses (full, read-only); nothing is left behind.
    """
    path = Path(path)
    tmp = temp_beside(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc}); free some space or choose another folder") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


class RowFile:
    """``length`` uint8 arrays of one ``shape`` in a file, each written and read with one pwrite / pread.

    Unlike a memmap, the rows read and written stay in the page cache, not in
    this process's resident memory, which therefore does not grow with the
    rows touched (a long clip's bank is hundreds of MiB). Rows read are
    read-only arrays.
    """

    def __init__(self, path: Path, length: int, shape: tuple[int, ...]) -> None:
        self.length, self.shape = int(length), tuple(int(v) for v in shape)
        self.row_bytes = int(np.prod(self.shape))
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    def __len__(self) -> int:
        return self.length

    def _offset(self, index: int) -> int:
        if not 0 <= index < self.length:
            raise IndexError(f"row {index} of {self.length}")
        return index * self.row_bytes

    def __setitem__(self, index: int, value: np.ndarray) -> None:
        row = np.ascontiguousarray(value, np.uint8)
        if row.shape != self.shape:
            raise ValueError(f"row must be {self.shape}, got {row.shape}")
        view, offset = memoryview(row).cast("B"), self._offset(index)
        while view:  # a regular file takes it whole unless the disk fills up (then pwrite raises)
            done = os.pwrite(self._fd, view, offset)
            view, offset = view[done:], offset + done

    def __getitem__(self, index: int) -> np.ndarray:
        data = os.pread(self._fd, self.row_bytes, self._offset(index))
        if len(data) != self.row_bytes:
            raise IndexError(f"row {index} lies beyond the rows written")
        return np.frombuffer(data, np.uint8).reshape(self.shape)

    def close(self) -> None:
        """Close the file (its folder's owner deletes it)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
