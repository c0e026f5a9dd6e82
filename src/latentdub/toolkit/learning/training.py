"""Stage-1 training loop (``latentdub train``), the same for every trainable motion model.

The core owns the loop: reading a prepared dataset (:mod:`.dataset`),
drawing batches, Adam steps, validation, checkpoint rotation, resume and the
CSV log. The model, its objective and its file format belong to the motion
plugin, which registers a :class:`~latentdub.toolkit.core.protocols.Trainer`
for itself through ``register_trainers`` (the default ``audio2latent`` does:
see :mod:`latentdub.plugins.audio2latent`).

Each batch holds ``batch_size`` sequences of ``sequence_length`` frames from
training clips (drawn with probability proportional to their frames with a
face); the identity ``w_I`` of a sequence is the mean latent of 1 to
``identity_frames`` random frames of the same clip. Batches are a pure
function of ``(seed, step)``, so a resumed run sees the batches an
uninterrupted one would.

A run folder holds ``preset.yaml``, ``log.csv`` (one row per step: ``step,
loss, <parts>, val_loss, val_<parts>, lr, seconds``, the parts named by the
trainer), ``checkpoints/step_NNNNNNN.safetensors`` (+ ``.json`` description
and ``.state.pt`` optimizer state) and, at the end, the trainer's final file
(``audio2latent.safetensors`` for the default model) to pass as
``--set motion.checkpoint=...``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import numpy as np

from ..core.config import Range
from ..core.errors import BadInputError, ConfigError, PluginError
from ..core.protocols import Trainer


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Settings of the training loop (preset key ``motion.train``; a trainer's config extends it).

    ``steps``: optimiser steps in total (``--steps`` overrides); ``batch_size``
    sequences of ``sequence_length`` frames per step; Adam ``lr``,
    ``weight_decay``; ``grad_clip``: max gradient norm (0 disables);
    ``identity_frames``: most frames averaged into w_I; ``val_every``: steps
    between validation runs of ``val_batches`` fixed batches;
    ``checkpoint_every``: steps between checkpoints, of which the newest
    ``keep_checkpoints`` are kept.
    """

    steps: Annotated[int, Range(ge=1)] = 50000
    batch_size: Annotated[int, Range(ge=1)] = 16
    sequence_length: Annotated[int, Range(ge=1)] = 32
    lr: Annotated[float, Range(gt=0, le=1)] = 1e-4
    weight_decay: Annotated[float, Range(ge=0)] = 0.0
    grad_clip: Annotated[float, Range(ge=0)] = 1.0
    identity_frames: Annotated[int, Range(ge=1)] = 8
    val_every: Annotated[int, Range(ge=1)] = 1000
    val_batches: Annotated[int, Range(ge=1)] = 4
    checkpoint_every: Annotated[int, Range(ge=1)] = 5000
    keep_checkpoints: Annotated[int, Range(ge=1)] = 3


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """What a trainer sees of the dataset before the first step.

    ``train``: the training split's :class:`ClipSampler`; W+ ``[n_styles,
    latent_dim]`` latents and audio windows ``[window, coeffs]`` per frame.
    """

    path: Path
    train: "ClipSampler"
    n_styles: int
    latent_dim: int
    window: int
    coeffs: int
    seed: int


