"""The weights registry: lookup, atomic verified downloads, offline mode, CLI.

Every download comes from an http.server on 127.0.0.1 started by the test
(or a file:// URL); nothing touches the network.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import threading
import time
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from latentdub.commands.weights import weights as weights_cli
from latentdub.toolkit.core import weights
from latentdub.toolkit.core.errors import BadInputError, LatentdubError, MissingWeightsError
from latentdub.toolkit.core.hookspecs import hookimpl
from latentdub.toolkit.core.plugins import register_plugin, unregister_plugin

PAYLOAD = os.urandom(3 * weights.CHUNK + 12345)  # several chunks, not a multiple of the chunk size
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files``; ``/short`` announces more bytes than it sends, then closes;
    ``/stall`` goes silent mid-body."""

    def do_GET(self):  # noqa: N802 (http.server naming)
        self.server.hits.append(self.path)
        if self.path == "/short":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path == "/stall":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[:1000])
            self.wfile.flush()
            time.sleep(0.6)  # longer than the client's timeout
            return
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A local HTTP server in a thread; yields (base_url, server) with ``files`` and ``hits``."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files = {"/blob.bin": PAYLOAD}
    srv.hits = []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", srv
    srv.shutdown()
    srv.server_close()


class _WeightsPlugin:
    def __init__(self, specs, fail=False):
        self.specs = specs
        self.fail = fail

    @hookimpl
    def register_weights(self, register):
        for spec in self.specs:
            register(spec)
        if self.fail:
            raise RuntimeError("broken test plugin")


@pytest.fixture
def register_specs():
    """Register WeightSpecs through a test plugin; unregistered afterwards."""
    names = []

    def add(*specs, fail=False):
        name = f"latentdub_test_weights_{len(names)}"
        register_plugin(_WeightsPlugin(specs, fail), name=name)
        names.append(name)

    yield add
    for name in names:
        unregister_plugin(name)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder in LATENTDUB_CACHE, online, no local weights folder."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("LATENTDUB_CACHE", str(folder))
    monkeypatch.delenv("LATENTDUB_OFFLINE", raising=False)
    monkeypatch.delenv("LATENTDUB_WEIGHTS_DIR", raising=False)
    return folder


def _spec(url, name="test-blob", filename="blob.bin", sha256=SHA, size=len(PAYLOAD), **kw):
    kw.setdefault("description", "test bytes")
    return weights.WeightSpec(name, filename, url, sha256, size, "CC0-1.0", **kw)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.part")) + sorted(p.name for p in folder.glob(".*.part"))


