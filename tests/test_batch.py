"""Batch dubbing: manifests, the resumable journal, identity profiles and the three executors.

The first group drives ``run_batch`` with stand-in dub/tune functions (fast,
exact control over failures); the second runs the real preview pipeline on
GRID clips (CC BY 4.0, Cooke et al. 2006), each clip's video paired with the
next clip's speech.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from latentdub.cli import cli
from latentdub.toolkit.batch.journal import Journal, file_digest
from latentdub.toolkit.batch.manifest import load_manifest
from latentdub.toolkit.batch.run import run_batch
from latentdub.toolkit.core.errors import BadInputError
from latentdub.toolkit.media.video import probe_video, read_frames

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- stand-ins


def fake_dub(video, audio, output, preset, overrides, profile, progress, log, overwrite):
    """Writes a small file naming its inputs; fails like the real pipeline on request.

    A video whose name contains ``bad`` is bad input (not retried); an
    ``OUTPUT.flaky`` file beside the output makes the next call crash once.
    """
    from latentdub.toolkit.core.errors import BadInputError as Bad

    output = Path(output)
    if "bad" in Path(video).name:
        raise Bad(f"{video}: not a readable video (corrupt or unknown format); re-encode it")
    flaky = output.with_name(output.name + ".flaky")
    if flaky.exists():
        flaky.unlink()
        raise RuntimeError("worker ran out of memory")
    output.write_text(json.dumps({"video": Path(video).name, "audio": Path(audio).name, "profile": str(profile), "preset": str(preset), "set": overrides}))


def fake_tune(source, out, preset, overrides, log, progress, overwrite):
    """Writes a profile naming its source and counts calls in ``tune-calls.txt``."""
    out = Path(out)
    out.write_text(f"profile of {Path(source).name}")
    with open(out.parent / "tune-calls.txt", "a") as f:
        f.write(f"{Path(source).name}\n")


def _media(folder: Path, names=("a", "b", "c", "d")) -> list[str]:
    (folder / "media").mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / "media" / f"{n}.mp4").write_bytes(b"not decoded by the stand-in " + n.encode())
    return [f"media/{n}.mp4" for n in names]


def _write_manifest(folder: Path, clips: list[dict], **top) -> Path:
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump({"preset": "preview", **top, "clips": clips}))
    return path


def _records(path: Path, kind="clip") -> list[dict]:
    return [r for r in Journal(path).records() if r.get("kind") == kind]


def _quiet(msg):
    pass


# --------------------------------------------------------------------------- manifest validation


@pytest.mark.parametrize(
    "text, expected",
    [
        ("clips:\n  - {video: a.mp4, audio: b.wav, output: o.mp4, vidoe: x}\n", "clips[0]: unknown key 'vidoe'"),
        ("clips:\n  - {video: a.mp4, output: o.mp4}\n", "clips[0]: audio is missing"),
        ("clips:\n  - {video: a.mp4, audio: b.wav, output: o.mp4}\n  - {video: c.mp4, audio: b.wav, output: o.mp4}\n", "clips[1]: same id as clips[0]"),
        ("clips:\n  - {video: a.mp4, audio: b.wav, output: o.avi}\n", "unsupported type .avi"),
        ("clip:\n  - {video: a.mp4}\n", "clip: unknown key"),
        ("clips: []\n", "lists no clips"),
        ("clips:\n  - {video: a.mp4, audio: b.wav, output: o.mp4, identity: 'al ice'}\n", "clips[0].identity"),
        ("clips: [\n", "not valid YAML"),
        ("roots: [nowhere]\nclips:\n  - {video: a.mp4, audio: b.wav, output: o.mp4}\n", "roots[0]: folder"),
    ],
)
def test_structural_errors_are_one_line_and_name_the_entry(tmp_path, text, expected):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(BadInputError) as info:
        load_manifest(path)
    message = str(info.value)
    assert str(path) in message and expected in message and "\n" not in message


def test_csv_manifest_rows_and_header_errors(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("video,audio,output,set,identity\nv1.mp4,s1.wav,out/1.mp4,output.crf=30;seed=3,alice\n\nv2.mp4,s2.wav,out/2.mp4,,\n")
    manifest = load_manifest(path)
    first, second = manifest.clips
    assert first.video == tmp_path / "v1.mp4" and first.output == tmp_path / "out" / "1.mp4"
    assert first.overrides == ("output.crf=30", "seed=3") and first.identity == "alice" and first.id == "out/1.mp4"
    assert second.where == "row 4" and second.overrides == () and second.identity is None
    path.write_text("video,speech,output\nv.mp4,s.wav,o.mp4\n")
    with pytest.raises(BadInputError, match=r"row 1: missing column 'audio'"):
        load_manifest(path)


def test_inputs_are_read_from_anywhere_and_outputs_stay_inside(tmp_path):
    """The normal case: manifest in the project folder, footage on another disk, no roots: needed.

    Outputs must stay inside the manifest's folder, ``outputs`` or ``roots``;
    a ``../`` or symlink escape fails only that clip, naming each allowed folder once.
    """
    inside = tmp_path / "job"
    media = _media(inside, ("a",))
    footage = tmp_path / "footage"
    footage.mkdir()
    (footage / "x.mp4").write_bytes(b"x")
    (inside / "media" / "link.mp4").symlink_to(footage / "x.mp4")
    (inside / "to-footage").symlink_to(footage)
    delivery = tmp_path / "delivery"
    delivery.mkdir()
    manifest = _write_manifest(inside, [
        {"video": media[0], "audio": media[0], "output": "ok.mp4"},
        {"video": "../footage/x.mp4", "audio": media[0], "output": "up.mp4"},
        {"video": str(footage / "x.mp4"), "audio": str(footage / "x.mp4"), "output": "abs.mp4"},
        {"video": "media/link.mp4", "audio": media[0], "output": "link.mp4"},
        {"video": media[0], "audio": media[0], "output": "../escaped.mp4"},
        {"video": media[0], "audio": media[0], "output": "to-footage/linked-out.mp4"},
        {"video": media[0], "audio": media[0], "output": str(delivery / "rooted.mp4")},
    ], roots=["../delivery"])
    clips = {c.id: c for c in load_manifest(manifest).clips}
    assert clips["abs.mp4"].video == footage / "x.mp4" and clips["up.mp4"].video == footage / "x.mp4"
    problems = {i: c.problem for i, c in clips.items() if c.problem}
    assert sorted(problems) == sorted([str(tmp_path / "escaped.mp4"), "to-footage/linked-out.mp4"])
    escaped = problems[str(tmp_path / "escaped.mp4")]
    assert escaped.startswith(f"output: ../escaped.mp4 resolves to {tmp_path / 'escaped.mp4'}, outside the folders outputs may be written to")
    assert f"({inside.resolve()}, {delivery.resolve()})" in escaped  # each folder once (outputs defaults to the manifest's folder)
    assert "through a symlink" in problems["to-footage/linked-out.mp4"]

    summary = run_batch(manifest, log=_quiet, dub_fn=fake_dub)
    status = {c.id: c.status for c in summary.clips}
    assert [i for i, s in status.items() if s == "failed"] == [str(tmp_path / "escaped.mp4"), "to-footage/linked-out.mp4"]
    assert json.loads((inside / "abs.mp4").read_text())["video"] == "x.mp4" and (delivery / "rooted.mp4").is_file()
    assert not (tmp_path / "escaped.mp4").exists() and not (footage / "linked-out.mp4").exists()


# --------------------------------------------------------------------------- journal, resume, retries


def test_rerun_skips_verified_clips_and_redoes_changed_or_interrupted_ones(tmp_path):
    media = _media(tmp_path)
    clips = [{"video": media[i], "audio": media[(i + 1) % 4], "output": f"out/{i}.mp4"} for i in range(4)]
    manifest = _write_manifest(tmp_path, clips, outputs="dubbed")
    first = run_batch(manifest, log=_quiet, dub_fn=fake_dub)
    assert first.ok and [c.status for c in first.clips] == ["done"] * 4
    journal = tmp_path / "dubbed" / "manifest.journal.jsonl"
    assert first.journal == journal and first.summary_csv.is_file() and first.summary_json.is_file()
    done = [r for r in _records(journal) if r["status"] == "done"]
    assert [(r["id"], r["attempt"]) for r in done] == [(f"out/{i}.mp4", 1) for i in range(4)]
    out0 = tmp_path / "dubbed" / "out" / "0.mp4"
    assert (done[0]["size"], done[0]["sha256"]) == file_digest(out0)
    assert json.loads(out0.read_text()) == {"video": "a.mp4", "audio": "b.mp4", "profile": "None", "preset": "preview", "set": []}

    # clip 1's output is edited, clip 2's is deleted, clip 3 was "interrupted" (started, never done)
    (tmp_path / "dubbed" / "out" / "1.mp4").write_text("edited")
    (tmp_path / "dubbed" / "out" / "2.mp4").unlink()
    Journal(journal).append(kind="clip", id="out/3.mp4", status="started", attempt=2, key=done[3]["key"], output=done[3]["output"])
    with open(journal, "a") as f:
        f.write('{"kind": "clip", "id": "out/0.mp4", "sta')  # a line torn by a crash
    (tmp_path / "dubbed" / "out" / ".2.mp4.k3j9x7q2.part.mp4").write_bytes(b"half an encode")
    mtime0 = out0.stat().st_mtime_ns
    second = run_batch(manifest, log=_quiet, dub_fn=fake_dub)
    assert not (tmp_path / "dubbed" / "out" / ".2.mp4.k3j9x7q2.part.mp4").exists()
    assert [c.status for c in second.clips] == ["skipped", "done", "done", "done"]
    assert out0.stat().st_mtime_ns == mtime0
    started = [(r["id"], r["attempt"]) for r in _records(journal) if r["status"] == "started"]
    assert started[5:] == [("out/1.mp4", 2), ("out/2.mp4", 2), ("out/3.mp4", 3)]

    # a change of settings (here the audio of clip 0) redoes that clip only
    clips[0]["audio"] = media[3]
    _write_manifest(tmp_path, clips, outputs="dubbed")
    third = run_batch(manifest, log=_quiet, dub_fn=fake_dub)
    assert [c.status for c in third.clips] == ["done", "skipped", "skipped", "skipped"]
    assert json.loads(out0.read_text())["audio"] == "d.mp4"


def test_failures_are_retried_unless_the_input_is_bad_and_never_stop_the_others(tmp_path):
    media = _media(tmp_path, ("a", "b", "bad"))
    clips = [
        {"video": media[0], "audio": media[1], "output": "flaky.mp4"},
        {"video": media[2], "audio": media[1], "output": "bad.mp4"},
        {"video": media[1], "audio": media[0], "output": "good.mp4"},
        {"video": "media/missing.mp4", "audio": media[0], "output": "missing.mp4"},
    ]
    manifest = _write_manifest(tmp_path, clips)
    (tmp_path / "flaky.mp4.flaky").touch()
    summary = run_batch(manifest, retries=1, log=_quiet, dub_fn=fake_dub)
    got = {c.id: c for c in summary.clips}
    assert got["flaky.mp4"].status == "done" and got["flaky.mp4"].attempts == 2
    assert got["bad.mp4"].status == "failed" and got["bad.mp4"].attempts == 1 and "not a readable video" in got["bad.mp4"].error
    assert got["good.mp4"].status == "done"
    assert got["missing.mp4"].status == "failed" and "missing.mp4 not found" in got["missing.mp4"].error
    assert not summary.ok
    rows = json.loads(summary.summary_json.read_text())
    assert rows["failed"] == 2 and rows["done"] == 2
    assert "bad.mp4" in summary.table() and "not a readable video" in summary.table()

    (tmp_path / "flaky.mp4").unlink()
    (tmp_path / "flaky.mp4.flaky").touch()
    no_retry = run_batch(manifest, retries=0, log=_quiet, dub_fn=fake_dub)
    assert {c.id: c.status for c in no_retry.clips}["flaky.mp4"] == "failed"
    assert "RuntimeError: worker ran out of memory" in {c.id: c.error for c in no_retry.clips}["flaky.mp4"]
    again = run_batch(manifest, log=_quiet, dub_fn=fake_dub)  # a later run tries failed clips again
    assert {c.id: c.status for c in again.clips} == {"flaky.mp4": "done", "bad.mp4": "failed", "good.mp4": "skipped", "missing.mp4": "failed"}


def test_cli_exit_code_6_and_summary_file(tmp_path, monkeypatch):
    media = _media(tmp_path, ("a", "bad"))
    manifest = _write_manifest(tmp_path, [
        {"video": media[0], "audio": media[1], "output": "a.mp4"},
        {"video": media[1], "audio": media[0], "output": "b.mp4"},
    ])
    import latentdub.toolkit.batch.run as batch

    real = batch.run_batch
    monkeypatch.setattr(batch, "run_batch", lambda *a, **k: real(*a, **k, dub_fn=fake_dub))
    result = CliRunner().invoke(cli, ["batch", str(manifest), "--summary", str(tmp_path / "report.json"), "-q"])
    assert result.exit_code == 6, result.output
    assert "b.mp4" in result.output and "failed" in result.output
    assert json.loads((tmp_path / "report.json").read_text())["failed"] == 1
    assert (tmp_path / "report.csv").read_text().startswith("id,status,")
    broken = tmp_path / "broken.yaml"
    broken.write_text("clips:\n  - {video: a.mp4}\n")
    result = CliRunner().invoke(cli, ["batch", str(broken)])
    assert result.exit_code == 2 and "clips[0]: audio is missing" in result.output
    broken.write_text(f"clips:\n  - {{video: {media[0]}, audio: {media[0]}, output: out/c.mp4, set: [output.crf=fast]}}\n")
    result = CliRunner().invoke(cli, ["batch", str(broken)])
    assert result.exit_code == 2 and "clips[0]: output.crf" in result.output, result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "broken.journal.jsonl").exists(), "nothing is written before validation"


# --------------------------------------------------------------------------- identity profiles


def _neural_preset(folder: Path) -> Path:
    """The preview stack with a neural renderer and a PTI finetuner (validated, never built here)."""
    data = yaml.safe_load((REPO / "src" / "latentdub" / "presets" / "preview.yaml").read_text())
    data.update(renderer={"plugin": "neural"}, finetuner={"plugin": "pti"})
    path = folder / "neural.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_clips_of_one_identity_share_one_tuned_profile(tmp_path):
    media = _media(tmp_path)
    _neural_preset(tmp_path)
    clips = [
        {"video": media[0], "audio": media[3], "output": "a1.mp4", "identity": "alice"},
        {"video": media[1], "audio": media[3], "output": "a2.mp4", "identity": "alice", "set": ["output.crf=30"]},
        {"video": media[2], "audio": media[3], "output": "b1.mp4", "identity": "bob"},
        {"video": media[3], "audio": media[0], "output": "c1.mp4"},
    ]
    manifest = _write_manifest(tmp_path, clips, preset="neural.yaml", identity_sources={"bob": "media/d.mp4"})
    summary = run_batch(manifest, log=_quiet, dub_fn=fake_dub, tune_fn=fake_tune)
    assert summary.ok
    profiles = tmp_path / "manifest.profiles"
    # alice's profile comes from her first clip's video, bob's from identity_sources; output.crf does not split a profile
    assert sorted((profiles / "tune-calls.txt").read_text().split()) == ["a.mp4", "d.mp4"]
    used = {c.id: c.profile for c in summary.clips}
    assert used["a1.mp4"] == used["a2.mp4"] and used["a1.mp4"].parent == profiles and used["a1.mp4"].name.startswith("alice-")
    assert used["b1.mp4"].name.startswith("bob-") and used["c1.mp4"] is None
    assert json.loads((tmp_path / "a2.mp4").read_text())["profile"] == str(used["a1.mp4"])
    assert len([r for r in _records(summary.journal, "profile") if r["status"] == "done"]) == 2

    (tmp_path / "a2.mp4").unlink()  # a rerun reuses the cached, verified profile
    again = run_batch(manifest, log=_quiet, dub_fn=fake_dub, tune_fn=fake_tune)
    assert [c.status for c in again.clips] == ["skipped", "done", "skipped", "skipped"]
    assert len((profiles / "tune-calls.txt").read_text().split()) == 2


def test_preview_preset_skips_tuning_and_says_so_once(tmp_path):
    media = _media(tmp_path)
    clips = [{"video": media[i], "audio": media[3], "output": f"{i}.mp4", "identity": "alice"} for i in range(3)]
    lines = []
    summary = run_batch(_write_manifest(tmp_path, clips), log=lines.append, dub_fn=fake_dub, tune_fn=fake_tune)
    assert summary.ok and all(c.profile is None for c in summary.clips)
    assert sum("no identity tuning" in line for line in lines) == 1
    assert not (tmp_path / "manifest.profiles").exists()


def test_local_executor_runs_stand_ins_in_worker_processes(tmp_path):
    media = _media(tmp_path)
    clips = [{"video": media[i], "audio": media[(i + 1) % 4], "output": f"{i}.mp4"} for i in range(4)]
    (tmp_path / "2.mp4.flaky").touch()
    summary = run_batch(_write_manifest(tmp_path, clips), workers=2, executor="local", log=_quiet, dub_fn=fake_dub)
    assert summary.ok and [c.attempts for c in summary.clips] == [1, 1, 2, 1]
    assert json.loads((tmp_path / "3.mp4").read_text())["video"] == "d.mp4"


# --------------------------------------------------------------------------- the real pipeline on GRID clips


def _grid_manifest(folder: Path, grid_clips: list[Path], n: int, **top) -> Path:
    """n clips, clip i's video with clip i+1's speech, through the preview preset."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = [{"video": str(grid_clips[i]), "audio": str(grid_clips[(i + 1) % n]), "output": f"{grid_clips[i].stem}.mp4"} for i in range(n)]
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump({"preset": "preview", **top, "clips": clips}))  # the clips are read where they are
    return path


