"""Batch manifests (YAML or CSV): the schema, path rules and validation, all before any work starts."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from ..core.errors import BadInputError, OutputError
from ..core.files import check_not_an_input

MANIFEST_KEYS = ("preset", "set", "outputs", "roots", "identity_sources", "clips")
CLIP_KEYS = ("id", "video", "audio", "output", "preset", "set", "identity", "profile")
CSV_REQUIRED = ("video", "audio", "output")



@dataclasses.dataclass(frozen=True)
class Clip:
    """One manifest entry with its paths resolved (absolute).

    ``where`` locates it in the manifest for messages (``clips[2]``, ``row 3``);
    ``problem`` is set when the clip cannot run (its output escapes the
    folders the manifest may write to) and says why.
    """

    id: str
    where: str
    video: Path
    audio: Path
    output: Path
    preset: Optional[str] = None
    overrides: tuple[str, ...] = ()
    identity: Optional[str] = None
    profile: Optional[Path] = None
    problem: Optional[str] = None

    def key(self, settings: str) -> str:
        """Fingerprint of what this clip's output depends on: its paths, identity and the resolved preset's YAML ``settings``."""
        data = [str(self.video), str(self.audio), str(self.output), self.identity, str(self.profile or ""), settings]
        return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A validated manifest: defaults, allowed folders and clips in manifest order."""

    path: Path
    folder: Path
    outputs: Path
    roots: tuple[Path, ...]
    preset: Optional[str]
    overrides: tuple[str, ...]
    identity_sources: dict[str, Path]
    clips: tuple[Clip, ...]

    @property
    def stem(self) -> Path:
        """Common prefix of the journal, summaries and profile folder: ``OUTPUTS/MANIFEST_STEM``."""
        return self.outputs / self.path.stem

    @property
    def journal(self) -> Path:
        return Path(f"{self.stem}.journal.jsonl")

    @property
    def profiles(self) -> Path:
        return Path(f"{self.stem}.profiles")


def _bad(manifest: Path, where: str, message: str) -> BadInputError:
    return BadInputError(f"{manifest}: {where}: {message}")


def _as_overrides(value: Any, manifest: Path, where: str, split: bool = False) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        items = [v.strip() for v in value.split(";")] if split else [value]
        return tuple(v for v in items if v)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise _bad(manifest, where, "set must be a list of STAGE.KEY=VALUE strings, e.g. set: [output.crf=20]")


def _optional_str(value: Any, manifest: Path, where: str) -> Optional[str]:
    if value is None or value == "":
        return None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise _bad(manifest, where, f"expected a text value, got {value!r}")


def _input_path(raw: str, base: Path) -> Path:
    """Absolute, normalised path of the input ``raw`` (relative to ``base``); inputs are read from anywhere."""
    candidate = Path(raw).expanduser()
    return Path(os.path.normpath(candidate if candidate.is_absolute() else base / candidate))


