"""Tasks and the executors that run them: in this process, a local process pool, or Ray."""

from __future__ import annotations

import collections
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from ..core.devices import cuda_available
from ..core.errors import BadInputError, LatentdubError, MissingWeightsError, NoFaceError
from .journal import file_digest

EXECUTORS = ("inline", "local", "ray")
Executor = Literal["inline", "local", "ray"]


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
            from ..dubbing.pipeline import dub

            (task.fn or dub)(task.video, task.audio, task.output, preset=task.preset, overrides=list(task.overrides),
                             profile=task.profile, progress=task.progress, log=log, overwrite=task.overwrite)
        else:
            from ..learning.tuning import tune

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
        gpus = 1 if cuda_available() else 0
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


def make_executor(executor: str, workers: int, ray_address: Optional[str], log: Callable[[str], None]):
    """The executor named ``executor`` (one of :data:`EXECUTORS`) with ``workers`` processes where it has any."""
    if executor == "inline":
        return _InlineExecutor(log)
    if executor == "local":
        return _LocalExecutor(workers)
    return _RayExecutor(workers, ray_address, log)