@pytest.fixture(scope="module")
def inline_batch(tmp_path_factory, grid_clips):
    """Four GRID clips dubbed in-process; shared by the executor comparisons."""
    manifest = _grid_manifest(tmp_path_factory.mktemp("inline"), grid_clips, 4, outputs="out")
    return run_batch(manifest, log=_quiet)


@pytest.mark.slow
def test_batch_writes_playable_dubs_and_a_rerun_does_nothing(inline_batch, grid_clips):
    assert inline_batch.ok and [c.status for c in inline_batch.clips] == ["done"] * 4
    for clip in inline_batch.clips:
        info = probe_video(clip.output)
        assert info.has_audio and info.fps == 25 and abs(info.duration - 3.0) < 0.1 and (info.width, info.height) == (360, 288)
        assert (clip.size, clip.sha256) == file_digest(clip.output)
    mtimes = [c.output.stat().st_mtime_ns for c in inline_batch.clips]
    again = run_batch(inline_batch.manifest, log=_quiet)
    assert [c.status for c in again.clips] == ["skipped"] * 4
    assert [c.output.stat().st_mtime_ns for c in again.clips] == mtimes
    assert sum(r["status"] == "started" for r in _records(inline_batch.journal)) == 4


@pytest.mark.slow
def test_killed_run_resumes_without_redoing_finished_clips(tmp_path, grid_clips):
    manifest = _grid_manifest(tmp_path, grid_clips, 2)
    journal = tmp_path / "manifest.journal.jsonl"
    cmd = [sys.executable, "-m", "latentdub.cli", "batch", str(manifest), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not any(r["status"] == "done" for r in _records(journal)):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no clip finished in 120 s"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    before = _records(journal)
    finished = [r["id"] for r in before if r["status"] == "done"]
    assert len(finished) == 1
    mtimes = {i: (tmp_path / i).stat().st_mtime_ns for i in finished}

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    after = _records(journal)[len(before):]
    assert not [r for r in after if r["id"] in finished], "finished clips must not be started again"
    assert sorted(r["id"] for r in after if r["status"] == "done") == sorted({f"{g.stem}.mp4" for g in grid_clips[:2]} - set(finished))
    assert {i: (tmp_path / i).stat().st_mtime_ns for i in finished} == mtimes
    for g in grid_clips[:2]:
        assert probe_video(tmp_path / f"{g.stem}.mp4").has_audio
    assert not list(tmp_path.glob(".*.part.mp4")), "no half-written encoder files are left"


@pytest.mark.slow
def test_corrupt_clip_and_escaping_path_fail_while_the_rest_finish(tmp_path, grid_clips):
    job = tmp_path / "job"
    job.mkdir()
    (job / "corrupt.mp4").write_bytes(os.urandom(4096))
    (tmp_path / "outside.mpg").write_bytes(grid_clips[2].read_bytes())
    manifest = job / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"preset": "preview", "clips": [
        {"video": "corrupt.mp4", "audio": str(grid_clips[1]), "output": "corrupt-out.mp4"},
        {"video": str(grid_clips[0]), "audio": str(grid_clips[1]), "output": "../outside-out.mp4"},
        {"video": "../outside.mpg", "audio": str(grid_clips[1]), "output": "good.mp4"},
    ]}))
    result = CliRunner().invoke(cli, ["batch", str(manifest), "-q"])
    assert result.exit_code == 6, result.output
    report = {row["id"]: row for row in json.loads((job / "manifest.summary.json").read_text())["clips"]}
    assert report["good.mp4"]["status"] == "done" and probe_video(job / "good.mp4").has_audio
    assert report["corrupt-out.mp4"]["status"] == "failed" and "corrupt.mp4" in report["corrupt-out.mp4"]["error"]
    escaped = report[str(tmp_path / "outside-out.mp4")]
    assert escaped["status"] == "failed" and "outside the folders outputs may be written to" in escaped["error"]
    assert report["corrupt-out.mp4"]["attempts"] == 1  # bad input is not retried
    assert not (job / "corrupt-out.mp4").exists() and not (tmp_path / "outside-out.mp4").exists()


