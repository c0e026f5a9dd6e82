"""The audio2latent network, its motion plugin and the neural renderer (tiny random networks, real GRID speech)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentdub.nets.audio2latent import (
    Audio2Latent,
    Audio2LatentSpec,
    fit_pca,
    load_checkpoint,
    predict_windows,
    random_pca,
    save_checkpoint,
    window_slices,
)
from latentdub.toolkit.core.build import Components
from latentdub.toolkit.core.errors import BadInputError, MissingWeightsError, PluginError
from latentdub.toolkit.core.presets import resolve_preset
from latentdub.toolkit.core.types import Audio, Motion
from latentdub.toolkit.media.audio import load_audio
from latentdub.toolkit.media.video import read_frames

SPEC = Audio2LatentSpec(n_styles=8, latent_dim=64, layers=(0, 1, 2, 3), components=8, conv_channels=(8, 16), audio_dim=32, hidden=64)

#: Tiny pSp (32 px in, 8 x 64 W+) and StyleGAN2 (32 px), untrained audio2latent, neural renderer.
PRESET = """\
device: cpu
seed: 0
track: {crop_size: 64}
detector: {plugin: dlib}
encoder: {plugin: psp, random_init: true, output_size: 32, style_dim: 64, input_size: 32, checkpoint: null}
generator: {plugin: stylegan2, random_init: true, size: 32, style_dim: 64, checkpoint: null}
audio_features: {plugin: mfcc}
motion: {plugin: audio2latent, random_init: true, layers: [0, 1, 2, 3], components: 8, conv_channels: [8, 16], audio_dim: 32, hidden: 64, window: 50, overlap: 10}
renderer: {plugin: neural, batch_size: 4}
"""


@pytest.fixture()
def preset(tmp_path):
    path = tmp_path / "a2l.yaml"
    path.write_text(PRESET)
    return path


def _model(seed: int = 0) -> Audio2Latent:
    torch.manual_seed(seed)
    model = Audio2Latent(SPEC)
    model.set_pca(*random_pca(SPEC, seed=seed))
    return model.eval()


def test_network_shapes_and_subspace():
    model = _model()
    feats, ident = torch.randn(2, 30, 28, 12), torch.randn(2, 8, 64)
    coeffs = model(feats, ident)
    assert coeffs.shape == (2, 30, 8)
    offset = model.expand(coeffs)
    assert offset.shape == (2, 30, 8, 64) and not offset[:, :, 4:].any()
    torch.testing.assert_close(model.project(offset + model.pca_mean.reshape(8, 64)), coeffs, atol=1e-5, rtol=1e-4)
    wbar = model.latents(feats, ident)
    torch.testing.assert_close(wbar[:, :, 4:], ident[:, None, 4:].expand(-1, 30, -1, -1))
    gru = Audio2Latent(Audio2LatentSpec(**{**SPEC.__dict__, "rnn": "gru", "bidirectional": False}))
    assert gru(feats, ident).shape == (2, 30, 8)
    with pytest.raises(ValueError, match="layers"):
        Audio2LatentSpec(n_styles=8, layers=(8,))


def test_pca_fitted_within_clips_finds_the_motion_directions():
    rng = np.random.default_rng(0)
    n_clips, frames, dims = 12, 50, 2 * 64
    motion = np.linalg.qr(rng.normal(size=(dims, 2)))[0].T  # two planted unit directions on layers 1-2
    rows, groups = [], []
    for c in range(n_clips):
        identity = rng.normal(scale=5.0, size=(8, 64))  # identities differ a lot more than frames of one clip
        w = np.repeat(identity[None], frames, 0)
        w[:, 1:3] += (rng.normal(size=(frames, 2)) * [2.0, 1.0] @ motion).reshape(frames, 2, 64)
        rows.append(w + rng.normal(scale=0.01, size=w.shape))
        groups.append(np.full(frames, c))
    lat, grp = torch.tensor(np.concatenate(rows), dtype=torch.float32), torch.tensor(np.concatenate(groups))
    mean, basis, std, explained = fit_pca(lat, grp, (1, 2), 2)
    top = basis.reshape(2, 8, 64)[:, 1:3].reshape(2, -1).numpy()
    assert np.linalg.norm(top @ motion.T, axis=1) == pytest.approx([1, 1], abs=1e-3)  # spans the planted motion
    assert not basis.reshape(2, 8, 64)[:, [0, 3, 4, 5, 6, 7]].any() and explained > 0.99
    assert std.numpy() == pytest.approx([2.0, 1.0], rel=0.15)
    torch.testing.assert_close(basis @ basis.T, torch.eye(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(mean, lat.mean(0).reshape(-1), atol=1e-4, rtol=0)
    _, global_basis, _, _ = fit_pca(lat, None, (1, 2), 2)  # without clip centring identities dominate
    assert np.linalg.norm(global_basis.reshape(2, 8, 64)[:, 1:3].reshape(2, -1).numpy() @ motion.T, axis=1).max() < 0.5


def test_windows_cover_long_speech_with_bounded_chunks():
    chunks = window_slices(1003, 250, 25)
    kept = np.concatenate([np.arange(a, b) for _, _, a, b in chunks])
    np.testing.assert_array_equal(kept, np.arange(1003))
    assert max(hi - lo for lo, hi, _, _ in chunks) <= 300 and all(lo <= a and b <= hi for lo, hi, a, b in chunks)
    model = _model()
    feats, ident = torch.randn(600, 28, 12), torch.randn(8, 64)
    whole = predict_windows(model, feats, ident, 10_000, 0, 1)
    windowed = predict_windows(model, feats, ident, 50, 20, 3)
    assert windowed.shape == (600, 8) and (windowed - whole).abs().max() < 1e-2 * whole.abs().max()


def test_checkpoint_round_trip(tmp_path):
    model = _model(seed=3)
    path = save_checkpoint(model, tmp_path / "m.safetensors", {"step": 7})
    loaded, extra = load_checkpoint(path)
    assert extra == {"step": 7} and loaded.spec == SPEC and not list(tmp_path.glob("*.part"))
    feats, ident = torch.randn(1, 20, 28, 12), torch.randn(1, 8, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(feats, ident), model(feats, ident), rtol=0, atol=0)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an audio2latent checkpoint"):
        load_checkpoint(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_checkpoint(tmp_path / "junk.safetensors")


@pytest.fixture(scope="module")
def long_speech(grid_clips) -> Audio:
    """All eight GRID sentences back to back (about 24 s, 16 kHz)."""
    parts = [load_audio(c).samples for c in grid_clips]
    return Audio(np.concatenate(parts), 16000)


def test_motion_plugin_predicts_compact_codes_for_long_speech(preset, long_speech):
    motion = Components(resolve_preset(preset), log=lambda m: None)["motion"]
    identity = torch.randn(8, 64)
    n = int(long_speech.duration * 25)
    out = motion.predict(long_speech, 25.0, n, identity)
    assert isinstance(out, Motion) and out.kind == "wplus-offset" and out.fps == 25.0
    assert out.codes.shape == (n, 8) and out.codes.dtype == np.float32 and np.isfinite(out.codes).all()
    assert out.extra["basis"].shape == (8, 8, 64) and out.extra["layers"] == (0, 1, 2, 3)
    whole = Components(resolve_preset(preset, ["motion.window=100000"]), log=lambda m: None)["motion"].predict(long_speech, 25.0, n, identity)
    assert np.abs(out.codes - whole.codes).max() < 1e-2 * np.abs(whole.codes).max()
    assert motion.predict(long_speech, 30.0, 90, identity.numpy()).codes.shape == (90, 8)
    with pytest.raises(PluginError, match="identity"):
        motion.predict(long_speech, 25.0, 10, None)


def test_motion_plugin_needs_a_checkpoint(preset, tmp_path):
    with pytest.raises(MissingWeightsError, match="latentdub train"):
        Components(resolve_preset(preset, ["motion.random_init=false"]), log=lambda m: None)["motion"]
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(BadInputError, match="motion.checkpoint"):
        Components(resolve_preset(preset, [f"motion.checkpoint={tmp_path / 'bad.safetensors'}"]), log=lambda m: None)["motion"]


@pytest.fixture(scope="module")
def crops(grid_clips) -> np.ndarray:
    """Four GRID frames, centre-cropped and resized to 64 px."""
    import cv2

    frames = [f.image for f, _ in zip(read_frames(grid_clips[0]), range(4))]
    return np.stack([cv2.resize(f[40:260, 70:290], (64, 64), interpolation=cv2.INTER_AREA) for f in frames])


def test_neural_renderer_prepares_identity_and_renders_crops(preset, crops):
    components = Components(resolve_preset(preset), log=lambda m: None)
    renderer, motion = components["renderer"], components["motion"]
    assert motion.kind in renderer.motion_kinds and renderer.batch_size == 4
    identity = renderer.prepare(crops, np.zeros((4, 68, 2), np.float32))
    assert tuple(identity.shape) == (8, 64)
    torch.testing.assert_close(identity, renderer.invert(crops).mean(0).cpu())
    speech = Audio(np.zeros(16000, np.float32), 16000)
    out = renderer.render(np.concatenate([crops, crops[:1]]), np.zeros((5, 68, 2), np.float32), motion.predict(speech, 25.0, 25, identity), np.arange(5))
    assert out.shape == (5, 64, 64, 3) and out.dtype == np.uint8 and out.std() > 1


def test_renderer_moves_only_the_motion_layers(preset, crops):
    renderer = Components(resolve_preset(preset, ["renderer.identity=per_frame"]), log=lambda m: None)["renderer"]
    w_id = renderer.prepare(crops, np.zeros((4, 68, 2), np.float32))
    basis = np.zeros((2, 8, 64), np.float32)
    basis[0, 1, :] = 1.0
    basis[1, 2, :3] = 1.0
    motion = Motion("wplus-offset", np.array([[1.0, 0.0], [0.5, 2.0], [0.0, 0.0]], np.float32), 25.0, {"basis": basis, "layers": (1, 2), "base": "identity"})
    w_src = torch.randn(2, 8, 64)
    w = renderer.latents(motion, np.array([1, 0]), w_src)
    offsets = torch.from_numpy(np.einsum("tk,kld->tld", motion.codes[[1, 0]], basis))
    torch.testing.assert_close(w[:, [1, 2]], (w_id[None] + offsets)[:, [1, 2]])
    torch.testing.assert_close(w[:, [0, 3, 4, 5, 6, 7]], w_src[:, [0, 3, 4, 5, 6, 7]])  # pose and light follow the source
    reference = Components(resolve_preset(preset, ["renderer.identity=reference"]), log=lambda m: None)["renderer"]
    reference.prepare(crops, np.zeros((4, 68, 2), np.float32))
    torch.testing.assert_close(reference.latents(motion, np.array([1, 0]), None), w_id[None] + offsets)
    frame_offsets = Motion("wplus-offset", np.ones((3, 8, 64), np.float32), 25.0)  # full-size offsets on the frame's own latent
    torch.testing.assert_close(renderer.latents(frame_offsets, np.array([2, 2]), w_src), w_src + 1)
    absolute = Motion("wplus", np.full((3, 8, 64), 7.0, np.float32), 25.0, {"layers": (5,)})
    w = renderer.latents(absolute, np.array([0, 1]), w_src)
    assert (w[:, 5] == 7).all() and torch.equal(w[:, :5], w_src[:, :5])


def test_subspace_mode_swaps_only_the_motion_component(preset, crops):
    """identity=subspace: the source keeps everything outside V; inside V its own motion becomes the predicted one."""
    renderer = Components(resolve_preset(preset, ["renderer.identity=subspace"]), log=lambda m: None)["renderer"]
    w_id = renderer.prepare(crops, np.zeros((4, 68, 2), np.float32))
    q, _ = torch.linalg.qr(torch.randn(8 * 64, 3, generator=torch.Generator().manual_seed(0)))
    basis = q.T.reshape(3, 8, 64).numpy()  # orthonormal rows over every layer
    codes = np.array([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]], np.float32)
    motion = Motion("wplus-offset", codes, 25.0, {"basis": basis, "base": "identity"})
    w_src = w_id[None] + torch.randn(2, 8, 64)
    w = renderer.latents(motion, np.array([0, 1]), w_src)
    flat_b = torch.from_numpy(basis.reshape(3, -1))
    inside = lambda x: (x.reshape(2, -1) @ flat_b.T)  # noqa: E731 - coordinates in V
    outside = lambda x: x.reshape(2, -1) - inside(x) @ flat_b  # noqa: E731 - the rest
    torch.testing.assert_close(inside(w - w_id[None]), torch.from_numpy(codes), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(outside(w), outside(w_src), atol=1e-4, rtol=1e-4)


def test_renderer_refuses_an_encoder_generator_mismatch(preset):
    with pytest.raises(PluginError, match="styles"):
        Components(resolve_preset(preset, ["generator.size=64"]), log=lambda m: None)["renderer"]
