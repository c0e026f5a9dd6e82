"""Face detector plugins on the real GRID clips (CC BY 4.0, Cooke et al. 2006)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from latentdub.toolkit.core.build import BuildContext
from latentdub.toolkit.core.config import parse_config
from latentdub.toolkit.core.errors import ConfigError, MissingWeightsError
from latentdub.toolkit.core.plugins import get_component
from latentdub.toolkit.core.protocols import Detector
from latentdub.toolkit.media.video import read_frames


def _context(log=None) -> BuildContext:
    import torch

    def no_weights(name):
        raise AssertionError(f"detectors must not ask for weights ({name})")

    def no_build(stage):
        raise AssertionError(f"detectors must not build other stages ({stage})")

    return BuildContext(device=torch.device("cpu"), weights=no_weights, build=no_build, log=log or (lambda msg: None))


def _build(name: str, log=None, **settings):
    component = get_component("detector", name)
    return component.factory(parse_config(component.config, settings, "detector"), _context(log))


@pytest.fixture(scope="module")
def clip_frames(grid_clips) -> dict[str, list[np.ndarray]]:
    """All frames of the first two clips, every 5th frame of the others."""
    out = {}
    for i, clip in enumerate(grid_clips):
        step = 1 if i < 2 else 5
        out[clip.name] = [f.image for f in read_frames(clip) if f.index % step == 0]
    return out


@pytest.fixture(scope="module")
def dlib_detector():
    return _build("dlib")


@pytest.fixture(scope="module")
def mtcnn_detector():
    return _build("mtcnn")


def _check_face(face, image_shape, dense: bool) -> None:
    assert face.box.dtype == np.float32 and face.box.shape == (4,)
    assert 0.0 <= face.score <= 1.0
    assert face.landmarks5.dtype == np.float32 and face.landmarks5.shape == (5, 2)
    eye_l, eye_r, nose, mouth_l, mouth_r = face.landmarks5
    assert eye_l[0] < eye_r[0] and mouth_l[0] < mouth_r[0], "image-left points come first"
    assert max(eye_l[1], eye_r[1]) < nose[1] < min(mouth_l[1], mouth_r[1]), "eyes above nose above mouth"
    x0, y0, x1, y1 = face.box
    inside = (face.landmarks5[:, 0] > x0 - 5) & (face.landmarks5[:, 0] < x1 + 5) & (face.landmarks5[:, 1] > y0 - 5) & (face.landmarks5[:, 1] < y1 + 5)
    assert inside.all()
    assert 60 < face.size < 200, "GRID faces are about 100-130 px"
    if dense:
        assert face.landmarks68.dtype == np.float32 and face.landmarks68.shape == (68, 2)
    else:
        assert face.landmarks68 is None


@pytest.mark.parametrize("name", ["mtcnn", "dlib"])
def test_detector_finds_the_face_in_95_percent_of_grid_frames(name, clip_frames, request):
    detector = request.getfixturevalue(f"{name}_detector")
    assert isinstance(detector, Detector)
    for i, (clip, frames) in enumerate(clip_frames.items()):
        if name == "mtcnn" and i == 1:
            frames = frames[::5]  # MTCNN is ~5x slower than HOG on CPU: one full clip is enough
        found = 0
        for image in frames:
            faces = detector.detect(image)
            if faces:
                found += 1
                _check_face(faces[0], image.shape, detector.dense_landmarks)
        assert found >= 0.95 * len(frames), f"{name} found a face in {found}/{len(frames)} frames of {clip}"


@pytest.mark.parametrize("name", ["mtcnn", "dlib"])
def test_detector_returns_nothing_without_a_face(name, request):
    detector = request.getfixturevalue(f"{name}_detector")
    grey = np.full((288, 360, 3), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (288, 360, 3), dtype=np.uint8)[::-1]
    assert detector.detect(grey) == []
    assert detector.detect(np.ascontiguousarray(noise)) == []


def test_mtcnn_and_dlib_agree_on_eye_and_mouth_positions(clip_frames, mtcnn_detector, dlib_detector):
    image = next(iter(clip_frames.values()))[10]
    a, b = mtcnn_detector.detect(image)[0], dlib_detector.detect(image)[0]
    ocular = np.linalg.norm(b.landmarks5[1] - b.landmarks5[0])
    eyes_mouth = [0, 1, 3, 4]
    err = np.linalg.norm(a.landmarks5[eyes_mouth] - b.landmarks5[eyes_mouth], axis=1)
    assert err.max() < 0.15 * ocular, err


def test_dlib_refit_in_box_matches_detection_and_follows_motion(clip_frames, dlib_detector):
    frames = next(iter(clip_frames.values()))
    face = dlib_detector.detect(frames[0])[0]
    again = dlib_detector.landmarks_in_box(frames[0], face.box, score=face.score)
    np.testing.assert_array_equal(again.landmarks68, face.landmarks68)
    assert again.score == face.score
    # a later frame refitted in the old box lands close to a full detection there
    later = dlib_detector.detect(frames[4])[0]
    refit = dlib_detector.landmarks_in_box(frames[4], face.box)
    assert np.abs(refit.landmarks68 - later.landmarks68).mean() < 2.0
    np.testing.assert_allclose(refit.landmarks5[0], refit.landmarks68[36:42].mean(0), atol=1e-4)
    np.testing.assert_allclose(refit.landmarks5[2], refit.landmarks68[30])


def test_dlib_downscales_large_frames_for_detection_only(clip_frames):
    import cv2

    image = next(iter(clip_frames.values()))[0]
    big = cv2.resize(image, (1440, 1152), interpolation=cv2.INTER_CUBIC)
    small_face = _build("dlib").detect(image)[0]
    big_face = _build("dlib", max_side=480).detect(big)[0]
    assert np.abs(big_face.landmarks5 / 4.0 - small_face.landmarks5).max() < 3.0


def test_dlib_score_mapping():
    from latentdub.plugins.dlib_detector import margin_to_score, score_to_margin

    assert margin_to_score(0.0) == pytest.approx(0.5)
    assert margin_to_score(1.0) == pytest.approx(0.881, abs=1e-3)
    assert margin_to_score(-3) < margin_to_score(0.2) < margin_to_score(2.5) < 1.0
    assert score_to_margin(margin_to_score(1.7)) == pytest.approx(1.7)


def test_detector_settings_are_typed():
    with pytest.raises(ConfigError, match="detector.upsampel"):
        parse_config(get_component("detector", "dlib").config, {"upsampel": 1}, "detector")
    cfg = parse_config(get_component("detector", "mtcnn").config, {"thresholds": [0.5, 0.6, 0.7]}, "detector")
    assert cfg.thresholds == (0.5, 0.6, 0.7)


def test_insightface_missing_folder_names_it(tmp_path):
    missing = tmp_path / "buffalo_l"
    with pytest.raises(MissingWeightsError, match="buffalo_l.*not found.*non-commercial"):
        _build("insightface", model_dir=str(missing))
    missing.mkdir()
    (missing / "w600k_r50.onnx").write_bytes(b"")
    with pytest.raises(MissingWeightsError, match="no detection model"):
        _build("insightface", model_dir=str(missing))
    with pytest.raises(ConfigError, match="detector.model_dir"):
        parse_config(get_component("detector", "insightface").config, {}, "detector")


def test_auto_picks_dlib_without_an_insightface_folder(monkeypatch, tmp_path):
    from latentdub.plugins.dlib_detector import DlibDetector
    from latentdub.plugins.mtcnn_detector import MtcnnDetector

    monkeypatch.delenv("LATENTDUB_INSIGHTFACE_DIR", raising=False)
    messages: list[str] = []
    assert isinstance(_build("auto", log=messages.append), DlibDetector)
    assert messages == ["detector auto: dlib"]
    assert isinstance(_build("auto", prefer_dense=False), MtcnnDetector)
    # an env folder that is not there is reported and skipped; a configured one is an error
    monkeypatch.setenv("LATENTDUB_INSIGHTFACE_DIR", str(tmp_path / "nowhere"))
    messages.clear()
    assert isinstance(_build("auto", log=messages.append), DlibDetector)
    assert "nowhere" in messages[0] and messages[-1] == "detector auto: dlib"
    with pytest.raises(MissingWeightsError, match="elsewhere"):
        _build("auto", model_dir=str(tmp_path / "elsewhere"))


def test_detector_modules_import_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import latentdub.plugins.mtcnn_detector, latentdub.plugins.dlib_detector\n"
        "import latentdub.plugins.insightface_detector, latentdub.plugins.auto_detector\n"
        "heavy = [m for m in ('torch', 'dlib', 'facenet_pytorch', 'insightface', 'onnxruntime', 'cv2') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_configs_are_frozen_dataclasses():
    for name in ("mtcnn", "dlib", "insightface", "auto"):
        cls = get_component("detector", name).config
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen


def _tiny_insightface_folder(folder: Path, dense: bool = True) -> Path:
    """A model folder with tiny ONNX graphs in the layouts of insightface's det_10g and 1k3d68.

    The detector answers every anchor with probability sigmoid(3), a box of
    4 strides and five points at fixed offsets; the landmark model answers
    insightface's mean 68-point shape (halved) in its normalised crop frame.
    """
    import onnx
    from insightface.data import get_object
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    nodes, inits, outputs = [], [], {"score": [], "bbox": [], "kps": []}
    kps = np.array([[-1, -0.5], [1, -0.5], [0, 0.2], [-0.8, 1], [0.8, 1]], np.float32).ravel()
    heads = {"score": np.full(2, 3.0, np.float32), "bbox": np.full(8, 2.0, np.float32), "kps": np.tile(kps, 2)}
    for stride in (8, 16, 32):
        side = 160 // stride
        nodes.append(helper.make_node("AveragePool", ["input.1"], [f"p{stride}"], kernel_shape=[stride, stride], strides=[stride, stride]))
        for head, bias in heads.items():
            k = len(bias)
            inits += [numpy_helper.from_array(np.zeros((k, 3, 1, 1), np.float32), f"w_{head}{stride}"), numpy_helper.from_array(bias, f"b_{head}{stride}")]
            inits.append(numpy_helper.from_array(np.array([side * side * 2, k // 2], np.int64), f"shape_{head}{stride}"))
            nodes.append(helper.make_node("Conv", [f"p{stride}", f"w_{head}{stride}", f"b_{head}{stride}"], [f"c_{head}{stride}"]))
            nodes.append(helper.make_node("Transpose", [f"c_{head}{stride}"], [f"t_{head}{stride}"], perm=[0, 2, 3, 1]))
            last = f"{head}_{stride}"
            nodes.append(helper.make_node("Reshape", [f"t_{head}{stride}", f"shape_{head}{stride}"], [f"r_{head}{stride}" if head == "score" else last]))
            if head == "score":
                nodes.append(helper.make_node("Sigmoid", [f"r_{head}{stride}"], [last]))
            outputs[head].append(helper.make_tensor_value_info(last, TensorProto.FLOAT, [side * side * 2, k // 2]))
    graph = helper.make_graph(
        nodes, "tiny_scrfd", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 160, 160])],
        outputs["score"] + outputs["bbox"] + outputs["kps"], inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(folder / "det_10g.onnx"))
    if dense:
        bias = np.zeros(3309, np.float32)
        bias[-68 * 3:] = (get_object("meanshape_68.pkl") * 0.5).ravel()
        graph = helper.make_graph(
            [
                helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
                helper.make_node("Flatten", ["pooled"], ["flat"]),
                helper.make_node("Gemm", ["flat", "w", "b"], ["fc1"]),
            ],
            "tiny_1k3d68", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 192, 192])],
            [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 3309])],
            [numpy_helper.from_array(np.zeros((3, 3309), np.float32), "w"), numpy_helper.from_array(bias, "b")],
        )
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(folder / "1k3d68.onnx"))
    return folder


def test_insightface_reads_a_model_folder(tmp_path, clip_frames):
    folder = _tiny_insightface_folder(tmp_path / "pack")
    detector = _build("insightface", model_dir=str(folder), det_size=160)
    assert isinstance(detector, Detector) and detector.dense_landmarks
    image = next(iter(clip_frames.values()))[0]
    faces = detector.detect(image)
    assert faces and [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
    for face in faces:
        assert face.score == pytest.approx(1 / (1 + np.exp(-3.0)), abs=1e-4)
        assert face.box.dtype == np.float32 and face.landmarks5.shape == (5, 2) and face.landmarks68.shape == (68, 2)
        side = face.box[2] - face.box[0]  # 4 strides in detector px; the five points sit at fixed stride offsets
        offsets = (face.landmarks5 - face.centre) / (side / 4)
        np.testing.assert_allclose(offsets, [[-1, -0.5], [1, -0.5], [0, 0.2], [-0.8, 1], [0.8, 1]], atol=1e-3)
        assert np.all(np.abs(face.landmarks68 - face.centre) < side)
    sparse = _build("insightface", model_dir=str(_tiny_insightface_folder(tmp_path / "det-only", dense=False)), det_size=160)
    assert not sparse.dense_landmarks and sparse.detect(image)[0].landmarks68 is None


def test_auto_picks_insightface_from_the_env_folder(monkeypatch, tmp_path):
    from latentdub.plugins.dlib_detector import DlibDetector
    from latentdub.plugins.insightface_detector import InsightfaceDetector

    folder = _tiny_insightface_folder(tmp_path / "pack")
    monkeypatch.setenv("LATENTDUB_INSIGHTFACE_DIR", str(folder))
    messages: list[str] = []
    assert isinstance(_build("auto", log=messages.append), InsightfaceDetector)
    assert messages == [f"detector auto: insightface from {folder}"]
    # five points only and dense landmarks preferred: dlib wins
    sparse = _tiny_insightface_folder(tmp_path / "det-only", dense=False)
    assert isinstance(_build("auto", model_dir=str(sparse)), DlibDetector)
    assert isinstance(_build("auto", model_dir=str(sparse), prefer_dense=False), InsightfaceDetector)
