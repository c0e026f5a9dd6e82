"""pSp / e4e encoders: official key layout, strict checkpoint loading, latent average, plugin."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latentdub.nets.generator_files import load_generator
from latentdub.nets.psp import (
    Encoder4Editing,
    GradualStyleEncoder,
    PspModel,
    build_encoder,
    load_ir_se50_backbone,
    load_psp_checkpoint,
    save_psp_checkpoint,
)
from latentdub.nets.stylegan2 import Generator
from latentdub.toolkit.core.build import BuildContext
from latentdub.toolkit.core.errors import BadInputError

D = 64
TINY_ENC = dict(units=(1, 2, 1, 1), widths=(16, 24, 32, 48), style_dim=D, style_width=16)


def tiny_model(encoder_type: str = "GradualStyleEncoder", seed: int = 0) -> PspModel:
    torch.manual_seed(seed)
    encoder = build_encoder(encoder_type, n_styles=8, **TINY_ENC)
    decoder = Generator(32, D, 2, channel_max=16)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong load would show
        for m in encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    opts = {"encoder_type": encoder_type, "output_size": 32, "start_from_latent_avg": True, "input_nc": 3}
    return PspModel(encoder, decoder, torch.randn(8, D), opts, input_size=64).eval()  # official: 256 px


def write_psp(model: PspModel, path: Path, opts: dict | None = None) -> Path:
    """The pSp layout: {'state_dict': {'encoder.*', 'decoder.*'}, 'latent_avg', 'opts'}."""
    state = {k: v for k, v in model.state_dict().items() if k != "latent_avg"}
    torch.save({"state_dict": state, "latent_avg": model.latent_avg, "opts": opts if opts is not None else model.opts}, path)
    return path


def context(tmp_path: Path, build=None, seed: int = 0) -> BuildContext:
    return BuildContext(device=torch.device("cpu"), weights=lambda name: tmp_path / name, build=build or (lambda stage: (_ for _ in ()).throw(BadInputError("no stage"))), seed=seed)


def test_official_psp_key_layout():
    with torch.device("meta"):
        enc = GradualStyleEncoder(50, n_styles=18)
        e4e = Encoder4Editing(50, n_styles=18)
    sd = enc.state_dict()
    assert set(sd) == set(e4e.state_dict())
    assert len([k for k in sd if k.startswith("body.") and k.endswith("res_layer.1.weight")]) == 24  # 3+4+14+3 units
    assert tuple(sd["input_layer.0.weight"].shape) == (64, 3, 3, 3)
    assert tuple(sd["body.3.shortcut_layer.0.weight"].shape) == (128, 64, 1, 1)
    assert "body.0.shortcut_layer.0.weight" not in sd  # 64 -> 64: max-pool shortcut, no weights
    assert tuple(sd["body.23.res_layer.5.fc1.weight"].shape) == (32, 512, 1, 1)  # SE reduction 16
    assert tuple(sd["styles.0.convs.6.weight"].shape) == (512, 512, 3, 3) and "styles.0.convs.8.weight" not in sd  # 16 px: 4 convs
    assert "styles.17.convs.10.weight" in sd and "styles.17.convs.12.weight" not in sd  # 64 px: 6 convs
    assert tuple(sd["styles.5.linear.weight"].shape) == (512, 512)
    assert tuple(sd["latlayer1.weight"].shape) == (512, 256, 1, 1) and tuple(sd["latlayer2.weight"].shape) == (512, 128, 1, 1)
    assert "body.23.res_layer.2.weight" in sd  # PReLU


@pytest.mark.parametrize("encoder_type", ["GradualStyleEncoder", "Encoder4Editing"])
def test_checkpoint_round_trip_is_strict_and_exact(tmp_path, encoder_type):
    model = tiny_model(encoder_type)
    opts = dict(model.opts)
    if encoder_type == "Encoder4Editing":  # e4e names the generator size stylegan_size
        opts["stylegan_size"] = opts.pop("output_size")
    path = write_psp(model, tmp_path / "model.pt", opts)
    loaded = load_psp_checkpoint(path)
    assert loaded.input_size == 256
    loaded.input_size = 64  # small inputs keep the test fast
    assert type(loaded.encoder).__name__ == encoder_type
    assert loaded.n_styles == loaded.decoder.n_latent == 8
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        w = loaded.encode(x)
        assert w.shape == (2, 8, D)
        assert torch.equal(w, model.encode(x))
        assert torch.equal(loaded(x), model(x))
    # our writer produces the same layout
    resaved = load_psp_checkpoint(save_psp_checkpoint(loaded, tmp_path / "again.pt"))
    resaved.input_size = 64
    with torch.no_grad():
        assert torch.equal(resaved.encode(x), w)
    # the decoder alone is a generator file too, carrying the mean latent
    decoder, avg = load_generator(path)
    assert decoder.n_latent == 8 and torch.equal(avg, model.latent_avg[0])


def test_encode_adds_latent_average_and_resizes_input(tmp_path):
    model = tiny_model()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        raw = model.encoder(x)
        assert torch.allclose(model.encode(x), raw + model.latent_avg)
        model.start_from_latent_avg = False
        assert torch.equal(model.encode(x), raw)
        small = model.encode(torch.nn.functional.interpolate(x, size=(32, 32), mode="area"))
    assert small.shape == raw.shape


def test_e4e_predicts_deltas_on_one_base_code():
    model = tiny_model("Encoder4Editing")
    with torch.no_grad():
        for style in model.encoder.styles[1:]:
            style.linear.weight.zero_()
            style.linear.bias.zero_()
        raw = model.encoder(torch.rand(2, 3, 64, 64))
    assert torch.allclose(raw, raw[:, :1].expand_as(raw))  # no deltas: every style is w0


def test_learn_in_w_encoder_broadcasts_one_code(tmp_path):
    torch.manual_seed(0)
    enc = build_encoder("BackboneEncoderUsingLastLayerIntoW", n_styles=8, **TINY_ENC)
    model = PspModel(enc, Generator(32, D, 2, channel_max=16), torch.randn(D), {"encoder_type": "BackboneEncoderUsingLastLayerIntoW", "output_size": 32, "learn_in_w": True, "start_from_latent_avg": True})
    loaded = load_psp_checkpoint(write_psp(model, tmp_path / "w.pt"))
    loaded.input_size = 64
    with torch.no_grad():
        w = loaded.encode(torch.rand(2, 3, 64, 64))
    assert w.shape == (2, 8, D) and torch.allclose(w, w[:, :1].expand_as(w))


@pytest.mark.parametrize("edit", ["missing", "extra", "prefix"])
def test_mismatched_checkpoint_names_file_and_keys(tmp_path, edit):
    model = tiny_model()
    state = {k: v for k, v in model.state_dict().items() if k != "latent_avg"}
    if edit == "missing":
        del state["encoder.styles.3.linear.bias"]
        expected = "missing keys: styles.3.linear.bias"
    elif edit == "extra":
        state["encoder.styles.9.linear.bias"] = torch.zeros(D)
        expected = "unexpected keys: styles.9.linear.bias"
    else:
        state["discriminator.weight"] = torch.zeros(1)
        expected = "discriminator"
    torch.save({"state_dict": state, "latent_avg": model.latent_avg, "opts": model.opts}, tmp_path / "bad.pt")
    with pytest.raises(BadInputError) as err:
        load_psp_checkpoint(tmp_path / "bad.pt")
    assert "bad.pt" in str(err.value) and expected in str(err.value)


def test_not_a_psp_checkpoint(tmp_path):
    torch.save({"g_ema": {}}, tmp_path / "g.pt")
    with pytest.raises(BadInputError, match="g.pt: no 'state_dict'"):
        load_psp_checkpoint(tmp_path / "g.pt")


def test_ir_se50_backbone_initialisation(tmp_path):
    model = tiny_model()
    donor = build_encoder("GradualStyleEncoder", n_styles=8, **TINY_ENC)
    # an ArcFace file: backbone keys (an old PyTorch: no num_batches_tracked) plus its own head
    state = {k: v for k, v in donor.state_dict().items() if k.startswith(("input_layer.", "body.")) and not k.endswith("num_batches_tracked")}
    state["output_layer.3.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "model_ir_se50.pth")
    load_ir_se50_backbone(model.encoder, tmp_path / "model_ir_se50.pth")
    assert torch.equal(model.encoder.body[2].res_layer[1].weight, donor.body[2].res_layer[1].weight)
    del state["body.1.res_layer.1.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(BadInputError, match="broken.pth.*body.1.res_layer.1.weight"):
        load_ir_se50_backbone(model.encoder, tmp_path / "broken.pth")


# ---------------------------------------------------------------- plugins


def test_plugins_registered():
    from latentdub.toolkit.core.plugins import get_component

    assert get_component("encoder", "psp").config.__name__ == "PspConfig"
    assert get_component("encoder", "e4e").config.__name__ == "E4eConfig"


@pytest.mark.parametrize("name", ["psp", "e4e"])
def test_plugin_random_init_matches_generator(tmp_path, name):
    from latentdub.plugins.psp import E4eConfig, PspConfig, build_e4e, build_psp
    from latentdub.plugins.stylegan2 import StyleGAN2Config, build_stylegan2
    from latentdub.toolkit.core.protocols import Encoder

    gen = build_stylegan2(StyleGAN2Config(random_init=True, size=32, channel_max=16, style_dim=D), context(tmp_path))
    build, cfg_cls = (build_psp, PspConfig) if name == "psp" else (build_e4e, E4eConfig)
    cfg = cfg_cls(random_init=True, output_size=32, style_dim=D, input_size=64, batch_size=2)
    enc = build(cfg, context(tmp_path, build=lambda stage: gen))
    assert isinstance(enc, Encoder) and enc.size == 64 and enc.n_styles == gen.n_styles == 8
    crops = torch.rand(3, 3, 32, 32) * 2 - 1
    w = enc.encode(crops)
    assert w.shape == (3, 8, D) and w.dtype == torch.float32
    assert torch.allclose(w.mean(dim=(0, 1)), gen.latent_avg, atol=0.5)  # random heads stay near the mean W
    again = build(cfg, context(tmp_path, build=lambda stage: gen))
    assert torch.equal(again.encode(crops), w)  # seeded
    one_batch = build(cfg_cls(random_init=True, output_size=32, style_dim=D, input_size=64, batch_size=8), context(tmp_path, build=lambda stage: gen))
    assert torch.allclose(one_batch.encode(crops), w, atol=1e-5)
    assert gen.synthesize(w).shape == (3, 3, 32, 32)


def test_plugin_loads_checkpoint_with_precision(tmp_path):
    from latentdub.plugins.psp import PspConfig, build_psp

    model = tiny_model()
    write_psp(model, tmp_path / "psp.pt")
    enc = build_psp(PspConfig(checkpoint="psp.pt", input_size=64), context(tmp_path))
    low = build_psp(PspConfig(checkpoint="psp.pt", input_size=64, precision="bf16", channels_last=True), context(tmp_path))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = model.encode(x)
    assert torch.allclose(enc.encode(x), expected, atol=1e-5)
    assert (low.encode(x) - expected).abs().max() < 0.1
    with pytest.raises(BadInputError, match="expects"):
        enc.encode(torch.rand(2, 1, 64, 64))
