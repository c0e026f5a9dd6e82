"""Pivotal tuning speed on the CPU: updates per second of a tiny 32 px StyleGAN2 with LPIPS (AlexNet, random trunk).

Run with ``pytest tests/benchmarks/test_bench_pti.py --benchmark-enable``;
``extra_info["steps_per_s"]`` is the figure to report. The 1024 px GPU
figures come from ``scripts/bench_gpu_pti.py``.
"""

from __future__ import annotations

import pytest
import torch

from latentdub.toolkit.core.build import Components
from latentdub.toolkit.core.presets import resolve_preset

TINY = [
    "generator.size=32", "generator.channel_max=32", "generator.n_mlp=2",
    "finetuner.lpips_random_backbone=true", "finetuner.lpips_net=alex", "finetuner.lpips_threshold=0.0",
]


def _quiet(msg: str) -> None:
    pass


@pytest.mark.benchmark(group="pti")
@pytest.mark.parametrize("locality", [False, True])
def test_bench_pti_updates(benchmark, locality):
    steps = 2 if benchmark.disabled else 10
    comps = Components(resolve_preset("tiny", TINY + [f"finetuner.steps={steps}", f"finetuner.locality={str(locality).lower()}"]), log=_quiet)
    gen, finetuner = comps["generator"], comps["finetuner"]
    nets = finetuner.networks(gen)
    lpips = finetuner.lpips(nets.device)
    g = torch.Generator().manual_seed(0)
    pivots = gen.latent_avg.reshape(1, 1, -1).expand(1, gen.n_styles, -1) + 0.1 * torch.randn(1, gen.n_styles, 512, generator=g)
    target = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    updates, stopped = benchmark.pedantic(finetuner.tune_weights, args=(nets, pivots, target, lpips), rounds=3, iterations=1, warmup_rounds=1)
    assert updates == steps and not stopped
    if not benchmark.disabled:
        benchmark.extra_info.update(steps_per_s=round(steps / benchmark.stats["mean"], 1), locality=locality, size=32)
