"""Soft / Poisson compositor on real GRID frames with real dlib landmarks.

Also holds the small helpers (GRID decoding, dlib 68-point landmarks, a
similarity alignment) that the warp-renderer tests and the compositing
benchmark import.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from latentdub.toolkit.core.config import parse_config
from latentdub.toolkit.core.errors import ConfigError
from latentdub.toolkit.core.plugins import get_component
from latentdub.toolkit.core.types import Alignment
from latentdub.toolkit.faces.masks import TEMPLATE_68, region_mask

CROP = 256


# --------------------------------------------------------------------------- helpers


def read_frames(path: Path, indices: list[int]) -> dict[int, np.ndarray]:
    """Decode the frames ``indices`` of a video as uint8 RGB arrays."""
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    width, height = meta["size"]
    wanted, out = set(indices), {}
    for i, buf in enumerate(gen):
        if i in wanted:
            out[i] = np.frombuffer(buf, np.uint8).reshape(height, width, 3).copy()
        if len(out) == len(wanted):
            gen.close()
            break
    return out


class DlibLandmarks:
    """dlib HOG face detector + 68-point predictor from face-recognition-models (not imported: its __init__ needs pkg_resources)."""

    def __init__(self) -> None:
        import dlib

        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("face-recognition-models is not installed")
        models = Path(spec.submodule_search_locations[0]) / "models"
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(models / "shape_predictor_68_face_landmarks.dat"))

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        """float32 ``[68, 2]`` landmarks of the largest face in a uint8 RGB image, or None."""
        for upsample in (0, 1):
            faces = self.detector(image, upsample)
            if faces:
                face = max(faces, key=lambda r: r.width() * r.height())
                shape = self.predictor(image, face)
                return np.array([[p.x, p.y] for p in shape.parts()], np.float32)
        return None


def align(landmarks68: np.ndarray, size: int = CROP) -> Alignment:
    """Similarity transform putting eye centres and mouth corners where the template has them (eye midpoint at (0.5, 0.4) S, IOD 0.27 S)."""
    def key_points(p: np.ndarray) -> np.ndarray:
        return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[48], p[54]]).astype(np.float32)

    dst = key_points(TEMPLATE_68) * (0.27 * size) + np.array([0.5 * size, 0.4 * size], np.float32)
    matrix, _ = cv2.estimateAffinePartial2D(key_points(landmarks68), dst)
    return Alignment(matrix.astype(np.float64), size)


def crop_of(frame: np.ndarray, alignment: Alignment) -> np.ndarray:
    """The aligned crop uint8 ``[S, S, 3]``."""
    return cv2.warpAffine(frame, alignment.matrix, (alignment.size, alignment.size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def full_mask(compositor, frame_shape: tuple[int, int], landmarks: np.ndarray) -> np.ndarray:
    """The compositor's alpha as a whole-frame float32 ``[H, W]``."""
    alpha, (x0, y0, x1, y1) = compositor.mask(frame_shape, landmarks)
    out = np.zeros(frame_shape, np.float32)
    out[y0:y1, x0:x1] = alpha
    return out


def build(name: str, **settings):
    """Build a registered compositor through the plugin registry and its typed config."""
    component = get_component("compositor", name)
    return component.factory(parse_config(component.config, settings, f"compositor.{name}"), None)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def scene(grid_clips):
    """A real GRID frame (speaker lrwp9a, mouth open), its dlib landmarks, alignment and crop."""
    clip = next(p for p in grid_clips if p.stem == "lrwp9a")
    frames = read_frames(clip, [16, 17])
    landmarks = DlibLandmarks()
    lm = landmarks(frames[16])
    assert lm is not None, "dlib found no face in lrwp9a frame 16"
    alignment = align(lm)
    return {"frame": frames[16], "next": frames[17], "landmarks": lm, "alignment": alignment, "crop": crop_of(frames[16], alignment)}


# --------------------------------------------------------------------------- tests


