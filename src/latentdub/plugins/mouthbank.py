"""Renderer "mouthbank": the clip's own mouths, re-timed to the new speech (after Video Rewrite, Bregler et al. 1997).

Study pass: every aligned source crop's lower face is kept in a bank
(:class:`MouthBank`, bounded in entries and bytes, spilled to a file in a
temporary folder when large, read back an entry at a time) with its landmarks, its head pose
(:func:`~latentdub.toolkit.faces.measures.head_pose`) and, once the clip is
seen, its mouth shape (:func:`~latentdub.toolkit.faces.measures.mouth_shapes`:
opening, width, protrusion in the units of the ``mouth`` motion codes).

Selection (:meth:`MouthBankRenderer.plan`): for each output frame the
``candidates`` bank entries of least cost (the mouth-shape distance to the
target code, plus the pose distance and a saturating time distance to the
source frame it is drawn on, ``Motion.extra["source_index"]``), plus the
entries that continue the previous frame's candidates; a Viterbi pass over
the whole timeline then minimises those costs plus a transition cost (0 for
the next source frame, ``hold_cost`` for the same one, ``jump_cost`` plus how
unlike the mouth that would have come next the new one looks otherwise,
:func:`mouth_look`), so choices do not flicker, runs of consecutive real
frames win and cuts go between mouths that look alike. The target openings
are first scaled towards the speaker's own range (by at most
``least_opening_scale``). The source's phones are not known to a renderer (the study pass shows
crops, not the clip's sound), so the bank is indexed by measured shape and
pose only.

Rendering: the target landmarks are those the ``warp`` renderer would give
the current face for the code (:meth:`WarpRenderer.target_shape`); the chosen
real mouth is mapped onto them with the warp renderer's triangle mesh (a
similarity of the whole face plus the small residual of the mouth shape in
one piecewise-affine map), cross-faded with the neighbouring choice at each
jump, colour-matched in the feather band and blended into the lower face
inside the jaw line (``jaw_inset``); the jaw line and what lies beyond it
(neck, collar, hair, backdrop) are the frame's own, moved to the target
shape by the warp renderer, so nothing from another moment of the clip shows
there. Frames whose target opening the bank cannot serve (the clip
never opens that wide, or never closes) are drawn by the warp renderer and
reported (:class:`~latentdub.toolkit.core.types.RenderReport`).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Annotated, Literal

import cv2
import numpy as np

from latentdub.plugins.warp_renderer import (
    WarpRenderer,
    WarpRendererConfig,
    anchors,
    mesh,
    piecewise_affine_map,
)
from latentdub.toolkit.core.config import Range
from latentdub.toolkit.core.errors import BadInputError
from latentdub.toolkit.core.files import RowFile
from latentdub.toolkit.core.hookspecs import hookimpl
from latentdub.toolkit.core.types import Motion, RenderReport
from latentdub.toolkit.faces.masks import (
    apply_colour_transfer,
    colour_transfer,
    feathered_polygon,
    grown_hull,
    inter_ocular,
)
from latentdub.toolkit.faces.measures import head_pose, mouth_shapes, neutral_mouth

#: Part of the aligned crop a bank entry keeps: rows from this fraction of the side down, columns between these fractions.
_BOX_TOP, _BOX_LEFT, _BOX_RIGHT = 0.45, 0.08, 0.92
#: Look of an entry (:func:`mouth_look`): grey patch (w, h) px with the mouth corners at (x, y) and (w - x, y).
_LOOK_SIZE, _LOOK_CORNER = (32, 24), (6, 9)


@dataclasses.dataclass(frozen=True)
class MouthBankConfig:
    """Settings of the mouth-bank renderer (lengths in IOD, the inter-ocular distance)."""

    #: Most bank entries kept; longer clips keep every 2nd, 4th, ... frame.
    max_entries: Annotated[int, Range(ge=16, le=100000)] = 3000
    #: Most bytes of crops the bank holds (MiB); bounds the entries for large crops.
    max_bank_mb: Annotated[float, Range(gt=0, le=65536)] = 512.0
    #: Crops held in memory (MiB) before the bank moves to a file in a temporary folder.
    memory_mb: Annotated[float, Range(ge=0, le=65536)] = 32.0
    #: Fewest studied face crops that make a bank; with fewer the warp renderer draws every frame.
    min_entries: Annotated[int, Range(ge=1, le=10000)] = 25
    #: Nearest bank entries per output frame the timeline search considers.
    candidates: Annotated[int, Range(ge=1, le=256)] = 12
    #: Least scale on the target openings that brings them towards the clip's own range (1: never scaled): a speaker
    #: who opens little is dubbed opening little, with fewer warp fallbacks and steadier mouths (docs/benchmarks.md).
    least_opening_scale: Annotated[float, Range(gt=0, le=1)] = 0.75
    #: A frame falls back to the warp renderer when no entry's opening is within this of the target (IOD).
    max_opening_gap: Annotated[float, Range(gt=0, le=1)] = 0.05
    #: Shape differences that cost 1 (opening and width in IOD, protrusion in code units).
    opening_scale: Annotated[float, Range(gt=0, le=1)] = 0.03
    width_scale: Annotated[float, Range(gt=0, le=1)] = 0.06
    protrusion_scale: Annotated[float, Range(gt=0, le=10)] = 0.5
    #: Head-pose difference (yaw and pitch proxies in IOD, roll in radians) that costs 1.
    pose_scale: Annotated[float, Range(gt=0, le=1)] = 0.05
    #: Cost of a bank entry far in time from the source frame it is drawn on (lighting, pose and backdrop drift):
    #: ``time_cost * (1 - exp(-seconds apart / time_scale))``.
    time_cost: Annotated[float, Range(ge=0, le=100)] = 4.0
    time_scale: Annotated[float, Range(gt=0, le=3600)] = 1.0
    #: Transition costs: showing the same entry again, and any jump that is not the next source frame.
    hold_cost: Annotated[float, Range(ge=0, le=100)] = 1.0
    jump_cost: Annotated[float, Range(ge=0, le=100)] = 3.0
    #: A jump costs 1 more per this many grey levels of mean difference between the mouth it cuts to and the one
    #: that would have come next (:func:`mouth_look`), so cuts go to mouths that look alike (teeth, tongue, light).
    look_scale: Annotated[float, Range(gt=0, le=255)] = 4.0
    #: Weight of the neighbouring choice cross-faded in on both sides of a jump, and of the warp drawing next to a fallback frame.
    crossfade: Annotated[float, Range(ge=0, le=0.5)] = 0.33
    #: Real mouths are pasted inside the jaw line, this far in, feathered with this sigma (IOD); the jaw line and what lies
    #: beyond it (neck, collar, backdrop) are the frame's own, moved to the target by the warp renderer (:func:`inside_jaw`).
    jaw_inset: Annotated[float, Range(ge=0, le=0.5)] = 0.12
    feather: Annotated[float, Range(ge=0, le=0.5)] = 0.05
    #: Colour transfer of the chosen mouth to the crop, measured in the feather band.
    color_match: Literal["none", "mean_std", "lab"] = "mean_std"
    #: Weight of the frame before's colour transfer (per-channel gain and offset) in each frame's: the light on a face
    #: changes slowly, the statistics of a thin band do not (0.8: a time constant of about 5 frames; 0: every frame alone).
    color_steadiness: Annotated[float, Range(ge=0, lt=1)] = 0.8
    #: The warp renderer that draws frames the bank cannot serve (it paints their whole interior rather than stretch a real one).
    warp: WarpRendererConfig = dataclasses.field(default_factory=lambda: WarpRendererConfig(paint_floor=1.0))


class MouthBank:
    """Lower-face crops of the source with their landmarks, frame indices and poses.

    Entries are kept in source order. When ``capacity`` is reached every
    second entry is dropped and only every ``stride``-th studied crop is
    kept from then on, so the bank stays bounded whatever the clip length.
    Crops live in memory up to ``memory_bytes``, then in a :class:`~latentdub.toolkit.core.files.RowFile`.
    """

    def __init__(self, max_entries: int, max_bytes: float, memory_bytes: float) -> None:
        self.max_entries, self.max_bytes, self.memory_bytes = max_entries, max_bytes, memory_bytes
        self.count = self.seen = 0
        self.stride = 1
        self.box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 in crop px
        self.images: np.ndarray | None = None
        self.capacity = 0
        self.on_disk = False
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.frames = np.zeros(0, np.int64)
        self.landmarks = np.zeros((0, 68, 2), np.float32)  # entry px (crop px minus the box origin)
        self.poses = np.zeros((0, 3), np.float32)
        self.looks = np.zeros((0, _LOOK_SIZE[0] * _LOOK_SIZE[1]), np.float32)
        #: Pose of every studied frame (frame index, pose), for the source frames output frames are drawn on.
        self.studied: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, crops: np.ndarray, landmarks68: np.ndarray, frames: np.ndarray) -> None:
        """Keep crops uint8 ``[B, S, S, 3]`` with landmarks ``[B, 68, 2]`` (crop px) of source frames ``[B]``."""
        poses = head_pose(landmarks68).astype(np.float32)
        self.studied.append((np.asarray(frames, np.int64).copy(), poses))
        if self.box is None:
            size = crops.shape[1]
            self.box = (round(_BOX_LEFT * size), round(_BOX_TOP * size), round(_BOX_RIGHT * size), size)
            x0, y0, x1, y1 = self.box
            entry = (y1 - y0) * (x1 - x0) * 3
            self.capacity = int(max(1, min(self.max_entries, self.max_bytes // entry)))
            self.images = np.empty((min(self.capacity, max(1, int(self.memory_bytes // entry))), y1 - y0, x1 - x0, 3), np.uint8)
            self.frames = np.zeros(self.capacity, np.int64)
            self.landmarks = np.zeros((self.capacity, 68, 2), np.float32)
            self.poses = np.zeros((self.capacity, 3), np.float32)
            self.looks = np.zeros((self.capacity, _LOOK_SIZE[0] * _LOOK_SIZE[1]), np.float32)
        x0, y0, x1, y1 = self.box
        for crop, points, frame, pose in zip(crops, landmarks68, frames, poses):
            self.seen += 1
            if (self.seen - 1) % self.stride:
                continue
            if self.count == self.capacity:
                self._halve()
                if (self.seen - 1) % self.stride:
                    continue
            if self.count == len(self.images):
                self._spill()
            self.images[self.count] = crop[y0:y1, x0:x1]
            self.frames[self.count] = frame
            self.landmarks[self.count] = points - np.array([x0, y0], np.float32)
            self.poses[self.count] = pose
            self.looks[self.count] = mouth_look(crop, points)
            self.count += 1

    def _halve(self) -> None:
        keep = np.arange(0, self.count, 2)
        for array in (self.frames, self.landmarks, self.poses, self.looks) + (() if self.on_disk else (self.images,)):
            array[: len(keep)] = array[keep]
        if self.on_disk:
            for new, old in enumerate(keep):  # ascending, new <= old: nothing is overwritten before it is read
                self.images[new] = self.images[old]
        self.count, self.stride = len(keep), self.stride * 2

    def _spill(self) -> None:
        """Move the crops to a file of the full capacity in a temporary folder."""
        self._tmp = tempfile.TemporaryDirectory(prefix="latentdub-mouthbank-")
        disk = RowFile(Path(self._tmp.name) / "bank.u8", self.capacity, self.images.shape[1:])
        for i in range(self.count):
            disk[i] = self.images[i]
        self.images, self.on_disk = disk, True

    def source_poses(self, frames: np.ndarray) -> np.ndarray:
        """Pose float32 ``[len(frames), 3]`` of the studied frame nearest each source frame index."""
        seen = np.concatenate([f for f, _ in self.studied])
        poses = np.concatenate([p for _, p in self.studied])
        order = np.argsort(seen)
        seen, poses = seen[order], poses[order]
        at = np.clip(np.searchsorted(seen, frames), 1, len(seen) - 1) if len(seen) > 1 else np.zeros(len(frames), int)
        if len(seen) > 1:
            at = np.where(np.abs(seen[at - 1] - frames) <= np.abs(seen[at] - frames), at - 1, at)
        return poses[at]

    def close(self) -> None:
        """Delete the bank's file (if any)."""
        if isinstance(self.images, RowFile):
            self.images.close()
        self.images = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def mouth_look(crop: np.ndarray, points68: np.ndarray) -> np.ndarray:
    """What a mouth looks like, float32 ``[h * w]``: the grey crop uint8 ``[S, S, 3]`` around the mouth, scaled and
    rotated so the corners (landmarks 48, 54, crop px) land on fixed points of a small patch, mean removed."""
    (w, h), (cx, cy) = _LOOK_SIZE, _LOOK_CORNER
    left, right = np.asarray(points68[48], np.float64), np.asarray(points68[54], np.float64)
    length = max(float(np.hypot(*(right - left))), 1e-6)
    cos, sin = (right - left) / length * (w - 2 * cx) / length  # maps the corner-to-corner vector onto (w - 2 cx, 0)
    rotation = np.array([[cos, sin], [-sin, cos]])
    matrix = np.concatenate([rotation, (np.array([cx, cy]) - rotation @ left)[:, None]], axis=1)
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    patch = cv2.warpAffine(grey, matrix, (w, h), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE).astype(np.float32).ravel()
    return patch - patch.mean()


