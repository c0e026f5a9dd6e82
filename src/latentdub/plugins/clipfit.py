"""Motion model ``clipfit``: neural dubbing from the public weights, with mouth directions fitted per clip (no Stage 1).

The paper's Stage 1 learns speech -> W+ motion from a corpus. ``clipfit``
needs no trained audio model: it learns, from the clip being dubbed, how its
own latents move with its own mouth, and drives that with the mouth shapes
a ``mouth`` motion model (``targets``, default ``visemes``) predicts from the
new speech.

1. Study pass: it sees every tracked source frame; at most ``max_frames`` of
   them, evenly spread, are inverted through the renderer (the very inversion
   its subspace swap uses) and kept with their crop landmarks (memory flat in
   clip length).
2. Fit (:func:`~latentdub.toolkit.learning.directions.fit_clip`): mouth shape and head
   pose from the landmarks (:mod:`~latentdub.toolkit.faces.measures`), ridge
   from them to the clip's coefficients in its within-clip PCA basis of the
   ``layers``, the penalty cross-validated and shrunk towards the shared
   directions of ``prior`` when present. Pose is regressed alongside, so the
   mouth rows ``D`` (W+ displacement per unit of opening, width, protrusion)
   carry mouth motion only.
3. Drive: with ``Q`` an orthonormal basis of the mouth directions, ``m_t`` the
   target shape of output frame ``t``, and the clip's mean latent ``a`` and
   mean mouth ``m_a``::

       codes_t = Q (a - w_I) + Q D^T (m_t - m_a)

   as compact ``wplus-offset`` motion on the identity w_I (``basis`` = Q). The
   neural renderer's ``identity: subspace`` mode draws
   ``w_src - Q^T Q (w_src - w_I) + Q^T codes_t``: only the source's component
   along the mouth directions is replaced; everything else of the source
   (pose, blinks, lighting, identity detail) is kept exactly.

Targets beyond the mouth range the fit saw (its 2nd-98th percentiles widened
by ``extrapolate`` of that range each side, the shared directions' range
included) are limited to it, and the summary says for how many frames.
A portrait (``animate``) or a clip with fewer than ``min_frames`` faces uses
the shared directions alone. The component cannot serve
(:class:`~latentdub.toolkit.core.errors.CannotServeError`, so the run goes on with
the preset's ``fallback``) when the landmarks have no 68 points, when a clip
is too short or the mouth's cross-validated R^2 is below ``min_r2`` and no
shared directions are available.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np

from latentdub.toolkit.core.config import NAMES_WEIGHTS, Range
from latentdub.toolkit.core.errors import BadInputError, CannotServeError, ConfigError, MissingWeightsError, PluginError
from latentdub.toolkit.core.hookspecs import hookimpl
from latentdub.toolkit.core.types import Audio, Motion
from latentdub.toolkit.learning.directions import DEFAULT_LAYERS, N_MOUTH, SharedDirections, clip_features, fit_clip, mouth_subspace

#: Registered weight name of the shared mouth directions (fitted by `latentdub directions fit`; no public download).
PRIOR_WEIGHT = "mouth-directions"
PRIOR_FILE = "mouth-directions.safetensors"


def _default_targets() -> dict[str, Any]:
    return {"plugin": "visemes"}


@dataclasses.dataclass(frozen=True)
class ClipFitConfig:
    """Settings of the clipfit motion model (see the module docstring).

    ``targets``: the ``mouth`` motion model that turns speech into mouth
    shapes, ``{plugin: NAME, ...its settings}`` (plugin default ``visemes``); ``transcript`` /
    ``transcript_file``: the words of the speech, handed to it; ``prior``:
    shared mouth directions (weight name or path; the default name may be
    absent, any other value must exist); ``layers``: W+ layers the mouth
    moves; ``components``: within-clip PCA components fitted; ``max_frames``:
    most source frames inverted for the fit; ``min_frames``: fewest for a
    per-clip fit; ``min_r2``: least cross-validated R^2 of the mouth (beyond
    head pose) to trust a fit without shared directions; ``extrapolate``:
    how far beyond the seen mouth range targets may go, as a fraction of it.
    """

    targets: dict[str, Any] = dataclasses.field(default_factory=_default_targets)
    transcript: Optional[str] = None
    transcript_file: Optional[Path] = None
    prior: Annotated[Optional[str], NAMES_WEIGHTS] = PRIOR_WEIGHT
    layers: tuple[Annotated[int, Range(ge=0)], ...] = DEFAULT_LAYERS
    components: Annotated[int, Range(ge=1)] = 16
    max_frames: Annotated[int, Range(ge=4)] = 300
    min_frames: Annotated[int, Range(ge=4)] = 25
    min_r2: Annotated[float, Range(ge=0, lt=1)] = 0.1
    extrapolate: Annotated[float, Range(ge=0)] = 0.25

    def __post_init__(self) -> None:
        """Validate ``targets`` against its plugin's config and fill in its defaults."""
        from latentdub.toolkit.core.config import config_to_dict

        component, config = _target_config(self.targets)
        object.__setattr__(self, "targets", {"plugin": component.name, **config_to_dict(config)})

    def check(self, where: str) -> None:
        """At least as many frames may be inverted as a fit needs, and each layer moves once."""
        if self.max_frames < self.min_frames:
            raise ConfigError(f"{where}.max_frames: {self.max_frames} must be >= {where}.min_frames ({self.min_frames})")
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"{where}.layers: {list(self.layers)} must be distinct W+ layer indices")


