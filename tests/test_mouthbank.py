"""The mouth-bank renderer on real GRID clips (CC BY 4.0, Cooke et al. 2006), through the whole ``offline`` preset.

A probe plugin builds the real renderer and keeps it, so each test can read
what the timeline search chose as well as what the run summary says.
"""

from __future__ import annotations

import numpy as np
import pytest

from latentdub.plugins.mouthbank import (
    MouthBankConfig,
    MouthBankRenderer,
    build_mouthbank,
)
from latentdub.toolkit.core import plugins
from latentdub.toolkit.core.hookspecs import hookimpl
from latentdub.toolkit.dubbing.pipeline import FALLBACK, animate, dub
from latentdub.toolkit.media.video import probe_video
from tests.media import ffmpeg

pytestmark = pytest.mark.slow


class Probe:
    """Registers renderer ``mouthbank-probe``: the real mouth-bank renderer, kept after the run."""

    __name__ = "mouthbank_probe"

    def __init__(self) -> None:
        self.built: list[MouthBankRenderer] = []

    @hookimpl
    def register_renderers(self, register):
        def build(config, context):
            self.built.append(build_mouthbank(config, context))
            return self.built[-1]

        register("mouthbank-probe", build, config=MouthBankConfig, summary="the mouth-bank renderer, kept for the tests")


@pytest.fixture(scope="module")
def probe():
    p = Probe()
    plugins.register_plugin(p, name="mouthbank_probe")
    yield p
    plugins.unregister_plugin("mouthbank_probe")


def run(probe, video, speech, out, *settings):
    """Dub with the offline preset through the probe; (summary, renderer, its plan)."""
    summary = dub(video, speech, out, preset="offline", overrides=["renderer.plugin=mouthbank-probe", "timing.length_policy=trim", *settings], log=lambda m: None)
    renderer = probe.built[-1]
    return summary, renderer, renderer.last_plan


def clip(grid_clips, stem):
    return next(p for p in grid_clips if p.stem.endswith(stem))


def trimmed(source, out, start_frame, n_frames):
    """Frames ``start_frame`` to ``start_frame + n_frames`` of a 25 fps clip, re-encoded."""
    ffmpeg("-i", str(source), "-vf", f"trim=start_frame={start_frame}:end_frame={start_frame + n_frames},setpts=PTS-STARTPTS",
           "-af", f"atrim=start={start_frame / 25}:end={(start_frame + n_frames) / 25},asetpts=PTS-STARTPTS", "-c:v", "libx264", "-crf", "12", "-c:a", "aac", str(out))
    return out


def test_chosen_mouths_open_with_the_target(grid_clips, probe, tmp_path):
    summary, renderer, plan = run(probe, clip(grid_clips, "bbaf2n"), clip(grid_clips, "brbk7n"), tmp_path / "o.mp4")
    codes = plan.codes
    served = np.array([t for t in range(len(codes)) if t not in plan.fallback])
    assert len(served) > 0.8 * len(codes)
    chosen = renderer.shapes[plan.primary[served], 0]
    assert np.corrcoef(chosen, codes[served, 0])[0, 1] >= 0.9
    assert np.median(np.abs(chosen - codes[served, 0])) < 0.03  # IOD
    # runs of consecutive source frames, not a new frame every time
    frames = renderer.bank.frames[plan.primary[served]]
    assert np.mean(np.diff(frames) == 1) > 0.5
    assert any(n.startswith("mouthbank:") and "real mouths" in n for n in summary.notes)


def test_own_speech_picks_frames_near_their_own_time(grid_clips, probe, tmp_path):
    video = clip(grid_clips, "lwbsza")
    _, renderer, plan = run(probe, video, video, tmp_path / "own.mp4")
    served = np.array([t for t in range(len(plan.primary)) if t not in plan.fallback])
    offset = np.abs(renderer.bank.frames[plan.primary[served]] - served)
    assert np.mean(offset <= 2) >= 0.5 and np.median(offset) <= 2, np.percentile(offset, [25, 50, 75])


def test_a_closed_mouth_clip_falls_back_and_says_why(grid_clips, probe, tmp_path):
    # sbwe5n keeps its mouth closed in frames 50-74; the speech of lbbc2a opens wide
    closed = trimmed(clip(grid_clips, "sbwe5n"), tmp_path / "closed.mp4", 50, 25)
    summary, renderer, plan = run(probe, closed, clip(grid_clips, "lbbc2a"), tmp_path / "o.mp4", "renderer.min_entries=10")
    assert renderer.unusable is None and renderer.shapes[:, 0].max() < 0.1
    widest = renderer.shapes[:, 0].max()
    wide = {t for t, code in enumerate(plan.codes) if code[0] > widest + renderer.config.max_opening_gap}
    assert wide and wide <= set(plan.fallback)
    assert set(np.flatnonzero(summary.frame_kinds == FALLBACK)) == set(plan.fallback)
    note = next(n for n in summary.notes if "drawn by the warp renderer" in n)
    assert f"{len(plan.fallback)} frames drawn by the warp renderer" in note and "wider than the widest mouth in the clip" in note
    assert f"({len(plan.fallback)} by a fallback)" in "\n".join(summary.lines())