def _same_outputs(a: Path, b: Path) -> None:
    if file_digest(a)[1] == file_digest(b)[1]:
        return
    import numpy as np

    for fa, fb in zip(read_frames(a), read_frames(b), strict=True):
        assert np.abs(fa.image.astype(int) - fb.image.astype(int)).max() <= 2


@pytest.mark.slow
def test_local_pool_with_two_workers_gives_the_same_outputs(tmp_path, inline_batch, grid_clips, capfd):
    manifest = _grid_manifest(tmp_path, grid_clips, 4)
    clips = yaml.safe_load(manifest.read_text())
    clips["clips"] = clips["clips"][:2]
    manifest.write_text(yaml.safe_dump(clips))
    capfd.readouterr()
    summary = run_batch(manifest, workers=2, executor="local", log=_quiet, progress=True)
    assert "2/2" in _final_bar(capfd.readouterr().err)  # the batch bar follows results from the workers
    assert summary.ok and len(summary.clips) == 2
    for got, want in zip(summary.clips, inline_batch.clips):
        _same_outputs(got.output, want.output)


@pytest.mark.slow
def test_ray_executor_gives_the_same_outputs(tmp_path, inline_batch, grid_clips, capfd):
    ray = pytest.importorskip("ray")
    manifest = _grid_manifest(tmp_path, grid_clips, 4)
    clips = yaml.safe_load(manifest.read_text())
    clips["clips"] = clips["clips"][:2]
    manifest.write_text(yaml.safe_dump(clips))
    capfd.readouterr()
    summary = run_batch(manifest, workers=2, executor="ray", log=_quiet, progress=True)
    assert "2/2" in _final_bar(capfd.readouterr().err)  # the batch bar follows results from the workers
    assert not ray.is_initialized(), "a Ray started by run_batch is shut down"
    assert summary.ok and summary.executor == "ray"
    for got, want in zip(summary.clips, inline_batch.clips):
        _same_outputs(got.output, want.output)


