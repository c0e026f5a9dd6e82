"""The batch journal: append-only, fsynced JSON lines; which clips are finished, verified by size and SHA-256."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional


def file_digest(path: Path) -> tuple[int, str]:
    """Size in bytes and SHA-256 hex of ``path``, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return path.stat().st_size, h.hexdigest()


def _verified(path: Path, size: Any, sha256: Any) -> bool:
    try:
        return path.is_file() and path.stat().st_size == size and file_digest(path)[1] == sha256
    except OSError:
        return False


class Journal:
    """Append-only JSON-lines log of a batch (one record per line, fsynced).

    Records carry ``kind`` (``run``, ``clip`` or ``profile``), ``id``,
    ``status`` (``started``, ``done``, ``failed``), ``attempt``, ``key`` (what
    the result depends on), ``output``, ``size``, ``sha256``, ``seconds`` and
    ``error``. A line torn by a crash is ignored when read.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict[str, Any]]:
        """All readable records, oldest first."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

    def append(self, **record: Any) -> None:
        """Write one record and fsync it (a torn last line is closed off first)."""
        record = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"), **record}
        line = json.dumps(record, default=str) + "\n"
        with open(self.path, "a+b") as f:
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = "\n" + line
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())


@dataclasses.dataclass
class _History:
    """What the journal says about one clip or profile."""

    last: Optional[dict[str, Any]] = None
    attempts: int = 0
    #: Outputs a run of this batch started writing (so the batch may replace them).
    written: set[str] = dataclasses.field(default_factory=set)


def histories(records: list[dict[str, Any]], kind: str) -> dict[str, _History]:
    """Journal records of one ``kind`` grouped by clip id, each with its latest record."""
    out: dict[str, _History] = collections.defaultdict(_History)
    for r in records:
        if r.get("kind") != kind or "id" not in r:
            continue
        h = out[str(r["id"])]
        h.last = r
        h.attempts = max(h.attempts, int(r.get("attempt") or 0))
        if r.get("status") in ("started", "done") and r.get("output"):
            h.written.add(str(r["output"]))
    return out


def finished_record(history: Optional[_History], key: str, output: Path) -> Optional[dict[str, Any]]:
    """The journal's ``done`` record when it is the latest, matches ``key`` and the file still verifies."""
    if history is None or history.last is None or history.last.get("status") != "done":
        return None
    done = history.last
    return done if done.get("key") == key and _verified(output, done.get("size"), done.get("sha256")) else None
