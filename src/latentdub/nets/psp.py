"""pSp (Richardson et al. 2021) and e4e (Tov et al. 2021) image encoders over an IR-SE backbone.

Module and parameter names follow the public pSp / e4e checkpoints (``encoder.*`` and
``decoder.*`` entries of ``state_dict``), so official files load strictly. Encoders take
``[B, 3, 256, 256]`` images in [-1, 1] (``normalize`` resizes other sizes) and return
W+ offsets ``[B, n_styles, 512]`` (``n_styles = 2 * log2(output_size) - 2``);
:class:`PspModel` adds the mean latent.

``widths``, ``units`` and ``style_width`` shrink the networks for tests; the defaults are the
official IR-SE50 (units 3/4/14/3, widths 64/128/256/512, style blocks 512 wide).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from latentdub.toolkit.core.errors import BadInputError

from .safe_load import load_strict, strip_prefix, torch_load
from .stylegan2 import EqualLinear, Generator, generator_from_state_dict

#: Residual units per stage for each official depth.
UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
WIDTHS = (64, 128, 256, 512)
ENCODER_TYPES = ("GradualStyleEncoder", "Encoder4Editing", "BackboneEncoderUsingLastLayerIntoW", "BackboneEncoderUsingLastLayerIntoWPlus")
INPUT_SIZE = 256


class SEModule(nn.Module):
    """Squeeze-and-excitation: channel gates from global average pooling (reduction 16)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, padding=0, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class bottleneck_IR_SE(nn.Module):  # noqa: N801 - the checkpoint's class name
    """IR-SE residual unit: BN -> 3x3 conv -> PReLU -> 3x3 conv (stride) -> BN -> SE, plus shortcut."""

    def __init__(self, in_channel: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, 16),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def ir_se_body(units: Sequence[int], widths: Sequence[int]) -> tuple[nn.Sequential, list[int]]:
    """The 4-stage IR-SE body (each stage starts with a stride-2 unit) and the index of each stage's last unit."""
    modules, ends = [], []
    in_c = widths[0]
    for n, depth in zip(units, widths):
        for j in range(n):
            modules.append(bottleneck_IR_SE(in_c if j == 0 else depth, depth, 2 if j == 0 else 1))
        in_c = depth
        ends.append(len(modules) - 1)
    return nn.Sequential(*modules), ends