def test_too_short_a_clip_gets_the_warp_renderer_and_a_clear_note(grid_clips, probe, portrait, tmp_path):
    short = trimmed(clip(grid_clips, "bbaf2n"), tmp_path / "short.mp4", 20, 8)
    summary, _, _ = run(probe, short, clip(grid_clips, "brbk7n"), tmp_path / "o.mp4")
    n = probe_video(tmp_path / "o.mp4").n_frames
    assert n >= 7 and summary.frames_by_fallback == summary.frames_with_face == summary.frames
    note = next(x for x in summary.notes if "too few for a mouth bank" in x)
    assert "renderer.min_entries=25" in note and "give a clip of at least 25 frames" in note
    # animate shows the bank one portrait: the warp renderer draws it, and says so
    summary = animate(portrait, clip(grid_clips, "brbk7n"), tmp_path / "a.mp4", preset="offline", log=lambda m: None)
    assert summary.frames_by_fallback == summary.frames > 0
    assert any("1 source face crop (a still or a very short clip)" in x for x in summary.notes)


def test_the_bank_stays_bounded_and_spills_to_disk():
    from latentdub.plugins.mouthbank import MouthBank
    from latentdub.toolkit.faces.masks import TEMPLATE_68

    points = np.repeat((TEMPLATE_68 * 40 + 128)[None].astype(np.float32), 10, axis=0)
    crops = np.zeros((10, 128, 128, 3), np.uint8)
    entry = (128 - round(0.45 * 128)) * (round(0.92 * 128) - round(0.08 * 128)) * 3
    bank = MouthBank(max_entries=16, max_bytes=1e9, memory_bytes=4 * entry)
    for start in range(0, 100, 10):
        crops[:] = np.arange(start, start + 10, dtype=np.uint8)[:, None, None, None]
        bank.add(crops, points, np.arange(start, start + 10))
    assert bank.count <= 16 and bank.stride == 8 and bank.on_disk
    assert np.array_equal(bank.frames[: bank.count], np.arange(0, 100, 8))
    assert all(int(bank.images[i][0, 0, 0]) == f for i, f in enumerate(bank.frames[: bank.count]))  # crops moved with their frames
    assert len(bank.source_poses(np.arange(100))) == 100  # every studied frame keeps its pose
    bank.close()


