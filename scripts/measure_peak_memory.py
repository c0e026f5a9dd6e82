"""Peak memory of ``latentdub dub`` against frame size and clip length (tiny preset, CPU).

Each run is a fresh ``python -m latentdub.cli dub`` process; its peak resident
memory (of its largest process) is read from ``wait4`` when it exits. Clips are a
GRID clip (CC BY 4.0, Cooke et al. 2006) scaled to each size and looped to
each length.

    python scripts/measure_peak_memory.py [GRID_CLIP]    # prints a Markdown table
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: (width, height, seconds) of each measured clip.
CASES = ((360, 288, 1.0), (360, 288, 8.0), (1920, 1080, 1.0), (4000, 4000, 0.2), (4000, 4000, 1.0))


def _ffmpeg(*args: str) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-nostdin", *args], check=True)


def _peak_of_child(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB of the largest process of the run, wall seconds) of ``cmd``."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO / "src")}, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main(argv: list[str]) -> None:
    grid = Path(argv[0]) if argv else REPO.parent / "shared" / "data" / "grid" / "bbaf2n.mpg"
    rows = ["| frame | seconds | frames | peak RSS (MiB) | wall (s) |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _ffmpeg("-i", str(grid), "-t", "1", "-ac", "1", "-ar", "16000", str(folder / "speech.wav"))
        for width, height, seconds in CASES:
            clip = folder / f"{width}x{height}-{seconds}.mp4"
            _ffmpeg("-stream_loop", "-1", "-i", str(grid), "-t", str(seconds), "-vf", f"scale={width}:{height},setsar=1",
                    "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(clip))
            out = folder / f"out-{clip.name}"
            peak, wall = _peak_of_child([sys.executable, "-m", "latentdub.cli", "dub", str(clip), str(folder / "speech.wav"),
                                         "-o", str(out), "-p", "tiny", "-q"])
            rows.append(f"| {width}x{height} | {seconds:g} | {round(seconds * 25)} | {peak:.0f} | {wall:.1f} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