@pytest.mark.parametrize("executor", ["inline", "local"])
def test_batch_bar_counts_settled_clips_with_an_eta(tmp_path, capfd, executor):
    """One bar over the manifest: clips skipped earlier start it, each result from the executor moves it."""
    media = _media(tmp_path)
    clips = [{"video": media[i], "audio": media[0], "output": f"{i}.mp4"} for i in range(3)] + [{"video": "media/bad.mp4", "audio": media[0], "output": "bad.mp4"}]
    (tmp_path / "media" / "bad.mp4").write_bytes(b"bad")
    manifest = _write_manifest(tmp_path, clips[:1])
    run_batch(manifest, log=_quiet, dub_fn=fake_dub)  # clip 0 is finished before the run we watch
    capfd.readouterr()
    manifest = _write_manifest(tmp_path, clips)
    lines = []
    summary = run_batch(manifest, workers=2, executor=executor, log=lines.append, progress=True, dub_fn=fake_dub)
    err = capfd.readouterr().err
    assert [c.status for c in summary.clips] == ["skipped", "done", "done", "failed"]
    final = _final_bar(err)
    assert "4/4" in final and "clip" in final and "done 2, failed 1, skipped 1" in final, final
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", final), final  # elapsed < remaining (the ETA)
    assert any(line.startswith("[4/4]") or line.startswith("[3/4]") for line in lines)  # log lines still come, written above the bar


def _final_bar(err: str) -> str:
    """The last state of the batch bar in captured stderr."""
    return [part for part in err.replace("\r", "\n").splitlines() if part.startswith("batch")][-1]
