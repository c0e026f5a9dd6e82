"""Identity profiles: safetensors round trips, base-generator checks, and `latentdub tune` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from latentdub.cli import cli
from latentdub.toolkit.core.build import Components
from latentdub.toolkit.core.errors import BadInputError, NoFaceError
from latentdub.toolkit.core.presets import resolve_preset
from latentdub.toolkit.learning.profiles import apply_profile, load_profile, read_profile_meta, save_profile

from .test_pti import TINY as PTI_TINY
from .test_pti import _quiet

#: The PTI tests' tiny stack, with fewer tuning steps.
TINY = [*PTI_TINY, "finetuner.steps=3"]


def generator(seed: int = 0):
    return Components(resolve_preset("tiny", TINY + [f"seed={seed}"]), log=_quiet)["generator"]


def _tuned_state(gen, scale: float = 0.05, only: str = "") -> dict:
    """The generator's state with Gaussian changes on floating-point tensors whose key contains ``only``."""
    g = torch.Generator().manual_seed(7)
    return {
        k: (v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() and only in k else v.clone())
        for k, v in gen.module.state_dict().items()
    }


def _save(gen, tuned: dict, path, **kw):
    pivots = torch.randn(2, gen.n_styles, 512, generator=torch.Generator().manual_seed(3))
    return save_profile(path, tuned, gen.module.state_dict(), pivots, gen.fingerprint(), gen.module.config(), meta={"keyframes": [3, 9]}, **kw)


@pytest.mark.parametrize("store", ["delta", "full"])
def test_round_trip_gives_identical_outputs(tmp_path, store):
    gen = generator()
    tuned = _tuned_state(gen)
    path = _save(gen, tuned, tmp_path / "p.profile", store=store)
    reference = generator()
    reference.module.load_state_dict(tuned)
    fresh = generator()
    profile = apply_profile(fresh, path)
    w = torch.randn(3, gen.n_styles, 512, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(fresh.synthesize(w), reference.synthesize(w))
        assert not torch.equal(fresh.synthesize(w), gen.synthesize(w))
    assert all(torch.equal(fresh.module.state_dict()[k], v) for k, v in tuned.items())
    assert profile.store == store and profile.pivots.shape == (2, gen.n_styles, 512)
    meta = read_profile_meta(path)
    assert meta["base_fingerprint"] == gen.fingerprint() and meta["keyframes"] == [3, 9]
    assert meta["generator"]["size"] == 32 and "channel_multiplier" in meta["generator"]
    assert {"tool_version", "created", "format"} <= set(meta)


def test_delta_keeps_only_changed_tensors_and_half_precision_is_close(tmp_path):
    gen = generator()
    tuned = _tuned_state(gen, only="to_rgb1")
    delta = load_profile(_save(gen, tuned, tmp_path / "d.profile"))
    assert sorted(delta.tensors) == sorted(k for k in tuned if "to_rgb1" in k)
    full = _save(gen, _tuned_state(gen), tmp_path / "f32.profile", store="full")
    half = _save(gen, _tuned_state(gen), tmp_path / "f16.profile", store="full", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    fresh = generator()
    apply_profile(fresh, _save(gen, _tuned_state(gen), tmp_path / "h.profile", half=True))
    expected = _tuned_state(gen)
    assert max(float((fresh.module.state_dict()[k] - v).abs().max()) for k, v in expected.items()) < 1e-4


def test_profile_for_another_base_is_refused(tmp_path):
    gen = generator(seed=0)
    path = _save(gen, _tuned_state(gen), tmp_path / "p.profile")
    other = generator(seed=1)
    before = {k: v.clone() for k, v in other.module.state_dict().items()}
    with pytest.raises(BadInputError) as err:
        apply_profile(other, path)
    message = str(err.value)
    assert "\n" not in message
    assert gen.fingerprint()[:12] in message and other.fingerprint()[:12] in message and "re-run `latentdub tune`" in message
    assert all(torch.equal(before[k], v) for k, v in other.module.state_dict().items())
    apply_profile(gen, path)
    with pytest.raises(BadInputError, match="already carries profile"):
        apply_profile(gen, path)


def test_files_that_are_not_profiles_are_refused(tmp_path):
    from latentdub.nets.stylegan2 import save_safetensors

    gen = generator()
    with pytest.raises(BadInputError, match="not found"):
        load_profile(tmp_path / "missing.profile")
    weights = save_safetensors(gen.module, tmp_path / "g.safetensors")
    with pytest.raises(BadInputError, match="not a latentdub profile"):
        load_profile(weights)
    pickle = tmp_path / "evil.profile"
    torch.save({"x": torch.zeros(1)}, pickle)
    with pytest.raises(BadInputError, match="not a latentdub profile"):
        load_profile(pickle)
    with pytest.raises(BadInputError):
        _save(gen, {}, tmp_path / "p.profile")
    assert not (tmp_path / "p.profile").exists() and not list(tmp_path.glob(".*.part"))


def test_tune_command_on_a_portrait(portrait, tmp_path):
    out = tmp_path / "astronaut.profile"
    args = ["tune", str(portrait), "-o", str(out), "--preset", "tiny", "-q"] + [a for o in TINY for a in ("--set", o)]
    dry = CliRunner().invoke(cli, args + ["--dry-run"])
    assert dry.exit_code == 0 and "finetuner:" in dry.output and "lpips_random_backbone: true" in dry.output
    assert not out.exists()
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    meta = read_profile_meta(out)
    assert meta["source"] == str(portrait.resolve()) and meta["keyframes"] == [0]
    assert meta["base_fingerprint"] == generator().fingerprint()
    assert meta["final_lpips"] < meta["initial_lpips"] and meta["updates"] == 3
    assert (tmp_path / "astronaut.latentdub.yaml").is_file()


def test_tune_refuses_a_picture_without_a_face(tmp_path):
    from PIL import Image

    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((128, 128, 3), 128, np.uint8)).save(blank)
    out = tmp_path / "wall.profile"
    result = CliRunner().invoke(cli, ["tune", str(blank), "-o", str(out), "--preset", "tiny", "-q"] + [a for o in TINY for a in ("--set", o)])
    assert result.exit_code == NoFaceError.exit_code and "no face" in result.output
    assert not out.exists()


def test_tune_a_video_on_keyframes(grid_clips, tmp_path):
    from latentdub.toolkit.learning.tuning import tune

    summary = tune(grid_clips[1], tmp_path / "speaker.profile", preset="tiny", overrides=TINY + ["finetuner.keyframes=4"], log=_quiet)
    profile = load_profile(summary.profile)
    assert summary.n_frames == 75 and len(summary.keyframes) == 4
    assert profile.meta["keyframes"] == summary.keyframes and profile.pivots.shape == (4, 8, 512)
    assert summary.stats.updates == 3 * 4
    fresh = generator()
    apply_profile(fresh, profile)
    assert any(not torch.equal(v, generator().module.state_dict()[k]) for k, v in fresh.module.state_dict().items())
    assert json.loads(json.dumps(profile.meta))["source"].endswith(grid_clips[1].name)
