#!/usr/bin/env python
"""The whole 1024 px dub on one GPU, overlapped end to end: frames/s, seconds per stage, peak memory.

    python scripts/bench_gpu_dub.py --out dub.md                 # GPU: 10 s and 60 s 1080p clips, ~5-8 minutes
    python scripts/bench_gpu_dub.py --quick --out dub.md         # GPU: a 4 s clip only, plus the network checks
    python scripts/bench_gpu_dub.py --cpu-smoke                  # no GPU: tiny networks, 2 s at 360x288 (checks the script)

Footage: a GRID clip (CC BY 4.0, Cooke et al. 2006; ``../shared/data/grid`` or
``LATENTDUB_TEST_DATA``) scaled to 1080 px high, padded to 1920x1080 and looped
to the clip length at 25 fps; speech: another GRID clip, looped. Networks:
random weights of the real architecture (pSp IR-SE50 GradualStyleEncoder,
18 styles, 256 px input; StyleGAN2 1024 px config-f, bf16 ``fused_up``), the
audio2latent motion model (random), face detection every ``--detect-every``
frames (``--detector``: dlib 68 points on the CPU, refitted in between; or
MTCNN 5 points on the GPU, interpolated in between), the soft compositor on
the lower face.

The run uses ``runtime.overlap: true`` (decode, render, composite, encode on
threads with bounded queues) and torch frame ops on the GPU;
``--cuda-graphs`` adds ``runtime.cuda_graphs``; ``--codec`` sets
``output.video_codec`` (``auto``: NVENC when this ffmpeg and machine can).
It reports end-to-end frames/s (output frames over the summed stage seconds of
the run summary, decode to encode, as docs/benchmarks.md counts them; over the
wall time of the whole call, network building included; and over the synthesis
pass alone), each stage's seconds from the run summary and
each overlapped stage's busy seconds (after one unreported 1 s warm-up dub), peak GPU memory (allocated by torch) and
peak resident memory of the process, for each clip length: memory should be
the same for 10 s and 60 s.

Then (unless ``--no-nets``) the two network targets of issue 15: the
generator alone at batch 1 / 8 / 32 (images/s, eager and with CUDA graphs),
and 350 PTI updates (batch 1, LPIPS VGG at 256 px with a random trunk, no
locality) eager and with a graphed update.

Exits 2 with a message when CUDA is missing (unless ``--cpu-smoke``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))

#: Issue 15's targets on one H100/H200.
TARGET_FPS = 150.0
TARGET_GEN = {1: 204.0, 32: 600.0}
TARGET_PTI_S = 6.0


def grid_folder() -> Path | None:
    env = os.environ.get("LATENTDUB_TEST_DATA")
    for base in ([Path(env)] if env else []) + [ROOT.parent / "shared" / "data", ROOT / "shared" / "data"]:
        if (base / "grid").is_dir():
            return base / "grid"
    return None


def ffmpeg(*args: str) -> None:
    from latentdub.toolkit.media.video import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-nostdin", *args], check=True)


def make_clip(grid: Path, seconds: float, out: Path, size: tuple[int, int]) -> Path:
    """GRID footage scaled to ``size`` (height first, padded to the width) and looped to ``seconds`` at 25 fps."""
    w, h = size
    scale = f"scale=-2:{h},pad={w}:{h}:(ow-iw)/2:0" if w >= h * 360 / 288 else f"scale={w}:{h}"
    ffmpeg("-stream_loop", "-1", "-i", str(grid / "bbaf2n.mpg"), "-t", f"{seconds}", "-vf", f"{scale},fps=25", "-c:v", "libx264", "-preset",
           "ultrafast", "-crf", "16", "-pix_fmt", "yuv420p", "-c:a", "aac", str(out))
    return out


def make_speech(grid: Path, seconds: float, out: Path) -> Path:
    ffmpeg("-stream_loop", "-1", "-i", str(grid / "lbbc2a.mpg"), "-t", f"{seconds}", "-vn", "-ac", "1", "-ar", "16000", str(out))
    return out


def preset_yaml(args, folder: Path) -> Path:
    """The benchmark's preset: the paper's 1024 px stack with random weights (``--cpu-smoke``: tiny networks)."""
    if args.cpu_smoke:
        gen = "  random_init: true\n"
        enc = "  random_init: true\n  input_size: 64\n"
        crop, batch = 64, 8
    else:
        gen = "  random_init: true\n  size: 1024\n  channel_max: 512\n  n_mlp: 8\n  channel_multiplier: 2\n  precision: bf16\n  channels_last: true\n"
        enc = "  random_init: true\n  tiny: false\n  output_size: 1024\n  input_size: 256\n  precision: bf16\n  channels_last: true\n"
        crop, batch = 1024, args.batch
    # MTCNN: faces here are over 300 px high, so the image pyramid can start at 100 px faces
    detector = "  plugin: dlib\n" if args.detector == "dlib" else "  plugin: mtcnn\n  min_face_size: 100\n"
    text = f"""description: issue-15 benchmark (random weights of the real architecture)