def test_outside_mask_is_bit_identical_and_inside_is_the_rendered_crop(scene):
    frame, lm, alignment = scene["frame"], scene["landmarks"], scene["alignment"]
    before = frame.copy()
    rendered = 255 - scene["crop"]  # differs from the frame everywhere
    comp = build("soft", color_match="none")
    out = comp.composite(frame, rendered, alignment, lm)
    alpha = full_mask(comp, frame.shape[:2], lm)

    assert out.dtype == np.uint8 and out.shape == frame.shape
    assert np.array_equal(frame, before), "the input frame was modified"
    outside = alpha == 0
    assert outside.mean() > 0.7
    assert np.array_equal(out[outside], frame[outside])
    # deep inside: exactly the rendered crop warped back (up to interpolation rounding)
    back = cv2.warpAffine(rendered, alignment.inverse_matrix(), frame.shape[1::-1], flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    core = alpha == 1
    assert core.sum() > 2000
    diff = np.abs(out[core].astype(int) - back[core].astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.2
    # the region is the lower face: mouth inside, eyes outside
    mouth = lm[48:68].mean(0).astype(int)
    eyes = lm[36:48].astype(int)
    assert alpha[mouth[1], mouth[0]] == 1
    assert (alpha[eyes[:, 1], eyes[:, 0]] == 0).all()


@pytest.mark.parametrize("region", ["mouth", "lower_face", "face"])
def test_regions_nest_and_keep_outside_pixels(scene, region):
    frame, lm = scene["frame"], scene["landmarks"]
    comp = build("soft", region=region, color_match="none")
    alpha = full_mask(comp, frame.shape[:2], lm)
    out = comp.composite(frame, 255 - scene["crop"], scene["alignment"], lm)
    assert np.array_equal(out[alpha == 0], frame[alpha == 0])
    assert (out[alpha > 0.5] != frame[alpha > 0.5]).any(axis=-1).mean() > 0.95
    smaller = {"lower_face": "mouth", "face": "lower_face"}.get(region)
    if smaller:
        inner = full_mask(build("soft", region=smaller), frame.shape[:2], lm)
        assert alpha.sum() > inner.sum() * 1.3


def test_mask_depends_only_on_landmarks_and_moves_smoothly(scene):
    frame, lm = scene["frame"], scene["landmarks"]
    comp = build("soft")
    a = full_mask(comp, frame.shape[:2], lm)
    # same landmarks on the next (different) frame: identical mask
    assert np.array_equal(a, full_mask(comp, scene["next"].shape[:2], lm.copy()))
    # half a pixel of landmark jitter: a small, smooth change
    for shift in (np.float32([0.5, 0]), np.float32([0, 0.5])):
        b = full_mask(comp, frame.shape[:2], lm + shift)
        change = np.abs(a - b)
        assert 0 < change.max() < 0.1
        # the mask slides with the landmarks, like the mask image moved by the same half pixel
        slid = cv2.warpAffine(a, np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]), a.shape[::-1], flags=cv2.INTER_LINEAR)
        assert np.abs(b - slid).max() < 0.05
        assert change.sum() < 1.1 * np.abs(a - slid).sum()


def test_colour_matching_reduces_the_seam(scene):
    frame, lm, alignment = scene["frame"], scene["landmarks"], scene["alignment"]
    # a generator-like colour cast on the rendered face
    cast = np.clip(scene["crop"].astype(np.float32) * [1.15, 0.9, 0.8] + [10, 0, 5], 0, 255).astype(np.uint8)
    alpha = full_mask(build("soft"), frame.shape[:2], lm)
    ring = (alpha > 0.02) & (alpha < 0.98)

    def seam_error(**settings) -> float:
        out = build("soft", **settings).composite(frame, cast, alignment, lm)
        return float(np.abs(out[ring].astype(float) - frame[ring]).mean())

    plain = seam_error(color_match="none")
    assert plain > 5
    assert seam_error(color_match="mean_std") < 0.4 * plain
    assert seam_error(color_match="lab") < 0.4 * plain


