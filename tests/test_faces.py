"""Alignment, target selection, tracking and smoothing on the real GRID clips (CC BY 4.0)."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from latentdub.toolkit.core.errors import BadInputError, NoFaceError
from latentdub.toolkit.core.presets import TrackConfig
from latentdub.toolkit.core.types import Face, Frame
from latentdub.toolkit.faces import align as A
from latentdub.toolkit.faces import track as F
from latentdub.toolkit.faces.masks import mouth_opening
from latentdub.toolkit.media.video import read_frames


@pytest.fixture(scope="module")
def dlib_detector():
    from latentdub.plugins.dlib_detector import DlibConfig, DlibDetector

    return DlibDetector(DlibConfig())


@pytest.fixture(scope="module")
def mtcnn_detector():
    from latentdub.plugins.mtcnn_detector import MtcnnConfig, MtcnnDetector

    return MtcnnDetector(MtcnnConfig(), "cpu")


@pytest.fixture(scope="module")
def clip0(grid_clips) -> list[np.ndarray]:
    """All 75 frames of bbaf2n (a man)."""
    return [f.image for f in read_frames(grid_clips[0])]


@pytest.fixture(scope="module")
def clip1(grid_clips) -> list[np.ndarray]:
    """All 75 frames of brbk7n (a woman)."""
    return [f.image for f in read_frames(grid_clips[1])]


def _frames(images) -> list[Frame]:
    return [Frame(index=i, time=i / 25, image=im) for i, im in enumerate(images)]


def _second_difference(series: np.ndarray) -> float:
    """Mean magnitude of the frame-to-frame acceleration of a ``[T, ...]`` series (jitter)."""
    return float(np.abs(np.diff(series, n=2, axis=0)).mean())


# --------------------------------------------------------------------------- alignment


def test_alignment_inverse_is_exact_on_real_landmarks(clip0, dlib_detector):
    face = dlib_detector.detect(clip0[0])[0]
    for scale in (0.8, 1.0, 1.3):
        align = A.ffhq_alignment(face.landmarks68, 256, scale=scale)
        back = align.invert(align.apply(face.landmarks68))
        assert np.abs(back - face.landmarks68).max() < 1e-3
    # 5 and 68 points give the same transform
    np.testing.assert_allclose(A.ffhq_alignment(face.landmarks5, 256).matrix, A.ffhq_alignment(face.landmarks68, 256).matrix, atol=1e-4)


def test_alignment_is_invariant_to_rotation_scale_and_shift(clip0, dlib_detector):
    pts = dlib_detector.detect(clip0[0])[0].landmarks5.astype(np.float64)
    theta, s, shift = np.deg2rad(25.0), 1.7, np.array([40.0, -13.0])
    rot = s * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    moved = pts @ rot.T + shift
    a = A.ffhq_alignment(pts, 256).apply(pts)
    b = A.ffhq_alignment(moved, 256).apply(moved)
    np.testing.assert_allclose(a, b, atol=1e-3)
    # canonical layout: eyes level, left of centre / right of centre, mouth below
    assert abs(a[0, 1] - a[1, 1]) < 0.1 * 256 and a[0, 0] < 128 < a[1, 0] and a[3, 1] > a[0, 1] + 40


def test_alignment_geometry_follows_the_ffhq_recipe():
    # a frontal, level face: eyes 100 px apart, mouth 120 px below the eye midpoint
    pts = np.array([[100, 100], [200, 100], [150, 160], [120, 220], [180, 220]], np.float64)
    align = A.ffhq_alignment(pts, 1024)
    # crop half side = max(2 * 100, 1.8 * 120) = 216 px around (150, 112)
    corners = align.invert(np.array([[-0.5, -0.5], [1023.5, 1023.5]]))
    np.testing.assert_allclose(corners, [[150 - 216, 112 - 216], [150 + 216, 112 + 216]], atol=1e-3)


def test_degenerate_landmarks_are_rejected():
    with pytest.raises(ValueError, match="degenerate"):
        A.ffhq_alignment(np.zeros((5, 2)), 256)
    with pytest.raises(ValueError, match=r"\[5, 2\] or \[68, 2\]"):
        A.ffhq_alignment(np.zeros((4, 2)), 256)


def test_warp_to_crop_matches_a_full_frame_warp(clip0, dlib_detector):
    image = clip0[0]
    face = dlib_detector.detect(image)[0]
    align = A.ffhq_alignment(face.landmarks5, 256)
    crop = A.warp_to_crop(image, align)
    full = cv2.warpAffine(image, align.matrix, (256, 256), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    assert crop.shape == (256, 256, 3) and crop.dtype == np.uint8
    # equal up to cv2's fixed-point rounding of the shifted sampling grid
    assert np.abs(crop.astype(int) - full).max() <= 1
    # a crop reaching past the frame's edge reflects the real edge
    wide = A.ffhq_alignment(face.landmarks5, 256, scale=2.0)
    full = cv2.warpAffine(image, wide.matrix, (256, 256), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    assert np.abs(A.warp_to_crop(image, wide).astype(int) - full).max() <= 1


def test_warp_to_crop_does_not_alias_when_shrinking(clip0, dlib_detector):
    image = clip0[0]
    face = dlib_detector.detect(image)[0]
    big = cv2.resize(image, None, fx=6, fy=6, interpolation=cv2.INTER_CUBIC)
    ref = A.warp_to_crop(image, A.ffhq_alignment(face.landmarks5, 64))
    shrunk = A.warp_to_crop(big, A.ffhq_alignment(face.landmarks5 * 6 + 2.5, 64))
    naive = cv2.warpAffine(big, A.ffhq_alignment(face.landmarks5 * 6 + 2.5, 64).matrix, (64, 64), flags=cv2.INTER_LINEAR)
    err = np.abs(shrunk.astype(float) - ref).mean()
    assert err < 4.0
    assert err < np.abs(naive.astype(float) - ref).mean()


def test_warp_to_frame_puts_the_crop_back(clip0, dlib_detector):
    image = clip0[0]
    align = A.ffhq_alignment(dlib_detector.detect(image)[0].landmarks5, 256)
    back, cover = A.warp_to_frame(A.warp_to_crop(image, align), align, image.shape)
    assert back.shape == image.shape and cover.shape == image.shape[:2]
    inside = cover > 0.999
    assert inside.sum() > 0.2 * inside.size and cover.min() == 0.0
    assert np.abs(back[inside].astype(float) - image[inside]).mean() < 4.0


# --------------------------------------------------------------------------- measures


def test_mouth_opening_definition_and_range_on_speech(clip0, dlib_detector):
    pts = np.zeros((68, 2))
    pts[36:42] = [0, 0]
    pts[42:48] = [50, 0]
    pts[[61, 62, 63], 1] = 40
    pts[[65, 66, 67], 1] = 45
    assert mouth_opening(pts) == pytest.approx(0.1)
    track = F.analyse_video(_frames(clip0), dlib_detector, TrackConfig(smoothing=0))
    openings = np.array([mouth_opening(p) for p in track.landmarks68])
    assert openings.min() < 0.05, "the speaker's lips close between words"
    assert openings.max() > 0.1, "and open while speaking"


# --------------------------------------------------------------------------- selection


def _face(x0, y0, size, score=0.99) -> Face:
    box = np.array([x0, y0, x0 + size, y0 + size], np.float32)
    s = size
    pts = np.array([[x0 + 0.3 * s, y0 + 0.4 * s], [x0 + 0.7 * s, y0 + 0.4 * s], [x0 + 0.5 * s, y0 + 0.6 * s], [x0 + 0.35 * s, y0 + 0.8 * s], [x0 + 0.65 * s, y0 + 0.8 * s]], np.float32)
    return Face(box=box, score=score, landmarks5=pts)


def test_select_target_modes():
    faces = [_face(10, 10, 50), _face(300, 200, 120), _face(900, 500, 140)]
    shape = (720, 1280, 3)
    assert F.select_target(faces, "largest", shape) == 2
    assert F.select_target(faces, "central", shape) == 1
    assert F.select_target([], "largest", shape) is None
    with pytest.raises(BadInputError, match="reference_image"):
        F.select_target(faces, "reference", shape)
    with pytest.raises(BadInputError, match="unknown mode"):
        F.select_target(faces, "loudest", shape)
    assert F.usable_faces([_face(0, 0, 20), _face(0, 0, 60, score=0.3), faces[1]], 0.6, 24.0) == [faces[1]]


def _two_faces(left: np.ndarray, right: np.ndarray, s_left: float, s_right: float) -> np.ndarray:
    """Two GRID frames, each scaled and centred in a 400x320 grey tile, side by side."""
    tiles = []
    for image, s in ((left, s_left), (right, s_right)):
        tile = np.full((320, 400, 3), 120, np.uint8)
        scaled = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        h, w = min(scaled.shape[0], 320), min(scaled.shape[1], 400)
        oy, ox = (320 - h) // 2, (400 - w) // 2
        sy, sx = (scaled.shape[0] - h) // 2, (scaled.shape[1] - w) // 2
        tile[oy:oy + h, ox:ox + w] = scaled[sy:sy + h, sx:sx + w]
        tiles.append(tile)
    return np.concatenate(tiles, axis=1)


def test_tracker_keeps_the_chosen_person_when_another_becomes_larger(clip0, clip1, dlib_detector):
    n = 30
    # the man (left) starts larger; from frame 10 the woman (right) grows past him
    scales = [(1.0, 0.9 if t < 10 else 1.15) for t in range(n)]
    images = [_two_faces(clip0[t], clip1[t], *s) for t, s in enumerate(scales)]
    assert F.select_target(dlib_detector.detect(images[-1]), "largest", images[-1].shape) is not None
    per_frame = [dlib_detector.detect(im) for im in images]
    assert all(len(f) == 2 for f in per_frame), "both faces are visible in every frame"
    largest_last = per_frame[-1][F.select_target(per_frame[-1], "largest", images[-1].shape)]
    assert largest_last.centre[0] > 400, "frame by frame, 'largest' would switch to the right face"
    track = F.analyse_video(_frames(images), dlib_detector, TrackConfig(select="largest", smoothing=0))
    assert track.n_with_face == n and track.n_faces_max == 2
    assert np.all(track.boxes[:, 2] < 400), "the track stays on the left person"
    track = F.analyse_video(_frames(images), dlib_detector, TrackConfig(select="largest", detect_every=5))
    assert track.n_with_face == n and np.all(track.boxes[:, 2] < 400)


def test_reference_mode_picks_the_person_in_the_reference_photo(clip0, clip1, dlib_detector, tmp_path):
    images = [_two_faces(clip0[t], clip1[t], 1.0, 0.9) for t in range(8)]
    photo = tmp_path / "her.png"
    cv2.imwrite(str(photo), cv2.cvtColor(clip1[60], cv2.COLOR_RGB2BGR))  # another moment of the same clip
    config = TrackConfig(select="reference", reference_image=photo, smoothing=0)
    track = F.analyse_video(_frames(images), dlib_detector, config)
    assert track.n_with_face == 8 and np.all(track.boxes[:, 0] > 400), "the woman on the right is dubbed"
    still = F.track_still(images[0], dlib_detector, config)
    assert still.face is not None and still.face.box[0] > 400
    him = tmp_path / "him.png"
    cv2.imwrite(str(him), cv2.cvtColor(clip0[60], cv2.COLOR_RGB2BGR))
    still = F.track_still(images[0], dlib_detector, dataclasses.replace(config, reference_image=him))
    assert still.face.box[2] < 400


def test_reference_mode_errors(dlib_detector, tmp_path):
    with pytest.raises(BadInputError, match="reference_image"):
        F.analyse_video([], dlib_detector, TrackConfig(select="reference"))
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((200, 200, 3), 128, np.uint8))
    with pytest.raises(NoFaceError, match="grey.png"):
        F.analyse_video([], dlib_detector, TrackConfig(select="reference", reference_image=grey))


# --------------------------------------------------------------------------- tracking


def test_smoothing_reduces_landmark_and_crop_jitter(clip0, dlib_detector):
    raw = F.analyse_video(_frames(clip0), dlib_detector, TrackConfig(smoothing=0))
    smooth = F.analyse_video(_frames(clip0), dlib_detector, TrackConfig(smoothing=2))
    assert raw.n_with_face == smooth.n_with_face == 75
    assert _second_difference(smooth.landmarks5) < 0.6 * _second_difference(raw.landmarks5)
    assert _second_difference(smooth.matrices) < 0.6 * _second_difference(raw.matrices)
    # what the generator sees: a fixed crop point's position in the frame moves less erratically
    probe = np.array([[64.0, 64.0], [192.0, 192.0]])
    jitter = [_second_difference(np.stack([t.alignment.invert(probe) for t in track])) for track in (raw, smooth)]
    assert jitter[1] < 0.6 * jitter[0]
    # smoothing keeps the landmarks where they were (no drift), within a pixel or two
    assert np.abs(smooth.landmarks5 - raw.landmarks5).mean() < 1.0
    # mouth points are smoothed over at most ±2 frames, so speech motion survives
    open_raw = [mouth_opening(p) for p in raw.landmarks68]
    open_smooth = [mouth_opening(p) for p in smooth.landmarks68]
    assert np.corrcoef(open_raw, open_smooth)[0, 1] > 0.95
    assert np.ptp(open_smooth) > 0.7 * np.ptp(open_raw)


def test_short_gaps_are_bridged_and_long_ones_are_not(clip0, dlib_detector):
    grey = np.full_like(clip0[0], 128)
    images = list(clip0[:40])
    images[10:13] = [grey] * 3  # 3-frame gap: bridged with max_gap 5
    images[25:33] = [grey] * 8  # 8-frame gap: left alone
    track = F.analyse_video(_frames(images), dlib_detector, TrackConfig(smoothing=0, max_gap=5))
    assert np.all(track.status[10:13] == F.BRIDGED)
    assert np.all(track.status[25:33] == F.NO_FACE)
    assert track.n_with_face == 40 - 8
    assert track[27].face is None and track[27].alignment is None
    # interpolation runs on a straight line between the neighbours
    expected = track.landmarks5[9] + (track.landmarks5[13] - track.landmarks5[9]) * 2 / 4
    np.testing.assert_allclose(track.landmarks5[11], expected, atol=1e-4)
    assert track[11].face is not None and track[11].alignment is not None


@pytest.mark.parametrize("detector, config", [("dlib_detector", TrackConfig()), ("mtcnn_detector", TrackConfig(detect_every=4, smoothing=3))])
def test_settled_frames_are_the_final_track(clip0, detector, config, request):
    grey = np.full_like(clip0[0], 128)
    images = list(clip0[:70])
    images[0:2] = [grey] * 2  # no face at the start
    images[20:23] = [grey] * 3  # a gap that is bridged
    images[40:49] = [grey] * 9  # a gap that is not, ending one run and starting another
    images[49:59] = [grey] * 10  # after a gap that is not bridged, a run of 4 frames (shorter than the smoothing
    images[63:68] = [grey] * 5  # window) that a gap of max_gap frames joins to the next run: known only when that gap closes
    seen = []
    track = F.analyse_video(_frames(images), request.getfixturevalue(detector), config, settled=seen.append)
    assert [t.frame_index for t in seen] == list(range(70))
    for tracked, final in zip(seen, track):
        assert (tracked.face is None) == (final.face is None)
        if final.face is not None:  # bit for bit: the study crops are the ones the synthesis pass cuts
            np.testing.assert_array_equal(tracked.alignment.matrix, final.alignment.matrix)
            np.testing.assert_array_equal(tracked.face.landmarks5, final.face.landmarks5)
            np.testing.assert_array_equal(tracked.face.box, final.face.box)
            if final.face.landmarks68 is not None:
                np.testing.assert_array_equal(tracked.face.landmarks68, final.face.landmarks68)


class _ScheduledDetector:
    """A face (68 jittered points) in the frames ``present`` marks, read from the frame's first pixel; ``refit`` or not."""

    dense_landmarks = True

    def __init__(self, present: list[bool], rng, refit: bool) -> None:
        self.present = present
        self.points = [np.float32([100, 100]) + rng.normal(0, 3, (68, 2)).astype(np.float32) + i * 0.5 for i in range(len(present))]
        if refit:
            self.landmarks_in_box = lambda image, box, score=1.0: self._face(image) or Face(np.float32([-90, -90, -10, -10]), 0.1, np.full((5, 2), -50, np.float32))

    def _face(self, image):
        i = int(image[0, 0, 0]) + 256 * int(image[0, 0, 1])
        if not self.present[i]:
            return None
        pts = self.points[i].copy()
        pts[36:42] += [-30, -20]
        pts[42:48] += [30, -20]
        pts[48] += [-20, 30]
        pts[54] += [20, 30]
        return Face(box=np.float32([60, 60, 140, 140]), score=0.99, landmarks5=A.five_from_68(pts), landmarks68=pts)

    def detect(self, image):
        face = self._face(image)
        return [] if face is None else [face]


