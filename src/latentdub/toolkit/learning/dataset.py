"""Stage-1 training data: per-clip W+ inversions and MFCC windows, aligned frame by frame.

``latentdub dataset prepare`` (:func:`prepare_dataset`) finds the clips of a
corpus (:func:`find_clips`), and for each one: tracks and aligns the face
(:func:`~latentdub.toolkit.faces.track.analyse_video` with the preset's detector and
``track`` settings), warps every frame to the encoder's FFHQ crop, inverts it
with the encoder stage (E_I, batched), computes the audio features stage on
the clip's speech for exactly the decoded frames, and writes one shard:

``shards/<clip_id>.safetensors``: ``latents`` float16 ``[T, L, D]``,
``features`` float16 ``[T, window, coeffs]``, ``valid`` uint8 ``[T]`` (1 where
the frame had a face; latents are zero elsewhere), ``landmarks`` float32
``[T, P, 2]`` (the face's landmarks in the encoder crop's pixels, zero where
there is none; read by ``latentdub directions fit``).

``manifest.json`` records, per clip, its speaker, frame count, fps, the
source's size, mtime and SHA-256, the shard's size and a status. Runs resume:
a clip whose shard and source still match its manifest entry is skipped;
shards are written to ``.part`` and renamed, the manifest is rewritten
atomically after every clip, so an interrupted run loses at most one clip.
``splits/{train,val,test}.txt`` list clip ids, speaker-disjoint (seeded).
Disk: ``L * D * 2`` bytes per frame (18 KiB at 18 x 512) plus 672 bytes of
features.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from ..core.errors import BadInputError, NoFaceError

FORMAT = "latentdub.dataset"
FORMAT_VERSION = 1
LAYOUTS = ("grid", "tcd-timit", "folder")
VIDEO_SUFFIXES = (".mp4", ".mpg", ".mpeg", ".mov", ".avi", ".mkv", ".webm", ".m4v")
AUDIO_SUFFIXES = (".wav", ".flac")
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class ClipSource:
    """One clip of a corpus: ``video`` (with or without sound), optional separate ``audio``."""

    clip_id: str
    speaker: str
    video: Path
    audio: Optional[Path] = None


@dataclasses.dataclass
class PrepareSummary:
    """What :func:`prepare_dataset` did."""

    out_dir: Path
    clips: int = 0
    prepared: int = 0
    skipped: int = 0
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    frames: int = 0
    speakers: int = 0
    splits: dict[str, int] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        out = [
            f"dataset {self.out_dir}: {self.clips} clips of {self.speakers} speakers ({self.prepared} prepared now, "
            f"{self.skipped} already done, {len(self.failed)} failed), {self.frames} frames in total",
            "splits: " + ", ".join(f"{k} {v} clips" for k, v in self.splits.items()),
        ]
        out += [f"failed: {clip}: {why}" for clip, why in self.failed.items()]
        out += [f"note: {n}" for n in self.notes]
        return out


# --------------------------------------------------------------------------- finding clips


def read_speaker_map(path: Path) -> dict[str, str]:
    """``clip -> speaker`` from a text file of ``CLIP<tab or spaces>SPEAKER`` lines (``#`` comments).

    CLIP is a file name, a stem or a path relative to the source folder.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path}: cannot read the speaker map ({type(exc).__name__}); give a UTF-8 text file of 'CLIP SPEAKER' lines") from None
    out = {}
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise BadInputError(f"{path}:{n}: expected 'CLIP SPEAKER', got {line!r}")
        out[parts[0]] = parts[1]
    return out


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "clip"


def _speaker_from_map(video: Path, root: Path, speaker_map: Mapping[str, str]) -> Optional[str]:
    rel = video.relative_to(root).as_posix()
    for key in (rel, video.name, video.stem, str(Path(rel).with_suffix(""))):
        if key in speaker_map:
            return speaker_map[key]
    return None