def _target_config(targets: dict[str, Any], extra: Optional[dict[str, Any]] = None) -> tuple[Any, Any]:
    """The registered ``mouth`` model named by ``targets`` and its parsed config (``extra`` settings added)."""
    from latentdub.toolkit.core.config import parse_config
    from latentdub.toolkit.core.plugins import get_component

    settings = dict(targets)
    plugin = settings.pop("plugin", _default_targets()["plugin"])
    if not isinstance(plugin, str):
        raise ConfigError("motion.targets.plugin: name the model of mouth shapes, e.g. targets: {plugin: visemes}")
    component = get_component("motion", plugin)
    return component, parse_config(component.config, {**settings, **(extra or {})}, "motion.targets")


@hookimpl
def register_motion_models(register):
    register("clipfit", build_clipfit, config=ClipFitConfig, summary="mouth directions in W+ fitted on the clip itself, driven by viseme mouth shapes (no Stage 1)")


@hookimpl
def register_weights(register):
    from latentdub.toolkit.core.weights import WeightSpec

    register(WeightSpec(
        PRIOR_WEIGHT, PRIOR_FILE, url="", sha256="", size=0, licence="yours (fitted with `latentdub directions fit`)",
        description="shared mouth directions in W+ for portraits and short clips; no public download: fit them with `latentdub directions fit`",
    ))


def build_clipfit(config: ClipFitConfig, context: Any) -> "ClipFitMotion":
    """Factory: builds the renderer stage and the target model, checks the layers fit the encoder, loads the shared directions."""
    renderer = context.build("renderer")
    if not callable(getattr(renderer, "invert", None)):
        raise PluginError("motion 'clipfit' inverts the source through the renderer; use a neural renderer (renderer.plugin: neural)")
    n_styles = int(context.build("encoder").n_styles)
    if max(config.layers) >= n_styles or min(config.layers) < 0:
        raise ConfigError(f"motion.layers: {list(config.layers)} must be W+ layer indices below {n_styles} (the encoder's styles)")
    speech = {k: getattr(config, k) for k in ("transcript", "transcript_file") if getattr(config, k) is not None}
    component, target_config = _target_config(config.targets, speech)
    targets = component.factory(target_config, context)
    if getattr(targets, "kind", None) != "mouth":
        raise PluginError(f"motion.targets: plugin {component.name!r} makes {getattr(targets, 'kind', None)!r} motion; clipfit needs a 'mouth' model (e.g. visemes)")
    return ClipFitMotion(config, renderer, targets, *_load_prior(config, context))


def _load_prior(config: ClipFitConfig, context: Any) -> tuple[Optional[SharedDirections], list[str]]:
    """The shared directions (or None) and notes on why they are not used."""
    if config.prior is None:
        return None, []
    try:
        path = context.weights(config.prior)
    except MissingWeightsError:
        if config.prior != PRIOR_WEIGHT:
            raise
        return None, [f"clipfit: no shared mouth directions ({PRIOR_WEIGHT} not found; `latentdub directions fit` makes them)"]
    prior = SharedDirections.load(path)
    fingerprint = context.build("generator").fingerprint()
    if prior.fingerprint != fingerprint:
        message = f"{path}: mouth directions fitted for generator {prior.fingerprint[:12]}, the preset's generator is {fingerprint[:12]}"
        if config.prior != PRIOR_WEIGHT:
            raise BadInputError(f"{message}; fit them for this generator with `latentdub directions fit`")
        return None, [f"clipfit: ignoring the shared mouth directions: {message}"]
    prior.flat(config.layers)  # checks the layers exist there
    return prior, []


