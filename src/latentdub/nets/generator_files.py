"""Generator files of every supported format, detected from content, not the name.

- rosinality stylegan2-pytorch ``.pt`` (``{'g_ema': ..., 'latent_avg': ...}``),
- pSp / e4e ``.pt`` (``{'state_dict': {'decoder.*': ...}, 'latent_avg', 'opts'}``): the decoder,
- our ``.safetensors`` (state dict + JSON config in the metadata),
- NVIDIA stylegan2-ada-pytorch ``.pkl`` (only with ``allow_pickle=True``).

This loader depends on the models; the models never import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from latentdub.toolkit.core.errors import BadInputError

from .nvidia_pkl import load_nvidia_pkl
from .safe_load import strip_prefix, torch_load
from .stylegan2 import generator_from_state_dict, load_rosinality_checkpoint, load_safetensors


def load_generator(path: Path | str, map_location: Any = "cpu", allow_pickle: bool = False) -> tuple[Any, Optional[Any]]:
    """Read a generator from any supported file -> ``(Generator, latent_avg [style_dim] | None)``.

    Raises :class:`BadInputError` naming the file for unknown layouts and (without
    ``allow_pickle``) for ``.pkl`` files.
    """
    path = Path(path)
    if path.suffix == ".pkl":
        return load_nvidia_pkl(path, map_location=map_location, allow_pickle=allow_pickle)
    if path.suffix == ".safetensors":
        return load_safetensors(path, map_location=map_location)
    ckpt = torch_load(path, map_location)
    if isinstance(ckpt, Mapping) and "g_ema" in ckpt:
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
