"""Stage-1 training: fit the PCA subspace V, then train E_A and D (``latentdub train``).

:func:`train` reads a dataset from :mod:`latentdub.toolkit.learning.dataset`, fits V
on the training split's latents (:func:`~latentdub.nets.audio2latent.fit_pca`),
and minimises ``latent_weight * L_latent + lpips_weight * L_lpips`` with Adam:

* ``L_latent``: mean over valid frames of ``||wbar_t - w_t||_2`` on the
  moving layers (the only ones the model changes);
* ``L_lpips``: LPIPS between ``G(wbar_t)`` and ``G(w_t)`` (the GAN
  reconstruction of the target, as in the paper) for ``lpips_frames``
  frames per sequence, downsampled to ``lpips_size``; ``wbar_t`` carries
  ``w_t`` on the layers that do not move, as the ``per_frame`` renderer does.

Each batch holds ``batch_size`` sequences of ``sequence_length`` frames from
training clips (drawn with probability proportional to their frames with a
face); the identity ``w_I`` of a sequence is the mean latent of 1 to
``identity_frames`` random frames of the same clip (inference uses the mean of
up to 8 reference crops, or one portrait). Batches are a pure function of
``(seed, step)``, so a resumed run sees the batches an uninterrupted one
would. On CUDA the network runs under bf16 autocast (``mixed_precision``).

A run folder holds ``preset.yaml``, ``log.csv`` (one row per step: ``step,
loss, latent, lpips, val_loss, val_latent, val_lpips, lr, seconds``),
``checkpoints/step_NNNNNNN.safetensors`` (+ ``.json`` config and
``.state.pt`` optimizer state) and, at the end, ``audio2latent.safetensors``
for ``--set motion.checkpoint=RUN_DIR/audio2latent.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np

from ..core.errors import BadInputError, ConfigError, MissingWeightsError

CSV_COLUMNS = ("step", "loss", "latent", "lpips", "val_loss", "val_latent", "val_lpips", "lr", "seconds")
FINAL_NAME = "audio2latent.safetensors"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters of the audio2latent motion model (preset key ``motion.train``).

    ``steps``: optimiser steps in total (``--steps`` overrides); ``batch_size``
    sequences of ``sequence_length`` frames per step; Adam ``lr``,
    ``weight_decay``; ``grad_clip``: max gradient norm (0 disables);
    ``latent_weight``/``lpips_weight``: loss weights (``lpips_weight: 0``
    skips the generator entirely); ``lpips_frames``: frames per sequence
    rendered for LPIPS; ``lpips_size``: px LPIPS is computed at (images are
    area-downsampled when larger); ``lpips_net``: ``vgg`` or ``alex``;
    ``lpips_weights``: torchvision backbone file or weight name (None: the
    registry's); ``lpips_random_backbone``: allow an untrained backbone
    (tests only: the loss is then no perceptual loss); ``identity_frames``:
    most frames averaged into w_I; ``pca_center``: ``clip`` (V spans motion
    within clips) or ``global`` (V spans all latents); ``pca_frames``: most
    frames used to fit V; ``val_every``: steps between validation runs of
    ``val_batches`` fixed batches; ``checkpoint_every``: steps between
    checkpoints, of which the newest ``keep_checkpoints`` are kept;
    ``mixed_precision``: bf16 autocast on CUDA.
    """

    steps: int = 50000
    batch_size: int = 16
    sequence_length: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    latent_weight: float = 1.0
    lpips_weight: float = 10.0
    lpips_frames: int = 1
    lpips_size: int = 256
    lpips_net: Literal["vgg", "alex"] = "vgg"
    lpips_weights: Optional[str] = None
    lpips_random_backbone: bool = False
    identity_frames: int = 8
    pca_center: Literal["clip", "global"] = "clip"
    pca_frames: int = 50000
    val_every: int = 1000
    val_batches: int = 4
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    mixed_precision: bool = True

    def check(self) -> None:
        """Raise :class:`ConfigError` for values out of range."""
        positive = ("steps", "batch_size", "sequence_length", "lpips_frames", "lpips_size", "identity_frames", "pca_frames",
                    "val_every", "val_batches", "checkpoint_every", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"motion.train.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "grad_clip", "latent_weight", "lpips_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"motion.train.{name}: must be >= 0, got {getattr(self, name)}")
        if self.lr == 0 or self.latent_weight + self.lpips_weight == 0:
            raise ConfigError("motion.train: lr and at least one loss weight must be > 0")


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

    def __init__(self, dataset_dir: Path, clip_ids: list[str], config: TrainConfig, seed: int) -> None:
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


