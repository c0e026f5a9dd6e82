"""`latentdub dataset prepare` on real GRID clips (CC BY 4.0, Cooke et al. 2006): shards, manifest, splits, resume.

The dataset is prepared once per module into a fixed folder under pytest's
base temp; ``test_training`` reuses it through the same fixtures (its run
only re-checks the finished clips). Inversion uses ``conv-probe``, a tiny
random conv encoder registered here: its codes follow the image, which the
tiny random pSp's barely do (they vary by ~1e-6, below float16 resolution).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from latentdub.cli import cli
from latentdub.toolkit.core import plugins
from latentdub.toolkit.core.errors import BadInputError
from latentdub.toolkit.core.hookspecs import hookimpl
from latentdub.toolkit.learning.dataset import find_clips, load_manifest, make_splits, prepare_dataset, read_shard, read_speaker_map, read_split, shard_path
from latentdub.toolkit.media.video import read_frames

from . import media

PLUGIN_NAME = "stage1_test_encoders"

#: The test stack: dlib tracking, conv-probe inversion at 32 px, tiny StyleGAN2 (8 x 64 W+), tiny audio2latent.
PRESET = """\
description: Stage-1 test stack (tiny random networks)
device: cpu
seed: 0
track:
  crop_size: 64
  detect_every: 3
detector:
  plugin: dlib
encoder:
  plugin: conv-probe
generator:
  plugin: stylegan2
  random_init: true
  size: 32
  style_dim: 64
  channel_max: 32
  batch_size: 64
audio_features:
  plugin: mfcc
motion:
  plugin: audio2latent
  random_init: true
  layers: [0, 1, 2, 3]
  components: 8
  conv_channels: [8, 16]
  audio_dim: 32
  hidden: 64
  window: 50
  overlap: 10
  train:
    batch_size: 8
    sequence_length: 16
    lr: 0.003
    lpips_weight: 0.0
    lpips_frames: 2
    lpips_size: 32
    lpips_net: alex
    lpips_random_backbone: true
    identity_frames: 4
    val_every: 20
    val_batches: 2
    checkpoint_every: 20
renderer:
  plugin: neural
  batch_size: 16
compositor:
  plugin: soft
  region: mouth