class GradualStyleBlock(nn.Module):
    """Stride-2 3x3 convs (LeakyReLU 0.01) down to 1x1, then an equalised linear layer.

    ``in_c -> width`` convs, ``log2(spatial)`` of them; linear ``width -> out_c`` (official: width = out_c = 512).
    """

    def __init__(self, in_c: int, out_c: int, spatial: int, width: Optional[int] = None) -> None:
        super().__init__()
        width = width or out_c
        self.out_c, self.width = out_c, width
        layers: list[nn.Module] = [nn.Conv2d(in_c, width, kernel_size=3, stride=2, padding=1), nn.LeakyReLU()]
        for _ in range(int(math.log2(spatial)) - 1):
            layers += [nn.Conv2d(width, width, kernel_size=3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(width, out_c, lr_mul=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x)
        # [B, width, h, w] -> [B, width]; official 256 px inputs reach exactly 1x1
        return self.linear(x.mean(dim=(2, 3)))


class _IRSEBackbone(nn.Module):
    """Shared input layer + body of the pSp/e4e encoders."""

    def __init__(self, num_layers: int, input_nc: int, units: Optional[Sequence[int]], widths: Sequence[int]) -> None:
        super().__init__()
        if units is None:
            if num_layers not in UNITS:
                raise BadInputError(f"num_layers {num_layers}: choose 50, 100 or 152")
            units = UNITS[num_layers]
        self.units, self.widths = tuple(units), tuple(widths)
        self.input_layer = nn.Sequential(nn.Conv2d(input_nc, widths[0], (3, 3), 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.PReLU(widths[0]))
        self.body, self.stage_ends = ir_se_body(self.units, self.widths)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x [B, C, 256, 256]`` -> (c1 ``[B, w1, 64, 64]``, c2 ``[B, w2, 32, 32]``, c3 ``[B, w3, 16, 16]``)."""
        x = self.input_layer(x)
        c1 = c2 = None
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i == self.stage_ends[1]:
                c1 = x
            elif i == self.stage_ends[2]:
                c2 = x
        return c1, c2, x


def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


class _StyleHeads(_IRSEBackbone):
    """Backbone + one GradualStyleBlock per style + FPN lateral layers (coarse 0-2, middle 3-6, fine 7+)."""

    coarse_ind = 3
    middle_ind = 7

    def __init__(self, num_layers: int = 50, n_styles: int = 18, input_nc: int = 3, units: Optional[Sequence[int]] = None,
                 widths: Sequence[int] = WIDTHS, style_dim: int = 512, style_width: Optional[int] = None) -> None:
        super().__init__(num_layers, input_nc, units, widths)
        self.style_count = n_styles
        self.style_dim = style_dim
        top = widths[3]
        self.styles = nn.ModuleList()
        for i in range(n_styles):
            spatial = 16 if i < self.coarse_ind else 32 if i < self.middle_ind else 64
            self.styles.append(GradualStyleBlock(top, style_dim, spatial, style_width))
        self.latlayer1 = nn.Conv2d(widths[2], top, kernel_size=1, stride=1, padding=0)
        self.latlayer2 = nn.Conv2d(widths[1], top, kernel_size=1, stride=1, padding=0)


class GradualStyleEncoder(_StyleHeads):
    """pSp encoder: every style from its own pyramid level -> ``[B, n_styles, style_dim]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2, c3 = self.features(x)
        latents = [self.styles[j](c3) for j in range(min(self.coarse_ind, self.style_count))]
        p2 = _upsample_add(c3, self.latlayer1(c2))
        latents += [self.styles[j](p2) for j in range(self.coarse_ind, min(self.middle_ind, self.style_count))]
        p1 = _upsample_add(p2, self.latlayer2(c1))
        latents += [self.styles[j](p1) for j in range(self.middle_ind, self.style_count)]
        return torch.stack(latents, dim=1)


class Encoder4Editing(_StyleHeads):
    """e4e encoder: one base code w0 for all styles plus per-style deltas -> ``[B, n_styles, style_dim]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2, c3 = self.features(x)
        w0 = self.styles[0](c3)
        deltas = [torch.zeros_like(w0)]
        features = c3
        for i in range(1, self.style_count):
            if i == self.coarse_ind:
                p2 = _upsample_add(c3, self.latlayer1(c2))
                features = p2
            elif i == self.middle_ind:
                features = _upsample_add(p2, self.latlayer2(c1))
            deltas.append(self.styles[i](features))
        return w0[:, None, :] + torch.stack(deltas, dim=1)


class BackboneEncoderUsingLastLayerIntoW(_IRSEBackbone):
    """pSp ``learn_in_w`` encoder: pooled last features -> one W ``[B, style_dim]``."""

    def __init__(self, num_layers: int = 50, n_styles: int = 18, input_nc: int = 3, units: Optional[Sequence[int]] = None,
                 widths: Sequence[int] = WIDTHS, style_dim: int = 512, style_width: Optional[int] = None) -> None:
        super().__init__(num_layers, input_nc, units, widths)
        self.style_count, self.style_dim = n_styles, style_dim
        self.output_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = EqualLinear(widths[3], style_dim, lr_mul=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.output_pool(self.features(x)[2]).flatten(1))


class BackboneEncoderUsingLastLayerIntoWPlus(_IRSEBackbone):
    """pSp encoder: BN + 7x7 pool + linear from the last features -> ``[B, n_styles, style_dim]``."""

    def __init__(self, num_layers: int = 50, n_styles: int = 18, input_nc: int = 3, units: Optional[Sequence[int]] = None,
                 widths: Sequence[int] = WIDTHS, style_dim: int = 512, style_width: Optional[int] = None) -> None:
        super().__init__(num_layers, input_nc, units, widths)
        self.style_count, self.style_dim = n_styles, style_dim
        top = widths[3]
        self.output_layer_2 = nn.Sequential(nn.BatchNorm2d(top), nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(), nn.Linear(top * 7 * 7, style_dim))
        self.linear = EqualLinear(style_dim, style_dim * n_styles, lr_mul=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(self.output_layer_2(self.features(x)[2]))
        return x.view(-1, self.style_count, self.style_dim)


ENCODERS = {cls.__name__: cls for cls in (GradualStyleEncoder, Encoder4Editing, BackboneEncoderUsingLastLayerIntoW, BackboneEncoderUsingLastLayerIntoWPlus)}


def build_encoder(encoder_type: str, **kwargs: Any) -> nn.Module:
    """Encoder by pSp/e4e ``opts.encoder_type`` name; ``kwargs`` as for :class:`GradualStyleEncoder`."""
    if encoder_type not in ENCODERS:
        raise BadInputError(f"encoder_type {encoder_type!r}: supported are {', '.join(ENCODERS)}")
    return ENCODERS[encoder_type](**kwargs)


def normalize(images: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` in [-1, 1] -> ``[B, 3, size, size]`` (bilinear, antialiased when shrinking)."""
    if images.shape[-2:] == (size, size):
        return images
    shrink = images.shape[-1] > size or images.shape[-2] > size
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


class PspModel(nn.Module):
    """An encoder, its decoder (:class:`Generator`) and the mean latent, as in a pSp/e4e checkpoint.

    ``latent_avg``: ``[style_dim]`` or ``[n_styles, style_dim]`` (buffer) added to the encoder output
    when ``start_from_latent_avg``; ``learn_in_w`` encoders' single W is broadcast to all styles.
    """

    def __init__(self, encoder: nn.Module, decoder: Optional[Generator], latent_avg: Optional[torch.Tensor], opts: Mapping[str, Any], input_size: int = INPUT_SIZE) -> None:
        super().__init__()
        self.input_size = input_size
        self.encoder = encoder
        self.decoder = decoder
        self.opts = dict(opts)
        self.n_styles = encoder.style_count
        self.start_from_latent_avg = bool(self.opts.get("start_from_latent_avg", latent_avg is not None))
        self.register_buffer("latent_avg", None if latent_avg is None else latent_avg.float().clone())
        if self.start_from_latent_avg and latent_avg is None:
            raise BadInputError("start_from_latent_avg is set but the checkpoint has no latent_avg")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] (resized to ``input_size``, 256) -> W+ ``[B, n_styles, style_dim]``."""
        codes = self.encoder(normalize(images, self.input_size))
        if codes.ndim == 2:
            codes = codes[:, None, :].expand(-1, self.n_styles, -1)
        if self.start_from_latent_avg:
            codes = codes + self.latent_avg.to(codes.dtype)
        return codes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode then render with the decoder (const noise) -> ``[B, 3, S, S]``."""
        return self.decoder.synthesize_wplus(self.encode(images).float())


def _opt(opts: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if opts.get(name) is not None:
            return opts[name]
    return default


def _encoder_shape(enc: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Units per stage, widths, style width and input channels read from an encoder state dict.

    A stage starts at unit 0 and wherever a unit has a convolutional shortcut (width change).
    """
    widths: list[int] = []
    units: list[int] = []
    for idx in sorted({int(k.split(".")[1]) for k in enc if k.startswith("body.")}):
        if idx == 0 or f"body.{idx}.shortcut_layer.0.weight" in enc:
            widths.append(int(enc[f"body.{idx}.res_layer.1.weight"].shape[0]))
            units.append(0)
        units[-1] += 1
    if len(units) != 4 or "input_layer.0.weight" not in enc:
        raise BadInputError(f"encoder body has {len(units)} stages (expected 4 IR-SE stages and an input_layer)")
    style_width = int(enc["styles.0.convs.0.weight"].shape[0]) if "styles.0.convs.0.weight" in enc else None
    return {"units": tuple(units), "widths": tuple(widths), "style_width": style_width, "input_nc": int(enc["input_layer.0.weight"].shape[1])}


def load_psp_checkpoint(path: Path | str, map_location: Any = "cpu", with_decoder: bool = True) -> PspModel:
    """Read a pSp or e4e ``.pt`` -> :class:`PspModel` in eval mode (strict key and shape check).

    Honours ``opts``: ``encoder_type`` (default GradualStyleEncoder; e4e files Encoder4Editing),
    ``output_size`` / ``stylegan_size`` (n_styles), ``start_from_latent_avg`` (W-space encoders
    such as ``BackboneEncoderUsingLastLayerIntoW``, pSp's ``learn_in_w`` setup, are broadcast).
    The architecture (units, widths) is read from the tensors, so narrowed test files load too.
    Raises :class:`BadInputError` naming the file and the first mismatched keys.
    """
    ckpt = torch_load(path, map_location)
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise BadInputError(f"{path}: no 'state_dict' entry; expected a pSp/e4e checkpoint")
    opts = ckpt.get("opts") or {}
    opts = dict(vars(opts)) if not isinstance(opts, Mapping) else dict(opts)
    state = ckpt["state_dict"]
    enc_state = strip_prefix(state, "encoder.")
    if not enc_state:
        raise BadInputError(f"{path}: state_dict has no 'encoder.*' keys; expected a pSp/e4e checkpoint")
    out_size = int(_opt(opts, "output_size", "stylegan_size", default=1024))
    n_styles = 2 * int(round(math.log2(out_size))) - 2
    default_type = "Encoder4Editing" if "stylegan_size" in opts and "output_size" not in opts else "GradualStyleEncoder"
    encoder_type = _opt(opts, "encoder_type", default=default_type)
    head = next((k for k in ("styles.0.linear.weight", "linear.weight", "output_layer_2.3.weight") if k in enc_state), None)
    style_dim = int(enc_state[head].shape[0]) if head else 512
    try:
        shape = _encoder_shape(enc_state)
        with torch.device("meta"):
            encoder = build_encoder(encoder_type, num_layers=50, n_styles=n_styles, style_dim=style_dim, **shape)
    except BadInputError as exc:
        raise BadInputError(f"{path}: {exc}") from None
    enc_state = {k: (v.float() if v.is_floating_point() else v) for k, v in enc_state.items()}
    load_strict(encoder, enc_state, path, f"encoder ({encoder_type})", assign=True)
    decoder = None
    if with_decoder:
        dec_state = strip_prefix(state, "decoder.")
        if not dec_state:
            raise BadInputError(f"{path}: state_dict has no 'decoder.*' keys")
        decoder = generator_from_state_dict(dec_state, path, "decoder")
    unknown = sorted({k.split(".")[0] for k in state} - {"encoder", "decoder"})
    if unknown:
        raise BadInputError(f"{path}: unexpected state_dict entries {', '.join(unknown)}.* (expected encoder.* and decoder.*)")
    avg = ckpt.get("latent_avg")
    opts.setdefault("start_from_latent_avg", avg is not None)
    opts["encoder_type"] = encoder_type
    model = PspModel(encoder, decoder, None if avg is None else avg.float(), opts)
    if decoder is not None and avg is not None:
        decoder.latent_avg = avg.float().reshape(-1, decoder.style_dim)[0].clone()
    return model.to(map_location).eval()


def save_psp_checkpoint(model: PspModel, path: Path | str) -> Path:
    """Write ``model`` in the pSp layout (``state_dict`` with encoder./decoder. prefixes, ``latent_avg``, ``opts``)."""
    path = Path(path)
    ckpt = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items() if k != "latent_avg"}, "opts": dict(model.opts)}
    if model.latent_avg is not None:
        ckpt["latent_avg"] = model.latent_avg.detach().cpu()
    tmp = path.with_name(path.name + ".part")
    torch.save(ckpt, tmp)
    tmp.replace(path)
    return path


def load_ir_se50_backbone(encoder: nn.Module, path: Path | str) -> None:
    """Initialise ``input_layer`` and ``body`` of a pSp/e4e encoder from an ArcFace IR-SE50 ``.pth`` (strict on those keys)."""
    state = torch_load(path)
    picked = {k: v for k, v in state.items() if k.startswith(("input_layer.", "body."))}
    holder = nn.Module()
    holder.input_layer, holder.body = encoder.input_layer, encoder.body
    load_strict(holder, picked, path, "IR-SE backbone")