# --------------------------------------------------------------------------- losses


class Objective:
    """Computes ``(loss, latent, lpips)`` of a batch; LPIPS parts are None when ``lpips_weight`` is 0."""

    def __init__(self, model: Any, config: TrainConfig, device: Any, generator: Any = None, lpips: Any = None) -> None:
        self.model = model
        self.config = config
        self.device = device
        self.generator = generator
        self.lpips = lpips
        self.layers = list(model.spec.layers)

    def __call__(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[Any, float, float]:
        import torch

        from .perceptual import lpips_distance

        t = {k: torch.from_numpy(v).to(self.device) for k, v in batch.items()}
        valid, latents, identity = t["valid"], t["latents"], t["identity"]
        use_amp = self.config.mixed_precision and self.device.type == "cuda"
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            coeffs = self.model(t["features"], identity)  # [B, S, k]
        moved = identity[:, None, self.layers] + self.model.expand(coeffs.float())[:, :, self.layers]  # [B, S, |layers|, D]
        err = (moved - latents[:, :, self.layers]).flatten(2).norm(dim=-1)  # [B, S]
        latent_loss = (err * valid).sum() / valid.sum().clamp_min(1.0)
        loss = self.config.latent_weight * latent_loss
        lpips_value = float("nan")
        if self.config.lpips_weight > 0:
            b_idx, s_idx = [], []
            for b in range(valid.shape[0]):
                rows = np.flatnonzero(batch["valid"][b])
                for s in rng.choice(rows, size=min(self.config.lpips_frames, len(rows)), replace=False):
                    b_idx.append(b)
                    s_idx.append(int(s))
            if b_idx:
                target_w = latents[b_idx, s_idx]  # [N, L, D]
                # as the renderer's `subspace` mode: the target's own motion inside V is swapped for the prediction
                own = self.model.project(target_w) - self.model.project(identity[b_idx])  # [N, k]
                pred_w = target_w + self.model.expand(coeffs.float()[b_idx, s_idx] - own).to(target_w.dtype)
                with torch.no_grad():
                    target = self.generator.synthesize(target_w)
                pred = self.generator.synthesize(pred_w)
                lp = lpips_distance(self.lpips, pred, target, size=self.config.lpips_size).mean()
                loss = loss + self.config.lpips_weight * lp
                lpips_value = float(lp.detach())
        return loss, float(latent_loss.detach()), lpips_value


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


def _save(run_dir: Path, step: int, model: Any, optimizer: Any, extra: dict[str, Any], keep: int) -> Path:
    import torch

    from latentdub.nets.audio2latent import save_checkpoint

    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:07d}.safetensors"
    save_checkpoint(model, path, {**extra, "step": step})
    path.with_suffix(".json").write_text(json.dumps({**extra, "step": step, "spec": dataclasses.asdict(model.spec)}, indent=1, sort_keys=True))
    state = path.with_suffix(".state.pt")
    tmp = state.with_name(state.name + ".part")
    torch.save({"optimizer": optimizer.state_dict(), "step": step}, tmp)
    tmp.replace(state)
    for _, old in _checkpoints(run_dir)[:-keep]:
        for suffix in (".safetensors", ".json", ".state.pt"):
            old.with_suffix(suffix).unlink(missing_ok=True)
    return path


