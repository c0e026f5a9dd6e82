"""Batch dubbing from a manifest: resumable, with shared identity profiles and pluggable executors.

A manifest (YAML or CSV) lists clips (video + speech -> output). ``run_batch``
validates it up front, then runs every clip through :func:`~latentdub.toolkit.pipeline.dub`
on one of three executors (in-process, a local process pool, Ray) and
records each step in an append-only journal (JSON lines, fsynced) beside the
outputs. A rerun skips clips whose output still matches the journal (size and
SHA-256), redoes clips that were interrupted or whose output changed, and
tries failed clips again. One failing clip never stops the others.

Clips naming the same ``identity`` share one identity profile, tuned once
(Stage 2, PTI) when the preset has a ``finetuner`` stage and a neural
renderer, and cached beside the journal.

Only the driver process writes the journal and the summary; tasks return
:class:`TaskResult` values.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import datetime
import hashlib
import io
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Optional

import yaml

from .errors import BadInputError, LatentdubError, MissingWeightsError, NoFaceError, OutputError
from .files import check_not_an_input, stale_temps, write_text_atomic

MANIFEST_KEYS = ("preset", "set", "outputs", "roots", "identity_sources", "clips")
CLIP_KEYS = ("id", "video", "audio", "output", "preset", "set", "identity", "profile")
CSV_REQUIRED = ("video", "audio", "output")
EXECUTORS = ("inline", "local", "ray")
#: Stages whose settings shape an identity profile (others, e.g. output.crf, do not).
PROFILE_STAGES = ("device", "seed", "track", "encoder", "generator", "finetuner")

Executor = Literal["inline", "local", "ray"]


# --------------------------------------------------------------------------- manifest


@dataclasses.dataclass(frozen=True)
class Clip:
    """One manifest entry with its paths resolved (absolute).

    ``where`` locates it in the manifest for messages (``clips[2]``, ``row 3``);
    ``problem`` is set when the clip cannot run (a path escapes the manifest's
    folders) and says why.
    """

    id: str
    where: str
    video: Path
    audio: Path
    output: Path
    preset: Optional[str] = None
    overrides: tuple[str, ...] = ()
    identity: Optional[str] = None
    profile: Optional[Path] = None
    problem: Optional[str] = None

    def key(self, settings: str) -> str:
        """Fingerprint of what this clip's output depends on: its paths, identity and the resolved preset's YAML ``settings``."""
        data = [str(self.video), str(self.audio), str(self.output), self.identity, str(self.profile or ""), settings]
        return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A validated manifest: defaults, allowed folders and clips in manifest order."""

    path: Path
    folder: Path
    outputs: Path
    roots: tuple[Path, ...]
    preset: Optional[str]
    overrides: tuple[str, ...]
    identity_sources: dict[str, Path]
    clips: tuple[Clip, ...]

    @property
    def stem(self) -> Path:
        """Common prefix of the journal, summaries and profile folder: ``OUTPUTS/MANIFEST_STEM``."""
        return self.outputs / self.path.stem

    @property
    def journal(self) -> Path:
        return Path(f"{self.stem}.journal.jsonl")

    @property
    def profiles(self) -> Path:
        return Path(f"{self.stem}.profiles")


def _bad(manifest: Path, where: str, message: str) -> BadInputError:
    return BadInputError(f"{manifest}: {where}: {message}")


def _as_overrides(value: Any, manifest: Path, where: str, split: bool = False) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        items = [v.strip() for v in value.split(";")] if split else [value]
        return tuple(v for v in items if v)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise _bad(manifest, where, "set must be a list of STAGE.KEY=VALUE strings, e.g. set: [output.crf=20]")


def _optional_str(value: Any, manifest: Path, where: str) -> Optional[str]:
    if value is None or value == "":
        return None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise _bad(manifest, where, f"expected a text value, got {value!r}")


