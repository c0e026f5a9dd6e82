"""CUDA graphs for fixed-shape calls: replay instead of relaunching hundreds of small kernels.

At batch 1 the 1024 px generator is launch-bound (768 kernel launches per
image), and so is a PTI update. Capturing the work once per shape as a CUDA
graph and replaying it removes the launch cost without changing a single
kernel, so the numbers are those of the eager call (padding a batch to a
larger captured size can change cuDNN's algorithm choice: rounding-level
differences only).

- :class:`GraphedCall` (inference): ``fn(x)`` with ``x [B, ...]``; a batch is
  padded up to the next captured size (``buckets``, e.g. 1, 2, 4, 8; padding
  repeats the last sample and is cut from the result), larger batches run in
  pieces of the largest size. Eager when the input is not on CUDA, when
  gradients are on, or when a capture fails (said once through ``log``).
- :func:`graphed_module`: ``torch.cuda.make_graphed_callables`` of a module
  (forward and backward each one graph; autograd and the optimiser step work
  as usual), or the module itself where it cannot be captured.

Nothing here needs CUDA to import; the bucketing and fallbacks run anywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

#: Eager calls made on a side stream before a capture (cuDNN autotuning, lazy allocations).
WARMUP_CALLS = 3


def plan_batches(n: int, buckets: Sequence[int]) -> list[tuple[int, int, int | None]]:
    """Pieces ``(start, count, bucket)`` covering a batch of ``n``: whole pieces of the largest bucket, then the rest
    padded to the smallest bucket that holds it (``bucket`` None: that piece runs eagerly; only when ``buckets`` is empty)."""
    if n <= 0:
        return []
    sizes = sorted({int(b) for b in buckets})
    if not sizes:
        return [(0, n, None)]
    top, pieces, start = sizes[-1], [], 0
    while n - start > top:
        pieces.append((start, top, top))
        start += top
    rest = n - start
    pieces.append((start, rest, next(b for b in sizes if b >= rest)))
    return pieces


class GraphedCall:
    """``fn(x)`` replayed from CUDA graphs captured at the batch sizes ``buckets`` (see the module docstring).

    ``context``: a factory of the context entered around warm-up, capture and
    eager calls (e.g. autocast; CUDA graphs need ``cache_enabled=False``).
    ``captures`` counts graphs captured; ``failed`` is set once a capture
    has failed (every later call is eager).
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], buckets: Sequence[int] = (1, 2, 4, 8),
                 context: Callable[[], Any] | None = None, log: Callable[[str], None] | None = None, name: str = "call") -> None:
        self.fn = fn
        self.buckets = tuple(sorted({int(b) for b in buckets}))
        self.context = context or contextlib.nullcontext
        self.log = log
        self.name = name
        self.graphs: dict[tuple[int, tuple[int, ...], torch.dtype], tuple[torch.Tensor, torch.Tensor, Any]] = {}
        self.captures = 0
        self.failed = False

    def graphable(self, x: torch.Tensor) -> bool:
        """Whether ``x`` can go through a captured graph: on CUDA, gradients off, no failed capture."""
        return not self.failed and x.is_cuda and not torch.is_grad_enabled()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.graphable(x):
            with self.context():
                return self.fn(x)
        outs = []
        for start, count, bucket in plan_batches(x.shape[0], self.buckets):
            piece = x[start : start + count]
            outs.append(self._replay(piece, bucket) if bucket is not None else self._eager(piece))
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def prepare(self, example: torch.Tensor) -> int:
        """Capture every bucket now, for inputs shaped like ``example`` ``[b, ...]`` (b >= 1); returns the graphs held.

        Call it before other threads use the GPU (the pipeline's render thread
        would otherwise capture while the composite thread runs kernels).
        """
        if self.graphable(example):
            for bucket in self.buckets:
                if not self.failed:
                    self._replay(example[:1].expand(bucket, *example.shape[1:]), bucket)
        return len(self.graphs)

    def _eager(self, x: torch.Tensor) -> torch.Tensor:
        with self.context():
            return self.fn(x)

    @torch.inference_mode()
    def _replay(self, x: torch.Tensor, bucket: int) -> torch.Tensor:
        key = (bucket, tuple(x.shape[1:]), x.dtype)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self._try_capture(x, bucket)
            if entry is None:
                return self._eager(x)
            self.graphs[key] = entry
        static_in, static_out, graph = entry
        n = x.shape[0]
        static_in[:n].copy_(x)
        if n < bucket:
            static_in[n:].copy_(x[-1:].expand(bucket - n, *x.shape[1:]))
        graph.replay()
        return static_out[:n].clone()

    def _try_capture(self, x: torch.Tensor, bucket: int) -> tuple[torch.Tensor, torch.Tensor, Any] | None:
        try:
            entry = self.capture(x, bucket)
        except Exception as exc:  # noqa: BLE001 - any capture failure means: run eagerly, say so once
            self.failed = True
            if self.log is not None:
                self.log(f"cuda graphs: capturing {self.name} at batch {bucket} failed ({type(exc).__name__}: {exc}); running it eagerly")
            return None
        self.captures += 1
        return entry

    def capture(self, x: torch.Tensor, bucket: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """(static input ``[bucket, ...]``, static output, graph) for inputs shaped like ``x`` (CUDA only)."""
        static_in = x[:1].expand(bucket, *x.shape[1:]).clone()
        stream = torch.cuda.Stream(device=x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream), self.context():
            for _ in range(WARMUP_CALLS):
                self.fn(static_in)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: kernels that other threads launch meanwhile neither fail nor spoil the capture
        with torch.cuda.graph(graph, capture_error_mode="thread_local"), self.context():
            static_out = self.fn(static_in)
        return static_in, static_out, graph


def graphed_module(module: torch.nn.Module, sample_args: tuple[torch.Tensor, ...], log: Callable[[str], None] | None = None,
                   name: str = "module") -> Callable[..., Any]:
    """``torch.cuda.make_graphed_callables(module, sample_args)`` when the samples are on CUDA, else ``module``.

    The graphed callable accepts only inputs shaped like ``sample_args``
    (same dtypes, same ``requires_grad``); the caller sends other shapes to
    ``module``. A failed capture is said once through ``log`` and returns ``module``.
    """
    if not all(a.is_cuda for a in sample_args):
        return module
    try:
        return torch.cuda.make_graphed_callables(module, sample_args, num_warmup_iters=WARMUP_CALLS)
    except Exception as exc:  # noqa: BLE001
        if log is not None:
            log(f"cuda graphs: capturing {name} failed ({type(exc).__name__}: {exc}); running it eagerly")
        return module
