"""The study pass and the renderer report: optional capabilities of renderers and motion models."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from latentdub.plugins.warp_renderer import WarpRenderer
from latentdub.toolkit.core import plugins
from latentdub.toolkit.core.hookspecs import hookimpl
from latentdub.toolkit.core.types import RenderReport
from latentdub.toolkit.dubbing.pipeline import DUBBED, FALLBACK, animate, dub
from latentdub.toolkit.media.video import probe_video

pytestmark = pytest.mark.slow


@dataclasses.dataclass(frozen=True)
class StudyingConfig:
    fallback_every: int = 5


class StudyingRenderer(WarpRenderer):
    """The warp renderer, recording what the study pass showed it and claiming every n-th output frame as a fallback."""

    def __init__(self, config: StudyingConfig) -> None:
        super().__init__()
        self.every = config.fallback_every
        self.seen: list[np.ndarray] = []
        self.shapes: set[tuple[int, ...]] = set()
        self.rendered: set[int] = set()
        self.prepared_after_study = False

    def study(self, crops, landmarks, frames):
        assert not self.rendered, "study runs before any render"
        self.shapes.add(crops.shape[1:])
        assert crops.dtype == np.uint8 and len(crops) == len(landmarks) == len(frames)
        self.seen.append(np.asarray(frames))

    def prepare(self, crops, landmarks):
        self.prepared_after_study = bool(self.seen)
        return super().prepare(crops, landmarks)

    def render(self, crops, landmarks, motion, frames):
        self.rendered.update(int(f) for f in frames)
        return super().render(crops, landmarks, motion, frames)

    def report(self):
        return RenderReport(notes=("studying renderer: done",), fallback={t: "test" for t in sorted(self.rendered) if t % self.every == 0})


class StudyingPlugin:
    __name__ = "studying_renderer_plugin"
    built: list[StudyingRenderer] = []

    @hookimpl
    def register_renderers(self, register):
        def build(config, context):
            renderer = StudyingRenderer(config)
            self.built.append(renderer)
            return renderer

        register("studying", build, config=StudyingConfig, summary="a test renderer that studies the source")


@pytest.fixture
def studying():
    plugin = StudyingPlugin()
    plugin.built = []
    plugins.register_plugin(plugin, name="studying_renderer_plugin")
    yield plugin
    plugins.unregister_plugin("studying_renderer_plugin")


def test_dub_studies_every_tracked_frame_in_order_before_prepare(grid_clips, tmp_path, studying):
    video, speech = grid_clips[0], grid_clips[3]
    summary = dub(video, speech, tmp_path / "out.mp4", preset="preview", overrides=["renderer.plugin=studying"], log=lambda _: None)
    renderer = studying.built[-1]
    seen = np.concatenate(renderer.seen)
    n = probe_video(video).n_frames
    assert renderer.prepared_after_study
    assert np.array_equal(seen, np.arange(len(seen))) and len(seen) >= n - 2  # every GRID frame shows the face
    assert all(len(batch) <= 32 for batch in renderer.seen) and renderer.shapes == {(256, 256, 3)}
    # the report reaches the summary: notes, and fallback frames counted within the dubbed ones
    assert "studying renderer: done" in summary.notes
    expected_fallback = {t for t in renderer.rendered if t % 5 == 0}
    assert set(np.flatnonzero(summary.frame_kinds == FALLBACK)) == expected_fallback
    assert summary.frames_by_fallback == len(expected_fallback)
    assert np.count_nonzero(summary.frame_kinds != 0) == summary.frames_with_face
    assert np.count_nonzero(summary.frame_kinds == DUBBED) == summary.frames_with_face - len(expected_fallback)
    assert any("by a fallback" in line for line in summary.lines())


def test_animate_shows_the_portrait_to_the_study_pass(portrait, grid_clips, tmp_path, studying):
    animate(portrait, grid_clips[3], tmp_path / "out.mp4", preset="preview", overrides=["renderer.plugin=studying"], log=lambda _: None)
    renderer = studying.built[-1]
    assert [b.tolist() for b in renderer.seen] == [[0]]
