#!/usr/bin/env python
"""Throughput of the paper's networks on one accelerator: StyleGAN2 1024 px and the pSp encoder.

    python scripts/bench_gpu_nets.py --out results.md                     # GPU, ~2 minutes
    python scripts/bench_gpu_nets.py --compile --profile --out results.md # GPU, < 4.5 minutes
    python scripts/bench_gpu_nets.py --quick --device cpu --profile       # tiny sizes, smoke test

Random weights (the official architecture: generator 1024 px, channel multiplier 2; pSp
IR-SE50 GradualStyleEncoder, 18 styles, 256 px input). For each batch size it times:

- ``reference``: grouped per-sample-weight modulated conv (rosinality's formulation), fp32, no TF32;
- ``fp32``: activation-modulated ("batched") conv, TF32 allowed, channels_last;
- ``bf16``: the same under bf16 autocast;
- ``fp32 fused_up`` / ``bf16 fused_up``: every 2x upsampling as one dense conv giving the
  four output phases (no transposed or depthwise convs);
- ``bf16 <modconv>+compile``: with ``--compile``, :func:`compiled_synthesis` (one compile per
  batch size, largest first; sizes that would overrun ``--budget`` seconds are skipped);
- ``... +cudagraphs``: with ``--cudagraphs``, the same compiled with CUDA graphs at batch 1.

``--profile`` prints the 15 CUDA kernels taking the most time in bf16 eager runs at batch 8
(``batched`` and ``fused_up``). It also reports how far the fast paths are from the reference
maths (max |diff| on [-1, 1] images / W+ codes). Needs only torch, numpy and this package.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))

from latentdub.nets.psp import PspModel, build_encoder  # noqa: E402
from latentdub.nets.stylegan2 import Generator, compiled_synthesis  # noqa: E402
from latentdub.toolkit.core.devices import set_tf32, synchronize  # noqa: E402

#: rosinality stylegan2-pytorch (CUDA ops) and pSp, images/s on an H200 (numbers from the task brief).
REFERENCE = {("generator", 1): 102, ("generator", 8): 272, ("generator", 32): 296, ("psp", 32): 637, ("psp bf16", 32): 796}


def timed(fn, device: torch.device, batch: int, min_time: float, min_iters: int, warmup: int) -> float:
    """Images per second of ``fn()`` (after ``warmup`` calls; at least ``min_iters`` and ``min_time`` s)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    iters, start = 0, time.perf_counter()
    while True:
        fn()
        iters += 1
        if iters >= min_iters:
            synchronize(device)
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                return batch * iters / elapsed


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def profile_table(fn, device: torch.device, iters: int = 3, rows: int = 15) -> str:
    """The ``rows`` CUDA kernels with the most total time, per call of ``fn`` (on a CPU: CPU ops summed over ``iters`` calls)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    fn()
    synchronize(device)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(iters):
            fn()
        synchronize(device)
    events = prof.key_averages()
    if not cuda:
        return events.table(sort_by="self_cpu_time_total", row_limit=rows)
    kernels = sorted((e for e in events if e.device_type == torch.autograd.DeviceType.CUDA), key=lambda e: e.self_device_time_total, reverse=True)
    total = sum(e.self_device_time_total for e in kernels) or 1.0
    lines = [f"{'ms/call':>8} {'share':>6} {'launches/call':>13}  kernel", f"{'-' * 8} {'-' * 6} {'-' * 13}  ------"]
    for e in kernels[:rows]:
        lines.append(f"{e.self_device_time_total / 1000 / iters:8.2f} {100 * e.self_device_time_total / total:5.1f}% {e.count / iters:13.0f}  {e.key[:110]}")
    lines.append(f"{total / 1000 / iters:8.2f} 100.0% {sum(e.count for e in kernels) / iters:13.0f}  (all {len(kernels)} kernels)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    p.add_argument("--quick", action="store_true", help="tiny networks (64 px generator, narrow encoder): smoke test")
    p.add_argument("--compile", action="store_true", help="also time the torch.compile'd bf16 generator (batch sizes of --compile-batches)")
    p.add_argument("--compile-batches", default="8,32", help="batch sizes to compile for, each a separate compile (default 8,32)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs (default: torch's default)")
    p.add_argument("--compile-modconv", default="fused_up", choices=["batched", "fused_up"], help="modulated-conv path that gets compiled")
    p.add_argument("--cudagraphs", action="store_true", help="also time the compiled generator with CUDA graphs (mode reduce-overhead) at batch 1")
    p.add_argument("--profile", action="store_true", help="print the top 15 CUDA kernels of bf16 eager generators at batch 8")
    p.add_argument("--budget", type=float, default=270.0, help="seconds; compiles that would end later are skipped (default 270)")
    p.add_argument("--min-time", type=float, default=None, help="seconds timed per measurement (default 1.0, quick 0.2)")
    p.add_argument("--out", type=Path, help="write the markdown report here too")
    args = p.parse_args(argv)

    started = time.perf_counter()
    device = torch.device(args.device)
    batches = [int(b) for b in args.batches.split(",")]
    min_time = args.min_time if args.min_time is not None else (0.2 if args.quick else 1.0)
    warmup, min_iters = (1, 2) if args.quick else (2, 3)
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
    notes: list[str] = []
    profiles: list[str] = []

    def configure(modconv: str, tf32: bool, channels_last: bool) -> None:
        set_tf32(tf32)
        gen.set_modconv(modconv)
        gen.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def latents(b: int) -> torch.Tensor:
        return gen.latent_avg + 0.7 * torch.randn(b, gen.n_latent, 512, device=device)

    def gen_variant(name: str, modconv: str, tf32: bool, bf16: bool, channels_last: bool, sizes: list[int] | None = None, compiled: bool = False, compile_mode: str | None = None) -> None:
        """Time one generator set-up at ``sizes`` (default: every batch size); ``compiled``: one compile per size."""
        configure(modconv, tf32, channels_last)
        run = compiled_synthesis(gen, mode=compile_mode) if compiled else gen.synthesize_wplus
        last_compile = 0.0 if args.quick else 60.0  # seconds; a guess until the first compile is timed
        for b in sorted(sizes or batches, reverse=compiled):  # compiles: the largest size first
            left = args.budget - (time.perf_counter() - started)
            if compiled and left < 1.5 * last_compile + 10:
                notes.append(f"{name} batch {b}: skipped, {left:.0f} s of the --budget left (a compile takes ~{last_compile:.0f} s)")
                print(notes[-1], flush=True)
                continue
            w = latents(b)
            try:
                with torch.no_grad(), autocast(device, bf16):
                    if compiled:
                        t0 = time.perf_counter()
                        run(w)
                        synchronize(device)
                        last_compile = time.perf_counter() - t0
                        notes.append(f"{name} batch {b}: first call (compile) {last_compile:.0f} s")
                        print(notes[-1], flush=True)
                    ips = timed(lambda: run(w), device, b, min_time, min_iters, warmup)
            except torch.cuda.OutOfMemoryError:
                ips = float("nan")
                torch.cuda.empty_cache()
            except Exception as exc:  # a compiler failure must not cost the rest of the report
                if not compiled:
                    raise
                notes.append(f"{name} batch {b}: failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                print(notes[-1], flush=True)
                return
            rows.append(("generator", name, b, ips))
            print(f"generator {name:>24} batch {b:>3}: {ips:8.1f} img/s", flush=True)

    def gen_profile(modconv: str, b: int = 8) -> None:
        configure(modconv, tf32=True, channels_last=True)
        w = latents(b)
        with torch.no_grad(), autocast(device, True):
            table = profile_table(lambda: gen.synthesize_wplus(w), device)
        profiles.append(f"bf16 {modconv}, batch {b}:\n\n```\n{table}\n```")
        print(profiles[-1], flush=True)

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
            print(f"psp       {name:>24} batch {b:>3}: {ips:8.1f} img/s", flush=True)

    # agreement with the reference maths (batch 2, const noise)
    w = gen.latent_avg + 0.7 * torch.randn(2, gen.n_latent, 512, device=device, generator=None)
    x = torch.rand(2, 3, enc_input, enc_input, device=device) * 2 - 1
    with torch.no_grad():
        configure("grouped", tf32=False, channels_last=False)
        ref_img = gen.synthesize_wplus(w)
        ref_w = psp.encode(x)
        checks.append(f"generator image range |max| = {ref_img.abs().max().item():.3f}")
        for modconv in ("batched", "fused_up"):
            configure(modconv, tf32=False, channels_last=False)
            diff = (gen.synthesize_wplus(w) - ref_img).abs()
            checks.append(f"generator fp32 {modconv} vs reference (grouped), no TF32: max |diff| = {diff.max().item():.2e}")
            configure(modconv, tf32=True, channels_last=True)
            diff = (gen.synthesize_wplus(w) - ref_img).abs()
            checks.append(f"generator fp32 {modconv} TF32 channels_last vs reference: max |diff| = {diff.max().item():.2e}, mean = {diff.mean().item():.2e}")
            with autocast(device, True):
                diff = (gen.synthesize_wplus(w).float() - ref_img).abs()
            checks.append(f"generator bf16 {modconv} vs reference: max |diff| = {diff.max().item():.2e}, mean = {diff.mean().item():.2e}")
        set_tf32(True)
        tf32_w = psp.encode(x)
        with autocast(device, True):
            bf16_w = psp.encode(x).float()
    wscale = ref_w.abs().mean().item()
    checks.append(f"pSp W+ mean |w| = {wscale:.3f}; TF32 vs fp32 max |diff| = {(tf32_w - ref_w).abs().max().item():.2e}; bf16 vs fp32 max |diff| = {(bf16_w - ref_w).abs().max().item():.2e}")
    for line in checks:
        print(line, flush=True)

    gen_variant("reference", "grouped", tf32=False, bf16=False, channels_last=False)
    gen_variant("fp32", "batched", tf32=True, bf16=False, channels_last=True)
    gen_variant("bf16", "batched", tf32=True, bf16=True, channels_last=True)
    gen_variant("fp32 fused_up", "fused_up", tf32=True, bf16=False, channels_last=True)
    gen_variant("bf16 fused_up", "fused_up", tf32=True, bf16=True, channels_last=True)
    enc_variant("fp32 (no TF32)", tf32=False, bf16=False, channels_last=False)
    enc_variant("fp32", tf32=True, bf16=False, channels_last=True)
    enc_variant("bf16", tf32=True, bf16=True, channels_last=True)
    if args.profile:
        for modconv in ("batched", "fused_up"):
            gen_profile(modconv)
    if args.compile:
        sizes = [int(b) for b in args.compile_batches.split(",")]
        gen_variant(f"bf16 {args.compile_modconv}+compile", args.compile_modconv, tf32=True, bf16=True, channels_last=True, sizes=sizes, compiled=True, compile_mode=args.compile_mode)
    if args.cudagraphs:
        gen_variant(f"bf16 {args.compile_modconv}+cudagraphs", args.compile_modconv, tf32=True, bf16=True, channels_last=True, sizes=[1], compiled=True, compile_mode="reduce-overhead")

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
        lines.append(f"| {net} | {name} | " + " | ".join("-" if b not in vals else "OOM" if math.isnan(vals[b]) else f"{vals[b]:.1f}" for b in batches) + " |")
    if not args.quick:
        lines += ["", "Reference (rosinality CUDA ops / pSp, H200): generator 102 / 272 / 296 img/s at batch 1 / 8 / 32; pSp 637 img/s (bf16 796) at batch 32."]
    lines += ["", "Agreement with the reference maths (batch 2):", ""] + [f"- {c}" for c in checks]
    if notes:
        lines += ["", "Compilation:", ""] + [f"- {n}" for n in notes]
    if profiles:
        lines += ["", "Profiles:", ""] + profiles
    lines += ["", f"Total run time {time.perf_counter() - started:.0f} s."]
    report = "\n".join(lines) + "\n"
    print()
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
