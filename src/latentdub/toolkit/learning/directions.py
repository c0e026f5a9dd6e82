"""Mouth directions in W+: a ridge map from mouth shape and head pose to latents.

Per frame ``t`` the features ``x_t`` are the three mouth features and three
head-pose features of :mod:`~latentdub.toolkit.faces.measures`
(:data:`FEATURES`); the latents ``w_t`` are W+ restricted to the moving
``layers`` and flattened. Within one clip (or within each clip of a pooled
fit, every clip centred on its own means)::

    w_t - mean(w) = (x_t - mean(x)) A + e_t

Per clip the targets are the clip's coordinates ``z_t = U (w_t - mean(w))`` in
its own PCA basis ``U`` (``components`` rows, the within-clip motion); a pooled
fit over many clips works in W+ itself. ``A`` is a ridge solution in
standardised features, ``min ||Z - X_s B||^2 + alpha * n * ||B - B_0||^2``,
shrunk towards a prior ``B_0`` (shared directions) when one is given, else
towards 0; ``alpha`` is chosen from :data:`ALPHAS` by K-fold cross-validation
over contiguous blocks of frames (one clip) or over whole clips (pooled).
Head pose is fitted alongside, so the mouth rows of ``A`` are the effect of
the mouth with the pose held fixed: a head that nods while the mouth opens
does not leak into them.

The mouth rows mapped back to W+ (``A U``) are the *mouth directions*: the
displacement of the latent per unit of each mouth feature. The fit is
scored by its cross-validated R^2, per target coefficient and overall
(variance-weighted), and by the share the mouth adds beyond pose,
``1 - SSE(mouth + pose) / SSE(pose only)`` (:attr:`RidgeFit.r2_mouth`),
which is near 0 for a clip whose mouth barely moves.

Everything is computed from per-fold sums (:class:`Moments`), so a pooled fit
over any number of clips keeps memory flat.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..core.errors import BadInputError
from ..faces.measures import MOUTH_FEATURES, POSE_FEATURES, head_pose, mouth_shapes, neutral_mouth

FEATURES = MOUTH_FEATURES + POSE_FEATURES
N_MOUTH = len(MOUTH_FEATURES)
#: Smallest spread (std) each feature is standardised by, so a feature that hardly varies is not blown up:
#: opening and width 0.005 IOD, protrusion 0.05 units, yaw and pitch 0.002 IOD, roll 0.002 rad.
FEATURE_FLOOR = np.array([0.005, 0.005, 0.05, 0.002, 0.002, 0.002])
#: Ridge penalties tried by cross-validation (per frame, in standardised features).
ALPHAS = np.logspace(-5, 2, 15)
#: Cross-validation folds (contiguous blocks of one clip, or groups of whole clips).
N_FOLDS = 5
#: W+ layers the mouth directions live on by default (coarse and middle styles, as Stage 1 moves).
DEFAULT_LAYERS = tuple(range(8))
#: Percentiles of the mouth features recorded as the range a fit has seen.
RANGE_PERCENTILES = (2.0, 98.0)

FORMAT = "latentdub.mouth-directions"
FORMAT_VERSION = 1


def clip_features(landmarks68: np.ndarray) -> np.ndarray:
    """Features float64 ``[N, 6]`` (:data:`FEATURES`) of one clip's crop landmarks ``[N, 68, 2]``, against its own neutral mouth."""
    return np.concatenate([mouth_shapes(landmarks68, neutral_mouth(landmarks68)), head_pose(landmarks68)], axis=1)


# --------------------------------------------------------------------------- ridge with cross-validation