class _Places:
    """Resolves manifest paths and checks they stay inside the allowed folders."""

    def __init__(self, folder: Path, roots: Iterable[Path]) -> None:
        self.roots = [folder.resolve(), *(r.resolve() for r in roots)]

    def path(self, raw: str, base: Path) -> tuple[Path, Optional[str]]:
        """Absolute path of ``raw`` (relative to ``base``) and why it is refused, if it is."""
        candidate = Path(raw)
        plain = Path(os.path.normpath(candidate if candidate.is_absolute() else base / candidate))
        real = plain.resolve()
        if any(real.is_relative_to(root) for root in self.roots):
            return plain, None
        via = " through a symlink" if any(plain.is_relative_to(root) for root in self.roots) else ""
        allowed = ", ".join(str(r) for r in self.roots)
        return plain, f"{raw} resolves{via} to {real}, outside the manifest's folders ({allowed}); move it inside or list its folder under roots:"


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a YAML or CSV manifest.

    Structural problems (unknown keys, missing fields, duplicate outputs,
    unreadable file) raise :class:`BadInputError` naming the manifest and the
    entry; a path escaping the allowed folders only marks that clip's
    ``problem``.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: manifest not found; give a .yaml or .csv manifest (see docs/batch.md)")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path}: cannot read the manifest ({type(exc).__name__}); save it as UTF-8 text") from None
    if suffix in (".yaml", ".yml"):
        data, entries = _yaml_entries(path, text)
    elif suffix == ".csv":
        data, entries = {}, _csv_entries(path, text)
    else:
        raise BadInputError(f"{path}: unknown manifest type {suffix or '(none)'}; use .yaml, .yml or .csv")
    folder = path.resolve().parent
    roots = []
    for i, raw in enumerate(data.get("roots") or []):
        if not isinstance(raw, str):
            raise _bad(path, f"roots[{i}]", "expected a folder path")
        root = Path(os.path.normpath(folder / raw))
        if not root.is_dir():
            raise _bad(path, f"roots[{i}]", f"folder {root} does not exist; fix the path or remove it")
        roots.append(root)
    outputs_raw = data.get("outputs")
    if outputs_raw is not None and not isinstance(outputs_raw, str):
        raise _bad(path, "outputs", "expected a folder path, e.g. outputs: dubbed/")
    outputs = Path(os.path.normpath(folder / outputs_raw)) if outputs_raw else folder
    places = _Places(folder, [*roots, outputs])
    sources = data.get("identity_sources") or {}
    if not isinstance(sources, dict):
        raise _bad(path, "identity_sources", "expected a mapping of identity: image or video path")
    identity_sources = {}
    for name, raw in sources.items():
        _check_identity(path, f"identity_sources.{name}", name)
        if not isinstance(raw, str):
            raise _bad(path, f"identity_sources.{name}", "expected an image or video path")
        source, problem = places.path(raw, folder)
        if problem:
            raise _bad(path, f"identity_sources.{name}", problem)
        identity_sources[name] = source
    clips, seen_ids, seen_outputs = [], {}, {}
    for where, entry in entries:
        clip = _clip(path, where, entry, places, folder, outputs)
        for seen, value, what in ((seen_ids, clip.id, "id"), (seen_outputs, clip.output, "output")):
            if value in seen:
                raise _bad(path, where, f"same {what} as {seen[value]} ({value}); give each clip its own {what}")
            seen[value] = where
        clips.append(clip)
    if not clips:
        raise BadInputError(f"{path}: the manifest lists no clips; add entries under clips: (YAML) or rows (CSV)")
    unused = sorted(set(identity_sources) - {c.identity for c in clips})
    if unused:
        raise _bad(path, f"identity_sources.{unused[0]}", "no clip names this identity; fix the spelling or remove it")
    preset = _preset_ref(data.get("preset"), path, "preset")
    _check_outputs_are_not_inputs(path, clips, identity_sources, preset)
    return Manifest(
        path=path, folder=folder, outputs=outputs, roots=tuple(roots),
        preset=preset,
        overrides=_as_overrides(data.get("set"), path, "set"),
        identity_sources=identity_sources, clips=tuple(clips),
    )


def _check_outputs_are_not_inputs(manifest: Path, clips: list[Clip], identity_sources: dict[str, Path], preset: Optional[str]) -> None:
    """Refuse a manifest where any clip's output is a file some clip, identity or preset reads."""
    inputs: dict[str, Optional[Path]] = {"manifest": manifest}
    for name, source in identity_sources.items():
        inputs[f"identity_sources.{name} source"] = source
    for c in clips:
        for key, value in (("video", c.video), ("audio", c.audio), ("profile", c.profile), ("preset", c.preset or preset)):
            if isinstance(value, Path) or (key == "preset" and value and Path(value).suffix.lower() in (".yaml", ".yml")):
                inputs.setdefault(f"{key} of {c.where}", Path(value))
    for c in clips:
        try:
            check_not_an_input(c.output, inputs)
        except OutputError as exc:
            raise _bad(manifest, c.where, f"output {exc}") from None


def _yaml_entries(path: Path, text: str) -> tuple[dict, list[tuple[str, dict]]]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BadInputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}); fix the syntax") from None
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: a manifest must be a mapping with a clips: list (see docs/batch.md)")
    unknown = sorted(set(data) - set(MANIFEST_KEYS))
    if unknown:
        raise _bad(path, unknown[0], f"unknown key (known: {', '.join(MANIFEST_KEYS)}); fix the spelling")
    clips = data.get("clips")
    if not isinstance(clips, list):
        raise _bad(path, "clips", "expected a list of {video, audio, output} entries")
    entries = []
    for i, entry in enumerate(clips):
        if not isinstance(entry, dict):
            raise _bad(path, f"clips[{i}]", "expected a mapping such as {video: a.mp4, audio: b.wav, output: out.mp4}")
        unknown = sorted(set(entry) - set(CLIP_KEYS))
        if unknown:
            raise _bad(path, f"clips[{i}]", f"unknown key {unknown[0]!r} (known: {', '.join(CLIP_KEYS)}); fix the spelling")
        entries.append((f"clips[{i}]", entry))
    return data, entries


