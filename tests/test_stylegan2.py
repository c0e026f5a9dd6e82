"""StyleGAN2 generator: official key layouts, strict loading, numerics, plugin, NVIDIA conversion."""

from __future__ import annotations

import argparse
import collections
import math
import os
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from latentdub.nets.generator_files import load_generator
from latentdub.nets.nvidia_pkl import convert_nvidia_state_dict, generator_from_nvidia, load_nvidia_pkl
from latentdub.nets.stylegan2 import (
    Generator,
    ModulatedConv2d,
    Upsample,
    compiled_synthesis,
    load_rosinality_checkpoint,
    load_safetensors,
    save_safetensors,
    upfirdn2d,
)
from latentdub.toolkit.core.build import BuildContext
from latentdub.toolkit.core.config import parse_config
from latentdub.toolkit.core.errors import BadInputError, ConfigError, MissingWeightsError

TINY = dict(size=32, style_dim=64, n_mlp=2, channel_multiplier=2, channel_max=16)


def tiny_generator(seed: int = 0, **kw) -> Generator:
    torch.manual_seed(seed)
    g = Generator(**{**TINY, **kw}).eval()
    # non-zero noise strengths and biases so that every parameter shapes the output
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise.weight") or name.endswith("activate.bias") or name.endswith("to_rgb1.bias"):
                p.normal_(0, 0.1)
    return g


def context(tmp_path: Path, seed: int = 0) -> BuildContext:
    return BuildContext(device=torch.device("cpu"), weights=lambda name: tmp_path / name if not os.path.isabs(name) else Path(name), build=None, seed=seed)


def rosinality_keys(size: int, n_mlp: int) -> set[str]:
    """The g_ema key set, written out from the published layout."""
    keys = {f"style.{i}.{p}" for i in range(1, n_mlp + 1) for p in ("weight", "bias")}
    keys |= {"input.input", "to_rgb1.bias", "to_rgb1.conv.weight", "to_rgb1.conv.modulation.weight", "to_rgb1.conv.modulation.bias"}
    n_up = int(math.log2(size)) - 2
    for name in ["conv1"] + [f"convs.{i}" for i in range(2 * n_up)]:
        keys |= {f"{name}.conv.weight", f"{name}.conv.modulation.weight", f"{name}.conv.modulation.bias", f"{name}.noise.weight", f"{name}.activate.bias"}
    keys |= {f"convs.{2 * i}.conv.blur.kernel" for i in range(n_up)}
    for i in range(n_up):
        keys |= {f"to_rgbs.{i}.bias", f"to_rgbs.{i}.upsample.kernel", f"to_rgbs.{i}.conv.weight", f"to_rgbs.{i}.conv.modulation.weight", f"to_rgbs.{i}.conv.modulation.bias"}
    keys |= {f"noises.noise_{i}" for i in range(2 * n_up + 1)}
    return keys


def test_state_dict_matches_rosinality_layout_and_official_shapes():
    with torch.device("meta"):
        g = Generator(1024, 512, 8, channel_multiplier=2)
    sd = g.state_dict()
    assert set(sd) == rosinality_keys(1024, 8)
    assert g.n_latent == 18 and g.num_layers == 17
    assert tuple(sd["input.input"].shape) == (1, 512, 4, 4)
    assert tuple(sd["convs.8.conv.weight"].shape) == (1, 256, 512, 3, 3)  # up to 128 px: 128 * 2
    assert tuple(sd["convs.14.conv.weight"].shape) == (1, 32, 64, 3, 3)  # up to 1024 px: 16 * 2
    assert tuple(sd["noises.noise_16"].shape) == (1, 1, 1024, 1024)
    assert sum(p.numel() for p in g.parameters()) == 30_370_060  # StyleGAN2 config-f G: 30.4 M


def test_rosinality_checkpoint_loads_strictly_and_reproduces_output(tmp_path):
    g = tiny_generator()
    avg = g.mean_latent(256, seed=1)[0]
    args = argparse.Namespace(size=32, channel_multiplier=2, latent=64, n_mlp=2)
    torch.save({"g_ema": g.state_dict(), "latent_avg": avg, "args": args}, tmp_path / "sg2.pt")
    loaded, latent_avg = load_rosinality_checkpoint(tmp_path / "sg2.pt")
    assert loaded.config() == g.config()
    assert torch.equal(latent_avg, avg)
    z = torch.randn(2, 64)
    with torch.no_grad():
        assert torch.equal(loaded(z), g(z))
    # the generic loader recognises the same file
    again, _ = load_generator(tmp_path / "sg2.pt")
    assert again.n_latent == 8


