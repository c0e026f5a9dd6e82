"""The dubbing pipeline: ``dub`` (footage + speech) and ``animate`` (portrait + speech).

Streaming passes over the footage keep memory flat in clip length:

1. analysis: decode, detect, select and track the target face, smooth its
   landmarks, align (only landmarks are kept, ``O(frames x points)``). When
   the renderer or motion model has ``study`` (see
   :class:`~latentdub.toolkit.core.protocols.SourceStudent`) it is shown every
   aligned face crop in this pass, as each frame's track settles (a few frames
   after the frame is read, so only those frames' images are held);
2. synthesis: decode again, crop each tracked face, render the new mouth in
   batches, composite it back, encode; frames without a face pass through.
3. review (only with ``output.review``, see :mod:`.review`): decode the
   written output once more and measure its mouth for the review page.

Speech goes through the motion model once for the whole output timeline
(compact per-frame codes) as a 16 kHz mono copy; the result carries the speech
itself, at its own rate and channels, with the same edits and timeline fit
(toolkit/dubbing/soundtrack.py), encoded as ``output.audio_codec`` says.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from ..core import protocols
from ..core.build import Components
from ..core.errors import BadInputError, CannotServeError, NoFaceError, PluginError
from ..core.files import RowFile, check_input_file, check_not_an_input, claim_outputs, temp_beside
from ..core.presets import Preset, fallback_preset, preset_path_for, resolve_preset
from ..core.stages import prefetch
from ..core.types import Audio, Frame, TrackedFace
from ..media.video import (
    IMAGE_SUFFIXES,
    VideoWriter,
    check_frame_size,
    check_output_path,
    choose_video_codec,
    probe_video,
    read_frames,
    read_frames_at,
    read_image,
)
from .review import Review, review_paths
from .soundtrack import TrackFormat, choose_format, require_copyable, write_track
from .synthesis import run_frames, runs_overlapped
from .timing import Timeline

#: Reference crops handed to ``Renderer.prepare`` (spread over the clip).
N_REFERENCES = 8
#: Crops per ``study`` call in the study pass.
STUDY_BATCH = 32
#: Stages a dub or animate run uses, built before its first pass over the footage.
RUN_STAGES = ("detector", "motion", "renderer", "compositor")
#: Codes of :attr:`RunSummary.frame_kinds`: passed through untouched, dubbed, dubbed by a renderer's fallback path.
PASSED, DUBBED, FALLBACK = 0, 1, 2


@dataclasses.dataclass
class RunSummary:
    """What a run produced and how long each stage took (seconds)."""

    output: Path
    preset_file: Path
    frames: int = 0
    frames_with_face: int = 0
    frames_passed_through: int = 0
    faces_max: int = 0
    fps: float = 0.0
    audio_seconds: float = 0.0
    stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    extras: list[Path] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    #: uint8 ``[frames]``: :data:`PASSED`, :data:`DUBBED` or :data:`FALLBACK` per output frame.
    frame_kinds: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.uint8))
    #: Seconds of the speech file, and of what the ``speech`` edits keep of it.
    speech_seconds: float = 0.0
    speech_kept_seconds: float = 0.0
    #: Start of the speech in the output (``timing.audio_offset``) and the silence appended to reach
    #: the output's length (negative: speech cut), seconds; ``audio_seconds`` is the track's length.
    audio_offset: float = 0.0
    audio_pad_seconds: float = 0.0
    #: How the sound track is stored (codec, rate, layout, depth), and whether the speech stream was copied as is.
    audio_track: str = ""
    audio_copied: bool = False
    #: Busy seconds of each stage of a staged synthesis pass (``runtime``; see toolkit/dubbing/synthesis.py).
    busy_seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def frames_by_fallback(self) -> int:
        """Output frames drawn by a fallback: the renderer's, or the fallback preset's (counted within ``frames_with_face``)."""
        return int(np.count_nonzero(self.frame_kinds == FALLBACK))

    def lines(self) -> list[str]:
        """Human-readable summary lines for the CLI."""
        total = sum(self.stage_seconds.values())
        fallback = f" ({self.frames_by_fallback} by a fallback)" if self.frames_by_fallback else ""
        out = [
            f"wrote {self.output} ({self.frames} frames at {self.fps:g} fps, {self.frames / max(self.fps, 1e-9):.2f} s)",
            self._speech_line(),
            f"audio: {self.audio_track}",
            f"faces: {self.frames_with_face}/{self.frames} output frames dubbed{fallback}, {self.frames_passed_through} passed through untouched",
            "time: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.stage_seconds.items()) + f" (total {total:.2f}s, {self.frames / max(total, 1e-9):.1f} frames/s)",
            f"resolved preset: {self.preset_file}",
        ]
        out += [f"also wrote {p}" for p in self.extras]
        out += [f"note: {n}" for n in self.notes]
        return out

    def _speech_line(self) -> str:
        parts = [f"speech: {self.speech_seconds:.2f} s"]
        if abs(self.speech_kept_seconds - self.speech_seconds) > 5e-4:
            parts.append(f"{self.speech_kept_seconds:.2f} s kept by the speech edits")
        if self.audio_offset:
            parts.append(f"starting at {self.audio_offset:+.2f} s (timing.audio_offset)")
        pad = self.audio_pad_seconds
        if self.audio_copied:
            parts.append(f"copied as it is, {abs(pad):.3f} s {'shorter' if pad > 0 else 'longer'} than the picture")
        elif abs(pad) <= 5e-4:
            parts.append("neither padded nor cut")
        else:
            parts.append(f"{pad:.2f} s of silence added at the end" if pad > 0 else f"the last {-pad:.2f} s cut")
        return ", ".join(parts) + f"; the track lasts {self.audio_seconds:.2f} s"


@contextmanager
def _timed(summary: RunSummary, stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        summary.stage_seconds[stage] = summary.stage_seconds.get(stage, 0.0) + time.perf_counter() - start


def _progress(total: Optional[int], desc: str, enabled: bool):
    """The progress bar of one per-frame stage (analyse, study, render, review): one line each, named alike.

    A bar at the top of the terminal stays when done (a plain ``dub``); under
    another bar (a batch's) it is cleared, so a batch keeps one line per clip in flight.
    """
    from tqdm import tqdm

    return tqdm(total=total, desc=f"{desc:<7}", unit="frame", disable=not enabled, leave=None, dynamic_ncols=True)


def _preview_path(output: Path) -> Path:
    return output.with_name(output.stem + ".preview" + output.suffix)


def _contact_sheet_path(output: Path) -> Path:
    return output.with_name(output.stem + ".contact.png")


def run_outputs(output: Path, preset: Preset) -> list[Path]:
    """Every file a ``dub``/``animate`` run writes: the video first, then its resolved preset, preview, contact sheet and review page."""
    extras = [_preview_path(output)] * preset.output.preview + [_contact_sheet_path(output)] * preset.output.contact_sheet
    return [output, preset_path_for(output), *extras, *(review_paths(output) if preset.output.review else ())]


class FrameSource:
    """Serves source frames in timeline order from a streaming decoder.

    Forward steps stream; a step back (loop) restarts the decoder at that
    frame; with ``random_access`` (ping-pong) frames are kept in a file in
    ``workdir`` (:class:`~latentdub.toolkit.core.files.RowFile`), not in memory.
    """

    def __init__(self, path: Path, info, random_access: bool, workdir: Path) -> None:
        self.path, self.info = path, info
        self._iter: Optional[Iterator[Frame]] = None
        self._last: Optional[Frame] = None
        self._cache: Optional[RowFile] = None
        self._cached = 0
        if random_access:
            self._cache = RowFile(workdir / "frames.u8", info.n_frames + 2, (info.height, info.width, 3))

    def _restart(self, index: int) -> None:
        if self._iter is not None:
            self._iter.close()  # type: ignore[attr-defined]
        self._iter = read_frames(self.path, fps=self.info.fps, start_frame=index, info=self.info)
        self._last = None

    def get(self, index: int) -> Frame:
        """Frame ``index`` (clamped to the last decodable frame)."""
        if self._cache is not None and index < self._cached:
            return Frame(index, index / self.info.fps, self._cache[index])
        if self._last is not None and self._last.index == index:
            return self._last
        if self._iter is None or (self._last is not None and index < self._last.index):
            self._restart(index if self._cache is None else self._cached)
        assert self._iter is not None
        for frame in self._iter:
            if self._cache is not None and frame.index < len(self._cache):
                self._cache[frame.index] = frame.image
                self._cached = max(self._cached, frame.index + 1)
            self._last = frame
            if frame.index >= index:
                return frame
        if self._last is None:  # seek beyond the end: step back to the last frame
            self._restart(max(0, index - 1))
            return self.get(index - 1)
        return self._last

    def close(self) -> None:
        if self._iter is not None:
            self._iter.close()  # type: ignore[attr-defined]
        if self._cache is not None:
            self._cache.close()


def _check_motion_fits(components: Components) -> tuple[Any, Any]:
    renderer = components["renderer"]
    motion_model = components["motion"]
    if motion_model.kind not in renderer.motion_kinds:
        raise PluginError(
            f"motion plugin {components.preset.stages['motion'].plugin!r} makes {motion_model.kind!r} codes but renderer "
            f"{components.preset.stages['renderer'].plugin!r} reads {', '.join(renderer.motion_kinds)}; pick a matching pair"
        )
    return renderer, motion_model


def _landmarks(face) -> np.ndarray:
    return face.landmarks68 if face.landmarks68 is not None else face.landmarks5


def _contact_sheet(frames: list[np.ndarray], path: Path) -> Path:
    from PIL import Image

    cols = min(4, len(frames))
    rows = math.ceil(len(frames) / cols)
    h, w = frames[0].shape[:2]
    sheet = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, f in enumerate(frames):
        r, c = divmod(i, cols)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = f
    tmp = temp_beside(path)
    try:
        Image.fromarray(sheet).save(tmp, format="PNG")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _load_speech(audio: Path, output: Path, components: Components, summary: RunSummary) -> tuple[Audio, TrackFormat]:
    """The analysis copy (decoded at the motion model's rate, mono, with the preset's ``speech`` edits)
    and the format of the delivered track (checked against the output container before any work)."""
    from ..media.audio import edit_audio, load_audio, probe_audio

    preset = components.preset
    edits = preset.speech
    with _timed(summary, "audio"):
        track = choose_format(probe_audio(audio), preset.output, output)
        summary.notes += list(track.notes)
        speech = load_audio(audio, sample_rate=int(getattr(components["motion"], "sample_rate", 16000)))
        summary.speech_seconds = speech.duration
        if not edits.is_identity:
            speech = edit_audio(speech, trim=edits.trim, fade_in=edits.fade_in, fade_out=edits.fade_out, target_dbfs=edits.loudness)
        summary.speech_kept_seconds = speech.duration
    return speech, track


def _fit_speech(speech: Audio, timeline: Timeline, sound: TrackFormat, preset: Preset, summary: RunSummary) -> Audio:
    """The analysis copy fitted to ``timeline`` (checking ``copy`` can apply); the summary records the fit."""
    from .timing import timeline_audio

    require_copyable(sound, preset.speech, timeline)
    summary.frames, summary.fps = timeline.n_frames, timeline.fps
    summary.audio_offset, summary.audio_pad_seconds = timeline.audio_offset, timeline.pad_audio_seconds
    summary.audio_track, summary.audio_copied = sound.describe(), sound.codec == "copy"
    fitted = timeline_audio(speech, timeline)
    summary.audio_seconds = speech.duration if summary.audio_copied else fitted.duration
    return fitted


def _begin_run(output: str | Path) -> tuple[Path, RunSummary]:
    """Check the output path and start the run's summary (before any work)."""
    output = check_output_path(output)
    return output, RunSummary(output=output, preset_file=preset_path_for(output))


def _with_fallback(run: Callable[[Preset], RunSummary], preset: Preset | str, overrides: Optional[list[str]], log: Callable[[str], None]) -> RunSummary:
    """``run(preset)``; when a component raises :class:`CannotServeError`, ``run`` again with the preset's fallback.

    The second run's summary says why, counts the first attempt's seconds and
    marks every frame it dubbed :data:`FALLBACK`.
    """
    if not isinstance(preset, Preset):
        preset = resolve_preset(preset, overrides)
    start = time.perf_counter()
    try:
        return run(preset)
    except CannotServeError as exc:
        if not preset.fallback or preset.fallback == preset.name:
            raise
        reason = str(exc)
    log(f"note: {reason}; continuing with the fallback preset {preset.fallback!r}")
    attempt = time.perf_counter() - start
    summary = run(fallback_preset(preset))
    summary.notes.insert(0, f"preset {preset.name!r} could not serve this input ({reason}); rendered with its fallback preset {preset.fallback!r}")
    summary.stage_seconds = {f"{preset.name} attempt": attempt, **summary.stage_seconds}
    summary.frame_kinds[summary.frame_kinds == DUBBED] = FALLBACK
    return summary


def _claimed_run(
    run: Callable[[Path, Preset], RunSummary], output: str | Path, preset: Preset | str, overrides: Optional[list[str]],
    inputs: dict[str, Optional[Path]], overwrite: Optional[bool], log: Callable[[str], None],
) -> RunSummary:
    """Resolve the preset, check the output paths against the inputs and hold them while ``run(output, preset)``
    (and its fallback) works; all checks come before any work. ``overwrite`` None follows ``output.overwrite``."""
    if not isinstance(preset, Preset):
        preset = resolve_preset(preset, overrides)
    inputs = {**inputs, **preset.input_files()}
    check_not_an_input(Path(output), inputs)  # says more than a complaint about the file type
    output = check_output_path(output)
    replace = preset.output.overwrite if overwrite is None else overwrite
    with claim_outputs(run_outputs(output, preset), inputs, replace):
        return _with_fallback(lambda p: run(output, p), preset, None, log)


def _synthesise(
    *,
    components: Components,
    summary: RunSummary,
    output: Path,
    fps: float,
    size: tuple[int, int],
    n_out: int,
    speech: Audio,
    timeline: Timeline,
    sound: TrackFormat,
    frame_for: Callable[[int], tuple[np.ndarray, Optional[TrackedFace]]],
    references: tuple[np.ndarray, np.ndarray],
    progress: bool,
    workdir: Path,
    review: Optional[Review] = None,
) -> None:
    """Motion, render, composite and encode ``n_out`` frames into ``output`` with the delivered ``sound`` track (and the review's source copy)."""
    preset = components.preset
    renderer, motion_model = _check_motion_fits(components)
    with _timed(summary, "motion"):
        identity = renderer.prepare(*references)
        motion = motion_model.predict(speech, fps, n_out, identity)
        if len(motion) != n_out:
            raise PluginError(f"motion plugin {preset.stages['motion'].plugin!r} returned {len(motion)} frames, expected {n_out}")
        motion.extra.setdefault("source_index", np.asarray(timeline.source_index, np.int64))  # what each output frame shows
    summary.notes += [str(n) for n in motion.extra.get("notes", ())]
    summary.frame_kinds = np.full(n_out, PASSED, np.uint8)
    with _timed(summary, "audio"):
        delivered = write_track(sound, preset.speech, timeline, workdir)
    if delivered.gain_db is not None:
        summary.notes.append(f"speech.loudness={preset.speech.loudness:g} dBFS: gain {delivered.gain_db:+.1f} dB")
    codec = choose_video_codec(preset.output.video_codec, components.device.type)
    writer = VideoWriter(output, fps, size, preset.output.crf, preset.output.x264_preset, audio=delivered.mux, codec=codec)
    opened = [writer]
    writers: list[Callable[[np.ndarray, np.ndarray], None]] = [lambda src, out: writer.write(out)]
    sheet_frames: list[np.ndarray] = []
    sheet_at = set(np.linspace(0, n_out - 1, num=min(8, n_out)).round().astype(int).tolist())
    if preset.output.preview:
        preview = VideoWriter(_preview_path(output), fps, (size[0] * 2, size[1]), preset.output.crf, preset.output.x264_preset, audio=delivered.mux)
        opened.append(preview)
        writers.append(lambda src, out: preview.write(np.concatenate([src, out], axis=1)))
    if review is not None:
        source_copy = review.start(motion, speech, fps, size, preset.output, workdir)
        opened.append(source_copy)
        writers.append(lambda src, out: source_copy.write(src))
    if preset.output.contact_sheet:
        counter = iter(range(n_out))
        writers.append(lambda src, out: sheet_frames.append(out.copy()) if next(counter) in sheet_at else None)
    try:
        with _timed(summary, "render"), _progress(n_out, "render", progress) as bar:
            run_frames(components, motion, writers, summary, frame_for, n_out, bar, DUBBED)
        with _timed(summary, "encode"):
            for w in opened:
                w.close()
    except BaseException:
        for w in opened:
            w.abort()
        raise
    if preset.output.preview:
        summary.extras.append(preview.path)
    if isinstance(renderer, protocols.RunReporter):
        report = renderer.report()
        summary.notes += list(report.notes)
        fallback = np.array([t for t in report.fallback if 0 <= t < n_out], np.int64)
        summary.frame_kinds[fallback[summary.frame_kinds[fallback] == DUBBED]] = FALLBACK
    if preset.output.contact_sheet and sheet_frames:
        summary.extras.append(_contact_sheet(sheet_frames, _contact_sheet_path(output)))


def dub(
    video: str | Path,
    audio: str | Path,
    output: str | Path,
    preset: Preset | str = "preview",
    overrides: Optional[list[str]] = None,
    profile: Optional[Path] = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
    overwrite: Optional[bool] = None,
) -> RunSummary:
    """Re-lip-sync ``video`` to the speech in ``audio`` and write ``output`` (mp4).

    ``overwrite``: replace existing output files (None: the preset's
    ``output.overwrite``); the output is never one of the inputs. Raises
    :class:`BadInputError` (unusable files or settings), :class:`NoFaceError`
    (no usable face in any frame), :class:`MissingWeightsError`,
    :class:`PluginError`, or :class:`CannotServeError` when a component cannot
    serve the clip and the preset names no ``fallback`` (otherwise the run goes
    on with the fallback preset); nothing is left at ``output`` on failure.
    """
    video, audio = check_input_file(video, "video"), check_input_file(audio, "speech audio")
    if video.suffix.lower() in IMAGE_SUFFIXES:
        raise BadInputError(f"{video}: is a still image, not footage; animate a portrait with `latentdub animate IMAGE AUDIO -o OUT`")
    profile = None if profile is None else check_input_file(profile, "profile")
    inputs = {"video": video, "speech audio": audio, "profile": profile}
    return _claimed_run(lambda out, p: _dub(video, audio, out, p, profile, progress, log), output, preset, overrides, inputs, overwrite, log)


def _dub(video: Path, audio: Path, output: str | Path, preset: Preset, profile: Optional[Path], progress: bool, log: Callable[[str], None]) -> RunSummary:
    """:func:`dub` with one resolved preset."""
    from ..faces.track import analyse_video
    from ..media.frame_timing import measure_frame_timing, rate_conversion_note
    from .timing import is_monotonic, plan_timeline

    output, summary = _begin_run(output)
    info = probe_video(video)
    check_frame_size(info.width, info.height, video)
    components = Components(preset, profile=profile, log=log)
    speech, sound = _load_speech(audio, output, components, summary)
    components.build(*RUN_STAGES)  # every network and weight file is read before the long passes
    fps = float(preset.output.fps or info.fps)
    if abs(fps - info.fps) > 1e-6:
        info = dataclasses.replace(info, fps=fps, n_frames=max(1, int(info.duration * fps + 0.5)))
    # fail before the analysis pass when the speech cannot be copied into this timeline
    require_copyable(sound, preset.speech, plan_timeline(info.n_frames, fps, speech.duration, preset.timing.length_policy, preset.timing.audio_offset))
    frame_timing = measure_frame_timing(video)
    info = dataclasses.replace(info, variable_frame_rate=bool(frame_timing and frame_timing.variable))
    detector = components["detector"]
    study = _Study(components)
    with _timed(summary, "analyse"), _progress(info.n_frames, "analyse", progress) as bar:
        kept = _FrameKeeper(info.n_frames, hold_unsettled=study.active)
        decoded = read_frames(video, fps=fps, info=info)
        if runs_overlapped(components):  # decode on a thread while the detector works
            decoded = prefetch(decoded, preset.runtime.queue_depth, "decode")
        try:
            track = analyse_video(
                kept.tee(decoded), detector, preset.track, n_frames_hint=info.n_frames,
                progress=lambda done, total: bar.update(done - bar.n),
                settled=(lambda tracked: study.add(kept.release(tracked.frame_index), tracked)) if study.active else None,
            )
            study.flush()
        finally:
            decoded.close()  # the decoder (and its thread) stop now, also when the analysis fails
    track.require_face(video)
    if track.n_faces_max > 1:
        summary.notes.append(f"up to {track.n_faces_max} faces per frame; dubbing the {preset.track.select} one (track.select)")
    info = dataclasses.replace(info, n_frames=track.n_frames)
    retimed = rate_conversion_note(video.name, frame_timing, fps, track.n_frames)
    summary.notes += [retimed] if retimed else []
    timeline = plan_timeline(track.n_frames, fps, speech.duration, preset.timing.length_policy, audio_offset=preset.timing.audio_offset)
    speech = _fit_speech(speech, timeline, sound, preset, summary)
    summary.faces_max = track.n_faces_max
    review = Review.for_dub(output, video, info, track, timeline, components) if preset.output.review else None
    with tempfile.TemporaryDirectory(prefix="latentdub-") as tmp:
        workdir = Path(tmp)
        with _timed(summary, "references"):
            references = _video_references(video, info, track, kept.images)
        source_index = timeline.source_index
        # ping-pong steps back one frame at a time: serve it from a disk cache
        random_access = timeline.policy == "pingpong" and not is_monotonic(timeline)
        source = FrameSource(video, info, random_access=random_access, workdir=workdir)
        try:
            _synthesise(
                components=components, summary=summary, output=output, fps=fps, size=(info.width, info.height),
                n_out=timeline.n_frames, speech=speech, timeline=timeline, sound=sound,
                frame_for=lambda t: _frame_and_face(source, track, int(source_index[t])),
                references=references, progress=progress, workdir=workdir, review=review,
            )
        finally:
            source.close()
        if review is not None:
            summary.extras.append(review.write(summary, components, lambda total, desc: _progress(total, desc, progress)))
    preset.write(summary.preset_file)
    return summary


class _Study:
    """Shows each ``SourceStudent`` among the renderer and motion model the aligned face crops of the source, in
    source order, in batches of :data:`STUDY_BATCH` (the dub's analysis pass hands it each frame as its track settles)."""

    def __init__(self, components: Components) -> None:
        self.students = [components[s] for s in ("renderer", "motion") if isinstance(components[s], protocols.SourceStudent)]
        self.crops: list[np.ndarray] = []
        self.landmarks: list[np.ndarray] = []
        self.frames: list[int] = []

    @property
    def active(self) -> bool:
        """Whether any component studies."""
        return bool(self.students)

    def add(self, image: np.ndarray, tracked: TrackedFace) -> None:
        """Cut the crop of ``tracked``'s face (if any) from its frame uint8 ``[H, W, 3]``; study a full batch."""
        from ..faces.align import warp_to_crop

        if tracked.face is None:
            return
        self.crops.append(warp_to_crop(image, tracked.alignment))
        self.landmarks.append(tracked.alignment.apply(_landmarks(tracked.face)))
        self.frames.append(tracked.frame_index)
        if len(self.crops) >= STUDY_BATCH:
            self.flush()

    def flush(self) -> None:
        """Study the crops held (crops ``[B, S, S, 3]``, crop landmarks ``[B, P, 2]``, frames ``[B]``)."""
        if self.crops:
            batch = (np.stack(self.crops), np.stack(self.landmarks), np.array(self.frames, np.int64))
            for student in self.students:
                student.study(*batch)
            self.crops, self.landmarks, self.frames = [], [], []


def _frame_and_face(source: FrameSource, track, index: int) -> tuple[np.ndarray, Optional[TrackedFace]]:
    index = min(index, track.n_frames - 1)
    frame = source.get(index)
    return frame.image, track[min(frame.index, track.n_frames - 1)]


def _spread(indices: list[int], n: int = N_REFERENCES) -> list[int]:
    """At most ``n`` of the sorted ``indices``, evenly spread over them."""
    return [indices[i] for i in sorted(set(np.linspace(0, len(indices) - 1, num=min(n, len(indices))).round().astype(int).tolist()))]


class _FrameKeeper:
    """Keeps the images of ``2 * N_REFERENCES`` evenly spaced frames while pass 1 streams and, with ``hold_unsettled``,
    those of the frames whose track is not final yet (at most ``settle_lag + SETTLE_EVERY``, :mod:`..faces.track`): memory stays flat."""

    def __init__(self, n_frames_hint: int, hold_unsettled: bool = False) -> None:
        self.wanted = set(np.linspace(0, max(n_frames_hint - 1, 0), num=2 * N_REFERENCES).round().astype(int).tolist())
        self.images: dict[int, np.ndarray] = {}
        self.hold_unsettled = hold_unsettled
        self.unsettled: dict[int, np.ndarray] = {}

    def tee(self, frames: Iterator[Frame]) -> Iterator[Frame]:
        """Pass ``frames`` through, keeping the wanted ones."""
        for frame in frames:
            if frame.index in self.wanted:
                self.images[frame.index] = frame.image
            if self.hold_unsettled:
                self.unsettled[frame.index] = frame.image
            yield frame

    def release(self, index: int) -> np.ndarray:
        """The image of frame ``index``, whose track has settled (no longer held)."""
        return self.unsettled.pop(index)


def _video_references(video: Path, info, track, kept: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Aligned crops ``[N, S, S, 3]`` and crop landmarks ``[N, P, 2]`` spread over the clip.

    Taken from the frames kept during pass 1; only when none of those shows
    the face (a face in a small part of the clip) is the clip decoded again.
    """
    from ..faces.align import warp_to_crop

    images = {i: image for i, image in kept.items() if track[i].face is not None}
    if not images:
        images = read_frames_at(video, _spread([t.frame_index for t in track if t.face is not None]), info)
    chosen = _spread(sorted(images))
    crops = [warp_to_crop(images[i], track[i].alignment) for i in chosen]
    lms = [track[i].alignment.apply(_landmarks(track[i].face)) for i in chosen]
    return np.stack(crops), np.stack(lms)


def animate(
    image: str | Path,
    audio: str | Path,
    output: str | Path,
    preset: Preset | str = "preview",
    overrides: Optional[list[str]] = None,
    profile: Optional[Path] = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
    overwrite: Optional[bool] = None,
) -> RunSummary:
    """Animate a single portrait ``image`` with the speech in ``audio`` (the paper's mode).

    The output runs at ``output.fps`` (25 when unset) for the speech's length;
    ``overwrite``, errors and the fallback as for :func:`dub`.
    """
    image, audio = check_input_file(image, "portrait image"), check_input_file(audio, "speech audio")
    profile = None if profile is None else check_input_file(profile, "profile")
    inputs = {"portrait image": image, "speech audio": audio, "profile": profile}
    return _claimed_run(lambda out, p: _animate(image, audio, out, p, profile, progress, log), output, preset, overrides, inputs, overwrite, log)


def _animate(image: Path, audio: Path, output: str | Path, preset: Preset, profile: Optional[Path], progress: bool, log: Callable[[str], None]) -> RunSummary:
    """:func:`animate` with one resolved preset."""
    from ..faces.track import track_still
    from .timing import plan_timeline

    output, summary = _begin_run(output)
    picture = read_image(image)
    components = Components(preset, profile=profile, log=log)
    speech, sound = _load_speech(audio, output, components, summary)
    components.build(*RUN_STAGES)
    fps = float(preset.output.fps or 25.0)
    # a one-frame "video" held for as long as the speech lasts
    timeline = plan_timeline(1, fps, speech.duration, "hold", audio_offset=preset.timing.audio_offset)
    speech = _fit_speech(speech, timeline, sound, preset, summary)
    with _timed(summary, "analyse"):
        tracked = track_still(picture, components["detector"], preset.track)
    if tracked.face is None:
        raise NoFaceError(f"{image}: no face found in the portrait; give a photo with a clear frontal face")
    # yuv420p needs even sides: crop the portrait by at most one pixel
    h, w = picture.shape[0] // 2 * 2, picture.shape[1] // 2 * 2
    picture = np.ascontiguousarray(picture[:h, :w])
    n_out = timeline.n_frames
    from ..faces.align import warp_to_crop

    crop = warp_to_crop(picture, tracked.alignment)
    references = (crop[None], tracked.alignment.apply(_landmarks(tracked.face))[None])
    with _timed(summary, "study"):
        study = _Study(components)
        study.add(picture, tracked)
        study.flush()
    review = Review.for_still(output, image, picture, tracked, n_out, components) if preset.output.review else None
    with tempfile.TemporaryDirectory(prefix="latentdub-") as tmp:
        _synthesise(
            components=components, summary=summary, output=output, fps=fps, size=(w, h), n_out=n_out, speech=speech, timeline=timeline, sound=sound,
            frame_for=lambda t: (picture, tracked), references=references, progress=progress, workdir=Path(tmp), review=review,
        )
        if review is not None:
            summary.extras.append(review.write(summary, components, lambda total, desc: _progress(total, desc, progress)))
    preset.write(summary.preset_file)
    return summary
