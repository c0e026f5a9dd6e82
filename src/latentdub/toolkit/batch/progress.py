"""The batch-level progress bar: clips settled out of all clips of the manifest, with an ETA.

The driver process updates it as each result arrives from whatever executor
runs the clips (this process, a process pool, Ray), so it needs nothing from
the workers. The ETA comes from this run's pace: clips skipped or refused at
planning count as settled from the start but not in the rate.
"""

from __future__ import annotations

import collections
from typing import Callable


class BatchProgress:
    """One tqdm bar over the manifest's clips; ``log`` lines are written above it without tearing it."""

    def __init__(self, total: int, settled: int, statuses: collections.Counter, enabled: bool) -> None:
        from tqdm import tqdm

        self.statuses = statuses
        self.running: list[str] = []
        self.bar = tqdm(total=total, initial=settled, desc="batch", unit="clip", disable=not enabled, dynamic_ncols=True, position=0, leave=True)
        self._postfix()

    def started(self, task_id: str) -> None:
        """A clip (or an identity profile) was handed to the executor."""
        self.running.append(task_id)
        self._postfix()

    def settled(self, clip_id: str, status: str) -> None:
        """A clip finished (``done``) or failed for good in this run."""
        if clip_id in self.running:
            self.running.remove(clip_id)
        self.statuses[status] += 1
        self.bar.update(1)
        self._postfix()

    def stopped(self, task_id: str) -> None:
        """A task ended without settling a clip (a profile was tuned, or a try failed and will be retried)."""
        if task_id in self.running:
            self.running.remove(task_id)
        self._postfix()

    def wrap(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """``log`` writing around the bar (the bar is redrawn below the line)."""
        from tqdm import tqdm

        def write(message: str) -> None:
            with tqdm.external_write_mode():
                log(message)

        return write if not self.bar.disable else log

    def close(self) -> None:
        self.bar.close()

    def _postfix(self) -> None:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()) if v)
        now = f"running {', '.join(self.running[:3])}{' ...' if len(self.running) > 3 else ''}" if self.running else ""
        self.bar.set_postfix_str("; ".join(p for p in (counts, now) if p), refresh=True)
