"""Helpers that make test media with the bundled ffmpeg (looped, VFR, two-face, silent clips)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from latentdub.toolkit.media.video import ffmpeg_exe


def ffmpeg(*args: str) -> None:
    """Run the bundled ffmpeg quietly; raise with its stderr on failure."""
    proc = subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-nostdin", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)


def looped(clip: Path, out: Path, times: int) -> Path:
    """``clip`` repeated ``times`` times (video and audio), H.264/AAC at the clip's constant rate."""
    from latentdub.toolkit.media.video import probe_video

    rate = str(probe_video(clip).fps)
    ffmpeg("-stream_loop", str(times - 1), "-i", str(clip), "-fps_mode", "cfr", "-r", rate, "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-c:a", "aac", str(out))
    return out


def two_faces(clip_a: Path, clip_b: Path, out: Path) -> Path:
    """Two GRID speakers side by side; the left one scaled up so it is the largest face."""
    ffmpeg("-i", str(clip_a), "-i", str(clip_b), "-filter_complex",
           "[0:v]scale=450:360[a];[1:v]scale=360:288,pad=360:360:0:36[b];[a][b]hstack=inputs=2[v]",
           "-map", "[v]", "-map", "0:a", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-shortest", str(out))
    return out


def variable_frame_rate(clip: Path, out: Path) -> Path:
    """The clip with irregular frame timestamps (frames 20-39 spaced twice as far), kept VFR in MKV."""
    ffmpeg("-i", str(clip), "-vf", "setpts='if(between(N,20,39),(2*N-20)/25/TB,if(gt(N,39),(N+20)/25/TB,N/25/TB))'",
           "-fps_mode", "vfr", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(out))
    return out


def without_audio(clip: Path, out: Path) -> Path:
    """The clip's video stream only."""
    ffmpeg("-i", str(clip), "-an", "-c:v", "libx264", "-preset", "ultrafast", str(out))
    return out


def audio_only(clip: Path, out: Path) -> Path:
    """The clip's audio as 16-bit WAV."""
    ffmpeg("-i", str(clip), "-vn", "-ac", "1", "-ar", "16000", str(out))
    return out


def empty_wav(out: Path) -> Path:
    """A valid WAV file holding zero samples."""
    import wave

    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"")
    return out


def faceless(out: Path, seconds: float = 2.0) -> Path:
    """A clip of drifting colour noise with a tone: no face anywhere."""
    ffmpeg("-f", "lavfi", "-t", str(seconds), "-i", "cellauto=s=320x240:rate=25", "-f", "lavfi", "-i", f"sine=frequency=300:duration={seconds}",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(out))
    return out


def garbage(out: Path, size: int = 50_000) -> Path:
    """Random bytes with a video file name."""
    out.write_bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    return out


def studio_speech(clip: Path, out: Path, seconds: float, rate: int = 48000, codec: str = "pcm_s24le", volume: float = 0.5) -> Path:
    """The first ``seconds`` of the clip's speech as ``rate`` Hz stereo ``codec`` (24-bit WAV by default).

    Resampled with soxr in float, so the samples use all 24 bits; the right
    channel is a different mix than the left, so a swap or downmix shows.
    """
    ffmpeg("-i", str(clip), "-vn", "-t", str(seconds),
           "-af", f"aresample={rate}:resampler=soxr,pan=stereo|c0={volume}*c0|c1={0.6 * volume}*c1+{0.2 * volume}*c0",
           "-c:a", codec, *(["-sample_fmt", "s32"] if codec == "flac" else []), str(out))
    return out


def decode_s32(path: Path, channels: int) -> np.ndarray:
    """The first audio stream of ``path`` decoded by the bundled ffmpeg as 32-bit integers ``[n, channels]``."""
    proc = subprocess.run([ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0", "-f", "s32le", "-"], capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.decode(errors="replace"))
    return np.frombuffer(proc.stdout, "<i4").reshape(-1, channels)
