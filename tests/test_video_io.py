"""Frames into the encoder: converted to YUV 4:2:0 here (cv2) as ffmpeg itself would, odd sides padded black."""

from __future__ import annotations

import subprocess

import numpy as np

from latentdub.toolkit.media.video import VideoWriter, ffmpeg_exe, read_frames, rgb_to_yuv420


def _ffmpeg_yuv420(image: np.ndarray) -> np.ndarray:
    """ffmpeg's own rgb24 -> yuv420p conversion of one frame (what the encoder was given before), ``[H * 3 / 2, W]``."""
    h, w = image.shape[:2]
    out = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-i", "-", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
         "-f", "rawvideo", "-pix_fmt", "yuv420p", "-"],
        input=np.ascontiguousarray(image).tobytes(), capture_output=True, check=True,
    ).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, w + w % 2)


def test_a_real_frame_is_converted_as_ffmpeg_converts_it(grid_clips):
    frame = next(read_frames(grid_clips[0])).image
    for image in (frame, frame[:287, :359]):  # even and odd sides
        ours, theirs = rgb_to_yuv420(image).astype(int), _ffmpeg_yuv420(image).astype(int)
        assert ours.shape == theirs.shape
        rows, width = ours.shape[0] * 2 // 3, ours.shape[1]
        luma = np.abs(ours[:rows] - theirs[:rows])
        # U then V planes, each [rows / 2, width / 2], without the last chroma row and column (the black pad's edge on odd
        # sides, where the two subsampling filters differ most)
        u, v = (np.abs(ours[rows:] - theirs[rows:]).reshape(2, rows // 2, width // 2)[k, :-1, :-1] for k in (0, 1))
        assert luma.max() <= 1 and luma.mean() < 0.05, (luma.max(), luma.mean())
        for chroma in (u, v):
            assert chroma.mean() < 0.2 and chroma.max() <= 8, (chroma.mean(), chroma.max())


def test_an_odd_sized_clip_is_written_padded_with_black_and_otherwise_unchanged(grid_clips, tmp_path):
    frames = [f.image[:287, :359] for f, _ in zip(read_frames(grid_clips[0]), range(5))]
    out = tmp_path / "odd.mp4"
    with VideoWriter(out, 25, (359, 287), crf=0) as writer:
        for image in frames:
            writer.write(image)
    back = [f.image.astype(int) for f in read_frames(out)]
    assert len(back) == 5 and back[0].shape == (288, 360, 3)
    described = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(out)], capture_output=True, text=True).stderr
    assert "yuv420p(tv, smpte170m" in described  # the matrix the frames were converted with, for players that would guess
    for source, written in zip(frames, back):
        # lossless H.264 of 4:2:0: chroma subsampling and rounding only (a large share of pixels within 2 levels)
        diff = np.abs(written[:287, :359] - source.astype(int))
        assert np.median(diff) <= 1 and (diff <= 8).mean() > 0.97, (np.median(diff), (diff <= 8).mean())
        grey = written @ np.array([0.299, 0.587, 0.114])
        assert grey[287, :358].max() <= 24 and grey[:286, 359].max() <= 24  # the padding is black (its chroma shared with the edge)
