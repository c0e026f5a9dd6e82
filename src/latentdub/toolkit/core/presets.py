"""Presets: YAML data naming the plugin of each stage and its settings.

A preset is a mapping with a few top-level scalars (``description``,
``device``, ``seed``, ``fallback``), core sections (``output``, ``timing``, ``track``)
and stages (``detector``, ``encoder``, ...) that each name a ``plugin`` and
that plugin's settings. Validation parses every section into its typed
config, so an unknown key or a wrong type fails with the key named.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional

import yaml

from .config import NAMES_WEIGHTS, Pattern, Range, config_to_dict, parse_config, setting_types, shown, split_annotation
from .errors import ConfigError
from .files import write_text_atomic
from .plugins import get_component
from .runtime import RuntimeConfig

#: Stage name in a preset -> component kind in the registry.
STAGES = {
    "detector": "detector",
    "encoder": "encoder",
    "generator": "generator",
    "audio_features": "audio_features",
    "motion": "motion",
    "renderer": "renderer",
    "compositor": "compositor",
    "finetuner": "finetuner",
}


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """Encoding of the result: x264 ``crf`` (0-51, lower is better) and ``preset``;
    ``fps`` None follows the input; ``preview`` writes a side-by-side video beside
    the output, ``contact_sheet`` a PNG grid of frames and ``review`` the review
    page ``OUT.review.html`` (see :mod:`latentdub.toolkit.dubbing.review`);
    ``overwrite`` lets a run replace existing output files (``--overwrite``),
    which are otherwise never touched.

    The sound track is the speech at its own rate and channels: ``audio_codec``
    ``aac`` (at ``audio_bitrate``, e.g. ``160k``), ``pcm``, ``flac``, ``alac``
    (lossless, where the container takes them) or ``copy`` (the stream
    unchanged, when nothing edits it); ``audio_rate`` (Hz) and
    ``audio_channels`` override the speech's own (see toolkit/dubbing/soundtrack.py)."""

    crf: Annotated[int, Range(ge=0, le=51)] = 18
    x264_preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"] = "veryfast"
    fps: Optional[Annotated[float, Range(gt=0, le=1000)]] = None
    audio_bitrate: Annotated[str, Pattern(r"[1-9][0-9]{0,2}k|[1-9][0-9]{3,6}", "a bitrate such as 128k or 192000")] = "160k"
    preview: bool = False
    contact_sheet: bool = False
    audio_codec: Literal["aac", "pcm", "flac", "alac", "copy"] = "aac"
    audio_rate: Optional[Annotated[int, Range(ge=8000, le=384000)]] = None
    audio_channels: Optional[Annotated[int, Range(ge=1, le=8)]] = None
    review: bool = False
    overwrite: bool = False
    #: H.264 encoder: ``libx264`` (CPU), ``h264_nvenc`` (NVIDIA, when this ffmpeg has it) or ``auto``
    #: (NVENC when ``ffmpeg -encoders`` lists it and a CUDA device is used, else libx264).
    video_codec: Literal["libx264", "h264_nvenc", "auto"] = "libx264"


@dataclasses.dataclass(frozen=True)
class TimingConfig:
    """What to do when speech and video lengths differ.

    ``length_policy``: ``trim`` (cut the video to the speech; if the speech is
    longer, hold the last frame), ``loop`` (restart the video), ``pingpong``
    (play it forwards then backwards), ``hold`` (freeze the last frame while
    speech lasts), ``pad`` (keep the whole video, pad the speech with silence).
    """

    length_policy: Literal["trim", "loop", "pingpong", "hold", "pad"] = "pad"
    audio_offset: Annotated[float, Range(ge=-3600, le=3600)] = 0.0


