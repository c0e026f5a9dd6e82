"""Pivotal tuning on a tiny real-architecture StyleGAN2: reconstruction, locality, keyframes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from latentdub.toolkit.core.build import Components
from latentdub.toolkit.core.errors import BadInputError, ConfigError
from latentdub.toolkit.core.presets import resolve_preset
from latentdub.toolkit.faces.align import ffhq_alignment, warp_to_crop
from latentdub.toolkit.faces.track import analyse_video, track_still
from latentdub.toolkit.learning.profiles import apply_profile, load_profile
from latentdub.toolkit.media.video import probe_video, read_frames, read_image

#: A 32 px StyleGAN2 (32 channels, 2-layer mapping), tiny pSp, LPIPS (AlexNet) with a random trunk.
TINY = [
    "generator.size=32", "generator.channel_max=32", "generator.n_mlp=2",
    "encoder.output_size=32", "encoder.input_size=64",
    "finetuner.lpips_random_backbone=true", "finetuner.lpips_net=alex",
    "finetuner.lr=0.003", "finetuner.steps=30", "finetuner.lpips_threshold=0.0",
]


def _quiet(msg: str) -> None:
    pass


def components(*extra: str, seed: int = 0) -> Components:
    return Components(resolve_preset("tiny", TINY + [f"seed={seed}", *extra]), log=_quiet)


@pytest.fixture(scope="module")
def crop(portrait) -> np.ndarray:
    """The astronaut, aligned at 32 px: uint8 [1, 32, 32, 3]."""
    picture = read_image(portrait)
    comps = components()
    tracked = track_still(picture, comps["detector"], comps.preset.track)
    return warp_to_crop(picture, ffhq_alignment(tracked.face.landmarks5, 32))[None]


def _distance(generator, w, other) -> float:
    with torch.no_grad():
        return float(((generator.synthesize(w) - other) ** 2).mean())


def test_tuning_reconstructs_the_crop_and_leaves_the_generator_alone(crop, tmp_path):
    comps = components()
    gen = comps["generator"]
    before = {k: v.clone() for k, v in gen.module.state_dict().items()}
    finetuner = comps["finetuner"]
    profile = finetuner.tune(gen, comps["encoder"], crop, tmp_path / "p.profile")
    stats = finetuner.last_stats
    assert stats.updates == 30 and not stats.early_stop
    assert stats.l2_after < 0.5 * stats.l2_before
    assert stats.lpips_after < 0.5 * stats.lpips_before
    # the base generator is untouched; the profile carries the tuning
    assert all(torch.equal(before[k], v) for k, v in gen.module.state_dict().items())
    assert not any(p.requires_grad for p in gen.module.parameters())
    loaded = load_profile(profile)
    target = torch.from_numpy(crop).permute(0, 3, 1, 2).float() / 127.5 - 1
    base_error = _distance(gen, loaded.pivots, target)
    apply_profile(gen, loaded)
    assert _distance(gen, loaded.pivots, target) < 0.5 * base_error
    assert loaded.meta["final_lpips"] == pytest.approx(stats.lpips_after)


@pytest.mark.parametrize("space", ["w", "wplus"])
def test_optimised_pivots_fit_better_than_the_mean_latent(crop, tmp_path, space):
    comps = components(f"finetuner.pivots=optimise_{space}", "finetuner.pivot_steps=25", "finetuner.pivot_lr=0.08", "finetuner.steps=1")
    gen = comps["generator"]
    finetuner = comps["finetuner"]
    assert not finetuner.needs_encoder
    pivots = load_profile(finetuner.tune(gen, None, crop, tmp_path / "w.profile")).pivots
    target = torch.from_numpy(crop).permute(0, 3, 1, 2).float() / 127.5 - 1
    mean = gen.latent_avg.reshape(1, 1, -1).expand(1, gen.n_styles, -1)
    assert pivots.shape == (1, gen.n_styles, 512)
    assert _distance(gen, pivots, target) < 0.6 * _distance(gen, mean, target)
    assert torch.equal(pivots[:, :1].expand_as(pivots), pivots) == (space == "w")


def _region_change(gen, profile_path, pivot: torch.Tensor, seed: int) -> float:
    """Mean squared change of G at latents 30 W+ units from the pivot towards random truncated w."""
    with torch.no_grad():
        z = torch.randn(16, 512, generator=torch.Generator().manual_seed(seed))
        avg = gen.latent_avg
        w = avg + 0.5 * (gen.module.mapping(z) - avg)
        d = w[:, None, :] - pivot
        w_r = pivot + d * (30.0 / d.flatten(1).norm(dim=1)).clamp(max=1.0)[:, None, None]
        base = gen.synthesize(w_r)
        apply_profile(gen, profile_path)
        return float(((gen.synthesize(w_r) - base) ** 2).mean())


def test_locality_regularisation_keeps_the_rest_of_the_space(crop, tmp_path):
    changes, stats = {}, {}
    for locality in (False, True):
        comps = components(f"finetuner.locality={str(locality).lower()}", "finetuner.locality_weight=1.0")
        gen = comps["generator"]
        finetuner = comps["finetuner"]
        path = finetuner.tune(gen, comps["encoder"], crop, tmp_path / f"{locality}.profile")
        stats[locality] = finetuner.last_stats
        changes[locality] = _region_change(gen, path, load_profile(path).pivots, seed=1234)
    assert changes[True] < 0.7 * changes[False]
    assert stats[True].l2_after < 0.5 * stats[True].l2_before  # still fits the identity


def test_early_stop_below_the_threshold(crop, tmp_path):
    comps = components("finetuner.lpips_threshold=10.0")
    finetuner = comps["finetuner"]
    profile = load_profile(finetuner.tune(comps["generator"], comps["encoder"], crop, tmp_path / "s.profile"))
    assert finetuner.last_stats.early_stop and finetuner.last_stats.updates == 0
    assert profile.tensors == {} and profile.meta["early_stop"]


def test_bad_inputs_and_settings(crop, tmp_path):
    comps = components()
    with pytest.raises(BadInputError, match=r"uint8 \[N, S, S, 3\]"):
        comps["finetuner"].tune(comps["generator"], comps["encoder"], crop.astype(np.float32), tmp_path / "x")
    with pytest.raises(ConfigError, match="encoder stage"):
        comps["finetuner"].tune(comps["generator"], None, crop, tmp_path / "x")
    with pytest.raises(ConfigError, match="finetuner.steps"):
        components("finetuner.steps=0")["finetuner"]
    with pytest.raises(ConfigError, match="finetuner.pivots"):
        resolve_preset("tiny", ["finetuner.pivots=magic"])
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def grid_track(grid_clips):
    clip = grid_clips[0]
    comps = components()
    info = probe_video(clip)
    return analyse_video(read_frames(clip, fps=info.fps, info=info), comps["detector"], comps.preset.track, n_frames_hint=info.n_frames)


def test_keyframes_cover_mouth_shapes(grid_track):
    from latentdub.toolkit.faces.track import keyframe_features, select_keyframes

    frames, feats = keyframe_features(grid_track)
    assert feats.shape == (len(frames), 4) and len(frames) > 60
    opening = dict(zip(frames.tolist(), feats[:, 0]))
    picks = select_keyframes(grid_track, 6)
    assert picks == sorted(set(picks)) and len(picks) == 6
    spread = np.ptp([opening[i] for i in picks])
    first = np.ptp([opening[i] for i in frames[:6]])
    assert spread > 3 * first
    # a closed and a wide-open mouth are both present
    values = np.array(list(opening.values()))
    assert min(opening[i] for i in picks) <= np.percentile(values, 25)
    assert max(opening[i] for i in picks) >= np.percentile(values, 90)
    # five-point detectors: width and pose only, still spread out
    sparse = dataclasses.replace(grid_track, landmarks68=None)
    assert keyframe_features(sparse)[1].shape[1] == 3
    widths = dict(zip(*[a.tolist() for a in (frames, keyframe_features(sparse)[1][:, 0])]))
    assert np.ptp([widths[i] for i in select_keyframes(sparse, 6)]) > 2 * np.ptp([widths[i] for i in frames[:6]])
    everything = select_keyframes(grid_track, 1000)
    assert everything == sorted(set(everything)) and set(picks) <= set(everything) <= set(frames.tolist())


def test_missing_lpips_backbone_fails_before_any_work(tmp_path, monkeypatch):
    from latentdub.toolkit.core.errors import MissingWeightsError

    monkeypatch.setenv("LATENTDUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LATENTDUB_WEIGHTS_DIR", str(tmp_path / "none"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth"):
        components("finetuner.lpips_random_backbone=false", "finetuner.lpips_net=vgg")["finetuner"]