def _find_audio(video: Path) -> Optional[Path]:
    """A separate speech file for ``video``: same stem beside it or in a sibling ``audio`` folder."""
    for folder in (video.parent, video.parent.parent / "audio", video.parent.parent.parent / "audio"):
        for suffix in AUDIO_SUFFIXES:
            candidate = folder / (video.stem + suffix)
            if candidate.is_file():
                return candidate
    return None


def find_clips(source_dir: Path, layout: str = "folder", speaker_map: Optional[Mapping[str, str]] = None) -> list[ClipSource]:
    """The clips of ``source_dir`` by ``layout``, sorted by id.

    * ``grid``: ``*.mpg`` anywhere below (e.g. ``s1/*.mpg`` or
      ``s1/video/mpg_6000/*.mpg``); the speaker is the nearest folder named
      ``s<N>``, else the speaker map, else the parent folder's name;
    * ``tcd-timit``: ``volunteers/<NN>/**/straightcam/*.mp4`` (and
      ``lipspeakers``); the speaker is the folder after ``volunteers``;
    * ``folder``: any video below; the speaker is its parent folder's name.

    The speaker map (clip -> speaker) overrides all of these. A ``.wav`` or
    ``.flac`` with the video's stem beside it or in a sibling ``audio``
    folder is used as its speech; otherwise the video's own sound is.
    """
    root = Path(source_dir)
    if not root.is_dir():
        raise BadInputError(f"{root}: source folder not found; give the folder holding the corpus videos")
    if layout not in LAYOUTS:
        raise BadInputError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    speaker_map = dict(speaker_map or {})
    if layout == "grid":
        videos = [p for p in root.rglob("*") if p.suffix.lower() in (".mpg", ".mpeg")]
    elif layout == "tcd-timit":
        videos = [p for p in root.rglob("*.mp4") if "straightcam" in p.parts[len(root.parts):]]
    else:
        videos = [p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES]
    clips: dict[str, ClipSource] = {}
    for video in sorted(p for p in videos if p.is_file() and not p.name.startswith(".")):
        rel_parts = video.relative_to(root).parts
        speaker = _speaker_from_map(video, root, speaker_map)
        if speaker is None and layout == "grid":
            speaker = next((part for part in reversed(rel_parts[:-1]) if re.fullmatch(r"s\d+", part)), None)
        if speaker is None and layout == "tcd-timit":
            for group in ("volunteers", "lipspeakers"):
                if group in rel_parts[:-1] and rel_parts.index(group) + 1 < len(rel_parts) - 1:
                    speaker = rel_parts[rel_parts.index(group) + 1]
        if speaker is None:
            speaker = rel_parts[-2] if len(rel_parts) > 1 else root.resolve().name
        clip_id = _safe_id(f"{speaker}__{video.stem}" if layout != "folder" else str(Path(*rel_parts).with_suffix("")).replace(os.sep, "__"))
        if clip_id in clips:
            clip_id = _safe_id(str(Path(*rel_parts).with_suffix("")).replace(os.sep, "__"))
        if clip_id in clips:
            raise BadInputError(f"{video}: two clips map to id {clip_id!r}; rename one of them")
        clips[clip_id] = ClipSource(clip_id, _safe_id(speaker), video, _find_audio(video))
    if not clips:
        raise BadInputError(f"{root}: no {layout} clips found; check the folder or pick another --layout ({', '.join(LAYOUTS)})")
    return [clips[k] for k in sorted(clips)]


# --------------------------------------------------------------------------- manifest and shards


