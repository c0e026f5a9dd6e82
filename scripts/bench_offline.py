"""Offline renderers side by side: ``warp`` (preset ``preview``) and ``mouthbank`` (preset ``offline``).

Quality, on the eight GRID clips (CC BY 4.0, Cooke et al. 2006), clip i
dubbed with the speech of clip i + 1 (as ``tests/test_preview_sync.py``):

* sync: Pearson r of the output's mouth opening (dlib 68 points, inner-lip gap
  over IOD) against the speech's own clip;
* sharpness: variance of the Laplacian (grey, 0-255) of the mouth box of the
  aligned crop (the source's alignment, so every video is cut the same way);
* stability: mean absolute frame-to-frame change (grey levels) inside the
  source's mouth mask of the aligned crop.

Speed: a GRID clip scaled to 1280x720 and looped to ``--seconds``, dubbed in
this process (frames/s from the run's stage times and from wall time; the
first run loads the models for both), then by a fresh ``latentdub dub``
process each (wall time, imports and model loading included).
Memory: peak RSS of a fresh ``latentdub dub -p offline`` process for the
short clip and for it looped 10x (``scripts/measure_peak_memory.py``).

    python scripts/bench_offline.py [--quality] [--speed] [--memory]   # Markdown tables on stdout
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
GRID = REPO.parent / "shared" / "data" / "grid"
RENDERERS = {"warp": "preview", "mouthbank": "offline"}


def _dlib():
    from latentdub.toolkit.core.plugins import get_component

    comp = get_component("detector", "dlib")
    return comp.factory(comp.config(), None)


def measure(path: Path, detector, source_track) -> dict[str, np.ndarray]:
    """Per-frame opening (dlib on ``path`` itself), and sharpness and change measured through ``source_track``'s alignments."""
    import cv2

    from latentdub.toolkit.core.presets import TrackConfig
    from latentdub.toolkit.faces.align import warp_to_crop
    from latentdub.toolkit.faces.masks import inter_ocular, mouth_opening, region_mask
    from latentdub.toolkit.faces.track import analyse_video
    from latentdub.toolkit.media.video import read_frames

    track = analyse_video(read_frames(path), detector, TrackConfig(detect_every=1, smoothing=1))
    opening = np.array([mouth_opening(lm) if not np.isnan(lm).any() else np.nan for lm in track.landmarks68])
    sharp, change, previous = [], [], None
    for frame in read_frames(path):
        tracked = source_track[min(frame.index, source_track.n_frames - 1)]
        if tracked.face is None:
            previous = None
            continue
        crop = cv2.cvtColor(warp_to_crop(frame.image, tracked.alignment), cv2.COLOR_RGB2GRAY).astype(np.float32)
        points = tracked.alignment.apply(tracked.face.landmarks68)
        iod = inter_ocular(points)
        x0, y0 = np.floor(points[48:68].min(0) - 0.25 * iod).astype(int)
        x1, y1 = np.ceil(points[48:68].max(0) + 0.25 * iod).astype(int)
        sharp.append(float(cv2.Laplacian(crop[y0:y1, x0:x1], cv2.CV_32F).var()))
        mask, (mx0, my0, mx1, my1) = region_mask(points, crop.shape, "mouth", dilate=0.1, feather=0.05)
        if previous is not None:
            diff = np.abs(crop - previous)[my0:my1, mx0:mx1]
            change.append(float((diff * mask).sum() / max(mask.sum(), 1e-6)))
        previous = crop
    return {"opening": opening, "sharpness": np.array(sharp), "change": np.array(change)}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    ok = ~(np.isnan(a) | np.isnan(b))
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def quality(folder: Path, settings: list[str], shift: int = 1) -> list[str]:
    from latentdub.toolkit.core.presets import TrackConfig
    from latentdub.toolkit.dubbing.pipeline import dub
    from latentdub.toolkit.faces.track import analyse_video
    from latentdub.toolkit.media.video import read_frames

    detector = _dlib()
    clips = sorted(GRID.glob("*.mpg"))
    tracks = {c: analyse_video(read_frames(c), detector, TrackConfig(detect_every=1, smoothing=1)) for c in clips}
    own = {c: measure(c, detector, tracks[c]) for c in clips}
    rows = ["| A -> B | warp r | mouthbank r | sharpness source / warp / mouthbank | change source / warp / mouthbank | mouthbank fallback frames |",
            "|---|---|---|---|---|---|"]
    totals: dict[str, list[float]] = {}
    for i, a in enumerate(clips):
        b = clips[(i + shift) % len(clips)]
        got, fallback = {}, 0
        for name, preset in RENDERERS.items():
            out = folder / f"{a.stem}-{b.stem}-{name}.mp4"
            extra = settings if name == "mouthbank" else []
            summary = dub(a, b, out, preset=preset, overrides=["timing.length_policy=trim", *extra], log=lambda m: None)
            got[name] = measure(out, detector, tracks[a])
            fallback = summary.frames_by_fallback if name == "mouthbank" else fallback
        values = {
            "r_warp": pearson(got["warp"]["opening"], own[b]["opening"]), "r_bank": pearson(got["mouthbank"]["opening"], own[b]["opening"]),
            "sharp_src": own[a]["sharpness"].mean(), "sharp_warp": got["warp"]["sharpness"].mean(), "sharp_bank": got["mouthbank"]["sharpness"].mean(),
            "chg_src": own[a]["change"].mean(), "chg_warp": got["warp"]["change"].mean(), "chg_bank": got["mouthbank"]["change"].mean(),
            "fallback": fallback,
        }
        for k, v in values.items():
            totals.setdefault(k, []).append(float(v))
        rows.append(_row(f"{a.stem} -> {b.stem}", values))
    rows.append(_row("mean", {k: float(np.mean(v)) for k, v in totals.items()}))
    behind = np.array(totals["r_warp"]) - np.array(totals["r_bank"])
    worst = int(np.argmax(behind))
    rows.append(f"\nLargest shortfall of the mouth bank's r against warp: {behind[worst]:+.3f} ({clips[worst].stem} -> {clips[(worst + shift) % len(clips)].stem}).")
    return rows


