"""Warp renderer on real GRID frames, checked by re-detecting the mouth with dlib on the composited frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from latentdub.plugins.warp_renderer import anchors, mesh
from latentdub.toolkit.core.config import parse_config
from latentdub.toolkit.core.errors import BadInputError
from latentdub.toolkit.core.plugins import get_component
from latentdub.toolkit.core.types import Motion
from latentdub.toolkit.faces.masks import TEMPLATE_68, mouth_opening, mouth_width
from tests.test_compositor import DlibLandmarks, align, build, crop_of, read_frames

# speaker sbwe5n: frame 5 closed (opening ~0.02), frame 36 open (~0.21); frames 0-10 and 50-74 are closed
CLOSED, OPEN = 5, 36


def renderer(**settings):
    """Build the registered "warp" renderer through its typed config."""
    component = get_component("renderer", "warp")
    r = component.factory(parse_config(component.config, settings, "renderer"), None)
    assert r.motion_kinds == ("mouth",)
    return r


@pytest.fixture(scope="module")
def speaker(grid_clips):
    """Real frames, dlib landmarks, alignments and crops of GRID speaker sbwe5n."""
    clip = next(p for p in grid_clips if p.stem == "sbwe5n")
    indices = [0, 2, 8, 55, 60, 65, CLOSED, 13, 27, OPEN, 44]
    frames = read_frames(clip, indices)
    dlib68 = DlibLandmarks()
    data = {}
    for i in indices:
        lm = dlib68(frames[i])
        assert lm is not None, f"dlib found no face in sbwe5n frame {i}"
        alignment = align(lm)
        data[i] = {"frame": frames[i], "landmarks": lm, "alignment": alignment, "crop": crop_of(frames[i], alignment), "crop_lm": alignment.apply(lm)}
    return {"frames": data, "dlib": dlib68, "compositor": build("soft")}


def render_and_measure(speaker, r, index: int, code, five_points: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Render frame ``index`` with ``code``, paste it back, re-detect: (output crop, dlib landmarks of the new frame)."""
    item = speaker["frames"][index]
    lm = item["crop_lm"]
    if five_points:
        lm = np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])
    motion = Motion("mouth", np.asarray([code], np.float32), 25.0)
    out = r.render(item["crop"][None], lm[None], motion, np.array([0]))
    assert out.shape == (1, 256, 256, 3) and out.dtype == np.uint8
    frame = speaker["compositor"].composite(item["frame"], out[0], item["alignment"], item["landmarks"])
    measured = speaker["dlib"](frame)
    assert measured is not None, "dlib lost the face on the rendered frame"
    return out[0], measured


def test_opening_follows_the_code_monotonically(speaker):
    r = renderer()
    source = mouth_opening(speaker["frames"][CLOSED]["landmarks"])
    measured = [mouth_opening(render_and_measure(speaker, r, CLOSED, (o, 0, 0))[1]) for o in (0.0, 0.15, 0.3)]
    assert source < 0.05
    assert measured[0] < measured[1] < measured[2]
    assert measured[2] - measured[0] > 0.15
    assert abs(measured[1] - 0.15) < 0.06 and abs(measured[2] - 0.3) < 0.08


def test_an_open_source_mouth_is_closed(speaker):
    r = renderer()
    source = mouth_opening(speaker["frames"][OPEN]["landmarks"])
    closed = mouth_opening(render_and_measure(speaker, r, OPEN, (0, 0, 0))[1])
    assert source > 0.15
    assert closed < 0.4 * source


def test_upper_face_is_untouched_and_lower_face_changes(speaker):
    r = renderer()
    item = speaker["frames"][CLOSED]
    out, _ = render_and_measure(speaker, r, CLOSED, (0.3, 0.1, 0))
    nose_tip = int(item["crop_lm"][30, 1])
    assert np.array_equal(out[:nose_tip], item["crop"][:nose_tip])
    mouth = item["crop_lm"][48:68]
    y0, y1 = int(mouth[:, 1].min()), int(mouth[:, 1].max()) + 20
    x0, x1 = int(mouth[:, 0].min()), int(mouth[:, 0].max())
    diff = np.abs(out[y0:y1, x0:x1].astype(int) - item["crop"][y0:y1, x0:x1]).max(axis=-1)
    assert (diff > 20).mean() > 0.1
    # the painted opening is dark: the oral cavity
    gap = out[int(mouth[:, 1].mean()) + 5, int(mouth[:, 0].mean())]
    assert gap.mean() < 0.6 * item["crop"][int(mouth[:, 1].mean()) + 5, int(mouth[:, 0].mean())].mean()


