"""The evaluate command end to end on real GRID clips (CC BY 4.0, Cooke et al. 2006), offline."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from latentdub.toolkit.core.errors import BadInputError
from latentdub.toolkit.core.types import ClipPair, Frame
from latentdub.toolkit.evaluation.evaluate import evaluate, pair_inputs, paired_frames

MAX_FRAMES = 25
SHORT = 12  # enough for SyncNet windows (6+ frames) and a covariance


@pytest.fixture()
def no_weights(tmp_path, monkeypatch):
    """An empty weights cache and no local weight folders, offline."""
    monkeypatch.setenv("LATENTDUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LATENTDUB_WEIGHTS_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("LATENTDUB_OFFLINE", "1")


def _clip(grid_clips, stem):
    return next(p for p in grid_clips if p.stem == stem)


def _stream(n, fps, size=4):
    for i in range(n):
        yield Frame(index=i, time=i / fps, image=np.full((size, size, 3), i, np.uint8))


# ---------------------------------------------------------------- pairing


def test_frames_pair_by_nearest_timestamp_up_to_the_shorter_clip():
    # generated 30 fps for 1 s, reference 25 fps for 0.8 s (20 frames)
    pairs = list(paired_frames(_stream(30, 30.0), _stream(20, 25.0), 25.0))
    assert len(pairs) == 24  # generated frames with t < 0.8 s
    for gen, ref in pairs:
        assert abs(ref.time - gen.time) <= min(abs(k / 25 - gen.time) for k in range(20)) + 1e-9
    assert pairs[3][1].index == 2  # t = 0.1 s is as far from 0.08 as from 0.12: the earlier frame wins
    # generated shorter than the reference: every generated frame is scored
    pairs = list(paired_frames(_stream(10, 25.0), _stream(50, 50.0), 50.0))
    assert [ref.index for _, ref in pairs] == [2 * i for i in range(10)]


def test_folders_are_matched_by_stem_and_leftovers_reported(tmp_path, grid_clips):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir()
    ref.mkdir()
    for p in grid_clips[:3]:
        (ref / p.name).symlink_to(p)
    (gen / "bbaf2n.mp4").symlink_to(grid_clips[0])
    (gen / "brbk7n.mpg").symlink_to(grid_clips[1])
    (gen / "extra.mp4").symlink_to(grid_clips[2])
    (gen / "notes.txt").write_text("not a video")
    clips, unmatched = pair_inputs(gen, ref)
    assert [c.name for c in clips] == ["bbaf2n", "brbk7n"]
    assert clips[0] == ClipPair("bbaf2n", gen / "bbaf2n.mp4", ref / "bbaf2n.mpg")
    assert sorted(unmatched) == sorted([str(gen / "extra.mp4"), str(ref / grid_clips[2].name)])
    with pytest.raises(BadInputError, match="not one of each"):
        pair_inputs(gen / "bbaf2n.mp4", ref)
    with pytest.raises(BadInputError, match="not found"):
        pair_inputs(tmp_path / "missing.mp4", ref / grid_clips[0].name)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInputError, match="in common"):
        pair_inputs(empty, ref)


# ---------------------------------------------------------------- known answers through the whole runner


def test_a_clip_against_itself_gives_the_identity_scores(grid_clips, no_weights):
    clip = _clip(grid_clips, "bbaf2n")
    result = evaluate(
        clip, clip, max_frames=SHORT,
        settings={"fid": {"random_init": True}, "lse": {"random_init": True}},
    )
    assert result.columns == ["PSNR", "SSIM", "FID", "LMD", "LSE-D", "LSE-C", "CPBD"]
    assert not result.unavailable
    (row,) = result.clips
    assert row.frames == SHORT
    assert row.values["PSNR"] == 100.0
    assert row.values["SSIM"] == pytest.approx(1.0)
    assert row.values["LMD"] == 0.0
    assert row.values["FID"] < 1e-6
    assert math.isfinite(row.values["LSE-D"]) and math.isfinite(row.values["LSE-C"])
    assert 0.2 < row.values["CPBD"] < 0.5  # measured 0.335 on GRID frames
    assert result.summary["PSNR"] == 100.0


def test_face_region_option_compares_aligned_crops(grid_clips, no_weights):
    a, b = _clip(grid_clips, "bbaf2n"), _clip(grid_clips, "brbk7n")
    whole = evaluate(a, b, metrics=["psnr", "ssim"], max_frames=5)
    face = evaluate(a, b, metrics=["psnr", "ssim"], max_frames=5, settings={"psnr": {"region": "face"}, "ssim": {"region": "face", "crop_size": 128}})
    assert whole.clips[0].values["PSNR"] != face.clips[0].values["PSNR"]
    assert all(math.isfinite(v) for v in face.clips[0].values.values())
    assert face.settings["ssim"]["crop_size"] == 128


# ---------------------------------------------------------------- the command


def test_evaluate_command_offline_marks_missing_weights_and_writes_reports(grid_clips, tmp_path, no_weights):
    from latentdub.cli import cli

    gen, ref = _clip(grid_clips, "bbaf2n"), _clip(grid_clips, "brbk7n")
    out_csv, out_json = tmp_path / "scores.csv", tmp_path / "scores.json"
    result = CliRunner().invoke(
        cli, ["evaluate", str(gen), str(ref), "--csv", str(out_csv), "--json", str(out_json), "--max-frames", str(MAX_FRAMES), "-q"]
    )
    assert result.exit_code == 0, result.output
    out = result.output
    header = out.splitlines()[0].split()
    assert header == ["clip", "frames", "PSNR", "SSIM", "FID", "LMD", "LSE-D", "LSE-C", "CPBD"]
    assert "FID: unavailable (missing weights: fid-inception)" in out
    assert "LSE-D, LSE-C: unavailable (missing weights: syncnet-v2)" in out
    bbaf = next(line for line in out.splitlines() if line.startswith("bbaf2n")).split()
    assert bbaf[1] == str(MAX_FRAMES) and bbaf[4] == "n/a" and bbaf[6] == bbaf[7] == "n/a"
    psnr = float(bbaf[2])
    assert 10 < psnr < 30  # two different sentences of the same speaker

    rows = list(csv.DictReader(out_csv.open()))
    assert [r["clip"] for r in rows] == ["bbaf2n", "mean"]
    assert float(rows[0]["PSNR"]) == pytest.approx(psnr, abs=0.01)
    assert rows[0]["FID"] == "unavailable (missing weights: fid-inception)"
    assert 0 < float(rows[0]["LMD"]) < 10

    report = json.loads(out_json.read_text())
    assert report["clips"][0]["frames"] == MAX_FRAMES
    assert report["clips"][0]["metrics"]["LSE-C"] == "unavailable (missing weights: syncnet-v2)"
    assert report["mean"]["SSIM"] == pytest.approx(report["clips"][0]["metrics"]["SSIM"])
    assert report["settings"]["lmd"] == {"reduce": "mean", "normalise": False}
    assert not list(tmp_path.glob("*.part"))


def test_evaluate_command_reports_a_wrong_weights_file_clearly(grid_clips, tmp_path, no_weights):
    import torch

    from latentdub.cli import cli

    weights = tmp_path / "not_inception.pth"
    torch.save({"conv.weight": torch.zeros(3)}, weights)
    clip = str(_clip(grid_clips, "bbaf2n"))
    result = CliRunner().invoke(cli, ["evaluate", clip, clip, "--metrics", "fid", "--set", f"fid.weights={weights}", "-q"])
    assert result.exit_code == 2
    assert f"{weights}: pytorch-fid Inception state dict (pt_inception-2015-12-05-6726825d.pth) does not match the architecture" in result.output


def test_evaluate_command_rejects_bad_input_before_work(grid_clips, tmp_path):
    from latentdub.cli import cli

    clip = str(_clip(grid_clips, "bbaf2n"))
    runner = CliRunner()
    bad_report = runner.invoke(cli, ["evaluate", clip, clip, "--csv", str(tmp_path / "no" / "x.csv")])
    assert bad_report.exit_code == 2 and "does not exist" in bad_report.output
    bad_set = runner.invoke(cli, ["evaluate", clip, clip, "--metrics", "psnr", "--set", "lmd.reduce=sum"])
    assert bad_set.exit_code == 2 and "lmd" in bad_set.output
    bad_key = runner.invoke(cli, ["evaluate", clip, clip, "--metrics", "lmd", "--set", "lmd.bogus=1"])
    assert bad_key.exit_code == 2 and "lmd.bogus" in bad_key.output
    unknown = runner.invoke(cli, ["evaluate", clip, clip, "--metrics", "nope"])
    assert unknown.exit_code == 5 and "nope" in unknown.output


def test_evaluate_against_a_prepared_dataset_split(grid_clips, tmp_path):
    """REFERENCE may be a prepared dataset: its split's source clips are matched by clip id."""
    import json
    import shutil

    from click.testing import CliRunner

    from latentdub.cli import cli

    dataset = tmp_path / "dataset"
    (dataset / "splits").mkdir(parents=True)
    clips = {p.stem: {"speaker": p.stem[:2], "source": str(p), "status": "done"} for p in grid_clips[:3]}
    from latentdub.toolkit.learning.dataset import FORMAT

    (dataset / "manifest.json").write_text(json.dumps({"format": FORMAT, "clips": clips}))
    (dataset / "splits" / "test.txt").write_text("".join(f"{c}\n" for c in list(clips)[:2]))
    generated = tmp_path / "generated"
    generated.mkdir()
    for clip in list(clips)[:2]:
        shutil.copy(clips[clip]["source"], generated / f"{clip}.mpg")
    report = tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["evaluate", str(generated), str(dataset), "--metrics", "psnr,ssim", "--max-frames", "5", "--json", str(report), "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    text = json.dumps(data)
    assert all(c in text for c in list(clips)[:2]) and list(clips)[2] not in text
    assert "100" in result.output  # identical clips: PSNR at its cap


def test_evaluate_plot_draws_per_frame_scores_over_time(grid_clips, tmp_path, no_weights):
    """--plot: per-frame PSNR, SSIM and LMD of each clip over time; the series are the frames the means average."""
    from PIL import Image

    from latentdub.cli import cli

    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir()
    ref.mkdir()
    for stem, g, r in (("a", "bbaf2n", "brbk7n"), ("b", "lbbc2a", "lbbc2a")):
        (gen / f"{stem}.mpg").symlink_to(_clip(grid_clips, g))
        (ref / f"{stem}.mpg").symlink_to(_clip(grid_clips, r))
    result = evaluate(gen, ref, metrics=["psnr", "ssim", "lmd"], max_frames=SHORT)
    for clip in result.clips:
        times, values = clip.series["PSNR"]
        assert len(times) == len(values) == SHORT and np.allclose(np.diff(times), 1 / 25)
        assert np.nanmean(values) == pytest.approx(clip.values["PSNR"])
        assert np.nanmean(clip.series["LMD"][1]) == pytest.approx(clip.values["LMD"])
    assert np.all(result.clips[1].series["PSNR"][1] == 100.0)  # a clip against itself, frame by frame
    plot = tmp_path / "scores.png"
    cli_result = CliRunner().invoke(cli, ["evaluate", str(gen), str(ref), "--metrics", "psnr,ssim,lmd,fid", "--max-frames", str(SHORT), "--plot", str(plot), "-q"])
    assert cli_result.exit_code == 0, cli_result.output
    image = np.asarray(Image.open(plot).convert("RGB"))
    assert image.shape[0] > 600 and image.std() > 10  # three panels (FID is unavailable, PSNR/SSIM/LMD drawn)
    bad = CliRunner().invoke(cli, ["evaluate", str(gen), str(ref), "--plot", str(tmp_path / "scores.gif")])
    assert bad.exit_code == 2 and "scores.gif: unknown plot type .gif; use .png, .svg, .pdf" in bad.output
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*.part"))
