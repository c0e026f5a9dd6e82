"""Built-in evaluation metrics: PSNR, SSIM, FID, LMD, LSE-D/LSE-C and CPBD.

Each metric is a component of kind ``metric``; its config class lists the
table ``columns`` it fills and, for network metrics, the ``weights`` it needs
(a registered name or a file path). FID needs ``fid-inception`` (the
pytorch-fid port of TensorFlow's 2015-12-05 Inception) and LSE needs
``syncnet-v2``; without them ``latentdub evaluate`` reports those columns as
unavailable. ``random_init`` swaps in a tiny random network of the same
structure, for wiring tests only (its numbers mean nothing).

Definitions are in :mod:`latentdub.toolkit.evaluation.measures` and docs/evaluation.md.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Annotated, ClassVar, Literal, Optional

import numpy as np

from latentdub.toolkit.core.config import NAMES_WEIGHTS, Range
from latentdub.toolkit.core.errors import BadInputError
from latentdub.toolkit.core.hookspecs import hookimpl
from latentdub.toolkit.core.weights import WeightSpec
from latentdub.toolkit.evaluation import measures as M

FID_WEIGHTS = "fid-inception"
SYNCNET_WEIGHTS = "syncnet-v2"


# ---------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class RegionConfig:
    """Where pixel metrics look.

    ``region``: ``frame`` compares whole frames (dubbing keeps the frame
    geometry); ``face`` compares FFHQ-style aligned crops of ``crop_size`` px
    placed by the reference frame's landmarks (the same transform for both
    frames; pairs without a reference face are skipped).
    """

    region: Literal["frame", "face"] = "frame"
    crop_size: Annotated[int, Range(ge=32, le=2048)] = 256


@dataclasses.dataclass(frozen=True)
class PsnrConfig(RegionConfig):
    """PSNR settings; ``cap_db``: value (dB) reported for identical images."""

    columns: ClassVar[tuple[str, ...]] = ("PSNR",)
    cap_db: Annotated[float, Range(gt=0, le=1000)] = M.PSNR_CAP_DB


@dataclasses.dataclass(frozen=True)
class SsimConfig(RegionConfig):
    """SSIM settings (Gaussian window 11 px, sigma 1.5, mean over RGB channels)."""

    columns: ClassVar[tuple[str, ...]] = ("SSIM",)


@dataclasses.dataclass(frozen=True)
class CpbdConfig(RegionConfig):
    """CPBD settings (scored on the generated frames only)."""

    columns: ClassVar[tuple[str, ...]] = ("CPBD",)


@dataclasses.dataclass(frozen=True)
class LmdConfig:
    """LMD settings.

    ``reduce``: ``mean`` (default) or ``sum`` of the 20 mouth-point
    distances; ``normalise``: divide by the reference's outer-eye-corner
    distance (result in inter-ocular units instead of pixels).
    """

    columns: ClassVar[tuple[str, ...]] = ("LMD",)
    reduce: Literal["mean", "sum"] = "mean"
    normalise: bool = False


@dataclasses.dataclass(frozen=True)
class FidConfig(RegionConfig):
    """FID settings.

    ``weights``: registered name or path of the Inception state dict;
    ``batch_size``: frames per network call; ``random_init``: tiny random
    network instead of the weights (wiring tests only).
    """

    columns: ClassVar[tuple[str, ...]] = ("FID",)
    weights: Annotated[str, NAMES_WEIGHTS] = FID_WEIGHTS
    batch_size: Annotated[int, Range(ge=1)] = 32
    random_init: bool = False


@dataclasses.dataclass(frozen=True)
class LseConfig:
    """LSE-D / LSE-C settings (Wav2Lip protocol on the generated clip and its own audio).

    ``weights``: registered name or path of ``syncnet_v2.model``; ``vshift``:
    largest audio-video offset searched, in 25 fps frames; ``crop_scale``:
    context around the detected face box (SyncNet pipeline's 0.4);
    ``batch_size``: windows per network call; ``random_init``: tiny random
    network instead of the weights (wiring tests only).
    """

    columns: ClassVar[tuple[str, ...]] = ("LSE-D", "LSE-C")
    weights: Annotated[str, NAMES_WEIGHTS] = SYNCNET_WEIGHTS
    vshift: Annotated[int, Range(ge=0, le=100)] = 15
    crop_scale: Annotated[float, Range(ge=0, le=2)] = 0.4
    batch_size: Annotated[int, Range(ge=1)] = 16
    random_init: bool = False


# ---------------------------------------------------------------- helpers


def _regions(pair, config: RegionConfig) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(generated, reference) images of the configured region, or None when the face is missing."""
    if config.region == "frame":
        return pair.generated, pair.reference
    from latentdub.toolkit.faces.align import ffhq_alignment, warp_to_crop

    face = pair.reference_face()
    if face is None:
        return None
    points = face.landmarks68 if face.landmarks68 is not None else face.landmarks5
    alignment = ffhq_alignment(points, config.crop_size)
    return warp_to_crop(pair.generated, alignment), warp_to_crop(pair.reference, alignment)


class _FrameMean:
    """Scorer averaging a per-frame value; frames it cannot score are counted in a note.

    It keeps each pair's time and value (NaN when unscored) for :meth:`series`.
    """

    def __init__(self, column: str, score) -> None:
        self.column = column
        self.score = score
        self.values: list[float] = []
        self.times: list[float] = []
        self.per_frame: list[float] = []
        self.skipped = 0
        self.notes: dict[str, str] = {}

    def add(self, pair) -> None:
        value = self.score(pair)
        self.times.append(float(pair.time))
        self.per_frame.append(math.nan if value is None else float(value))
        if value is None:
            self.skipped += 1
        else:
            self.values.append(value)

    def series(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{column: (times s, values)}`` float64 ``[pairs]`` each, NaN where a pair was not scored."""
        return {self.column: (np.array(self.times), np.array(self.per_frame))}

    def result(self) -> dict[str, float]:
        total = len(self.values) + self.skipped
        if self.skipped:
            self.notes[self.column] = f"no face in {self.skipped} of {total} frame pairs (not scored)"
        return {self.column: float(np.mean(self.values)) if self.values else math.nan}


class FrameMetric:
    """A metric that averages ``score(pair) -> float | None`` over the frames of a clip."""

    def __init__(self, column: str, score) -> None:
        self.columns = (column,)
        self._score = score

    def start(self, clip) -> _FrameMean:
        return _FrameMean(self.columns[0], self._score)


# ---------------------------------------------------------------- pixel and landmark metrics


def build_psnr(config: PsnrConfig, context) -> FrameMetric:
    """PSNR (dB, data range 255, identical frames give cap_db)."""

    def score(pair) -> Optional[float]:
        images = _regions(pair, config)
        return None if images is None else M.psnr(*images, cap=config.cap_db)

    return FrameMetric("PSNR", score)


def build_ssim(config: SsimConfig, context) -> FrameMetric:
    """SSIM (Gaussian 11 / 1.5, per-channel mean)."""

    def score(pair) -> Optional[float]:
        images = _regions(pair, config)
        return None if images is None else M.ssim(*images)

    return FrameMetric("SSIM", score)


def build_cpbd(config: CpbdConfig, context) -> FrameMetric:
    """CPBD sharpness of the generated frames (higher is sharper)."""

    def score(pair) -> Optional[float]:
        images = _regions(pair, config)
        return None if images is None else M.cpbd(images[0])

    return FrameMetric("CPBD", score)


def build_lmd(config: LmdConfig, context) -> FrameMetric:
    """LMD over dlib-scheme mouth points 48-67 (needs a detector with 68 landmarks)."""

    def score(pair) -> Optional[float]:
        gen, ref = pair.generated_face(), pair.reference_face()
        if gen is None or ref is None:
            return None
        if gen.landmarks68 is None or ref.landmarks68 is None:
            raise BadInputError("LMD needs 68-point landmarks; evaluate with a detector that has them (e.g. --detector dlib)")
        return M.mouth_landmark_distance(gen.landmarks68, ref.landmarks68, reduce=config.reduce, normalise=config.normalise)

    return FrameMetric("LMD", score)


# ---------------------------------------------------------------- FID


class _FidScorer:
    def __init__(self, metric: "FidMetric") -> None:
        self.metric = metric
        self.generated = M.FeatureStats(metric.net.feature_dim)
        self.reference = M.FeatureStats(metric.net.feature_dim)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, pair) -> None:
        images = _regions(pair, self.metric.config)
        if images is None:
            return
        self._pending.append(images)
        if len(self._pending) >= self.metric.config.batch_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        gen = np.stack([g for g, _ in self._pending])
        ref = np.stack([r for _, r in self._pending])
        self.generated.add(self.metric.features(gen))
        self.reference.add(self.metric.features(ref))
        self._pending = []

    def result(self) -> dict[str, float]:
        self._flush()
        return {"FID": M.fid_from_stats(self.generated, self.reference)}


class FidMetric:
    """FID per clip; the summary row pools the features of all clips."""

    columns = ("FID",)

    def __init__(self, net, config: FidConfig, device) -> None:
        self.net = net
        self.config = config
        self.device = device

    def features(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``[B, H, W, 3]`` -> float64 ``[B, D]`` pool3 features."""
        return self.net.features(images).numpy().astype(np.float64)

    def start(self, clip) -> _FidScorer:
        return _FidScorer(self)

    def pooled(self, scorers: list[_FidScorer]) -> dict[str, float]:
        """FID over the frames of all clips."""
        if not scorers:
            return {"FID": math.nan}
        gen, ref = scorers[0].generated, scorers[0].reference
        for s in scorers[1:]:
            gen, ref = gen + s.generated, ref + s.reference
        return {"FID": M.fid_from_stats(gen, ref)}


def build_fid(config: FidConfig, context) -> FidMetric:
    """FID on Inception-v3 pool3 features (needs weights fid-inception)."""
    from latentdub.nets.inception import load_fid_inception, tiny_fid_inception

    if config.random_init:
        net = tiny_fid_inception(seed=context.seed).to(context.device)
    else:
        net = load_fid_inception(context.weights(config.weights), context.device)  # BadInputError naming the file
    return FidMetric(net, config, context.device)


# ---------------------------------------------------------------- LSE


class _LseScorer:
    """Resamples the generated frames to 25 fps, crops faces, embeds 5-frame windows as they arrive."""

    def __init__(self, metric: "LseMetric", clip) -> None:
        self.metric = metric
        self.clip = clip
        self.notes: dict[str, str] = {}
        self._window: collections.deque = collections.deque(maxlen=M.SYNCNET_WINDOW)
        self._batch: list[np.ndarray] = []
        self._embeddings: list[np.ndarray] = []
        self._previous: Optional[tuple[float, np.ndarray]] = None
        self._box: Optional[np.ndarray] = None
        self._faces = 0
        self._next = 0  # index of the next 25 fps frame to emit
        self._frames = 0  # 25 fps frames emitted

    def _crop(self, pair) -> np.ndarray:
        face = pair.generated_face()
        if face is not None:
            self._box = face.box
            self._faces += 1
        box = self._box
        if box is None:  # no face seen yet: centre square of half the shorter side
            h, w = pair.generated.shape[:2]
            r = min(h, w) / 4.0
            box = np.array([w / 2 - r, h / 2 - r, w / 2 + r, h / 2 + r])
        return M.syncnet_crop(pair.generated[..., ::-1], box, self.metric.config.crop_scale)

    def _emit(self, crop: np.ndarray) -> None:
        self._window.append(crop)
        self._frames += 1
        self._next += 1
        if len(self._window) == M.SYNCNET_WINDOW:
            self._batch.append(np.stack(self._window))  # [5, 224, 224, 3] BGR
            if len(self._batch) >= self.metric.config.batch_size:
                self._flush()

    def _flush(self) -> None:
        if self._batch:
            self._embeddings.append(self.metric.embed_video(np.stack(self._batch)))
            self._batch = []

    def add(self, pair) -> None:
        crop = self._crop(pair)
        period = 1.0 / M.SYNCNET_FPS
        while self._previous is not None and self._next * period <= pair.time:
            target = self._next * period
            prev_time, prev_crop = self._previous
            self._emit(prev_crop if abs(prev_time - target) <= abs(pair.time - target) else crop)
        if self._previous is None:
            while self._next * period <= pair.time:
                self._emit(crop)
        self._previous = (pair.time, crop)

    def result(self) -> dict[str, float]:
        from latentdub.toolkit.media.audio import load_audio

        if self._previous is not None:
            last_time, last_crop = self._previous
            while self._next / M.SYNCNET_FPS < last_time + 0.5 / M.SYNCNET_FPS:
                self._emit(last_crop)
        self._flush()
        nan = {"LSE-D": math.nan, "LSE-C": math.nan}
        if self._faces == 0:
            self.notes.update({c: "no face found in the generated clip" for c in nan})
            return nan
        try:
            audio = load_audio(self.clip.generated, M.SYNCNET_SAMPLE_RATE)
        except BadInputError as exc:
            self.notes.update({c: f"generated clip has no usable audio ({exc})" for c in nan})
            return nan
        n = M.syncnet_window_count(self._frames, audio.samples.size)
        if n < 1:
            self.notes.update({c: "clip shorter than SyncNet's 6 frames (0.24 s)" for c in nan})
            return nan
        video = np.concatenate(self._embeddings)[:n]
        mfcc = M.syncnet_mfcc(audio.samples, audio.sample_rate)
        sound = self.metric.embed_audio(M.syncnet_audio_windows(mfcc, n))
        offset, distance, confidence = M.sync_distance_confidence(video, sound, self.metric.config.vshift)
        return {"LSE-D": distance, "LSE-C": confidence, "LSE-offset": float(offset)}


class LseMetric:
    """LSE-D and LSE-C per clip (mean over clips in the summary row, as Wav2Lip reports them)."""

    columns = ("LSE-D", "LSE-C")

    def __init__(self, net, config: LseConfig, device) -> None:
        self.net = net
        self.config = config
        self.device = device

    def embed_video(self, windows: np.ndarray) -> np.ndarray:
        """uint8 BGR ``[B, 5, 224, 224, 3]`` -> ``[B, D]``."""
        import torch

        x = torch.from_numpy(windows).to(self.device).permute(0, 4, 1, 2, 3).float()
        with torch.no_grad():
            return self.net.forward_video(x).cpu().numpy()

    def embed_audio(self, mfcc_windows: np.ndarray) -> np.ndarray:
        """``[B, 1, 13, 20]`` -> ``[B, D]`` (in batches)."""
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(mfcc_windows), 256):
                x = torch.from_numpy(mfcc_windows[i : i + 256]).to(self.device)
                out.append(self.net.forward_audio(x).cpu().numpy())
        return np.concatenate(out)

    def start(self, clip) -> _LseScorer:
        return _LseScorer(self, clip)


def build_lse(config: LseConfig, context) -> LseMetric:
    """LSE-D / LSE-C with SyncNet (needs weights syncnet-v2)."""
    from latentdub.nets.syncnet import load_syncnet, tiny_syncnet

    if config.random_init:
        net = tiny_syncnet(seed=context.seed).to(context.device)
    else:
        net = load_syncnet(context.weights(config.weights), context.device)  # BadInputError naming the file
    return LseMetric(net, config, context.device)


# ---------------------------------------------------------------- registration


@hookimpl
def register_metrics(register):
    register("psnr", build_psnr, config=PsnrConfig, summary="PSNR in dB (whole frames or aligned face crops)")
    register("ssim", build_ssim, config=SsimConfig, summary="SSIM, Gaussian window 11 / sigma 1.5, RGB mean")
    register("fid", build_fid, config=FidConfig, summary=f"FID on Inception pool3 features (needs weights {FID_WEIGHTS})")
    register("lmd", build_lmd, config=LmdConfig, summary="mouth landmark distance, dlib points 48-67, translation removed")
    register("lse", build_lse, config=LseConfig, summary=f"LSE-D / LSE-C lip sync (needs weights {SYNCNET_WEIGHTS})")
    register("cpbd", build_cpbd, config=CpbdConfig, summary="CPBD sharpness of the generated frames")


@hookimpl
def register_weights(register):
    register(WeightSpec(
        name=FID_WEIGHTS,
        filename="pt_inception-2015-12-05-6726825d.pth",
        url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
        sha256="",
        size=0,
        licence="Apache-2.0",
        description="FID Inception-v3 (TensorFlow 2015-12-05 graph ported by pytorch-fid); for the fid metric",
    ))
    register(WeightSpec(
        name=SYNCNET_WEIGHTS,
        filename="syncnet_v2.model",
        url="https://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model",
        sha256="",
        size=0,
        licence="MIT (syncnet_python)",
        description="SyncNet v2 (Chung & Zisserman 2016) for the lse metric (LSE-D / LSE-C, Wav2Lip protocol)",
    ))
