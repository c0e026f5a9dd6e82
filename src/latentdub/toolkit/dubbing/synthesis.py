"""The synthesis pass as stages: decode -> crop and render -> composite -> encode.

:func:`run_frames` is the pipeline's render loop, cut into four
stages that :func:`~latentdub.toolkit.core.stages.run_stages` runs either on
threads joined by bounded queues (``runtime.overlap``) or one after another
in the calling thread. Both modes hand the renderer the same batches (the
renderer's ``batch_size`` consecutive output frames) and write the same
frames in the same order, so an overlapped run writes byte-identical files.

With ``runtime.frame_ops`` torch (``auto`` on CUDA) the crop warps, masks
and blends run on the run's device (:mod:`latentdub.toolkit.faces.torch_ops`);
a renderer with ``render_torch`` (:class:`~latentdub.toolkit.core.protocols.TorchRenderer`)
and a compositor with ``composite_torch``
(:class:`~latentdub.toolkit.core.protocols.TorchCompositor`) then keep the
frames on the device from upload to the finished frame; other components get
numpy arrays as usual.

Items between stages are single frames, so each queue holds at most
``runtime.queue_depth`` frames (the render stage holds one batch more).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..core import protocols
from ..core.stages import run_stages
from ..core.types import Motion, TrackedFace

Writer = Callable[[np.ndarray, np.ndarray], None]


@dataclasses.dataclass
class _Item:
    """One output frame on its way through the stages."""

    index: int
    image: np.ndarray  # the source frame, uint8 [H, W, 3]
    tracked: TrackedFace | None
    frame: Any = None  # the source frame as a device tensor (torch frame ops)
    rendered: Any = None  # the rendered crop, uint8 [S, S, 3] (numpy or tensor); None: passed through
    out: np.ndarray | None = None  # the finished frame

    @property
    def has_face(self) -> bool:
        return self.tracked is not None and self.tracked.face is not None


def _landmarks(face: Any) -> np.ndarray:
    return face.landmarks68 if face.landmarks68 is not None else face.landmarks5


def runs_overlapped(components: Any) -> bool:
    """Whether this run's passes use threads (``runtime.overlap``; its default depends on whether the run renders with networks)."""
    return components.preset.runtime.overlapped(components.device, networks="generator" in components.preset.stages)


class FrameStages:
    """The stage functions of one synthesis pass (see the module docstring)."""

    def __init__(self, components: Any, motion: Motion, device: Any, torch_ops: bool) -> None:
        self.renderer = components["renderer"]
        self.compositor = components["compositor"]
        self.batch_size = int(getattr(self.renderer, "batch_size", 1) or 1)
        self.motion = motion
        self.device = device
        self.torch_ops = torch_ops

    # -- render: crops of each batch's faces, rendered in one call
    def render(self, items: Iterator[_Item]) -> Iterator[_Item]:
        batch: list[_Item] = []
        for item in items:
            batch.append(item)
            if len(batch) >= self.batch_size:
                yield from self._render_batch(batch)
                batch = []
        if batch:
            yield from self._render_batch(batch)

    def _render_batch(self, batch: list[_Item]) -> list[_Item]:
        todo = [it for it in batch if it.has_face]
        if not todo:
            return batch
        lms = np.stack([it.tracked.alignment.apply(_landmarks(it.tracked.face)) for it in todo])
        frames = np.array([it.index for it in todo])
        if self.torch_ops:
            from ..faces.torch_ops import frame_tensor, warp_crops

            for it in todo:
                it.frame = frame_tensor(it.image, self.device)
            crops = warp_crops([it.frame for it in todo], [it.tracked.alignment for it in todo])
            if isinstance(self.renderer, protocols.TorchRenderer):
                rendered = self.renderer.render_torch(crops, lms, self.motion, frames)
            else:
                import torch

                rendered = torch.from_numpy(np.ascontiguousarray(self.renderer.render(crops.cpu().numpy(), lms, self.motion, frames))).to(self.device)
        else:
            from ..faces.align import warp_to_crop

            crops = np.stack([warp_to_crop(it.image, it.tracked.alignment) for it in todo])
            rendered = self.renderer.render(crops, lms, self.motion, frames)
        for it, crop in zip(todo, rendered):
            it.rendered = crop
        return batch

    # -- composite: each face crop blended back into its frame
    def composite(self, items: Iterator[_Item]) -> Iterator[_Item]:
        for item in items:
            if item.rendered is None:
                item.out = item.image
            elif self.torch_ops and isinstance(self.compositor, protocols.TorchCompositor):
                out = self.compositor.composite_torch(item.frame, item.rendered, item.tracked.alignment, _landmarks(item.tracked.face))
                item.out = out.cpu().numpy()
            else:
                crop = item.rendered.cpu().numpy() if hasattr(item.rendered, "cpu") else item.rendered
                item.out = self.compositor.composite(item.image, crop, item.tracked.alignment, _landmarks(item.tracked.face))
            item.frame = item.rendered = None  # free device memory before the encoder's queue
            yield item


def run_frames(
    components: Any, motion: Motion, writers: list[Writer], summary: Any, frame_for: Callable[[int], tuple[np.ndarray, TrackedFace | None]],
    n_out: int, bar: Any, dubbed: int,
) -> None:
    """Synthesise ``n_out`` frames, serially or overlapped as ``components.preset.runtime`` asks.

    Each finished frame goes to every ``writers`` entry as ``write(source, out)``
    (on the encode thread when overlapped); ``summary.frame_kinds[t]`` becomes
    ``dubbed`` for every dubbed frame, and ``summary.busy_seconds`` gets each
    stage's busy time. A run that sets ``runtime.overlap`` or uses torch frame ops says how it ran in a note.
    """
    runtime = components.preset.runtime
    device = components.device
    overlapped = runs_overlapped(components)
    stages = FrameStages(components, motion, device, runtime.torch_frame_ops(device))

    def decode() -> Iterator[_Item]:
        for t in range(n_out):
            image, tracked = frame_for(t)
            yield _Item(t, image, tracked)

    def encode(items: Iterator[_Item]) -> Iterator[None]:
        for item in items:
            if item.has_face:
                summary.frames_with_face += 1
                summary.frame_kinds[item.index] = dubbed
            else:
                summary.frames_passed_through += 1
            for write in writers:
                write(item.image, item.out)
            bar.update(1)
        yield from ()

    timings: dict[str, float] = {}
    run_stages(
        decode, [("render", stages.render), ("composite", stages.composite), ("encode", encode)],
        depth=runtime.queue_depth, serial=not overlapped, timings=timings,
    )
    summary.busy_seconds.update(timings)
    if runtime.overlap is not None or stages.torch_ops:  # asked for explicitly, or the device path
        mode = "overlapped" if overlapped else "serial"
        ops = "torch" if stages.torch_ops else "numpy"
        summary.notes.append(f"synthesis {mode}, {ops} frame ops on {device}; busy seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
