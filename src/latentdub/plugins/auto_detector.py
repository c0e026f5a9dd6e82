"""The "auto" detector: the best detector this machine can run, chosen at build time.

Order with ``prefer_dense`` (default): insightface when a model folder is
configured (``model_dir`` or env ``LATENTDUB_INSIGHTFACE_DIR``) and holds a
detection model, then dlib (68 points), then MTCNN (5 points). Without
``prefer_dense`` MTCNN comes before dlib. The choice is logged.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Optional

from latentdub.toolkit.core.errors import MissingWeightsError, PluginError
from latentdub.toolkit.core.hookspecs import hookimpl

ENV_DIR = "LATENTDUB_INSIGHTFACE_DIR"


@dataclasses.dataclass(frozen=True)
class AutoConfig:
    """Settings of the auto detector.

    ``model_dir``: insightface model folder (falls back to env
    ``LATENTDUB_INSIGHTFACE_DIR``; a folder given here must exist);
    ``prefer_dense``: prefer detectors with 68 landmarks (dlib before MTCNN).
    """

    model_dir: Optional[Path] = None
    prefer_dense: bool = True


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def build_auto(config: AutoConfig, context):
    """Build insightface, dlib or MTCNN, whichever fits this machine best."""
    from latentdub.plugins import dlib_detector, insightface_detector, mtcnn_detector

    folder = config.model_dir or (Path(os.environ[ENV_DIR]).expanduser() if os.environ.get(ENV_DIR) else None)
    if folder is not None:
        try:
            insightface_detector.detection_model(folder)
        except MissingWeightsError as exc:
            if config.model_dir is not None:
                raise
            context.log(f"detector auto: ignoring {ENV_DIR} ({exc})")
        else:
            dense = (Path(folder) / insightface_detector.DENSE_MODEL).is_file()
            if dense or not config.prefer_dense or not _installed("dlib"):
                context.log(f"detector auto: insightface from {folder}")
                return insightface_detector.build_insightface(insightface_detector.InsightfaceConfig(model_dir=Path(folder)), context)
    order = ["dlib", "mtcnn"] if config.prefer_dense else ["mtcnn", "dlib"]
    modules = {"dlib": "dlib", "mtcnn": "facenet_pytorch"}
    for name in order:
        if not _installed(modules[name]):
            continue
        context.log(f"detector auto: {name}")
        if name == "dlib":
            return dlib_detector.build_dlib(dlib_detector.DlibConfig(), context)
        return mtcnn_detector.build_mtcnn(mtcnn_detector.MtcnnConfig(), context)
    raise PluginError("detector auto: no face detector available; install dlib-bin or facenet-pytorch, or set detector.model_dir")


@hookimpl
def register_detectors(register):
    register("auto", build_auto, config=AutoConfig, summary="insightface if a model folder is set, else dlib, else MTCNN")