@pytest.mark.parametrize("edit", ["missing", "extra", "shape"])
def test_mismatched_checkpoint_names_file_and_keys(tmp_path, edit):
    sd = tiny_generator().state_dict()
    if edit == "missing":
        del sd["convs.1.noise.weight"]
        expected = "convs.1.noise.weight"
    elif edit == "extra":
        sd["convs.1.bogus"] = torch.zeros(1)
        expected = "convs.1.bogus"
    else:
        sd["conv1.activate.bias"] = torch.zeros(7)
        expected = "conv1.activate.bias (7,)"
    torch.save({"g_ema": sd}, tmp_path / "bad.pt")
    with pytest.raises(BadInputError) as err:
        load_rosinality_checkpoint(tmp_path / "bad.pt")
    assert "bad.pt" in str(err.value) and expected in str(err.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(MissingWeightsError, match="nope.pt"):
        load_generator(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(BadInputError, match="junk.pt"):
        load_generator(tmp_path / "junk.pt")
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(BadInputError, match="unknown generator checkpoint layout"):
        load_generator(tmp_path / "other.pt")


def test_noise_modes_and_determinism():
    g = tiny_generator()
    with torch.no_grad():
        w = torch.randn(2, g.n_latent, 64)
        a, b = g.synthesize_wplus(w), g.synthesize_wplus(w)
        assert a.shape == (2, 3, 32, 32) and torch.equal(a, b)
        r1, r2 = g.synthesize_wplus(w, noise_mode="random"), g.synthesize_wplus(w, noise_mode="random")
        assert not torch.allclose(r1, r2)
        none = g.synthesize_wplus(w, noise_mode="none")
        assert not torch.allclose(none, a)
        # zero noise strengths make every noise mode equal
        for m in g.modules():
            if hasattr(m, "noise") and hasattr(m.noise, "weight"):
                m.noise.weight.zero_()
        assert torch.allclose(g.synthesize_wplus(w, noise_mode="random"), g.synthesize_wplus(w, noise_mode="none"))
    with pytest.raises(BadInputError, match="noise_mode"):
        g.synthesize_wplus(w, noise_mode="loud")


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("impl", ["batched", "fused_up"])
def test_fast_modconv_paths_match_grouped_reference(impl, channels_last):
    g = tiny_generator().train()
    w = torch.randn(3, g.n_latent, 64)
    noise = g.make_noise("random", 3)
    with torch.no_grad():
        grouped = g.set_modconv("grouped").synthesize_wplus(w, noise=noise)
    w_ref = w.clone().requires_grad_(True)
    g.synthesize_wplus(w_ref, noise=noise).square().sum().backward()
    ref_grads = {name: p.grad.clone() for name, p in g.named_parameters() if p.grad is not None}
    g.zero_grad()

    g.set_modconv(impl).memory_format = torch.channels_last if channels_last else torch.contiguous_format
    with torch.no_grad():
        fast = g.synthesize_wplus(w, noise=noise)
    assert torch.allclose(fast, grouped, atol=1e-5)
    # autograd path: same images, same gradients for latents and weights
    w_fast = w.clone().requires_grad_(True)
    images = g.synthesize_wplus(w_fast, noise=noise)
    assert torch.allclose(images, grouped, atol=1e-5)
    images.square().sum().backward()
    scaled_err = lambda a, b: ((a - b).abs().max() / b.abs().max()).item()  # noqa: E731  (float32 rounding)
    assert scaled_err(w_fast.grad, w_ref.grad) < 1e-5
    for name, grad in ref_grads.items():
        assert scaled_err(g.get_parameter(name).grad, grad) < 1e-5, name


def test_fused_up_runs_without_transposed_or_depthwise_convs(monkeypatch):
    g = tiny_generator().set_modconv("fused_up")
    g.memory_format = torch.channels_last
    seen = []
    monkeypatch.setattr(F, "conv_transpose2d", lambda *a, **k: seen.append("conv_transpose2d"))
    real_conv2d = F.conv2d

    def conv2d(x, weight, *args, **kw):
        seen.append(("conv2d", kw.get("groups", 1), tuple(weight.shape)))
        return real_conv2d(x, weight, *args, **kw)

    monkeypatch.setattr(F, "conv2d", conv2d)
    with torch.no_grad():
        out = g.synthesize_wplus(torch.randn(2, g.n_latent, 64))
    assert out.shape == (2, 3, 32, 32) and out.is_contiguous()
    assert "conv_transpose2d" not in seen and all(groups == 1 for _, groups, _ in seen)
    assert (("conv2d", 1, (4 * 16, 16, 3, 3))) in seen  # an upsampling layer: 4 phases x 16 channels


def test_set_modconv_validates_choice():
    with pytest.raises(BadInputError, match="'batched', 'grouped' or 'fused_up'"):
        tiny_generator().set_modconv("winograd")
    with pytest.raises(BadInputError, match="4-tap blur"):
        tiny_generator(blur_kernel=[1, 2, 1]).set_modconv("fused_up")


def test_w_and_z_inputs_and_shape_errors():
    g = tiny_generator()
    w = torch.randn(2, 64)
    with torch.no_grad():
        assert torch.allclose(g(w, input_is_latent=True), g.synthesize_wplus(w[:, None].expand(-1, g.n_latent, -1)))
        assert torch.allclose(g(torch.ones(1, 64) * 3), g(torch.ones(1, 64)), atol=1e-5)  # PixelNorm: z scale-free
    with pytest.raises(BadInputError, match="latent shape"):
        g(torch.randn(2, 5, 64), input_is_latent=True)


def test_gradients_reach_latents_and_weights():
    g = tiny_generator().train()
    w = torch.randn(2, g.n_latent, 64, requires_grad=True)
    g.synthesize_wplus(w).square().mean().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    for name in ("input.input", "conv1.conv.weight", "convs.2.conv.modulation.weight", "to_rgbs.2.conv.weight", "convs.3.noise.weight"):
        assert g.get_parameter(name).grad.abs().sum() > 0, name
    assert g.get_parameter("style.1.weight").grad is None  # W+ input bypasses the mapping network


def test_truncation_pulls_towards_mean_latent():
    g = tiny_generator()
    g.latent_avg = g.mean_latent(512, seed=0)[0]
    z = torch.randn(2, 64)
    with torch.no_grad():
        full = g(z)
        mean_image = g(g.latent_avg[None], input_is_latent=True)
        at_zero = g(z, truncation=0.0)
        half = g(z, truncation=0.5)
    assert torch.allclose(at_zero, mean_image.expand_as(at_zero), atol=1e-5)
    assert (half - mean_image).abs().mean() < (full - mean_image).abs().mean()
    g.latent_avg = None
    with pytest.raises(BadInputError, match="mean latent"):
        g(z, truncation=0.7)


# ---------------------------------------------------------------- numerical fidelity (independent reference)


def reference_upfirdn(x: torch.Tensor, taps, up: int, pad0: int, pad1: int, gain: float) -> torch.Tensor:
    """Zero-stuffing, padding and a true 2-D convolution written loop by loop (slow, obvious)."""
    b, c, h, w = x.shape
    stuffed = torch.zeros(b, c, h * up, w * up, dtype=x.dtype)
    stuffed[:, :, ::up, ::up] = x
    padded = F.pad(stuffed, [pad0, pad1, pad0, pad1])
    k1 = torch.tensor(taps, dtype=x.dtype)
    k = torch.outer(k1, k1)
    k = k / k.sum() * gain
    kh = k.shape[0]
    oh, ow = padded.shape[-2] - kh + 1, padded.shape[-1] - kh + 1
    out = torch.zeros(b, c, oh, ow, dtype=x.dtype)
    for i in range(kh):
        for j in range(kh):
            # true convolution: output[y] = sum_t padded[y + t] * k[kh - 1 - t]
            out += padded[:, :, i : i + oh, j : j + ow] * k[kh - 1 - i, kh - 1 - j]
    return out


def reference_modulated_upconv(x, weight, style_vec, mod_w, mod_b):
    """Karras et al. 2020 eqs. 1-3 per sample, then 2x transposed conv and the [1,3,3,1] blur (x4)."""
    out_c, in_c, k, _ = weight.shape
    results = []
    for n in range(x.shape[0]):
        s = style_vec[n] @ (mod_w / math.sqrt(mod_w.shape[1])).T + mod_b  # equalised affine, [I]
        w1 = weight / math.sqrt(in_c * k * k) * s[None, :, None, None]  # eq. 1
        w2 = w1 / torch.sqrt((w1**2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)  # eq. 3
        y = F.conv_transpose2d(x[n : n + 1].double(), w2.transpose(0, 1).double(), stride=2)
        results.append(reference_upfirdn(y, [1, 3, 3, 1], up=1, pad0=1, pad1=1, gain=4.0))
    return torch.cat(results)


def test_modulated_upsampling_conv_matches_paper_formulas():
    torch.manual_seed(3)
    layer = ModulatedConv2d(6, 5, 3, style_dim=8, upsample=True).double()
    with torch.no_grad():
        layer.modulation.bias.normal_(1, 0.2)
    x, style = torch.randn(2, 6, 7, 7, dtype=torch.double), torch.randn(2, 8, dtype=torch.double)
    expected = reference_modulated_upconv(x, layer.weight[0].detach(), style, layer.modulation.weight.detach(), layer.modulation.bias.detach())
    for impl in ("batched", "grouped", "fused_up"):
        layer.impl = impl
        got = layer(x, style).detach()
        assert got.shape == (2, 5, 14, 14)
        assert torch.allclose(got, expected, atol=1e-10), impl


def test_rgb_skip_upsampling_matches_reference_upfirdn():
    torch.manual_seed(4)
    x = torch.randn(2, 3, 5, 5, dtype=torch.double)
    up = Upsample([1, 3, 3, 1]).double()
    assert up.pad == (2, 1)
    expected = reference_upfirdn(x, [1, 3, 3, 1], up=2, pad0=2, pad1=1, gain=4.0)
    assert torch.allclose(up(x), expected, atol=1e-12)
    assert torch.allclose(up.phases(x).reshape(2, 3, 10, 10), expected, atol=1e-12)  # [B, C, H, 2, W, 2] view
    # a constant image stays constant inside (the kernel keeps DC gain 1 after zero-stuffing)
    flat = up(torch.ones(1, 3, 6, 6, dtype=torch.double))
    assert torch.allclose(flat[..., 2:-2, 2:-2], torch.ones_like(flat[..., 2:-2, 2:-2]))


@pytest.mark.parametrize("up, pad", [(1, (1, 1)), (1, (2, 1)), (1, (0, 0)), (2, (2, 1)), (2, (1, 1)), (2, (3, 3))])
def test_upfirdn2d_matches_loop_reference(up, pad):
    """Equal pads become conv padding, others an explicit pad: both must equal zero-stuff, pad, true conv."""
    torch.manual_seed(5)
    x = torch.randn(2, 3, 6, 6, dtype=torch.double)
    kernel = torch.outer(torch.tensor([1.0, 2, 3, 1]), torch.tensor([1.0, 3, 3, 1])).double()  # asymmetric: catches flips
    stuffed = torch.zeros(2, 3, 6 * up, 6 * up, dtype=torch.double)
    stuffed[:, :, ::up, ::up] = x
    padded = F.pad(stuffed, [pad[0], pad[1], pad[0], pad[1]])
    side = padded.shape[-1] - 3
    expected = torch.zeros(2, 3, side, side, dtype=torch.double)
    for i in range(4):
        for j in range(4):
            expected += padded[:, :, i : i + side, j : j + side] * kernel[3 - i, 3 - j]
    assert torch.allclose(upfirdn2d(x, kernel, up=up, pad=pad), expected, atol=1e-12)


@pytest.mark.slow
def test_compiled_synthesis_matches_eager():
    g = tiny_generator(size=8).set_modconv("fused_up").requires_grad_(False)
    w = torch.randn(2, g.n_latent, 64)
    run = compiled_synthesis(g)  # lazy: inductor (C++ on CPU) compiles on the first call, without graph breaks
    with torch.no_grad():
        expected = g.synthesize_wplus(w)
        assert torch.allclose(run(w), expected, atol=1e-5)


# ---------------------------------------------------------------- our safetensors format


def test_safetensors_round_trip(tmp_path):
    g = tiny_generator()
    g.latent_avg = torch.randn(64)
    path = save_safetensors(g, tmp_path / "g.safetensors")
    loaded, avg = load_safetensors(path)
    assert torch.equal(avg, g.latent_avg) and torch.equal(loaded.latent_avg, g.latent_avg)
    w = torch.randn(1, g.n_latent, 64)
    with torch.no_grad():
        assert torch.equal(loaded.synthesize_wplus(w), g.synthesize_wplus(w))
    assert not (tmp_path / "g.safetensors.part").exists()


# ---------------------------------------------------------------- plugin


def test_plugin_random_init_is_seeded_and_fingerprinted(tmp_path):
    from latentdub.plugins.stylegan2 import StyleGAN2Config, build_stylegan2
    from latentdub.toolkit.core.protocols import Generator as GeneratorProtocol

    cfg = StyleGAN2Config(random_init=True, size=32, channel_max=16, style_dim=64)
    a = build_stylegan2(cfg, context(tmp_path, seed=5))
    b = build_stylegan2(cfg, context(tmp_path, seed=5))
    c = build_stylegan2(cfg, context(tmp_path, seed=6))
    assert isinstance(a, GeneratorProtocol)
    assert a.size == 32 and a.n_styles == 8 and a.latent_avg.shape == (64,)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    w = torch.randn(3, 8, 64)
    images = a.synthesize(w)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, b.synthesize(w))
    assert a.synthesize(w[:, 0]).shape == (3, 3, 32, 32)  # W broadcast to W+
    with pytest.raises(BadInputError, match="expects"):
        a.synthesize(torch.randn(2, 5, 64))


def test_plugin_loads_checkpoint_by_path_with_options(tmp_path):
    from latentdub.plugins.stylegan2 import StyleGAN2Config, build_stylegan2

    g = tiny_generator()
    torch.save({"g_ema": g.state_dict(), "latent_avg": torch.zeros(64)}, tmp_path / "tiny.pt")
    base = build_stylegan2(StyleGAN2Config(checkpoint="tiny.pt", batch_size=2), context(tmp_path))
    bf16 = build_stylegan2(StyleGAN2Config(checkpoint="tiny.pt", precision="bf16", channels_last=True, modconv="grouped"), context(tmp_path))
    small = build_stylegan2(StyleGAN2Config(checkpoint="tiny.pt", resize_to=16, truncation=0.5), context(tmp_path))
    w = torch.randn(5, 8, 64)
    with torch.no_grad():
        ref = base.synthesize(w)
        expected = g.synthesize_wplus(w).clamp(-1, 1)
    assert torch.allclose(ref, expected, atol=1e-5)  # batch_size 2 chunks change nothing
    low = bf16.synthesize(w)
    assert low.dtype == torch.float32 and (low - ref).abs().mean() < 0.05
    assert small.size == 16 and small.synthesize(w).shape == (5, 3, 16, 16)
    assert base.fingerprint() == bf16.fingerprint()
    with pytest.raises(ConfigError, match=r"generator.truncation: 0.0 is out of range \(allowed: > 0 and <= 1\)"):
        parse_config(StyleGAN2Config, {"checkpoint": "tiny.pt", "truncation": 0.0}, "generator")
    with pytest.raises(ConfigError, match="random_init"):
        build_stylegan2(StyleGAN2Config(checkpoint=None), context(tmp_path))


def test_plugin_registered_with_weights():
    from latentdub.toolkit.core.plugins import get_component

    comp = get_component("generator", "stylegan2")
    assert comp.config.__name__ == "StyleGAN2Config"
    from latentdub.plugins.stylegan2 import WEIGHTS

    names = {w.name for w in WEIGHTS}
    assert {"stylegan2-ffhq-config-f", "psp_ffhq_encode", "e4e_ffhq_encode", "model_ir_se50"} <= names
    assert all(w.url.startswith("https://") and w.licence for w in WEIGHTS)


# ---------------------------------------------------------------- NVIDIA stylegan2-ada-pytorch


def nvidia_state_dict(size: int = 32, c: int = 16, d: int = 64, n_mlp: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random generator in NVIDIA's naming and shapes (networks.py of stylegan2-ada-pytorch)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    f = torch.tensor([1.0, 3, 3, 1])
    filt = torch.outer(f, f) / 64
    sd = {f"mapping.fc{i}.weight": r(d, d) * 100 for i in range(n_mlp)}  # stored / lr_multiplier
    sd |= {f"mapping.fc{i}.bias": r(d) * 0.1 for i in range(n_mlp)}
    sd["mapping.w_avg"] = r(d)

    def layer(prefix, cin, cout, res, k=3):
        sd.update({f"{prefix}.weight": r(cout, cin, k, k), f"{prefix}.bias": r(cout) * 0.1, f"{prefix}.affine.weight": r(cin, d), f"{prefix}.affine.bias": torch.ones(cin) + 0.1 * r(cin)})
        if k == 3:
            sd.update({f"{prefix}.noise_const": r(res, res), f"{prefix}.noise_strength": r(()) * 0.1, f"{prefix}.resample_filter": filt.clone()})

    sd["synthesis.b4.const"] = r(c, 4, 4)
    sd["synthesis.b4.resample_filter"] = filt.clone()
    layer("synthesis.b4.conv1", c, c, 4)
    layer("synthesis.b4.torgb", c, 3, 4, k=1)
    res = 8
    while res <= size:
        sd[f"synthesis.b{res}.resample_filter"] = filt.clone()
        layer(f"synthesis.b{res}.conv0", c, c, res)
        layer(f"synthesis.b{res}.conv1", c, c, res)
        layer(f"synthesis.b{res}.torgb", c, 3, res, k=1)
        res *= 2
    return sd


def nvidia_reference_synthesis(sd, ws):
    """NVIDIA's formulation: no conv weight gain, demodulation, noise_const * strength, skip RGB."""
    def affine(prefix, w):
        a = sd[f"{prefix}.affine.weight"]
        return w @ (a / math.sqrt(a.shape[1])).T + sd[f"{prefix}.affine.bias"]

    def conv_layer(prefix, x, w, up):
        out = []
        for n in range(x.shape[0]):
            wt = sd[f"{prefix}.weight"] * affine(prefix, w[n : n + 1])[0][None, :, None, None]
            wt = wt / torch.sqrt(wt.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
            if up:
                y = F.conv_transpose2d(x[n : n + 1], wt.transpose(0, 1), stride=2)
                y = reference_upfirdn(y, [1, 3, 3, 1], 1, 1, 1, 4.0)
            else:
                y = F.conv2d(x[n : n + 1], wt, padding=1)
            out.append(y)
        y = torch.cat(out) + sd[f"{prefix}.noise_const"] * sd[f"{prefix}.noise_strength"]
        return F.leaky_relu(y + sd[f"{prefix}.bias"][None, :, None, None], 0.2) * math.sqrt(2)

    def torgb(prefix, x, w):
        wt = sd[f"{prefix}.weight"]
        s = affine(prefix, w) / math.sqrt(wt.shape[1])
        return torch.cat([F.conv2d(x[n : n + 1], wt * s[n][None, :, None, None]) for n in range(x.shape[0])]) + sd[f"{prefix}.bias"][None, :, None, None]

    x = sd["synthesis.b4.const"][None].expand(ws.shape[0], -1, -1, -1)
    x = conv_layer("synthesis.b4.conv1", x, ws[:, 0], up=False)
    img = torgb("synthesis.b4.torgb", x, ws[:, 1])
    res, i = 8, 1
    while f"synthesis.b{res}.conv0.weight" in sd:
        x = conv_layer(f"synthesis.b{res}.conv0", x, ws[:, i], up=True)
        x = conv_layer(f"synthesis.b{res}.conv1", x, ws[:, i + 1], up=False)
        img = reference_upfirdn(img, [1, 3, 3, 1], 2, 2, 1, 4.0) + torgb(f"synthesis.b{res}.torgb", x, ws[:, i + 2])
        res, i = res * 2, i + 2
    return img


def test_nvidia_state_dict_converts_one_to_one_and_renders_identically():
    sd = nvidia_state_dict()
    converted, config, avg = convert_nvidia_state_dict(sd)
    assert config == {"size": 32, "style_dim": 64, "n_mlp": 2, "channel_multiplier": 2, "channel_max": 16, "lr_mlp": 0.01}
    assert set(converted) == rosinality_keys(32, 2)
    gen, w_avg = generator_from_nvidia(sd)
    assert torch.equal(w_avg, sd["mapping.w_avg"]) and torch.equal(gen.latent_avg, w_avg)
    ws = torch.randn(2, gen.n_latent, 64)
    with torch.no_grad():
        ours = gen.synthesize_wplus(ws.double().float())
    expected = nvidia_reference_synthesis({k: v.double() for k, v in sd.items()}, ws.double())
    assert torch.allclose(ours.double(), expected, atol=1e-4)
    # mapping: fc weights stored divided by lr_multiplier, gains lr/sqrt(in) and lr
    z = torch.randn(3, 64)
    x = z * torch.rsqrt(z.square().mean(1, keepdim=True) + 1e-8)
    for i in range(2):
        x = F.leaky_relu(x @ (sd[f"mapping.fc{i}.weight"] * 0.01 / 8).T + sd[f"mapping.fc{i}.bias"] * 0.01, 0.2) * math.sqrt(2)
    assert torch.allclose(gen.mapping(z), x, atol=1e-5)


def test_nvidia_conversion_rejects_unknown_tensors():
    sd = nvidia_state_dict()
    sd["synthesis.b8.skip.weight"] = torch.zeros(16, 16, 1, 1)  # resnet architecture
    with pytest.raises(BadInputError, match="synthesis.b8.skip.weight"):
        generator_from_nvidia(sd, "resnet.pkl")


class _FakePersistent:
    """Pickles like a torch_utils.persistence object: its embedded source must never run."""

    def __init__(self, class_name, params=None, buffers=None, modules=None):
        self.state = {"_parameters": collections.OrderedDict(params or {}), "_buffers": collections.OrderedDict(buffers or {}),
                      "_modules": collections.OrderedDict(modules or {}), "_non_persistent_buffers_set": set(), "training": False}
        self.class_name = class_name

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src="raise SystemExit('embedded source ran')", class_name=self.class_name, state=self.state)
        return (sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (meta,))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _nest(sd):
    """Flat NVIDIA names -> a tree of fake persistent modules (parameters vs buffers as in networks.py)."""
    buffer_names = ("w_avg", "noise_const", "resample_filter")
    tree: dict = {}
    for key, value in sd.items():
        node = tree
        *path, leaf = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value

    def build(name, node):
        params = {k: torch.nn.Parameter(v) for k, v in node.items() if isinstance(v, torch.Tensor) and k not in buffer_names}
        buffers = {k: v for k, v in node.items() if isinstance(v, torch.Tensor) and k in buffer_names}
        modules = {k: build(k, v) for k, v in node.items() if isinstance(v, dict)}
        return _FakePersistent(name, params, buffers, modules)

    return build("Generator", tree)


def test_nvidia_pickle_needs_opt_in_and_never_runs_code(tmp_path, monkeypatch):
    fake = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # pragma: no cover - must never be called on load
        raise AssertionError("the real reconstructor ran")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    fake._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", fake)
    sd = nvidia_state_dict()
    marker = tmp_path / "pwned"
    path = tmp_path / "network-snapshot.pkl"
    with open(path, "wb") as f:
        pickle.dump({"G_ema": _nest(sd), "augment_pipe": _Evil(marker), "training_set_kwargs": {"resolution": 32}}, f)
    monkeypatch.delitem(sys.modules, "torch_utils.persistence")
    monkeypatch.delitem(sys.modules, "torch_utils")

    with pytest.raises(BadInputError, match="can execute arbitrary code.*allow_pickle"):
        load_nvidia_pkl(path)
    with pytest.raises(BadInputError, match="allow_pickle"):
        load_generator(path)
    gen, avg = load_generator(path, allow_pickle=True)
    assert not marker.exists()
    assert "torch_utils" not in sys.modules
    reference, _ = generator_from_nvidia(sd)
    w = torch.randn(1, gen.n_latent, 64)
    with torch.no_grad():
        assert torch.equal(gen.synthesize_wplus(w), reference.synthesize_wplus(w))
    assert torch.equal(avg, sd["mapping.w_avg"])