class _EvenKeeper:
    """Keeps at most ``limit`` frames evenly spread over the source: every ``stride``-th index, the stride doubling when full."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.stride = 1
        self.rows: list[tuple[int, np.ndarray, np.ndarray]] = []

    def wanted(self, frames: np.ndarray) -> np.ndarray:
        """Boolean mask of the ``frames`` worth keeping now."""
        return np.asarray(frames) % self.stride == 0

    def add(self, frames: np.ndarray, latents: np.ndarray, landmarks: np.ndarray) -> None:
        self.rows += [(int(f), w, p) for f, w, p in zip(frames, latents, landmarks)]
        while len(self.rows) > self.limit:
            self.stride *= 2
            self.rows = [r for r in self.rows if r[0] % self.stride == 0]

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frames int64 ``[n]``, latents ``[n, ...]``, landmarks ``[n, P, 2]`` in frame order."""
        rows = sorted(self.rows, key=lambda r: r[0])
        return np.array([r[0] for r in rows], np.int64), np.stack([r[1] for r in rows]), np.stack([r[2] for r in rows])


@dataclasses.dataclass(frozen=True)
class _Drive:
    """What predict needs: mouth ``directions`` ``[3, dim]``, ``anchor_latent`` ``[dim]``, ``anchor_mouth`` ``[3]``,
    the allowed target range ``limits`` ``[2, 3]``, and the fit's report (``notes``, ``fit``)."""

    directions: np.ndarray
    anchor_latent: np.ndarray
    anchor_mouth: np.ndarray
    limits: np.ndarray
    notes: list[str]
    fit: dict[str, Any]


