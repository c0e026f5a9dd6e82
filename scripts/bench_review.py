#!/usr/bin/env python
"""What the review page (``output.review``) costs, and that memory stays flat with it.

    python scripts/bench_review.py VIDEO SPEECH [--loops 10] [--out review.md]

Dubs VIDEO with SPEECH on the ``preview`` preset without and with the review
page, then both looped ``--loops`` times, each in a fresh process (so peak
RSS is the run's own), and prints a markdown table: frames, seconds of the
run's stages, seconds of the ``review`` stage (measuring the output again and
drawing the plot), peak RSS. GRID clip bbaf2n with lbbc2a's speech is the
figure in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))

RUN = """
import json, resource, sys
from latentdub.toolkit.dubbing.pipeline import dub
s = dub(sys.argv[1], sys.argv[2], sys.argv[3], preset="preview", overrides=sys.argv[4:], log=lambda m: None)
print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "frames": s.frames, "stages": s.stage_seconds}))
"""


def _looped(clip: Path, out: Path, times: int) -> Path:
    """``clip`` repeated ``times`` times at its own constant frame rate, H.264/AAC."""
    from latentdub.toolkit.media.video import ffmpeg_exe, probe_video

    rate = str(probe_video(clip).fps)
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-stream_loop", str(times - 1), "-i", str(clip), "-fps_mode", "cfr", "-r", rate,
                    "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-c:a", "aac", str(out)], check=True)
    return out


def _measure(video: Path, speech: Path, out: Path, review: bool) -> dict:
    args = [sys.executable, "-c", RUN, str(video), str(speech), str(out), *(["output.review=true"] if review else [])]
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", type=Path)
    parser.add_argument("speech", type=Path)
    parser.add_argument("--loops", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="Also write the table to this markdown file.")
    opts = parser.parse_args()
    rows = ["| clip | review | frames | run s (without review) | review s | peak RSS MiB |", "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="latentdub-bench-review-") as tmp:
        work = Path(tmp)
        clips = [("1x", opts.video, opts.speech),
                 (f"{opts.loops}x", _looped(opts.video, work / "long.mp4", opts.loops), _looped(opts.speech, work / "long-speech.mp4", opts.loops))]
        for label, video, speech in clips:
            for review in (False, True):
                r = _measure(video, speech, work / f"{label}-{review}.mp4", review)
                stages = dict(r["stages"])
                seconds = stages.pop("review", 0.0)
                rows.append(f"| {label} | {'yes' if review else 'no'} | {r['frames']} | {sum(stages.values()):.2f} | "
                            f"{seconds:.2f} | {r['peak_mib']:.0f} |")
    text = "\n".join([f"{platform.node()} ({platform.processor() or platform.machine()}), Python {platform.python_version()}", "", *rows])
    print(text)
    if opts.out:
        opts.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
