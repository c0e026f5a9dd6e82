"""Shipped presets validate; overrides apply; bad values fail with the key named."""

from __future__ import annotations

import pytest
import yaml

from latentdub.toolkit.core.errors import ConfigError
from latentdub.toolkit.core.presets import apply_overrides, preset_names, resolve_preset


def test_shipped_presets_exist():
    assert {"tiny", "preview", "offline", "paper-256", "paper-1024", "neural-256", "neural-1024"} <= set(preset_names())


def test_the_offline_preset_is_the_fallback_and_preview_stays_available():
    assert resolve_preset("offline").stages["renderer"].plugin == "mouthbank"
    assert resolve_preset("tiny").fallback == "offline" and resolve_preset("neural-1024").fallback == "offline"
    preview = resolve_preset("preview")
    assert preview.stages["renderer"].plugin == "warp" and preview.fallback is None


@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_preset_validates(name):
    preset = resolve_preset(name)
    assert preset.description
    for stage in ("detector", "motion", "renderer", "compositor"):
        assert stage in preset.stages, f"{name} lacks {stage}"
    # the resolved form round-trips through YAML to the same preset
    again = resolve_preset_from_text(preset.to_yaml())
    assert again.to_dict() == preset.to_dict()


def resolve_preset_from_text(text, tmp=[]):
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp())
    path = folder / "p.yaml"
    path.write_text(text)
    return resolve_preset(path)


def test_overrides_are_typed_and_change_plugins():
    preset = resolve_preset("preview", ["output.crf=23", "detector.plugin=mtcnn", "timing.length_policy=loop"])
    assert preset.output.crf == 23
    assert preset.stages["detector"].plugin == "mtcnn"
    assert preset.timing.length_policy == "loop"


@pytest.mark.parametrize(
    "override, key",
    [
        ("output.crf=high", "output.crf"),
        ("output.bogus=1", "output.bogus"),
        ("timing.length_policy=stretch", "timing.length_policy"),
        ("compositor.feather=wide", "compositor.feather"),
        ("detector.plugin=nonexistent", "detector"),
        ("colour=red", "colour"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(Exception) as info:
        resolve_preset("preview", [override])
    assert key in str(info.value)


def test_user_preset_file(tmp_path):
    path = tmp_path / "mine.yaml"
    data = yaml.safe_load(resolve_preset("preview").to_yaml())
    data["output"]["crf"] = 30
    data["description"] = "my preset"
    path.write_text(yaml.safe_dump(data))
    preset = resolve_preset(path)
    assert preset.output.crf == 30 and preset.description == "my preset"


def test_missing_and_broken_preset_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve_preset(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("output: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        resolve_preset(bad)
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_preset("no-such-preset")


def test_override_switching_plugin_drops_old_settings():
    data = {"detector": {"plugin": "dlib", "upsample": 1}}
    out = apply_overrides(data, ["detector.plugin=mtcnn"])
    assert out["detector"] == {"plugin": "mtcnn"}


def test_auto_takes_the_public_weights_path_when_there_is_no_stage_1_model(tmp_path, monkeypatch):
    from latentdub.toolkit.core.presets import choose_auto_preset

    monkeypatch.setenv("LATENTDUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LATENTDUB_WEIGHTS_DIR", str(tmp_path))
    said = []
    assert choose_auto_preset(said.append) == "offline"
    assert "paper-1024 needs psp_ffhq_encode, audio2latent; neural-1024 needs psp_ffhq_encode" in said[-1]
    (tmp_path / "psp_ffhq_encode.pt").write_bytes(b"weights")  # the public weights, no audio2latent
    assert choose_auto_preset(said.append) == "neural-1024"
    assert said[-1] == "preset auto: using neural-1024 (paper-1024 needs audio2latent)"
    (tmp_path / "audio2latent.safetensors").write_bytes(b"a trained model")
    assert choose_auto_preset(said.append) == "paper-1024"


def test_fallback_preset_keeps_what_the_user_asked_of_the_result():
    from latentdub.toolkit.core.presets import OFFLINE_PRESET, fallback_preset

    preset = resolve_preset("neural-256", ["timing.length_policy=loop", "output.crf=7", "speech.fade_in=0.5", "motion.transcript=bin blue"])
    assert preset.fallback == OFFLINE_PRESET and resolve_preset(OFFLINE_PRESET).fallback is None
    chosen = fallback_preset(preset)
    assert chosen.name == OFFLINE_PRESET and chosen.fallback is None and chosen.stages["renderer"].plugin == "mouthbank"
    assert chosen.timing.length_policy == "loop" and chosen.output.crf == 7 and chosen.speech.fade_in == 0.5
    assert chosen.stages["motion"].config.transcript == "bin blue"
    assert resolve_preset("neural-256", ["fallback=null"]).fallback is None
    with pytest.raises(ConfigError, match="fallback"):
        resolve_preset("neural-256", ["fallback=3"])


def test_clipfit_validates_its_target_model():
    preset = resolve_preset("neural-256", ["motion.targets.smoothing_ms=60"])
    assert preset.stages["motion"].config.targets["smoothing_ms"] == 60.0  # defaults of the target model filled in
    with pytest.raises(ConfigError, match="motion.targets.loudness"):
        resolve_preset("neural-256", ["motion.targets.loudness=3"])