@dataclasses.dataclass(frozen=True)
class SpeechConfig:
    """Edits applied to the new speech before anything else (seconds, dBFS).

    ``trim_start``/``trim_end`` keep that span (``trim_end`` None: to the end);
    ``fade_in``/``fade_out`` ramp the edges; ``loudness`` sets the RMS level in
    dBFS (e.g. -20; None leaves the level alone; peaks never clip).
    """

    trim_start: Annotated[float, Range(ge=0)] = 0.0
    trim_end: Optional[Annotated[float, Range(gt=0)]] = None
    fade_in: Annotated[float, Range(ge=0)] = 0.0
    fade_out: Annotated[float, Range(ge=0)] = 0.0
    loudness: Optional[Annotated[float, Range(ge=-70, le=0)]] = None

    def check(self, where: str) -> None:
        """The kept span must not be empty."""
        if self.trim_end is not None and self.trim_end <= self.trim_start:
            raise ConfigError(f"{where}.trim_end: {self.trim_end} must be after {where}.trim_start ({self.trim_start})")

    @property
    def is_identity(self) -> bool:
        """True when the settings leave the speech unchanged."""
        return self == SpeechConfig()

    @property
    def trim(self) -> Optional[tuple[float, Optional[float]]]:
        """``(trim_start, trim_end)`` seconds, or None when the whole speech is kept."""
        return (self.trim_start, self.trim_end) if self.trim_start or self.trim_end is not None else None


@dataclasses.dataclass(frozen=True)
class TrackConfig:
    """Target face selection and landmark smoothing.

    ``select``: ``largest``, ``central`` or ``reference`` (closest to the
    face in ``reference_image``, compared by the face embedder plugin
    ``reference_embedder``); ``smoothing``: half-width in frames of the
    temporal landmark filter (0 disables); ``min_score``/``min_size`` (px)
    reject weak detections; ``max_gap``: frames a lost face is bridged by
    interpolation; ``crop_size``: side of the aligned face crop in pixels.
    """

    select: Literal["largest", "central", "reference"] = "largest"
    reference_image: Optional[Path] = None
    reference_embedder: str = "dlib"
    smoothing: Annotated[int, Range(ge=0, le=50)] = 2
    min_score: Annotated[float, Range(ge=0, le=1)] = 0.6
    min_size: Annotated[float, Range(ge=0)] = 24.0
    max_gap: Annotated[int, Range(ge=0)] = 5
    crop_size: Annotated[int, Range(ge=32, le=4096)] = 256
    detect_every: Annotated[int, Range(ge=1, le=100)] = 1


CORE_SECTIONS = {"output": OutputConfig, "timing": TimingConfig, "speech": SpeechConfig, "track": TrackConfig, "runtime": RuntimeConfig}
TOP_LEVEL = {"description": str, "device": str, "seed": int, "name": str, "fallback": (str, type(None))}
#: The offline preset: what ``auto`` picks without neural weights, and every preset's default ``fallback``
#: (``mouthbank``; ``preview``, the warp renderer alone, stays available and names no fallback).
OFFLINE_PRESET = "offline"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a resolved preset: the plugin's name and its typed config."""

    name: str
    plugin: str
    config: Any


@dataclasses.dataclass(frozen=True)
class Preset:
    """A validated preset: core sections, stages, and the data it came from.

    ``fallback``: the preset a run continues with when a component raises
    :class:`~latentdub.toolkit.core.errors.CannotServeError` (default
    :data:`OFFLINE_PRESET`; None: fail with exit 7 instead).
    """

    name: str
    description: str
    device: str
    seed: int
    output: OutputConfig
    timing: TimingConfig
    speech: SpeechConfig
    track: TrackConfig
    stages: dict[str, Stage]
    fallback: Optional[str] = None
    #: The YAML file the preset was read from (None for a shipped preset).
    source: Optional[Path] = None
    #: How the run uses the machine (threads, queues, torch frame ops, CUDA graphs).
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)

    def input_files(self) -> dict[str, Path]:
        """Files the preset makes a run read, ``{key: path}``: its own YAML, every path setting
        and every weight setting that names a local file (registered weight names are not files)."""
        files: dict[str, Path] = {"preset": self.source} if self.source is not None else {}
        configs = [(name, getattr(self, name)) for name in CORE_SECTIONS] + [(s.name, s.config) for s in self.stages.values()]
        while configs:
            where, config = configs.pop()
            for name, tp in setting_types(type(config)).items():
                value, key = getattr(config, name), f"{where}.{name}"
                if dataclasses.is_dataclass(value):
                    configs.append((key, value))
                elif isinstance(value, Path) or (NAMES_WEIGHTS in split_annotation(tp)[1] and isinstance(value, str) and Path(value).expanduser().is_file()):
                    files[key] = Path(value).expanduser()
        return files

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved preset (every default filled in), ready for YAML."""
        data: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "device": self.device,
            "seed": self.seed,
            "fallback": self.fallback,
        }
        for section in CORE_SECTIONS:
            data[section] = config_to_dict(getattr(self, section))
        for stage in self.stages.values():
            data[stage.name] = {"plugin": stage.plugin, **config_to_dict(stage.config)}
        return data

    def to_yaml(self) -> str:
        """YAML text of :meth:`to_dict`."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def write(self, path: Path) -> Path:
        """Write the resolved preset to ``path`` (atomically) and return it."""
        return write_text_atomic(Path(path), self.to_yaml())