def _row(label: str, v: dict[str, float]) -> str:
    return (f"| {label} | {v['r_warp']:+.2f} | {v['r_bank']:+.2f} | {v['sharp_src']:.0f} / {v['sharp_warp']:.0f} / {v['sharp_bank']:.0f} "
            f"| {v['chg_src']:.2f} / {v['chg_warp']:.2f} / {v['chg_bank']:.2f} | {v['fallback']:.1f} |")


def speed(folder: Path, seconds: float, settings: list[str]) -> list[str]:
    from latentdub.toolkit.dubbing.pipeline import dub
    from measure_peak_memory import _ffmpeg, _peak_of_child

    clip = folder / "720p.mp4"
    _ffmpeg("-stream_loop", "-1", "-i", str(GRID / "bbaf2n.mpg"), "-t", str(seconds), "-vf", "scale=1280:720,setsar=1", "-r", "25",
            "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(clip))
    rows = ["| preset | frames | stage seconds | frames/s (stages) | wall s | frames/s (wall) |", "|---|---|---|---|---|---|"]
    for name, preset in RENDERERS.items():
        start = time.perf_counter()
        summary = dub(clip, GRID / "lbbc2a.mpg", folder / f"720p-{name}.mp4", preset=preset, overrides=["timing.length_policy=pad", *settings], log=lambda m: None)
        wall = time.perf_counter() - start
        total = sum(summary.stage_seconds.values())
        stages = ", ".join(f"{k} {v:.1f}" for k, v in summary.stage_seconds.items())
        rows.append(f"| {preset} ({name}) | {summary.frames} | {stages} | {summary.frames / total:.1f} | {wall:.1f} | {summary.frames / wall:.1f} |")
    for name, preset in RENDERERS.items():  # what a user waits for: a fresh `latentdub dub` process, imports and model loading included
        _, wall = _peak_of_child([sys.executable, "-m", "latentdub.cli", "dub", str(clip), str(GRID / "lbbc2a.mpg"), "-o", str(folder / f"cli-{name}.mp4"),
                                  "-p", preset, "-q", "--set", "timing.length_policy=pad", *(f"--set={s}" for s in settings)])
        rows.append(f"| {preset} ({name}), fresh CLI process | {summary.frames} | - | - | {wall:.1f} | {summary.frames / wall:.1f} |")
    return rows


def memory(folder: Path) -> list[str]:
    from measure_peak_memory import _ffmpeg, _peak_of_child

    rows = ["| clip | frames | peak RSS (MiB) | wall (s) |", "|---|---|---|---|"]
    _ffmpeg("-i", str(GRID / "lbbc2a.mpg"), "-t", "1", "-ac", "1", "-ar", "16000", str(folder / "speech.wav"))
    for loops in (1, 10):
        clip = folder / f"loop{loops}.mp4"
        _ffmpeg("-stream_loop", str(loops - 1), "-i", str(GRID / "bbaf2n.mpg"), "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(clip))
        peak, wall = _peak_of_child([sys.executable, "-m", "latentdub.cli", "dub", str(clip), str(folder / "speech.wav"),
                                     "-o", str(folder / f"out{loops}.mp4"), "-p", "offline", "-q"])
        rows.append(f"| bbaf2n looped {loops}x | {75 * loops} | {peak:.0f} | {wall:.1f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the 720p clip")
    parser.add_argument("--shift", type=int, default=1, help="--quality dubs clip i with the speech of clip i + SHIFT (1: the pairs of tests/test_preview_sync.py)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="preset override (repeatable): every run of --speed, the mouthbank runs of --quality")
    args = parser.parse_args()
    everything = not (args.quality or args.speed or args.memory)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for wanted, run in ((args.quality, lambda: quality(folder, args.set, args.shift)), (args.speed, lambda: speed(folder, args.seconds, args.set)), (args.memory, lambda: memory(folder))):
            if wanted or everything:
                print("\n".join(run()), "", sep="\n", flush=True)


if __name__ == "__main__":
    main()