device: {"cpu" if args.cpu_smoke else "cuda"}
fallback: null
track:
  crop_size: {crop}
  detect_every: {args.detect_every}
detector:
{detector}encoder:
  plugin: psp
{enc}generator:
  plugin: stylegan2
  batch_size: {batch}
{gen}audio_features:
  plugin: mfcc
motion:
  plugin: audio2latent
  random_init: true
renderer:
  plugin: neural
  identity: subspace
  batch_size: {batch}
compositor:
  plugin: soft
  region: lower_face
runtime:
  overlap: true
  frame_ops: torch
  queue_depth: {args.queue_depth}
  cuda_graphs: {str(args.cuda_graphs).lower()}
output:
  video_codec: {args.codec}
  overwrite: true
"""
    path = folder / "bench-dub.yaml"
    path.write_text(text)
    return path


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_dub(args, clip: Path, speech: Path, preset: Path, out: Path) -> dict:
    import torch

    from latentdub.toolkit.dubbing.pipeline import dub

    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    summary = dub(clip, speech, out, preset=str(preset), log=lambda m: None)
    wall = time.perf_counter() - start
    return {
        "frames": summary.frames, "wall": wall, "stages": dict(summary.stage_seconds), "busy": dict(summary.busy_seconds),
        "gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"), "rss_mib": peak_rss_mib(),
        "dubbed": summary.frames_with_face, "notes": list(summary.notes),
    }


def dub_rows(label: str, r: dict) -> list[str]:
    render = r["stages"].get("render", float("nan"))
    total = sum(r["stages"].values())
    stages = ", ".join(f"{k} {v:.2f}" for k, v in r["stages"].items())
    busy = ", ".join(f"{k} {v:.2f}" for k, v in r["busy"].items())
    return [
        (f"| {label} | {r['frames']} ({r['dubbed']} dubbed) | {r['frames'] / total:.1f} | {r['frames'] / r['wall']:.1f} | {r['frames'] / render:.1f} | {r['wall']:.1f} | "
        f"{r['gpu_gib']:.2f} | {r['rss_mib']:.0f} |"),
        f"|  | stages (s): {stages} | | | | | | |",
        f"|  | overlapped stages, busy (s): {busy} | | | | | | |",
    ]


def time_generator(args, device) -> list[str]:
    """Images/s of the 1024 px generator at batch 1 / 8 / 32, eager and with CUDA graphs."""
    import torch

    from latentdub.plugins.stylegan2 import StyleGAN2Config, build_stylegan2
    from latentdub.toolkit.core.build import BuildContext
    from latentdub.toolkit.core.devices import synchronize
    from latentdub.toolkit.core.runtime import RuntimeConfig

    size, cmax = (64, 32) if args.cpu_smoke else (1024, 512)
    what = "tiny 64 px, fp32, CPU: both rows eager" if args.cpu_smoke else "1024 px, bf16, fused_up, channels_last"
    lines = ["", f"| generator ({what}) | batch 1 | batch 8 | batch 32 | max abs difference from eager |", "|---|---|---|---|---|"]
    eager: dict[int, torch.Tensor] = {}
    for graphs in (False, True):
        ctx = BuildContext(device=device, weights=lambda n: Path(n), build=None, seed=0, log=print,
                           runtime=RuntimeConfig(cuda_graphs=graphs, graph_batches=(1, 2, 4, 8, 16, 32)))
        config = StyleGAN2Config(checkpoint=None, random_init=True, size=size, channel_max=cmax, n_mlp=8, precision="fp32" if args.cpu_smoke else "bf16",
                                 channels_last=not args.cpu_smoke, batch_size=32)
        gen = build_stylegan2(config, ctx)
        cells, differences = [], []
        for batch in (1, 8, 32):
            w = torch.randn(batch, gen.n_styles, gen.style_dim, device=device, generator=torch.Generator(device).manual_seed(batch))
            with torch.inference_mode():
                images = gen.synthesize(w).float()
                if graphs:  # the same seed builds the same weights: a replay must give the eager images
                    differences.append((images - eager[batch]).abs().max().item())
                else:
                    eager[batch] = images
                for _ in range(3):
                    gen.synthesize(w)
                synchronize(device)
                n, start = 0, time.perf_counter()
                while time.perf_counter() - start < args.min_time or n < 3:
                    gen.synthesize(w)
                    n += 1
                synchronize(device)
            rate = batch * n / (time.perf_counter() - start)
            aim = TARGET_GEN.get(batch)
            cells.append(f"{rate:.1f}" + (f" (aim {aim:.0f})" if aim else ""))
        difference = f"{max(differences):.2g}" if graphs else ""
        lines.append(f"| {'CUDA graphs' if graphs else 'eager'} | " + " | ".join(cells) + f" | {difference} |")
        del gen
    return lines


def time_pti(args, device) -> list[str]:
    """Seconds for 350 PTI updates (projected from ``--pti-steps``), eager and with the graphed update."""
    import numpy as np
    import torch

    from latentdub.plugins.pti import PtiConfig, PtiFinetuner, crops_to_tensor
    from latentdub.plugins.stylegan2 import StyleGAN2Config, build_stylegan2
    from latentdub.toolkit.core.build import BuildContext
    from latentdub.toolkit.core.devices import synchronize

    size, cmax = (64, 32) if args.cpu_smoke else (1024, 512)
    lines = ["", "| PTI, batch 1, no locality, LPIPS vgg 256 px (random trunk) | ms/update | s per 350 updates | L2, LPIPS after the timed updates |",
             "|---|---|---|---|"]
    ctx = BuildContext(device=device, weights=lambda n: Path(n), build=None, seed=0, log=print)
    gen = build_stylegan2(StyleGAN2Config(checkpoint=None, random_init=True, size=size, channel_max=cmax, n_mlp=8, modconv="auto"), ctx)
    rng = np.random.default_rng(0)
    target = crops_to_tensor(rng.integers(0, 255, (1, size, size, 3), dtype=np.uint8), size, device)
    pivot = gen.latent_avg.reshape(1, 1, -1).expand(1, gen.n_styles, -1).clone()
    for graphs in (False, True):
        config = PtiConfig(pivots="optimise_w", steps=args.pti_steps, lpips_threshold=0.0, locality=False, lpips_random_backbone=True,
                           lpips_net="vgg", batch_size=1)
        ft = PtiFinetuner(config, seed=0, log=print, cuda_graphs=graphs)
        nets = ft.networks(gen)
        lpips = ft.lpips(device)
        warm = PtiFinetuner(dataclasses.replace(config, steps=3), seed=0, log=print, cuda_graphs=graphs)
        warm.tune_weights(nets, pivot, target, lpips)
        synchronize(device)
        start = time.perf_counter()
        updates, _ = ft.tune_weights(nets, pivot, target, lpips)
        synchronize(device)
        ms = (time.perf_counter() - start) * 1000 / max(updates, 1)
        l2, lp = ft.evaluate(nets.tuned, pivot, target, lpips, nets)  # the same updates from the same start: equal up to rounding
        nets.restore()
        lines.append(f"| {'graphed update' if graphs else 'eager'} | {ms:.1f} | {ms * 0.35:.1f} (aim {TARGET_PTI_S:.0f}) | {l2:.5f}, {lp:.5f} |")
        del nets, lpips
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one 4 s clip (no 60 s run), shorter network timings")
    p.add_argument("--cpu-smoke", action="store_true", help="no GPU needed: tiny networks, a 2 s 360x288 clip (checks the script, not a benchmark)")
    p.add_argument("--seconds", type=float, nargs="+", default=None, help="clip lengths (default 10 60; quick 4)")
    p.add_argument("--cuda-graphs", action="store_true", help="set runtime.cuda_graphs in the dub")
    p.add_argument("--codec", default="auto", choices=["auto", "libx264", "h264_nvenc"], help="output.video_codec (default auto)")
    p.add_argument("--batch", type=int, default=8, help="renderer and generator batch (default 8)")
    p.add_argument("--queue-depth", type=int, default=8)
    p.add_argument("--detect-every", type=int, default=5)
    p.add_argument("--detector", default="dlib", choices=["dlib", "mtcnn"], help="dlib (CPU, 68 points) or mtcnn (the run's device, 5 points)")
    p.add_argument("--no-nets", action="store_true", help="skip the generator and PTI timings")
    p.add_argument("--pti-steps", type=int, default=None, help="timed PTI updates (default 60; quick 20)")
    p.add_argument("--min-time", type=float, default=None, help="seconds per generator measurement (default 1; quick 0.3)")
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown report here")
    args = p.parse_args(argv)

    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("bench_gpu_dub: CUDA is not available here; run it on a machine with an NVIDIA GPU "
              "(or --cpu-smoke to check the script with tiny networks)", file=sys.stderr)
        return 2
    grid = grid_folder()
    if grid is None:
        print("bench_gpu_dub: GRID clips not found; set LATENTDUB_TEST_DATA to the folder holding grid/", file=sys.stderr)
        return 2
    seconds = args.seconds or ([2.0] if args.cpu_smoke else [4.0] if args.quick else [10.0, 60.0])
    args.pti_steps = args.pti_steps or (5 if args.cpu_smoke else 20 if args.quick else 60)
    args.min_time = args.min_time if args.min_time is not None else (0.2 if args.cpu_smoke else 0.3 if args.quick else 1.0)
    if args.cpu_smoke:
        args.batch = 8
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    size = (360, 288) if args.cpu_smoke else (1920, 1080)
    lines = [
        (f"bench_gpu_dub on {name}, torch {torch.__version__}, {os.cpu_count()} CPUs; {size[0]}x{size[1]} 25 fps GRID footage, "
        f"{'tiny networks' if args.cpu_smoke else '1024 px pSp + StyleGAN2 (random weights)'}, batch {args.batch}, queue depth {args.queue_depth}, "
        f"{args.detector} every {args.detect_every} frames, cuda graphs {'on' if args.cuda_graphs else 'off'}, codec {args.codec}"),
        "",
        "| clip | frames | e2e frames/s (stages) | frames/s (wall, incl. building networks) | synthesis frames/s | wall s | peak GPU GiB | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-dub-") as tmp:
        folder = Path(tmp)
        preset = preset_yaml(args, folder)
        if not args.cpu_smoke:  # CUDA context, cuDNN autotuning, graph capture: once, before anything is timed
            run_dub(args, make_clip(grid, 1.0, folder / "warm.mp4", size), make_speech(grid, 1.0, folder / "warm.wav"), preset, folder / "warm-dub.mp4")
        for s in seconds:
            clip = make_clip(grid, s, folder / f"clip-{s:g}s.mp4", size)
            speech = make_speech(grid, s, folder / f"speech-{s:g}s.wav")
            result = run_dub(args, clip, speech, preset, folder / f"dub-{s:g}s.mp4")
            rows = dub_rows(f"{s:g} s", result)
            print("\n".join(rows), flush=True)
            lines += rows
            for note in result["notes"]:
                if note.startswith("synthesis"):
                    lines.append(f"|  | {note} | | | | | | |")
            if result["frames"] / sum(result["stages"].values()) < TARGET_FPS and not args.cpu_smoke:
                lines.append(f"|  | below the {TARGET_FPS:.0f} frames/s aim | | | | | | |")
    if not args.no_nets:
        for more in (time_generator(args, device), time_pti(args, device)):
            print("\n".join(more), flush=True)
            lines += more
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
