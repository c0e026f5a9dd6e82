"""Motion model ``audio2latent``: the paper's Stage 1 (speech -> W+ displacement of the identity).

``predict`` returns :class:`~latentdub.toolkit.core.types.Motion` of kind
``wplus-offset`` in compact form: ``codes`` float32 ``[T, k]`` are subspace
coefficients and ``extra["basis"]`` float32 ``[k, L, 512]`` maps them to W+
displacements (``offset_t = codes[t] @ basis``, zero off ``extra["layers"]``),
added to the identity latent (``extra["base"] == "identity"``). Long speech is
processed in overlapping windows, so memory does not grow with its length.

The network comes from a checkpoint written by ``latentdub train``
(``checkpoint``: a path or a registered weight name) or, for tests,
``random_init``. Training settings live in ``train`` (:class:`TrainConfig`,
which extends the core loop's settings) so presets validate them; the
trainer (:class:`Audio2LatentTrainer`) is registered through
``register_trainers`` and driven by :mod:`latentdub.toolkit.learning.training`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional

import numpy as np

from latentdub.toolkit.core.config import NAMES_WEIGHTS, Range
from latentdub.toolkit.core.errors import BadInputError, ConfigError, MissingWeightsError, PluginError
from latentdub.toolkit.core.hookspecs import hookimpl
from latentdub.toolkit.core.types import Audio, Motion
from latentdub.toolkit.learning.perceptual import LpipsSettings
from latentdub.toolkit.learning.training import LoopConfig

#: Registered weight name of a trained model (no public download: train your own).
WEIGHT_NAME = "audio2latent"
WEIGHT_FILE = "audio2latent.safetensors"


@dataclasses.dataclass(frozen=True)
class TrainConfig(LoopConfig, LpipsSettings):
    """Training settings of audio2latent (preset key ``motion.train``): the loop's (:class:`LoopConfig`),
    the LPIPS ones (:class:`~latentdub.toolkit.learning.perceptual.LpipsSettings`) and these.

    ``latent_weight``/``lpips_weight``: loss weights (``lpips_weight: 0``
    skips the generator entirely); ``lpips_frames``: frames per sequence
    rendered for LPIPS; ``pca_center``:
    ``clip`` (V spans motion within clips) or ``global`` (V spans all
    latents); ``pca_frames``: most frames used to fit V;
    ``mixed_precision``: bf16 autocast on CUDA.
    """

    latent_weight: Annotated[float, Range(ge=0)] = 1.0
    lpips_weight: Annotated[float, Range(ge=0)] = 10.0
    lpips_frames: Annotated[int, Range(ge=1)] = 1
    pca_center: Literal["clip", "global"] = "clip"
    pca_frames: Annotated[int, Range(ge=1)] = 50000
    mixed_precision: bool = True

    def check(self, where: str) -> None:
        """Raise :class:`ConfigError` unless at least one loss has a weight."""
        if self.latent_weight + self.lpips_weight == 0:
            raise ConfigError(f"{where}.latent_weight / {where}.lpips_weight: both are 0; give at least one loss a weight > 0")


# --------------------------------------------------------------------------- training objective


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

        from latentdub.toolkit.learning.perceptual import lpips_distance

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


def _build_lpips(config: TrainConfig, device: Any, seed: int, log: Callable[[str], None]) -> Any:
    try:
        return config.build_lpips(device, seed=seed, log=log)
    except MissingWeightsError as exc:
        raise MissingWeightsError(
            f"{exc}; or train without the perceptual loss: --set motion.train.lpips_weight=0"
            + ("" if config.lpips_random_backbone else " (random backbones are for tests only: motion.train.lpips_random_backbone)")
        ) from None


class Audio2LatentTrainer:
    """Implements :class:`~latentdub.toolkit.core.protocols.Trainer` for audio2latent (driven by ``latentdub train``).

    ``start`` fits the PCA subspace V on the training latents (or loads a
    checkpoint to resume); the loss is ``latent_weight * L_latent +
    lpips_weight * L_lpips`` (:class:`Objective`).
    """

    loss_parts = ("latent", "lpips")
    final_name = WEIGHT_FILE

    def __init__(self, config: "Audio2LatentConfig", context: Any) -> None:
        self.config = config
        self.loop: TrainConfig = config.train
        self.context = context
        self.model: Any = None
        self.objective: Optional[Objective] = None

    def start(self, data: Any, checkpoint: Optional[Path]) -> list[str]:
        """Build V and the network from ``data`` (a :class:`~latentdub.toolkit.learning.training.TrainingData`), or load ``checkpoint``."""
        import torch

        from latentdub.nets.audio2latent import Audio2Latent, fit_pca, load_checkpoint

        tc, device, log = self.loop, self.context.device, self.context.log
        notes: list[str] = []
        if checkpoint is not None:
            self.model, _ = load_checkpoint(checkpoint, map_location=device)
        else:
            model = Audio2Latent(self.config.spec(data.n_styles, data.latent_dim, data.window, data.coeffs))
            lat, groups = data.train.pca_latents(tc.pca_frames, np.random.default_rng([data.seed, 7]))
            mean, basis, std, explained = fit_pca(
                torch.from_numpy(lat), torch.from_numpy(groups) if tc.pca_center == "clip" else None, model.spec.layers, model.spec.components
            )
            model.set_pca(mean, basis, std)
            log(f"PCA: {model.spec.components} components over layers {list(model.spec.layers)} from {len(lat)} frames explain {explained:.1%} of the {tc.pca_center}-centred variance")
            self.model = model.to(device)
        generator = lpips = None
        if tc.lpips_weight > 0:
            generator = self.context.build("generator")
            if int(generator.n_styles) != data.n_styles:
                raise BadInputError(f"{data.path}: latents have {data.n_styles} styles but the preset's generator takes {generator.n_styles}; use the preset the dataset was prepared with")
            generator.module.requires_grad_(False).eval()
            lpips = _build_lpips(tc, device, data.seed, log)
            if tc.lpips_random_backbone:
                notes.append("LPIPS used a RANDOM backbone (motion.train.lpips_random_backbone): the perceptual term is a wiring check, not a perceptual loss")
        self.objective = Objective(self.model, tc, device, generator, lpips)
        return notes

    def parameters(self) -> Any:
        """The trainable parameters (E_A and D)."""
        return self.model.parameters()

    def train(self, mode: bool) -> None:
        """Switch the network between training and evaluation mode."""
        self.model.train(mode)

    def loss(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[Any, dict[str, float]]:
        """``(loss tensor, {"latent": ..., "lpips": ...})`` of one batch."""
        assert self.objective is not None, "start() first"
        loss, latent, lpips = self.objective(batch, rng)
        return loss, {"latent": latent, "lpips": lpips}

    def save(self, path: Path, extra: dict[str, Any]) -> Path:
        """Write the model as a safetensors checkpoint (config and ``extra`` in its metadata)."""
        from latentdub.nets.audio2latent import save_checkpoint

        save_checkpoint(self.model, path, extra)
        return path

    def describe(self) -> dict[str, Any]:
        """JSON-ready architecture of the model (``spec``)."""
        return {"spec": dataclasses.asdict(self.model.spec)}


# --------------------------------------------------------------------------- the motion model


@dataclasses.dataclass(frozen=True)
class Audio2LatentConfig:
    """Settings of the audio2latent motion model.

    ``checkpoint``: a file from ``latentdub train`` (path or registered weight
    name); ``random_init``: untrained network with a random subspace, sized
    from the identity latent (tests, smoke runs); ``gain``: scale on the
    predicted displacement (1 = as trained; >1 exaggerates the mouth).
    Inference: ``window`` frames per chunk, ``overlap`` frames of context
    each side of a chunk, ``batch`` chunks per forward pass.
    Architecture (used by ``random_init`` and by ``latentdub train``; a
    checkpoint carries its own): ``layers`` W+ layers that move;
    ``components`` PCA dimensions k; ``conv_channels`` of the MFCC conv
    stack; ``audio_dim`` per-frame audio code width; ``rnn`` ``lstm`` or
    ``gru``; ``rnn_layers``; ``bidirectional``; ``hidden`` width of the
    decoder's 3 dense layers. ``train``: training hyperparameters.
    """

    checkpoint: Annotated[Optional[str], NAMES_WEIGHTS] = None
    random_init: bool = False
    gain: Annotated[float, Range(ge=0, le=10)] = 1.0
    window: Annotated[int, Range(ge=1)] = 250
    overlap: Annotated[int, Range(ge=0)] = 25
    batch: Annotated[int, Range(ge=1)] = 8
    layers: tuple[Annotated[int, Range(ge=0)], ...] = tuple(range(8))
    components: Annotated[int, Range(ge=1)] = 64
    conv_channels: tuple[Annotated[int, Range(ge=1)], ...] = (64, 128, 256)
    audio_dim: Annotated[int, Range(ge=1)] = 256
    rnn: Literal["lstm", "gru"] = "lstm"
    rnn_layers: Annotated[int, Range(ge=1, le=8)] = 1
    bidirectional: bool = True
    hidden: Annotated[int, Range(ge=1)] = 512
    train: TrainConfig = TrainConfig()

    def spec(self, n_styles: int, latent_dim: int, window: int, coeffs: int) -> Any:
        """The :class:`~latentdub.nets.audio2latent.Audio2LatentSpec` for W+ ``[n_styles, latent_dim]`` and MFCC ``[window, coeffs]``."""
        from latentdub.nets.audio2latent import Audio2LatentSpec

        bad = [i for i in self.layers if not 0 <= i < n_styles]
        if bad or not self.layers:
            raise ConfigError(f"motion.layers: {list(self.layers)} must be non-empty W+ layer indices below {n_styles} (the generator's n_styles)")
        if not 1 <= self.components <= len(self.layers) * latent_dim:
            raise ConfigError(f"motion.components: must be 1..{len(self.layers) * latent_dim}, got {self.components}")
        return Audio2LatentSpec(
            n_styles=n_styles, latent_dim=latent_dim, layers=tuple(sorted(set(self.layers))), components=self.components,
            window=window, coeffs=coeffs, conv_channels=self.conv_channels, audio_dim=self.audio_dim, rnn=self.rnn,
            rnn_layers=self.rnn_layers, bidirectional=self.bidirectional, hidden=self.hidden,
        )


@hookimpl
def register_motion_models(register):
    register("audio2latent", build_audio2latent, config=Audio2LatentConfig, summary="the paper's Stage 1: MFCC CNN+LSTM -> PCA displacement of w_I in W+")


@hookimpl
def register_trainers(register):
    register("audio2latent", Audio2LatentTrainer, config=Audio2LatentConfig, summary="trains audio2latent: PCA subspace, then L_latent + L_lpips")


@hookimpl
def register_weights(register):
    from latentdub.toolkit.core.weights import WeightSpec

    register(WeightSpec(
        WEIGHT_NAME, WEIGHT_FILE, url="", sha256="", size=0, licence="yours (trained with `latentdub train`)",
        description="Stage-1 motion model; no public download: train it and copy RUN_DIR/audio2latent.safetensors here",
    ))


def build_audio2latent(config: Audio2LatentConfig, context: Any) -> "Audio2LatentMotion":
    """Factory: builds the audio features stage and loads the checkpoint."""
    if config.checkpoint is None and not config.random_init:
        raise MissingWeightsError(
            "motion.checkpoint: not set; train a model with `latentdub train DATASET -o RUN` and pass "
            "--set motion.checkpoint=RUN/audio2latent.safetensors (or random_init: true for tests)"
        )
    return Audio2LatentMotion(config, context.build("audio_features"), context)


class Audio2LatentMotion:
    """Speech -> ``wplus-offset`` motion; ``identity`` (w_I ``[L, D]``) comes from the neural renderer."""

    kind = "wplus-offset"
    sample_rate = 16000

    def __init__(self, config: Audio2LatentConfig, features: Any, context: Any) -> None:
        self.config = config
        self.features = features
        self.sample_rate = int(getattr(features, "sample_rate", 16000))
        self.device = context.device
        self.seed = int(context.seed)
        self.model: Any = None
        self.info: dict[str, Any] = {}
        if config.checkpoint is not None:
            self.load(context.weights(str(config.checkpoint)))
            trained = (self.info.get("audio_features") or {}).copy()
            trained.pop("plugin", None)
            current = dataclasses.asdict(features.config) if dataclasses.is_dataclass(getattr(features, "config", None)) else trained
            if trained and trained != current:
                context.log(f"warning: motion.checkpoint was trained with audio_features {trained}, the preset uses {current}")

    def load(self, path: Any) -> None:
        """Load a checkpoint written by ``latentdub train``."""
        from latentdub.nets.audio2latent import load_checkpoint

        try:
            self.model, self.info = load_checkpoint(path, map_location=self.device)
        except ValueError as exc:
            raise BadInputError(f"motion.checkpoint: {exc}") from None

    def _random_model(self, n_styles: int, latent_dim: int, window: int, coeffs: int) -> Any:
        import torch

        from latentdub.nets.audio2latent import Audio2Latent, random_pca

        spec = self.config.spec(n_styles, latent_dim, window, coeffs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = Audio2Latent(spec)
        model.set_pca(*random_pca(spec, seed=self.seed))
        return model.to(self.device).eval()

    def predict(self, audio: Audio, fps: float, n_frames: int, identity: Optional[Any] = None) -> Motion:
        """Coefficients float32 ``[n_frames, k]`` with ``extra`` = basis ``[k, L, D]``, layers, base ``identity``."""
        import torch

        from latentdub.nets.audio2latent import predict_windows

        if identity is None:
            raise PluginError("motion plugin 'audio2latent' needs the identity latent of a neural renderer; use renderer.plugin: neural")
        if not fps > 0 or n_frames < 0:
            raise BadInputError(f"motion: need fps > 0 and n_frames >= 0, got fps={fps}, n_frames={n_frames}")
        w_id = torch.as_tensor(np.asarray(identity.detach().cpu() if torch.is_tensor(identity) else identity, np.float32))
        if w_id.ndim == 3:
            w_id = w_id.mean(0)
        feats = torch.from_numpy(np.asarray(self.features.compute(audio, fps, n_frames), np.float32))  # [T, window, coeffs]
        if self.model is None:
            self.model = self._random_model(w_id.shape[0], w_id.shape[1], feats.shape[1], feats.shape[2])
        spec = self.model.spec
        if tuple(w_id.shape) != (spec.n_styles, spec.latent_dim):
            raise PluginError(f"motion: identity latent {tuple(w_id.shape)} does not fit the model's W+ [{spec.n_styles}, {spec.latent_dim}]; train for this encoder/generator")
        if tuple(feats.shape[1:]) != (spec.window, spec.coeffs):
            raise ConfigError(f"audio_features: windows {tuple(feats.shape[1:])} do not fit the model's [{spec.window}, {spec.coeffs}]; use the features it was trained with")
        coeffs = predict_windows(self.model, feats, w_id, self.config.window, self.config.overlap, self.config.batch) * self.config.gain
        basis = self.model.pca_basis.detach().float().cpu().reshape(spec.components, spec.n_styles, spec.latent_dim)
        return Motion(
            kind=self.kind,
            codes=coeffs.numpy().astype(np.float32),
            fps=float(fps),
            extra={"basis": basis.numpy(), "layers": tuple(spec.layers), "base": "identity"},
        )
