"""A small threaded stage pipeline joined by bounded queues.

A run is a source (an iterable) and a chain of stages; each stage is a
function from an iterator of items to an iterator of items (so a stage may
batch, drop or split items), and the last stage's results are discarded.
:func:`run_stages` gives the source and every stage a thread of its own and
joins neighbours with a ``queue.Queue(maxsize=depth)``: a fast producer
blocks instead of piling up items, so at most ``depth`` items wait between
two stages and memory stays flat whatever the clip's length.

The first exception raised anywhere (``KeyboardInterrupt`` included, in a
stage or in the calling thread while it waits) stops every thread, and
:func:`run_stages` re-raises it once all of them have ended: no thread
outlives the call. ``serial=True`` runs the same chain in the calling thread
(the same items in the same order), which is how the overlapped and serial
runs stay byte-identical.

Each stage's *busy* seconds (time inside its own code, not waiting on a
queue) are recorded in ``timings``, so the summary can say which stage bounds
the throughput.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

#: A stage: its name and a function from an iterator of inputs to an iterator of outputs.
Stage = tuple[str, Callable[[Iterator[Any]], Iterable[Any]]]
#: Seconds between checks of the stop flag while a thread waits on a queue.
POLL_S = 0.05
#: Seconds ``run_stages`` waits for a stopped thread to end before giving up on it.
JOIN_S = 30.0


class _End:
    """Marks the end of a stream in a queue."""


_END = _End()


class _Stopped(Exception):
    """Raised inside a thread whose run was stopped by another thread's failure."""


class _Run:
    """Shared state of one :func:`run_stages` call: the stop flag, the first error, the busy times."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.timings = timings if timings is not None else {}

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = exc
        self.stop.set()

    def add_time(self, name: str, seconds: float) -> None:
        with self.lock:
            self.timings[name] = self.timings.get(name, 0.0) + seconds

    def put(self, q: queue.Queue[Any], item: Any) -> float:
        """Put ``item`` (waiting while ``q`` is full); returns the seconds waited."""
        start = time.perf_counter()
        while True:
            if self.stop.is_set():
                raise _Stopped()
            try:
                q.put(item, timeout=POLL_S)
                return time.perf_counter() - start
            except queue.Full:
                continue

    def get(self, q: queue.Queue[Any]) -> tuple[Any, float]:
        start = time.perf_counter()
        while True:
            if self.stop.is_set():
                raise _Stopped()
            try:
                return q.get(timeout=POLL_S), time.perf_counter() - start
            except queue.Empty:
                continue


class _Inbox:
    """The iterator a stage reads: items from its input queue until the end marker; counts the seconds waited."""

    def __init__(self, run: _Run, q: queue.Queue[Any]) -> None:
        self.run, self.q, self.waited, self.done = run, q, 0.0, False

    def __iter__(self) -> _Inbox:
        return self

    def __next__(self) -> Any:
        if self.done:
            raise StopIteration
        item, waited = self.run.get(self.q)
        self.waited += waited
        if item is _END:
            self.done = True
            raise StopIteration
        return item


def _worker(run: _Run, name: str, produce: Callable[[], Iterable[Any]], inbox: _Inbox | None, out: queue.Queue[Any] | None) -> None:
    start, waited_out = time.perf_counter(), 0.0
    items: Any = None
    try:
        items = iter(produce())
        for item in items:
            if out is not None:
                waited_out += run.put(out, item)
        if out is not None:
            waited_out += run.put(out, _END)
    except _Stopped:
        pass
    except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt in a stage stops the whole run too
        run.fail(exc)
    finally:
        try:
            _close(items)  # a generator's own cleanup (an ffmpeg decoder is stopped) runs on this thread
        except BaseException as exc:  # noqa: BLE001
            run.fail(exc)
        waited_in = inbox.waited if inbox is not None else 0.0
        run.add_time(name, time.perf_counter() - start - waited_in - waited_out)


def run_stages(
    source: Callable[[], Iterable[Any]],
    stages: Sequence[Stage],
    depth: int = 4,
    *,
    serial: bool = False,
    source_name: str = "decode",
    timings: dict[str, float] | None = None,
    on_threads: Callable[[list[threading.Thread]], None] | None = None,
) -> None:
    """Run ``source()`` through ``stages`` (each ``(name, fn)``, ``fn(iterator) -> iterable``), threaded or ``serial``.

    ``depth``: capacity of each queue between two threads (>= 1). Re-raises
    the first exception of any thread after every thread has ended;
    ``timings`` (name -> busy seconds) is filled in either mode.
    ``on_threads`` sees the started threads (tests check none outlives the run).
    """
    if depth < 1:
        raise ValueError(f"queue depth must be >= 1, got {depth}")
    if serial:
        _run_serial(source, stages, timings if timings is not None else {}, source_name)
        return
    run = _Run(timings)
    queues = [queue.Queue(maxsize=depth) for _ in stages]
    threads = [threading.Thread(target=_worker, args=(run, source_name, source, None, queues[0] if queues else None), name=f"latentdub-{source_name}", daemon=True)]
    for i, (name, fn) in enumerate(stages):
        inbox = _Inbox(run, queues[i])
        out = queues[i + 1] if i + 1 < len(queues) else None
        threads.append(threading.Thread(target=_worker, args=(run, name, lambda fn=fn, inbox=inbox: fn(inbox), inbox, out), name=f"latentdub-{name}", daemon=True))
    started: list[threading.Thread] = []
    interrupted: list[int] = []

    def on_signal(signum: int) -> None:  # Ctrl-C stops every thread now; it is raised once they have all ended
        interrupted.append(signum)
        run.stop.set()

    try:
        # held for the whole run: a signal that interrupts Thread.join can mark a live thread as ended
        # (CPython 3.11's _wait_for_tstate_lock), and the caller would then close what that thread still uses
        with _signals_held(on_signal):
            try:
                for t in threads:
                    t.start()
                    started.append(t)
                if on_threads is not None:
                    on_threads(threads)
                for t in started:
                    while t.is_alive():
                        t.join(POLL_S)
            except BaseException as exc:  # noqa: BLE001 - any error in the waiting thread stops everything
                run.fail(exc)
            finally:
                _stop_and_join(run, started)
    except BaseException as exc:  # noqa: BLE001 - the held Ctrl-C, raised as the signals are given back
        run.fail(exc)
    if run.error is None and interrupted:  # a handler that did not raise: the run still did not finish
        run.fail(KeyboardInterrupt())
    if run.error is not None:
        raise run.error


@contextlib.contextmanager
def _signals_held(on_signal: Callable[[int], None] | None = None) -> Iterator[None]:
    """Hold Ctrl-C (SIGINT, and SIGTERM) back while threads start, run and are joined, so none is left running unrecorded.

    Python runs signal handlers in the main thread between any two bytecodes,
    ``Thread.start`` and ``Thread.join`` included; a signal that comes
    meanwhile is recorded, passed to ``on_signal`` (unless it is ignored) and
    handed to the previous handler on leaving (which raises
    ``KeyboardInterrupt`` for Ctrl-C). Off the main thread signals never
    arrive, and nothing is changed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous: dict[int, Any] = {}

    def record(signum: int, frame: Any) -> None:
        came.append(signum)
        if on_signal is not None and previous.get(signum) != signal.SIG_IGN:
            on_signal(signum)

    try:
        for sig in held:
            previous[sig] = signal.signal(sig, record)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in came[:1]:
            handler = previous.get(signum)
            if callable(handler):
                handler(signum, None)
            elif handler != signal.SIG_IGN:
                raise KeyboardInterrupt