"""


@dataclasses.dataclass(frozen=True)
class ConvProbeConfig:
    """``size``: input side in px; ``n_styles`` x ``style_dim``: the W+ shape it outputs."""

    size: int = 32
    n_styles: int = 8
    style_dim: int = 64


class ConvProbeEncoder:
    """Two stride-2 convs, 4x4 pooling and a linear head, randomly initialised from the preset seed."""

    def __init__(self, config: ConvProbeConfig, seed: int) -> None:
        import torch
        from torch import nn

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(
                nn.Conv2d(3, 16, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(16, 32, 3, 2, 1), nn.LeakyReLU(0.2),
                nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(512, config.n_styles * config.style_dim),
            ).eval()
        self.config = config
        self.size, self.n_styles = config.size, config.n_styles

    def encode(self, images):
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            x = torch.as_tensor(images, dtype=torch.float32)
            if x.shape[-1] != self.size:
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
            return 4.0 * self.net(x).reshape(len(x), self.n_styles, self.config.style_dim)


class Stage1TestEncoders:
    @hookimpl
    def register_encoders(self, register):
        register("conv-probe", lambda config, context: ConvProbeEncoder(config, context.seed), config=ConvProbeConfig, summary="test: tiny conv encoder")


@pytest.fixture(scope="module")
def probe_encoder():
    """Registers the ``conv-probe`` encoder for the module."""
    plugins.register_plugin(Stage1TestEncoders(), name=PLUGIN_NAME)
    yield
    plugins.unregister_plugin(PLUGIN_NAME)


def _source(folder: Path, grid_clips: list[Path]) -> Path:
    """GRID clips cut to 1.6 s as s1..s4 (two each) at 25 fps, plus s5: one clip at 30 fps."""
    src = folder / "source"
    for i, clip in enumerate(grid_clips):
        out = src / f"s{i // 2 + 1}" / clip.name
        out.parent.mkdir(parents=True, exist_ok=True)
        media.ffmpeg("-i", str(clip), "-t", "1.6", "-c:v", "mpeg1video", "-q:v", "3", "-c:a", "mp2", str(out))
    out = src / "s5" / "thirty.mpg"
    out.parent.mkdir(parents=True, exist_ok=True)
    media.ffmpeg("-i", str(grid_clips[0]), "-t", "1.6", "-r", "30", "-c:v", "mpeg1video", "-q:v", "3", "-c:a", "mp2", str(out))
    return src


@pytest.fixture(scope="module")
def grid_dataset(probe_encoder, grid_clips, tmp_path_factory) -> dict:
    """The prepared dataset: ``{"source", "dataset", "preset", "first": PrepareSummary of the first run}``."""
    base = tmp_path_factory.getbasetemp() / "stage1"
    preset = base / "stage1.yaml"
    first = None
    if not (base / "dataset" / "manifest.json").is_file():
        base.mkdir(exist_ok=True)
        preset.write_text(PRESET)
        _source(base, grid_clips)
        first = prepare_dataset(base / "source", base / "dataset", layout="grid", preset=preset, log=lambda m: None)
    return {"source": base / "source", "dataset": base / "dataset", "preset": preset, "first": first}


def test_prepare_writes_shards_manifest_and_splits(grid_dataset):
    ds = grid_dataset["dataset"]
    manifest = load_manifest(ds)
    clips = manifest["clips"]
    assert len(clips) == 9 and all(e["status"] == "done" for e in clips.values())
    assert {e["speaker"] for e in clips.values()} == {"s1", "s2", "s3", "s4", "s5"}
    assert manifest["encoder"]["plugin"] == "conv-probe" and manifest["splits"]["mode"] == "speaker"
    for clip_id, entry in clips.items():
        shard = read_shard(shard_path(ds, clip_id))
        t = entry["n_frames"]
        assert shard["latents"].shape == (t, 8, 64) and shard["latents"].dtype == np.float16
        assert shard["features"].shape == (t, 28, 12) and shard["valid"].shape == (t,)
        assert entry["n_valid"] == int(shard["valid"].sum()) > 0.9 * t
        assert len(entry["source_sha256"]) == 64 and entry["shard_size"] == shard_path(ds, clip_id).stat().st_size
    # the encoder's codes move with the face within a clip (mouth motion), far above float16 resolution
    lat = read_shard(shard_path(ds, "s1__bbaf2n"))["latents"].astype(np.float32)
    assert lat.std(0).mean() > 1e-3


def test_feature_frames_match_video_frames_at_25_and_30_fps(grid_dataset):
    ds, src = grid_dataset["dataset"], grid_dataset["source"]
    clips = load_manifest(ds)["clips"]
    for clip_id, video, fps in (("s1__bbaf2n", src / "s1" / "bbaf2n.mpg", 25.0), ("s5__thirty", src / "s5" / "thirty.mpg", 30.0)):
        decoded = sum(1 for _ in read_frames(video))
        shard = read_shard(shard_path(ds, clip_id))
        assert clips[clip_id]["fps"] == pytest.approx(fps)
        assert len(shard["features"]) == len(shard["latents"]) == clips[clip_id]["n_frames"] == decoded
        assert abs(decoded - 1.6 * fps) <= 1


def test_splits_are_speaker_disjoint_and_cover_every_clip(grid_dataset):
    ds = grid_dataset["dataset"]
    speakers = {c: e["speaker"] for c, e in load_manifest(ds)["clips"].items()}
    splits = {name: read_split(ds, name) for name in ("train", "val", "test")}
    assert sorted(sum(splits.values(), [])) == sorted(speakers)
    by_split = {name: {speakers[c] for c in ids} for name, ids in splits.items()}
    assert by_split["train"] and by_split["val"] and by_split["test"]
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"]) and not (by_split["val"] & by_split["test"])


def test_second_run_skips_finished_clips_via_the_cli(grid_dataset):
    ds = grid_dataset["dataset"]
    before = {p.name: p.stat().st_mtime_ns for p in (ds / "shards").iterdir()}
    result = CliRunner().invoke(
        cli, ["dataset", "prepare", str(grid_dataset["source"]), "-o", str(ds), "--layout", "grid", "--preset", str(grid_dataset["preset"]), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert {p.name: p.stat().st_mtime_ns for p in (ds / "shards").iterdir()} == before
    summary = prepare_dataset(grid_dataset["source"], ds, layout="grid", preset=grid_dataset["preset"], log=lambda m: None)
    assert (summary.skipped, summary.prepared, summary.failed) == (9, 0, {})


def test_half_written_and_damaged_shards_are_redone(grid_dataset, tmp_path):
    ds = grid_dataset["dataset"]
    damaged = shard_path(ds, "s2__lbbc2a")
    good = read_shard(damaged)
    damaged.write_bytes(damaged.read_bytes()[:1000])  # a truncated shard
    stale = ds / "shards" / "s3__lrwp9a.safetensors.part"  # an interrupted write
    stale.write_bytes(b"partial")
    before = shard_path(ds, "s1__bbaf2n").stat().st_mtime_ns
    summary = prepare_dataset(grid_dataset["source"], ds, layout="grid", preset=grid_dataset["preset"], log=lambda m: None)
    assert (summary.prepared, summary.skipped) == (1, 8)
    assert not stale.exists() and shard_path(ds, "s1__bbaf2n").stat().st_mtime_ns == before
    redone = read_shard(damaged)
    np.testing.assert_array_equal(redone["latents"], good["latents"])  # deterministic: same tracking, same encoder
    assert load_manifest(ds)["clips"]["s2__lbbc2a"]["shard_size"] == damaged.stat().st_size


def test_another_encoder_setup_is_refused(grid_dataset):
    with pytest.raises(BadInputError, match="prepared with another encoder"):
        prepare_dataset(grid_dataset["source"], grid_dataset["dataset"], layout="grid", preset=grid_dataset["preset"],
                        overrides=["encoder.size=16"], log=lambda m: None)


def test_find_clips_by_layout(tmp_path):
    grid = tmp_path / "grid"
    for rel in ("s1/video/mpg_6000/bbaf2n.mpg", "s12/lwbsza.mpg", "extra/pwij3p.mpg"):
        (grid / rel).parent.mkdir(parents=True, exist_ok=True)
        (grid / rel).write_bytes(b"")
    clips = find_clips(grid, "grid")
    assert [(c.clip_id, c.speaker) for c in clips] == [("extra__pwij3p", "extra"), ("s12__lwbsza", "s12"), ("s1__bbaf2n", "s1")]
    tcd = tmp_path / "tcd"
    for rel in ("volunteers/01M/Clips/straightcam/sa1.mp4", "volunteers/01M/audio/sa1.wav", "volunteers/02F/straightcam/si10.mp4", "volunteers/02F/30degcam/si10.mp4"):
        (tcd / rel).parent.mkdir(parents=True, exist_ok=True)
        (tcd / rel).write_bytes(b"")
    clips = find_clips(tcd, "tcd-timit")
    assert [(c.clip_id, c.speaker) for c in clips] == [("01M__sa1", "01M"), ("02F__si10", "02F")]
    assert clips[0].audio == tcd / "volunteers/01M/audio/sa1.wav" and clips[1].audio is None
    folder = tmp_path / "folder"
    for rel in ("alice/a.mp4", "bob/take1/b.mov", "c.mkv", "notes.txt"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"")
    (tmp_path / "speakers.txt").write_text("# clip speaker\nc.mkv carol\n")
    clips = find_clips(folder, "folder", read_speaker_map(tmp_path / "speakers.txt"))
    assert [(c.clip_id, c.speaker) for c in clips] == [("alice__a", "alice"), ("bob__take1__b", "take1"), ("c", "carol")]
    with pytest.raises(BadInputError, match="no grid clips"):
        find_clips(folder, "grid")


def test_splits_fall_back_with_few_speakers():
    splits, mode, notes = make_splits({f"c{i}": "only" for i in range(10)}, 0.1, 0.1, seed=3)
    assert mode == "clip" and [len(splits[k]) for k in ("train", "val", "test")] == [8, 1, 1] and "NOT speaker-disjoint" in notes[0]
    splits, mode, notes = make_splits({"a1": "a", "a2": "a", "b1": "b"}, 0.1, 0.1, seed=3)
    assert mode == "speaker" and splits["test"] == [] and len(splits["train"]) + len(splits["val"]) == 3 and "test split is empty" in notes[0]
    speakers = {f"c{i}": f"s{i % 20}" for i in range(100)}
    a = make_splits(speakers, 0.1, 0.2, seed=1)[0]
    assert a == make_splits(speakers, 0.1, 0.2, seed=1)[0] != make_splits(speakers, 0.1, 0.2, seed=2)[0]
    assert [len({speakers[c] for c in a[k]}) for k in ("train", "val", "test")] == [14, 2, 4]


def test_bad_source_and_fractions_fail_clearly(tmp_path):
    with pytest.raises(BadInputError, match="source folder not found"):
        find_clips(tmp_path / "missing", "grid")
    with pytest.raises(BadInputError, match="split fractions"):
        prepare_dataset(tmp_path, tmp_path / "ds", val_fraction=0.6, test_fraction=0.5)
    result = CliRunner().invoke(cli, ["dataset", "prepare", str(tmp_path), "-o", str(tmp_path / "ds"), "--preset", "tiny", "-q"])
    assert result.exit_code == 2 and "no folder clips found" in result.output