class _OutputFolders:
    """Checks that outputs stay inside the folders a manifest may write to (each folder named once)."""

    def __init__(self, folders: Iterable[Path]) -> None:
        self.roots = list(dict.fromkeys(f.resolve() for f in folders))

    def path(self, raw: str, base: Path) -> tuple[Path, Optional[str]]:
        """Absolute path of the output ``raw`` (relative to ``base``) and why it is refused, if it is."""
        plain = _input_path(raw, base)
        real = plain.resolve()
        if any(real.is_relative_to(root) for root in self.roots):
            return plain, None
        via = " through a symlink" if any(plain.is_relative_to(root) for root in self.roots) else ""
        allowed = ", ".join(str(r) for r in self.roots)
        return plain, (f"{raw} resolves{via} to {real}, outside the folders outputs may be written to ({allowed}); "
                       "write it inside them or list its folder under roots:")


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a YAML or CSV manifest.

    Structural problems (unknown keys, missing fields, duplicate outputs,
    unreadable file) raise :class:`BadInputError` naming the manifest and the
    entry. Inputs (video, audio, profile, identity sources) are read from
    wherever they are; an output escaping the manifest's folder, ``outputs``
    and ``roots`` (by ``../`` or a symlink) only marks that clip's ``problem``.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: manifest not found; give a .yaml or .csv manifest (see docs/batch.md)")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path}: cannot read the manifest ({type(exc).__name__}); save it as UTF-8 text") from None
    if suffix in (".yaml", ".yml"):
        data, entries = _yaml_entries(path, text)
    elif suffix == ".csv":
        data, entries = {}, _csv_entries(path, text)
    else:
        raise BadInputError(f"{path}: unknown manifest type {suffix or '(none)'}; use .yaml, .yml or .csv")
    folder = path.resolve().parent
    roots = []
    for i, raw in enumerate(data.get("roots") or []):
        if not isinstance(raw, str):
            raise _bad(path, f"roots[{i}]", "expected a folder path")
        root = Path(os.path.normpath(folder / raw))
        if not root.is_dir():
            raise _bad(path, f"roots[{i}]", f"folder {root} does not exist; fix the path or remove it")
        roots.append(root)
    outputs_raw = data.get("outputs")
    if outputs_raw is not None and not isinstance(outputs_raw, str):
        raise _bad(path, "outputs", "expected a folder path, e.g. outputs: dubbed/")
    outputs = Path(os.path.normpath(folder / outputs_raw)) if outputs_raw else folder
    output_folders = _OutputFolders([folder, outputs, *roots])
    sources = data.get("identity_sources") or {}
    if not isinstance(sources, dict):
        raise _bad(path, "identity_sources", "expected a mapping of identity: image or video path")
    identity_sources = {}
    for name, raw in sources.items():
        _check_identity(path, f"identity_sources.{name}", name)
        if not isinstance(raw, str):
            raise _bad(path, f"identity_sources.{name}", "expected an image or video path")
        identity_sources[name] = _input_path(raw, folder)
    clips, seen_ids, seen_outputs = [], {}, {}
    for where, entry in entries:
        clip = _clip(path, where, entry, output_folders, folder, outputs)
        for seen, value, what in ((seen_ids, clip.id, "id"), (seen_outputs, clip.output, "output")):
            if value in seen:
                raise _bad(path, where, f"same {what} as {seen[value]} ({value}); give each clip its own {what}")
            seen[value] = where
        clips.append(clip)
    if not clips:
        raise BadInputError(f"{path}: the manifest lists no clips; add entries under clips: (YAML) or rows (CSV)")
    unused = sorted(set(identity_sources) - {c.identity for c in clips})
    if unused:
        raise _bad(path, f"identity_sources.{unused[0]}", "no clip names this identity; fix the spelling or remove it")
    preset = _preset_ref(data.get("preset"), path, "preset")
    _check_outputs_are_not_inputs(path, clips, identity_sources, preset)
    return Manifest(
        path=path, folder=folder, outputs=outputs, roots=tuple(roots),
        preset=preset,
        overrides=_as_overrides(data.get("set"), path, "set"),
        identity_sources=identity_sources, clips=tuple(clips),
    )


def _check_outputs_are_not_inputs(manifest: Path, clips: list[Clip], identity_sources: dict[str, Path], preset: Optional[str]) -> None:
    """Refuse a manifest where any clip's output is a file some clip, identity or preset reads."""
    inputs: dict[str, Optional[Path]] = {"manifest": manifest}
    for name, source in identity_sources.items():
        inputs[f"identity_sources.{name} source"] = source
    for c in clips:
        for key, value in (("video", c.video), ("audio", c.audio), ("profile", c.profile), ("preset", c.preset or preset)):
            if isinstance(value, Path) or (key == "preset" and value and Path(value).suffix.lower() in (".yaml", ".yml")):
                inputs.setdefault(f"{key} of {c.where}", Path(value))
    for c in clips:
        try:
            check_not_an_input(c.output, inputs)
        except OutputError as exc:
            raise _bad(manifest, c.where, f"output {exc}") from None