@dataclasses.dataclass
class TrainSummary:
    """What :func:`train` did: final checkpoint, per-step training losses, last validation loss, speed."""

    run_dir: Path
    checkpoint: Path
    first_step: int
    last_step: int
    losses: list[float]
    val_loss: Optional[float]
    seconds: float
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def steps_per_second(self) -> float:
        """Optimiser steps per second in this run (validation and checkpoints included)."""
        return (self.last_step - self.first_step) / max(self.seconds, 1e-9)

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        out = [f"trained steps {self.first_step + 1}-{self.last_step} in {self.seconds:.1f}s ({self.steps_per_second:.2f} steps/s)"]
        if self.losses:
            k = max(1, min(10, len(self.losses) // 2))
            out.append(f"training loss: first {k} steps {np.mean(self.losses[:k]):.4f}, last {k} steps {np.mean(self.losses[-k:]):.4f}")
        if self.val_loss is not None:
            out.append(f"validation loss: {self.val_loss:.4f}")
        out.append(f"checkpoint: {self.checkpoint} (use --set motion.checkpoint={self.checkpoint})")
        out += [f"note: {n}" for n in self.notes]
        return out


# --------------------------------------------------------------------------- data


@dataclasses.dataclass
class _Clip:
    clip_id: str
    path: Path
    valid_rows: np.ndarray  # int64 indices of frames with a face
    n_frames: int


class ClipSampler:
    """Random training sequences from prepared shards; batches depend only on ``(seed, step)``.

    ``batch(key)`` -> dict of numpy arrays: ``features`` float32 ``[B, S, W, C]``,
    ``latents`` float32 ``[B, S, L, D]``, ``valid`` float32 ``[B, S]``,
    ``identity`` float32 ``[B, L, D]``.
    """

    def __init__(self, dataset_dir: Path, clip_ids: list[str], config: LoopConfig, seed: int) -> None:
        from .dataset import read_shard, shard_path

        self.config = config
        self.seed = seed
        self.clips: list[_Clip] = []
        for clip_id in clip_ids:
            path = shard_path(dataset_dir, clip_id)
            if not path.is_file():
                raise BadInputError(f"{path}: shard listed in the splits is missing; run `latentdub dataset prepare` on {dataset_dir} again")
            valid = read_shard(path)["valid"]
            rows = np.flatnonzero(valid)
            if len(rows):
                self.clips.append(_Clip(clip_id, path, rows, len(valid)))
        weights = np.array([len(c.valid_rows) for c in self.clips], np.float64)
        self.p = weights / weights.sum() if len(weights) else weights

    def __len__(self) -> int:
        return len(self.clips)

    def _one(self, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        from safetensors import safe_open

        clip = self.clips[rng.choice(len(self.clips), p=self.p)]
        s = self.config.sequence_length
        start = int(rng.integers(0, max(clip.n_frames - s, 0) + 1))
        k = int(rng.integers(1, self.config.identity_frames + 1))
        picks = rng.choice(clip.valid_rows, size=min(k, len(clip.valid_rows)), replace=False)
        with safe_open(str(clip.path), framework="np") as f:
            lat = f.get_slice("latents")
            latents = lat[start : start + s].astype(np.float32)
            identity = np.mean([lat[int(i) : int(i) + 1][0].astype(np.float32) for i in picks], axis=0)
            feats = f.get_slice("features")[start : start + s].astype(np.float32)
            valid = f.get_slice("valid")[start : start + s].astype(np.float32)
        if len(valid) < s:  # clip shorter than a sequence: pad, masked out
            pad = s - len(valid)
            latents = np.concatenate([latents, np.zeros((pad, *latents.shape[1:]), np.float32)])
            feats = np.concatenate([feats, np.zeros((pad, *feats.shape[1:]), np.float32)])
            valid = np.concatenate([valid, np.zeros(pad, np.float32)])
        return feats, latents, valid, identity

    def batch(self, key: tuple[int, ...]) -> dict[str, np.ndarray]:
        """A batch drawn with the RNG seeded by ``(seed, *key)``."""
        rng = np.random.default_rng([self.seed, *key])
        parts = [self._one(rng) for _ in range(self.config.batch_size)]
        return {name: np.stack([p[i] for p in parts]) for i, name in enumerate(("features", "latents", "valid", "identity"))}

    def pca_latents(self, limit: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``limit`` valid latents float32 ``[N, L, D]`` spread over the clips, and their clip index ``[N]``."""
        from .dataset import read_shard

        total = sum(len(c.valid_rows) for c in self.clips)
        share = min(1.0, limit / max(total, 1))
        rows, groups = [], []
        for index, clip in enumerate(self.clips):
            n = max(2, int(round(len(clip.valid_rows) * share))) if share < 1 else len(clip.valid_rows)
            pick = np.sort(rng.choice(clip.valid_rows, size=min(n, len(clip.valid_rows)), replace=False))
            rows.append(read_shard(clip.path)["latents"][pick].astype(np.float32))
            groups.append(np.full(len(pick), index, np.int64))
        return np.concatenate(rows), np.concatenate(groups)


# --------------------------------------------------------------------------- checkpoints


def _checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(step, model path)`` of complete checkpoints (model and optimizer state), oldest first."""
    out = []
    for path in (run_dir / "checkpoints").glob("step_*.safetensors"):
        try:
            step = int(path.stem.split("_")[1])
        except (IndexError, ValueError):
            continue
        if path.with_suffix(".state.pt").is_file():
            out.append((step, path))
    return sorted(out)


def _save(run_dir: Path, step: int, trainer: Any, optimizer: Any, extra: dict[str, Any], keep: int) -> Path:
    """Checkpoint ``step``: the trainer's model file, a JSON description and the optimizer state; keep the newest ``keep``."""
    import torch

    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:07d}.safetensors"
    trainer.save(path, {**extra, "step": step})
    path.with_suffix(".json").write_text(json.dumps({**extra, "step": step, **trainer.describe()}, indent=1, sort_keys=True))
    state = path.with_suffix(".state.pt")
    tmp = state.with_name(state.name + ".part")
    torch.save({"optimizer": optimizer.state_dict(), "step": step}, tmp)
    tmp.replace(state)
    for _, old in _checkpoints(run_dir)[:-keep]:
        for suffix in (".safetensors", ".json", ".state.pt"):
            old.with_suffix(suffix).unlink(missing_ok=True)
    return path


def csv_columns(parts: tuple[str, ...]) -> tuple[str, ...]:
    """Columns of ``log.csv`` for a trainer whose loss has the named ``parts``."""
    return ("step", "loss", *parts, "val_loss", *(f"val_{p}" for p in parts), "lr", "seconds")


class _CsvLog:
    """Appends rows of ``columns`` to ``log.csv``; on resume rows after the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int, columns: tuple[str, ...]) -> None:
        self.path = path
        self.columns = columns
        keep: list[str] = []
        if resume_step > 0 and path.is_file():
            lines = path.read_text().splitlines()
            keep = [ln for ln in lines[1:] if ln and int(ln.split(",")[0]) <= resume_step]
        path.write_text(",".join(columns) + "\n" + "".join(ln + "\n" for ln in keep))
        self.handle = path.open("a")

    def write(self, row: dict[str, Any]) -> None:
        def fmt(v: Any) -> str:
            if v is None or (isinstance(v, float) and not np.isfinite(v)):
                return ""
            return f"{v:.6g}" if isinstance(v, float) else str(v)

        self.handle.write(",".join(fmt(row.get(c)) for c in self.columns) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


# --------------------------------------------------------------------------- training


def _trainer(preset: Any, context: Any) -> Any:
    """The trainer the motion stage's plugin registered for itself (PluginError when it has none)."""
    from ..core.plugins import components, get_component

    stage = preset.stages.get("motion")
    if stage is None:
        raise ConfigError(f"preset {preset.name!r} has no motion stage to train; add `motion: {{plugin: audio2latent}}`")
    trainable = sorted(components()["trainer"])
    if stage.plugin not in trainable:
        raise PluginError(f"motion plugin {stage.plugin!r} cannot be trained (trainable: {', '.join(trainable) or 'none'}); use e.g. --set motion.plugin=audio2latent")
    trainer = get_component("trainer", stage.plugin).factory(stage.config, context)
    if not isinstance(trainer, Trainer):
        raise PluginError(f"trainer {stage.plugin!r} lacks the Trainer protocol's methods; see latentdub.toolkit.core.protocols.Trainer")
    return trainer


def train(
    dataset_dir: Path,
    run_dir: Path,
    preset: Any = "tiny",
    overrides: Optional[list[str]] = None,
    steps: Optional[int] = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> TrainSummary:
    """Train the motion model of ``preset`` on a prepared dataset; see the module docstring.

    ``steps`` (default ``motion.train.steps``) is the total step count, so
    ``resume`` continues a run up to it from its newest checkpoint. Raises
    :class:`BadInputError` when ``run_dir`` already holds checkpoints and
    ``resume`` is False, or when the dataset does not fit the preset.
    """
    import torch
    from tqdm import tqdm

    from ..core.build import Components
    from ..core.presets import Preset, resolve_preset
    from .dataset import load_manifest, read_split

    started = time.perf_counter()
    preset = preset if isinstance(preset, Preset) else resolve_preset(preset, overrides)
    components = Components(preset, log=log)
    trainer = _trainer(preset, components.context)
    loop: LoopConfig = trainer.loop
    total = int(steps if steps is not None else loop.steps)
    if total < 1:
        raise BadInputError(f"--steps: must be >= 1, got {total}")
    dataset_dir, run_dir = Path(dataset_dir), Path(run_dir)
    manifest = load_manifest(dataset_dir)
    done = {c for c, e in manifest["clips"].items() if e.get("status") == "done"}
    train_ids = [c for c in read_split(dataset_dir, "train") if c in done]
    val_ids = [c for c in read_split(dataset_dir, "val") if c in done]
    if not train_ids:
        raise BadInputError(f"{dataset_dir}: the train split has no prepared clips; prepare more clips")
    entry = manifest["clips"][train_ids[0]]
    existing = _checkpoints(run_dir)
    if existing and not resume:
        raise BadInputError(f"{run_dir}: already holds checkpoints (newest step {existing[-1][0]}); pass --resume to continue, or choose a new -o folder")
    notes: list[str] = []
    torch.manual_seed(preset.seed)
    sampler = ClipSampler(dataset_dir, train_ids, loop, preset.seed)
    val_sampler = ClipSampler(dataset_dir, val_ids, loop, preset.seed + 1) if val_ids else None
    if val_sampler is None or not len(val_sampler):
        notes.append("the val split is empty: no validation loss")
        val_sampler = None
    window, coeffs = (int(v) for v in entry["feature_shape"])
    data = TrainingData(dataset_dir, sampler, int(entry["n_styles"]), int(entry["latent_dim"]), window, coeffs, preset.seed)
    extra = {
        "dataset": str(dataset_dir.resolve()), "preset": preset.name, "encoder": manifest.get("encoder"),
        "audio_features": manifest.get("audio_features"), "train": dataclasses.asdict(loop),
    }
    start_step = 0
    if existing:
        start_step, checkpoint = existing[-1]
        log(f"resuming from {checkpoint} (step {start_step})")
    else:
        checkpoint = None
        if resume:
            notes.append(f"--resume: no checkpoint in {run_dir}; started from scratch")
    notes += trainer.start(data, checkpoint)
    trainer.train(True)
    optimizer = torch.optim.Adam([p for p in trainer.parameters() if p.requires_grad], lr=loop.lr, weight_decay=loop.weight_decay)
    if existing:
        state = torch.load(existing[-1][1].with_suffix(".state.pt"), map_location=components.device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
    try:  # only now, so a run refused above leaves nothing behind
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"{run_dir}: cannot create the run folder ({exc.strerror}); choose a writable -o") from None
    preset.write(run_dir / "preset.yaml")
    parts = tuple(trainer.loss_parts)
    csv = _CsvLog(run_dir / "log.csv", start_step, csv_columns(parts))
    losses: list[float] = []
    val_loss: Optional[float] = None

    def validate() -> dict[str, float]:
        assert val_sampler is not None
        trainer.train(False)
        rows = []
        with torch.no_grad():
            for i in range(loop.val_batches):
                loss, values = trainer.loss(val_sampler.batch((0, i)), np.random.default_rng([preset.seed, 0, i, 2]))
                rows.append({"loss": float(loss), **values})
        trainer.train(True)
        return {f"val_{k}": float(np.mean([r[k] for r in rows])) for k in ("loss", *parts)}

    try:
        with tqdm(total=total, initial=start_step, desc="train", unit="step", disable=not progress, leave=False, dynamic_ncols=True) as bar:
            for step in range(start_step + 1, total + 1):
                loss, values = trainer.loss(sampler.batch((step,)), np.random.default_rng([preset.seed, step, 1]))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if loop.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(list(trainer.parameters()), loop.grad_clip)
                optimizer.step()
                losses.append(float(loss.detach()))
                row: dict[str, Any] = {"step": step, "loss": losses[-1], **values, "lr": loop.lr, "seconds": time.perf_counter() - started}
                if val_sampler is not None and (step % loop.val_every == 0 or step == total):
                    row.update(validate())
                    val_loss = row["val_loss"]
                    log(f"step {step}: loss {losses[-1]:.4f}, validation loss {val_loss:.4f}")
                csv.write(row)
                if step % loop.checkpoint_every == 0 or step == total:
                    _save(run_dir, step, trainer, optimizer, {**extra, "val_loss": val_loss}, loop.keep_checkpoints)
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
    finally:
        csv.close()
    if start_step >= total:
        notes.append(f"the run was already at step {start_step} >= --steps {total}; re-exported its newest checkpoint")
    final = run_dir / trainer.final_name
    trainer.train(False)
    trainer.save(final, {**extra, "step": max(total, start_step), "val_loss": val_loss})
    for note in notes:
        log(f"note: {note}")
    return TrainSummary(run_dir, final, start_step, max(total, start_step), losses, val_loss, time.perf_counter() - started, notes)
