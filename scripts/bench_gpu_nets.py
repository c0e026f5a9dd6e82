#!/usr/bin/env python
"""Throughput of the paper's networks on one accelerator: StyleGAN2 1024 px and the pSp encoder.

    python scripts/bench_gpu_nets.py --out results.md            # GPU, ~2-4 minutes
    python scripts/bench_gpu_nets.py --quick --device cpu         # tiny sizes, smoke test

Random weights (the official architecture: generator 1024 px, channel multiplier 2; pSp
IR-SE50 GradualStyleEncoder, 18 styles, 256 px input). For each batch size it times:

- ``reference``: grouped per-sample-weight modulated conv (rosinality's formulation), fp32, no TF32;
- ``fp32``: activation-modulated ("batched") conv, TF32 allowed, channels_last;
- ``bf16``: the same under bf16 autocast;
- ``bf16+compile``: with ``--compile`` (torch.compile, slow first call).

It also reports how far the fast paths are from the reference maths (max |diff| on [-1, 1]
images / W+ codes). Needs only torch, numpy and this package.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))

from latentdub.nets.psp import PspModel, build_encoder  # noqa: E402
from latentdub.nets.stylegan2 import Generator  # noqa: E402

#: rosinality stylegan2-pytorch (CUDA ops) and pSp, images/s on an H200 (numbers from the task brief).
REFERENCE = {("generator", 1): 102, ("generator", 8): 272, ("generator", 32): 296, ("psp", 32): 637, ("psp bf16", 32): 796}


def set_tf32(enabled: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, batch: int, min_time: float, min_iters: int, warmup: int) -> float:
    """Images per second of ``fn()`` (after ``warmup`` calls; at least ``min_iters`` and ``min_time`` s)."""
    for _ in range(warmup):
        fn()
    sync(device)
    iters, start = 0, time.perf_counter()
    while True:
        fn()
        iters += 1
        if iters >= min_iters:
            sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                return batch * iters / elapsed


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    p.add_argument("--quick", action="store_true", help="tiny networks (64 px generator, narrow encoder): smoke test")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd bf16 generator")
    p.add_argument("--min-time", type=float, default=None, help="seconds timed per measurement (default 1.5, quick 0.2)")
    p.add_argument("--out", type=Path, help="write the markdown report here too")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    batches = [int(b) for b in args.batches.split(",")]
    min_time = args.min_time if args.min_time is not None else (0.2 if args.quick else 1.5)
    warmup, min_iters = (1, 2) if args.quick else (3, 5)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)

    with torch.device(device):
        if args.quick:
            gen = Generator(64, 512, 2, channel_max=32).eval().requires_grad_(False)
            encoder = build_encoder("GradualStyleEncoder", n_styles=10, units=(1, 1, 1, 1), widths=(16, 24, 32, 48), style_width=32)
            enc_input = 64
        else:
            gen = Generator(1024, 512, 8, channel_multiplier=2).eval().requires_grad_(False)
            encoder = build_encoder("GradualStyleEncoder", num_layers=50, n_styles=18)
            enc_input = 256
        psp = PspModel(encoder, None, torch.zeros(512), {"start_from_latent_avg": True}, input_size=enc_input).eval().requires_grad_(False)
    gen.latent_avg = gen.mean_latent(1024, seed=0)[0]

    rows: list[tuple[str, str, int, float]] = []
    checks: list[str] = []

    def gen_variant(name: str, modconv: str, tf32: bool, bf16: bool, channels_last: bool, compiled: bool = False) -> None:
        set_tf32(tf32)
        gen.set_modconv(modconv)
        gen.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        run = torch.compile(gen.synthesize_wplus) if compiled else gen.synthesize_wplus
        for b in batches:
            w = gen.latent_avg + 0.7 * torch.randn(b, gen.n_latent, 512, device=device)
            try:
                with torch.no_grad(), autocast(device, bf16):
                    ips = timed(lambda: run(w), device, b, min_time, min_iters, warmup)
            except torch.cuda.OutOfMemoryError:
                ips = float("nan")
                torch.cuda.empty_cache()
            rows.append(("generator", name, b, ips))
            print(f"generator {name:>13} batch {b:>3}: {ips:8.1f} img/s", flush=True)

    def enc_variant(name: str, tf32: bool, bf16: bool, channels_last: bool) -> None:
        set_tf32(tf32)
        psp.encoder.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        for b in batches:
            x = torch.rand(b, 3, enc_input, enc_input, device=device) * 2 - 1
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), autocast(device, bf16):
                ips = timed(lambda: psp.encode(x), device, b, min_time, min_iters, warmup)
            rows.append(("psp encoder", name, b, ips))
            print(f"psp       {name:>13} batch {b:>3}: {ips:8.1f} img/s", flush=True)

    # agreement with the reference maths (batch 2, const noise)
    w = gen.latent_avg + 0.7 * torch.randn(2, gen.n_latent, 512, device=device, generator=None)
    x = torch.rand(2, 3, enc_input, enc_input, device=device) * 2 - 1
    with torch.no_grad():
        set_tf32(False)
        ref_img = gen.set_modconv("grouped").synthesize_wplus(w)
        ref_w = psp.encode(x)
        fast_img = gen.set_modconv("batched").synthesize_wplus(w)
        set_tf32(True)
        gen.memory_format = torch.channels_last
        tf32_img = gen.synthesize_wplus(w)
        with autocast(device, True):
            bf16_img = gen.synthesize_wplus(w).float()
            bf16_w = psp.encode(x).float()
        tf32_w = psp.encode(x)
    span = ref_img.abs().max().item()
    checks.append(f"generator image range |max| = {span:.3f}")
    checks.append(f"generator fp32 batched vs reference (grouped), no TF32: max |diff| = {(fast_img - ref_img).abs().max().item():.2e}")
    checks.append(f"generator fp32 TF32 channels_last vs reference: max |diff| = {(tf32_img - ref_img).abs().max().item():.2e}, mean = {(tf32_img - ref_img).abs().mean().item():.2e}")
    checks.append(f"generator bf16 vs reference: max |diff| = {(bf16_img - ref_img).abs().max().item():.2e}, mean = {(bf16_img - ref_img).abs().mean().item():.2e}")
    wscale = ref_w.abs().mean().item()
    checks.append(f"pSp W+ mean |w| = {wscale:.3f}; TF32 vs fp32 max |diff| = {(tf32_w - ref_w).abs().max().item():.2e}; bf16 vs fp32 max |diff| = {(bf16_w - ref_w).abs().max().item():.2e}")
    for line in checks:
        print(line, flush=True)

    gen_variant("reference", "grouped", tf32=False, bf16=False, channels_last=False)
    gen_variant("fp32", "batched", tf32=True, bf16=False, channels_last=True)
    gen_variant("bf16", "batched", tf32=True, bf16=True, channels_last=True)
    if args.compile:
        gen_variant("bf16+compile", "batched", tf32=True, bf16=True, channels_last=True, compiled=True)
    enc_variant("fp32 (no TF32)", tf32=False, bf16=False, channels_last=False)
    enc_variant("fp32", tf32=True, bf16=False, channels_last=True)
    enc_variant("bf16", tf32=True, bf16=True, channels_last=True)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    lines = [
        f"## Network throughput ({'quick, tiny networks' if args.quick else 'StyleGAN2 1024 px config-f, pSp IR-SE50 18 styles 256 px'})",
        "",
        f"Device: {device_name}; torch {torch.__version__}; images/s (higher is better).",
        "",
        "| network | variant | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "|---|---|" + "---|" * len(batches),
    ]
    for (net, name) in dict.fromkeys((r[0], r[1]) for r in rows):
        vals = {b: ips for n, v, b, ips in rows if n == net and v == name}
        lines.append(f"| {net} | {name} | " + " | ".join("OOM" if math.isnan(vals[b]) else f"{vals[b]:.1f}" for b in batches) + " |")
    if not args.quick:
        lines += ["", "Reference (rosinality CUDA ops / pSp, H200): generator 102 / 272 / 296 img/s at batch 1 / 8 / 32; pSp 637 img/s (bf16 796) at batch 32."]
    lines += ["", "Agreement with the reference maths (batch 2):", ""] + [f"- {c}" for c in checks]
    report = "\n".join(lines) + "\n"
    print()
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