def _stop_and_join(run: _Run, threads: list[threading.Thread]) -> None:
    """Stop ``threads`` and wait for them; a Ctrl-C meanwhile is held until they have ended, then raised."""
    run.stop.set()
    deadline = time.monotonic() + JOIN_S
    with _signals_held():
        for t in threads:
            while t.is_alive() and time.monotonic() < deadline:
                t.join(POLL_S)


class _TimedIter:
    """Wraps a stage's output iterator; its own seconds (not those of the stage before it) are charged to ``name``."""

    def __init__(self, it: Iterator[Any], name: str, timings: dict[str, float], upstream: _TimedIter | None = None) -> None:
        self.it, self.name, self.timings, self.upstream = it, name, timings, upstream
        self.total = 0.0  # seconds inside __next__, upstream included

    def __iter__(self) -> _TimedIter:
        return self

    def __next__(self) -> Any:
        start = time.perf_counter()
        before = self.upstream.total if self.upstream is not None else 0.0
        try:
            return next(self.it)
        finally:
            spent = time.perf_counter() - start
            self.total += spent
            inner = (self.upstream.total if self.upstream is not None else 0.0) - before
            self.timings[self.name] = self.timings.get(self.name, 0.0) + spent - inner


def _run_serial(source: Callable[[], Iterable[Any]], stages: Sequence[Stage], timings: dict[str, float], source_name: str) -> None:
    it = _TimedIter(iter(source()), source_name, timings)
    chain = [it]
    try:
        for name, fn in stages:
            it = _TimedIter(iter(fn(it)), name, timings, upstream=it)
            chain.append(it)
        for _ in it:
            pass
    finally:
        for link in reversed(chain):
            _close(link.it)


def _close(it: Any) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()


def prefetch(items: Iterable[Any], depth: int = 4, name: str = "prefetch") -> Iterator[Any]:
    """Iterate ``items`` on a background thread, at most ``depth`` ahead of the consumer.

    Used to decode frames while the calling thread detects faces. Exceptions
    of the producer are re-raised in the consumer; closing the returned
    generator (or leaving it early) stops and joins the thread.
    """
    run = _Run(None)
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    thread = threading.Thread(target=_worker, args=(run, name, lambda: items, None, q), name=f"latentdub-{name}", daemon=True)
    started: list[threading.Thread] = []
    try:
        with _signals_held():
            thread.start()
            started.append(thread)
        while True:
            try:
                item, _ = run.get(q)
            except _Stopped:
                break
            if item is _END:
                break
            yield item
    finally:
        _stop_and_join(run, started)
    if run.error is not None:
        raise run.error