def preset_path_for(output: Path) -> Path:
    """Where the resolved preset of a run writing ``output`` is saved (``STEM.latentdub.yaml`` beside it)."""
    return output.with_name(output.stem + ".latentdub.yaml")


def preset_names() -> list[str]:
    """Names of the presets shipped with latentdub."""
    folder = importlib.resources.files("latentdub.presets")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


#: Largest preset file read, in bytes (presets are a few KiB; anything bigger is not a preset).
MAX_PRESET_BYTES = 1 << 20


def _preset_file(name_or_path: str | Path) -> Optional[Path]:
    """The YAML path ``name_or_path`` names, or None for a shipped preset name."""
    path = Path(name_or_path).expanduser()
    return path if path.suffix in (".yaml", ".yml") or path.exists() else None


def load_preset_data(name_or_path: str | Path) -> dict[str, Any]:
    """Raw mapping of a shipped preset name or a user YAML file."""
    text: str
    label = str(name_or_path)
    path = _preset_file(name_or_path)
    if path is not None:
        if path.is_dir():
            raise ConfigError(f"{path}: is a folder; give a preset YAML file or a shipped preset ({', '.join(preset_names())})")
        if not path.is_file():
            raise ConfigError(f"{path}: preset file not found; give a shipped preset ({', '.join(preset_names())}) or a YAML path")
        if path.stat().st_size > MAX_PRESET_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes is too large for a preset (at most {MAX_PRESET_BYTES // 1024} KiB); give the preset YAML file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the preset ({type(exc).__name__}); save it as UTF-8 text") from None
    else:
        resource = importlib.resources.files("latentdub.presets") / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise ConfigError(f"unknown preset {label!r}; shipped presets: {', '.join(preset_names())}, or give a YAML path")
        text = resource.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{label}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"{label}: nested too deeply to be a preset; a preset is a mapping of sections") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: a preset must be a mapping of sections")
    data.setdefault("name", path.stem if path is not None else label)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``section.key=value`` into a key path and a YAML-typed value."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. --set output.crf=20")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of preset ``data`` with ``--set`` overrides applied.

    Setting ``stage.plugin`` to another plugin drops the old plugin's settings.
    """
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
    for text in overrides:
        parts, value = parse_override(text)
        if len(parts) == 1:
            out[parts[0]] = value
            continue
        section = out.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"--set {text!r}: {parts[0]} is not a section")
        if parts[1:] == ["plugin"] and section.get("plugin") != value:
            section.clear()
        target = section
        for part in parts[1:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return out


def resolve_preset(name_or_path: str | Path = "preview", overrides: Optional[list[str]] = None) -> Preset:
    """Load, override and validate a preset against every named plugin's typed config."""
    data = apply_overrides(load_preset_data(name_or_path), overrides or [])
    unknown = sorted(set(data) - set(TOP_LEVEL) - set(CORE_SECTIONS) - set(STAGES))
    if unknown:
        allowed = ", ".join([*TOP_LEVEL, *CORE_SECTIONS, *STAGES])
        raise ConfigError(f"{unknown[0]}: unknown preset section (known: {allowed})")
    for key, tp in TOP_LEVEL.items():
        if key in data and not isinstance(data[key], tp):
            raise ConfigError(f"{key}: expected {getattr(tp, '__name__', 'str or null')}, got {shown(data[key])}")
    sections = {name: parse_config(cls, data.get(name), name) for name, cls in CORE_SECTIONS.items()}
    stages = {}
    for stage, kind in STAGES.items():
        if stage not in data:
            continue
        if not isinstance(data[stage] or {}, Mapping):
            raise ConfigError(f"{stage}: expected a mapping naming the plugin, e.g. {stage}: {{plugin: NAME}}; got {shown(data[stage])}")
        values = dict(data[stage] or {})
        plugin = values.pop("plugin", None)
        if not isinstance(plugin, str):
            raise ConfigError(f"{stage}.plugin: each stage must name its plugin, e.g. {stage}: {{plugin: NAME}}")
        component = get_component(kind, plugin)
        stages[stage] = Stage(stage, component.name, parse_config(component.config, values, stage))
    name = str(data.get("name", name_or_path))
    return Preset(
        source=_preset_file(name_or_path),
        name=name,
        description=str(data.get("description", "")),
        device=str(data.get("device", "auto")),
        seed=int(data.get("seed", 0)),
        stages=stages,
        fallback=data.get("fallback", OFFLINE_PRESET if name != OFFLINE_PRESET else None),
        **sections,
    )


