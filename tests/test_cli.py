"""The CLI surface: help, presets, dry runs, one-line errors with documented exit codes."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from latentdub.cli import cli
from latentdub.toolkit.core.errors import EXIT_CODES


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_help_lists_the_command_surface():
    result = run("--help")
    assert result.exit_code == 0
    for name in ("dub", "animate", "tune", "dataset", "train", "evaluate", "batch", "weights", "plugins", "presets"):
        assert name in result.output
    for code in EXIT_CODES:
        assert f"  {code}  " in result.output


def test_presets_list_and_show():
    result = run("presets", "list")
    assert result.exit_code == 0 and "tiny:" in result.output and "preview:" in result.output
    result = run("presets", "show", "preview")
    data = yaml.safe_load(result.output)
    assert data["motion"]["plugin"] == "visemes" and "crf" in data["output"]


def test_dry_run_prints_resolved_preset(tmp_path):
    clip, speech = tmp_path / "a.mp4", tmp_path / "b.wav"
    result = run("dub", str(clip), str(speech), "-o", str(tmp_path / "o.mp4"), "--preset", "preview", "--set", "output.crf=30", "--dry-run")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["output"]["crf"] == 30
    assert not (tmp_path / "o.mp4").exists()


def test_auto_preset_falls_back_to_offline_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTDUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LATENTDUB_OFFLINE", "1")
    result = CliRunner().invoke(cli, ["dub", "a.mp4", "b.wav", "-o", str(tmp_path / "o.mp4"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "using the offline backend (preset offline)" in result.output
    assert "visemes" in result.output


def test_bad_override_is_one_line_exit_2(tmp_path):
    result = run("dub", "a.mp4", "b.wav", "-o", str(tmp_path / "o.mp4"), "--preset", "preview", "--set", "output.crf=loud")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: output.crf")


def test_unknown_plugin_exit_5(tmp_path):
    result = run("dub", "a.mp4", "b.wav", "-o", str(tmp_path / "o.mp4"), "--preset", "preview", "--set", "detector.plugin=nope")
    assert result.exit_code == 5 and "no detector named 'nope'" in result.output


def test_plugins_lists_builtins():
    result = run("plugins")
    assert result.exit_code == 0
    assert "latentdub.plugins.dlib_detector" in result.output


def test_public_api_mirrors_the_commands():
    import inspect

    import latentdub

    for name in ("dub", "animate", "tune", "prepare_dataset", "train", "evaluate", "batch", "resolve_preset"):
        assert callable(getattr(latentdub, name)), name
    assert "preset" in inspect.signature(latentdub.dub).parameters
    assert "overrides" in inspect.signature(latentdub.train).parameters
    with pytest.raises(AttributeError):
        latentdub.no_such_function  # noqa: B018


def test_doctor_reports_what_works(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTDUB_CACHE", str(tmp_path))
    result = run("doctor")
    assert result.exit_code == 0, result.output
    assert "ffmpeg version" in result.output and "device auto ->" in result.output
    assert "psp_ffhq_encode, audio2latent" in result.output  # each missing weight named once
    assert "using the offline backend (preset offline)" in result.output


def test_transcript_option_keeps_any_text(tmp_path):
    text = "it's a \"quoted\" line: café"
    result = run("dub", "a.mp4", "b.wav", "-o", str(tmp_path / "o.mp4"), "--preset", "preview", "--transcript", text, "--dry-run")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["motion"]["transcript"] == text
