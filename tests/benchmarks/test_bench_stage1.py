"""Stage-1 speed: audio2latent training steps/s and inference frames/s.

CPU, tiny config (the test networks): ``pytest tests/benchmarks/test_bench_stage1.py --benchmark-enable``.
The paper-size tests run the real architecture (18 x 512 W+, 64 components;
training with a 1024 px StyleGAN2 and VGG LPIPS at 256 px, bf16 autocast) and
need CUDA; they skip elsewhere. Each step/frame count is in the test name's
docstring so ops/s converts to steps/s or frames/s.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from latentdub.nets.audio2latent import Audio2Latent, Audio2LatentSpec, predict_windows, random_pca
from latentdub.plugins.audio2latent import Objective, TrainConfig
from latentdub.toolkit.learning.dataset import shard_path, write_shard
from latentdub.toolkit.learning.training import ClipSampler

TINY = Audio2LatentSpec(n_styles=8, latent_dim=64, layers=(0, 1, 2, 3), components=8, conv_channels=(8, 16), audio_dim=32, hidden=64)
PAPER = Audio2LatentSpec(n_styles=18, latent_dim=512)
TINY_TRAIN = TrainConfig(batch_size=8, sequence_length=16, lr=1e-3, lpips_weight=0.0)
INFER_FRAMES = 1500  # 60 s at 25 fps

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="paper-size Stage-1 benchmarks need CUDA")


def _model(spec: Audio2LatentSpec, device: str = "cpu") -> Audio2Latent:
    torch.manual_seed(0)
    model = Audio2Latent(spec)
    model.set_pca(*random_pca(spec))
    return model.to(device)


def _dataset(folder: Path, spec: Audio2LatentSpec, clips: int = 4, frames: int = 75) -> list[str]:
    """Synthetic shards shaped like GRID clips (random latents and MFCC windows)."""
    rng = np.random.default_rng(0)
    ids = [f"clip{i}" for i in range(clips)]
    shard_path(folder, "x").parent.mkdir(parents=True, exist_ok=True)
    for clip_id in ids:
        latents = rng.normal(size=(frames, spec.n_styles, spec.latent_dim)).astype(np.float16)
        features = rng.normal(size=(frames, spec.window, spec.coeffs)).astype(np.float16)
        write_shard(shard_path(folder, clip_id), latents, features, np.ones(frames, np.uint8), {})
    return ids


def _stepper(model: Audio2Latent, sampler: ClipSampler, objective: Objective):
    optimizer = torch.optim.Adam(model.parameters(), lr=objective.config.lr)
    state = {"step": 0}

    def step() -> float:
        state["step"] += 1
        loss, _, _ = objective(sampler.batch((state["step"],)), np.random.default_rng(state["step"]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def test_bench_tiny_training_step(benchmark, tmp_path):
    """One optimiser step: 8 sequences x 16 frames read from shards, L_latent only."""
    ids = _dataset(tmp_path, TINY)
    model = _model(TINY)
    step = _stepper(model, ClipSampler(tmp_path, ids, TINY_TRAIN, 0), Objective(model, TINY_TRAIN, torch.device("cpu")))
    loss = benchmark(step)
    assert np.isfinite(loss)


def test_bench_tiny_training_step_with_lpips(benchmark, tmp_path):
    """One optimiser step with LPIPS (AlexNet, random backbone) on 2 frames per sequence of a 32 px StyleGAN2."""
    from latentdub.nets.stylegan2 import Generator
    from latentdub.plugins.stylegan2 import StyleGAN2Config, StyleGAN2Generator
    from latentdub.toolkit.learning.perceptual import build_lpips

    ids = _dataset(tmp_path, TINY)
    model = _model(TINY)
    config = dataclasses.replace(TINY_TRAIN, lpips_weight=1.0, lpips_frames=2, lpips_size=32, lpips_net="alex")
    torch.manual_seed(0)
    gen = StyleGAN2Generator(Generator(32, 64, 2, channel_max=32), StyleGAN2Config(size=32, style_dim=64), "cpu")
    gen.module.requires_grad_(False)
    lpips = build_lpips("cpu", "alex", random_backbone=True, log=lambda m: None)
    step = _stepper(model, ClipSampler(tmp_path, ids, config, 0), Objective(model, config, torch.device("cpu"), gen, lpips))
    loss = benchmark(step)
    assert np.isfinite(loss)


@pytest.mark.parametrize("spec", [TINY, PAPER], ids=["tiny", "paper-size"])
def test_bench_inference_60s(benchmark, spec):
    """Coefficients for 1500 frames (60 s at 25 fps) in windows of 250 (+25 overlap), 8 windows per pass."""
    model = _model(spec).eval()
    feats, identity = torch.randn(INFER_FRAMES, 28, 12), torch.randn(spec.n_styles, spec.latent_dim)
    coeffs = benchmark(predict_windows, model, feats, identity, 250, 25, 8)
    assert coeffs.shape == (INFER_FRAMES, spec.components)


def test_bench_motion_plugin_with_mfcc(benchmark, grid_clips):
    """``predict`` on 8 GRID sentences back to back (about 24 s, 600 frames): MFCC windows + tiny network."""
    from latentdub.plugins.audio2latent import Audio2LatentConfig, Audio2LatentMotion
    from latentdub.plugins.mfcc import MfccFeatures
    from latentdub.toolkit.core.types import Audio
    from latentdub.toolkit.media.audio import load_audio

    speech = Audio(np.concatenate([load_audio(c).samples for c in grid_clips]), 16000)
    config = Audio2LatentConfig(random_init=True, layers=TINY.layers, components=8, conv_channels=(8, 16), audio_dim=32, hidden=64)
    context = type("Ctx", (), {"device": torch.device("cpu"), "seed": 0})()
    motion = Audio2LatentMotion(config, MfccFeatures(), context)
    n = int(speech.duration * 25)
    out = benchmark(motion.predict, speech, 25.0, n, torch.zeros(8, 64))
    assert out.codes.shape == (n, 8)


@cuda
def test_bench_cuda_paper_training_step(benchmark, tmp_path):
    """One step at paper size with the default TrainConfig: 16 x 32 frames, LPIPS (VGG, 256 px) on 1 frame per sequence of a 1024 px StyleGAN2."""
    from latentdub.nets.stylegan2 import Generator
    from latentdub.plugins.stylegan2 import StyleGAN2Config, StyleGAN2Generator
    from latentdub.toolkit.learning.perceptual import build_lpips

    device = torch.device("cuda")
    ids = _dataset(tmp_path, PAPER, clips=8)
    model = _model(PAPER, "cuda")
    config = TrainConfig(batch_size=16, sequence_length=32)
    torch.manual_seed(0)
    gen = StyleGAN2Generator(Generator(1024, 512, 8, channel_max=512), StyleGAN2Config(size=1024, channel_max=512, n_mlp=8), device)
    gen.module.requires_grad_(False)
    lpips = build_lpips(device, "vgg", random_backbone=True, log=lambda m: None)
    step = _stepper(model, ClipSampler(tmp_path, ids, config, 0), Objective(model, config, device, gen, lpips))

    def synced() -> float:
        loss = step()
        torch.cuda.synchronize()
        return loss

    synced()
    torch.cuda.reset_peak_memory_stats()
    loss = benchmark.pedantic(synced, rounds=5, iterations=1)
    benchmark.extra_info["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    assert np.isfinite(loss)


@cuda
def test_bench_cuda_paper_inference(benchmark):
    """Coefficients for 1500 frames at paper size on CUDA."""
    model = _model(PAPER, "cuda").eval()
    feats, identity = torch.randn(INFER_FRAMES, 28, 12), torch.randn(18, 512)

    def run():
        out = predict_windows(model, feats, identity, 250, 25, 8)
        torch.cuda.synchronize()
        return out

    assert benchmark(run).shape == (INFER_FRAMES, 64)
