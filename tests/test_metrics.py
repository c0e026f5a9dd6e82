"""Known-answer tests of the evaluation metrics on real GRID frames (CC BY 4.0, Cooke et al. 2006)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latentdub.toolkit.core.errors import BadInputError
from latentdub.toolkit.evaluation import measures as M

N_FRAMES = 30


def _frames(path, n=N_FRAMES, start=0) -> list[np.ndarray]:
    from latentdub.toolkit.media.video import read_frames

    out = []
    for frame in read_frames(path, start_frame=start):
        out.append(frame.image)
        if len(out) == n:
            break
    return out


@pytest.fixture(scope="module")
def clip_frames(grid_clips) -> dict[str, list[np.ndarray]]:
    return {p.stem: _frames(p) for p in grid_clips[:3]}


@pytest.fixture(scope="module")
def detector():
    from latentdub.toolkit.core.plugins import get_component

    component = get_component("detector", "dlib")
    return component.factory(component.config(), None)


@pytest.fixture(scope="module")
def speaking_frames(grid_clips) -> list[np.ndarray]:
    """Frames 15-44 of bbaf2n ("bin blue at f two now"), where the mouth moves."""
    return _frames(next(p for p in grid_clips if p.stem == "bbaf2n"), start=15)


@pytest.fixture(scope="module")
def landmarks(speaking_frames, detector) -> list[np.ndarray]:
    return [detector.detect(f)[0].landmarks68 for f in speaking_frames]


# ---------------------------------------------------------------- PSNR / SSIM


def test_psnr_identical_frames_is_the_documented_cap(clip_frames):
    frame = clip_frames["bbaf2n"][0]
    assert M.psnr(frame, frame.copy()) == M.PSNR_CAP_DB == 100.0


def test_psnr_known_answer_and_agrees_with_scikit_image(clip_frames):
    from skimage.metrics import peak_signal_noise_ratio

    frame = clip_frames["bbaf2n"][0].astype(np.int16)
    shifted = np.clip(frame + 10, 0, 255)
    mse = np.mean((shifted - frame) ** 2.0)
    assert M.psnr(shifted.astype(np.uint8), frame.astype(np.uint8)) == pytest.approx(10 * math.log10(255**2 / mse))
    a, b = clip_frames["bbaf2n"][0], clip_frames["brbk7n"][10]
    assert M.psnr(a, b) == pytest.approx(peak_signal_noise_ratio(b, a, data_range=255), abs=1e-9)


def test_ssim_agrees_with_scikit_image(clip_frames):
    import cv2
    from skimage.metrics import structural_similarity

    a = clip_frames["bbaf2n"]
    pairs = [
        (a[0], a[12]),
        (a[5], clip_frames["brbk7n"][5]),
        (a[3], cv2.GaussianBlur(a[3], (0, 0), 2.0)),
        (a[7], a[7]),
    ]
    for x, y in pairs:
        expected = structural_similarity(
            x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1
        )
        assert abs(M.ssim(x, y) - expected) < 1e-3
    grey_a, grey_b = a[0][..., 1], a[12][..., 1]
    expected = structural_similarity(grey_a, grey_b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    assert abs(M.ssim(grey_a, grey_b) - expected) < 1e-3
    assert M.ssim(a[7], a[7]) == pytest.approx(1.0)


def test_pixel_metrics_reject_mismatched_shapes(clip_frames):
    frame = clip_frames["bbaf2n"][0]
    with pytest.raises(ValueError, match="shape"):
        M.psnr(frame, frame[:-1])


# ---------------------------------------------------------------- LMD


def test_lmd_of_a_clip_against_itself_is_zero(landmarks):
    assert all(M.mouth_landmark_distance(p, p) == 0.0 for p in landmarks)


def test_lmd_ignores_translation(speaking_frames, detector, landmarks):
    frames = speaking_frames
    dx, dy = 5, -4
    # re-fitting the landmarks in the translated box: dlib's predictor is exactly equivariant
    refit = [
        detector.landmarks_in_box(np.roll(f, (dy, dx), axis=(0, 1)), detector.detect(f)[0].box + np.float32([dx, dy, dx, dy])).landmarks68
        for f in frames[:10]
    ]
    assert max(M.mouth_landmark_distance(a, b) for a, b in zip(landmarks, refit)) < 1e-6
    # full re-detection: the HOG box changes, so the points move a little (measured 0.48-0.55 px on GRID)
    redetected = [detector.detect(np.roll(f, (dy, dx), axis=(0, 1)))[0].landmarks68 for f in frames]
    translated = np.mean([M.mouth_landmark_distance(a, b) for a, b in zip(landmarks, redetected)])
    shift = np.mean([b[M.MOUTH_POINTS].mean(0) - a[M.MOUTH_POINTS].mean(0) for a, b in zip(landmarks, redetected)], axis=0)
    assert shift == pytest.approx([dx, dy], abs=0.5)  # the mouth did move by (dx, dy) ...
    assert translated < 0.8  # ... yet LMD stays at the re-detection noise
    # the same clip five frames (0.2 s) out of step scores clearly worse (measured 1.37 px)
    lagged = np.mean([M.mouth_landmark_distance(landmarks[i], landmarks[i + 5]) for i in range(len(landmarks) - 5)])
    assert lagged > 2 * translated
    assert lagged > 1.0


def test_lmd_sum_and_normalised_variants(landmarks):
    a, b = landmarks[0], landmarks[8]
    mean = M.mouth_landmark_distance(a, b)
    assert M.mouth_landmark_distance(a, b, reduce="sum") == pytest.approx(20 * mean)
    eyes = np.linalg.norm(b[36] - b[45])
    assert M.mouth_landmark_distance(a, b, normalise=True) == pytest.approx(mean / eyes)
    assert M.mouth_landmark_distance(a[48:68], b[48:68]) == pytest.approx(mean)
    with pytest.raises(ValueError):
        M.mouth_landmark_distance(a[48:68], b[48:68], normalise=True)


# ---------------------------------------------------------------- CPBD


def test_cpbd_decreases_as_blur_grows(clip_frames, portrait):
    import cv2

    from latentdub.toolkit.media.video import read_image

    for image in (clip_frames["bbaf2n"][0], clip_frames["brbk7n"][15], read_image(portrait)):
        scores = [M.cpbd(image if s == 0 else cv2.GaussianBlur(image, (0, 0), s)) for s in (0, 0.5, 1.0, 1.5, 3.0)]
        assert all(later <= earlier for earlier, later in zip(scores, scores[1:])), scores
        assert scores[0] > scores[1] > scores[2], scores
        assert scores[0] > 0.2 and scores[-1] < 0.01, scores


def test_cpbd_of_crisp_edges_is_one():
    image = np.zeros((128, 128), np.uint8)
    image[:, 32:64] = 200  # two ideal vertical step edges per row
    image[:, 96:] = 200
    assert M.cpbd(image) == 1.0
    assert M.cpbd(np.full((64, 64, 3), 90, np.uint8)) == 0.0  # no edges at all


def test_edge_widths_measure_ramps():
    ramp = np.zeros((8, 40))
    ramp[:, 10:16] = np.linspace(0, 250, 8)[1:7]
    ramp[:, 16:] = 250
    widths = M.edge_widths(ramp)
    assert set(np.unique(widths[widths > 0])) == {7.0}  # from the last 0 (x=9) to the first 250 (x=16)


# ---------------------------------------------------------------- FID


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    v1, v2 = rng.uniform(0.5, 2, size=6), rng.uniform(0.5, 2, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert M.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-9)


def test_feature_stats_stream_equals_batch_statistics():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(50, 7)) * 3 + 1
    stats = M.FeatureStats(7)
    for chunk in np.array_split(data, 4):
        stats.add(chunk)
    assert stats.count == 50
    np.testing.assert_allclose(stats.mean(), data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance(), np.cov(data, rowvar=False), rtol=1e-10, atol=1e-12)
    halves = M.FeatureStats(7)
    halves.add(data[:20])
    rest = M.FeatureStats(7)
    rest.add(data[20:])
    np.testing.assert_allclose((halves + rest).covariance(), stats.covariance(), rtol=1e-10)


def test_fid_with_a_tiny_inception_is_zero_for_identical_sets_and_positive_otherwise(clip_frames):
    from latentdub.nets.inception import tiny_fid_inception

    net = tiny_fid_inception()
    stats = {}
    for name, frames in clip_frames.items():
        s = M.FeatureStats(net.feature_dim)
        s.add(net.features(np.stack(frames[::2])).numpy())
        stats[name] = s
    names = list(stats)
    assert M.fid_from_stats(stats[names[0]], stats[names[0]]) < 1e-6
    others = [M.fid_from_stats(stats[a], stats[b]) for a in names for b in names if a < b]
    assert min(others) > 1e-3


# ---------------------------------------------------------------- LSE


def test_sync_scores_recover_a_known_offset():
    rng = np.random.default_rng(2)
    video = rng.normal(size=(60, 16))
    lag = 3
    audio = np.roll(video, lag, axis=0)  # audio[j] = video[j - lag]
    offset, distance, confidence = M.sync_distance_confidence(video, audio, vshift=15)
    assert offset == -lag
    assert distance < 0.25 * np.median(np.linalg.norm(video[:, None] - video[None], axis=2))
    assert confidence > 1.0
    assert M.sync_distance_confidence(video, video)[0] == 0


def test_syncnet_mfcc_frames_and_level_invariance(grid_clips):
    from latentdub.toolkit.media.audio import load_audio

    audio = load_audio(grid_clips[0], M.SYNCNET_SAMPLE_RATE).samples
    mfcc = M.syncnet_mfcc(audio)
    assert mfcc.shape == (13, 1 + math.ceil((audio.size - 400) / 160))
    louder = M.syncnet_mfcc(audio * 0.5)
    np.testing.assert_allclose(louder[1:], mfcc[1:], atol=1e-3)  # a gain moves only c0 (log energy)
    np.testing.assert_allclose(louder[0] - mfcc[0], 2 * math.log(0.5), atol=1e-3)
    windows = M.syncnet_audio_windows(mfcc, 10)
    assert windows.shape == (10, 1, 13, 20)
    np.testing.assert_array_equal(windows[3, 0], mfcc[:, 12:32])


def test_syncnet_crop_geometry():
    image = np.zeros((300, 400, 3), np.uint8)
    box = np.array([150, 100, 250, 200], np.float32)  # 100 px box centred at (200, 150)
    image[148:153, 198:203] = 255
    crop = M.syncnet_crop(image, box)
    assert crop.shape == (224, 224, 3)
    ys, xs = np.nonzero(crop[..., 0] > 128)
    # crop spans x 200 +- 70 and y 100 .. 220, so the box centre lands at (112, 80)
    assert abs(xs.mean() - 112) < 1.0 and abs(ys.mean() - 80) < 1.0


# ---------------------------------------------------------------- networks: strict loading of the published layouts


def test_fid_inception_state_dict_matches_pytorch_fid_layout(tmp_path):
    import torchvision

    from latentdub.nets.inception import FIDInceptionV3, load_fid_inception

    reference = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False).eval()
    ours = FIDInceptionV3()
    ref_sd, our_sd = reference.state_dict(), ours.state_dict()
    assert list(ref_sd) == list(our_sd)
    assert all(ref_sd[k].shape == our_sd[k].shape for k in ref_sd)
    # a state dict saved in that layout loads strictly and reproduces the same features
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.manual_seed(0)
    for v in ref_sd.values():
        if v.is_floating_point():
            v.copy_(torch.rand_like(v) * 0.1)
    torch.save(ref_sd, path)
    loaded = load_fid_inception(path)
    assert loaded.feature_dim == 2048
    torch.testing.assert_close(loaded.state_dict()["Mixed_7c.branch_pool.conv.weight"], ref_sd["Mixed_7c.branch_pool.conv.weight"])
    # unpatched blocks compute exactly what torchvision computes
    x = torch.rand(1, 288, 35, 35)
    with torch.no_grad():
        torch.testing.assert_close(loaded.Mixed_6a(x), reference.Mixed_6a(x))


def test_syncnet_loads_a_syncnet_v2_style_state_dict_strictly(tmp_path):
    from latentdub.nets.syncnet import SyncNet, load_syncnet

    full = SyncNet()
    keys = list(full.state_dict())
    assert "netcnnaud.0.weight" in keys and "netcnnlip.18.weight" in keys and "netfclip.3.bias" in keys
    assert full.state_dict()["netcnnlip.0.weight"].shape == (96, 3, 5, 7, 7)
    assert full.state_dict()["netcnnaud.18.weight"].shape == (512, 256, 5, 4)
    # the 2017 checkpoint predates num_batches_tracked buffers
    old = {k: v for k, v in full.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "syncnet_v2.model"
    torch.save(old, path)
    loaded = load_syncnet(path)
    with torch.no_grad():
        assert loaded.forward_audio(torch.zeros(2, 1, 13, 20)).shape == (2, 1024)
        assert loaded.forward_video(torch.zeros(1, 3, 5, 224, 224)).shape == (1, 1024)
    broken = dict(old)
    broken["netcnnaud.99.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.model")
    with pytest.raises(BadInputError, match=r"broken.model: syncnet_v2 state dict \(syncnet_v2.model\) does not match the architecture \(unexpected keys: netcnnaud.99.weight\)"):
        load_syncnet(tmp_path / "broken.model")
