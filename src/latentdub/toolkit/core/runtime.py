"""The ``runtime`` preset section: how a run uses the machine, never what it computes.

``overlap`` runs the synthesis pass as threads joined by bounded queues
(decode -> crop and render -> composite -> encode, see
:mod:`latentdub.toolkit.core.stages`); the frames written are the same as in
the serial loop. By default it is on with a GPU, and on two or more CPU cores
for runs without neural networks (it makes a 720p offline dub on two cores
about 25% faster). ``frame_ops`` picks the implementation of the per-frame
image work (crop warps, feathered masks, compositing): ``numpy`` (OpenCV on
the CPU), ``torch`` (``grid_sample``-style ops on the run's device, see
:mod:`latentdub.toolkit.faces.torch_ops`; within one or two levels of the
numpy result) or ``auto`` (torch when the device is CUDA). ``cuda_graphs``
replays captured CUDA graphs for the generator at the batch sizes of
``graph_batches`` (and for a PTI update step); it does nothing without CUDA.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Annotated, Any, Literal

from .config import Range
from .errors import ConfigError

FrameOps = Literal["auto", "numpy", "torch"]


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Threads, queues and device paths of a run.

    ``overlap``: run decode, render, composite and encode on their own threads
    (None: when the device is CUDA, or on two or more CPU cores when the run
    has no neural networks: on the CPU torch's own threads already fill the
    cores, and the extra threads slowed a ``tiny`` dub by about 40%); ``queue_depth``: items each queue between
    two stages holds at most (memory stays flat: at most this many frames wait
    between two stages); ``frame_ops``: ``numpy``, ``torch`` or ``auto`` (torch
    on CUDA); ``cuda_graphs``: capture the generator (and PTI's update step) as
    CUDA graphs; ``graph_batches``: batch sizes captured (a batch is padded up
    to the next one; larger batches run eagerly in pieces of the largest).
    """

    overlap: bool | None = None
    queue_depth: Annotated[int, Range(ge=1, le=64)] = 4
    frame_ops: FrameOps = "auto"
    cuda_graphs: bool = False
    graph_batches: tuple[Annotated[int, Range(ge=1, le=64)], ...] = (1, 2, 4, 8)

    def check(self, where: str) -> None:
        """``graph_batches`` must be a non-empty increasing list."""
        b = self.graph_batches
        if not b or any(x >= y for x, y in itertools.pairwise(b)):
            raise ConfigError(f"{where}.graph_batches: {list(b)} must be a non-empty list of increasing batch sizes, e.g. [1, 2, 4, 8]")

    def overlapped(self, device: Any, networks: bool = False) -> bool:
        """Whether the synthesis pass runs on threads on ``device`` (a ``torch.device`` or its type name);
        ``networks``: the run renders with torch networks."""
        if self.overlap is not None:
            return self.overlap
        return _device_type(device) == "cuda" or (not networks and usable_cpus() >= 2)

    def torch_frame_ops(self, device: Any) -> bool:
        """Whether crops, masks and compositing run as torch ops on ``device``."""
        return self.frame_ops == "torch" or (self.frame_ops == "auto" and _device_type(device) == "cuda")


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity where the system reports one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _device_type(device: Any) -> str:
    return str(getattr(device, "type", device)).split(":")[0]
