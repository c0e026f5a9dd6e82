"""Shared checkpoint helpers: safe ``torch.load``, strict state-dict loading with clear errors,
and :func:`load_generator`, which reads any supported generator file.

Supported generator files (detected from content, not the name):

- rosinality stylegan2-pytorch ``.pt`` (``{'g_ema': ..., 'latent_avg': ...}``),
- pSp / e4e ``.pt`` (``{'state_dict': {'decoder.*': ...}, 'latent_avg', 'opts'}``): the decoder,
- our ``.safetensors`` (state dict + JSON config in the metadata),
- NVIDIA stylegan2-ada-pytorch ``.pkl`` (only with ``allow_pickle=True``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping, Optional

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


def load_generator(path: Path | str, map_location: Any = "cpu", allow_pickle: bool = False) -> tuple[Any, Optional[Any]]:
    """Read a generator from any supported file -> ``(Generator, latent_avg [style_dim] | None)``.

    Raises :class:`BadInputError` naming the file for unknown layouts and (without
    ``allow_pickle``) for ``.pkl`` files.
    """
    path = Path(path)
    if path.suffix == ".pkl":
        from .nvidia_pkl import load_nvidia_pkl

        return load_nvidia_pkl(path, map_location=map_location, allow_pickle=allow_pickle)
    if path.suffix == ".safetensors":
        from .stylegan2 import load_safetensors

        return load_safetensors(path, map_location=map_location)
    from .stylegan2 import generator_from_state_dict

    ckpt = torch_load(path, map_location)
    if isinstance(ckpt, Mapping) and "g_ema" in ckpt:
        from .stylegan2 import load_rosinality_checkpoint

        return load_rosinality_checkpoint(path, map_location=map_location, checkpoint=ckpt)
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get("state_dict"), Mapping) and any(k.startswith("decoder.") for k in ckpt["state_dict"]):
        decoder = strip_prefix(ckpt["state_dict"], "decoder.")
        gen = generator_from_state_dict(decoder, path, what="decoder of the pSp/e4e checkpoint")
        avg = ckpt.get("latent_avg")
        if avg is not None:
            avg = avg.float().reshape(-1, avg.shape[-1])[0]
            gen.latent_avg = avg.clone()
        return gen.to(map_location).eval(), avg
    raise BadInputError(f"{path}: unknown generator checkpoint layout (expected a rosinality dict with 'g_ema', a pSp/e4e dict with 'state_dict', .safetensors or .pkl)")
