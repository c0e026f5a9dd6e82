"""Identity profiles from `latentdub tune` drive `animate` and `dub`; a profile for another base is refused."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from latentdub.cli import cli
from latentdub.toolkit.media.video import read_frames

pytestmark = pytest.mark.slow
TINY_TUNE = ["--preset", "tiny", "--set", "finetuner.steps=8", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def profile(portrait, tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "astronaut.profile"
    result = invoke("tune", portrait, "-o", out, *TINY_TUNE)
    assert result.exit_code == 0, result.output
    return out


def test_profile_changes_the_rendered_face(profile, portrait, grid_clips, tmp_path):
    plain, tuned = tmp_path / "plain.mp4", tmp_path / "tuned.mp4"
    for out, extra in ((plain, []), (tuned, ["--profile", profile])):
        result = invoke("animate", portrait, grid_clips[1], "-o", out, "--preset", "tiny", "--quiet", "--set", "output.crf=0", *extra)
        assert result.exit_code == 0, result.output
    a = next(read_frames(plain)).image.astype(int)
    b = next(read_frames(tuned)).image.astype(int)
    assert np.abs(a - b).max() > 10, "the tuned generator should render a different face"


def test_profile_for_another_generator_is_refused(profile, portrait, grid_clips, tmp_path):
    out = tmp_path / "o.mp4"
    result = invoke("dub", grid_clips[0], grid_clips[1], "-o", out, "--preset", "tiny", "--set", "seed=7", "--profile", profile, "--quiet")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "latentdub tune" in result.output
    assert not out.exists()
