"""clipfit: mouth directions fitted per clip, on planted W+ trajectories through the real tiny stack.

The planted clip: crop landmarks built from the 68-point template with a known
mouth shape and head pose per frame, and W+ latents that are a known linear
function of the measured features (mouth directions D, pose directions P),
plus other motion (blinks, expression: directions R) and noise. So the mouth
features are also a known linear readout of the latents (the pseudo-inverse of
[D; P; R]). The motion model is built from the tiny preset (tiny random
encoder and generator, the real viseme model) and driven by real GRID speech.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentdub.toolkit.core.build import Components
from latentdub.toolkit.core.errors import CannotServeError
from latentdub.toolkit.core.presets import resolve_preset
from latentdub.toolkit.faces.masks import TEMPLATE_68
from latentdub.toolkit.faces.measures import head_pose, mouth_shapes, neutral_mouth
from latentdub.toolkit.learning.directions import FEATURES, SharedDirections, clip_features, fit_clip
from latentdub.toolkit.media.audio import load_audio

N_FRAMES = 300
LAYERS = list(range(8))


def synthetic_landmarks(shape: np.ndarray, pose: np.ndarray, scale: float = 60.0) -> np.ndarray:
    """Crop landmarks ``[N, 68, 2]`` px: the template with (opening, width, protrusion) and (yaw, pitch, roll) applied, in IOD."""
    out = []
    for (opening, width, protrusion), (yaw, pitch, roll) in zip(shape, pose):
        p = TEMPLATE_68.copy()
        p[[65, 66, 67, 55, 56, 57, 58, 59], 1] += opening  # lower lip down
        p[5:12, 1] += 0.5 * opening  # the chin follows
        p[48:68, 0] *= 1.0 + width
        p[49:54, 1] -= 0.05 * protrusion
        p[55:60, 1] += 0.05 * protrusion
        p[27:36] += (yaw, pitch)
        c, s = np.cos(roll), np.sin(roll)
        p = p @ np.array([[c, s], [-s, c]])
        out.append(p * scale + (128.0, 100.0))
    return np.stack(out)


def smooth_track(rng, n: int, lo: float, hi: float, cycles: float) -> np.ndarray:
    """A smooth random trajectory spanning [lo, hi]."""
    t = np.arange(n) / n
    x = sum(np.sin(2 * np.pi * (cycles * k * t + rng.uniform())) / k for k in (1, 2, 3))
    x = (x - x.min()) / (x.max() - x.min())
    return lo + (hi - lo) * x


@pytest.fixture(scope="module")
def planted():
    """A planted clip: landmarks, latents [N, 10, 512] and the true directions."""
    rng = np.random.default_rng(0)
    shape = np.stack([smooth_track(rng, N_FRAMES, 0.0, 0.35, 9.3), smooth_track(rng, N_FRAMES, -0.2, 0.15, 5.1), smooth_track(rng, N_FRAMES, -0.2, 1.2, 3.7)], 1)
    # the head nods with the mouth (pitch follows the opening) and turns on its own
    pose = np.stack([smooth_track(rng, N_FRAMES, -0.05, 0.05, 2.3), 0.08 * shape[:, 0] + smooth_track(rng, N_FRAMES, 0, 0.04, 4.1), smooth_track(rng, N_FRAMES, -0.03, 0.03, 1.7)], 1)
    landmarks = synthetic_landmarks(shape, pose)
    x = clip_features(landmarks)  # what the fit measures
    dim = len(LAYERS) * 512
    scales = np.array([15.0, 20.0, 3.0, 60.0, 60.0, 60.0])  # about one unit of W+ norm per feature's spread
    truth = rng.normal(size=(6, dim)) / np.sqrt(dim) * scales[:, None]  # rows: D (mouth) then P (pose)
    others = rng.normal(size=(4, dim)) / np.sqrt(dim) * 0.2  # other motion (blinks, brows), a fifth of the mouth's
    base = rng.normal(0, 0.5, size=(10, 512))
    moving = (x - x.mean(0)) @ truth + rng.normal(size=(N_FRAMES, 4)) @ others + rng.normal(0, 0.01, size=(N_FRAMES, dim))
    latents = np.repeat(base[None], N_FRAMES, 0)
    latents[:, LAYERS] += moving.reshape(N_FRAMES, len(LAYERS), 512)
    latents[:, 8:] += rng.normal(0, 0.3, size=(N_FRAMES, 2, 512))  # fine layers vary too; clipfit must leave them alone
    readout = np.linalg.pinv(np.concatenate([truth, others]))[:, :3]  # [dim, 3]: mouth features of a latent
    return {"landmarks": landmarks, "latents": latents.astype(np.float32), "truth": truth, "readout": readout, "base": base, "x": x}


#: The words of the speech clip (GRID lbbc2a), so the viseme model aligns them and the rounded "oo"s show.
TRANSCRIPT = "motion.transcript=lay blue by c two again"


@pytest.fixture(scope="module")
def stack():
    return Components(resolve_preset("tiny", ["motion.plugin=clipfit", "motion.prior=null", TRANSCRIPT]), log=lambda _: None)


@pytest.fixture(scope="module")
def speech(grid_clips):
    return load_audio(grid_clips[3], 16000)  # lbbc2a: "lay blue by c two again"


def test_measures_read_back_the_planted_shapes(planted):
    x = planted["x"]
    lms = planted["landmarks"]
    neutral = neutral_mouth(lms)
    m = mouth_shapes(lms, neutral)
    assert np.allclose(m, x[:, :3]) and np.allclose(head_pose(lms), x[:, 3:])
    # opening is the inner-lip gap over IOD (template gap 0.016), protrusion the extra lip thickness per 0.1 IOD
    gap = lms[:, 66, 1] - lms[:, 62, 1]
    assert np.corrcoef(m[:, 0], gap)[0, 1] > 0.999
    # pose from the eyes and nose only: the mouth does not move it
    still = synthetic_landmarks(np.c_[np.linspace(0, 0.3, 5), np.zeros(5), np.zeros(5)], np.zeros((5, 3)))
    assert np.ptp(head_pose(still), axis=0).max() < 1e-9


def test_fit_recovers_the_planted_map_and_drives_new_shapes(planted, stack, speech):
    motion, renderer = stack["motion"], stack["renderer"]
    latents = planted["latents"]
    motion.observe(np.arange(N_FRAMES), latents, planted["landmarks"])
    drive = motion.drive()
    truth = planted["truth"][:3]
    error = np.linalg.norm(drive.directions - truth) / np.linalg.norm(truth)
    assert error <= 0.05, f"relative error of the mouth map {error:.3f}"
    assert drive.fit["r2_mouth"] > 0.5 and any("R^2" in n for n in drive.notes)

    identity = torch.from_numpy(latents[:8].mean(0))
    renderer.identity = identity
    n_out = 75
    produced = motion.predict(speech, 25.0, n_out, identity)
    assert produced.kind == "wplus-offset" and produced.extra["base"] == "identity"
    targets = produced.extra["mouth"]
    assert targets.shape == (n_out, 3) and targets[:, 0].max() > 0.15 and targets[:, 2].max() > 0.5  # real speech opens and rounds the mouth
    source = np.arange(n_out) * 3  # the source frames the output frames sit on
    w_src = torch.from_numpy(latents[source])
    w_out = renderer.latents(produced, np.arange(n_out), w_src).numpy().astype(np.float64)

    # outside the mouth subspace V the output is the source itself, on every layer
    v = produced.extra["basis"].reshape(len(produced.extra["basis"]), -1).astype(np.float64)
    def off(w):
        return w.reshape(n_out, -1) - (w.reshape(n_out, -1) @ v.T) @ v
    assert np.abs(off(w_out) - off(w_src.numpy().astype(np.float64))).max() <= 1e-6
    # the mouth read from the produced latents follows the targets
    read = (w_out[:, LAYERS].reshape(n_out, -1) - planted["base"][LAYERS].reshape(-1)) @ planted["readout"]
    for j, name in enumerate(FEATURES[:3]):
        r = np.corrcoef(read[:, j], targets[:, j])[0, 1]
        assert r >= 0.95, f"{name}: correlation {r:.3f} between target and produced mouth"


def test_pose_is_regressed_out(planted):
    w = planted["latents"][:, LAYERS].reshape(N_FRAMES, -1)
    pitch = planted["truth"][4] / np.linalg.norm(planted["truth"][4])
    def cos(d):
        return np.abs(d @ pitch) / np.linalg.norm(d, axis=1)
    fitted = fit_clip(w, planted["landmarks"], components=16).directions[:3]
    assert cos(fitted).max() < 0.1
    # control: the same fit without the pose columns lets the nod leak into the opening direction
    from latentdub.toolkit.learning.directions import block_folds, cross_validate, principal_basis

    x = planted["x"][:, :3] - planted["x"][:, :3].mean(0)
    wc = w - w.mean(0)
    basis = principal_basis(wc, 16)
    naive = cross_validate(block_folds(x, wc @ basis.T)).coefficients @ basis
    assert cos(naive)[0] > 0.2  # more than twice the bound the pose-aware fit stays under


def test_a_still_mouth_cannot_be_served_without_shared_directions(planted, speech, tmp_path):
    stack = Components(resolve_preset("tiny", ["motion.plugin=clipfit", "motion.prior=null"]), log=lambda _: None)
    motion = stack["motion"]
    rng = np.random.default_rng(1)
    still = synthetic_landmarks(np.zeros((60, 3)) + rng.normal(0, 0.002, (60, 3)), np.zeros((60, 3)))
    latents = planted["latents"][:60]  # latent motion that has nothing to do with this mouth
    motion.observe(np.arange(60), latents, still)
    with pytest.raises(CannotServeError, match="min_r2"):
        motion.predict(speech, 25.0, 10, torch.from_numpy(latents.mean(0)))
    # with shared directions the same clip is served by them (and the notes say so)
    shared = SharedDirections(np.zeros((6, 10, 512), np.float32), tuple(LAYERS), FEATURES, np.array([[0, -0.1, 0], [0.3, 0.1, 1]], np.float32), "x", {"clips": 3})
    shared.directions[:, LAYERS] = planted["truth"].reshape(6, len(LAYERS), 512)
    motion.prior = shared
    motion.observe(np.arange(60, 61), latents[:1], still[:1])  # new data: the fit is redone
    produced = motion.predict(speech, 25.0, 10, torch.from_numpy(latents.mean(0)))
    assert any("shared directions" in n for n in produced.extra["notes"])
    path = shared.save(tmp_path / "d.safetensors")
    again = SharedDirections.load(path)
    assert np.array_equal(again.directions, shared.directions) and again.layers == shared.layers and again.info == {"clips": 3}


def test_study_keeps_a_bounded_even_sample(stack):
    from latentdub.plugins.clipfit import _EvenKeeper

    keeper = _EvenKeeper(40)
    for start in range(0, 1000, 32):
        frames = np.arange(start, min(start + 32, 1000))
        pick = keeper.wanted(frames)
        keeper.add(frames[pick], np.zeros((pick.sum(), 1)), np.zeros((pick.sum(), 68, 2)))
        assert len(keeper.rows) <= 40
    kept, _, _ = keeper.arrays()
    assert len(kept) >= 20 and np.ptp(np.diff(kept)) == 0 and kept[-1] >= 900


def test_five_point_landmarks_cannot_be_served(stack):
    motion = stack["motion"]
    with pytest.raises(CannotServeError, match="68-point"):
        motion.study(np.zeros((2, 64, 64, 3), np.uint8), np.zeros((2, 5, 2), np.float32), np.arange(2))
