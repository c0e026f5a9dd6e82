"""The ``runtime`` section: overlapped stages, bounded queues, torch frame ops, CUDA graphs (issue 15).

Real GRID clips through the real detector and ffmpeg with the ``tiny``
networks; the threaded stage runner on synthetic stages; CUDA-graph capture
only where CUDA is (its bucketing and fallbacks everywhere). No timing is
asserted.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from latentdub.toolkit.core.errors import BadInputError, ConfigError
from latentdub.toolkit.core.presets import resolve_preset
from latentdub.toolkit.core.runtime import RuntimeConfig, usable_cpus
from latentdub.toolkit.core.stages import prefetch, run_stages

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (none here)")
#: Devices the torch frame ops are checked on.
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _latentdub_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("latentdub-") and t.is_alive()]


# --------------------------------------------------------------------------- settings


def test_runtime_section_is_validated_and_written_with_the_preset():
    preset = resolve_preset("tiny", ["runtime.overlap=true", "runtime.queue_depth=2", "runtime.frame_ops=torch", "output.video_codec=auto"])
    assert preset.runtime == RuntimeConfig(overlap=True, queue_depth=2, frame_ops="torch")
    assert preset.to_dict()["runtime"]["queue_depth"] == 2 and preset.to_dict()["output"]["video_codec"] == "auto"
    assert RuntimeConfig().overlapped("cpu") is (usable_cpus() >= 2) and RuntimeConfig().overlapped("cuda", networks=True) is True
    assert RuntimeConfig().overlapped("cpu", networks=True) is False  # torch's threads already fill the CPU cores
    assert RuntimeConfig(overlap=False).overlapped("cuda") is False and RuntimeConfig(overlap=True).overlapped("cpu") is True
    assert RuntimeConfig().torch_frame_ops("cpu") is False and RuntimeConfig().torch_frame_ops("cuda:0") is True


@pytest.mark.parametrize(("override", "message"), [
    ("runtime.queue_depth=0", "runtime.queue_depth: 0 is out of range (allowed: 1 to 64)"),
    ("runtime.graph_batches=[4, 2]", "runtime.graph_batches: [4, 2] must be a non-empty list of increasing batch sizes"),
    ("runtime.frame_ops=cupy", "runtime.frame_ops: expected 'auto' | 'numpy' | 'torch'"),
    ("output.video_codec=x265", "output.video_codec: expected 'libx264' | 'h264_nvenc' | 'auto'"),
])
def test_bad_runtime_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_preset("tiny", [override])


def test_video_codec_choice_follows_what_ffmpeg_and_the_machine_offer():
    from latentdub.toolkit.media.video import (
        choose_video_codec,
        nvenc_works,
        video_codec_options,
        video_encoders,
    )

    assert video_codec_options("libx264", 18, "veryfast") == ["-c:v", "libx264", "-crf", "18", "-preset", "veryfast"]
    assert video_codec_options("h264_nvenc", 18, "veryfast")[:2] == ["-c:v", "h264_nvenc"]  # constant quality 18 on NVENC

    assert "libx264" in video_encoders()
    assert choose_video_codec("libx264", "cuda") == "libx264"
    assert choose_video_codec("auto", "cpu") == "libx264"  # NVENC only for a CUDA run
    if nvenc_works():
        assert choose_video_codec("auto", "cuda") == "h264_nvenc"
    else:
        assert choose_video_codec("auto", "cuda") == "libx264"
        with pytest.raises(BadInputError, match="output.video_codec=h264_nvenc: "):
            choose_video_codec("h264_nvenc", "cuda")


# --------------------------------------------------------------------------- the stage runner


def _stages(record: list, slow: float = 0.0):
    def double(items):
        for x in items:
            yield 2 * x

    def sink(items):
        for x in items:
            if slow:
                time.sleep(slow)
            record.append(x)
        yield from ()

    return [("double", double), ("sink", sink)]


@pytest.mark.parametrize("serial", [False, True])
def test_stages_deliver_every_item_in_order_and_time_each_stage(serial):
    record, timings = [], {}
    run_stages(lambda: iter(range(200)), _stages(record), depth=3, serial=serial, timings=timings)
    assert record == [2 * x for x in range(200)]
    assert set(timings) == {"decode", "double", "sink"} and all(v >= 0 for v in timings.values())
    assert not _latentdub_threads()


def test_a_fast_producer_never_runs_more_than_the_queues_hold_ahead_of_a_slow_consumer():
    depth, produced, consumed, ahead = 3, [0], [0], []

    def source():
        for i in range(60):
            produced[0] += 1
            ahead.append(produced[0] - consumed[0])
            yield i

    def sink(items):
        for _ in items:
            time.sleep(0.002)
            consumed[0] += 1
        yield from ()

    run_stages(source, [("sink", sink)], depth=depth)
    assert consumed[0] == 60
    # in flight: the queue's `depth` items, the one the sink holds and the one the source is producing
    assert max(ahead) <= depth + 2, max(ahead)
    assert max(ahead) >= depth  # the producer did run ahead: the bound is the queue, not luck


def test_prefetch_stays_within_its_depth_and_reraises_the_producers_error():
    produced, taken = [0], []

    def frames():
        for i in range(50):
            produced[0] += 1
            yield i

    for i in prefetch(frames(), depth=2):
        time.sleep(0.002)
        taken.append(produced[0] - i - 1)
    assert max(taken) <= 2 + 1
    with pytest.raises(ValueError, match="bad frame"):
        for _ in prefetch(_raising(3), depth=2):
            pass
    assert not _latentdub_threads()


def _raising(at: int):
    for i in range(10):
        if i == at:
            raise ValueError("bad frame")
        yield i


@pytest.mark.parametrize("where", ["decode", "double", "sink"])
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_in_any_stage_stops_every_thread_and_is_reraised(where, error):
    seen_threads, stopped = [], []

    def source():
        try:
            for i in range(10**9):  # endless: only the stop ends it
                if where == "decode" and i == 20:
                    raise error("from decode")
                yield i
        finally:
            stopped.append("decode")

    def double(items):
        for x in items:
            if where == "double" and x == 20:
                raise error("from double")
            yield 2 * x

    def sink(items):
        for x in items:
            if where == "sink" and x == 40:
                raise error("from sink")
        yield from ()

    with pytest.raises(error, match=f"from {where}"):
        run_stages(source, [("double", double), ("sink", sink)], depth=2, on_threads=seen_threads.extend)
    assert len(seen_threads) == 3 and not any(t.is_alive() for t in seen_threads)
    assert stopped == ["decode"]  # the endless source was closed (its cleanup ran)


def test_ctrl_c_in_the_waiting_thread_stops_every_stage():
    seen_threads = []

    def source():
        while True:
            time.sleep(0.001)
            yield 1

    def sink(items):
        for _ in items:
            pass
        yield from ()

    timer = threading.Timer(0.3, lambda: signal.pthread_kill(threading.main_thread().ident, signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        run_stages(source, [("sink", sink)], depth=2, on_threads=seen_threads.extend)
    timer.join()
    assert seen_threads and not any(t.is_alive() for t in seen_threads)


def test_whenever_ctrl_c_comes_no_stage_is_still_running_when_the_run_raises():
    """A signal that interrupts ``Thread.join`` can mark a live thread as ended (CPython 3.11), and a dub then closed
    the decoder its decode thread was still reading ("generator already executing"). Signals are held for the whole
    run, so at every moment of it Ctrl-C leaves no stage thread behind (``threading.enumerate`` lists a thread until
    it has really ended, whatever ``is_alive`` says)."""
    def source():
        while True:
            time.sleep(0.004)  # a decoder waiting on its pipe
            yield 1

    def slow(items):
        for item in items:
            time.sleep(0.002)
            yield item

    for delay in np.linspace(0.02, 0.3, 15):
        timer = threading.Timer(delay, lambda: signal.pthread_kill(threading.main_thread().ident, signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            run_stages(source, [("slow", slow), ("sink", lambda items: (None for _ in items))], depth=2)
        timer.join()
        assert not [t.name for t in threading.enumerate() if t.name.startswith("latentdub-")]


# --------------------------------------------------------------------------- torch frame ops


@pytest.fixture(scope="module")
def face(grid_clips):
    """A real GRID frame and its dlib 68 landmarks (speaker lrwp9a, mouth open)."""
    from .test_compositor import DlibLandmarks, read_frames

    clip = next(p for p in grid_clips if p.stem == "lrwp9a")
    frame = read_frames(clip, [16])[16]
    lm = DlibLandmarks()(frame)
    assert lm is not None
    return frame, lm


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [64, 256, 1024])  # 64: shrinks the face > 2x (pyramid steps); 1024: enlarges it
def test_torch_crop_warp_matches_opencv_within_rounding(face, size, device):
    from latentdub.toolkit.faces.align import ffhq_alignment, warp_to_crop
    from latentdub.toolkit.faces.torch_ops import warp_to_crop_torch

    frame, lm = face
    alignment = ffhq_alignment(lm, size)
    ours = warp_to_crop_torch(torch.from_numpy(frame).to(device), alignment).cpu().numpy()
    theirs = warp_to_crop(frame, alignment)
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert ours.shape == theirs.shape and ours.dtype == np.uint8
    # OpenCV's bicubic weights are fixed point: a few pixels per million differ by 3 levels
    assert diff.max() <= 3 and (diff > 2).mean() < 1e-5 and diff.mean() < 0.1, (diff.max(), (diff > 2).mean(), diff.mean())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("region", ["mouth", "lower_face"])
@pytest.mark.parametrize("color_match", ["none", "mean_std", "lab"])
def test_torch_mask_and_composite_match_the_soft_compositor(face, region, color_match, device):
    from latentdub.plugins.soft_compositor import SoftCompositor, SoftCompositorConfig
    from latentdub.toolkit.faces.align import ffhq_alignment, warp_to_crop
    from latentdub.toolkit.faces.torch_ops import region_mask_torch

    frame, lm = face
    alignment = ffhq_alignment(lm, 256)
    crop = np.ascontiguousarray(np.clip(warp_to_crop(frame, alignment).astype(int) + 25, 0, 255).astype(np.uint8)[:, ::-1])  # a visibly different face
    compositor = SoftCompositor(SoftCompositorConfig(region=region, color_match=color_match))
    alpha, box = compositor.mask(frame.shape[:2], lm)
    alpha_t, box_t = region_mask_torch(lm, frame.shape[:2], device, region)
    assert box_t == box and np.abs(alpha_t.cpu().numpy() - alpha).max() < 1e-5
    theirs = compositor.composite(frame, crop, alignment, lm)
    ours = compositor.composite_torch(torch.from_numpy(frame).to(device), torch.from_numpy(crop).to(device), alignment, lm).cpu().numpy()
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert diff.max() <= 2, diff.max()
    if color_match == "lab":  # not a torch op: the numpy path on a CPU copy, exactly
        assert diff.max() == 0
    whole = np.zeros(frame.shape[:2], np.float32)
    x0, y0, x1, y1 = box
    whole[y0:y1, x0:x1] = alpha
    assert np.array_equal(ours[whole == 0], frame[whole == 0])  # outside the mask: the input, bit for bit
    assert (ours != frame).any(axis=2).sum() > 500  # something was composited


# --------------------------------------------------------------------------- dub end to end


def _dub(video, speech, out: Path, *sets: str):
    from latentdub.toolkit.dubbing.pipeline import dub

    return dub(video, speech, out, preset="tiny", overrides=["speech.trim_end=1.2", "timing.length_policy=trim", *sets], log=lambda m: None)


@pytest.fixture(scope="module")
def pair(grid_clips):
    return grid_clips[0], grid_clips[3]


@pytest.mark.parametrize("frame_ops", ["numpy", "torch"])
def test_the_overlapped_run_writes_the_serial_runs_bytes(pair, tmp_path, frame_ops):
    video, speech = pair
    serial = _dub(video, speech, tmp_path / "serial.mp4", f"runtime.frame_ops={frame_ops}", "runtime.overlap=false")
    overlapped = _dub(video, speech, tmp_path / "overlapped.mp4", f"runtime.frame_ops={frame_ops}", "runtime.overlap=true", "runtime.queue_depth=2")
    assert _sha(tmp_path / "serial.mp4") == _sha(tmp_path / "overlapped.mp4")
    assert serial.frames == overlapped.frames == 30 and overlapped.frames_with_face == serial.frames_with_face > 0
    assert np.array_equal(serial.frame_kinds, overlapped.frame_kinds)
    assert set(overlapped.busy_seconds) == {"decode", "render", "composite", "encode"}
    assert any("synthesis overlapped" in n for n in overlapped.notes)
    assert not _latentdub_threads()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failing_stage_in_an_overlapped_dub_leaves_no_partial_file(pair, tmp_path, monkeypatch, error):
    from latentdub.plugins.soft_compositor import SoftCompositor

    calls = [0]
    real = SoftCompositor.composite

    def failing(self, *args):
        calls[0] += 1
        if calls[0] == 10:
            raise error("compositor broke")
        return real(self, *args)

    monkeypatch.setattr(SoftCompositor, "composite", failing)
    video, speech = pair
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(error, match="compositor broke"):
        _dub(video, speech, out_dir / "o.mp4", "runtime.overlap=true", "runtime.frame_ops=numpy")
    assert list(out_dir.iterdir()) == [] and calls[0] == 10
    assert not _latentdub_threads()


def test_ctrl_c_during_an_overlapped_dub_removes_the_partial_file(pair, tmp_path):
    from . import media as M

    video, speech = pair
    clip = M.looped(video, tmp_path / "long.mp4", 4)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "latentdub.cli", "dub", str(clip), str(speech), "-o", str(out_dir / "o.mp4"), "-p", "tiny", "-q",
         "--set", "runtime.overlap=true"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    deadline = time.monotonic() + 120
    while not [p for p in out_dir.iterdir() if ".part" in p.name]:  # the encoder has started: frames are flowing
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted; partial files were removed" in stderr
    assert list(out_dir.iterdir()) == []


# --------------------------------------------------------------------------- CUDA graphs


def test_batches_are_cut_into_captured_sizes():
    from latentdub.nets.graphs import plan_batches

    assert plan_batches(1, (1, 2, 4, 8)) == [(0, 1, 1)]
    assert plan_batches(3, (1, 2, 4, 8)) == [(0, 3, 4)]
    assert plan_batches(8, (1, 2, 4, 8)) == [(0, 8, 8)]
    assert plan_batches(19, (8, 1, 4, 2)) == [(0, 8, 8), (8, 8, 8), (16, 3, 4)]
    assert plan_batches(5, ()) == [(0, 5, None)] and plan_batches(0, (1,)) == []


class _FakeGraph:
    """Stands in for a CUDA graph on the CPU: replay recomputes the static output from the static input."""

    def __init__(self, fn, static_in, static_out):
        self.fn, self.static_in, self.static_out = fn, static_in, static_out

    def replay(self):
        self.static_out.copy_(self.fn(self.static_in))


class _CpuGraphedCall:
    """A GraphedCall whose 'capture' works on the CPU, to test padding, slicing and caching."""

    @staticmethod
    def make(fn, buckets):
        from latentdub.nets.graphs import GraphedCall

        class Call(GraphedCall):
            def graphable(self, x):
                return not self.failed and not torch.is_grad_enabled()

            def capture(self, x, bucket):
                static_in = x[:1].expand(bucket, *x.shape[1:]).clone()
                static_out = self.fn(static_in).clone()
                return static_in, static_out, _FakeGraph(self.fn, static_in, static_out)

        return Call(fn, buckets)


def test_graphed_calls_pad_slice_and_reuse_their_captures():
    calls = []

    def fn(x):
        calls.append(x.shape[0])
        return x * 2 + x.sum(dim=(1, 2), keepdim=True) * 0  # per-sample: padding must not leak into the result

    g = _CpuGraphedCall.make(fn, (1, 2, 4))
    x = torch.randn(11, 3, 5)
    with torch.no_grad():
        out = g(x)
        again = g(torch.randn(3, 3, 5))
    assert torch.equal(out, x * 2) and again.shape == (3, 3, 5)
    assert g.captures == 1  # one graph at batch 4 serves 11 = 4 + 4 + 3 (padded) and 3
    assert set(calls) <= {4}
    with torch.no_grad():
        assert g.prepare(x) == 3 and g.captures == 3  # capturing every size up front (before the render threads start)
        assert torch.equal(g(x[:2]), x[:2] * 2)


def test_a_failed_capture_falls_back_to_eager_and_says_so_once():
    from latentdub.nets.graphs import GraphedCall

    lines = []

    class Broken(GraphedCall):
        def graphable(self, x):
            return not self.failed

        def capture(self, x, bucket):
            raise RuntimeError("operation not permitted when stream is capturing")

    g = Broken(lambda x: x + 1, (1, 2), log=lines.append, name="generator")
    x = torch.zeros(2, 4)
    with torch.no_grad():
        assert torch.equal(g(x), x + 1) and torch.equal(g(x), x + 1)
    assert g.failed and len(lines) == 1 and "capturing generator at batch 2 failed" in lines[0]


def _tiny_generator(cuda_graphs: bool, device: str = "cpu"):
    from latentdub.toolkit.core.build import Components

    return Components(resolve_preset("tiny", [f"device={device}", f"runtime.cuda_graphs={str(cuda_graphs).lower()}"]))["generator"]


def test_the_generator_flag_changes_nothing_off_cuda():
    plain, flagged = _tiny_generator(False), _tiny_generator(True)
    w = torch.randn(5, plain.n_styles, plain.style_dim)
    with torch.inference_mode():
        assert torch.equal(plain.synthesize(w), flagged.synthesize(w))
    assert flagged.capture_graphs() == 0 and plain.capture_graphs() == 0
    assert flagged.graphed is not None and flagged.graphed.captures == 0  # on the CPU nothing was captured


def test_the_pti_update_runs_eagerly_off_cuda():
    from latentdub.toolkit.core.build import Components

    components = Components(resolve_preset("tiny", ["runtime.cuda_graphs=true"]))
    finetuner = components["finetuner"]
    assert finetuner.cuda_graphs is True
    nets = finetuner.networks(components["generator"])
    pivots = torch.randn(2, nets.base.n_latent, nets.base.style_dim)
    assert finetuner.graphed_update(nets, pivots, torch.zeros(2, 3, 32, 32), None) is None
    nets.restore()


@needs_cuda
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_cuda_graph_generator_matches_eager(batch):
    plain, graphed = _tiny_generator(False, "cuda"), _tiny_generator(True, "cuda")
    assert graphed.capture_graphs() == 4  # runtime.graph_batches 1, 2, 4, 8
    w = torch.randn(batch, plain.n_styles, plain.style_dim, device="cuda")
    with torch.inference_mode():
        eager, replayed = plain.synthesize(w), graphed.synthesize(w)
    assert graphed.graphed.captures >= 1 and not graphed.graphed.failed
    assert (eager - replayed).abs().max().item() < 1e-4


@needs_cuda
def test_a_graphed_pti_update_trains_like_the_eager_one():
    """Five full-batch updates without locality, graphed (forward and backward) and eager, from the same start: the
    same number of updates and the same losses after them, up to rounding; both lower the L2."""
    from latentdub.plugins.pti import crops_to_tensor
    from latentdub.toolkit.core.build import Components

    rng = np.random.default_rng(0)
    results, lines = [], []
    for graphs in (False, True):
        components = Components(resolve_preset("tiny", ["device=cuda", f"runtime.cuda_graphs={str(graphs).lower()}", "finetuner.locality=false",
                                                        "finetuner.steps=5", "finetuner.lpips_threshold=0", "finetuner.batch_size=2"]))
        finetuner, generator = components["finetuner"], components["generator"]
        finetuner.log = lines.append
        nets = finetuner.networks(generator)
        lpips = finetuner.lpips(nets.device)
        size = generator.size
        targets = crops_to_tensor(np.random.default_rng(1).integers(0, 255, (4, size, size, 3), dtype=np.uint8), size, nets.device)
        pivots = torch.from_numpy(rng.standard_normal((4, nets.base.n_latent, nets.base.style_dim)).astype(np.float32)).to(nets.device) \
            if not results else results[0][0]
        before = finetuner.evaluate(nets.original, pivots, targets, lpips, nets)
        updates, _ = finetuner.tune_weights(nets, pivots, targets, lpips)
        results.append((pivots, updates, before, finetuner.evaluate(nets.tuned, pivots, targets, lpips, nets)))
        nets.restore()
    (_, n_eager, before, eager), (_, n_graphed, _, graphed) = results
    assert not any("failed" in line for line in lines), lines
    assert n_eager == n_graphed == 10
    assert graphed == pytest.approx(eager, rel=1e-3)
    assert eager[0] < before[0]