@dataclasses.dataclass
class Moments:
    """Sums over centred frames: ``n``, ``xx`` ``[F, F]`` = X^T X, ``xz`` ``[F, K]`` = X^T Z, ``zz`` ``[K]`` = column sums of Z^2."""

    n: int
    xx: np.ndarray
    xz: np.ndarray
    zz: np.ndarray

    @classmethod
    def zeros(cls, n_features: int, n_targets: int) -> "Moments":
        return cls(0, np.zeros((n_features, n_features)), np.zeros((n_features, n_targets)), np.zeros(n_targets))

    @classmethod
    def of(cls, x: np.ndarray, z: np.ndarray) -> "Moments":
        """Sums of centred features ``x`` ``[n, F]`` and targets ``z`` ``[n, K]``."""
        x, z = np.asarray(x, np.float64), np.asarray(z, np.float64)
        return cls(len(x), x.T @ x, x.T @ z, (z * z).sum(0))

    def __add__(self, other: "Moments") -> "Moments":
        return Moments(self.n + other.n, self.xx + other.xx, self.xz + other.xz, self.zz + other.zz)

    def __sub__(self, other: "Moments") -> "Moments":
        return Moments(self.n - other.n, self.xx - other.xx, self.xz - other.xz, self.zz - other.zz)


def ridge(m: Moments, alpha: float, scale: np.ndarray, prior: Optional[np.ndarray], cols: np.ndarray) -> np.ndarray:
    """Coefficients ``[len(cols), K]`` of features ``cols`` (standardised by ``scale``), shrunk towards ``prior`` ``[F, K]`` or 0."""
    s = scale[cols]
    gram = m.xx[np.ix_(cols, cols)] / np.outer(s, s) + alpha * max(m.n, 1) * np.eye(len(cols))
    rhs = m.xz[cols] / s[:, None]
    if prior is not None:
        rhs = rhs + alpha * max(m.n, 1) * prior[cols] * s[:, None]
    return np.linalg.solve(gram, rhs) / s[:, None]


