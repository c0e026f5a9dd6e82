"""StyleGAN2 generator (Karras et al. 2020) with the rosinality stylegan2-pytorch ``g_ema`` key layout.

Every op is plain PyTorch. Layer maths follows the reference exactly:
equalised learning rate (weights scaled by ``lr_mul / sqrt(fan_in)`` at run time),
fused leaky ReLU = ``leaky_relu(x + b, 0.2) * sqrt(2)``, modulated convolution with
demodulation ``rsqrt(sum w'^2 + 1e-8)``, upsampling by a stride-2 transposed
convolution followed by a ``[1, 3, 3, 1]`` blur scaled by ``factor**2``, and the
order conv -> noise -> bias + activation. Three numerically equivalent modulated
convolution paths exist (:meth:`Generator.set_modconv`): ``"grouped"`` (per-sample weights,
one grouped conv, as in the reference), ``"batched"`` (modulate activations, shared-weight
conv, demodulate outputs; faster on GPUs with channels_last/bf16) and ``"fused_up"``
(``batched``, with every 2x upsampling -- transposed conv + blur, and the RGB skip filter --
run as one dense 3x3 conv giving the four output phases, interleaved while the next
elementwise pass writes its result: no transposed or depthwise convs, no pad copies).
:func:`compiled_synthesis` wraps the synthesis network in ``torch.compile`` (opt-in).

Shapes: ``B`` batch, ``L = n_latent`` W+ styles, ``D = style_dim``, ``S = size``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from latentdub.toolkit.core.errors import BadInputError

from .safe_load import load_strict, torch_load

SQRT2 = math.sqrt(2.0)
BLUR_KERNEL = (1, 3, 3, 1)
FORMAT = "latentdub.stylegan2"
NoiseMode = Literal["const", "random", "none"]
ModConv = Literal["batched", "grouped", "fused_up"]


# --------------------------------------------------------------------------- ops


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``leaky_relu(x + bias, 0.2) * sqrt(2)``; ``bias [C]`` broadcast along ``dim`` of ``x``."""
    shape = [1] * x.ndim
    shape[dim] = -1
    return F.leaky_relu(x + bias.view(shape).to(x.dtype), 0.2) * SQRT2


def make_kernel(taps: Sequence[float]) -> torch.Tensor:
    """Separable 2-D FIR kernel ``[K, K]`` from 1-D taps, normalised to sum 1 (float32)."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample (zero insertion), pad, FIR-filter (true convolution), downsample.

    ``x [B, C, H, W]``, ``kernel [K, K]``; ``pad = (before, after)`` applies to both axes and
    may be negative (crop). Output side: ``(H * up + before + after - K + 1) // down`` (ceil).
    Zero insertion + convolution is done as one depthwise stride-``up`` transposed conv.
    """
    channels = x.shape[1]
    k = kernel.to(x.dtype)
    kh, kw = k.shape
    # equal padding (or crop) on both sides is the conv's own padding argument: no F.pad copy
    if up > 1:
        # transposed conv = full convolution of the zero-inserted signal of length (H-1)*up+1
        weight = k[None, None].repeat(channels, 1, 1, 1)
        lo, hi = pad[0] - (kh - 1), pad[1] - (kh - 1) + (up - 1)
        if lo == hi and lo <= 0:
            x = F.conv_transpose2d(x, weight, stride=up, groups=channels, padding=-lo)
        else:
            x = F.pad(F.conv_transpose2d(x, weight, stride=up, groups=channels), [lo, hi, lo, hi])
    else:
        weight = k.flip([0, 1])[None, None].repeat(channels, 1, 1, 1)
        if pad[0] == pad[1] and pad[0] >= 0:
            x = F.conv2d(x, weight, groups=channels, padding=pad[0])
        else:
            x = F.conv2d(F.pad(x, [pad[0], pad[1], pad[0], pad[1]]), weight, groups=channels)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def output_phases(kernel: torch.Tensor) -> torch.Tensor:
    """Split a ``[..., 6, 6]`` stride-2 upsampling kernel into the 3x3 kernels of its output phases.

    Returns ``[4, ..., 3, 3]``, phase ``2 * ry + rx`` first: with ``z = conv_transpose(x, kernel,
    stride 2)`` cropped by 2 on each side, ``z[2m + r] = sum_j x[m - 1 + j] * phase_r[j]`` (3-tap
    correlation with padding 1), i.e. ``phase_r = kernel[r::2]`` reversed, on both axes.
    """
    return torch.stack([kernel[..., ry::2, rx::2].flip([-2, -1]) for ry in (0, 1) for rx in (0, 1)])


