"""CPU throughput of the tiny StyleGAN2 generator and pSp/e4e encoders (the ``tiny`` preset's networks).

Run with ``pytest tests/benchmarks/test_bench_nets.py --benchmark-enable``; the full-size GPU
numbers come from ``scripts/bench_gpu_nets.py``.
"""

from __future__ import annotations

import pytest
import torch

from latentdub.nets.psp import PspModel, build_encoder
from latentdub.nets.stylegan2 import Generator
from latentdub.plugins.psp import TINY_STYLE_WIDTH, TINY_UNITS, TINY_WIDTHS

BATCH = 4


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return Generator(64, 512, 2, channel_max=32).eval()


@pytest.mark.parametrize("modconv", ["batched", "grouped"])
def test_bench_tiny_generator(benchmark, generator, modconv):
    generator.set_modconv(modconv)
    w = torch.randn(BATCH, generator.n_latent, 512)
    with torch.no_grad():
        images = benchmark(generator.synthesize_wplus, w)
    assert images.shape == (BATCH, 3, 64, 64) and torch.isfinite(images).all()


@pytest.mark.parametrize("encoder_type", ["GradualStyleEncoder", "Encoder4Editing"])
def test_bench_tiny_encoder(benchmark, encoder_type):
    torch.manual_seed(0)
    encoder = build_encoder(encoder_type, n_styles=10, units=TINY_UNITS, widths=TINY_WIDTHS, style_width=TINY_STYLE_WIDTH)
    model = PspModel(encoder, None, torch.zeros(512), {"start_from_latent_avg": True}).eval()
    images = torch.rand(BATCH, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        w = benchmark(model.encode, images)
    assert w.shape == (BATCH, 10, 512)
