"""LPIPS built offline: random backbone for tests, torchvision-layout checkpoints loaded, no downloads."""

from __future__ import annotations

import pytest
import torch

from latentdub.toolkit.core.errors import BadInputError, MissingWeightsError
from latentdub.toolkit.learning.perceptual import build_lpips, find_backbone, lpips_distance


def _quiet(msg: str) -> None:
    pass


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Any attempt by torch or torchvision to fetch weights fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a weight download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture(scope="module")
def alex():
    return build_lpips("cpu", net="alex", random_backbone=True, log=_quiet)


def _images(seed: int, n: int = 3, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, size // 8, size // 8, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)


def test_random_backbone_is_a_frozen_distance(alex):
    a = _images(0)
    noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(1))
    d_same = lpips_distance(alex, a, a)
    d_small = lpips_distance(alex, a, (a + 0.05 * noise).clamp(-1, 1))
    d_large = lpips_distance(alex, a, (a + 0.5 * noise).clamp(-1, 1))
    assert d_same.shape == (3,) and d_same.dtype == torch.float32
    assert torch.allclose(d_same, torch.zeros(3), atol=1e-7)
    assert bool((d_small > 0).all()) and bool((d_large > d_small).all())
    assert torch.allclose(lpips_distance(alex, a, d := _images(2)), lpips_distance(alex, d, a), atol=1e-6)
    assert alex.random_backbone and not alex.training
    assert not any(p.requires_grad for p in alex.parameters())
    # heads come from the lpips wheel: calibrated (non-negative) weights, not random ones
    assert all(float(lin.model[-1].weight.min()) >= 0 for lin in alex.lins)


def test_gradients_reach_the_inputs(alex):
    a = _images(3).requires_grad_(True)
    lpips_distance(alex, a, _images(4)).sum().backward()
    assert a.grad is not None and float(a.grad.abs().sum()) > 0


def test_reduced_resolution_matches_area_downsampling(alex):
    a, b = _images(5, size=128), _images(6, size=128)
    small = torch.nn.functional.interpolate
    expected = alex(small(a, size=(32, 32), mode="area"), small(b, size=(32, 32), mode="area")).reshape(-1)
    assert torch.allclose(lpips_distance(alex, a, b, size=32), expected, atol=1e-6)
    assert not torch.allclose(lpips_distance(alex, a, b, size=None), expected, atol=1e-4)


def test_random_backbone_is_seeded():
    a, b = _images(7), _images(8)
    one = lpips_distance(build_lpips(net="alex", random_backbone=True, seed=3, log=_quiet), a, b)
    two = lpips_distance(build_lpips(net="alex", random_backbone=True, seed=3, log=_quiet), a, b)
    assert torch.equal(one, two)


def test_loads_a_torchvision_checkpoint(tmp_path, monkeypatch):
    import torchvision

    torch.manual_seed(11)
    full = torchvision.models.alexnet(weights=None).state_dict()
    # the trunk plus one classifier tensor: extra entries of the torchvision file are ignored
    state = {k: v for k, v in full.items() if k.startswith("features.") or k == "classifier.6.bias"}
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(state, path)
    model = build_lpips(net="alex", backbone_weights=path, log=_quiet)
    assert not model.random_backbone
    trunk = model.net.state_dict()
    assert torch.equal(trunk["slice1.0.weight"], state["features.0.weight"])
    assert torch.equal(trunk["slice5.10.bias"], state["features.10.bias"])
    # by default found through the registered name `alexnet-torchvision` in LATENTDUB_WEIGHTS_DIR
    monkeypatch.setenv("LATENTDUB_WEIGHTS_DIR", str(tmp_path))
    default = build_lpips(net="alex", log=_quiet)
    assert torch.equal(default.net.state_dict()["slice3.6.weight"], state["features.6.weight"])
    torch.save({k: v for k, v in state.items() if not k.startswith("features.10")}, tmp_path / "broken.pth")
    with pytest.raises(BadInputError, match="features.10"):
        build_lpips(net="alex", backbone_weights=tmp_path / "broken.pth", log=_quiet)


def test_missing_backbone_names_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTDUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LATENTDUB_WEIGHTS_DIR", str(tmp_path / "none"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth"):
        find_backbone("vgg")
    with pytest.raises(MissingWeightsError):
        build_lpips(net="alex", log=_quiet)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth").write_bytes(b"x")
    assert find_backbone("alex") == tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    with pytest.raises(BadInputError):
        build_lpips(net="squeeze", random_backbone=True, log=_quiet)
