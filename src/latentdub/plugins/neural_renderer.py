"""Renderer ``neural``: W+ motion rendered by the frozen generator (the paper's image path).

``prepare`` inverts the reference crops with the encoder stage (E_I) and
returns their mean latent w_I ``[L, D]`` (the identity). ``render`` builds
one latent per output frame and synthesises it with the generator stage
(which already carries a PTI profile when one is given), then resizes the
image to the crop side with antialiasing.

Latent per frame, for ``wplus-offset`` motion (offset ``o_t``: ``codes[t] @
extra["basis"]`` in the compact form, else ``codes[t]`` ``[L, D]``) whose base
is the identity (``extra["base"] == "identity"``):

* ``identity: per_frame`` (dubbing): the source crop is inverted to
  ``w_src(t)``; the layers the motion moves (``extra["layers"]``, all when
  absent) become ``w_I + o_t``, every other layer keeps ``w_src(t)`` so head
  pose and lighting follow the footage;
* ``identity: subspace`` (dubbing, compact motion only): the source frame's
  own motion is swapped for the predicted one inside the motion subspace V:
  ``w_src(t) - V^T V (w_src(t) - w_I) + o_t``; everything of the source
  outside the subspace (identity detail, pose, lighting) is kept, on every
  layer. Falls back to ``per_frame`` for motion without a basis;
* ``identity: reference`` (the paper's animate mode): ``w_I + o_t`` on every
  layer.

Offsets without ``base: identity`` are added to the frame's own latent
``w_src(t)`` (or to w_I in reference mode). ``wplus`` motion gives absolute
latents, used on the moving layers the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal, Optional

import numpy as np

from latentdub.toolkit.core.config import Range
from latentdub.toolkit.core.errors import BadInputError, PluginError
from latentdub.toolkit.core.hookspecs import hookimpl
from latentdub.toolkit.core.types import Motion


@dataclasses.dataclass(frozen=True)
class NeuralRendererConfig:
    """Settings of the neural renderer.

    ``batch_size``: crops rendered per generator call; ``identity``:
    ``subspace`` (swap only the source's component in the motion subspace),
    ``per_frame`` (non-moving layers from each source frame's inversion:
    pose and lighting follow the footage) or ``reference`` (the identity
    latent everywhere, as in the paper); see the module docstring.
    """

    batch_size: Annotated[int, Range(ge=1)] = 8
    identity: Literal["subspace", "per_frame", "reference"] = "subspace"


@hookimpl
def register_renderers(register):
    register("neural", build_neural, config=NeuralRendererConfig, summary="W+ latents through the encoder and frozen StyleGAN2 (the paper's renderer)")


def build_neural(config: NeuralRendererConfig, context: Any) -> "NeuralRenderer":
    """Factory: builds the encoder and generator stages and checks they share a W+ shape."""
    encoder, generator = context.build("encoder"), context.build("generator")
    if int(encoder.n_styles) != int(generator.n_styles):
        raise PluginError(f"renderer: encoder makes {encoder.n_styles} styles but the generator takes {generator.n_styles}; pair an encoder with its generator")
    return NeuralRenderer(config, encoder, generator, context.device)


def to_tensor(crops: np.ndarray, size: int, device: Any) -> Any:
    """uint8 ``[B, S, S, 3]`` -> float32 ``[B, 3, size, size]`` in [-1, 1] on ``device`` (antialiased resize)."""
    import torch
    import torch.nn.functional as F

    x = crops if torch.is_tensor(crops) else torch.from_numpy(np.ascontiguousarray(crops))
    x = x.to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


def to_uint8(images: Any, size: int) -> np.ndarray:
    """float ``[B, 3, H, W]`` in [-1, 1] -> uint8 ``[B, size, size, 3]`` (antialiased resize)."""
    return to_uint8_tensor(images, size).cpu().numpy()


def to_uint8_tensor(images: Any, size: int) -> Any:
    """:func:`to_uint8` as a uint8 tensor ``[B, size, size, 3]`` on the images' device."""
    import torch
    import torch.nn.functional as F

    x = images.float()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1)


