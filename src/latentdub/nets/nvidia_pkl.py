"""NVIDIA stylegan2-ada-pytorch generators -> our :class:`~latentdub.nets.stylegan2.Generator`.

Two entry points:

- :func:`convert_nvidia_state_dict`: a plain state dict with NVIDIA's names
  (``mapping.fc0.weight``, ``synthesis.b4.const``, ``synthesis.b8.conv0.affine.weight``,
  ``synthesis.b8.torgb.weight``, ...) to our rosinality-layout state dict. Pure tensor work.
- :func:`load_nvidia_pkl`: reads ``G_ema`` from an official ``.pkl``. Pickles can run arbitrary
  code, so this needs ``allow_pickle=True``; even then a restricted unpickler is used that
  never imports NVIDIA's ``dnnlib``/``torch_utils`` nor executes the source code embedded by
  their ``persistence`` module: persistent objects become inert records of their tensors,
  and unknown classes become inert placeholders.

Exactness: NVIDIA's modulated convs carry no ``1/sqrt(fan_in)`` gain (demodulation cancels it),
so conv weights are multiplied by ``sqrt(fan_in)`` here, which makes our ``scale * weight``
equal NVIDIA's weight and the demodulation epsilon act identically. ``conv_clamp`` (used by
some NVIDIA training configs, not by the converted official FFHQ models) is not applied.
StyleGAN3 and conditional (``c_dim > 0``) generators are not supported.
"""

from __future__ import annotations

import io
import math
import pickle
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from latentdub.toolkit.core.errors import BadInputError, MissingWeightsError

from .stylegan2 import BLUR_KERNEL, Generator, build_loaded, make_kernel

PICKLE_WARNING = "pickles can execute arbitrary code when loaded; only convert files you trust, with allow_pickle=True (generator setting allow_pickle: true)"


def _block_res(state: Mapping[str, Any]) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.match(r"synthesis\.b(\d+)\.", k))})


