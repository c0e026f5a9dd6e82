"""Streaming video IO through the ffmpeg binary that imageio-ffmpeg ships.

Frames are decoded one at a time from a pipe (memory does not grow with clip
length), resampled to a constant rate (variable-frame-rate input becomes
constant), rotated upright per the file's display matrix, and handed out as
uint8 RGB ``[H, W, 3]``. Output is H.264 (yuv420p) with the sound track that
toolkit/dubbing/soundtrack.py prepares (:class:`MuxedAudio`), written to a temporary
file beside the target and renamed only when complete.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..core.errors import BadInputError, OutputError
from ..core.files import check_writable_file, temp_beside
from ..core.types import Frame, VideoInfo

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
#: Largest frame dubbed or animated: 8K UHD (7680 x 4320, 33 MP, ~100 MB as RGB). A run keeps a
#: fixed number of frames in memory (reference frames, a render batch, encoder buffers), so its
#: peak memory grows with the frame size, never with the clip's length.
MAX_FRAME_PIXELS = 7680 * 4320


def ffmpeg_exe() -> str:
    """Path of the bundled ffmpeg binary."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _ffmpeg_info(path: Path) -> str:
    if not path.is_file():
        raise BadInputError(f"{path}: file not found; check the path")
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True, errors="replace")
    return proc.stderr


def _parse_duration(text: str) -> Optional[float]:
    m = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", text)
    if not m:
        return None
    h, mnt, s = m.groups()
    return int(h) * 3600 + int(mnt) * 60 + float(s)


def _parse_rotation(text: str) -> int:
    m = re.search(r"rotation of (-?\d+(?:\.\d+)?) degrees", text) or re.search(r"rotate\s*:\s*(-?\d+)", text)
    if not m:
        return 0
    # ffmpeg reports the display matrix rotation counter-clockwise; normalise to [0, 360)
    return int(round(-float(m.group(1)))) % 360 if "rotation of" in m.group(0) else int(m.group(1)) % 360


def probe_video(path: str | Path) -> VideoInfo:
    """Read size, rate, duration, rotation and audio presence of a video file.

    ``n_frames`` is ``round(duration * fps)``, the count :func:`read_frames`
    delivers after constant-rate resampling (give or take one frame at the
    end). Raises :class:`BadInputError` for missing, corrupt or audio-only files.
    """
    path = Path(path)
    text = _ffmpeg_info(path)
    video = re.search(r"Stream #\S+.*?: Video: (.*)", text)
    if "Invalid data found" in text or "could not find codec" in text.lower() or not (video or "Audio:" in text):
        raise BadInputError(f"{path}: not a readable video (corrupt or unknown format); re-encode it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4")
    if not video:
        raise BadInputError(f"{path}: has no video stream (is it an audio file?); give a video as VIDEO and the speech as AUDIO")
    line = video.group(1)
    size = re.search(r"(\d{2,5})x(\d{2,5})", line)
    if not size:
        raise BadInputError(f"{path}: cannot read the video frame size; re-encode it with ffmpeg")
    width, height = int(size.group(1)), int(size.group(2))
    fps_m = re.search(r"(\d+(?:\.\d+)?) fps", line) or re.search(r"(\d+(?:\.\d+)?) tbr", line)
    fps = float(fps_m.group(1)) if fps_m else 25.0
    rotation = _parse_rotation(text)
    if rotation in (90, 270):
        width, height = height, width
    duration = _parse_duration(text)
    if duration is None or duration <= 0:
        raise BadInputError(f"{path}: video has no duration (empty or truncated file); re-encode it with ffmpeg")
    has_audio = bool(re.search(r"Stream #\S+.*?: Audio:", text))
    is_image = path.suffix.lower() in IMAGE_SUFFIXES
    return VideoInfo(
        path=path,
        width=width,
        height=height,
        fps=fps,
        n_frames=1 if is_image else max(1, int(duration * fps + 0.5)),
        duration=duration,
        has_audio=has_audio,
        rotation=rotation,
    )