def load_manifest(dataset_dir: Path) -> dict[str, Any]:
    """The manifest of a prepared dataset (BadInputError when missing or not one)."""
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise BadInputError(f"{path}: no dataset manifest; prepare the dataset with `latentdub dataset prepare SOURCE -o {dataset_dir}`")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{path}: unreadable manifest ({type(exc).__name__}); run `latentdub dataset prepare` again") from None
    if data.get("format") != FORMAT:
        raise BadInputError(f"{path}: not a latentdub dataset manifest")
    return data


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def read_split(dataset_dir: Path, split: str) -> list[str]:
    """Clip ids of ``split`` (``train``, ``val`` or ``test``); empty when the split file has none."""
    path = Path(dataset_dir) / "splits" / f"{split}.txt"
    if not path.is_file():
        raise BadInputError(f"{path}: split file missing; run `latentdub dataset prepare` on this dataset again")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def shard_path(dataset_dir: Path, clip_id: str) -> Path:
    """Where the shard of ``clip_id`` lives."""
    return Path(dataset_dir) / "shards" / f"{clip_id}.safetensors"


def read_shard(path: Path, start: int = 0, stop: Optional[int] = None, names: tuple[str, ...] = ("latents", "features", "valid")) -> dict[str, np.ndarray]:
    """Frames ``start:stop`` of a shard: ``latents`` ``[t, L, D]``, ``features`` ``[t, W, C]`` (float16), ``valid`` ``[t]`` (uint8)
    and, when asked for in ``names``, ``landmarks`` ``[t, P, 2]`` (float32).

    Only the requested rows are read (memory-mapped slices). Raises
    :class:`BadInputError` when the shard lacks one of ``names``.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        absent = sorted(set(names) - set(f.keys()))
        if absent:
            raise BadInputError(f"{path}: shard has no {', '.join(absent)} (prepared by an older latentdub); prepare the dataset again into a new folder")
        return {name: f.get_slice(name)[start:stop] for name in names}


def write_shard(path: Path, latents: np.ndarray, features: np.ndarray, valid: np.ndarray, meta: Mapping[str, str], landmarks: Optional[np.ndarray] = None) -> int:
    """Write a shard atomically (``.part`` then rename; arrays as :func:`read_shard` returns them); returns its size in bytes."""
    from safetensors.numpy import save_file

    arrays = {"latents": latents.astype(np.float16), "features": features.astype(np.float16), "valid": valid.astype(np.uint8)}
    if landmarks is not None:
        arrays["landmarks"] = np.ascontiguousarray(landmarks, np.float32)
    tmp = path.with_name(path.name + ".part")
    save_file(arrays, str(tmp), metadata=dict(meta))
    tmp.replace(path)
    return path.stat().st_size


def _source_state(clip: ClipSource) -> dict[str, Any]:
    stats = [p.stat() for p in (clip.video, clip.audio) if p is not None]
    return {"source_size": sum(s.st_size for s in stats), "source_mtime_ns": max(s.st_mtime_ns for s in stats)}


def _sources_sha256(clip: ClipSource) -> str:
    from ..core.weights import file_sha256

    digests = [file_sha256(p) for p in (clip.video, clip.audio) if p is not None]
    return digests[0] if len(digests) == 1 else "+".join(digests)


def is_finished(entry: Optional[Mapping[str, Any]], clip: ClipSource, out_dir: Path) -> bool:
    """True when ``entry`` says ``clip`` is done, its shard is whole and the source has not changed.

    A changed mtime with the same size is checked against the recorded SHA-256.
    """
    if not entry or entry.get("status") != "done":
        return False
    shard = shard_path(out_dir, clip.clip_id)
    if not shard.is_file() or shard.stat().st_size != entry.get("shard_size"):
        return False
    state = _source_state(clip)
    if state["source_size"] != entry.get("source_size"):
        return False
    return state["source_mtime_ns"] == entry.get("source_mtime_ns") or _sources_sha256(clip) == entry.get("source_sha256")


# --------------------------------------------------------------------------- splits


def make_splits(speakers: Mapping[str, str], val_fraction: float, test_fraction: float, seed: int) -> tuple[dict[str, list[str]], str, list[str]]:
    """Assign clips (``clip -> speaker``) to train/val/test; returns splits, mode and notes.

    Mode ``speaker``: whole speakers go to one split, shuffled by ``seed``;
    each non-zero fraction gets at least one speaker while train keeps one.
    With one speaker the clips themselves are split (mode ``clip``), which
    is not speaker-disjoint, and a note says so.
    """
    rng = np.random.default_rng(seed)
    by_speaker: dict[str, list[str]] = {}
    for clip, spk in sorted(speakers.items()):
        by_speaker.setdefault(spk, []).append(clip)
    names = sorted(by_speaker)
    notes: list[str] = []

    def counts(n: int) -> tuple[int, int]:
        n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
        n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
        while n_val + n_test > n - 1 and (n_val or n_test):  # keep at least one for training
            if n_test >= n_val and n_test:
                n_test -= 1
            else:
                n_val -= 1
        return n_val, n_test

    if len(names) >= 2:
        order = [names[i] for i in rng.permutation(len(names))]
        n_val, n_test = counts(len(order))
        groups = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
        splits = {k: sorted(c for s in groups[k] for c in by_speaker[s]) for k in SPLITS}
        mode = "speaker"
        for k in ("val", "test"):
            if not splits[k] and (val_fraction if k == "val" else test_fraction) > 0:
                notes.append(f"only {len(names)} speakers: the {k} split is empty")
    else:
        clips = sorted(speakers)
        order = [clips[i] for i in rng.permutation(len(clips))]
        n_val, n_test = counts(len(order))
        splits = {"val": sorted(order[:n_val]), "test": sorted(order[n_val : n_val + n_test]), "train": sorted(order[n_val + n_test :])}
        mode = "clip"
        if clips:
            notes.append("one speaker only: splits are by clip, NOT speaker-disjoint (validation measures memorisation of the voice)")
    return splits, mode, notes


def _write_splits(out_dir: Path, splits: Mapping[str, list[str]]) -> None:
    folder = out_dir / "splits"
    folder.mkdir(exist_ok=True)
    for name in SPLITS:
        path = folder / f"{name}.txt"
        tmp = path.with_name(path.name + ".part")
        tmp.write_text("".join(f"{c}\n" for c in splits.get(name, [])))
        tmp.replace(path)


# --------------------------------------------------------------------------- preparing


def _stage_record(preset: Any, stage: str) -> dict[str, Any]:
    from ..core.config import config_to_dict

    spec = preset.stages[stage]
    return {"plugin": spec.plugin, **config_to_dict(spec.config)}


def _encode(encoder: Any, crops: list[np.ndarray], device: Any) -> np.ndarray:
    import torch

    x = torch.from_numpy(np.stack(crops)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.inference_mode():
        return encoder.encode(x).float().cpu().numpy()


@dataclasses.dataclass(frozen=True)
class InvertedClip:
    """The face of one clip inverted to W+: ``latents`` float16 ``[M, L, D]`` and crop ``landmarks`` float32
    ``[M, P, 2]`` (encoder crop px) of the source frames ``frames`` int64 ``[M]``, out of ``n_frames`` at ``fps``."""

    frames: np.ndarray
    latents: np.ndarray
    landmarks: np.ndarray
    n_frames: int
    fps: float


def invert_clip(video: Path, components: Any, batch_size: int, max_frames: Optional[int] = None) -> InvertedClip:
    """Track and align the face of ``video`` and invert its frames with the encoder stage, ``batch_size`` crops at a time.

    Every frame with a face, or at most ``max_frames`` of them evenly spread
    (memory then stays flat in clip length). Raises :class:`NoFaceError` when
    no frame has a face and :class:`BadInputError` when it cannot be decoded.
    """
    from ..faces.align import ffhq_alignment, warp_to_crop
    from ..faces.track import NO_FACE, analyse_video
    from ..media.video import probe_video, read_frames

    preset = components.preset
    info = probe_video(video)
    track = analyse_video(read_frames(video, info=info), components["detector"], preset.track, n_frames_hint=info.n_frames)
    track.require_face(video)
    encoder = components["encoder"]
    n, size = track.n_frames, int(encoder.size)
    chosen = np.flatnonzero(track.status != NO_FACE)
    if max_frames is not None and len(chosen) > max_frames:
        chosen = chosen[np.unique(np.linspace(0, len(chosen) - 1, num=max_frames).round().astype(int))]
    wanted = set(chosen.tolist())
    dense = track.landmarks68 if track.landmarks68 is not None else track.landmarks5
    latents: list[np.ndarray] = []
    landmarks: list[np.ndarray] = []
    pending: list[np.ndarray] = []

    def flush() -> None:
        latents.append(_encode(encoder, pending, components.device).astype(np.float16))
        pending.clear()

    reader = read_frames(video, info=info)
    try:
        for frame in reader:
            i = frame.index
            if i >= n:
                break
            if i in wanted:
                alignment = ffhq_alignment(track.landmarks5[i], size)
                pending.append(warp_to_crop(frame.image, alignment))
                landmarks.append(alignment.apply(dense[i]))
                if len(pending) >= batch_size:
                    flush()
    finally:
        reader.close()
    if pending:
        flush()
    return InvertedClip(chosen.astype(np.int64), np.concatenate(latents), np.stack(landmarks).astype(np.float32), n, float(info.fps))


def prepare_clip(clip: ClipSource, components: Any, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Latents float16 ``[T, L, D]``, features float32 ``[T, W, C]``, valid uint8 ``[T]``, crop landmarks float32
    ``[T, P, 2]`` and fps of one clip (latents and landmarks are zero where ``valid`` is 0).

    Raises :class:`NoFaceError` when no frame has a face and
    :class:`BadInputError` when the clip or its speech cannot be decoded.
    """
    from ..media.audio import load_audio

    inverted = invert_clip(clip.video, components, batch_size)
    n = inverted.n_frames
    valid = np.zeros(n, np.uint8)
    valid[inverted.frames] = 1
    latents = np.zeros((n, *inverted.latents.shape[1:]), np.float16)
    latents[inverted.frames] = inverted.latents
    landmarks = np.zeros((n, *inverted.landmarks.shape[1:]), np.float32)
    landmarks[inverted.frames] = inverted.landmarks
    features = components["audio_features"]
    speech = load_audio(clip.audio or clip.video, int(getattr(features, "sample_rate", 16000)))
    feats = np.asarray(features.compute(speech, inverted.fps, n), np.float32)
    return latents, feats, valid, landmarks, inverted.fps