def nvidia_config(state: Mapping[str, Any]) -> dict[str, Any]:
    """Our :class:`Generator` arguments for an NVIDIA-layout state dict."""
    if "mapping.embed.weight" in state:
        raise BadInputError("conditional NVIDIA generators (mapping.embed) are not supported")
    if not any(k.startswith("synthesis.b4.") for k in state):
        raise BadInputError("not a StyleGAN2 (stylegan2-ada-pytorch) generator: no synthesis.b4.* tensors (StyleGAN3 is not supported)")
    res = _block_res(state)
    size = res[-1]
    n_mlp = sum(1 for k in state if re.fullmatch(r"mapping\.fc\d+\.weight", k))
    style_dim = int(state["mapping.fc0.weight"].shape[0])
    c4 = int(state["synthesis.b4.const"].shape[0])
    cm = 2
    if size >= 64:
        cm = max(1, int(state["synthesis.b64.conv1.weight"].shape[0]) * 2 // c4)
    return {"size": size, "style_dim": style_dim, "n_mlp": n_mlp, "channel_multiplier": cm, "channel_max": c4}


def convert_nvidia_state_dict(state: Mapping[str, Any], lr_mlp: float = 0.01) -> tuple[dict[str, torch.Tensor], dict[str, Any], Optional[torch.Tensor]]:
    """NVIDIA G state dict -> (our state dict, Generator config, ``w_avg [D]`` or None).

    Raises :class:`BadInputError` when a tensor is missing, left over, or has an unexpected shape.
    """
    config = nvidia_config(state)
    config["lr_mlp"] = lr_mlp
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in state:
            raise BadInputError(f"NVIDIA state dict lacks {key!r}")
        used.add(key)
        return state[key].detach().float()

    out: dict[str, torch.Tensor] = {}
    for i in range(config["n_mlp"]):
        out[f"style.{i + 1}.weight"] = take(f"mapping.fc{i}.weight")
        out[f"style.{i + 1}.bias"] = take(f"mapping.fc{i}.bias")
    avg = take("mapping.w_avg") if "mapping.w_avg" in state else None
    out["input.input"] = take("synthesis.b4.const")[None]

    def modconv(src: str, dst: str, demodulated: bool) -> None:
        w = take(f"{src}.weight")  # [O, I, k, k]
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        out[f"{dst}.conv.weight"] = (w * math.sqrt(fan_in) if demodulated else w)[None]
        out[f"{dst}.conv.modulation.weight"] = take(f"{src}.affine.weight")
        out[f"{dst}.conv.modulation.bias"] = take(f"{src}.affine.bias")

    def styled(src: str, dst: str, noise_idx: int) -> None:
        modconv(src, dst, demodulated=True)
        out[f"{dst}.noise.weight"] = take(f"{src}.noise_strength").reshape(1)
        out[f"{dst}.activate.bias"] = take(f"{src}.bias")
        out[f"noises.noise_{noise_idx}"] = take(f"{src}.noise_const")[None, None]

    def torgb(src: str, dst: str) -> None:
        modconv(src, dst, demodulated=False)
        out[f"{dst}.bias"] = take(f"{src}.bias").reshape(1, 3, 1, 1)

    styled("synthesis.b4.conv1", "conv1", 0)
    torgb("synthesis.b4.torgb", "to_rgb1")
    for k, res in enumerate(r for r in _block_res(state) if r > 4):
        styled(f"synthesis.b{res}.conv0", f"convs.{2 * k}", 2 * k + 1)
        styled(f"synthesis.b{res}.conv1", f"convs.{2 * k + 1}", 2 * k + 2)
        torgb(f"synthesis.b{res}.torgb", f"to_rgbs.{k}")
    # FIR filters are constants of the architecture: check them, then use ours (scaled as ours are)
    expected = make_kernel(BLUR_KERNEL)
    for key in [k for k in state if k.endswith("resample_filter")]:
        used.add(key)
        if tuple(state[key].shape) != tuple(expected.shape) or not torch.allclose(state[key].float().cpu(), expected, atol=1e-6):
            raise BadInputError(f"{key}: resample filter differs from [1, 3, 3, 1]; only the standard filter is supported")
    for name in _kernel_names(config):
        out[name] = expected * 4.0  # upsampling by 2 scales the kernel by 2**2
    leftover = sorted(set(state) - used)
    if leftover:
        raise BadInputError(f"NVIDIA state dict has tensors this converter does not know: {', '.join(leftover[:5])}")
    return out, config, avg


def _kernel_names(config: Mapping[str, Any]) -> list[str]:
    n_up = int(math.log2(config["size"])) - 2
    return [f"convs.{2 * k}.conv.blur.kernel" for k in range(n_up)] + [f"to_rgbs.{k}.upsample.kernel" for k in range(n_up)]


def generator_from_nvidia(state: Mapping[str, Any], path: Path | str = "<state dict>") -> tuple[Generator, Optional[torch.Tensor]]:
    """Build our generator from an NVIDIA-layout state dict -> ``(Generator in eval mode, w_avg | None)``."""
    try:
        converted, config, avg = convert_nvidia_state_dict(state)
    except BadInputError as exc:
        raise BadInputError(f"{path}: {exc}") from None
    gen = build_loaded(config, converted, path, "converted NVIDIA generator")
    if avg is not None:
        gen.latent_avg = avg.clone()
    return gen.eval(), avg


# --------------------------------------------------------------------------- restricted unpickling


class _Inert:
    """Stand-in for any class the unpickler does not allow: records arguments and state, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _Persistent(_Inert):
    """A ``torch_utils.persistence`` object: its class name and pickled ``__dict__`` (source never run)."""

    def __init__(self, meta: Any) -> None:
        super().__init__()
        meta = meta if isinstance(meta, dict) else {}
        self.class_name = meta.get("class_name", "?")
        self.state = meta.get("state")


def _load_storage_bytes(data: bytes) -> Any:
    # torch pickles storages as a nested torch.save blob: read it with the safe loader
    return torch.load(io.BytesIO(data), weights_only=True)


_ALLOWED = {
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _Persistent,
    ("dnnlib.util", "EasyDict"): dict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return getattr(torch, name)
        return type(name, (_Inert,), {"__module__": "latentdub.inert." + module})

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not supported in NVIDIA pickles")


def _module_tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """State-dict-like ``{name: tensor}`` of an unpickled (inert) module tree."""
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        return {}
    out: dict[str, torch.Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for name, tensor in (state.get(group) or {}).items():
            if isinstance(tensor, torch.Tensor):
                out[prefix + name] = tensor
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for name in non_persistent:
        out.pop(prefix + name, None)
    for name, child in (state.get("_modules") or {}).items():
        out.update(_module_tensors(child, f"{prefix}{name}."))
    return out


def read_nvidia_pkl(path: Path | str, allow_pickle: bool = False, key: str = "G_ema") -> dict[str, torch.Tensor]:
    """Tensors of ``key`` (default ``G_ema``) in an NVIDIA ``.pkl`` as a state dict with NVIDIA's names.

    Raises :class:`BadInputError` unless ``allow_pickle`` is True (pickles can run code).
    """
    path = Path(path)
    if not allow_pickle:
        raise BadInputError(f"{path}: refusing to unpickle: {PICKLE_WARNING}")
    if not path.is_file():
        raise MissingWeightsError(f"{path}: weight file not found")
    try:
        with open(path, "rb") as f:
            data = _RestrictedUnpickler(f).load()
    except Exception as exc:
        raise BadInputError(f"{path}: cannot read the pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict) or key not in data:
        raise BadInputError(f"{path}: no {key!r} entry; expected a stylegan2-ada-pytorch network pickle")
    state = _module_tensors(data[key])
    if not state:
        raise BadInputError(f"{path}: {key} holds no tensors")
    return state


def load_nvidia_pkl(path: Path | str, map_location: Any = "cpu", allow_pickle: bool = False) -> tuple[Generator, Optional[torch.Tensor]]:
    """Official stylegan2-ada-pytorch ``.pkl`` -> ``(Generator in eval mode, w_avg | None)``; needs ``allow_pickle=True``."""
    gen, avg = generator_from_nvidia(read_nvidia_pkl(path, allow_pickle), path)
    return gen.to(map_location), avg