def _yaml_entries(path: Path, text: str) -> tuple[dict, list[tuple[str, dict]]]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BadInputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}); fix the syntax") from None
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: a manifest must be a mapping with a clips: list (see docs/batch.md)")
    unknown = sorted(set(data) - set(MANIFEST_KEYS))
    if unknown:
        raise _bad(path, unknown[0], f"unknown key (known: {', '.join(MANIFEST_KEYS)}); fix the spelling")
    clips = data.get("clips")
    if not isinstance(clips, list):
        raise _bad(path, "clips", "expected a list of {video, audio, output} entries")
    entries = []
    for i, entry in enumerate(clips):
        if not isinstance(entry, dict):
            raise _bad(path, f"clips[{i}]", "expected a mapping such as {video: a.mp4, audio: b.wav, output: out.mp4}")
        unknown = sorted(set(entry) - set(CLIP_KEYS))
        if unknown:
            raise _bad(path, f"clips[{i}]", f"unknown key {unknown[0]!r} (known: {', '.join(CLIP_KEYS)}); fix the spelling")
        entries.append((f"clips[{i}]", entry))
    return data, entries


def _csv_entries(path: Path, text: str) -> list[tuple[str, dict]]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in CSV_REQUIRED if c not in header]
    if missing:
        raise _bad(path, "row 1", f"missing column {missing[0]!r}; the header needs {', '.join(CSV_REQUIRED)} (optional: preset, set, identity, profile, id)")
    unknown = [c for c in header if c not in CLIP_KEYS]
    if unknown:
        raise _bad(path, "row 1", f"unknown column {unknown[0]!r} (known: {', '.join(CLIP_KEYS)}); fix the header")
    entries = []
    for row in reader:
        n = reader.line_num  # the file's line number (blank lines are skipped by the reader)
        if None in row:
            raise _bad(path, f"row {n}", f"more cells than the {len(header)} header columns; quote cells that contain commas")
        values = {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
        if not any(values.values()):
            continue
        values["set"] = _as_overrides(values.get("set"), path, f"row {n}", split=True)
        entries.append((f"row {n}", {k: v for k, v in values.items() if v not in (None, "")}))
    return entries


def _preset_ref(value: Any, manifest: Path, where: str) -> Optional[str]:
    """A shipped preset name, or a preset YAML path made absolute against the manifest's folder."""
    name = _optional_str(value, manifest, where)
    if name and Path(name).suffix.lower() in (".yaml", ".yml"):
        return os.path.normpath(manifest.resolve().parent / name)
    return name


def _check_identity(manifest: Path, where: str, name: Any) -> None:
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise _bad(manifest, where, f"identity {name!r} must be a name of letters, digits, '-', '_' or '.'")


def _clip(manifest: Path, where: str, entry: dict, output_folders: _OutputFolders, folder: Path, outputs: Path) -> Clip:
    for key in ("video", "audio"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise _bad(manifest, where, f"{key} is missing; every clip needs video, audio and output")
    video, audio = _input_path(entry["video"], folder), _input_path(entry["audio"], folder)
    output_raw = entry.get("output")
    if not isinstance(output_raw, str) or not output_raw:
        raise _bad(manifest, where, "output is missing; every clip needs video, audio and output")
    output, output_problem = output_folders.path(output_raw, outputs)
    if output.suffix.lower() not in (".mp4", ".mov", ".mkv", ".m4v"):
        raise _bad(manifest, where, f"output {output_raw}: unsupported type {output.suffix or '(none)'}; use .mp4, .mov, .mkv or .m4v")
    identity = entry.get("identity")
    if identity is not None:
        identity = str(identity)
        _check_identity(manifest, f"{where}.identity", identity)
    profile = None
    if entry.get("profile"):
        if not isinstance(entry["profile"], str):
            raise _bad(manifest, f"{where}.profile", "expected a profile path")
        profile = _input_path(entry["profile"], folder)
    clip_id = _optional_str(entry.get("id"), manifest, f"{where}.id")
    if clip_id is None:
        clip_id = os.path.relpath(output, outputs) if output.is_relative_to(outputs) else str(output)
    return Clip(
        id=clip_id, where=where, video=video, audio=audio, output=output,
        preset=_preset_ref(entry.get("preset"), manifest, f"{where}.preset"),
        overrides=_as_overrides(entry.get("set"), manifest, f"{where}.set"),
        identity=identity, profile=profile, problem=f"output: {output_problem}" if output_problem else None,
    )