def test_settled_frames_match_the_track_for_any_gaps_and_settings():
    rng = np.random.default_rng(0)
    for _ in range(60):
        present: list[bool] = []
        while len(present) < 100:
            present += [len(present) % 2 == 0 or rng.random() < 0.2] * int(rng.integers(1, 10))
        config = TrackConfig(max_gap=int(rng.integers(0, 7)), detect_every=int(rng.integers(1, 6)), smoothing=int(rng.integers(0, 5)), min_size=0, min_score=0)
        frames = [Frame(i, i / 25, np.full((200, 200, 3), [i % 256, i // 256, 0], np.uint8)) for i in range(len(present))]
        seen = []
        track = F.analyse_video(frames, _ScheduledDetector(present, rng, refit=rng.random() < 0.5), config, settled=seen.append)
        assert [t.frame_index for t in seen] == list(range(len(present)))
        for tracked, final in zip(seen, track):
            assert (tracked.face is None) == (final.face is None), (config, tracked.frame_index)
            if final.face is not None:
                assert np.array_equal(tracked.alignment.matrix, final.alignment.matrix), (config, tracked.frame_index)
                assert np.array_equal(tracked.face.landmarks68, final.face.landmarks68), (config, tracked.frame_index)


def test_detect_every_with_refit_and_with_interpolation(clip0, dlib_detector, mtcnn_detector):
    frames = _frames(clip0[:41])
    every = F.analyse_video(frames, dlib_detector, TrackConfig(smoothing=0))
    refit = F.analyse_video(frames, dlib_detector, TrackConfig(smoothing=0, detect_every=5))
    assert np.all(refit.status[::5] == F.DETECTED) and np.all(np.delete(refit.status, np.s_[::5]) == F.REFIT)
    assert np.abs(refit.landmarks68 - every.landmarks68).mean() < 1.5
    # MTCNN cannot refit: skipped frames are interpolated, the tail after the last detection is held
    sparse = F.analyse_video(_frames(clip0[:43]), mtcnn_detector, TrackConfig(smoothing=0, detect_every=5))
    assert sparse.n_with_face == 43 and sparse.landmarks68 is None
    assert np.count_nonzero(sparse.status == F.DETECTED) == 9
    np.testing.assert_array_equal(sparse.landmarks5[42], sparse.landmarks5[40])


def test_face_track_contents_and_memory(clip0, dlib_detector):
    calls = []
    gen = (Frame(index=i, time=i / 25, image=im) for i, im in enumerate(clip0))
    track = F.analyse_video(gen, dlib_detector, TrackConfig(crop_size=128), n_frames_hint=75, progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (1, 75) and calls[-1] == (75, 75)
    assert len(track) == track.n_frames == 75 and track.n_with_face == 75 and track.n_faces_max == 1
    assert 0 <= track.best_frame < 75 and track.status[track.best_frame] == F.DETECTED
    item = track[5]
    assert item.frame_index == 5 and item.alignment.size == 128
    np.testing.assert_array_equal(item.face.landmarks68, track.landmarks68[5])
    assert [t.frame_index for t in track] == list(range(75))
    # only numbers are kept: a few KB per frame, far below one frame's pixels
    arrays = [v for v in vars(track).values() if isinstance(v, np.ndarray)]
    assert sum(a.nbytes for a in arrays) < 75 * 1024
    with pytest.raises(dataclasses.FrozenInstanceError):
        track.n_frames = 3  # type: ignore[misc]


def test_video_without_faces(dlib_detector):
    frames = _frames([np.full((288, 360, 3), v, np.uint8) for v in (0, 90, 200)])
    track = F.analyse_video(frames, dlib_detector, TrackConfig())
    assert track.n_frames == 3 and track.n_with_face == 0 and track.best_frame == -1
    assert all(t.face is None for t in track)
    empty = F.analyse_video([], dlib_detector, TrackConfig())
    assert empty.n_frames == 0 and empty.n_with_face == 0


def test_track_still_on_the_portrait(portrait, dlib_detector):
    from latentdub.toolkit.media.video import read_image

    image = read_image(portrait)
    tracked = F.track_still(image, dlib_detector, TrackConfig())
    assert tracked.face is not None and tracked.face.landmarks68 is not None
    crop = A.warp_to_crop(image, tracked.alignment)
    lm = tracked.alignment.apply(tracked.face.landmarks5)
    assert crop.shape == (256, 256, 3) and 80 < lm[0, 0] < 128 < lm[1, 0] < 176
    none = F.track_still(np.full((64, 64, 3), 10, np.uint8), dlib_detector, TrackConfig())
    assert none.face is None and none.alignment is None


@pytest.mark.parametrize("n, half", [(40, 2), (40, 1), (4, 2), (3, 3), (9, 3)])
def test_smoothing_is_the_savitzky_golay_filter(n, half):
    """Against scipy's filter in float64: the polynomial through each window, the first and last windows' at the ends."""
    from scipy.signal import savgol_filter

    values = np.random.default_rng(n + half).normal(300, 40, (n, 68, 2)).astype(np.float32)
    window = min(2 * half + 1, n if n % 2 else n - 1)
    expected = savgol_filter(values.astype(np.float64), window, 2 if window >= 5 else 1, axis=0, mode="interp")
    ours = F.smooth_series(values, half)
    assert ours.dtype == np.float32 and np.abs(ours - expected).max() < 1e-4
    assert np.array_equal(F.smooth_series(values, 0), values)
