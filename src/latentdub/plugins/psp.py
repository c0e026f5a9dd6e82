"""Encoder plugins ``psp`` and ``e4e``: image inversion to W+ (E_I of the paper)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal, Optional

from latentdub.toolkit.core.config import NAMES_WEIGHTS, PowerOfTwo, Range
from latentdub.toolkit.core.hookspecs import hookimpl

Precision = Literal["fp32", "bf16", "fp16"]

#: Tiny random-init architecture (tests, the ``tiny`` preset): 1 unit per stage, narrow widths.
TINY_UNITS = (1, 1, 1, 1)
TINY_WIDTHS = (16, 24, 32, 48)
TINY_STYLE_WIDTH = 32


@dataclasses.dataclass(frozen=True)
class PspConfig:
    """Settings of the pSp / e4e encoder.

    ``checkpoint``: registered weight name or path of a pSp/e4e ``.pt``; ``random_init: true``
    ignores it and builds a random encoder seeded by the preset seed, for ``output_size`` px
    generators (n_styles = 2*log2(output_size) - 2) with ``style_dim``; ``tiny`` (random init
    only) narrows it to 1 unit per stage (widths 16/24/32/48) instead of IR-SE ``num_layers``.
    Inputs of any size are resized to ``input_size`` px (256 for the official models).
    ``precision``: autocast dtype; ``channels_last``: NHWC convs; ``batch_size``: images per pass.
    """

    checkpoint: Annotated[Optional[str], NAMES_WEIGHTS] = "psp_ffhq_encode"
    random_init: bool = False
    output_size: Annotated[int, PowerOfTwo(ge=8, le=2048)] = 64
    style_dim: Annotated[int, Range(ge=1)] = 512
    tiny: bool = True
    num_layers: Literal[50, 100, 152] = 50
    input_size: Annotated[int, Range(ge=32, le=1024)] = 256
    precision: Precision = "fp32"
    channels_last: bool = False
    batch_size: Annotated[int, Range(ge=1)] = 8


@dataclasses.dataclass(frozen=True)
class E4eConfig(PspConfig):
    """Settings of the e4e encoder (as ``psp``; default weights ``e4e_ffhq_encode``)."""

    checkpoint: Annotated[Optional[str], NAMES_WEIGHTS] = "e4e_ffhq_encode"


@hookimpl
def register_encoders(register):
    register("psp", build_psp, config=PspConfig, summary="pSp GradualStyleEncoder (IR-SE50) to W+; official .pt or tiny random")
    register("e4e", build_e4e, config=E4eConfig, summary="e4e Encoder4Editing (IR-SE50) to W+; official .pt or tiny random")


def build_psp(config: PspConfig, context) -> "PspEncoder":
    """pSp encoder on ``context.device``."""
    return _build(config, context, "GradualStyleEncoder")


def build_e4e(config: E4eConfig, context) -> "PspEncoder":
    """e4e encoder on ``context.device``."""
    return _build(config, context, "Encoder4Editing")


def _build(config: PspConfig, context, encoder_type: str) -> "PspEncoder":
    import math

    import torch

    from latentdub.nets.psp import PspModel, build_encoder, load_psp_checkpoint
    from latentdub.toolkit.core.errors import ConfigError

    if config.random_init:
        log2 = int(round(math.log2(config.output_size)))
        shape = {"units": TINY_UNITS, "widths": TINY_WIDTHS, "style_width": TINY_STYLE_WIDTH} if config.tiny else {"num_layers": config.num_layers}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed + 1)
            encoder = build_encoder(encoder_type, n_styles=2 * log2 - 2, style_dim=config.style_dim, **shape)
            _calibrate(encoder, config.input_size)
        model = PspModel(encoder, None, _generator_mean(context, config.style_dim), {"encoder_type": encoder_type, "output_size": config.output_size, "start_from_latent_avg": True})
    elif config.checkpoint:
        model = load_psp_checkpoint(context.weights(config.checkpoint), with_decoder=False)
    else:
        raise ConfigError("encoder.checkpoint: none given; name a pSp/e4e weight file or set encoder.random_init=true")
    return PspEncoder(model, config, context.device)


#: Spread (std over images) of each random style head's codes after calibration, in W units.
RANDOM_CODE_STD = 0.2


def _calibrate(encoder: Any, size: int) -> None:
    """Data-dependent init of a random encoder from noise images ``[8, 3, size, size]``.

    With untouched BatchNorm statistics the activations of a random IR-SE
    stack fade to ~1e-6 and every image gets the same code. One pass in train
    mode sets the statistics; each style head is then scaled so its codes
    spread by :data:`RANDOM_CODE_STD` across images, as a trained encoder's
    codes vary around the mean latent.
    """
    import torch

    images = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for module in encoder.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batch
    for style in encoder.styles:  # variance-preserving heads, so little scaling is left to do below
        for module in style.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, a=0.01, nonlinearity="leaky_relu")
    encoder.train()
    with torch.no_grad():
        encoder(images)
        encoder.eval()
        for i, style in enumerate(encoder.styles):  # in order: e4e's codes build on style 0
            code = encoder(images)[:, i]  # [8, D]
            style.linear.weight.mul_(RANDOM_CODE_STD / code.std(dim=0).mean().clamp_min(1e-12))
            code = encoder(images)[:, i]
            style.linear.bias.sub_(code.mean(dim=0) / style.linear.lr_mul)


def _generator_mean(context, style_dim: int) -> Any:
    """The preset generator's mean W when it has one (so random codes decode near the mean), else zeros."""
    import torch

    from latentdub.toolkit.core.errors import LatentdubError

    try:
        avg = context.build("generator").latent_avg
    except LatentdubError:
        avg = None
    if avg is None or avg.numel() != style_dim:
        return torch.zeros(style_dim)
    return avg.detach().float().cpu().reshape(style_dim)


class PspEncoder:
    """Implements :class:`~latentdub.toolkit.core.protocols.Encoder`; ``model`` is the :class:`~latentdub.nets.psp.PspModel`."""

    def __init__(self, model: Any, config: PspConfig, device: Any) -> None:
        import torch

        self.config = config
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        if config.channels_last:
            self.model.encoder.to(memory_format=torch.channels_last)
        self.size = model.input_size = config.input_size
        self.n_styles = model.n_styles

    def encode(self, images: Any) -> Any:
        """Crops ``[B, 3, H, W]`` in [-1, 1] (tensor or array; resized to ``size``) -> float32 W+ ``[B, n_styles, 512]``."""
        import torch

        images = torch.as_tensor(images, dtype=torch.float32, device=self.device)
        if images.ndim != 4 or images.shape[1] != 3:
            from latentdub.toolkit.core.errors import BadInputError

            raise BadInputError(f"images of shape {tuple(images.shape)}: encoder expects [B, 3, H, W] in [-1, 1]")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.precision)
        memory_format = torch.channels_last if self.config.channels_last else torch.contiguous_format
        out = []
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=dtype, enabled=dtype is not None):
            for chunk in images.split(self.config.batch_size):
                out.append(self.model.encode(chunk.contiguous(memory_format=memory_format)).float())
        return torch.cat(out)
