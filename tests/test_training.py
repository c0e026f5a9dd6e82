"""`latentdub train` on the GRID dataset of ``test_dataset`` (tiny networks): it learns, checkpoints, resumes, infers."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from latentdub.cli import cli
from latentdub.nets.audio2latent import load_checkpoint
from latentdub.toolkit.core.build import Components
from latentdub.toolkit.core.errors import MissingWeightsError
from latentdub.toolkit.core.presets import resolve_preset
from latentdub.toolkit.learning.dataset import read_shard, shard_path
from latentdub.toolkit.learning.training import train
from latentdub.toolkit.media.audio import load_audio
from latentdub.toolkit.media.video import probe_video

from .test_dataset import grid_dataset, probe_encoder  # noqa: F401  (module fixtures; the prepared dataset is reused)

STEPS = 60
FAST = ["motion.train.lr=0.01"]


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "log.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(grid_dataset, tmp_path_factory):  # noqa: F811
    run = tmp_path_factory.mktemp("run") / "run"
    summary = train(grid_dataset["dataset"], run, preset=grid_dataset["preset"], overrides=FAST, steps=STEPS, log=lambda m: None)
    return {"run": run, "summary": summary, **grid_dataset}


def test_training_reduces_the_loss(trained):
    summary = trained["summary"]
    first, last = np.mean(summary.losses[:10]), np.mean(summary.losses[-10:])
    assert len(summary.losses) == STEPS and last < 0.8 * first, (first, last)
    rows = _rows(trained["run"])
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    assert [int(r["step"]) for r in rows if r["val_loss"]] == [20, 40, 60] and np.isfinite(summary.val_loss)
    assert float(rows[-1]["latent"]) == pytest.approx(float(rows[-1]["loss"]))  # lpips_weight 0: the loss is L_latent
    assert sorted(p.name for p in (trained["run"] / "checkpoints").glob("*.safetensors")) == [f"step_{s:07d}.safetensors" for s in (20, 40, 60)]
    assert (trained["run"] / "preset.yaml").is_file() and summary.checkpoint == trained["run"] / "audio2latent.safetensors"


def _motion(preset: Path, checkpoint: Path):
    return Components(resolve_preset(preset, [f"motion.checkpoint={checkpoint}"]), log=lambda m: None)["motion"]


def test_checkpoint_reloads_to_identical_predictions(trained):
    ds, final = trained["dataset"], trained["summary"].checkpoint
    audio = load_audio(trained["source"] / "s3" / "lrwp9a.mpg")
    identity = read_shard(shard_path(ds, "s3__lrwp9a"))["latents"][:4].astype(np.float32).mean(0)
    a = _motion(trained["preset"], final).predict(audio, 25.0, 40, identity)
    b = _motion(trained["preset"], final).predict(audio, 25.0, 40, torch.from_numpy(identity))
    np.testing.assert_array_equal(a.codes, b.codes)
    assert a.kind == "wplus-offset" and a.codes.shape == (40, 8) and a.codes.dtype == np.float32
    assert a.extra["basis"].shape == (8, 8, 64) and a.extra["layers"] == (0, 1, 2, 3) and a.extra["base"] == "identity"
    assert not np.any(a.extra["basis"][:, 4:])  # layers 4-7 never move
    model, extra = load_checkpoint(trained["run"] / "checkpoints" / "step_0000060.safetensors")
    assert extra["step"] == STEPS and extra["encoder"]["plugin"] == "conv-probe"
    from latentdub.nets.audio2latent import predict_windows

    feats = torch.from_numpy(Components(resolve_preset(trained["preset"]))["audio_features"].compute(audio, 25.0, 40))
    np.testing.assert_array_equal(predict_windows(model, feats, torch.from_numpy(identity), 50, 10, 8).numpy(), a.codes)
    log: list[str] = []
    Components(resolve_preset(trained["preset"], [f"motion.checkpoint={final}", "audio_features.n_mels=48"]), log=log.append)["motion"]
    assert any("trained with audio_features" in line and "'n_mels': 40" in line for line in log)


def test_resume_continues_as_if_never_stopped(trained, tmp_path):
    ds, preset = trained["dataset"], str(trained["preset"])
    args = FAST + ["motion.train.checkpoint_every=3", "motion.train.val_every=100"]
    straight = train(ds, tmp_path / "straight", preset=preset, overrides=args, steps=6, log=lambda m: None)
    train(ds, tmp_path / "split", preset=preset, overrides=args, steps=3, log=lambda m: None)
    runner = CliRunner()
    refused = runner.invoke(cli, ["train", str(ds), "-o", str(tmp_path / "split"), "--preset", preset, "--steps", "6", "-q", *sum((["--set", a] for a in args), [])])
    assert refused.exit_code == 2 and "--resume" in refused.output
    resumed = runner.invoke(cli, ["train", str(ds), "-o", str(tmp_path / "split"), "--preset", preset, "--steps", "6", "--resume", "-q", *sum((["--set", a] for a in args), [])])
    assert resumed.exit_code == 0, resumed.output
    a, _ = load_checkpoint(straight.checkpoint)
    b, _ = load_checkpoint(tmp_path / "split" / "audio2latent.safetensors")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, msg=name)
    assert [int(r["step"]) for r in _rows(tmp_path / "split")] == list(range(1, 7))


def test_resume_with_the_perceptual_loss(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    log: list[str] = []
    summary = train(trained["dataset"], run, preset=trained["preset"], overrides=FAST + ["motion.train.lpips_weight=1.0"],
                    steps=STEPS + 3, resume=True, log=log.append)
    assert summary.first_step == STEPS and len(summary.losses) == 3
    rows = _rows(run)
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 4))
    lpips = [float(r["lpips"]) for r in rows[STEPS:]]
    assert all(np.isfinite(lpips)) and min(lpips) > 0 and not rows[0]["lpips"]
    assert any("RANDOM backbone" in line for line in log)


def test_missing_lpips_backbone_names_the_fix(trained, tmp_path, monkeypatch):
    for env in ("LATENTDUB_CACHE", "LATENTDUB_WEIGHTS_DIR", "TORCH_HOME"):
        monkeypatch.setenv(env, str(tmp_path / "empty"))
    with pytest.raises(MissingWeightsError, match="lpips_weight=0"):
        train(trained["dataset"], tmp_path / "run", preset=trained["preset"],
              overrides=["motion.train.lpips_weight=1.0", "motion.train.lpips_random_backbone=false"], steps=1, log=lambda m: None)


def test_trained_checkpoint_drives_animate(trained, portrait, tmp_path):
    from latentdub.toolkit.dubbing.pipeline import animate

    out = tmp_path / "talking.mp4"
    preset = resolve_preset(trained["preset"], [f"motion.checkpoint={trained['summary'].checkpoint}"])
    summary = animate(portrait, trained["source"] / "s4" / "pwij3p.mpg", out, preset=preset, log=lambda m: None)
    info = probe_video(out)
    assert summary.frames == 40 and summary.frames_with_face == 40 and info.n_frames == 40 and info.has_audio
