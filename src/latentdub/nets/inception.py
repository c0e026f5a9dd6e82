"""Inception-v3 as used for FID (the TensorFlow 2015-12-05 graph ported to PyTorch).

Parameter names follow torchvision's ``Inception3`` with 1008 classes and no
auxiliary head, which is the layout of the widely used
``pt_inception-2015-12-05-6726825d.pth`` state dict (``Conv2d_1a_3x3.conv.weight``,
``Mixed_5b.branch_pool.bn.running_mean``, ..., ``fc.weight``), so that file
loads strictly with ``torch.load(..., weights_only=True)``. The FID variant
differs from the classification network in its pooling: the A/C/E blocks
average-pool without counting the zero padding, and the last E block
max-pools its pool branch.

``width`` scales every channel count (1.0 = the real network); tiny widths
give fast random networks with the same structure for tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from .safe_load import load_strict, torch_load

#: Side (px) the FID network resizes its input to.
FID_INPUT_SIZE = 299


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 0.001) -> ReLU."""

    def __init__(self, cin: int, cout: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool ignores the zero padding
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled 1x1 branches."""

    def __init__(self, cin: int, pool_features: int, c) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, c(64), kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, c(48), kernel_size=1)
        self.branch5x5_2 = BasicConv2d(c(48), c(64), kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, c(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)
        self.out_channels = c(64) + c(64) + c(96) + pool_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """35 -> 17 reduction block."""

    def __init__(self, cin: int, c) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, c(384), kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, c(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), kernel_size=3, stride=2)
        self.out_channels = c(384) + c(96) + cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions."""

    def __init__(self, cin: int, channels_7x7: int, c) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, c(192), kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, c(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, c(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, c(192), kernel_size=1)
        self.out_channels = 4 * c(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(_avg_pool(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """17 -> 8 reduction block."""

    def __init__(self, cin: int, c) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, c(192), kernel_size=1)
        self.branch3x3_2 = BasicConv2d(c(192), c(320), kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, c(192), kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(c(192), c(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(c(192), c(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(c(192), c(192), kernel_size=3, stride=2)
        self.out_channels = c(320) + c(192) + cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(nn.Module):
    """8x8 block with split 1x3/3x1 branches; ``max_pool`` selects the last block's pooling."""

    def __init__(self, cin: int, c, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, c(320), kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, c(384), kernel_size=1)
        self.branch3x3_2a = BasicConv2d(c(384), c(384), kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(c(384), c(384), kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, c(448), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(c(448), c(384), kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(c(384), c(384), kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(c(384), c(384), kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, c(192), kernel_size=1)
        self.out_channels = c(320) + 4 * c(384) + c(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """FID feature extractor: images -> pool3 features ``[B, feature_dim]`` (2048 at width 1).

    ``forward`` takes float ``[B, 3, H, W]`` RGB in [0, 1], resizes bilinearly
    to ``input_size`` (299 for the real network) and scales to [-1, 1].
    The classifier ``fc`` exists only so the published state dict loads.
    """

    def __init__(self, width: float = 1.0, num_classes: int = 1008, input_size: int = FID_INPUT_SIZE) -> None:
        super().__init__()
        self.width = width
        self.input_size = input_size

        def c(n: int) -> int:
            return max(1, int(round(n * width)))

        self.Conv2d_1a_3x3 = BasicConv2d(3, c(32), kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(c(32), c(32), kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(c(32), c(64), kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(c(64), c(80), kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(c(80), c(192), kernel_size=3)
        self.Mixed_5b = FIDInceptionA(c(192), c(32), c)
        self.Mixed_5c = FIDInceptionA(self.Mixed_5b.out_channels, c(64), c)
        self.Mixed_5d = FIDInceptionA(self.Mixed_5c.out_channels, c(64), c)
        self.Mixed_6a = InceptionB(self.Mixed_5d.out_channels, c)
        self.Mixed_6b = FIDInceptionC(self.Mixed_6a.out_channels, c(128), c)
        self.Mixed_6c = FIDInceptionC(self.Mixed_6b.out_channels, c(160), c)
        self.Mixed_6d = FIDInceptionC(self.Mixed_6c.out_channels, c(160), c)
        self.Mixed_6e = FIDInceptionC(self.Mixed_6d.out_channels, c(192), c)
        self.Mixed_7a = InceptionD(self.Mixed_6e.out_channels, c)
        self.Mixed_7b = FIDInceptionE(self.Mixed_7a.out_channels, c, max_pool=False)
        self.Mixed_7c = FIDInceptionE(self.Mixed_7b.out_channels, c, max_pool=True)
        self.feature_dim = self.Mixed_7c.out_channels
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, 3, H, W] in [0, 1] -> [B, feature_dim]
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    @torch.no_grad()
    def features(self, images) -> torch.Tensor:
        """uint8 RGB images ``[B, H, W, 3]`` (numpy or tensor) -> float32 features ``[B, feature_dim]`` on CPU."""
        param = next(self.parameters())
        x = torch.as_tensor(images).to(param.device).permute(0, 3, 1, 2).to(param.dtype) / 255.0
        return self(x).float().cpu()


def load_fid_inception(path: Union[str, Path], device="cpu") -> FIDInceptionV3:
    """Build the full FID network and load ``pt_inception-2015-12-05-6726825d.pth`` (strict, weights only)."""
    model = FIDInceptionV3()
    load_strict(model, torch_load(path), path, "pytorch-fid Inception state dict (pt_inception-2015-12-05-6726825d.pth)")
    return model.eval().to(device)


def tiny_fid_inception(width: float = 1 / 16, seed: int = 0, input_size: int = 139) -> FIDInceptionV3:
    """A randomly initialised narrow FID network (same structure) for tests and wiring checks.

    Convolutions get He-normal weights so that activations keep their scale
    through the 17 blocks (PyTorch's default init shrinks them to ~1e-8).
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = FIDInceptionV3(width=width, input_size=input_size)
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model.eval()
