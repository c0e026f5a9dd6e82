"""SyncNet (Chung & Zisserman 2016), the ``syncnet_v2`` network used by the Wav2Lip LSE metrics.

Module and parameter names follow the ``syncnet_v2.model`` state dict of the
public SyncNet evaluation code: ``netcnnaud.*`` (audio conv stack),
``netfcaud.*`` (audio head), ``netcnnlip.*`` (3-D video conv stack) and
``netfclip.*`` (video head); ``nn.Sequential`` indices match, so the file
loads strictly with ``torch.load(..., weights_only=True)``.

Inputs: video windows float ``[B, 3, 5, 224, 224]`` — five consecutive 25 fps
face crops, BGR channel order, values 0-255 (no normalisation); audio windows
float ``[B, 1, 13, 20]`` — 13 MFCCs x 20 steps of 10 ms (0.2 s). Both give
``[B, embed_dim]`` embeddings (1024 in the real network).

``width`` scales every channel count (1.0 = the real network) for tiny test nets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import torch
from torch import nn

from .safe_load import load_strict, torch_load

#: Side of the square face crops SyncNet takes (px).
SYNCNET_CROP = 224


class SyncNet(nn.Module):
    """Audio and lip embedding towers of syncnet_v2."""

    def __init__(self, embed_dim: int = 1024, width: float = 1.0) -> None:
        super().__init__()

        def c(n: int) -> int:
            return max(1, int(round(n * width)))

        self.embed_dim = embed_dim
        relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
        # [B, 1, 13, 20] -> [B, 512, 1, 1]
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, c(64), kernel_size=3, padding=1), nn.BatchNorm2d(c(64)), relu(),
            nn.MaxPool2d(kernel_size=1, stride=1),
            nn.Conv2d(c(64), c(192), kernel_size=3, padding=1), nn.BatchNorm2d(c(192)), relu(),
            nn.MaxPool2d(kernel_size=3, stride=(1, 2)),
            nn.Conv2d(c(192), c(384), kernel_size=3, padding=1), nn.BatchNorm2d(c(384)), relu(),
            nn.Conv2d(c(384), c(256), kernel_size=3, padding=1), nn.BatchNorm2d(c(256)), relu(),
            nn.Conv2d(c(256), c(256), kernel_size=3, padding=1), nn.BatchNorm2d(c(256)), relu(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c(256), c(512), kernel_size=(5, 4)), nn.BatchNorm2d(c(512)), nn.ReLU(),
        )
        self.netfcaud = nn.Sequential(
            nn.Linear(c(512), c(512)), nn.BatchNorm1d(c(512)), nn.ReLU(), nn.Linear(c(512), embed_dim),
        )
        self.netfclip = nn.Sequential(
            nn.Linear(c(512), c(512)), nn.BatchNorm1d(c(512)), nn.ReLU(), nn.Linear(c(512), embed_dim),
        )
        # [B, 3, 5, 224, 224] -> [B, 512, 1, 1, 1]
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, c(96), kernel_size=(5, 7, 7), stride=(1, 2, 2)), nn.BatchNorm3d(c(96)), relu(),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(c(96), c(256), kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.BatchNorm3d(c(256)), relu(),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.Conv3d(c(256), c(256), kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(c(256)), relu(),
            nn.Conv3d(c(256), c(256), kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(c(256)), relu(),
            nn.Conv3d(c(256), c(256), kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(c(256)), relu(),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(c(256), c(512), kernel_size=(1, 6, 6)), nn.BatchNorm3d(c(512)), relu(),
        )

    def forward_audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        """``[B, 1, 13, 20]`` MFCC windows -> ``[B, embed_dim]``."""
        return self.netfcaud(torch.flatten(self.netcnnaud(mfcc), 1))

    def forward_video(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 5, 224, 224]`` BGR 0-255 crop windows -> ``[B, embed_dim]``."""
        return self.netfclip(torch.flatten(self.netcnnlip(frames), 1))


def load_syncnet(path: Union[str, Path], device="cpu") -> SyncNet:
    """Build the full SyncNet and load ``syncnet_v2.model`` (strict, weights only).

    Old checkpoints predate BatchNorm's ``num_batches_tracked`` buffers; those
    (and only those) may be absent.
    """
    model = SyncNet()
    load_strict(model, torch_load(path), path, "syncnet_v2 state dict (syncnet_v2.model)")
    return model.eval().to(device)


def tiny_syncnet(width: float = 1 / 16, embed_dim: int = 32, seed: int = 0) -> SyncNet:
    """A randomly initialised narrow SyncNet (same structure) for tests and wiring checks.

    Convolutions get He-normal weights, scaled so 0-255 pixels and raw MFCCs
    give activations of order one.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SyncNet(embed_dim=embed_dim, width=width)
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        model.netcnnlip[0].weight.data /= 128.0
        model.netcnnaud[0].weight.data /= 10.0
    return model.eval()
