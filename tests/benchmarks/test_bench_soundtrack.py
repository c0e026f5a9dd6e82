"""Speed and peak memory of preparing the delivered sound track (48 kHz stereo 24-bit speech).

Run with ``python -m pytest tests/benchmarks/test_bench_soundtrack.py --benchmark-enable -s``;
the memory check runs in every test run (memory must not grow with the speech's length).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .. import media

PEAK_SCRIPT = """
import json, resource, sys, tempfile, time
from pathlib import Path
from latentdub.toolkit.core.presets import OutputConfig, SpeechConfig
from latentdub.toolkit.dubbing.soundtrack import choose_format, write_track
from latentdub.toolkit.dubbing.timing import plan_timeline
from latentdub.toolkit.media.audio import probe_audio
speech, codec, seconds = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
fmt = choose_format(probe_audio(speech), OutputConfig(audio_codec=codec), Path("out.mkv"))
edits = SpeechConfig(trim_start=0.5, fade_in=0.2, fade_out=0.5, loudness=-20.0)
timeline = plan_timeline(int(seconds * 25) + 50, 25.0, seconds - 0.5, "pad", 0.1)
start = time.perf_counter()
with tempfile.TemporaryDirectory() as tmp:
    write_track(fmt, edits, timeline, Path(tmp))
print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": time.perf_counter() - start}))
"""


def long_speech(clip: Path, out: Path, seconds: float) -> Path:
    """``seconds`` of the clip's speech looped, 48 kHz stereo 24-bit WAV."""
    media.ffmpeg("-stream_loop", "-1", "-i", str(clip), "-vn", "-t", str(seconds), "-af", "aresample=48000:resampler=soxr",
                 "-ac", "2", "-c:a", "pcm_s24le", str(out))
    return out


def _run(speech: Path, codec: str, seconds: float) -> dict:
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(speech), codec, str(seconds)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_track_memory_is_flat_in_speech_length(grid_clips, tmp_path):
    """Peak RSS preparing a 10x longer track (edits, loudness, fit) stays within 15% of the short one's."""
    short = _run(long_speech(grid_clips[3], tmp_path / "short.wav", 30.0), "pcm", 30.0)
    long = _run(long_speech(grid_clips[3], tmp_path / "long.wav", 300.0), "pcm", 300.0)
    print(f"\ntrack prep, 48 kHz stereo 24-bit: 30 s {short['peak_mib']:.0f} MiB {short['seconds']:.2f} s; "
          f"300 s {long['peak_mib']:.0f} MiB {long['seconds']:.2f} s")
    assert long["peak_mib"] < short["peak_mib"] * 1.15, (short, long)


@pytest.mark.parametrize("codec", ["pcm", "aac"])
def test_bench_write_track(benchmark, grid_clips, tmp_path, codec):
    """Seconds to decode, edit (trim, fades, loudness) and fit 60 s of speech into the encoder's input."""
    from latentdub.toolkit.core.presets import OutputConfig, SpeechConfig
    from latentdub.toolkit.dubbing.soundtrack import choose_format, write_track
    from latentdub.toolkit.dubbing.timing import plan_timeline
    from latentdub.toolkit.media.audio import probe_audio

    speech = long_speech(grid_clips[3], tmp_path / "minute.wav", 60.0)
    fmt = choose_format(probe_audio(speech), OutputConfig(audio_codec=codec), Path("out.mkv"))
    edits = SpeechConfig(trim_start=0.5, fade_in=0.2, fade_out=0.5, loudness=-20.0)
    timeline = plan_timeline(1550, 25.0, 59.5, "pad", 0.1)
    track = benchmark.pedantic(write_track, args=(fmt, edits, timeline, tmp_path), rounds=3, iterations=1)
    assert track.gain_db is not None and (tmp_path / "speech.track.raw").stat().st_size > 0
