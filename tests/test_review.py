"""The review page (``output.review`` / ``--review``) on real GRID dubs (CC BY 4.0, Cooke et al. 2006), in a real headless browser."""

from __future__ import annotations

import io
import json
import re
import time

import numpy as np
import pytest
from click.testing import CliRunner

from latentdub.cli import cli
from latentdub.toolkit.dubbing.review import follow, review_paths
from latentdub.toolkit.media.video import probe_video

from .browser import headless_chromium

pytestmark = pytest.mark.slow


def page_data(page) -> dict:
    text = page.read_text(encoding="utf-8")
    return json.loads(re.search(r'<script type="application/json" id="review-data">(.*?)</script>', text, re.S).group(1))


@pytest.fixture(scope="module")
def reviewed(grid_clips, tmp_path_factory):
    """bbaf2n dubbed with the speech of lbbc2a by the preview backend, with ``--review``."""
    out = tmp_path_factory.mktemp("review") / "dub.mp4"
    video, speech = grid_clips[0], grid_clips[3]
    result = CliRunner().invoke(cli, ["dub", str(video), str(speech), "-o", str(out), "--preset", "preview", "--review"])
    assert result.exit_code == 0, result.output
    return out, video, result.stderr


def test_follow_finds_the_lag_of_a_shifted_curve():
    t = np.arange(100)
    target = np.sin(t / 4.0) + 0.3 * np.sin(t / 1.7)
    late = np.concatenate([[np.nan, np.nan], target[:-2]])  # the same curve two frames later
    r, lag = follow(late, target)
    assert lag == 2 and r == pytest.approx(1.0, abs=1e-9)
    assert np.isnan(follow(np.full(100, 0.1), target)[0])  # a constant curve says nothing


def test_review_page_and_assets(reviewed):
    out, video, _ = reviewed
    page, assets = review_paths(out)
    text = page.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text  # nothing is fetched at view time
    data = page_data(page)
    info = probe_video(out)
    n = data["frames"]
    assert abs(n - info.n_frames) <= 1 and data["fps"] == pytest.approx(info.fps)
    assert len(data["kinds"]) == len(data["output"]) == len(data["source"]) == len(data["target"]) == n
    assert data["kinds"].count(1) >= 0.95 * n  # every GRID frame shows the face
    # the source copy follows the output's timeline, with the source's sound (pad keeps its timing)
    copy = probe_video(assets / "source.mp4")
    assert copy.has_audio and (copy.width, copy.height) == (info.width, info.height)
    assert copy.duration == pytest.approx(info.duration, abs=0.1)
    # the output's mouth was measured again on the written file and follows the preview's target at lag 0
    measured = np.array([np.nan if v is None else v for v in data["output"]])
    assert np.isfinite(measured).mean() > 0.95
    assert data["follow"]["r"] > 0.9 and abs(data["follow"]["lag"]) <= 1, data["follow"]
    assert data["follow"]["r"] > data["follow"]["r_source"] + 0.2  # the source's own mouth follows the new speech far less
    assert "follows the motion model&#x27;s target with r = +0." in text
    # stage times and the resolved preset are on the page
    for stage in ("analyse", "motion", "render", "encode", "review"):
        assert f"<td>{stage}</td>" in text
    assert "plugin: warp" in text and "review: true" in text
    from PIL import Image

    plot = Image.open(assets / "plot.png")
    assert plot.size[0] == 1200 and np.asarray(plot.convert("L")).std() > 10