def interleave_view(phases: torch.Tensor, channels: int) -> torch.Tensor:
    """View phase-major ``[B, 4 * C, H, W]`` (channel ``(2 * ry + rx) * C + c``) as ``[B, C, H, 2, W, 2]``.

    Element ``[b, c, h, ry, w, rx]`` is output pixel ``(2h + ry, 2w + rx)``; pair it with
    :func:`split_view` of the ``[B, C, 2H, 2W]`` result to interleave inside one elementwise pass.
    """
    b, _, h, w = phases.shape
    return phases.view(b, 2, 2, channels, h, w).permute(0, 3, 4, 1, 5, 2)


def split_view(x: torch.Tensor) -> torch.Tensor:
    """View ``[N, C, 2H, 2W]`` as ``[N, C, H, 2, W, 2]``; size-1 (broadcast) spatial dims stay size 1."""
    n, c, h, w = x.shape
    return x.view(n, c, 1, 1, 1, 1) if h == w == 1 else x.view(n, c, h // 2, 2, w // 2, 2)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """``channels_last`` when ``x [B, C, H, W]`` is stored that way (and not also plain contiguous)."""
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() else torch.contiguous_format


def bias_act_into(raw: torch.Tensor, gain: torch.Tensor, shift: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Write ``leaky_relu(raw * gain + shift, 0.2)`` into ``out`` (same shape, any strides); returns ``out``.

    Without autograd this is two passes (``addcmul`` into ``out``, in-place activation); under
    autograd or ``torch.compile`` the functional form is copied in (the compiler fuses it).
    """
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return out.copy_(F.leaky_relu(raw * gain + shift, 0.2))
    return F.leaky_relu_(torch.addcmul(shift, raw, gain, out=out), 0.2)


# --------------------------------------------------------------------------- layers


class PixelNorm(nn.Module):
    """Normalise each vector to unit mean square over the last dim."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate; ``activation="fused_lrelu"`` adds the fused leaky ReLU."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0, lr_mul: float = 1.0, activation: Optional[str] = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias * self.lr_mul
        if self.activation:
            out = F.linear(x, self.weight * self.scale)
            return fused_leaky_relu(out, bias, dim=-1)
        return F.linear(x, self.weight * self.scale, bias)


class Blur(nn.Module):
    """FIR blur with padding ``pad``; the kernel is scaled by ``upsample_factor**2``."""

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel(taps) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x FIR upsampling of the RGB skip path (kernel scaled by ``factor**2``)."""

    def __init__(self, taps: Sequence[float], factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(taps) * factor**2)
        p = len(taps) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)

    def phases(self, x: torch.Tensor) -> torch.Tensor:
        """Same result as :meth:`forward` for ``factor=2`` and 4 taps, as a ``[B, C, H, 2, W, 2]`` view
        (see :func:`interleave_view`): one dense conv on ``x [B, C, H, W]`` viewed as ``B * C`` images."""
        b, c, h, w = x.shape
        weight = output_phases(F.pad(self.kernel, [1, 1, 1, 1]))[:, None].to(x.dtype)  # [4, 1, 3, 3]
        out = F.conv2d(x.reshape(b * c, 1, h, w), weight, padding=1)  # [B*C, 4, H, W]
        return out.view(b, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution; ``weight [1, O, I, k, k]``, ``modulation``: W -> per-input-channel scales."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, demodulate: bool = True, upsample: bool = False, blur_kernel: Sequence[float] = BLUR_KERNEL) -> None:
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.upsample = upsample
        self.demodulate = demodulate
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        #: ``"batched"``, ``"grouped"`` or ``"fused_up"``; set for the whole generator by :meth:`Generator.set_modconv`.
        self.impl: ModConv = "batched"

    @property
    def phased(self) -> bool:
        """True when the upsampling conv runs as one 3x3 conv producing the 4 output phases (``fused_up``)."""
        return self.upsample and self.impl == "fused_up"

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """``x [B, I, H, W]``, ``style [B, D]`` -> ``[B, O, H', W']`` (H' = 2H when upsampling)."""
        s = self.modulation(style)  # [B, I]
        if self.impl == "grouped":
            return self._grouped(x, s)
        if self.kernel_size == 1:
            return self._pointwise(x, s)
        return self._batched(x, s)

    def _demod(self, s: torch.Tensor) -> torch.Tensor:
        # [B, O]: rsqrt(sum_{i,k} (scale * w[o,i,k] * s[b,i])^2 + 1e-8), in float32
        with torch.autocast(device_type=s.device.type, enabled=False):
            wsq = (self.weight[0].float() * self.scale).square().sum(dim=(2, 3))  # [O, I]
            return torch.rsqrt(s.float().square() @ wsq.t() + 1e-8)

    def _batched(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        out, demod = self.batched_parts(x, s)
        if self.phased:
            b, _, h, w = out.shape
            out = interleave_view(out, self.out_channel).reshape(b, self.out_channel, 2 * h, 2 * w)
        return out if demod is None else out * demod.to(out.dtype)[:, :, None, None]

    def batched_parts(self, x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Activation-modulated conv: ``(conv(x * s, w) [blurred], demod [B, O] float32 | None)``.

        ``s [B, I]`` are the modulation outputs; the result equals :meth:`forward` once the
        output is scaled by ``demod`` (demodulation is per sample and output channel, so it
        commutes with the convolution and the blur). When :attr:`phased` the first output is
        the phase-major ``[B, 4 * O, H, W]`` (see :func:`interleave_view`), not ``[B, O, 2H, 2W]``.
        """
        w = self.weight[0] * self.scale  # [O, I, k, k]
        x = x * s.to(x.dtype)[:, :, None, None]
        if self.phased:
            out = F.conv2d(x, self._phase_weight(w).to(x.dtype), padding=1)
        elif self.upsample:
            out = self.blur(F.conv_transpose2d(x, w.transpose(0, 1).to(x.dtype), stride=2))
        else:
            out = F.conv2d(x, w.to(x.dtype), padding=self.padding)
        return out, (self._demod(s) if self.demodulate else None)

    def _phase_weight(self, w: torch.Tensor) -> torch.Tensor:
        """Transposed-conv weight ``w [O, I, 3, 3]`` composed with the 4x4 blur -> phase kernels ``[4 * O, I, 3, 3]`` (``w``'s dtype)."""
        o, i, k, _ = w.shape
        kernel = self.blur.kernel.to(w.dtype)
        with torch.autocast(device_type=w.device.type, enabled=False):
            taps = torch.eye(k * k, dtype=w.dtype, device=w.device).view(k * k, 1, k, k)
            # each of the 9 taps convolved (true convolution) with the blur: [9, 6, 6] -> [4, 9, 3, 3]
            taps = output_phases(F.conv2d(taps, kernel.flip([0, 1])[None, None], padding=kernel.shape[-1] - 1)[:, 0])
            return torch.einsum("oit,ptab->poiab", w.reshape(o, i, k * k), taps).reshape(4 * o, i, 3, 3)

    def _sample_weights(self, s: torch.Tensor) -> torch.Tensor:
        """Per-sample (de)modulated weights ``[B, O, I, k, k]`` (the reference formulation)."""
        b, i = s.shape
        weight = self.scale * self.weight * s.to(self.weight.dtype).view(b, 1, i, 1, 1)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.square().sum(dim=(2, 3, 4)) + 1e-8).view(b, self.out_channel, 1, 1, 1)
        return weight

    def _pointwise(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """1x1 kernels as one batched matmul with per-sample weights: reads ``x`` once, any memory format."""
        b, _, h, w_ = x.shape
        weight = self._sample_weights(s).view(b, self.out_channel, self.in_channel)
        return torch.bmm(weight.to(x.dtype), x.flatten(2)).view(b, self.out_channel, h, w_)

    def _grouped(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        b, i, h, w_ = x.shape
        o, k = self.out_channel, self.kernel_size
        weight = self._sample_weights(s)  # [B, O, I, k, k]
        x = x.reshape(1, b * i, h, w_)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(b * i, o, k, k)
            out = F.conv_transpose2d(x, weight.to(x.dtype), stride=2, groups=b)
            return self.blur(out.view(b, o, out.shape[-2], out.shape[-1]))
        out = F.conv2d(x, weight.reshape(b * o, i, k, k).to(x.dtype), padding=self.padding, groups=b)
        return out.view(b, o, h, w_)


class NoiseInjection(nn.Module):
    """Adds ``weight * noise`` (one learned scalar, per-pixel noise shared over channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: Optional[torch.Tensor]) -> torch.Tensor:
        if noise is None:
            return x
        return x + self.weight.to(x.dtype) * noise.to(x.dtype)


class ConstantInput(nn.Module):
    """The learned 4x4 input ``input [1, C, 4, 4]``, repeated over the batch."""

    def __init__(self, channel: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class FusedLeakyReLU(nn.Module):
    """Per-channel bias then leaky ReLU(0.2) times sqrt(2); ``bias [C]``."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias, dim=1)


class StyledConv(nn.Module):
    """Modulated conv -> noise -> bias + fused leaky ReLU."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, upsample: bool = False, blur_kernel: Sequence[float] = BLUR_KERNEL) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x [B, I, H, W]``, ``style [B, D]``, ``noise [1 or B, 1, H', W'] | None`` -> ``[B, O, H', W']``."""
        conv = self.conv
        if conv.impl == "grouped":
            return self.activate(self.noise(conv(x, style), noise))
        # fused epilogue, same maths in one pass plus an in-place activation:
        # sqrt2 * lrelu(raw * d + n * noise + b) == lrelu(raw * (sqrt2 d) + sqrt2 (n * noise + b))
        raw, demod = conv.batched_parts(x, conv.modulation(style))
        shift = self.activate.bias.view(1, -1, 1, 1)
        if noise is not None:
            shift = shift + self.noise.weight * noise
        shift, gain = (shift * SQRT2).to(raw.dtype), (demod * SQRT2).to(raw.dtype)[:, :, None, None]
        if conv.phased:  # raw: [B, 4O, H, W] phases, interleaved by the epilogue's write
            b, _, h, w = raw.shape
            out = torch.empty(b, conv.out_channel, 2 * h, 2 * w, dtype=raw.dtype, device=raw.device, memory_format=memory_format_of(raw))
            bias_act_into(interleave_view(raw, conv.out_channel), gain[..., None, None], split_view(shift), split_view(out))
            return out
        if torch.is_grad_enabled():  # no copy into a preallocated output; raw first keeps its memory format
            return F.leaky_relu(raw * gain + shift, 0.2)
        return bias_act_into(raw, gain, shift, torch.empty_like(raw))  # empty_like keeps channels_last


class ToRGB(nn.Module):
    """1x1 modulated conv (no demodulation) to RGB plus bias, added to the upsampled skip image."""

    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True, blur_kernel: Sequence[float] = BLUR_KERNEL) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x [B, I, H, W]``, ``skip [B, 3, H/2, W/2]`` -> float32 ``[B, 3, H, W]`` (full precision under autocast)."""
        out = self.conv(x, style) + self.bias.float()  # type promotion: float32 in the same pass
        if skip is not None:
            with torch.autocast(device_type=out.device.type, enabled=False):
                if self.conv.impl == "fused_up":
                    split_view(out).add_(self.upsample.phases(skip.float()))
                else:
                    out = out + self.upsample(skip.float())
        return out


# --------------------------------------------------------------------------- generator


def channel_table(size: int, channel_multiplier: int = 2, channel_max: int = 512) -> dict[int, int]:
    """Feature channels per resolution: ``channel_max`` up to 32 px, then ``channel_multiplier * channel_max * 32 / res``.

    With ``channel_max=512`` this is the rosinality table (64: 256*cm ... 1024: 16*cm).
    """
    out = {}
    res = 4
    while res <= size:
        out[res] = channel_max if res <= 32 else max(1, channel_multiplier * channel_max * 32 // res)
        res *= 2
    return out


class Generator(nn.Module):
    """StyleGAN2 generator; ``state_dict()`` keys equal rosinality's ``g_ema``.

    ``size``: output side (power of two >= 4); ``n_latent = 2 * log2(size) - 2`` W+ styles;
    ``channel_max`` (default 512, the official value) narrows every layer for tiny test models.
    ``latent_avg [D]`` (non-persistent buffer, ``None`` until set) is the mean W used for truncation.
    """

    def __init__(self, size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2, blur_kernel: Sequence[float] = BLUR_KERNEL, lr_mlp: float = 0.01, channel_max: int = 512) -> None:
        super().__init__()
        log_size = int(round(math.log2(size))) if size > 0 else 0
        if size < 4 or 2**log_size != size:
            raise BadInputError(f"generator size {size}: must be a power of two >= 4")
        self.size, self.style_dim, self.n_mlp = size, style_dim, n_mlp
        self.channel_multiplier, self.channel_max, self.lr_mlp = channel_multiplier, channel_max, lr_mlp
        self.blur_kernel = tuple(blur_kernel)
        self.log_size = log_size
        self.num_layers = (log_size - 2) * 2 + 1
        self.n_latent = log_size * 2 - 2
        self.channels = channel_table(size, channel_multiplier, channel_max)

        self.style = nn.Sequential(PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu") for _ in range(n_mlp)])
        c4 = self.channels[4]
        self.input = ConstantInput(c4)
        self.conv1 = StyledConv(c4, c4, 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(c4, style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for idx in range(self.num_layers):
            res = 2 ** ((idx + 5) // 2)
            self.noises.register_buffer(f"noise_{idx}", torch.randn(1, 1, res, res))
        in_channel = c4
        for i in range(3, log_size + 1):
            out_channel = self.channels[2**i]
            self.convs.append(StyledConv(in_channel, out_channel, 3, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_channel, style_dim))
            in_channel = out_channel
        self.register_buffer("latent_avg", None, persistent=False)
        #: memory format of the feature maps (``torch.channels_last`` speeds up GPUs)
        self.memory_format = torch.contiguous_format

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-ready); ``Generator(**g.config())`` rebuilds the architecture."""
        return {"size": self.size, "style_dim": self.style_dim, "n_mlp": self.n_mlp, "channel_multiplier": self.channel_multiplier,
                "blur_kernel": list(self.blur_kernel), "lr_mlp": self.lr_mlp, "channel_max": self.channel_max}

    def set_modconv(self, impl: ModConv) -> "Generator":
        """Choose the modulated-conv path for every layer (same maths; ``batched``/``fused_up`` are faster on GPUs)."""
        if impl not in ("batched", "grouped", "fused_up"):
            raise BadInputError(f"modconv {impl!r}: choose 'batched', 'grouped' or 'fused_up'")
        if impl == "fused_up" and len(self.blur_kernel) != 4:
            raise BadInputError(f"modconv 'fused_up' needs a 4-tap blur kernel, not {list(self.blur_kernel)}: use 'batched'")
        for m in self.modules():
            if isinstance(m, ModulatedConv2d):
                m.impl = impl
        return self

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """Mapping network: ``z [..., D]`` -> ``w [..., D]``."""
        return self.style(z)

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, seed: Optional[int] = None) -> torch.Tensor:
        """Mean of ``n`` mapped Gaussian samples, ``[1, D]`` (seeded when ``seed`` is given)."""
        dev = self.input.input.device
        gen = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
        z = torch.randn(n, self.style_dim, generator=gen).to(dev)
        return self.style(z).mean(0, keepdim=True)

    def make_noise(self, noise_mode: NoiseMode, batch: int = 1) -> list[Optional[torch.Tensor]]:
        """Per-layer noise: the stored buffers (``const``), fresh Gaussian maps (``random``) or ``None``."""
        buffers = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        if noise_mode == "const":
            return buffers
        if noise_mode == "random":
            return [torch.randn(batch, 1, b.shape[-2], b.shape[-1], device=b.device) for b in buffers]
        if noise_mode == "none":
            return [None] * self.num_layers
        raise BadInputError(f"noise_mode {noise_mode!r}: choose 'const', 'random' or 'none'")

    def forward(self, styles: torch.Tensor, input_is_latent: bool = False, noise_mode: NoiseMode = "const", truncation: float = 1.0,
                truncation_latent: Optional[torch.Tensor] = None, noise: Optional[Sequence[Optional[torch.Tensor]]] = None) -> torch.Tensor:
        """Render images ``[B, 3, S, S]`` (roughly in [-1, 1], not clamped).

        ``styles``: ``z`` or ``w`` ``[B, D]`` (one code for all layers) or ``[B, L, D]`` (W+ when
        ``input_is_latent``, per-layer ``z`` otherwise). ``truncation < 1`` pulls W towards
        ``truncation_latent`` (default :attr:`latent_avg`). ``noise`` overrides ``noise_mode``.
        """
        if styles.shape[-1] != self.style_dim or styles.ndim not in (2, 3) or (styles.ndim == 3 and styles.shape[1] != self.n_latent):
            raise BadInputError(f"latent shape {tuple(styles.shape)}: expected [B, {self.style_dim}] or [B, {self.n_latent}, {self.style_dim}]")
        w = styles if input_is_latent else self.mapping(styles)
        if w.ndim == 2:
            w = w[:, None, :].expand(-1, self.n_latent, -1)
        if truncation != 1.0:
            avg = truncation_latent if truncation_latent is not None else self.latent_avg
            if avg is None:
                raise BadInputError("truncation needs a mean latent: pass truncation_latent or set generator.latent_avg (e.g. g.mean_latent())")
            avg = avg.reshape(self.style_dim) if avg.numel() == self.style_dim else avg.reshape(self.n_latent, self.style_dim)
            w = avg + truncation * (w - avg)
        return self.synthesize_wplus(w, noise_mode=noise_mode, noise=noise)

    def synthesize_wplus(self, w: torch.Tensor, noise_mode: NoiseMode = "const", noise: Optional[Sequence[Optional[torch.Tensor]]] = None) -> torch.Tensor:
        """W+ ``[B, L, D]`` -> images ``[B, 3, S, S]``; differentiable in ``w`` and the weights."""
        noise = list(noise) if noise is not None else self.make_noise(noise_mode, w.shape[0])
        x = self.input(w.shape[0]).contiguous(memory_format=self.memory_format)
        x = self.conv1(x, w[:, 0], noise[0])
        skip = self.to_rgb1(x, w[:, 1])
        i = 1
        for up, conv, to_rgb, n1, n2 in zip(self.convs[::2], self.convs[1::2], self.to_rgbs, noise[1::2], noise[2::2]):
            x = up(x, w[:, i], n1)
            x = conv(x, w[:, i + 1], n2)
            skip = to_rgb(x, w[:, i + 2], skip)
            i += 2
        return skip


def compiled_synthesis(gen: Generator, mode: Optional[str] = None, dynamic: bool = False, fullgraph: bool = True) -> Any:
    """``torch.compile`` of ``gen.synthesize_wplus`` (W+ ``[B, L, D]`` -> ``[B, 3, S, S]``); nothing compiles before the first call.

    ``mode``: torch.compile mode, e.g. ``"max-autotune-no-cudagraphs"`` (slow to compile, fastest
    kernels) or ``"reduce-overhead"`` (CUDA graphs; worth it at batch 1). ``dynamic=False``
    specialises on the batch size (one compile per size). Call it under ``torch.no_grad()`` and
    the autocast of your choice; changing :meth:`Generator.set_modconv`, the memory format or
    autocast triggers a recompile.
    """
    return torch.compile(gen.synthesize_wplus, mode=mode, dynamic=dynamic, fullgraph=fullgraph)


# --------------------------------------------------------------------------- loading and saving


def infer_config(state: Mapping[str, Any], args: Any = None) -> dict[str, Any]:
    """Constructor arguments from a rosinality-layout state dict (``args`` consulted when given)."""
    try:
        c4 = int(state["input.input"].shape[1])
        style_dim = int(state["style.1.weight"].shape[1])
    except KeyError as exc:
        raise BadInputError(f"not a StyleGAN2 generator state dict (no {exc.args[0]!r})") from None
    n_mlp = sum(1 for k in state if re.fullmatch(r"style\.\d+\.weight", k))
    n_up = sum(1 for k in state if re.fullmatch(r"to_rgbs\.\d+\.bias", k))
    size = 4 * 2**n_up
    cm = 2
    if size >= 64:
        c64 = int(state[f"convs.{2 * 3}.conv.weight"].shape[1])
        cm = max(1, (c64 * 2) // c4)
    elif args is not None and getattr(args, "channel_multiplier", None):
        cm = int(args.channel_multiplier)
    lr_mlp = 0.01
    if args is not None and isinstance(getattr(args, "lr_mlp", None), (int, float)):
        lr_mlp = float(args.lr_mlp)
    return {"size": size, "style_dim": style_dim, "n_mlp": n_mlp, "channel_multiplier": cm, "channel_max": c4, "lr_mlp": lr_mlp}


def generator_from_state_dict(state: Mapping[str, Any], path: Path | str, what: str = "g_ema", args: Any = None) -> Generator:
    """Build a :class:`Generator` matching ``state`` (inferred config) and load it strictly."""
    try:
        config = infer_config(state, args)
    except BadInputError as exc:
        raise BadInputError(f"{path}: {what}: {exc}") from None
    return build_loaded(config, state, path, what)


def build_loaded(config: Mapping[str, Any], state: Mapping[str, Any], path: Path | str, what: str) -> Generator:
    """``Generator(**config)`` holding exactly the float32 tensors of ``state`` (strict; no random init)."""
    with torch.device("meta"):
        gen = Generator(**config)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    load_strict(gen, state, path, what, assign=True)
    return gen


def load_rosinality_checkpoint(path: Path | str, map_location: Any = "cpu", checkpoint: Optional[Mapping[str, Any]] = None) -> tuple[Generator, Optional[torch.Tensor]]:
    """Read a rosinality stylegan2-pytorch ``.pt`` -> ``(Generator in eval mode, latent_avg [D] | None)``.

    Raises :class:`BadInputError` naming the file and the first missing/unexpected keys.
    """
    ckpt = checkpoint if checkpoint is not None else torch_load(path, map_location)
    if not isinstance(ckpt, Mapping) or "g_ema" not in ckpt:
        raise BadInputError(f"{path}: no 'g_ema' entry; expected a rosinality stylegan2-pytorch checkpoint")
    gen = generator_from_state_dict(ckpt["g_ema"], path, "g_ema", ckpt.get("args"))
    avg = ckpt.get("latent_avg")
    if avg is not None:
        avg = avg.float().reshape(-1, gen.style_dim)[0]
        gen.latent_avg = avg.clone()
    return gen.to(map_location).eval(), avg


def save_safetensors(gen: Generator, path: Path | str, latent_avg: Optional[torch.Tensor] = None) -> Path:
    """Write our format: the state dict (+ ``latent_avg``) as safetensors, config JSON in the metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in gen.state_dict().items()}
    avg = latent_avg if latent_avg is not None else gen.latent_avg
    if avg is not None:
        tensors["latent_avg"] = avg.detach().float().reshape(-1)[: gen.style_dim].cpu().contiguous()
    tmp = path.with_name(path.name + ".part")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "config": json.dumps(gen.config())})
    tmp.replace(path)
    return path


def load_safetensors(path: Path | str, map_location: Any = "cpu") -> tuple[Generator, Optional[torch.Tensor]]:
    """Read a file written by :func:`save_safetensors` -> ``(Generator in eval mode, latent_avg | None)``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        from latentdub.toolkit.core.errors import MissingWeightsError

        raise MissingWeightsError(f"{path}: weight file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise BadInputError(f"{path}: not a readable safetensors file ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise BadInputError(f"{path}: safetensors metadata lacks format={FORMAT!r}; write it with save_safetensors")
    avg = tensors.pop("latent_avg", None)
    gen = build_loaded(json.loads(meta["config"]), tensors, path, "generator")
    if avg is not None:
        gen.latent_avg = avg.clone()
    return gen.to(map_location).eval(), avg