class NeuralRenderer:
    """Encoder + generator renderer for ``wplus-offset`` and ``wplus`` motion."""

    motion_kinds = ("wplus-offset", "wplus")

    def __init__(self, config: NeuralRendererConfig, encoder: Any, generator: Any, device: Any) -> None:
        self.config = config
        self.encoder = encoder
        self.generator = generator
        self.device = device
        self.batch_size = config.batch_size
        self.identity: Optional[Any] = None

    def invert(self, crops: np.ndarray) -> Any:
        """W+ float32 ``[N, L, D]`` (on the device) of aligned crops uint8 ``[N, S, S, 3]``, ``batch_size`` at a time."""
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(crops), self.batch_size):
                x = to_tensor(crops[i : i + self.batch_size], int(self.encoder.size), self.device)
                out.append(self.encoder.encode(x).float())
        return torch.cat(out)

    def prepare(self, crops: np.ndarray, landmarks: np.ndarray) -> Any:
        """Identity w_I: float32 ``[L, D]`` (CPU tensor), the mean inversion of the reference crops."""
        if len(crops) == 0:
            raise BadInputError("renderer: no reference crops to take the identity from")
        self.identity = self.invert(np.asarray(crops)).mean(0)
        capture = getattr(self.generator, "capture_graphs", None)
        if capture is not None:  # CUDA graphs (runtime.cuda_graphs) are captured here, before the render threads start
            capture()
        return self.identity.cpu()

    def latents(self, motion: Motion, frames: np.ndarray, w_src: Optional[Any]) -> Any:
        """W+ ``[B, L, D]`` for output frames ``frames`` (see the module docstring)."""
        import torch

        if self.identity is None:
            raise PluginError("renderer 'neural': render() called before prepare(); the pipeline must prepare the identity first")
        if motion.kind not in self.motion_kinds:
            raise PluginError(f"renderer 'neural' reads {', '.join(self.motion_kinds)} motion, got {motion.kind!r}")
        idx = np.clip(np.asarray(frames, np.int64), 0, len(motion) - 1)
        codes = torch.from_numpy(np.ascontiguousarray(motion.codes[idx], np.float32)).to(self.device)
        w_id = self.identity.to(self.device)
        n_styles, dim = w_id.shape
        basis = motion.extra.get("basis")
        flat_basis = None
        if basis is not None:
            b = torch.from_numpy(np.asarray(basis, np.float32)).to(self.device)
            flat_basis = b.reshape(b.shape[0], -1)  # [k, L*D], orthonormal rows
            codes = (codes @ flat_basis).reshape(len(idx), n_styles, dim)
        if tuple(codes.shape[1:]) != (n_styles, dim):
            raise PluginError(f"renderer 'neural': motion latents {tuple(codes.shape[1:])} do not fit the encoder's W+ [{n_styles}, {dim}]")
        if self.config.identity == "subspace" and flat_basis is not None and motion.kind == "wplus-offset" and motion.extra.get("base") == "identity":
            own = ((w_src - w_id[None]).reshape(len(idx), -1) @ flat_basis.T) @ flat_basis  # V^T V (w_src - w_I)
            return w_src - own.reshape(len(idx), n_styles, dim) + codes
        layers = list(motion.extra.get("layers", range(n_styles)))
        per_frame = self.config.identity != "reference"
        if motion.kind == "wplus":
            moved = codes
        elif motion.extra.get("base") == "identity" or not per_frame:
            moved = w_id[None] + codes
        else:
            moved = w_src + codes
        base = w_src.clone() if per_frame else w_id[None].expand(len(idx), -1, -1).clone()
        base[:, layers] = moved[:, layers]
        return base

    def render(self, crops: np.ndarray, landmarks: np.ndarray, motion: Motion, frames: np.ndarray) -> np.ndarray:
        """Crops uint8 ``[B, S, S, 3]`` -> rendered faces uint8 ``[B, S, S, 3]`` for output frames ``frames``."""
        return self.render_torch(crops, landmarks, motion, frames).cpu().numpy()

    def render_torch(self, crops: Any, landmarks: np.ndarray, motion: Motion, frames: np.ndarray) -> Any:
        """:meth:`render` for crops given as a uint8 tensor (or array) ``[B, S, S, 3]``; a uint8 tensor on the device."""
        import torch

        w_src = self.invert(crops) if self.config.identity != "reference" else None
        with torch.inference_mode():
            w = self.latents(motion, frames, w_src)
            images = self.generator.synthesize(w)
        return to_uint8_tensor(images, int(crops.shape[1]))