#: Motion settings carried from a run into its fallback when both motion configs have them: they describe the speech, not the method.
CARRIED_MOTION_SETTINGS = ("transcript", "transcript_file")


def fallback_preset(preset: Preset) -> Preset:
    """``preset.fallback`` resolved, with the run's ``output``, ``timing`` and ``speech`` sections and its transcript.

    The result names no fallback of its own (a run falls back once).
    """
    if not preset.fallback:
        raise ConfigError(f"preset {preset.name!r} names no fallback; set `fallback: NAME` in it")
    chosen = resolve_preset(preset.fallback)
    stages = dict(chosen.stages)
    if "motion" in preset.stages and "motion" in stages:
        ours, theirs = preset.stages["motion"].config, stages["motion"].config
        carried = {k: getattr(ours, k) for k in CARRIED_MOTION_SETTINGS if hasattr(ours, k) and hasattr(theirs, k) and getattr(ours, k) is not None}
        stages["motion"] = dataclasses.replace(stages["motion"], config=dataclasses.replace(theirs, **carried))
    return dataclasses.replace(chosen, stages=stages, fallback=None, output=preset.output, timing=preset.timing, speech=preset.speech, runtime=preset.runtime)


#: Neural presets tried, in order, by the ``auto`` preset: the paper's stack (needs a Stage-1 model), then the public weights alone.
NEURAL_PRESETS = ("paper-1024", "neural-1024")


def missing_weights(preset: Preset) -> list[str]:
    """Checkpoints named by ``preset`` (fields called ``checkpoint``) that cannot be found locally."""
    from . import weights
    from .errors import MissingWeightsError

    missing = []
    for stage in preset.stages.values():
        name = getattr(stage.config, "checkpoint", None)
        if name is None:
            if hasattr(stage.config, "checkpoint") and not getattr(stage.config, "random_init", False):
                missing.append(f"{stage.name}.checkpoint (not set)")
            continue
        try:
            weights.resolve(str(name), offline=True)
        except MissingWeightsError:
            missing.append(str(name))
    return list(dict.fromkeys(missing))


def choose_auto_preset(log=print) -> str:
    """The first of :data:`NEURAL_PRESETS` whose weights are all present, else :data:`OFFLINE_PRESET`; says which and why."""
    passed = []
    for name in NEURAL_PRESETS:
        missing = missing_weights(resolve_preset(name))
        if not missing:
            log(f"preset auto: using {name}" + (f" ({'; '.join(passed)})" if passed else ""))
            return name
        passed.append(f"{name} needs {', '.join(missing)}")
    log(f"preset auto: neural weights not found ({'; '.join(passed)}); using the offline backend (preset {OFFLINE_PRESET})")
    return OFFLINE_PRESET
