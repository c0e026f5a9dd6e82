"""clipfit end to end through the CLI on real GRID clips: tiny networks, a narrowed real-architecture 256 px stack
saved in the pSp checkpoint format, the fallback preset, and shared directions from `latentdub directions fit`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from latentdub.cli import cli
from latentdub.toolkit.learning.directions import SharedDirections
from latentdub.toolkit.media.video import probe_video, read_frames

from .test_psp import write_psp

pytestmark = pytest.mark.slow
CLIPFIT = ["--set", "motion.plugin=clipfit"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    """No shared directions unless a test passes them: an empty weights cache."""
    monkeypatch.setenv("LATENTDUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LATENTDUB_WEIGHTS_DIR", raising=False)


def summary_notes(output: str) -> list[str]:
    return [line[len("note: "):] for line in output.splitlines() if line.startswith("note: ")]


def test_tiny_clipfit_dub_reports_its_fit(grid_clips, tmp_path):
    out = tmp_path / "dub.mp4"
    result = invoke("dub", grid_clips[0], grid_clips[3], "-o", out, "--preset", "tiny", *CLIPFIT, "--transcript", "lay blue by c two again")
    assert result.exit_code == 0, result.output
    assert probe_video(out).n_frames == probe_video(grid_clips[0]).n_frames
    fit = [n for n in summary_notes(result.output) if "mouth directions fitted on" in n]
    assert fit and "R^2" in fit[0] and "from the mouth beyond head pose" in fit[0]
    assert "by a fallback" not in result.output
    saved = yaml.safe_load((tmp_path / "dub.latentdub.yaml").read_text())
    assert saved["motion"]["plugin"] == "clipfit" and saved["motion"]["targets"]["plugin"] == "visemes"
    assert saved["motion"]["transcript"] == "lay blue by c two again"


def test_a_fit_too_weak_falls_back_to_the_offline_preset(grid_clips, tmp_path):
    out = tmp_path / "weak.mp4"
    result = invoke("dub", grid_clips[0], grid_clips[3], "-o", out, "--preset", "tiny", *CLIPFIT, "--set", "motion.min_r2=0.99",
                    "--transcript", "lay blue by c two again")
    assert result.exit_code == 0, result.output
    n = probe_video(grid_clips[0]).n_frames
    assert f"{n}/{n} output frames dubbed ({n} by a fallback)" in result.output
    notes = summary_notes(result.output)
    assert any("could not serve" in m and "R^2" in m and "min_r2 0.99" in m and "'offline'" in m for m in notes)
    assert "tiny attempt" in result.output  # the time spent on the attempt is counted
    saved = yaml.safe_load((tmp_path / "weak.latentdub.yaml").read_text())
    assert saved["renderer"]["plugin"] == "mouthbank" and saved["motion"]["transcript"] == "lay blue by c two again"
    # without a fallback the same run fails with exit 7 and writes nothing
    bare = tmp_path / "bare.mp4"
    result = invoke("dub", grid_clips[0], grid_clips[3], "-o", bare, "--preset", "tiny", *CLIPFIT, "--set", "motion.min_r2=0.99", "--set", "fallback=null", "--quiet")
    assert result.exit_code == 7 and result.output.startswith("error: motion 'clipfit'") and not bare.exists()


@pytest.fixture(scope="module")
def narrow_psp(tmp_path_factory) -> Path:
    """A pSp checkpoint (IR-SE encoder, 14 styles, and its 256 px StyleGAN2 decoder) of the real classes, narrowed."""
    from latentdub.nets.psp import PspModel, build_encoder
    from latentdub.nets.stylegan2 import Generator
    from latentdub.plugins.psp import _calibrate

    torch.manual_seed(0)
    decoder = Generator(256, style_dim=64, n_mlp=2, channel_max=16)
    encoder = build_encoder("GradualStyleEncoder", n_styles=14, units=(1, 1, 1, 1), widths=(16, 24, 32, 48), style_dim=64, style_width=32)
    _calibrate(encoder, 256)  # a random IR-SE with fresh BatchNorm gives every face the same code
    average = decoder.mean_latent(4096, seed=0)[0].expand(14, -1)
    model = PspModel(encoder, decoder, average, {"encoder_type": "GradualStyleEncoder", "output_size": 256, "start_from_latent_avg": True, "input_nc": 3})
    return write_psp(model.eval(), tmp_path_factory.mktemp("weights") / "narrow_psp.pt")


def test_narrow_256_stack_through_the_neural_preset(grid_clips, narrow_psp, tmp_path):
    out = tmp_path / "neural.mp4"
    weights = ["--set", f"encoder.checkpoint={narrow_psp}", "--set", f"generator.checkpoint={narrow_psp}", "--set", "generator.precision=fp32",
               "--set", "output.crf=0", "--set", "output.contact_sheet=true"]
    result = invoke("dub", grid_clips[0], grid_clips[3], "-o", out, "--preset", "neural-256", *weights, "--transcript", "lay blue by c two again")
    assert result.exit_code == 0, result.output
    assert "by a fallback" not in result.output
    assert any("mouth directions fitted on" in n and "R^2" in n for n in summary_notes(result.output))
    source, dubbed = next(read_frames(grid_clips[0])).image.astype(int), next(read_frames(out)).image.astype(int)
    changed = np.abs(source - dubbed).max(axis=2) > 12
    ys, xs = np.nonzero(changed)
    assert changed.any() and ys.min() > source.shape[0] * 0.3  # the lower face changed, nothing above the eyes
    assert (tmp_path / "neural.contact.png").is_file()


@pytest.fixture(scope="module")
def shared(grid_clips, tmp_path_factory) -> Path:
    """Shared directions over three GRID clips (a folder of clips) with the tiny stack."""
    folder = tmp_path_factory.mktemp("clips")
    for clip in grid_clips[:3]:
        (folder / clip.name).symlink_to(clip)
    out = folder.parent / "pooled.safetensors"
    result = invoke("directions", "fit", folder, "-o", out, "--preset", "tiny", *CLIPFIT, "--set", "motion.max_frames=40")
    assert result.exit_code == 0, result.output
    assert "mouth directions over 3 clips, 120 frames" in result.output and "R^2" in result.output
    return out


def test_directions_fit_writes_a_checked_file(shared, tmp_path):
    directions = SharedDirections.load(shared)
    assert directions.directions.shape == (6, 10, 512) and directions.layers == tuple(range(8))
    assert np.abs(directions.directions[:, 8:]).max() == 0 and np.abs(directions.directions[:3, :8]).max() > 0
    assert directions.info["clips"] == 3 and len(directions.fingerprint) == 64
    shown = invoke("directions", "show", shared)
    assert shown.exit_code == 0 and "3 clips" in shown.output
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a file")
    result = invoke("directions", "show", bad)
    assert result.exit_code == 2 and "latentdub directions fit" in result.output


@pytest.fixture(scope="module")
def one_speaker(grid_clips, tmp_path_factory) -> Path:
    """Shared directions from one GRID clip, under the registered weight's file name.

    (Random networks are not identity-invariant, so directions pooled over
    several speakers of the tiny stack explain almost nothing: R^2 ~0.01.)
    """
    out = tmp_path_factory.mktemp("one") / "mouth-directions.safetensors"
    result = invoke("directions", "fit", grid_clips[0], "-o", out, "--preset", "tiny", *CLIPFIT, "--quiet")
    assert result.exit_code == 0, result.output
    return out


def test_animate_needs_shared_directions_and_uses_them(one_speaker, shared, portrait, grid_clips, tmp_path, monkeypatch):
    plain = tmp_path / "plain.mp4"
    result = invoke("animate", portrait, grid_clips[3], "-o", plain, "--preset", "tiny", *CLIPFIT)
    assert result.exit_code == 0, result.output
    assert "by a fallback" in result.output and "too few to fit the mouth on" in result.output
    # the shared directions, registered under their weight name, serve the portrait
    monkeypatch.setenv("LATENTDUB_WEIGHTS_DIR", str(one_speaker.parent))
    driven = tmp_path / "driven.mp4"
    result = invoke("animate", portrait, grid_clips[3], "-o", driven, "--preset", "tiny", *CLIPFIT, "--set", "output.crf=0")
    assert result.exit_code == 0, result.output
    assert "by a fallback" not in result.output and any("driving the shared directions of 1 clip " in n for n in summary_notes(result.output))
    # random networks barely draw a mouth, but what they draw follows the speech: the change from a silent frame rises with the opening
    from latentdub.plugins.viseme_motion import VisemeMotion
    from latentdub.toolkit.media.audio import load_audio

    frames = [f.image.astype(float) for f in read_frames(driven)]
    opening = VisemeMotion().predict(load_audio(grid_clips[3], 16000), 25.0, len(frames)).codes[1:, 0]
    silent = frames[1 + int(np.argmin(opening))]  # lbbc2a breathes in with parted lips before it speaks
    change = np.array([np.abs(f - silent).mean() for f in frames[1:]])
    assert change.max() > 0 and np.corrcoef(change, opening)[0, 1] > 0.5  # measured 0.84
    # a directions file for another generator is refused when named explicitly
    result = invoke("animate", portrait, grid_clips[3], "-o", tmp_path / "other.mp4", "--preset", "tiny", *CLIPFIT, "--set", "seed=3",
                    "--set", f"motion.prior={shared}", "--quiet")
    assert result.exit_code == 2 and "fitted for generator" in result.output


def test_directions_fit_reads_a_prepared_dataset(grid_clips, tmp_path):
    source = tmp_path / "src" / "s1"
    source.mkdir(parents=True)
    for clip in grid_clips[:2]:
        (source / clip.name).symlink_to(clip)
    dataset = tmp_path / "ds"
    result = invoke("dataset", "prepare", source.parent, "-o", dataset, "--preset", "tiny", "--quiet")
    assert result.exit_code == 0, result.output
    out = tmp_path / "d.safetensors"
    result = invoke("directions", "fit", dataset, "-o", out, "--preset", "tiny", *CLIPFIT)
    assert result.exit_code == 0, result.output
    assert SharedDirections.load(out).info["clips"] == 2
    # another encoder than the dataset's is refused
    result = invoke("directions", "fit", dataset, "-o", out, "--preset", "tiny", *CLIPFIT, "--set", "seed=5", "--quiet")
    assert result.exit_code == 2 and "prepared with another encoder" in result.output