def test_review_page_plays_in_a_real_browser(reviewed, tmp_path):
    out, _, _ = reviewed
    page, _ = review_paths(out)
    with headless_chromium() as browser:
        browser.get(page.resolve().as_uri())
        state = wait_for(browser, "return [dub.readyState, source.readyState, dub.duration, source.duration, dub.videoWidth, source.videoWidth]",
                         lambda s: s[0] >= 2 and s[1] >= 2)
        assert state[2] > 0 and state[3] > 0, f"both videos report a duration: {state}"
        assert state[4] > 0 and state[5] > 0, "both videos decode frames (H.264 plays in this browser)"
        # the transport seeks both players to the same time
        browser.execute_script("window.review.seek(1.7)")
        dub_t, source_t, readout, left = wait_for(
            browser, "return [dub.currentTime, source.currentTime, readout.textContent, playhead.style.left]", lambda s: abs(s[0] - s[1]) < 1e-3
        )
        assert dub_t == pytest.approx(1.7, abs=0.01) and source_t == pytest.approx(1.7, abs=0.01)
        assert readout.startswith("1.70 s, frame 43/")
        x0, x1 = page_data(page)["plot_x"]
        assert float(left.rstrip("%")) == pytest.approx(100 * (x0 + (x1 - x0) * 1.7 / (page_data(page)["duration"])), abs=0.2)
        # clicking the plot seeks too (a quarter of the way along the time axis)
        browser.execute_script(
            "const b = plot.getBoundingClientRect(), [x0, x1] = window.review.data.plot_x;"
            "plot.dispatchEvent(new MouseEvent('click', {clientX: b.left + b.width * (x0 + (x1 - x0) * 0.25), clientY: b.top + 10, bubbles: true}));"
        )
        dub_t, source_t = wait_for(browser, "return [dub.currentTime, source.currentTime]", lambda s: abs(s[0] - 0.75) < 0.02)
        assert source_t == pytest.approx(dub_t, abs=1e-3)
        # playing keeps them together, pausing lines them up exactly
        browser.execute_script("dub.play()")
        playing = wait_for(browser, "return [dub.currentTime, source.currentTime, source.paused]", lambda s: s[0] > 1.5, timeout=10)
        assert not playing[2] and abs(playing[0] - playing[1]) < 0.15, playing
        browser.execute_script("dub.pause()")
        wait_for(browser, "return [dub.currentTime, source.currentTime]", lambda s: abs(s[0] - s[1]) < 1e-3)
        # the plot is drawn
        assert browser.execute_script("const i = document.getElementById('plotimg'); return i.complete && i.naturalWidth") == 1200
        shot = browser.get_screenshot_as_png()
    (tmp_path / "review.png").write_bytes(shot)
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))
    assert image.std() > 30, "the screenshot is blank"
    assert len(np.unique(image.reshape(-1, 3)[::97], axis=0)) > 500  # video frames and the plot, not a flat page


def wait_for(browser, script: str, done, timeout: float = 15.0):
    """Evaluate ``script`` until ``done(value)`` holds; returns the value (fails with the last value on timeout)."""
    end = time.monotonic() + timeout
    while True:
        value = browser.execute_script(script)
        if done(value) or time.monotonic() > end:
            assert done(value), f"timed out waiting: {value}"
            return value
        time.sleep(0.05)


def test_animate_review_and_no_residue_when_a_run_fails(portrait, grid_clips, tmp_path, monkeypatch):
    import latentdub
    from latentdub.plugins.warp_renderer import WarpRenderer

    out = tmp_path / "talk.mp4"
    latentdub.animate(portrait, grid_clips[3], out, preset="preview", overrides=["output.review=true"], log=lambda m: None)
    page, assets = review_paths(out)
    data = page_data(page)
    source = {v for v in data["source"]}
    assert len(source) == 1 and next(iter(source)) is not None  # one portrait, one measured opening
    assert data["follow"]["r"] > 0.8 and (assets / "source.mp4").is_file()

    def broken(self, *args):
        raise RuntimeError("renderer broke")

    monkeypatch.setattr(WarpRenderer, "render", broken)
    failed = tmp_path / "failed.mp4"
    with pytest.raises(RuntimeError):
        latentdub.animate(portrait, grid_clips[3], failed, preset="preview", overrides=["output.review=true"], log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (out, page, assets, out.with_name("talk.latentdub.yaml")))


def test_dub_shows_one_progress_bar_per_stage(reviewed):
    """analyse, render (render, composite and encode stream together) and review each end on one full bar."""
    *_, stderr = reviewed
    finals = {}
    for part in stderr.replace("\r", "\n").splitlines():
        name = part.split(":")[0].strip()
        if name in ("analyse", "study", "render", "review") and "|" in part:
            finals[name] = part
    assert sorted(finals) == ["analyse", "render", "review"], stderr  # the preview renderer does not study
    for name, bar in finals.items():
        assert re.search(r"100%\|.*\| 7[45]/7[45] ", bar), bar
    assert "faces: 75/75 output frames dubbed" in stderr and "also wrote" in stderr and "review.html" in stderr