def test_cache_dir_env_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("LATENTDUB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_dir() == tmp_path / "xdg" / "latentdub"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert weights.cache_dir() == Path.home() / ".cache" / "latentdub"
    monkeypatch.setenv("LATENTDUB_CACHE", str(tmp_path / "mine"))
    assert weights.cache_dir() == tmp_path / "mine"


def test_fetch_streams_verifies_and_shows_progress(server, cache, register_specs, capsys):
    base, srv = server
    register_specs(_spec(base + "/blob.bin"))
    got = weights.fetch("test-blob", progress=True)
    assert got == cache / "blob.bin" == weights.path("test-blob")
    assert got.read_bytes() == PAYLOAD
    assert weights.file_sha256(got) == SHA
    assert _leftovers(cache) == []
    err = capsys.readouterr().err
    assert "blob.bin" in err and "100%" in err  # tqdm bar on stderr
    assert weights.verify(["test-blob"]) == [("test-blob", "ok")]
    # a cached copy of the right size is reused without a new request
    assert weights.resolve("test-blob") == got
    assert weights.fetch("test-blob", progress=False) == got
    assert srv.hits == ["/blob.bin"]
    weights.fetch("test-blob", progress=False, force=True)
    assert srv.hits == ["/blob.bin", "/blob.bin"]


def test_checksum_mismatch_leaves_nothing(server, cache, register_specs):
    base, _ = server
    wrong = "0" * 64
    register_specs(_spec(base + "/blob.bin", sha256=wrong))
    with pytest.raises(MissingWeightsError) as info:
        weights.fetch("test-blob", progress=False)
    message = str(info.value)
    assert wrong in message and SHA in message and "\n" not in message
    assert not (cache / "blob.bin").exists()
    assert _leftovers(cache) == []


def test_interrupted_transfer_leaves_nothing(server, cache, register_specs):
    base, _ = server
    register_specs(_spec(base + "/short"))
    with pytest.raises(MissingWeightsError, match="test-blob") as info:
        weights.fetch("test-blob", progress=False, timeout=5)
    assert "latentdub weights fetch test-blob" in str(info.value)
    assert not (cache / "blob.bin").exists()
    assert _leftovers(cache) == []


def test_stalled_transfer_times_out(server, cache, register_specs):
    base, _ = server
    register_specs(_spec(base + "/stall"))
    with pytest.raises(MissingWeightsError, match="test-blob.*timed out"):
        weights.fetch("test-blob", progress=False, timeout=0.2)
    assert not (cache / "blob.bin").exists()
    assert _leftovers(cache) == []


def test_http_error_and_bad_scheme(server, cache, register_specs):
    base, _ = server
    register_specs(_spec(base + "/nothing-here"), _spec("ftp://example.invalid/x", name="ftp-blob", filename="x.bin"))
    with pytest.raises(MissingWeightsError, match="HTTP 404"):
        weights.fetch("test-blob", progress=False)
    with pytest.raises(MissingWeightsError, match="scheme 'ftp'"):
        weights.fetch("ftp-blob", progress=False)
    assert list(cache.glob("*.bin")) == []


def test_offline_never_touches_the_network(server, cache, register_specs, monkeypatch):
    base, srv = server
    register_specs(_spec(base + "/blob.bin"))
    monkeypatch.setenv("LATENTDUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError) as info:
        weights.resolve("test-blob", fetch=True)
    message = str(info.value)
    assert "`latentdub weights fetch test-blob`" in message
    assert str(cache / "blob.bin") in message and "offline" in message
    assert "\n" not in message and info.value.exit_code == 3
    with pytest.raises(MissingWeightsError, match="offline"):
        weights.fetch("test-blob")
    # the argument overrides the environment, both ways
    monkeypatch.delenv("LATENTDUB_OFFLINE")
    with pytest.raises(MissingWeightsError):
        weights.resolve("test-blob", offline=True, fetch=True)
    assert srv.hits == []
    assert weights.resolve("test-blob", offline=False, fetch=True).read_bytes() == PAYLOAD


def test_missing_without_fetch_names_the_command(cache, register_specs):
    register_specs(_spec("http://127.0.0.1:9/never"))
    with pytest.raises(MissingWeightsError, match="latentdub weights fetch test-blob"):
        weights.resolve("test-blob")


def test_local_path_needs_no_registry(tmp_path, monkeypatch):
    def no_registry():
        raise AssertionError("the registry must not be consulted for a path")

    monkeypatch.setattr(weights, "all_weights", no_registry)
    monkeypatch.setenv("LATENTDUB_OFFLINE", "1")
    file = tmp_path / "my.pt"
    file.write_bytes(b"weights")
    folder = tmp_path / "buffalo_l"
    folder.mkdir()
    assert weights.resolve(str(file)) == file
    assert weights.resolve(file) == file
    assert weights.resolve(folder) == folder
    with pytest.raises(MissingWeightsError, match="does not exist"):
        weights.resolve(tmp_path / "absent.pt")


def test_weights_dir_is_searched_before_the_cache(cache, tmp_path, register_specs, monkeypatch):
    register_specs(_spec("http://127.0.0.1:9/never"))
    mine, other = tmp_path / "mine", tmp_path / "other"
    mine.mkdir(), other.mkdir()
    (other / "blob.bin").write_bytes(PAYLOAD)
    monkeypatch.setenv("LATENTDUB_WEIGHTS_DIR", os.pathsep.join([str(mine), str(other)]))
    monkeypatch.setenv("LATENTDUB_OFFLINE", "1")
    assert weights.resolve("test-blob") == other / "blob.bin"
    cache.mkdir()
    (cache / "blob.bin").write_bytes(PAYLOAD)
    (mine / "blob.bin").write_bytes(b"truncated")  # wrong size: skipped, reported by verify
    assert weights.resolve("test-blob") == other / "blob.bin"
    assert weights.verify(["test-blob"]) == [("test-blob", "ok")]
    (other / "blob.bin").unlink()
    assert weights.resolve("test-blob") == cache / "blob.bin"
    (cache / "blob.bin").unlink()
    with pytest.raises(MissingWeightsError, match="size 9 bytes") as info:
        weights.resolve("test-blob")
    assert str(mine / "blob.bin") in str(info.value)
    assert weights.verify(["test-blob"])[0][1].startswith("corrupt: ")


def test_verify_detects_a_corrupted_cached_file(server, cache, register_specs):
    base, _ = server
    register_specs(_spec(base + "/blob.bin"), _spec(base + "/blob.bin", name="other", filename="other.bin"))
    cached = weights.fetch("test-blob", progress=False)
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the hash can tell
    cached.write_bytes(bytes(data))
    rows = dict(weights.verify(["test-blob", "other"]))
    assert rows["other"] == "missing"
    assert rows["test-blob"].startswith("corrupt: ") and SHA in rows["test-blob"]
    assert weights.resolve("test-blob") == cached  # resolve checks size only
    weights.fetch("test-blob", progress=False, force=True)
    assert dict(weights.verify(["test-blob"]))["test-blob"] == "ok"


def test_wrong_size_in_cache_is_refetched(server, cache, register_specs):
    base, srv = server
    register_specs(_spec(base + "/blob.bin"))
    cache.mkdir()
    (cache / "blob.bin").write_bytes(PAYLOAD[:100])
    with pytest.raises(MissingWeightsError, match="expected"):
        weights.resolve("test-blob", offline=True)
    assert weights.resolve("test-blob", fetch=True).read_bytes() == PAYLOAD
    assert srv.hits == ["/blob.bin"]


def test_concurrent_fetches_download_once(server, cache, register_specs):
    base, srv = server
    register_specs(_spec(base + "/blob.bin"))
    results = []
    threads = [threading.Thread(target=lambda: results.append(weights.fetch("test-blob", progress=False))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [cache / "blob.bin"] * 3
    assert srv.hits == ["/blob.bin"]
    assert (cache / "blob.bin").read_bytes() == PAYLOAD


def test_file_url_and_unknown_checksum(tmp_path, cache, register_specs, caplog):
    source = tmp_path / "source.bin"
    source.write_bytes(PAYLOAD[:1000])
    register_specs(_spec(source.as_uri(), sha256="", size=0))
    got = weights.fetch("test-blob", progress=False)
    assert got.read_bytes() == PAYLOAD[:1000]
    assert hashlib.sha256(PAYLOAD[:1000]).hexdigest() in caplog.text
    assert weights.verify(["test-blob"])[0][1].startswith("unverified: ")


def test_folder_weight_is_unpacked_from_a_zip(tmp_path, cache, register_specs):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("pack/det.onnx", b"det")
        zf.writestr("pack/landmarks.onnx", b"lmk")
    archive = tmp_path / "pack.zip"
    archive.write_bytes(buffer.getvalue())
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    register_specs(_spec(archive.as_uri(), name="pack", filename="pack", sha256=digest, size=len(buffer.getvalue()), kind="folder"))
    folder = weights.resolve("pack", fetch=True)
    assert folder == cache / "pack"
    assert sorted(p.name for p in folder.iterdir()) == ["det.onnx", "landmarks.onnx"]
    assert weights.fetch("pack", progress=False, force=True) == folder
    assert (folder / "det.onnx").read_bytes() == b"det"
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == ["pack"]


def test_later_registration_wins_and_broken_plugins_are_reported(register_specs):
    register_specs(_spec("http://a.invalid/x", description="first"))
    register_specs(_spec("http://b.invalid/x", description="second"))
    register_specs(_spec("http://c.invalid/x", name="half"), fail=True)
    specs = weights.all_weights()
    assert specs["test-blob"].url == "http://b.invalid/x"
    assert specs["test-blob"].plugin == "latentdub_test_weights_1"
    assert [(d.name, d.loser, d.winner) for d in weights.duplicate_weights()] == [
        ("test-blob", "latentdub_test_weights_0", "latentdub_test_weights_1")
    ]
    assert "half" in specs  # registered before the plugin raised
    assert [p for p, _ in weights.failed_weight_plugins()] == ["latentdub_test_weights_2"]


def test_bad_specs_and_unknown_names(register_specs):
    register_specs(_spec("http://a.invalid/x", name="escape", filename="../evil.bin"))
    assert "escape" not in weights.all_weights()
    assert weights.failed_weight_plugins()[0][1].startswith("BadInputError")
    with pytest.raises(BadInputError, match="unknown weight 'nope'"):
        weights.fetch("nope")
    with pytest.raises(MissingWeightsError, match="neither a registered name"):
        weights.resolve("nope")


def test_cli_list_path_fetch_verify(server, cache, register_specs):
    base, _ = server
    register_specs(_spec(base + "/blob.bin"), _spec(base + "/short", name="broken", filename="broken.bin"))
    runner = CliRunner()

    listed = runner.invoke(weights_cli, ["list"])
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if line.startswith("test-blob"))
    assert row.split()[1:] == ["3.0", "MiB", "no", "CC0-1.0"]

    where = runner.invoke(weights_cli, ["path", "test-blob"])
    assert where.exit_code == 0 and where.output.strip() == str(cache / "blob.bin")

    fetched = runner.invoke(weights_cli, ["fetch", "test-blob", "--quiet"])
    assert fetched.exit_code == 0, fetched.output
    assert fetched.output.strip().splitlines()[-1] == str(cache / "blob.bin")
    assert "yes" in next(line for line in runner.invoke(weights_cli, ["list"]).output.splitlines() if line.startswith("test-blob"))

    checked = runner.invoke(weights_cli, ["verify", "test-blob"])
    assert checked.exit_code == 0 and "test-blob: ok" in checked.output

    failed = runner.invoke(weights_cli, ["fetch", "broken", "-q"])
    assert isinstance(failed.exception, MissingWeightsError) and failed.exception.exit_code == 3
    assert not (cache / "broken.bin").exists()

    missing = runner.invoke(weights_cli, ["verify", "broken"])
    assert isinstance(missing.exception, MissingWeightsError) and "broken: missing" in missing.output

    unknown = runner.invoke(weights_cli, ["path", "nope"])
    assert isinstance(unknown.exception, LatentdubError) and unknown.exception.exit_code == 2


def test_cli_group_imports_without_torch():
    import subprocess
    import sys

    code = "import sys, latentdub.commands.weights; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
