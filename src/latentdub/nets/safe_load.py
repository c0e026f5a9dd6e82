"""Safe checkpoint reading shared by every model: ``torch.load`` without code execution, strict state-dict loading with clear errors."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping

from latentdub.toolkit.core.errors import BadInputError, MissingWeightsError

#: Keys shown in a mismatch message before it says "and N more".
SHOWN_KEYS = 5


def torch_load(path: Path | str, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with ``argparse.Namespace`` allowed (rosinality's ``args``).

    Raises :class:`MissingWeightsError` when the file is absent and :class:`BadInputError`
    when it is not a readable tensor checkpoint.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"{path}: weight file not found; fetch it with `latentdub weights fetch NAME` or give an existing path")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        if "Weights only load failed" in str(exc):
            raise BadInputError(
                f"{path}: holds pickled Python objects, not just tensors, and unpickling them could run code; "
                "re-save the weights with torch.save(state_dict) or as .safetensors"
            ) from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(f"{path}: not a readable tensor checkpoint ({first[:200]}); give a .pt saved with torch.save or a .safetensors file") from exc


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else "")


def load_strict(module: Any, state: Mapping[str, Any], path: Path | str, what: str, assign: bool = False) -> None:
    """Load ``state`` into ``module`` requiring identical keys and shapes.

    ``assign=True`` adopts the given tensors (use it for modules built on the meta device).
    Raises :class:`BadInputError` naming ``path``, ``what`` (e.g. ``"g_ema"``) and the first
    missing / unexpected / mis-shaped keys.
    """
    import torch

    if not isinstance(state, Mapping):
        raise BadInputError(f"{path}: holds a {type(state).__name__}, not a {what}; check the file is the right checkpoint for this model")
    own = module.state_dict()
    # files from old PyTorch versions lack BatchNorm's counter; it does not affect inference
    state = dict(state)
    for k in own:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros((), dtype=torch.long)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems: list[str] = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch (file vs model): {_listed(shapes)}")
    if problems:
        raise BadInputError(f"{path}: {what} does not match the architecture ({'; '.join(problems)}); check the file is the right checkpoint for this model")
    module.load_state_dict(state, strict=True, assign=assign)


def strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Entries of ``state`` whose key starts with ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
