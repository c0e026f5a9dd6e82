"""Motion model ``audio2latent``: the paper's Stage 1 (speech -> W+ displacement of the identity).

``predict`` returns :class:`~latentdub.toolkit.core.types.Motion` of kind
``wplus-offset`` in compact form: ``codes`` float32 ``[T, k]`` are subspace
coefficients and ``extra["basis"]`` float32 ``[k, L, 512]`` maps them to W+
displacements (``offset_t = codes[t] @ basis``, zero off ``extra["layers"]``),
added to the identity latent (``extra["base"] == "identity"``). Long speech is
processed in overlapping windows, so memory does not grow with its length.

The network comes from a checkpoint written by ``latentdub train``
(``checkpoint``: a path or a registered weight name) or, for tests,
``random_init``. Training settings live in ``train`` (see
:class:`~latentdub.toolkit.learning.training.TrainConfig`) so presets validate them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Optional

import numpy as np

from latentdub.toolkit.core.errors import BadInputError, ConfigError, MissingWeightsError, PluginError
from latentdub.toolkit.core.hookspecs import hookimpl
from latentdub.toolkit.learning.training import TrainConfig
from latentdub.toolkit.core.types import Audio, Motion

#: Registered weight name of a trained model (no public download: train your own).
WEIGHT_NAME = "audio2latent"
WEIGHT_FILE = "audio2latent.safetensors"


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

    checkpoint: Optional[str] = None
    random_init: bool = False
    gain: float = 1.0
    window: int = 250
    overlap: int = 25
    batch: int = 8
    layers: tuple[int, ...] = tuple(range(8))
    components: int = 64
    conv_channels: tuple[int, ...] = (64, 128, 256)
    audio_dim: int = 256
    rnn: Literal["lstm", "gru"] = "lstm"
    rnn_layers: int = 1
    bidirectional: bool = True
    hidden: int = 512
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
def register_weights(register):
    from latentdub.toolkit.core.weights import WeightSpec

    register(WeightSpec(
        WEIGHT_NAME, WEIGHT_FILE, url="", sha256="", size=0, licence="yours (trained with `latentdub train`)",
        description="Stage-1 motion model; no public download: train it and copy RUN_DIR/audio2latent.safetensors here",
    ))


def build_audio2latent(config: Audio2LatentConfig, context: Any) -> "Audio2LatentMotion":
    """Factory: checks the config, builds the audio features stage and loads the checkpoint."""
    for name in ("window", "batch", "components", "audio_dim", "hidden", "rnn_layers"):
        if getattr(config, name) < 1:
            raise ConfigError(f"motion.{name}: must be >= 1, got {getattr(config, name)}")
    if config.overlap < 0:
        raise ConfigError(f"motion.overlap: must be >= 0, got {config.overlap}")
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
