"""The plugin manager and the registry of components that plugins provide.

Built-in plugins (``latentdub.plugins.*``) and third-party ones (entry point
group ``latentdub``) are loaded the same way, on first use rather than at
import. ``LATENTDUB_PLUGINS`` (comma-separated entry point names, or empty
for none) restricts which third-party plugins load; a plugin that fails to
import is recorded in :func:`failed_plugins` and never breaks the CLI.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import sys
import threading
import traceback
from typing import Any, Callable, Optional

import pluggy

from . import hookspecs
from .config import NoConfig
from .errors import PluginError

#: Component kinds and the hook that registers each.
KINDS = {
    "detector": "register_detectors",
    "face_embedder": "register_face_embedders",
    "encoder": "register_encoders",
    "generator": "register_generators",
    "motion": "register_motion_models",
    "renderer": "register_renderers",
    "trainer": "register_trainers",
    "finetuner": "register_finetuners",
    "compositor": "register_compositors",
    "audio_features": "register_audio_features",
    "metric": "register_metrics",
}

DEFAULT_PLUGINS = (
    "latentdub.plugins.stylegan2",
    "latentdub.plugins.psp",
    "latentdub.plugins.mtcnn_detector",
    "latentdub.plugins.dlib_detector",
    "latentdub.plugins.insightface_detector",
    "latentdub.plugins.auto_detector",
    "latentdub.plugins.soft_compositor",
    "latentdub.plugins.neural_renderer",
    "latentdub.plugins.warp_renderer",
    "latentdub.plugins.mouthbank",
    "latentdub.plugins.audio2latent",
    "latentdub.plugins.viseme_motion",
    "latentdub.plugins.clipfit",
    "latentdub.plugins.mfcc",
    "latentdub.plugins.pti",
    "latentdub.plugins.metrics",
)

ENTRY_POINT_GROUP = "latentdub"
PLUGINS_ENV = "LATENTDUB_PLUGINS"


@dataclasses.dataclass(frozen=True)
class Component:
    """A registered factory: ``factory(config, context)`` returns the component."""

    kind: str
    name: str
    factory: Callable[[Any, Any], Any]
    config: type
    summary: str
    plugin: str
    aliases: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class FailedPlugin:
    """A plugin that could not be imported or registered, with the reason."""

    name: str
    error: str
    detail: str


class _State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.pm: Optional[pluggy.PluginManager] = None
        self.failed: list[FailedPlugin] = []  # import failures
        self.register_failed: list[FailedPlugin] = []  # failures while registering components
        self.components: Optional[dict[str, dict[str, Component]]] = None
        self.versions: dict[str, str] = {}  # entry-point plugin name -> "dist version"


_state = _State()


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading built-in and entry-point plugins once."""
    with _state.lock:
        if _state.pm is not None:
            return _state.pm
        pm = pluggy.PluginManager("latentdub")
        pm.add_hookspecs(hookspecs)
        for modname in DEFAULT_PLUGINS:
            try:
                pm.register(importlib.import_module(modname), name=modname)
            except Exception as exc:  # a broken built-in is reported like any plugin
                _state.failed.append(_failure(modname, exc))
        _load_entry_points(pm)
        _state.pm = pm
        return pm


def _failure(name: str, exc: BaseException) -> FailedPlugin:
    """A :class:`FailedPlugin` for the exception being handled (call inside ``except``)."""
    return FailedPlugin(name, f"{type(exc).__name__}: {exc}".splitlines()[0], traceback.format_exc())


def call_each(hook_name: str, make_register: Callable[[str], Callable[..., None]]) -> list[FailedPlugin]:
    """Call every implementation of a ``register_*`` hook, one plugin at a time, in registration order.

    Built-ins come first, so a later plugin registering the same name wins.
    ``make_register(plugin_name)`` gives the ``register`` callback handed to
    that plugin. A plugin whose hook raises is skipped and returned as failed.
    """
    failures = []
    for impl in getattr(get_plugin_manager().hook, hook_name).get_hookimpls():
        try:
            impl.function(register=make_register(impl.plugin_name))
        except Exception as exc:  # a broken plugin is reported, not fatal
            failures.append(_failure(impl.plugin_name, exc))
    return failures


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    allowed = os.environ.get(PLUGINS_ENV)
    allowed_names = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed_names is not None and ep.name not in allowed_names:
            continue
        if pm.has_plugin(ep.name):
            continue
        if ep.dist is not None:
            _state.versions[ep.name] = f"{ep.dist.name} {ep.dist.version}"
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:
            _state.failed.append(_failure(ep.name, exc))


def failed_plugins() -> list[FailedPlugin]:
    """Plugins that failed to import or to register their components."""
    get_plugin_manager()
    components()
    return [*_state.failed, *_state.register_failed]


def register_plugin(plugin: Any, name: Optional[str] = None) -> None:
    """Register a plugin object or module at run time (tests, scripts); components are re-read."""
    pm = get_plugin_manager()
    with _state.lock:
        pm.register(plugin, name=name)
        _state.components = None


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered with :func:`register_plugin`."""
    pm = get_plugin_manager()
    with _state.lock:
        pm.unregister(name=name)
        _state.components = None


def components() -> dict[str, dict[str, Component]]:
    """All registered components: ``{kind: {name: Component}}`` (aliases included)."""
    get_plugin_manager()
    with _state.lock:
        if _state.components is not None:
            return _state.components
        table: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        _state.register_failed = []
        for kind, hook_name in KINDS.items():

            def make_register(plugin_name: str, kind: str = kind) -> Callable[..., None]:
                def register(name, factory, config=NoConfig, summary="", aliases=()):
                    doc = summary or (factory.__doc__ or "").strip().split("\n")[0]
                    entry = Component(kind, name, factory, config, doc, plugin_name, tuple(aliases))
                    for key in (name, *aliases):
                        table[kind][key] = entry

                return register

            _state.register_failed += call_each(hook_name, make_register)
        _state.components = table
        return table


def get_component(kind: str, name: str) -> Component:
    """Look up a component, or raise :class:`PluginError` listing the available names."""
    table = components()
    if kind not in table:
        raise PluginError(f"unknown component kind {kind!r} (known: {', '.join(KINDS)})")
    try:
        return table[kind][name]
    except KeyError:
        names = ", ".join(sorted(table[kind])) or "none"
        failed = [f.name for f in failed_plugins()]
        hint = f"; plugins that failed to load: {', '.join(failed)}" if failed else ""
        raise PluginError(f"no {kind} named {name!r} (available: {names}){hint}") from None


def plugin_report() -> list[dict[str, Any]]:
    """One row per loaded plugin: name, version, hooks it implements; failures included."""
    pm = get_plugin_manager()
    components()
    rows = []
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        rows.append({"name": name, "hooks": hooks, "version": _state.versions.get(name, ""), "status": "ok"})
    for failed in failed_plugins():
        rows.append({"name": failed.name, "hooks": [], "version": "", "status": f"failed: {failed.error}"})
    return rows


def reset() -> None:
    """Forget the loaded plugins (tests); the next call reloads them."""
    with _state.lock:
        _state.pm = None
        _state.failed = []
        _state.register_failed = []
        _state.components = None
        _state.versions = {}
        for mod in [m for m in sys.modules if m.startswith("latentdub_test_plugin")]:
            del sys.modules[mod]