def _csv_entries(path: Path, text: str) -> list[tuple[str, dict]]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in CSV_REQUIRED if c not in header]
    if missing:
        raise _bad(path, "row 1", f"missing column {missing[0]!r}; the header needs {', '.join(CSV_REQUIRED)} (optional: preset, set, identity, profile, id)")
    unknown = [c for c in header if c not in CLIP_KEYS]
    if unknown:
        raise _bad(path, "row 1", f"unknown column {unknown[0]!r} (known: {', '.join(CLIP_KEYS)}); fix the header")
    entries = []
    for row in reader:
        n = reader.line_num  # the file's line number (blank lines are skipped by the reader)
        if None in row:
            raise _bad(path, f"row {n}", f"more cells than the {len(header)} header columns; quote cells that contain commas")
        values = {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
        if not any(values.values()):
            continue
        values["set"] = _as_overrides(values.get("set"), path, f"row {n}", split=True)
        entries.append((f"row {n}", {k: v for k, v in values.items() if v not in (None, "")}))
    return entries


def _preset_ref(value: Any, manifest: Path, where: str) -> Optional[str]:
    """A shipped preset name, or a preset YAML path made absolute against the manifest's folder."""
    name = _optional_str(value, manifest, where)
    if name and Path(name).suffix.lower() in (".yaml", ".yml"):
        return os.path.normpath(manifest.resolve().parent / name)
    return name


def _check_identity(manifest: Path, where: str, name: Any) -> None:
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise _bad(manifest, where, f"identity {name!r} must be a name of letters, digits, '-', '_' or '.'")


def _clip(manifest: Path, where: str, entry: dict, places: _Places, folder: Path, outputs: Path) -> Clip:
    for key in ("video", "audio"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise _bad(manifest, where, f"{key} is missing; every clip needs video, audio and output")
    video, video_problem = places.path(entry["video"], folder)
    audio, audio_problem = places.path(entry["audio"], folder)
    output_raw = entry.get("output")
    if not isinstance(output_raw, str) or not output_raw:
        raise _bad(manifest, where, "output is missing; every clip needs video, audio and output")
    output, output_problem = places.path(output_raw, outputs)
    if output.suffix.lower() not in (".mp4", ".mov", ".mkv", ".m4v"):
        raise _bad(manifest, where, f"output {output_raw}: unsupported type {output.suffix or '(none)'}; use .mp4, .mov, .mkv or .m4v")
    identity = entry.get("identity")
    if identity is not None:
        identity = str(identity)
        _check_identity(manifest, f"{where}.identity", identity)
    profile, profile_problem = None, None
    if entry.get("profile"):
        if not isinstance(entry["profile"], str):
            raise _bad(manifest, f"{where}.profile", "expected a profile path")
        profile, profile_problem = places.path(entry["profile"], folder)
    problems = [f"{key}: {p}" for key, p in (("video", video_problem), ("audio", audio_problem), ("output", output_problem), ("profile", profile_problem)) if p]
    clip_id = _optional_str(entry.get("id"), manifest, f"{where}.id")
    if clip_id is None:
        clip_id = os.path.relpath(output, outputs) if output.is_relative_to(outputs) else str(output)
    return Clip(
        id=clip_id, where=where, video=video, audio=audio, output=output,
        preset=_preset_ref(entry.get("preset"), manifest, f"{where}.preset"),
        overrides=_as_overrides(entry.get("set"), manifest, f"{where}.set"),
        identity=identity, profile=profile, problem="; ".join(problems) or None,
    )


# --------------------------------------------------------------------------- journal


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


def _histories(records: list[dict[str, Any]], kind: str) -> dict[str, _History]:
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


def _finished(history: Optional[_History], key: str, output: Path) -> Optional[dict[str, Any]]:
    """The journal's ``done`` record when it is the latest, matches ``key`` and the file still verifies."""
    if history is None or history.last is None or history.last.get("status") != "done":
        return None
    done = history.last
    return done if done.get("key") == key and _verified(output, done.get("size"), done.get("sha256")) else None


# --------------------------------------------------------------------------- tasks


@dataclasses.dataclass(frozen=True)
class Task:
    """One unit of work for an executor: dub a clip or tune an identity profile."""

    kind: Literal["clip", "profile"]
    id: str
    attempt: int
    key: str
    output: Path
    preset: str
    overrides: tuple[str, ...]
    video: Optional[Path] = None
    audio: Optional[Path] = None
    profile: Optional[Path] = None
    source: Optional[Path] = None
    progress: bool = False
    verbose: bool = True
    fn: Optional[Callable[..., Any]] = None
    overwrite: bool = False


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """What a task returns to the driver (``error`` is one line; ``retryable`` False for bad input)."""

    task: Task
    ok: bool
    seconds: float
    size: Optional[int] = None
    sha256: Optional[str] = None
    error: Optional[str] = None
    retryable: bool = False


def _worker_log(task: Task) -> Callable[[str], None]:
    if not task.verbose:
        return lambda message: None
    return lambda message: print(f"[{task.id}] {message}", file=sys.stderr, flush=True)


def execute(task: Task, log: Optional[Callable[[str], None]] = None) -> TaskResult:
    """Run one task (in whatever process the executor chose) and describe the outcome.

    Exceptions become failed results: :class:`LatentdubError` subclasses keep
    their one-line message; other exceptions are named and marked retryable.
    """
    start = time.perf_counter()
    log = log or _worker_log(task)
    try:
        if task.kind == "clip":
            from .pipeline import dub

            (task.fn or dub)(task.video, task.audio, task.output, preset=task.preset, overrides=list(task.overrides),
                             profile=task.profile, progress=task.progress, log=log, overwrite=task.overwrite)
        else:
            from .tuning import tune

            (task.fn or tune)(task.source, task.output, preset=task.preset, overrides=list(task.overrides), log=log,
                              progress=task.progress, overwrite=task.overwrite)
        if not task.output.is_file():
            raise RuntimeError(f"{task.output} was not written")
        size, sha = file_digest(task.output)
        return TaskResult(task, True, time.perf_counter() - start, size=size, sha256=sha)
    except Exception as exc:
        permanent = isinstance(exc, (BadInputError, NoFaceError, MissingWeightsError))  # retrying cannot help
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not isinstance(exc, LatentdubError):
            message = f"{type(exc).__name__}: {message}"
        return TaskResult(task, False, time.perf_counter() - start, error=message, retryable=not permanent)


class _InlineExecutor:
    """Runs tasks one at a time in this process."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.queue: collections.deque[Task] = collections.deque()

    @property
    def capacity(self) -> int:
        return 1 - len(self.queue)

    @property
    def busy(self) -> bool:
        return bool(self.queue)

    def submit(self, task: Task) -> None:
        self.queue.append(task)

    def next_done(self) -> TaskResult:
        task = self.queue.popleft()
        return execute(task, log=(lambda m: self.log(f"[{task.id}] {m}")) if task.verbose else (lambda m: None))

    def close(self, abort: bool = False) -> None:
        self.queue.clear()


class _LocalExecutor:
    """A ``concurrent.futures`` process pool (spawn context) of ``workers`` processes."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool = None
        self.running: dict[Any, Task] = {}

    def _pool(self):
        import concurrent.futures
        import multiprocessing

        if self.pool is None:
            self.pool = concurrent.futures.ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self.pool

    @property
    def capacity(self) -> int:
        return self.workers - len(self.running)

    @property
    def busy(self) -> bool:
        return bool(self.running)

    def submit(self, task: Task) -> None:
        self.running[self._pool().submit(execute, task)] = task

    def next_done(self) -> TaskResult:
        import concurrent.futures
        from concurrent.futures.process import BrokenProcessPool

        done, _ = concurrent.futures.wait(list(self.running), return_when=concurrent.futures.FIRST_COMPLETED)
        future = next(iter(done))
        task = self.running.pop(future)
        try:
            return future.result()
        except BrokenProcessPool:
            # a worker died (killed, out of memory): start a fresh pool for what follows
            if self.pool is not None:
                self.pool.shutdown(wait=False, cancel_futures=True)
                self.pool = None
            return TaskResult(task, False, 0.0, error="worker process died (killed or out of memory)", retryable=True)
        except Exception as exc:  # the task could not be sent or its result not returned
            return TaskResult(task, False, 0.0, error=f"{type(exc).__name__}: {exc}", retryable=True)

    def close(self, abort: bool = False) -> None:
        if self.pool is None:
            return
        if abort:
            for process in list((self.pool._processes or {}).values()):  # no public way before Python 3.14
                process.terminate()
        self.pool.shutdown(wait=not abort, cancel_futures=True)
        self.pool = None


class _RayExecutor:
    """Ray remote tasks; connects to ``address`` or starts a local Ray with ``workers`` CPUs."""

    def __init__(self, workers: int, address: Optional[str], log: Callable[[str], None]) -> None:
        try:
            import ray
        except ImportError:
            raise BadInputError("--executor ray needs Ray: pip install 'latentdub[ray]', or use --executor local") from None
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
                self.started = True
        gpus = 1 if _cuda_available() else 0
        self.slots = max(1, int(ray.cluster_resources().get("GPU" if gpus else "CPU", workers)))
        if not address:
            self.slots = min(self.slots, workers)
        log(f"ray: {'started a local Ray' if self.started else 'connected to ' + (address or 'the running Ray')}, "
            f"{self.slots} concurrent task(s){', one GPU each' if gpus else ''}")
        self.remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(execute)
        self.running: dict[Any, Task] = {}

    @property
    def capacity(self) -> int:
        return self.slots - len(self.running)

    @property
    def busy(self) -> bool:
        return bool(self.running)

    def submit(self, task: Task) -> None:
        self.running[self.remote.remote(task)] = task

    def next_done(self) -> TaskResult:
        ready, _ = self.ray.wait(list(self.running), num_returns=1)
        task = self.running.pop(ready[0])
        try:
            return self.ray.get(ready[0])
        except Exception as exc:  # worker crashed or the task could not run
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return TaskResult(task, False, 0.0, error=f"ray: {type(exc).__name__}: {first}", retryable=True)

    def close(self, abort: bool = False) -> None:
        for ref in self.running:
            self.ray.cancel(ref, force=True)
        self.running.clear()
        if self.started:
            self.ray.shutdown()


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


# --------------------------------------------------------------------------- summary


@dataclasses.dataclass
class ClipResult:
    """Outcome of one clip: ``status`` is ``done`` (made in this run), ``skipped`` (already
    finished and verified) or ``failed``; ``attempts`` counts tries in this run."""

    id: str
    status: Literal["done", "skipped", "failed"]
    video: Path
    audio: Path
    output: Path
    attempts: int = 0
    seconds: float = 0.0
    size: Optional[int] = None
    sha256: Optional[str] = None
    identity: Optional[str] = None
    profile: Optional[Path] = None
    error: Optional[str] = None


@dataclasses.dataclass
class BatchSummary:
    """Results of :func:`run_batch` in manifest order, and where the records went."""

    manifest: Path
    journal: Path
    summary_csv: Path
    summary_json: Path
    executor: str
    workers: int
    seconds: float
    clips: list[ClipResult]
    notes: list[str] = dataclasses.field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.clips)

    @property
    def ok(self) -> bool:
        """True when every clip is done or verified from an earlier run."""
        return self.count("failed") == 0

    @property
    def clips_per_minute(self) -> float:
        return 60.0 * self.count("done") / max(self.seconds, 1e-9)

    def table(self) -> str:
        """A fixed-width table: clip, status, tries, seconds, output or error."""
        rows = [("CLIP", "STATUS", "TRIES", "SECONDS", "OUTPUT / ERROR")]
        for c in self.clips:
            rows.append((c.id, c.status, str(c.attempts), f"{c.seconds:.1f}", c.error if c.error else str(c.output)))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(r[:4], widths)), r[4]]).rstrip() for r in rows)

    def lines(self) -> list[str]:
        """The table, totals and file locations for the CLI."""
        return [
            self.table(),
            f"{len(self.clips)} clips: {self.count('done')} done, {self.count('skipped')} already finished, {self.count('failed')} failed "
            f"in {self.seconds:.1f} s ({self.executor}, {self.workers} worker(s))",
            f"journal: {self.journal}",
            f"summary: {self.summary_csv}, {self.summary_json}",
            *(f"note: {n}" for n in self.notes),
        ]

    def write(self) -> None:
        """Write the CSV and JSON summaries (atomically)."""
        fields = [f.name for f in dataclasses.fields(ClipResult)]
        rows = [{k: ("" if v is None else str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(c).items()} for c in self.clips]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.summary_csv, buf.getvalue())
        data = {
            "manifest": str(self.manifest), "journal": str(self.journal), "executor": self.executor, "workers": self.workers,
            "seconds": round(self.seconds, 3), "done": self.count("done"), "skipped": self.count("skipped"),
            "failed": self.count("failed"), "notes": self.notes, "clips": rows,
        }
        write_text_atomic(self.summary_json, json.dumps(data, indent=2) + "\n")