def residual(m: Moments, coefficients: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sum of squared errors ``[K]`` of ``coefficients`` (features ``cols``) over the frames summed in ``m``."""
    xx = m.xx[np.ix_(cols, cols)]
    return m.zz - 2 * (coefficients * m.xz[cols]).sum(0) + (coefficients * (xx @ coefficients)).sum(0)


@dataclasses.dataclass(frozen=True)
class RidgeFit:
    """A cross-validated ridge fit: ``coefficients`` ``[F, K]``, the chosen ``alpha``, cross-validated
    ``r2`` per target ``[K]``, ``r2_overall`` (variance-weighted), ``r2_mouth`` (the mouth's share beyond
    pose), ``frames`` and ``folds`` used."""

    coefficients: np.ndarray
    alpha: float
    r2: np.ndarray
    r2_overall: float
    r2_mouth: float
    frames: int
    folds: int


def cross_validate(folds: Sequence[Moments], prior: Optional[np.ndarray] = None, alphas: Sequence[float] = ALPHAS,
                   floor: np.ndarray = FEATURE_FLOOR, n_mouth: int = N_MOUTH) -> RidgeFit:
    """Pick ``alpha`` by leaving out each fold in turn and fit on all of them (see the module docstring).

    ``folds``: at least two non-empty :class:`Moments`; features beyond the
    first ``n_mouth`` columns are the nuisance (pose) regressed alongside.
    """
    folds = [f for f in folds if f.n > 0]
    if len(folds) < 2:
        raise BadInputError("ridge fit: cross-validation needs at least two non-empty folds of frames")
    total = folds[0]
    for f in folds[1:]:
        total = total + f
    n_features = total.xx.shape[0]
    scale = np.maximum(np.sqrt(np.diag(total.xx) / max(total.n, 1)), np.resize(floor, n_features))
    every, pose = np.arange(n_features), np.arange(n_mouth, n_features)

    def cv_error(alpha: float, cols: np.ndarray) -> np.ndarray:
        if len(cols) == 0:
            return total.zz.copy()
        return sum(residual(f, ridge(total - f, alpha, scale, prior, cols), cols) for f in folds)

    full = [cv_error(a, every) for a in alphas]
    best = int(np.argmin([e.sum() for e in full]))
    pose_only = min((cv_error(a, pose) for a in alphas), key=lambda e: e.sum())
    sst = np.maximum(total.zz, 1e-30)
    return RidgeFit(
        coefficients=ridge(total, float(alphas[best]), scale, prior, every),
        alpha=float(alphas[best]),
        r2=1.0 - full[best] / sst,
        r2_overall=float(1.0 - full[best].sum() / sst.sum()),
        r2_mouth=float(1.0 - full[best].sum() / max(pose_only.sum(), 1e-30)),
        frames=int(total.n),
        folds=len(folds),
    )


def block_folds(x: np.ndarray, z: np.ndarray, n_folds: int = N_FOLDS) -> list[Moments]:
    """One :class:`Moments` per contiguous block of frames (at most ``n_folds`` blocks of at least 2 frames)."""
    k = max(1, min(n_folds, len(x) // 2))
    return [Moments.of(x[b], z[b]) for b in np.array_split(np.arange(len(x)), k)]


def principal_basis(centred: np.ndarray, components: int) -> np.ndarray:
    """Orthonormal rows ``[k, dim]`` spanning the largest variation of ``centred`` ``[n, dim]`` (``k <= components``)."""
    _, s, vh = np.linalg.svd(np.asarray(centred, np.float64), full_matrices=False)
    keep = int(min(components, np.count_nonzero(s > s[0] * 1e-9))) if len(s) and s[0] > 0 else 0
    return vh[:keep]


# --------------------------------------------------------------------------- one clip


@dataclasses.dataclass(frozen=True)
class ClipFit:
    """Mouth directions fitted on one clip.

    ``directions`` float64 ``[F, dim]`` (W+ of the fitted layers, flattened;
    rows in :data:`FEATURES` order); ``anchor_latent`` ``[dim]`` and
    ``anchor_features`` ``[F]``: the clip's mean latent and features, which
    the directions move away from; ``mouth_range`` ``[2, 3]``: the mouth
    features' :data:`RANGE_PERCENTILES`; ``ridge``: the fit and its scores in
    the clip's PCA coordinates (``components`` of them).
    """

    directions: np.ndarray
    anchor_latent: np.ndarray
    anchor_features: np.ndarray
    mouth_range: np.ndarray
    ridge: RidgeFit
    components: int


def fit_clip(latents: np.ndarray, landmarks68: np.ndarray, components: int, prior: Optional[np.ndarray] = None,
             alphas: Sequence[float] = ALPHAS) -> ClipFit:
    """Fit the mouth directions of one clip: latents ``[n, dim]`` (fitted layers, flattened) and crop landmarks ``[n, 68, 2]``, in frame order.

    ``prior``: shared directions ``[F, dim]`` to shrink towards (their part
    outside the clip's PCA basis is kept as is).
    """
    w = np.asarray(latents, np.float64).reshape(len(latents), -1)
    x = clip_features(landmarks68)
    anchor_w, anchor_x = w.mean(0), x.mean(0)
    basis = principal_basis(w - anchor_w, min(components, len(w) - 1))
    z = (w - anchor_w) @ basis.T
    fit = cross_validate(block_folds(x - anchor_x, z), None if prior is None else prior @ basis.T, alphas)
    directions = fit.coefficients @ basis
    if prior is not None:
        directions = directions + prior - (prior @ basis.T) @ basis
    return ClipFit(directions, anchor_w, anchor_x, mouth_range(x), fit, len(basis))


def mouth_range(features: np.ndarray) -> np.ndarray:
    """The :data:`RANGE_PERCENTILES` ``[2, 3]`` of the mouth columns of ``features`` ``[n, F]``."""
    return np.percentile(np.asarray(features)[:, :N_MOUTH], RANGE_PERCENTILES, axis=0)


def mouth_subspace(directions: np.ndarray, tolerance: float = 1e-6) -> np.ndarray:
    """Orthonormal rows ``[r, dim]`` (r <= 3) spanning the mouth rows of ``directions`` ``[F, dim]``; degenerate ones dropped."""
    _, s, vh = np.linalg.svd(np.asarray(directions, np.float64)[:N_MOUTH], full_matrices=False)
    if s.size == 0 or s[0] <= 0:
        return vh[:0]
    return vh[: int(np.count_nonzero(s > s[0] * tolerance))]


# --------------------------------------------------------------------------- many clips


class PooledFit:
    """Streams clips into per-fold :class:`Moments` of a pooled fit in W+ (memory flat in the number of clips).

    Clip ``i`` joins fold ``i % N_FOLDS``; each clip is also split into
    contiguous blocks, used instead when fewer than two clips were added.
    """

    def __init__(self) -> None:
        self.by_clip: list[Moments] = []
        self.by_block: list[Moments] = []
        self.mouth: list[np.ndarray] = []
        self.clips = 0

    def add(self, latents: np.ndarray, landmarks68: np.ndarray) -> None:
        """One clip: latents ``[n, dim]`` (fitted layers, flattened) and crop landmarks ``[n, 68, 2]``."""
        w = np.asarray(latents, np.float64).reshape(len(latents), -1)
        x = clip_features(landmarks68)
        w, x_c = w - w.mean(0), x - x.mean(0)
        if not self.by_clip:
            self.by_clip = [Moments.zeros(x.shape[1], w.shape[1]) for _ in range(N_FOLDS)]
            self.by_block = [Moments.zeros(x.shape[1], w.shape[1]) for _ in range(N_FOLDS)]
        if w.shape[1] != self.by_clip[0].zz.shape[0]:
            raise BadInputError(f"directions fit: a clip has latents of width {w.shape[1]}, the others {self.by_clip[0].zz.shape[0]}; use one encoder for every clip")
        self.by_clip[self.clips % N_FOLDS] += Moments.of(x_c, w)
        for i, block in enumerate(np.array_split(np.arange(len(w)), N_FOLDS)):
            self.by_block[i] += Moments.of(x_c[block], w[block])
        self.mouth.append(x[:, :N_MOUTH])
        self.clips += 1

    def fit(self, alphas: Sequence[float] = ALPHAS) -> RidgeFit:
        """The cross-validated fit over everything added (folds of clips when there are at least two)."""
        if self.clips == 0:
            raise BadInputError("directions fit: no clip had usable frames")
        return cross_validate(self.by_clip if self.clips >= 2 else self.by_block, None, alphas)

    def mouth_range(self) -> np.ndarray:
        return mouth_range(np.concatenate(self.mouth))


# --------------------------------------------------------------------------- the shared directions file


@dataclasses.dataclass(frozen=True)
class SharedDirections:
    """Mouth and pose directions fitted over many clips (the prior of per-clip fits, and the map for portraits).

    ``directions`` float32 ``[F, L, D]`` (zero off ``layers``; rows in
    ``features`` order); ``mouth_range`` float32 ``[2, 3]``; ``fingerprint``:
    the base generator's (:meth:`~latentdub.toolkit.core.protocols.Generator.fingerprint`);
    ``info``: how it was fitted (clips, frames, alpha, R^2, encoder, generator).
    """

    directions: np.ndarray
    layers: tuple[int, ...]
    features: tuple[str, ...]
    mouth_range: np.ndarray
    fingerprint: str
    info: dict[str, Any]

    def flat(self, layers: Sequence[int]) -> np.ndarray:
        """Directions ``[F, len(layers) * D]`` on ``layers`` (zero on layers this file does not move)."""
        n_styles = self.directions.shape[1]
        bad = [i for i in layers if not 0 <= i < n_styles]
        if bad:
            raise BadInputError(f"mouth directions move W+ layers below {n_styles}; layers {bad} do not exist there")
        return np.asarray(self.directions[:, list(layers)], np.float64).reshape(len(self.features), -1)

    def save(self, path: Path) -> Path:
        """Write as safetensors (``.part`` then rename) with the metadata needed to check it on load."""
        from safetensors.numpy import save_file

        path = Path(path)
        meta = {
            "format": FORMAT, "version": str(FORMAT_VERSION), "fingerprint": self.fingerprint,
            "layers": json.dumps(list(self.layers)), "features": json.dumps(list(self.features)), "info": json.dumps(self.info, sort_keys=True),
        }
        tmp = path.with_name(path.name + ".part")
        save_file({"directions": np.ascontiguousarray(self.directions, np.float32), "mouth_range": np.ascontiguousarray(self.mouth_range, np.float32)}, str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> "SharedDirections":
        """Read a file written by :meth:`save`; :class:`BadInputError` naming the file when it is not one."""
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="np") as f:
                meta = dict(f.metadata() or {})
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise BadInputError(f"{path}: not a safetensors file ({type(exc).__name__}); give a file written by `latentdub directions fit`") from None
        if meta.get("format") != FORMAT or "directions" not in arrays:
            raise BadInputError(f"{path}: not a mouth directions file (format {meta.get('format')!r}); give a file written by `latentdub directions fit`")
        if int(meta.get("version", "0")) > FORMAT_VERSION:
            raise BadInputError(f"{path}: mouth directions format {meta['version']} is newer than this latentdub reads ({FORMAT_VERSION}); upgrade latentdub")
        features = tuple(json.loads(meta["features"]))
        if features != FEATURES:
            raise BadInputError(f"{path}: holds directions for features {list(features)}, this latentdub fits {list(FEATURES)}; fit them again")
        return cls(arrays["directions"], tuple(json.loads(meta["layers"])), features, arrays["mouth_range"], meta.get("fingerprint", ""), json.loads(meta.get("info", "{}")))


def fit_shared(clips: Sequence[tuple[str, Callable[[], tuple[np.ndarray, np.ndarray]]]], layers: Sequence[int], fingerprint: str,
               info: dict[str, Any], log: Callable[[str], None] = print) -> SharedDirections:
    """Pool ``clips`` (name, and a callable returning its W+ latents ``[n, L, D]`` and crop landmarks ``[n, 68, 2]``) into :class:`SharedDirections`.

    A clip that raises :class:`BadInputError` or :class:`NoFaceError` (no
    face, no dense landmarks, too few frames) is skipped with a message; one
    clip's arrays are held at a time.
    """
    from ..core.errors import NoFaceError

    pooled = PooledFit()
    shape: Optional[tuple[int, int]] = None
    for name, load in clips:
        try:
            latents, landmarks = load()
            if len(latents) < 4:
                raise BadInputError(f"only {len(latents)} frames with a face")
            shape = tuple(latents.shape[1:])  # type: ignore[assignment]
            pooled.add(np.asarray(latents, np.float32)[:, list(layers)].reshape(len(latents), -1), landmarks)
        except (BadInputError, NoFaceError) as exc:
            log(f"skipped {name}: {exc}")
    fit = pooled.fit()
    assert shape is not None  # pooled.fit() raised when no clip was added
    directions = np.zeros((len(FEATURES), *shape), np.float32)
    directions[:, list(layers)] = fit.coefficients.reshape(len(FEATURES), len(layers), shape[1])
    info = {**info, "clips": pooled.clips, "frames": fit.frames, "alpha": fit.alpha, "r2": round(fit.r2_overall, 4), "r2_mouth": round(fit.r2_mouth, 4), "folds": fit.folds}
    return SharedDirections(directions, tuple(layers), FEATURES, pooled.mouth_range().astype(np.float32), fingerprint, info)


# --------------------------------------------------------------------------- `latentdub directions fit`


def _shard_sample(path: Path, max_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Latents ``[m, L, D]`` and crop landmarks ``[m, P, 2]`` of at most ``max_frames`` valid frames of a shard, evenly spread."""
    from .dataset import read_shard

    flags = read_shard(path, names=("valid",))["valid"]
    valid = np.flatnonzero(flags)
    chosen = valid[np.unique(np.linspace(0, len(valid) - 1, num=min(max_frames, len(valid))).round().astype(int))] if len(valid) else valid
    latents, landmarks = [], []
    for start in range(0, int(chosen.max()) + 1 if len(chosen) else 0, 256):  # 256 rows at a time: memory flat in clip length
        stop = min(start + 256, len(flags))
        rows = read_shard(path, start, stop, names=("latents", "landmarks"))
        pick = chosen[(chosen >= start) & (chosen < stop)] - start
        latents.append(rows["latents"][pick])
        landmarks.append(rows["landmarks"][pick])
    if not latents:
        return np.zeros((0, 1, 1), np.float32), np.zeros((0, 68, 2), np.float32)
    return np.concatenate(latents).astype(np.float32), np.concatenate(landmarks)


def _dense_only(where: str, landmarks: np.ndarray) -> np.ndarray:
    if landmarks.ndim != 3 or landmarks.shape[1] != 68:
        raise BadInputError(f"{where}: landmarks have {landmarks.shape[1] if landmarks.ndim == 3 else '?'} points; mouth features need 68 (detector.plugin: dlib)")
    return landmarks


def fit_from_source(source: Path, preset: Any, batch_size: int = 16, log: Callable[[str], None] = print, progress: bool = False) -> SharedDirections:
    """Shared mouth directions of a prepared dataset (``latentdub dataset prepare``) or of a video file or folder of clips.

    ``preset`` supplies the detector, ``track`` settings, encoder and
    generator (whose fingerprint the file records); ``layers`` and
    ``max_frames`` (frames per clip) come from its motion stage when it has
    them (``clipfit``), else :data:`DEFAULT_LAYERS` and 300. A dataset must
    have been prepared with the preset's encoder.
    """
    from tqdm import tqdm

    from ..core.build import Components
    from ..core.config import config_to_dict
    from .dataset import MANIFEST, VIDEO_SUFFIXES, find_clips, invert_clip, load_manifest, shard_path

    source = Path(source)
    for stage in ("encoder", "generator"):
        if stage not in preset.stages:
            raise BadInputError(f"preset {preset.name!r} configures no {stage}; directions fit needs the neural stack's encoder and generator (e.g. --preset neural-1024)")
    motion = preset.stages.get("motion")
    layers = tuple(getattr(motion.config, "layers", DEFAULT_LAYERS)) if motion else DEFAULT_LAYERS
    max_frames = int(getattr(motion.config, "max_frames", 300)) if motion else 300
    components = Components(preset, log=log)
    encoder_record = {"plugin": preset.stages["encoder"].plugin, **config_to_dict(preset.stages["encoder"].config)}
    n_styles = int(components["encoder"].n_styles)
    if not layers or max(layers) >= n_styles or min(layers) < 0:
        raise BadInputError(f"motion.layers: {list(layers)} must be W+ layer indices below {n_styles} (the encoder's styles)")
    fingerprint = components["generator"].fingerprint()
    loaders: list[tuple[str, Callable[[], tuple[np.ndarray, np.ndarray]]]] = []
    if (source / MANIFEST).is_file():
        manifest = load_manifest(source)
        if manifest.get("encoder", encoder_record) != encoder_record or manifest.get("seed", preset.seed) != preset.seed:
            raise BadInputError(f"{source}: prepared with another encoder ({manifest.get('encoder')}); use the preset it was prepared with ({manifest.get('preset')})")
        for clip_id, entry in sorted(manifest["clips"].items()):
            if entry.get("status") == "done":
                path = shard_path(source, clip_id)

                def load(path: Path = path) -> tuple[np.ndarray, np.ndarray]:
                    latents, landmarks = _shard_sample(path, max_frames)
                    return latents, _dense_only(str(path), landmarks)

                loaders.append((clip_id, load))
    else:
        if source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
            videos = [source]
        elif source.is_dir():
            videos = [clip.video for clip in find_clips(source, "folder")]
        else:
            raise BadInputError(f"{source}: neither a prepared dataset (no {MANIFEST}), a video nor a folder of clips; give one of those")
        for video in videos:

            def load(video: Path = video) -> tuple[np.ndarray, np.ndarray]:
                inverted = invert_clip(video, components, batch_size, max_frames)
                return inverted.latents.astype(np.float32), _dense_only(str(video), inverted.landmarks)

            loaders.append((video.name, load))
    if not loaders:
        raise BadInputError(f"{source}: no finished clips to fit on")
    bar = tqdm(loaders, desc="directions", unit="clip", disable=not progress, leave=False, dynamic_ncols=True)
    info = {"source": str(source.resolve()), "preset": preset.name, "encoder": encoder_record, "generator": preset.stages["generator"].plugin, "max_frames": max_frames}
    return fit_shared(list(bar), layers, fingerprint, info, log)


def fit_directions(source: str | Path, output: str | Path, preset: Any = "neural-1024", overrides: Optional[list[str]] = None,
                   batch_size: int = 16, log: Callable[[str], None] = print, progress: bool = False) -> SharedDirections:
    """``latentdub directions fit``: :func:`fit_from_source` then save to ``output`` (checked before any work)."""
    from ..core.files import check_writable_file
    from ..core.presets import Preset, resolve_preset

    output = check_writable_file(output, "mouth-directions.safetensors")
    preset = preset if isinstance(preset, Preset) else resolve_preset(preset, overrides)
    shared = fit_from_source(Path(source), preset, batch_size=batch_size, log=log, progress=progress)
    shared.save(output)
    return shared