def inside_jaw(points68: np.ndarray, inset: float) -> np.ndarray:
    """Convex polygon float64 ``[K, 2]`` of the lower face (jaw points 2-14 and the nostrils, landmarks ``[68, 2]`` px)
    with the jaw points pulled ``inset`` px towards the nose base (landmark 33)."""
    points = np.asarray(points68, np.float64)
    jaw = points[2:15]
    inward = points[33] - jaw
    jaw = jaw + inward / np.maximum(np.linalg.norm(inward, axis=1, keepdims=True), 1e-6) * inset
    return grown_hull(np.concatenate([jaw, points[31:36]]), 0.0)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the renderer draws at each output frame.

    ``codes``: the target float64 ``[T, 3]`` (openings fitted to the clip's
    range, ``least_opening_scale``); ``primary``, ``secondary``: bank positions
    int64 ``[T]`` (-1: none); ``weight``: float32 ``[T]`` of the secondary;
    ``fallback``: {frame: reason} for the frames the warp renderer draws.
    """

    codes: np.ndarray
    primary: np.ndarray
    secondary: np.ndarray
    weight: np.ndarray
    fallback: dict[int, str]


class MouthBankRenderer:
    """Dubs each crop with a real mouth of the same clip (see the module doc); the warp renderer serves the rest."""

    motion_kinds = ("mouth",)

    def __init__(self, config: MouthBankConfig = MouthBankConfig()) -> None:
        self.config = config
        self.warp = WarpRenderer(config.warp)
        self.bank = MouthBank(config.max_entries, config.max_bank_mb * 2**20, config.memory_mb * 2**20)
        self.unusable: str | None = None  # why the bank serves no frame
        self.shapes = np.zeros((0, 3))
        self._plan: tuple[int, Plan] | None = None
        self._drawn: dict[int, str] = {}  # output frame -> fallback reason, for frames rendered so far
        self._transfer: tuple[int, np.ndarray] | None = None  # (output frame, its colour transfer [3, 4])
        self._banked = 0

    def study(self, crops: np.ndarray, landmarks: np.ndarray, frames: np.ndarray) -> None:
        """Bank one batch of source crops uint8 ``[B, S, S, 3]``, landmarks ``[B, P, 2]`` crop px, frames ``[B]``."""
        if np.shape(landmarks)[1] != 68:
            self.unusable = "the detector gives 5 landmarks, which carry no mouth shape (use detector.plugin: dlib)"
            return
        self.bank.add(np.asarray(crops), np.asarray(landmarks, np.float32), np.asarray(frames))

    def prepare(self, crops: np.ndarray, landmarks: np.ndarray) -> None:
        """Prepare the warp fallback on the reference crops and measure the bank's mouth shapes; returns None."""
        self.warp.prepare(crops, landmarks)
        bank = self.bank
        if self.unusable is None and bank.count < self.config.min_entries:
            self.unusable = (
                f"{bank.count} source face crop{'s' * (bank.count != 1)} (a still or a very short clip) are too few for a mouth bank "
                f"(renderer.min_entries={self.config.min_entries}); give a clip of at least {self.config.min_entries} frames with a face"
            )
        if self.unusable is None:
            points = bank.landmarks[: bank.count].astype(np.float64)
            self.shapes = mouth_shapes(points, neutral_mouth(points))

    def plan(self, motion: Motion) -> Plan:
        """Bank entries for every frame of ``motion`` (codes float32 ``[T, 3]``), chosen over the whole timeline."""
        if self._plan is not None and self._plan[0] == id(motion):
            return self._plan[1]
        cfg, bank = self.config, self.bank
        codes = np.asarray(motion.codes, np.float64)
        n = len(codes)
        if self.unusable is not None:
            plan = Plan(codes, np.full(n, -1), np.full(n, -1), np.zeros(n, np.float32), {t: self.unusable for t in range(n)})
            self._plan = (id(motion), plan)
            return plan
        codes = self._fitted(codes)
        source = np.asarray(motion.extra.get("source_index", np.arange(n)), np.int64)
        src_pose = bank.source_poses(source)
        count = bank.count
        scale = np.array([cfg.opening_scale, cfg.width_scale, cfg.protrusion_scale])

        def unary(t: np.ndarray, entries: np.ndarray) -> np.ndarray:
            """Cost float64 of showing bank entries ``entries`` at output frames ``t`` (same shapes, broadcast)."""
            shape = (((self.shapes[entries] - codes[t]) / scale) ** 2).sum(-1)
            pose = (((bank.poses[entries] - src_pose[t]) / cfg.pose_scale) ** 2).sum(-1)
            apart = np.abs(bank.frames[entries] - source[t]) / motion.fps
            return shape + pose + cfg.time_cost * -np.expm1(-apart / cfg.time_scale)

        k = min(cfg.candidates, count)
        nearest = np.zeros((n, k), np.int64)
        every = np.arange(count)
        for a in range(0, n, 256):
            t = np.arange(a, min(a + 256, n))
            cost = unary(t[:, None], every[None])
            nearest[t] = np.argpartition(cost, k - 1, axis=1)[:, :k]
        # the next source frame of each candidate of the frame before can continue its run
        runs_on = np.r_[np.diff(bank.frames[:count]) <= bank.stride, False]
        follow = np.where(runs_on[nearest], nearest + 1, nearest)
        cands = np.concatenate([nearest, np.r_[nearest[:1], follow[:-1]]], axis=1)
        costs = unary(np.arange(n)[:, None], cands)
        path = self._viterbi(cands, costs, runs_on)
        plan = self._crossfaded(codes, path, runs_on)
        self._plan = (id(motion), dataclasses.replace(plan, fallback=self._unservable(codes)))
        return self._plan[1]

    def _fitted(self, codes: np.ndarray) -> np.ndarray:
        """``codes`` with the openings scaled into the speaker's own range: the target's 95th percentile over speech
        frames is brought down to the bank's, by a factor of at least ``least_opening_scale``; never scaled up."""
        speech = codes[codes[:, 0] > 0.02, 0]
        if len(speech) == 0:
            return codes
        scale = float(np.clip(np.percentile(self.shapes[:, 0], 95) / np.percentile(speech, 95), self.config.least_opening_scale, 1.0))
        out = codes.copy()
        out[:, 0] *= scale
        return out

    def _viterbi(self, cands: np.ndarray, costs: np.ndarray, runs_on: np.ndarray) -> np.ndarray:
        """Bank positions int64 ``[T]`` minimising unary ``costs`` ``[T, K]`` of ``cands`` plus transition costs."""
        cfg = self.config
        n = len(cands)
        total = costs[0].copy()
        back = np.zeros(cands.shape, np.int64)
        looks = self.bank.looks
        for t in range(1, n):
            prev, cur = cands[t - 1][:, None], cands[t][None]
            following = np.where(runs_on[cands[t - 1]], cands[t - 1] + 1, cands[t - 1])
            unlike = np.abs(looks[following][:, None] - looks[cands[t]][None]).mean(-1) / cfg.look_scale
            trans = np.where(prev == cur, cfg.hold_cost, cfg.jump_cost + unlike)
            trans = np.where((prev + 1 == cur) & runs_on[prev], 0.0, trans)
            step = total[:, None] + trans
            back[t] = np.argmin(step, axis=0)
            total = step[back[t], np.arange(cands.shape[1])] + costs[t]
        path = np.zeros(n, np.int64)
        j = int(np.argmin(total))
        for t in range(n - 1, -1, -1):
            path[t] = cands[t, j]
            j = back[t, j]
        return path

    def _crossfaded(self, codes: np.ndarray, path: np.ndarray, runs_on: np.ndarray) -> Plan:
        """At each jump of ``path``, blend in the other side's neighbour: the new run's predecessor before, the old run's successor after."""
        n = len(path)
        secondary = np.full(n, -1, np.int64)
        weight = np.zeros(n, np.float32)
        for t in range(1, n):
            before, after = path[t - 1], path[t]
            if after == before or (after == before + 1 and runs_on[before]):
                continue
            if after > 0 and runs_on[after - 1] and secondary[t - 1] < 0:
                secondary[t - 1], weight[t - 1] = after - 1, self.config.crossfade
            if runs_on[before]:
                secondary[t], weight[t] = before + 1, self.config.crossfade
        return Plan(codes, path, secondary, weight, {})

    def _unservable(self, codes: np.ndarray) -> dict[int, str]:
        """Output frames whose target opening no bank entry comes within ``max_opening_gap`` of, with the reason."""
        openings = np.sort(self.shapes[:, 0])
        lo, hi = openings[0], openings[-1]
        at = np.clip(np.searchsorted(openings, codes[:, 0]), 1, len(openings) - 1)
        gap = np.minimum(np.abs(openings[at - 1] - codes[:, 0]), np.abs(openings[at] - codes[:, 0])) if len(openings) > 1 else np.abs(lo - codes[:, 0])
        wide = f"the target opens wider than the widest mouth in the clip ({hi:.2f} IOD)"
        shut = f"the target is more closed than any mouth in the clip ({lo:.2f} IOD)"
        between = "no mouth in the clip opens as wide as the target"
        return {int(t): wide if codes[t, 0] > hi else shut if codes[t, 0] < lo else between for t in np.flatnonzero(gap > self.config.max_opening_gap)}

    def render(self, crops: np.ndarray, landmarks: np.ndarray, motion: Motion, frames: np.ndarray) -> np.ndarray:
        """Crops uint8 ``[B, S, S, 3]``, landmarks ``[B, P, 2]`` crop px, indices ``[B]`` into ``motion.codes`` -> uint8 ``[B, S, S, 3]``."""
        if motion.kind not in self.motion_kinds:
            raise BadInputError(f"renderer 'mouthbank': needs motion of kind 'mouth', got {motion.kind!r}; pick a mouth motion model (e.g. visemes)")
        crops = np.asarray(crops)
        if crops.dtype != np.uint8 or crops.ndim != 4 or len(crops) != len(landmarks) or len(crops) != len(frames):
            raise BadInputError(f"renderer 'mouthbank': expected uint8 crops [B, S, S, 3] with B landmarks and frame indices, got {crops.dtype}{crops.shape}")
        plan = self.plan(motion)
        codes = plan.codes.astype(np.float32)
        out = []
        for crop, points, frame in zip(crops, landmarks, frames):
            t = int(frame)
            reason = plan.fallback.get(t)
            if reason is None and np.shape(points)[0] != 68:
                reason = "5 landmarks in this frame carry no mouth shape"
            if reason is not None:
                self._drawn[t] = reason
                out.append(self._warp_from_bank(crop, points, codes[t], int(plan.primary[t])))
                continue
            self._drawn.pop(t, None)
            self._banked += 1
            entries = [(int(plan.primary[t]), 1.0 - float(plan.weight[t]))]
            if plan.secondary[t] >= 0:
                entries.append((int(plan.secondary[t]), float(plan.weight[t])))
            drawn = self.render_one(crop, np.asarray(points, np.float64), codes[t], entries, frame=t)
            if self.config.crossfade and (t - 1 in plan.fallback or t + 1 in plan.fallback):
                # next to a frame the warp renderer draws: fade towards its drawing of this frame (same target shape)
                painted = self._warp_from_bank(crop, points, codes[t], int(plan.primary[t])).astype(np.float32)
                drawn = np.clip(np.rint(drawn + self.config.crossfade * (painted - drawn)), 0, 255).astype(np.uint8)
            out.append(drawn)
        return np.stack(out)

    def _warp_from_bank(self, crop: np.ndarray, points: np.ndarray, code: np.ndarray, entry: int) -> np.ndarray:
        """The warp renderer's drawing of ``code``, started from bank ``entry`` drawn at its own opening (-1: from the crop itself).

        The warp renderer then only adds the opening the bank lacks, so a
        fallback frame keeps the texture of its banked neighbours.
        """
        if entry < 0 or np.shape(points)[0] != 68:
            return self.warp.render_one(crop, points, code)
        points = np.asarray(points, np.float64)
        near = np.array([self.shapes[entry, 0], code[1], code[2]], np.float32)
        start = self.render_one(crop, points, near, [(entry, 1.0)])
        return self.warp.render_one(start, self.warp.target_shape(points, near), code)

    def render_one(self, crop: np.ndarray, points68: np.ndarray, code: np.ndarray, entries: list[tuple[int, float]],
                   frame: int | None = None) -> np.ndarray:
        """Crop uint8 ``[S, S, 3]`` with landmarks ``[68, 2]`` crop px, code ``[3]``, (bank position, weight) pairs -> uint8 ``[S, S, 3]``.

        ``frame``: the output frame drawn; its colour transfer is steadied with the one of the frame before it
        (``color_steadiness``) when that was drawn last.
        """
        cfg, bank = self.config, self.bank
        size_y, size_x = crop.shape[:2]
        target = self.warp.target_shape(points68, code)
        out = self.warp.moved(crop, points68, target, paint=False)  # the frame's own lower face moved to the target (its mouth is covered)
        iod = inter_ocular(points68)
        hull = inside_jaw(target, cfg.jaw_inset * iod)
        pad = int(np.ceil(3 * cfg.feather * iod)) + 2
        x0, y0 = np.maximum(np.floor(hull.min(0)).astype(int) - pad, 0)
        x1, y1 = np.minimum(np.ceil(hull.max(0)).astype(int) + pad + 1, (size_x, size_y))
        if x1 <= x0 or y1 <= y0:
            return out
        origin = np.array([x0, y0], np.float64)
        shape = (y1 - y0, x1 - x0)
        tris, interior = mesh()
        tgt = np.concatenate([target, anchors(points68)])
        mixed = np.zeros((*shape, 3), np.float32)
        covered = np.ones(shape, bool)
        for index, w in entries:
            source = bank.landmarks[index].astype(np.float64)
            src = np.concatenate([source, anchors(source)])
            map_x, map_y, inside = piecewise_affine_map(src[tris], tgt[tris] - origin, interior, shape, origin)
            mixed += w * cv2.remap(bank.images[index], map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
            covered &= inside
        alpha = feathered_polygon(hull, cfg.feather * iod, shape, origin) * covered
        base = out[y0:y1, x0:x1].astype(np.float32)
        transfer = None if cfg.color_match == "none" else colour_transfer(mixed, base, alpha, cfg.color_match)
        if transfer is not None:
            if frame is not None and self._transfer is not None and self._transfer[0] == frame - 1:
                transfer = cfg.color_steadiness * self._transfer[1] + (1.0 - cfg.color_steadiness) * transfer
            if frame is not None:
                self._transfer = (frame, transfer)
            mixed = apply_colour_transfer(mixed, transfer, cfg.color_match)
        out[y0:y1, x0:x1] = np.clip(np.rint(base + alpha[..., None] * (mixed - base)), 0, 255).astype(np.uint8)
        return out

    @property
    def last_plan(self) -> Plan | None:
        """The plan of the last motion rendered (None before the first render)."""
        return None if self._plan is None else self._plan[1]

    def report(self) -> RenderReport:
        """How many frames real mouths served, the bank's size, and the frames the warp renderer drew, with why."""
        bank = self.bank
        where = "on disk" if bank.on_disk else "in memory"
        notes = []
        if self.unusable is None:
            every = f", every {bank.stride}th frame" if bank.stride > 1 else ""
            notes.append(f"mouthbank: {self._banked} frames drawn with real mouths from a bank of {bank.count} source frames ({where}{every})")
        if self._drawn:
            reasons: dict[str, int] = {}
            for reason in self._drawn.values():
                reasons[reason] = reasons.get(reason, 0) + 1
            notes.append(f"mouthbank: {len(self._drawn)} frames drawn by the warp renderer: " + "; ".join(f"{n} because {r}" for r, n in reasons.items()))
        bank.close()
        return RenderReport(notes=tuple(notes), fallback=dict(self._drawn))


def build_mouthbank(config: MouthBankConfig, context) -> MouthBankRenderer:
    """Mouth-bank renderer (the warp fallback's mesh is triangulated here)."""
    mesh()
    return MouthBankRenderer(config)


@hookimpl
def register_renderers(register):
    register("mouthbank", build_mouthbank, config=MouthBankConfig, summary="offline: the clip's own mouths re-timed to the speech, warp renderer where it cannot serve")
