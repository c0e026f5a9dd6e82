"""Batch dubbing from a manifest: resumable, with shared identity profiles and pluggable executors.

A manifest (YAML or CSV) lists clips (video + speech -> output). ``run_batch``
validates it up front, then runs every clip through :func:`~latentdub.toolkit.dubbing.pipeline.dub`
on one of three executors (in-process, a local process pool, Ray) and
records each step in an append-only journal (JSON lines, fsynced) beside the
outputs. A rerun skips clips whose output still matches the journal (size and
SHA-256), redoes clips that were interrupted or whose output changed, and
tries failed clips again. One failing clip never stops the others.

Clips naming the same ``identity`` share one identity profile, tuned once
(Stage 2, PTI) when the preset has a ``finetuner`` stage, and cached
beside the journal.

Only the driver process writes the journal and the summary; tasks return
:class:`TaskResult` values.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import io
import json
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from ..core.errors import BadInputError, LatentdubError
from ..core.files import stale_temps, write_text_atomic
from .executors import EXECUTORS, Executor, Task, TaskResult, make_executor
from .journal import Journal, finished_record, histories
from .manifest import Clip, Manifest, load_manifest
from .progress import BatchProgress

#: Stages whose settings shape an identity profile (others, e.g. output.crf, do not).
PROFILE_STAGES = ("device", "seed", "track", "encoder", "generator", "finetuner")


# --------------------------------------------------------------------------- summary


@dataclasses.dataclass
class ClipOutcome:
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
    clips: list[ClipOutcome]
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
        fields = [f.name for f in dataclasses.fields(ClipOutcome)]
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
    """Tune identity profiles when the preset names a finetuner stage (whatever its renderer)."""
    return "finetuner" in resolved.stages


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
    other than bad input. ``progress`` shows a batch bar (clips settled of all
    clips, ETA; every executor) and per-frame stage bars (inline executor
    only); ``verbose`` passes each clip's log lines through. ``summary``:
    where the CSV/JSON summaries go (default beside the journal). ``dub_fn``
    and ``tune_fn`` replace :func:`~latentdub.toolkit.dubbing.pipeline.dub` and
    :func:`~latentdub.toolkit.learning.tuning.tune` (module-level functions, so worker
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
        self.progress = progress and executor == "inline"  # per-frame stage bars: only where the clip runs in this process
        self.batch_bar = progress
        self.bar: Optional[BatchProgress] = None
        self.verbose, self.dub_fn, self.tune_fn = verbose, dub_fn, tune_fn
        self.results: dict[str, ClipOutcome] = {}
        self.notes: list[str] = []
        self.todo: list[_Job] = []
        self.ready: collections.deque[Task] = collections.deque()
        self.waiting: dict[str, list[_Job]] = collections.defaultdict(list)  # profile id -> clips that need it
        self.cached_profiles: set[str] = set()  # profile ids finished and verified in earlier runs
        self.resolved: dict[tuple[str, tuple[str, ...]], Any] = {}
        self.journal = Journal(manifest.journal)
        records = self.journal.records()
        self.clip_history = histories(records, "clip")
        self.profile_history = histories(records, "profile")
        self.run_id = uuid.uuid4().hex[:8]

    # ---- planning

    def plan(self, preset: Optional[str], overrides: tuple[str, ...]) -> None:
        """Validate every clip's settings, then queue what the journal says is not finished."""
        from ..core.presets import choose_auto_preset, resolve_preset

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
            self.notes.append(f"no identity tuning for {', '.join(untuned)}: the preset has no finetuner stage, so identities only group clips")
            self.log(f"note: {self.notes[-1]}")
        for job in list(self.todo):
            self._plan_profile(job)
        held = {id(job) for jobs_ in self.waiting.values() for job in jobs_}
        self.ready.extend(self._clip_task(job) for job in self.todo if job.clip.id not in self.results and id(job) not in held)

    def _plan_clip(self, job: _Job) -> None:
        history = self.clip_history.get(job.clip.id)
        job.attempt = history.attempts if history else 0
        done = finished_record(history, job.key, job.clip.output)
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
        elif finished_record(self.profile_history.get(pid), key, out) is not None:
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
        settled = collections.Counter(r.status for r in self.results.values())
        self.bar = BatchProgress(len(self.manifest.clips), len(self.results), settled, self.batch_bar)
        plain_log, self.log = self.log, self.bar.wrap(self.log)
        try:
            self._run_tasks(make_executor(self.executor, self.workers, ray_address, self.log))
        finally:
            self.bar.close()
            self.bar, self.log = None, plain_log

    def _run_tasks(self, runner) -> None:
        """The loop of :meth:`execute` on a started executor ``runner``."""
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
                    self.bar.started(task.id)
                r = runner.next_done()
                task = r.task
                self.journal.append(kind=task.kind, id=task.id, run=self.run_id, status="done" if r.ok else "failed", attempt=task.attempt,
                                    key=task.key, output=str(task.output), size=r.size, sha256=r.sha256, seconds=round(r.seconds, 3), error=r.error)
                if task.kind == "profile":
                    profile_tries[task.id] += 1
                    self._profilefinished_record(r, retry=r.retryable and profile_tries[task.id] <= self.retries)
                else:
                    self._clipfinished_record(jobs[task.id], r)
        except BaseException:  # Ctrl-C or a driver error: stop the workers; the journal shows what to redo
            runner.close(abort=True)
            raise
        runner.close()

    def _profilefinished_record(self, r: TaskResult, retry: bool) -> None:
        task = r.task
        self.bar.stopped(task.id)
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

    def _clipfinished_record(self, job: _Job, r: TaskResult) -> None:
        job.seconds += r.seconds
        if r.ok:
            self.results[job.clip.id] = self._result(job, "done", size=r.size, sha256=r.sha256)
            self.bar.settled(job.clip.id, "done")
            self.log(f"[{len(self.results)}/{len(self.manifest.clips)}] done {job.clip.id} in {r.seconds:.1f} s -> {job.clip.output}")
        elif r.retryable and job.tries <= self.retries:
            self.bar.stopped(job.clip.id)
            self.log(f"{job.clip.id}: attempt {r.task.attempt} failed ({r.error}); retrying")
            self.ready.append(self._clip_task(job))
        else:
            self.results[job.clip.id] = self._result(job, "failed", error=r.error)
            self.bar.settled(job.clip.id, "failed")
            self.log(f"[{len(self.results)}/{len(self.manifest.clips)}] failed {job.clip.id}: {r.error}")

    # ---- outcomes

    def _result(self, job: _Job, status: str, **extra: Any) -> ClipOutcome:
        c = job.clip
        return ClipOutcome(id=c.id, status=status, video=c.video, audio=c.audio, output=c.output, attempts=job.tries,  # type: ignore[arg-type]
                          seconds=job.seconds, identity=c.identity, profile=job.profile, **extra)

    def _fail(self, job: _Job, error: str) -> None:
        """Record a clip that fails without (or before) running."""
        job.attempt += 1
        self.journal.append(kind="clip", id=job.clip.id, run=self.run_id, status="failed", attempt=job.attempt, key=job.key,
                            output=str(job.clip.output), error=error)
        self.results[job.clip.id] = self._result(job, "failed", error=error)
        if self.bar is not None:  # a clip refused while planning is counted when the bar starts
            self.bar.settled(job.clip.id, "failed")
        self.log(f"[{len(self.results)}/{len(self.manifest.clips)}] failed {job.clip.id}: {error}")
