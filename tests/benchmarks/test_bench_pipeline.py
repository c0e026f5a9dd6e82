"""Throughput and peak memory of the dubbing pipeline on GRID clips (preview and tiny presets).

Run with ``python -m pytest tests/benchmarks --benchmark-enable`` to time; the
memory check runs in every test run because flat memory is a requirement, not
a speed figure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from latentdub.toolkit.dubbing.pipeline import dub

from .. import media

PEAK_SCRIPT = """
import json, resource, sys
from latentdub.toolkit.dubbing.pipeline import dub
s = dub(sys.argv[1], sys.argv[2], sys.argv[3], preset=sys.argv[4], log=lambda m: None)
print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "frames": s.frames,
                  "seconds": sum(s.stage_seconds.values()), "stages": s.stage_seconds}))
"""


def _run_measured(video: Path, audio: Path, out: Path, preset: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(video), str(audio), str(out), preset], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("preset", ["preview", "tiny"])
def test_bench_dub_fps(benchmark, grid_clips, tmp_path, preset):
    """Frames per second of decode + detect + align + motion + render + composite + encode."""
    video, speech = grid_clips[0], grid_clips[3]
    summary = benchmark.pedantic(
        dub, args=(video, speech, tmp_path / "o.mp4"), kwargs={"preset": preset, "log": lambda m: None}, rounds=1, iterations=1
    )
    total = sum(summary.stage_seconds.values())
    benchmark.extra_info.update({"frames": summary.frames, "fps": summary.frames / total, "stages": summary.stage_seconds})
    assert summary.frames_with_face == summary.frames


def test_memory_is_flat_in_clip_length(grid_clips, tmp_path):
    """Peak RSS dubbing a 10x longer clip stays within 15% of the short clip's."""
    video, speech = grid_clips[0], grid_clips[3]
    long_video = media.looped(video, tmp_path / "long.mp4", 10)
    long_speech = media.looped(speech, tmp_path / "long_speech.mp4", 10)
    short = _run_measured(video, speech, tmp_path / "short.mp4", "preview")
    long = _run_measured(long_video, long_speech, tmp_path / "long_out.mp4", "preview")
    print(f"\npeak RSS: {short['frames']} frames {short['peak_mib']:.0f} MiB; {long['frames']} frames {long['peak_mib']:.0f} MiB; "
          f"{short['frames'] / short['seconds']:.1f} vs {long['frames'] / long['seconds']:.1f} frames/s")
    assert long["frames"] >= 9 * short["frames"]
    assert long["peak_mib"] < short["peak_mib"] * 1.15, (short, long)
