"""The plugin system: test-defined plugins, entry points, broken plugins, the CLI survives."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from latentdub.cli import cli
from latentdub.toolkit.core import plugins
from latentdub.toolkit.core.build import Components
from latentdub.toolkit.core.hookspecs import hookimpl
from latentdub.toolkit.core.presets import resolve_preset
from latentdub.toolkit.core.types import Face


@dataclasses.dataclass(frozen=True)
class FixedConfig:
    x: float = 10.0


class FixedDetector:
    dense_landmarks = False

    def __init__(self, x: float) -> None:
        self.x = x

    def detect(self, image):
        pts = np.array([[self.x, 10], [self.x + 10, 10], [self.x + 5, 15], [self.x + 2, 20], [self.x + 8, 20]], np.float32)
        return [Face(np.array([self.x - 5, 0, self.x + 15, 25], np.float32), 1.0, pts)]


class FixedDetectorPlugin:
    __name__ = "fixed_detector_plugin"

    @hookimpl
    def register_detectors(self, register):
        register("fixed", lambda config, context: FixedDetector(config.x), config=FixedConfig, summary="a test detector")


@pytest.fixture
def fixed_plugin():
    plugins.register_plugin(FixedDetectorPlugin(), name="fixed_detector_plugin")
    yield
    plugins.unregister_plugin("fixed_detector_plugin")


def test_test_plugin_replaces_default_when_preset_names_it(fixed_plugin):
    preset = resolve_preset("preview", ["detector.plugin=fixed", "detector.x=42"])
    detector = Components(preset)["detector"]
    assert isinstance(detector, FixedDetector) and detector.x == 42
    rows = {r["name"]: r for r in plugins.plugin_report()}
    assert "register_detectors" in rows["fixed_detector_plugin"]["hooks"]


def test_plugin_config_is_validated(fixed_plugin):
    with pytest.raises(Exception, match="detector.y"):
        resolve_preset("preview", ["detector.plugin=fixed", "detector.y=1"])


def test_same_name_overrides_builtin(fixed_plugin):
    class Override:
        __name__ = "override_plugin"

        @hookimpl
        def register_detectors(self, register):
            register("dlib", lambda config, context: FixedDetector(7.0), summary="override")

    plugins.register_plugin(Override(), name="override_plugin")
    try:
        preset = resolve_preset("preview", ["detector.plugin=dlib"])
        assert Components(preset)["detector"].x == 7.0
    finally:
        plugins.unregister_plugin("override_plugin")
    assert plugins.get_component("detector", "dlib").plugin == "latentdub.plugins.dlib_detector"


def _make_distribution(root, name, module_source):
    """An installed distribution (dist-info with an entry point) on sys.path."""
    pkg = root / f"{name}.py"
    pkg.write_text(textwrap.dedent(module_source))
    dist = root / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[latentdub]\n{name} = {name}\n")
    (dist / "RECORD").write_text("")


ENTRY_PLUGIN = """
    import dataclasses
    import numpy as np
    from latentdub.toolkit.core.hookspecs import hookimpl

    class Compositor:
        def composite(self, frame, rendered, alignment, landmarks):
            return frame

    @hookimpl
    def register_compositors(register):
        register("identity", lambda config, context: Compositor(), summary="returns the frame unchanged")
"""


def test_entry_point_plugin_and_broken_plugin(tmp_path, monkeypatch):
    _make_distribution(tmp_path, "latentdub_test_plugin_ok", ENTRY_PLUGIN)
    _make_distribution(tmp_path, "latentdub_test_plugin_broken", "raise ImportError('this plugin is broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.reset()
    try:
        preset = resolve_preset("preview", ["compositor.plugin=identity"])
        assert type(Components(preset)["compositor"]).__name__ == "Compositor"
        failed = {f.name: f.error for f in plugins.failed_plugins()}
        assert "this plugin is broken" in failed["latentdub_test_plugin_broken"]
        result = CliRunner().invoke(cli, ["plugins"])
        assert result.exit_code == 0, result.output
        assert "latentdub_test_plugin_broken: failed: ImportError" in result.output
        assert "latentdub_test_plugin_ok (latentdub_test_plugin_ok 1.0): ok" in result.output
        detail = CliRunner().invoke(cli, ["plugins", "--traceback"]).output
        assert "Traceback" in detail and "this plugin is broken on purpose" in detail
        # restricting third-party plugins by environment variable
        monkeypatch.setenv("LATENTDUB_PLUGINS", "latentdub_test_plugin_ok")
        plugins.reset()
        assert not [f for f in plugins.failed_plugins() if "broken" in f.name]
        assert plugins.get_component("compositor", "identity")
    finally:
        plugins.reset()


def test_help_works_with_a_broken_plugin(tmp_path):
    _make_distribution(tmp_path, "latentdub_test_plugin_broken2", "raise RuntimeError('boom at import')\n")
    env_path = f"{tmp_path}"
    code = "import sys; sys.path.insert(0, %r); from latentdub.cli import main; main(['--help'])" % env_path
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "dub" in proc.stdout and "Exit codes" in proc.stdout
    proc = subprocess.run([sys.executable, "-c", code.replace("['--help']", "['plugins']")], capture_output=True, text=True)
    assert proc.returncode == 0 and "latentdub_test_plugin_broken2: failed: RuntimeError: boom at import" in proc.stdout


def test_import_is_light():
    code = "import sys, latentdub, latentdub.cli, latentdub.toolkit.core.plugins as p; p.components(); print(sorted(m for m in ('torch','dlib','facenet_pytorch','insightface','ray','lpips') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_component_missing_its_protocol_is_reported():
    class Broken:
        @hookimpl
        def register_compositors(self, register):
            register("half-done", lambda config, context: object(), summary="forgot composite()")

    plugins.register_plugin(Broken(), name="broken_compositor_plugin")
    try:
        preset = resolve_preset("preview", ["compositor.plugin=half-done"])
        with pytest.raises(plugins.PluginError, match="lacks composite"):
            Components(preset)["compositor"]
    finally:
        plugins.unregister_plugin("broken_compositor_plugin")