def test_colour_matching_steadies_a_flickering_renderer(scene):
    """A renderer whose brightness flickers frame to frame: per-frame matching to the frame removes the flicker."""
    frame, lm, alignment = scene["frame"], scene["landmarks"], scene["alignment"]
    alpha = full_mask(build("soft"), frame.shape[:2], lm)
    core = alpha > 0.98
    flicker = [np.clip(scene["crop"].astype(np.float32) * (1.0 + 0.15 * (-1) ** t), 0, 255).astype(np.uint8) for t in range(8)]

    def frame_to_frame_change(color_match: str) -> float:
        compositor = build("soft", color_match=color_match)
        means = [compositor.composite(frame, crop, alignment, lm)[core].mean() for crop in flicker]
        return float(np.abs(np.diff(means)).mean())

    assert frame_to_frame_change("mean_std") < 0.2 * frame_to_frame_change("none")


def test_poisson_blend_keeps_outside_and_removes_the_cast(scene):
    frame, lm, alignment = scene["frame"], scene["landmarks"], scene["alignment"]
    cast = np.clip(scene["crop"].astype(np.float32) + [30, -10, -20], 0, 255).astype(np.uint8)
    comp = build("poisson", color_match="none")
    assert comp.config.poisson
    out = comp.composite(frame, cast, alignment, lm)
    alpha = full_mask(comp, frame.shape[:2], lm)
    assert np.array_equal(out[alpha == 0], frame[alpha == 0])
    plain = build("soft", color_match="none").composite(frame, cast, alignment, lm)
    inside = alpha > 0
    err_poisson = np.abs(out[inside].astype(float) - frame[inside]).mean()
    err_plain = np.abs(plain[inside].astype(float) - frame[inside]).mean()
    assert err_poisson < 0.5 * err_plain


def test_five_point_landmarks_and_faces_at_the_frame_edge(scene):
    frame, lm, alignment = scene["frame"], scene["landmarks"], scene["alignment"]
    five = np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])
    comp = build("soft", color_match="lab")
    alpha = full_mask(comp, frame.shape[:2], five)
    mouth = lm[48:68].mean(0).astype(int)
    assert alpha[mouth[1], mouth[0]] == 1
    out = comp.composite(frame, 255 - scene["crop"], alignment, five)
    assert np.array_equal(out[alpha == 0], frame[alpha == 0])
    # the same face shifted so its chin leaves the frame: clipped, still exact outside
    shift = np.float32([0, frame.shape[0] - lm[8, 1] + 10])
    m = alignment.matrix
    moved = Alignment(np.concatenate([m[:, :2], m[:, 2:] - m[:, :2] @ shift[:, None]], axis=1), alignment.size)
    out = comp.composite(frame, 255 - scene["crop"], moved, lm + shift)
    alpha = full_mask(comp, frame.shape[:2], lm + shift)
    assert np.array_equal(out[alpha == 0], frame[alpha == 0])
    assert alpha[-1].max() > 0


def test_mask_box_is_tight_and_zero_on_its_border(scene):
    lm = scene["landmarks"]
    alpha, (x0, y0, x1, y1) = region_mask(lm, scene["frame"].shape[:2], "mouth", dilate=0.1, feather=0.1)
    assert alpha.shape == (y1 - y0, x1 - x0)
    assert alpha[0].max() == 0 and alpha[-1].max() == 0 and alpha[:, 0].max() == 0 and alpha[:, -1].max() == 0
    assert alpha.size < 0.1 * scene["frame"].shape[0] * scene["frame"].shape[1]


def test_config_is_validated():
    with pytest.raises(ConfigError, match="compositor.soft.blur"):
        build("soft", blur=3)
    with pytest.raises(ConfigError, match="color_match"):
        build("soft", color_match="hist")