def read_frames(path: str | Path, fps: Optional[float] = None, start_frame: int = 0, info: Optional[VideoInfo] = None) -> Iterator[Frame]:
    """Yield :class:`Frame` objects at a constant ``fps`` (default: the file's rate).

    ``start_frame`` skips ahead by seeking (frame indices and times stay
    absolute). The ffmpeg process is stopped when the generator is closed.
    """
    path = Path(path)
    info = info or probe_video(path)
    rate = float(fps or info.fps)
    w, h = info.width, info.height
    cmd = [ffmpeg_exe(), "-v", "error", "-nostdin"]
    if start_frame > 0:
        cmd += ["-ss", f"{start_frame / rate:.6f}"]
    cmd += ["-i", str(path), "-map", "0:v:0", "-vf", f"fps={rate}", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=w * h * 3 * 2)
    frame_bytes = w * h * 3
    index = start_frame
    try:
        assert proc.stdout is not None
        while True:
            buf = proc.stdout.read(frame_bytes)
            if len(buf) < frame_bytes:
                break
            image = np.frombuffer(buf, np.uint8).reshape(h, w, 3)
            yield Frame(index=index, time=index / rate, image=image)
            index += 1
        proc.wait()
        if index == start_frame:
            err = proc.stderr.read().decode(errors="replace").strip().splitlines() if proc.stderr else []
            reason = err[-1] if err else "no frames decoded"
            raise BadInputError(f"{path}: no video frames could be decoded ({reason}); re-encode it with ffmpeg")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def read_frames_at(path: str | Path, indices, info: Optional[VideoInfo] = None) -> dict[int, np.ndarray]:
    """Images of the frames ``indices`` (at the file's rate), decoding no further than the last one."""
    info = info or probe_video(path)
    wanted = set(int(i) for i in indices)
    images: dict[int, np.ndarray] = {}
    if not wanted:
        return images
    reader = read_frames(path, fps=info.fps, info=info)
    try:
        for frame in reader:
            if frame.index in wanted:
                images[frame.index] = frame.image
            if frame.index >= max(wanted):
                break
    finally:
        reader.close()
    return images


def check_frame_size(width: int, height: int, path: Path) -> None:
    """Raise :class:`BadInputError` when ``width x height`` frames exceed :data:`MAX_FRAME_PIXELS`."""
    if width * height > MAX_FRAME_PIXELS:
        raise BadInputError(
            f"{path}: {width}x{height} frames ({width * height / 1e6:.0f} MP) exceed latentdub's limit of 8K UHD "
            f"(7680x4320, {MAX_FRAME_PIXELS / 1e6:.0f} MP); scale it down first, e.g. ffmpeg -i IN -vf scale=-2:2160 OUT.mp4"
        )


def read_image(path: str | Path) -> np.ndarray:
    """A still image as uint8 RGB ``[H, W, 3]``; raises :class:`BadInputError` if unreadable."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: file not found; check the path")
    try:
        with Image.open(path) as img:
            check_frame_size(img.width, img.height, path)  # before decoding the pixels
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise BadInputError(f"{path}: not a readable image ({exc.__class__.__name__}); give a PNG or JPEG portrait") from None


def check_output_path(path: str | Path) -> Path:
    """Fail early (before any work) if the video ``path`` cannot be written."""
    path = check_writable_file(path, "out.mp4")
    if path.suffix.lower() not in (".mp4", ".mov", ".mkv", ".m4v"):
        raise OutputError(f"{path}: unsupported output type {path.suffix or '(none)'}; use .mp4, .mov, .mkv or .m4v")
    return path


#: H.264 encoders ``output.video_codec`` may name (``auto`` chooses between them).
VIDEO_CODECS = ("libx264", "h264_nvenc")
_encoders: frozenset[str] | None = None
_nvenc_works: bool | None = None


def video_encoders() -> frozenset[str]:
    """Names of the encoders the bundled ffmpeg lists (``ffmpeg -encoders``), read once."""
    global _encoders
    if _encoders is None:
        proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-encoders"], capture_output=True, text=True, errors="replace", check=False)
        _encoders = frozenset(m.group(1) for m in re.finditer(r"^\s*[VAS][A-Z.]{5}\s+(\S+)", proc.stdout, re.MULTILINE) if m.group(1) != "=")
    return _encoders


def nvenc_works() -> bool:
    """True when ffmpeg lists ``h264_nvenc`` and it encodes a test frame here (a driver and an NVIDIA GPU are present); checked once."""
    global _nvenc_works
    if _nvenc_works is None:
        _nvenc_works = "h264_nvenc" in video_encoders() and subprocess.run(
            [ffmpeg_exe(), "-v", "error", "-nostdin", "-f", "lavfi", "-i", "color=s=256x256:d=0.04", "-c:v", "h264_nvenc", "-f", "null", "-"],
            capture_output=True, check=False, timeout=60,
        ).returncode == 0
    return _nvenc_works


def choose_video_codec(requested: str, device_type: str = "cpu") -> str:
    """The encoder for ``output.video_codec``: ``libx264``, ``h264_nvenc`` (refused when this ffmpeg or machine cannot run it)
    or ``auto`` (NVENC on a CUDA run when it works here, else libx264)."""
    if requested == "libx264":
        return requested
    if requested == "h264_nvenc":
        if "h264_nvenc" not in video_encoders():
            raise BadInputError(f"output.video_codec=h264_nvenc: this ffmpeg ({ffmpeg_exe()}) has no NVENC encoder; use libx264 or auto")
        if not nvenc_works():
            raise BadInputError("output.video_codec=h264_nvenc: NVENC does not run here (no NVIDIA GPU or driver); use libx264 or auto")
        return requested
    if requested == "auto":
        return "h264_nvenc" if device_type == "cuda" and nvenc_works() else "libx264"
    raise BadInputError(f"output.video_codec={requested!r}: choose libx264, h264_nvenc or auto")


def video_codec_options(codec: str, crf: int, x264_preset: str) -> list[str]:
    """ffmpeg video codec options: x264 at ``crf``/``x264_preset``, or NVENC at constant quality ``crf`` (preset p4)."""
    if codec == "h264_nvenc":
        return ["-c:v", "h264_nvenc", "-preset", "p4", "-rc", "vbr", "-cq", str(max(crf, 1)), "-b:v", "0"]
    return ["-c:v", "libx264", "-crf", str(crf), "-preset", x264_preset]


@dataclass(frozen=True)
class MuxedAudio:
    """The audio input of a :class:`VideoWriter`: ffmpeg input options ending in ``-i FILE``
    (its first audio stream is muxed) and the audio codec options (``-c:a ...``)."""

    inputs: tuple[str, ...]
    codec: tuple[str, ...]


def rgb_to_yuv420(image: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[h, w, 3]`` -> planar YUV 4:2:0 uint8 ``[H * 3 / 2, W]`` (BT.601, limited range: what ffmpeg's
    rgb24 -> yuv420p gives, luma within 1 level), ``H, W`` the sides rounded up to even with black pixels below and right."""
    import cv2

    h, w = image.shape[:2]
    if h % 2 or w % 2:
        image = cv2.copyMakeBorder(image, 0, h % 2, 0, w % 2, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2YUV_I420)


