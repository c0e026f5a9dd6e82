"""Build the components a preset names, once each, with a shared :class:`BuildContext`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

from . import protocols
from .devices import resolve_device
from .errors import ConfigError, LatentdubError, PluginError
from .plugins import get_component
from .presets import STAGES, Preset
from .runtime import RuntimeConfig

#: The protocol a built component of each kind must implement.
PROTOCOLS = {
    "detector": protocols.Detector,
    "encoder": protocols.Encoder,
    "generator": protocols.Generator,
    "audio_features": protocols.AudioFeatures,
    "motion": protocols.MotionModel,
    "renderer": protocols.Renderer,
    "compositor": protocols.Compositor,
    "finetuner": protocols.Finetuner,
}


@dataclasses.dataclass
class BuildContext:
    """Passed to every ``factory(config, context)``.

    ``device``: the ``torch.device`` to run on (on the CPU a :class:`~latentdub.toolkit.core.devices.CpuDevice`, which torch
    takes as a device and which has its ``type``); ``weights(name_or_path)``
    returns a local path for a registered weight name or a user path (raising
    :class:`~latentdub.toolkit.core.errors.MissingWeightsError`); ``build(stage)``
    builds the component configured for another stage of the same preset
    (for example a renderer asking for the ``generator`` stage), cached so each
    stage is built once; ``seed`` seeds random initialisation; ``runtime``
    is the preset's :class:`~latentdub.toolkit.core.runtime.RuntimeConfig`
    (e.g. ``runtime.cuda_graphs``).
    """

    device: Any
    weights: Callable[[str], Path]
    build: Callable[[str], Any]
    seed: int = 0
    profile: Optional[Path] = None
    log: Callable[[str], None] = print
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)


def build_with_defaults(kind: str, name: str, context: BuildContext) -> Any:
    """The registered component ``name`` of ``kind`` built with its default settings, outside any preset."""
    from .config import parse_config

    component = get_component(kind, name)
    return component.factory(parse_config(component.config, {}, kind), context)


class Components:
    """Lazily built components of one preset: ``components["detector"]``.

    Each stage is built at most once; factories may ask for other stages
    through ``context.build``. Errors raised by third-party factories are
    wrapped in :class:`PluginError` naming the plugin.
    """

    def __init__(self, preset: Preset, profile: Optional[Path] = None, log: Callable[[str], None] = print) -> None:
        self.preset = preset
        self.device = resolve_device(preset.device)
        self.log = log
        self._built: dict[str, Any] = {}
        self._building: list[str] = []
        self.context = BuildContext(
            device=self.device, weights=self._weights, build=self.__getitem__, seed=preset.seed, profile=profile, log=log,
            runtime=preset.runtime,
        )

    @staticmethod
    def _weights(name_or_path: str) -> Path:
        from . import weights

        return weights.resolve(name_or_path)

    def has(self, stage: str) -> bool:
        """True when the preset configures ``stage``."""
        return stage in self.preset.stages

    def build(self, *stages: str) -> None:
        """Build those of ``stages`` the preset configures now, so bad weights fail before any long pass."""
        for stage in stages:
            if self.has(stage):
                self[stage]

    def __getitem__(self, stage: str) -> Any:
        if stage in self._built:
            return self._built[stage]
        if stage not in STAGES:
            raise ConfigError(f"{stage}: unknown stage (known: {', '.join(STAGES)})")
        if stage not in self.preset.stages:
            raise ConfigError(f"{stage}: preset {self.preset.name!r} configures no {stage}; add `{stage}: {{plugin: NAME}}` or --set {stage}.plugin=NAME")
        if stage in self._building:
            raise PluginError(f"{stage}: circular dependency between stages {' -> '.join(self._building + [stage])}")
        spec = self.preset.stages[stage]
        component = get_component(STAGES[stage], spec.plugin)
        self._building.append(stage)
        try:
            built = component.factory(spec.config, self.context)
        except LatentdubError:
            raise
        except Exception as exc:
            raise PluginError(f"{stage}: plugin {spec.plugin!r} ({component.plugin}) failed to build: {type(exc).__name__}: {exc}") from exc
        finally:
            self._building.pop()
        expected = PROTOCOLS[STAGES[stage]]
        if not isinstance(built, expected):
            missing = [name for name in dir(expected) if not name.startswith("_") and not hasattr(built, name)]
            raise PluginError(
                f"{stage}: plugin {spec.plugin!r} ({component.plugin}) built a {type(built).__name__} that lacks "
                f"{', '.join(missing) or 'the ' + expected.__name__ + ' protocol'}; see latentdub.toolkit.core.protocols.{expected.__name__}"
            )
        self._built[stage] = built
        return built