def _summary_paths(manifest: Manifest, summary: Optional[Path]) -> tuple[Path, Path]:
    if summary is None:
        return Path(f"{manifest.stem}.summary.csv"), Path(f"{manifest.stem}.summary.json")
    summary = Path(summary)
    return summary.with_suffix(".csv"), summary.with_suffix(".json")


# --------------------------------------------------------------------------- driver


@dataclasses.dataclass
class _Job:
    """Driver-side state of one pending clip."""

    clip: Clip
    preset: str
    overrides: tuple[str, ...]
    key: str
    attempt: int
    tries: int = 0
    seconds: float = 0.0
    profile: Optional[Path] = None
    profile_id: Optional[str] = None
    overwrite: bool = False


def _profile_fingerprint(resolved) -> str:
    data = resolved.to_dict()
    return hashlib.sha256(json.dumps({k: data.get(k) for k in PROFILE_STAGES}, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _wants_profile(resolved) -> bool:
    renderer = resolved.stages.get("renderer")
    return "finetuner" in resolved.stages and renderer is not None and renderer.plugin == "neural"


def run_batch(
    manifest: str | Path,
    workers: int = 1,
    executor: Executor = "inline",
    ray_address: Optional[str] = None,
    retries: int = 1,
    preset: Optional[str] = None,
    overrides: Optional[list[str]] = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
    summary: Optional[Path] = None,
    verbose: bool = True,
    dub_fn: Optional[Callable[..., Any]] = None,
    tune_fn: Optional[Callable[..., Any]] = None,
    overwrite: bool = False,
) -> BatchSummary:
    """Dub every clip of ``manifest``; resumable through its journal.

    ``preset``/``overrides`` replace the manifest's top-level preset and are
    appended to every clip's overrides (a clip's own ``preset`` wins).
    ``retries``: extra tries in this run for a clip that failed for a reason
    other than bad input. ``progress`` shows per-frame bars (inline executor
    only); ``verbose`` passes each clip's log lines through. ``summary``:
    where the CSV/JSON summaries go (default beside the journal). ``dub_fn``
    and ``tune_fn`` replace :func:`~latentdub.toolkit.pipeline.dub` and
    :func:`~latentdub.toolkit.tuning.tune` (module-level functions, so worker
    processes can import them). ``overwrite``: replace existing outputs the
    journal did not make (those it made are redone when they changed, and
    skipped when they still verify). Raises :class:`BadInputError` for an invalid
    manifest or arguments; clip failures are reported in the summary, not raised.
    """
    if executor not in EXECUTORS:
        raise BadInputError(f"--executor {executor}: unknown executor; use one of {', '.join(EXECUTORS)}")
    if workers < 1 or retries < 0:
        raise BadInputError(f"--workers {workers} / --retries {retries}: workers must be at least 1 and retries at least 0")
    started = time.perf_counter()
    run = _BatchRun(load_manifest(manifest), executor, workers, retries, log, progress, verbose, dub_fn, tune_fn, overwrite)
    run.plan(preset, tuple(overrides or ()))
    run.execute(ray_address)
    csv_path, json_path = _summary_paths(run.manifest, summary)
    out = BatchSummary(
        manifest=run.manifest.path, journal=run.journal.path, summary_csv=csv_path, summary_json=json_path, executor=executor,
        workers=workers, seconds=time.perf_counter() - started, clips=[run.results[c.id] for c in run.manifest.clips], notes=run.notes,
    )
    out.write()
    run.journal.append(kind="run", id=run.run_id, status="finished", done=out.count("done"), skipped=out.count("skipped"),
                       failed=out.count("failed"), seconds=round(out.seconds, 3))
    return out


class _BatchRun:
    """Driver state of one ``run_batch`` call: plans from the journal, runs tasks, records outcomes."""

    def __init__(self, manifest: Manifest, executor: str, workers: int, retries: int, log: Callable[[str], None],
                 progress: bool, verbose: bool, dub_fn: Optional[Callable[..., Any]], tune_fn: Optional[Callable[..., Any]], overwrite: bool) -> None:
        self.manifest, self.executor, self.workers, self.retries, self.log = manifest, executor, workers, retries, log
        self.overwrite = overwrite
        self.progress = progress and executor == "inline"
        self.verbose, self.dub_fn, self.tune_fn = verbose, dub_fn, tune_fn
        self.results: dict[str, ClipResult] = {}
        self.notes: list[str] = []
        self.todo: list[_Job] = []
        self.ready: collections.deque[Task] = collections.deque()
        self.waiting: dict[str, list[_Job]] = collections.defaultdict(list)  # profile id -> clips that need it
        self.cached_profiles: set[str] = set()  # profile ids finished and verified in earlier runs
        self.resolved: dict[tuple[str, tuple[str, ...]], Any] = {}
        self.journal = Journal(manifest.journal)
        records = self.journal.records()
        self.clip_history = _histories(records, "clip")
        self.profile_history = _histories(records, "profile")
        self.run_id = uuid.uuid4().hex[:8]

    # ---- planning

    def plan(self, preset: Optional[str], overrides: tuple[str, ...]) -> None:
        """Validate every clip's settings, then queue what the journal says is not finished."""
        from .presets import choose_auto_preset, resolve_preset

        m = self.manifest
        auto: list[str] = []
        jobs = []
        for clip in m.clips:
            name = clip.preset or preset or m.preset or "auto"
            if name == "auto":
                auto = auto or [choose_auto_preset(self.log)]
                name = auto[0]
            extra = (*m.overrides, *clip.overrides, *overrides)
            if (name, extra) not in self.resolved:
                try:
                    self.resolved[(name, extra)] = resolve_preset(name, list(extra))
                except LatentdubError as exc:
                    raise BadInputError(f"{m.path}: {clip.where}: {exc}") from None
            jobs.append(_Job(clip, name, extra, clip.key(self.resolved[(name, extra)].to_yaml()), attempt=0))
        m.outputs.mkdir(parents=True, exist_ok=True)  # nothing is written before the whole manifest validated
        self.journal.append(kind="run", id=self.run_id, manifest=str(m.path.resolve()), executor=self.executor, workers=self.workers, retries=self.retries)
        for job in jobs:
            self._plan_clip(job)
        skipped = sum(r.status == "skipped" for r in self.results.values())
        if skipped:
            self.log(f"{skipped} clip(s) already finished and verified; skipping them")
        untuned = sorted({f"{job.clip.identity} ({self.resolved[(job.preset, job.overrides)].name})" for job in self.todo
                          if job.clip.identity and job.clip.profile is None and not _wants_profile(self.resolved[(job.preset, job.overrides)])})
        if untuned:
            self.notes.append(f"no identity tuning for {', '.join(untuned)}: the preset has no finetuner stage with a neural renderer, so identities only group clips")
            self.log(f"note: {self.notes[-1]}")
        for job in list(self.todo):
            self._plan_profile(job)
        held = {id(job) for jobs_ in self.waiting.values() for job in jobs_}
        self.ready.extend(self._clip_task(job) for job in self.todo if job.clip.id not in self.results and id(job) not in held)

    def _plan_clip(self, job: _Job) -> None:
        history = self.clip_history.get(job.clip.id)
        job.attempt = history.attempts if history else 0
        done = _finished(history, job.key, job.clip.output)
        if done is not None:
            self.results[job.clip.id] = self._result(job, "skipped", size=done.get("size"), sha256=done.get("sha256"))
            return
        if job.clip.problem:
            return self._fail(job, job.clip.problem)
        files = (("video", job.clip.video), ("audio", job.clip.audio), ("profile", job.clip.profile))
        missing = [f"{k} {p} not found" for k, p in files if p is not None and not p.is_file()]
        if missing:
            return self._fail(job, "; ".join(missing) + "; fix the path in the manifest")
        last = history.last.get("status") if history and history.last else None
        if last == "started":
            self.log(f"{job.clip.id}: interrupted in an earlier run; redoing it")
        elif last == "done":
            self.log(f"{job.clip.id}: output or settings changed since it was made; redoing it")
        for stale in stale_temps(job.clip.output):  # left by an interrupted encode
            stale.unlink(missing_ok=True)
        job.overwrite = self.overwrite or bool(history and str(job.clip.output) in history.written)
        if not job.overwrite and (job.clip.output.exists() or job.clip.output.is_symlink()):
            return self._fail(job, f"output {job.clip.output} already exists and this batch's journal did not make it; pass --overwrite to replace it")
        job.profile = job.clip.profile
        self.todo.append(job)

    def _plan_profile(self, job: _Job) -> None:
        """Attach a cached profile to ``job`` or hold it behind the tuning task of its identity."""
        identity, resolved = job.clip.identity, self.resolved[(job.preset, job.overrides)]
        if identity is None or job.clip.profile is not None or not _wants_profile(resolved):
            return
        m = self.manifest
        source = m.identity_sources.get(identity) or next(c.video for c in m.clips if c.identity == identity)
        fingerprint = _profile_fingerprint(resolved)
        pid = f"{identity}-{fingerprint}"
        out = m.profiles / f"{pid}.profile"
        key = hashlib.sha256(json.dumps([str(source), fingerprint]).encode()).hexdigest()[:16]
        job.profile_id = pid
        if pid in self.cached_profiles:
            job.profile = out
        elif pid in self.waiting:
            self.waiting[pid].append(job)
        elif _finished(self.profile_history.get(pid), key, out) is not None:
            self.log(f"identity profile {pid}: reusing {out}")
            self.cached_profiles.add(pid)
            job.profile = out
        elif not source.is_file():
            self._fail(job, f"identity {identity}: source {source} not found; fix identity_sources")
        else:
            history = self.profile_history.get(pid)
            self.ready.append(Task(kind="profile", id=pid, attempt=(history.attempts if history else 0) + 1, key=key, output=out,
                                   preset=job.preset, overrides=job.overrides, source=source, progress=self.progress,
                                   verbose=self.verbose, fn=self.tune_fn, overwrite=True))  # the profiles folder is the batch's own
            m.profiles.mkdir(parents=True, exist_ok=True)
            self.waiting[pid].append(job)

    # ---- running

    def _clip_task(self, job: _Job) -> Task:
        return Task(kind="clip", id=job.clip.id, attempt=job.attempt + 1, key=job.key, output=job.clip.output, preset=job.preset,
                    overrides=job.overrides, video=job.clip.video, audio=job.clip.audio, profile=job.profile,
                    progress=self.progress, verbose=self.verbose, fn=self.dub_fn, overwrite=job.overwrite)

    def execute(self, ray_address: Optional[str]) -> None:
        """Feed ready tasks to the executor as it has room; record each outcome as it arrives."""
        if not self.ready:
            return
        runner = _make_executor(self.executor, self.workers, ray_address, self.log)
        jobs = {job.clip.id: job for job in self.todo}
        profile_tries: collections.Counter[str] = collections.Counter()
        try:
            while self.ready or runner.busy:
                while self.ready and runner.capacity > 0:
                    task = self.ready.popleft()
                    task.output.parent.mkdir(parents=True, exist_ok=True)
                    self.journal.append(kind=task.kind, id=task.id, run=self.run_id, status="started", attempt=task.attempt, key=task.key, output=str(task.output))
                    if task.kind == "clip":
                        jobs[task.id].attempt = task.attempt
                        jobs[task.id].tries += 1
                    runner.submit(task)
                r = runner.next_done()
                task = r.task
                self.journal.append(kind=task.kind, id=task.id, run=self.run_id, status="done" if r.ok else "failed", attempt=task.attempt,
                                    key=task.key, output=str(task.output), size=r.size, sha256=r.sha256, seconds=round(r.seconds, 3), error=r.error)
                if task.kind == "profile":
                    profile_tries[task.id] += 1
                    self._profile_finished(r, retry=r.retryable and profile_tries[task.id] <= self.retries)
                else:
                    self._clip_finished(jobs[task.id], r)
        except BaseException:  # Ctrl-C or a driver error: stop the workers; the journal shows what to redo
            runner.close(abort=True)
            raise
        runner.close()

    def _profile_finished(self, r: TaskResult, retry: bool) -> None:
        task = r.task
        if r.ok:
            self.log(f"identity profile {task.id}: tuned in {r.seconds:.1f} s -> {task.output}")
            for job in self.waiting.pop(task.id, []):
                job.profile = task.output
                self.ready.append(self._clip_task(job))
        elif retry:
            self.log(f"identity profile {task.id}: attempt {task.attempt} failed ({r.error}); retrying")
            self.ready.append(dataclasses.replace(task, attempt=task.attempt + 1))
        else:
            for job in self.waiting.pop(task.id, []):
                self._fail(job, f"identity profile {task.id} could not be tuned: {r.error}")

    def _clip_finished(self, job: _Job, r: TaskResult) -> None:
        job.seconds += r.seconds
        if r.ok:
            self.results[job.clip.id] = self._result(job, "done", size=r.size, sha256=r.sha256)
            self.log(f"[{len(self.results)}/{len(self.manifest.clips)}] done {job.clip.id} in {r.seconds:.1f} s -> {job.clip.output}")
        elif r.retryable and job.tries <= self.retries:
            self.log(f"{job.clip.id}: attempt {r.task.attempt} failed ({r.error}); retrying")
            self.ready.append(self._clip_task(job))
        else:
            self.results[job.clip.id] = self._result(job, "failed", error=r.error)
            self.log(f"[{len(self.results)}/{len(self.manifest.clips)}] failed {job.clip.id}: {r.error}")

    # ---- outcomes

    def _result(self, job: _Job, status: str, **extra: Any) -> ClipResult:
        c = job.clip
        return ClipResult(id=c.id, status=status, video=c.video, audio=c.audio, output=c.output, attempts=job.tries,  # type: ignore[arg-type]
                          seconds=job.seconds, identity=c.identity, profile=job.profile, **extra)

    def _fail(self, job: _Job, error: str) -> None:
        """Record a clip that fails without (or before) running."""
        job.attempt += 1
        self.journal.append(kind="clip", id=job.clip.id, run=self.run_id, status="failed", attempt=job.attempt, key=job.key,
                            output=str(job.clip.output), error=error)
        self.results[job.clip.id] = self._result(job, "failed", error=error)
        self.log(f"[{len(self.results)}/{len(self.manifest.clips)}] failed {job.clip.id}: {error}")


def _make_executor(executor: str, workers: int, ray_address: Optional[str], log: Callable[[str], None]):
    if executor == "inline":
        return _InlineExecutor(log)
    if executor == "local":
        return _LocalExecutor(workers)
    return _RayExecutor(workers, ray_address, log)