class VideoWriter:
    """Encode RGB frames to H.264 and mux an optional sound track, atomically.

    Use as a context manager: frames go to ``.NAME.XXXXXXXX.part.SUFFIX`` beside the
    target, which is renamed to ``path`` only when ffmpeg finishes cleanly;
    on any error the partial file is removed. Frames reach ffmpeg as YUV 4:2:0
    (:func:`rgb_to_yuv420`, half the bytes of RGB and a fraction of ffmpeg's
    own conversion's CPU); odd frame sizes are padded by one black pixel.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float,
        size: tuple[int, int],
        crf: int = 18,
        x264_preset: str = "veryfast",
        audio: Optional[MuxedAudio] = None,
        codec: str = "libx264",
    ) -> None:
        self.path = check_output_path(path)
        self.width, self.height = size
        self.fps = fps
        self.frames_written = 0
        self.tmp = temp_beside(self.path)
        cmd = [
            ffmpeg_exe(), "-v", "error", "-y", "-nostdin",
            "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{self.width + self.width % 2}x{self.height + self.height % 2}", "-r", f"{fps}", "-i", "-",
        ]
        if audio is not None:
            cmd += audio.inputs
        cmd += ["-map", "0:v:0"]
        if audio is not None:
            cmd += ["-map", "1:a:0", *audio.codec]
        cmd += [
            *video_codec_options(codec, crf, x264_preset), "-pix_fmt", "yuv420p",
            # say which matrix the pixels were converted with: players guess BT.709 for untagged HD
            "-colorspace", "smpte170m", "-color_range", "tv",
            "-movflags", "+faststart", str(self.tmp),
        ]
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        except BaseException:  # Ctrl-C while ffmpeg starts: no context manager will clean up yet
            self.tmp.unlink(missing_ok=True)
            raise

    def write(self, image: np.ndarray) -> None:
        """Append one uint8 RGB frame ``[height, width, 3]``."""
        if image.shape != (self.height, self.width, 3) or image.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 [{self.height}, {self.width}, 3], got {image.dtype} {image.shape}")
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(rgb_to_yuv420(image).data)
        except BrokenPipeError:
            self._fail()
        self.frames_written += 1

    def _fail(self) -> None:
        err = self._proc.stderr.read().decode(errors="replace").strip() if self._proc.stderr else ""
        self.abort()
        raise OutputError(f"{self.path}: ffmpeg failed to encode ({err.splitlines()[-1] if err else 'unknown error'})")

    def close(self) -> Path:
        """Finish encoding and move the file into place; returns the final path."""
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        code = self._proc.wait()
        if code != 0 or self.frames_written == 0:
            self._fail()
        if self._proc.stderr:
            self._proc.stderr.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Stop ffmpeg and delete the partial file."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