def test_width_and_rounding_change_the_mouth_width(speaker):
    r = renderer()
    neutral = mouth_width(render_and_measure(speaker, r, CLOSED, (0.05, 0, 0))[1])
    wide = mouth_width(render_and_measure(speaker, r, CLOSED, (0.05, 0.2, 0))[1])
    round_ = mouth_width(render_and_measure(speaker, r, CLOSED, (0.05, 0, 0.8))[1])
    assert wide > neutral * 1.08
    assert round_ < neutral * 0.92


def test_prepare_learns_the_neutral_width_and_interior_colour(speaker):
    frames = speaker["frames"]
    refs = [0, 2, 8, 55, 60, 65, 13, 27, OPEN, 44]
    r = renderer()
    assert r.prepare(np.stack([frames[i]["crop"] for i in refs]), np.stack([frames[i]["crop_lm"] for i in refs])) is None
    closed_widths = [mouth_width(frames[i]["crop_lm"]) for i in (0, 2, 8, 55, 60, 65)]
    assert abs(r.neutral_width - np.median(closed_widths)) < 0.03
    assert r.cavity_colour is not None and r.cavity_colour.mean() < 90
    # a code of width 0 renders the neutral width even from a wider source frame
    out_width = mouth_width(render_and_measure(speaker, r, 27, (0.1, 0, 0))[1])
    assert abs(out_width - r.neutral_width) < abs(mouth_width(frames[27]["crop_lm"]) - r.neutral_width) + 0.03


def test_five_point_landmarks_open_the_mouth(speaker):
    r = renderer()
    low = mouth_opening(render_and_measure(speaker, r, CLOSED, (0.0, 0, 0), five_points=True)[1])
    high = mouth_opening(render_and_measure(speaker, r, CLOSED, (0.3, 0, 0), five_points=True)[1])
    assert high > low + 0.12


def test_batches_pick_their_own_codes(speaker):
    r = renderer()
    items = [speaker["frames"][CLOSED], speaker["frames"][OPEN]]
    codes = np.array([[0.3, 0, 0], [0, 0, 0], [0.15, 0, 0]], np.float32)
    motion = Motion("mouth", codes, 25.0)
    crops = np.stack([i["crop"] for i in items])
    lms = np.stack([i["crop_lm"] for i in items])
    out = r.render(crops, lms, motion, np.array([2, 0]))
    assert out.shape == crops.shape and out.dtype == np.uint8
    single = r.render(crops[:1], lms[:1], motion, np.array([2]))
    assert np.array_equal(out[0], single[0])
    assert not np.array_equal(out[0], r.render(crops[:1], lms[:1], motion, np.array([0]))[0])
    # the source's own shape reproduces the source inside the mouth region closely
    own = np.array([[mouth_opening(items[1]["crop_lm"]), 0, 0]], np.float32)
    same = r.render(crops[1:], lms[1:], Motion("mouth", own, 25.0), np.array([0]))[0]
    assert np.abs(same.astype(int) - crops[1]).mean() < 1.0


def test_wrong_motion_kind_is_a_clear_error(speaker):
    item = speaker["frames"][CLOSED]
    motion = Motion("wplus", np.zeros((1, 18, 512), np.float32), 25.0)
    with pytest.raises(BadInputError, match="mouth"):
        renderer().render(item["crop"][None], item["crop_lm"][None], motion, np.array([0]))


def test_mesh_tiles_the_face_without_overlaps():
    tris, interior = mesh()
    nodes = np.concatenate([TEMPLATE_68, anchors(TEMPLATE_68)])
    corners = nodes[tris]
    e1, e2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    areas = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    assert (areas > 0).all()
    hull_area = cv2.contourArea(cv2.convexHull(nodes.astype(np.float32)))
    assert abs(areas.sum() - hull_area) < 1e-3 * hull_area  # a tiling: no gaps, no overlaps
    assert interior.sum() == 6 and set(tris[interior].ravel()) == set(range(60, 68))