class ClipFitMotion:
    """Speech -> ``wplus-offset`` motion along the mouth directions of the studied clip (see the module docstring)."""

    kind = "wplus-offset"

    def __init__(self, config: ClipFitConfig, renderer: Any, targets: Any, prior: Optional[SharedDirections], notes: list[str]) -> None:
        self.config = config
        self.renderer = renderer
        self.targets = targets
        self.prior = prior
        self.prior_notes = notes
        self.sample_rate = int(getattr(targets, "sample_rate", 16000))
        self.kept = _EvenKeeper(config.max_frames)
        self._drive: Optional[_Drive] = None

    def study(self, crops: np.ndarray, landmarks: np.ndarray, frames: np.ndarray) -> None:
        """Invert the crops worth keeping (see :class:`~latentdub.toolkit.protocols.SourceStudent`)."""
        if landmarks.shape[1] != 68:
            raise CannotServeError(f"motion 'clipfit' measures the mouth from 68-point landmarks but the detector gives {landmarks.shape[1]}; use detector.plugin: dlib")
        pick = self.kept.wanted(frames)
        if pick.any():
            latents = self.renderer.invert(np.asarray(crops)[pick]).float().cpu().numpy()
            self.observe(np.asarray(frames)[pick], latents, np.asarray(landmarks)[pick])

    def observe(self, frames: np.ndarray, latents: np.ndarray, landmarks: np.ndarray) -> None:
        """Keep source frames ``[B]`` with their W+ latents ``[B, L, D]`` and crop landmarks ``[B, 68, 2]`` (``study`` after inverting)."""
        self.kept.add(frames, np.asarray(latents, np.float32)[:, list(self.config.layers)], np.asarray(landmarks, np.float32))
        self._drive = None

    def drive(self) -> _Drive:
        """The fit of the kept frames (computed once), or :class:`CannotServeError` saying why there is none."""
        if self._drive is None:
            self._drive = self._fit()
        return self._drive

    def _fit(self) -> _Drive:
        cfg, prior = self.config, self.prior
        if not self.kept.rows:
            raise CannotServeError("motion 'clipfit': no face was shown to it before predict (no study pass ran)")
        frames, latents, landmarks = self.kept.arrays()
        w = latents.reshape(len(latents), -1).astype(np.float64)
        prior_flat = None if prior is None else prior.flat(cfg.layers)
        clips = prior.info.get("clips", "?") if prior is not None else 0
        shared = "" if prior is None else f"shared directions of {clips} clip{'' if clips == 1 else 's'} (R^2 {prior.info.get('r2_mouth', float('nan')):.2f} from the mouth)"
        notes = list(self.prior_notes)
        if len(frames) < cfg.min_frames:
            if prior_flat is None:
                raise CannotServeError(
                    f"motion 'clipfit': {len(frames)} frame(s) with a face are too few to fit the mouth on (motion.min_frames {cfg.min_frames}) "
                    f"and there are no shared mouth directions; fit them with `latentdub directions fit` (weight {PRIOR_WEIGHT})"
                )
            anchor = clip_features(landmarks).mean(0)
            notes.append(f"clipfit: {len(frames)} frame(s) to learn from: driving the {shared}")
            return _Drive(prior_flat[:N_MOUTH], w.mean(0), anchor[:N_MOUTH], self._limits(prior.mouth_range), notes,
                          {"source": "shared", "frames": int(len(frames))})
        fit = fit_clip(w, landmarks, cfg.components, prior_flat)
        r = fit.ridge
        opening = fit.mouth_range[1, 0] - fit.mouth_range[0, 0]
        if r.r2_mouth < cfg.min_r2 and prior_flat is None:
            raise CannotServeError(
                f"motion 'clipfit': the mouth explains R^2 {r.r2_mouth:.2f} of the clip's latent motion (cross-validated, beyond head pose), "
                f"below motion.min_r2 {cfg.min_r2:.2f} (its opening spans {opening:.3f} IOD); the fit is too weak to trust"
            )
        layers = f"{min(cfg.layers)}-{max(cfg.layers)}" if list(cfg.layers) == list(range(min(cfg.layers), max(cfg.layers) + 1)) else ",".join(map(str, cfg.layers))
        notes.append(
            f"clipfit: mouth directions fitted on {r.frames} frames ({fit.components} PCA components of layers {layers}, {r.folds}-fold "
            f"cross-validated lambda {r.alpha:.0e}{', shrunk towards the ' + shared if shared else ''}): R^2 {r.r2_overall:.2f} overall, "
            f"{r.r2_mouth:.2f} from the mouth beyond head pose; per component " + " ".join(f"{v:.2f}" for v in r.r2)
        )
        if r.r2_mouth < cfg.min_r2:
            notes.append(f"clipfit: R^2 from the mouth {r.r2_mouth:.2f} is below motion.min_r2 {cfg.min_r2:.2f}; the fit leans on the shared directions")
        seen = fit.mouth_range if prior is None else np.stack([np.minimum(fit.mouth_range[0], prior.mouth_range[0]), np.maximum(fit.mouth_range[1], prior.mouth_range[1])])
        report = {
            "source": "clip", "frames": r.frames, "components": fit.components, "alpha": r.alpha, "r2": r.r2_overall, "r2_mouth": r.r2_mouth,
            "r2_components": [float(v) for v in r.r2], "opening_range": float(opening), "prior": prior is not None,
        }
        return _Drive(fit.directions[:N_MOUTH], fit.anchor_latent, fit.anchor_features[:N_MOUTH], self._limits(seen), notes, report)

    def _limits(self, seen: np.ndarray) -> np.ndarray:
        """``seen`` ``[2, 3]`` widened by ``extrapolate`` of its span each side."""
        span = seen[1] - seen[0]
        return np.stack([seen[0] - self.config.extrapolate * span, seen[1] + self.config.extrapolate * span])

    def predict(self, audio: Audio, fps: float, n_frames: int, identity: Optional[Any] = None) -> Motion:
        """Coefficients float32 ``[n_frames, r]`` along the mouth directions; ``extra``: ``basis`` ``[r, L, D]``, ``base``
        ``identity``, ``layers``, ``mouth`` (target shapes ``[n_frames, 3]``), ``notes`` and ``fit`` (the fit's report)."""
        if identity is None:
            raise PluginError("motion plugin 'clipfit' needs the identity latent of a neural renderer; use renderer.plugin: neural")
        if not fps > 0 or n_frames < 0:
            raise BadInputError(f"motion: need fps > 0 and n_frames >= 0, got fps={fps}, n_frames={n_frames}")
        w_id = np.asarray(identity.detach().cpu() if hasattr(identity, "detach") else identity, np.float64)
        layers = list(self.config.layers)
        drive = self.drive()
        target = self.targets.predict(audio, fps, n_frames)
        wanted = np.asarray(target.codes, np.float64).reshape(n_frames, N_MOUTH)
        driven = np.clip(wanted, drive.limits[0], drive.limits[1])
        basis = mouth_subspace(drive.directions)  # Q [r, dim]
        codes = (drive.anchor_latent - w_id[layers].reshape(-1)) @ basis.T + (driven - drive.anchor_mouth) @ drive.directions @ basis.T
        full = np.zeros((len(basis), *w_id.shape), np.float32)
        full[:, layers] = basis.reshape(len(basis), len(layers), -1)
        notes = list(drive.notes)
        limited = int(np.count_nonzero((np.abs(driven - wanted) > 1e-9).any(axis=1)))
        if limited:
            notes.append(f"clipfit: {limited} of {n_frames} frames ask for mouth shapes beyond what the fit has seen; limited to it")
        if target.extra.get("fallback"):
            notes.append(f"clipfit targets: {target.extra['fallback']}")
        return Motion(
            kind=self.kind,
            codes=codes.astype(np.float32),
            fps=float(fps),
            extra={
                "basis": full, "base": "identity", "layers": tuple(layers), "mouth": wanted.astype(np.float32),
                "notes": notes, "fit": {**drive.fit, "limited_frames": limited}, "targets": target.extra,
            },
        )