def prepare_dataset(
    source_dir: Path,
    out_dir: Path,
    layout: str = "folder",
    preset: Any = "tiny",
    overrides: Optional[list[str]] = None,
    speaker_map: Optional[Path] = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: Optional[int] = None,
    batch_size: int = 16,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> PrepareSummary:
    """Prepare (or resume preparing) the Stage-1 dataset of ``source_dir`` into ``out_dir``.

    ``preset`` (name, YAML path or :class:`~latentdub.toolkit.core.presets.Preset`)
    supplies the detector, encoder and audio features stages and the
    ``track`` settings; ``seed`` (default: the preset's) shuffles the
    speaker-disjoint splits. Clips that fail (no face, undecodable) are
    recorded as failed and retried by the next run. Raises
    :class:`BadInputError` when ``out_dir`` was prepared with another
    encoder or audio features setup.
    """
    from tqdm import tqdm

    from ..core.build import Components
    from ..core.presets import Preset, resolve_preset

    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise BadInputError(f"split fractions val={val_fraction}, test={test_fraction}: each must be in [0, 1) and their sum below 1")
    if batch_size < 1:
        raise BadInputError(f"--batch-size: must be >= 1, got {batch_size}")
    preset = preset if isinstance(preset, Preset) else resolve_preset(preset, overrides)
    for stage in ("detector", "encoder", "audio_features"):
        if stage not in preset.stages:
            raise BadInputError(f"preset {preset.name!r} configures no {stage}; dataset prepare needs detector, encoder and audio_features stages")
    clips = find_clips(Path(source_dir), layout, read_speaker_map(speaker_map) if speaker_map else None)
    out_dir = Path(out_dir)
    try:
        (out_dir / "shards").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"{out_dir}: cannot create the dataset folder ({exc.strerror}); choose a writable -o") from None
    for stale in (out_dir / "shards").glob("*.part"):
        stale.unlink()
    # the preset seed initialises random_init encoders, so it is part of the encoder's identity
    setup = {"encoder": _stage_record(preset, "encoder"), "audio_features": _stage_record(preset, "audio_features"), "seed": preset.seed}
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "clips": {}}
    if (out_dir / MANIFEST).is_file():
        manifest = load_manifest(out_dir)
        for key, value in setup.items():
            if manifest.get(key, value) != value:
                raise BadInputError(
                    f"{out_dir}: prepared with another {key} ({manifest[key]}); "
                    f"use a new -o folder for this preset, or the preset it was prepared with"
                )
    manifest.update(setup, layout=layout, source_dir=str(Path(source_dir).resolve()), preset=preset.name, detector=preset.stages["detector"].plugin)
    components = Components(preset, log=log)
    summary = PrepareSummary(out_dir=out_dir, clips=len(clips))
    entries: dict[str, Any] = manifest["clips"]
    for clip in tqdm(clips, desc="prepare", unit="clip", disable=not progress, leave=False, dynamic_ncols=True):
        if is_finished(entries.get(clip.clip_id), clip, out_dir):
            summary.skipped += 1
            continue
        entry: dict[str, Any] = {
            "speaker": clip.speaker, "source": str(clip.video), "audio": str(clip.audio) if clip.audio else None, **_source_state(clip),
        }
        started = time.perf_counter()
        try:
            latents, feats, valid, landmarks, fps = prepare_clip(clip, components, batch_size)
            entry["source_sha256"] = _sources_sha256(clip)
            meta = {"clip_id": clip.clip_id, "speaker": clip.speaker}
            size = write_shard(shard_path(out_dir, clip.clip_id), latents, feats, valid, meta, landmarks=landmarks)
        except (BadInputError, NoFaceError) as exc:
            entry.update(status="failed", error=str(exc))
            summary.failed[clip.clip_id] = str(exc)
            log(f"clip {clip.clip_id}: failed: {exc}")
        else:
            entry.update(
                status="done", n_frames=int(len(valid)), n_valid=int(valid.sum()), fps=fps, shard_size=size,
                n_styles=int(latents.shape[1]), latent_dim=int(latents.shape[2]), feature_shape=list(feats.shape[1:]),
                seconds=round(time.perf_counter() - started, 3),
            )
            summary.prepared += 1
            log(f"clip {clip.clip_id}: {len(valid)} frames ({int(valid.sum())} with a face) in {entry['seconds']:.1f}s")
        entries[clip.clip_id] = entry
        _write_json(out_dir / MANIFEST, manifest)
    done = {c: e["speaker"] for c, e in entries.items() if e.get("status") == "done"}
    if not done:
        raise NoFaceError(f"{source_dir}: no clip could be prepared ({len(summary.failed)} failed); see the messages above")
    splits, mode, notes = make_splits(done, val_fraction, test_fraction, preset.seed if seed is None else seed)
    _write_splits(out_dir, splits)
    manifest["splits"] = {"mode": mode, "seed": preset.seed if seed is None else seed, **{k: len(v) for k, v in splits.items()}}
    _write_json(out_dir / MANIFEST, manifest)
    preset.write(out_dir / "preset.yaml")
    summary.frames = sum(int(entries[c]["n_frames"]) for c in done)
    summary.speakers = len(set(done.values()))
    summary.splits = {k: len(v) for k, v in splits.items()}
    summary.notes += notes
    for note in notes:
        log(f"note: {note}")
    return summary

