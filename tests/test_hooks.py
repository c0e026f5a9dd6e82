"""Each hook, implemented by a plugin defined here, reaches the part of latentdub that uses it."""

from __future__ import annotations

import dataclasses

import click
import pytest
from click.testing import CliRunner

from latentdub.cli import cli
from latentdub.toolkit.core import plugins, weights
from latentdub.toolkit.core.hookspecs import hookimpl
from latentdub.toolkit.core.plugins import KINDS


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    level: int = 1


def _factory(config, context):
    return ("built", config.level, str(context.device))


def _plugin_for(hook_name: str):
    def impl(register):
        register("probe", _factory, config=ProbeConfig, summary=f"probe for {hook_name}")

    impl.__name__ = hook_name
    ns = type("ProbePlugin", (), {hook_name: staticmethod(hookimpl(impl))})
    return ns()


COMPONENT_HOOKS = [
    ("detector", "register_detectors"),
    ("face_embedder", "register_face_embedders"),
    ("encoder", "register_encoders"),
    ("generator", "register_generators"),
    ("motion", "register_motion_models"),
    ("renderer", "register_renderers"),
    ("trainer", "register_trainers"),
    ("finetuner", "register_finetuners"),
    ("compositor", "register_compositors"),
    ("audio_features", "register_audio_features"),
    ("metric", "register_metrics"),
]


def test_every_component_kind_is_covered():
    assert dict(COMPONENT_HOOKS) == KINDS


@pytest.mark.parametrize("kind, hook_name", COMPONENT_HOOKS)
def test_component_hook_registers_a_factory(kind, hook_name):
    name = f"probe_{hook_name}"
    plugins.register_plugin(_plugin_for(hook_name), name=name)
    try:
        comp = plugins.get_component(kind, "probe")
        assert comp.plugin == name and comp.config is ProbeConfig
        from latentdub.toolkit.core.build import BuildContext

        ctx = BuildContext(device="cpu", weights=lambda n: n, build=lambda s: None)
        assert comp.factory(ProbeConfig(level=3), ctx) == ("built", 3, "cpu")
    finally:
        plugins.unregister_plugin(name)
    with pytest.raises(Exception, match="no .* named 'probe'"):
        plugins.get_component(kind, "probe")


def test_register_weights_hook():
    class WeightsPlugin:
        @hookimpl
        def register_weights(self, register):
            register(weights.WeightSpec("probe-weight", "probe.bin", "file:///nonexistent/probe.bin", "", 0, "test only"))

    plugins.register_plugin(WeightsPlugin(), name="probe_weights")
    try:
        assert weights.all_weights()["probe-weight"].filename == "probe.bin"
    finally:
        plugins.unregister_plugin("probe_weights")
    assert "probe-weight" not in weights.all_weights()


def test_register_commands_hook():
    @click.command("hello")
    def hello():
        """Say hello from a plugin."""
        click.echo("hello from a plugin")

    class CommandPlugin:
        @hookimpl
        def register_commands(self, cli):
            cli.add_command(hello)

    plugins.register_plugin(CommandPlugin(), name="probe_commands")
    try:
        cli.__dict__.pop("_extra", None)
        result = CliRunner().invoke(cli, ["hello"])
        assert result.exit_code == 0 and "hello from a plugin" in result.output
        assert "hello" in CliRunner().invoke(cli, ["--help"]).output
    finally:
        plugins.unregister_plugin("probe_commands")
        cli.__dict__.pop("_extra", None)