class _CsvLog:
    """Appends rows of :data:`CSV_COLUMNS` to ``log.csv``; on resume rows after the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        keep: list[str] = []
        if resume_step > 0 and path.is_file():
            lines = path.read_text().splitlines()
            keep = [ln for ln in lines[1:] if ln and int(ln.split(",")[0]) <= resume_step]
        path.write_text(",".join(CSV_COLUMNS) + "\n" + "".join(ln + "\n" for ln in keep))
        self.handle = path.open("a")

    def write(self, row: dict[str, Any]) -> None:
        def fmt(v: Any) -> str:
            if v is None or (isinstance(v, float) and not np.isfinite(v)):
                return ""
            return f"{v:.6g}" if isinstance(v, float) else str(v)

        self.handle.write(",".join(fmt(row.get(c)) for c in CSV_COLUMNS) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


# --------------------------------------------------------------------------- training


def _motion_config(preset: Any) -> Any:
    stage = preset.stages.get("motion")
    config = getattr(stage, "config", None)
    if config is None or not isinstance(getattr(config, "train", None), TrainConfig) or not hasattr(config, "spec"):
        raise ConfigError(f"preset {preset.name!r}: motion stage must be audio2latent to train (motion: {{plugin: audio2latent, train: {{...}}}})")
    return config


def _build_lpips(config: TrainConfig, device: Any, seed: int, log: Callable[[str], None]) -> Any:
    from .perceptual import build_lpips

    try:
        return build_lpips(device, net=config.lpips_net, backbone_weights=config.lpips_weights, random_backbone=config.lpips_random_backbone, seed=seed, log=log)
    except MissingWeightsError as exc:
        raise MissingWeightsError(
            f"{exc}; or train without the perceptual loss: --set motion.train.lpips_weight=0"
            + ("" if config.lpips_random_backbone else " (random backbones are for tests only: motion.train.lpips_random_backbone)")
        ) from None


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
    """Train the audio2latent motion model of ``preset`` on a prepared dataset; see the module docstring.

    ``steps`` (default ``motion.train.steps``) is the total step count, so
    ``resume`` continues a run up to it from its newest checkpoint. Raises
    :class:`BadInputError` when ``run_dir`` already holds checkpoints and
    ``resume`` is False, or when the dataset does not fit the preset.
    """
    import torch
    from tqdm import tqdm

    from latentdub.nets.audio2latent import Audio2Latent, fit_pca, load_checkpoint, save_checkpoint

    from ..core.build import Components
    from .dataset import load_manifest, read_split
    from ..core.presets import Preset, resolve_preset

    started = time.perf_counter()
    preset = preset if isinstance(preset, Preset) else resolve_preset(preset, overrides)
    config = _motion_config(preset)
    tc: TrainConfig = config.train
    tc.check()
    total = int(steps if steps is not None else tc.steps)
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
    n_styles, latent_dim = int(entry["n_styles"]), int(entry["latent_dim"])
    window, coeffs = (int(v) for v in entry["feature_shape"])
    existing = _checkpoints(run_dir)
    if existing and not resume:
        raise BadInputError(f"{run_dir}: already holds checkpoints (newest step {existing[-1][0]}); pass --resume to continue, or choose a new -o folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"{run_dir}: cannot create the run folder ({exc.strerror}); choose a writable -o") from None
    notes: list[str] = []
    torch.manual_seed(preset.seed)
    components = Components(preset, log=log)
    device = components.device
    sampler = ClipSampler(dataset_dir, train_ids, tc, preset.seed)
    val_sampler = ClipSampler(dataset_dir, val_ids, tc, preset.seed + 1) if val_ids else None
    if val_sampler is None or not len(val_sampler):
        notes.append("the val split is empty: no validation loss")
        val_sampler = None
    extra = {
        "dataset": str(dataset_dir.resolve()), "preset": preset.name, "encoder": manifest.get("encoder"),
        "audio_features": manifest.get("audio_features"), "train": dataclasses.asdict(tc),
    }
    start_step = 0
    if existing:
        start_step, path = existing[-1]
        model, _ = load_checkpoint(path, map_location=device)
        log(f"resuming from {path} (step {start_step})")
    else:
        if resume:
            notes.append(f"--resume: no checkpoint in {run_dir}; started from scratch")
        model = Audio2Latent(config.spec(n_styles, latent_dim, window, coeffs))
        lat, groups = sampler.pca_latents(tc.pca_frames, np.random.default_rng([preset.seed, 7]))
        mean, basis, std, explained = fit_pca(
            torch.from_numpy(lat), torch.from_numpy(groups) if tc.pca_center == "clip" else None, model.spec.layers, model.spec.components
        )
        model.set_pca(mean, basis, std)
        log(f"PCA: {model.spec.components} components over layers {list(model.spec.layers)} from {len(lat)} frames explain {explained:.1%} of the {tc.pca_center}-centred variance")
        model = model.to(device)
    model.train()
    generator = lpips = None
    if tc.lpips_weight > 0:
        generator = components["generator"]
        if int(generator.n_styles) != n_styles:
            raise BadInputError(f"{dataset_dir}: latents have {n_styles} styles but the preset's generator takes {generator.n_styles}; use the preset the dataset was prepared with")
        generator.module.requires_grad_(False).eval()
        lpips = _build_lpips(tc, device, preset.seed, log)
        if tc.lpips_random_backbone:
            notes.append("LPIPS used a RANDOM backbone (motion.train.lpips_random_backbone): the perceptual term is a wiring check, not a perceptual loss")
    objective = Objective(model, tc, device, generator, lpips)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=tc.lr, weight_decay=tc.weight_decay)
    if existing:
        state = torch.load(existing[-1][1].with_suffix(".state.pt"), map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
    preset.write(run_dir / "preset.yaml")
    csv = _CsvLog(run_dir / "log.csv", start_step)
    losses: list[float] = []
    val_loss: Optional[float] = None

    def validate() -> tuple[float, float, float]:
        assert val_sampler is not None
        model.eval()
        rows = []
        with torch.no_grad():
            for i in range(tc.val_batches):
                loss, lat_v, lp_v = objective(val_sampler.batch((0, i)), np.random.default_rng([preset.seed, 0, i, 2]))
                rows.append((float(loss), lat_v, lp_v))
        model.train()
        return tuple(float(np.mean(col)) for col in zip(*rows))  # type: ignore[return-value]

    try:
        with tqdm(total=total, initial=start_step, desc="train", unit="step", disable=not progress, leave=False, dynamic_ncols=True) as bar:
            for step in range(start_step + 1, total + 1):
                loss, lat_v, lp_v = objective(sampler.batch((step,)), np.random.default_rng([preset.seed, step, 1]))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                optimizer.step()
                losses.append(float(loss.detach()))
                row: dict[str, Any] = {"step": step, "loss": losses[-1], "latent": lat_v, "lpips": lp_v, "lr": tc.lr, "seconds": time.perf_counter() - started}
                if val_sampler is not None and (step % tc.val_every == 0 or step == total):
                    val_loss, row["val_latent"], row["val_lpips"] = validate()
                    row["val_loss"] = val_loss
                    log(f"step {step}: loss {losses[-1]:.4f}, validation loss {val_loss:.4f}")
                csv.write(row)
                if step % tc.checkpoint_every == 0 or step == total:
                    _save(run_dir, step, model, optimizer, {**extra, "val_loss": val_loss}, tc.keep_checkpoints)
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
    finally:
        csv.close()
    if start_step >= total:
        notes.append(f"the run was already at step {start_step} >= --steps {total}; re-exported its newest checkpoint")
    final = run_dir / FINAL_NAME
    model.eval()
    save_checkpoint(model, final, {**extra, "step": max(total, start_step), "val_loss": val_loss})
    for note in notes:
        log(f"note: {note}")
    return TrainSummary(run_dir, final, start_step, max(total, start_step), losses, val_loss, time.perf_counter() - started, notes)