def test_a_mouths_look_ignores_where_the_mouth_sits_and_sees_what_it_shows():
    """mouth_look of the same mouth moved, turned and scaled in the crop stays close; a mouth showing teeth differs."""
    import cv2

    from latentdub.plugins.mouthbank import mouth_look
    from latentdub.toolkit.faces.masks import TEMPLATE_68

    rng = np.random.default_rng(0)
    crop = cv2.GaussianBlur(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8), (0, 0), 6)  # skin-like: smooth at the look's scale
    points = TEMPLATE_68 * 90 + 128
    look = mouth_look(crop, points)
    turn = cv2.getRotationMatrix2D((120.0, 130.0), 12.0, 1.15)
    moved = cv2.warpAffine(crop, turn, (256, 256), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    moved_points = points @ turn[:, :2].T + turn[:, 2]
    teeth = crop.copy()
    x0, y0 = np.floor(points[60:68].min(0)).astype(int)
    x1, y1 = np.ceil(points[60:68].max(0)).astype(int)
    teeth[y0 - 3:y1 + 4, x0:x1] = 240
    same = np.abs(mouth_look(moved, moved_points) - look).mean()
    other = np.abs(mouth_look(teeth, points) - look).mean()
    assert same < 0.25 * other


def test_target_openings_come_towards_the_speakers_range_never_beyond_the_least_scale():
    renderer = MouthBankRenderer(MouthBankConfig(least_opening_scale=0.75))
    codes = np.zeros((100, 3))
    codes[:, 0] = np.linspace(0.0, 0.3, 100)
    renderer.shapes = np.array([[0.27, 0, 0], *[[o, 0, 0] for o in np.linspace(0.0, 0.25, 99)]])
    near = renderer._fitted(codes)[:, 0] / np.maximum(codes[:, 0], 1e-9)
    renderer.shapes = renderer.shapes * 0.2  # a speaker who barely opens
    far = renderer._fitted(codes)[:, 0] / np.maximum(codes[:, 0], 1e-9)
    renderer.shapes = renderer.shapes * 10  # one who opens wider than the target
    wide = renderer._fitted(codes)[:, 0] / np.maximum(codes[:, 0], 1e-9)
    assert 0.75 < near[1:].min() < 1.0 and np.ptp(near[1:]) < 1e-9  # one scale for the whole timeline
    assert np.allclose(far[1:], 0.75) and np.allclose(wide[1:], 1.0)


def test_a_cut_goes_to_the_mouth_that_looks_like_the_one_it_replaces():
    """Two candidates fit the target about as well; the timeline search cuts to the one that looks like what came before."""
    looks = np.zeros((3, 32 * 24), np.float32)
    looks[1, ::2], looks[1, 1::2] = 40, -40  # unlike entry 0
    looks[2, ::2], looks[2, 1::2] = 2, -2  # nearly entry 0
    cands = np.array([[0, 0], [1, 2]])
    costs = np.array([[0.0, 0.0], [0.0, 0.5]])  # entry 1 fits the target a little better
    runs_on = np.zeros(3, bool)  # three separate source frames: every change is a cut
    chosen = {}
    for look_scale in (4.0, 255.0):
        renderer = MouthBankRenderer(MouthBankConfig(look_scale=look_scale))
        renderer.bank.looks = looks
        chosen[look_scale] = renderer._viterbi(cands, costs, runs_on).tolist()
    assert chosen[4.0] == [0, 2] and chosen[255.0] == [0, 1]


def test_a_real_mouth_is_pasted_inside_the_jaw_line_and_the_rest_is_the_frames_own():
    """Beyond the jaw line (neck, collar, backdrop) the output is the warp renderer's drawing of the frame itself, bit for
    bit, so nothing from another moment of the clip (a collar the head has moved against) shows there; around the mouth
    it is the banked mouth."""
    import cv2

    from latentdub.plugins.mouthbank import inside_jaw
    from latentdub.toolkit.faces.masks import TEMPLATE_68, fill_polygon, grown_hull, inter_ocular

    rng = np.random.default_rng(1)
    points = (TEMPLATE_68 * 50 + [128, 80]).astype(np.float32)  # IOD 50 px, the jaw well inside the crop
    frame = cv2.GaussianBlur(rng.integers(60, 200, (256, 256, 3), dtype=np.uint8), (0, 0), 3)
    banked = np.zeros((30, 256, 256, 3), np.uint8)
    banked[..., 0] = 230  # a red moment of the clip, far from the frame's colours
    renderer = MouthBankRenderer(MouthBankConfig(color_match="none", min_entries=1))
    renderer.study(banked, np.repeat(points[None], 30, axis=0), np.arange(30))
    renderer.prepare(frame[None], points[None])
    code = np.array([0.15, 0.0, 0.0], np.float32)
    out = renderer.render_one(frame, points.astype(np.float64), code, [(0, 1.0)]).astype(int)
    drawn = renderer.warp.render_one(frame, points, code).astype(int)
    target = renderer.warp.target_shape(points.astype(np.float64), code)
    iod = inter_ocular(points)
    cfg = renderer.config
    beyond = fill_polygon(grown_hull(inside_jaw(target, cfg.jaw_inset * iod), 3 * cfg.feather * iod + 2), (256, 256)) == 0  # past the feather
    mouth = fill_polygon(target[48:60], (256, 256)) > 0.99
    assert beyond.sum() > 0.5 * beyond.size and mouth.sum() > 200
    assert np.array_equal(out[beyond], drawn[beyond])
    assert np.abs(out[mouth] - [230, 0, 0]).max() <= 2


def test_the_colour_transfer_is_steadied_over_consecutive_frames():
    """The light on a face changes slowly: a frame's colour transfer leans on the frame before's (color_steadiness),
    so a jump in the band's statistics moves the mouth's colour a fifth of the way; a frame that does not follow the
    last one drawn starts afresh."""
    import cv2

    from latentdub.toolkit.faces.masks import TEMPLATE_68, fill_polygon

    rng = np.random.default_rng(2)
    points = (TEMPLATE_68 * 50 + [128, 80]).astype(np.float32)
    texture = cv2.GaussianBlur(rng.integers(0, 60, (256, 256, 3), dtype=np.uint8), (0, 0), 2)
    dark, light = texture + 60, texture + 150
    banked = np.repeat(texture[None] + 100, 30, axis=0)
    code = np.array([0.1, 0.0, 0.0], np.float32)
    target = None

    def drawn(steadiness, *frames):
        nonlocal target
        renderer = MouthBankRenderer(MouthBankConfig(color_steadiness=steadiness, min_entries=1))
        renderer.study(banked, np.repeat(points[None], 30, axis=0), np.arange(30))
        renderer.prepare(dark[None], points[None])
        target = renderer.warp.target_shape(points.astype(np.float64), code)
        return [renderer.render_one(crop, points.astype(np.float64), code, [(0, 1.0)], frame=t).astype(float) for crop, t in frames]

    after_dark, light_next, light_later = drawn(0.8, (dark, 0), (light, 1), (light, 5))
    (light_alone,) = drawn(0.0, (light, 1))
    mouth = fill_polygon(target[48:60], (256, 256)) > 0.99
    level = {name: image[mouth].mean() for name, image in
             {"dark": after_dark, "next": light_next, "later": light_later, "alone": light_alone}.items()}
    assert level["alone"] - level["dark"] > 50  # the band's statistics jumped
    assert (level["next"] - level["dark"]) == pytest.approx(0.2 * (level["alone"] - level["dark"]), rel=0.1)
    assert np.array_equal(light_later, light_alone)  # frame 5 does not follow frame 1: its own transfer
