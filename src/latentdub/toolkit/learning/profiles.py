"""Identity profiles: a generator tuned to one person (Stage 2), stored as safetensors.

A profile file holds

* ``delta/<key>`` tensors (``store: delta``, the default): tuned minus base
  weights, only for tensors that changed; or ``full/<key>``: every tensor of
  the tuned state dict (``store: full``); float32, or float16 when asked
  (a float16 delta keeps far more precision than float16 full weights);
* ``pivots``: float32 ``[N, L, 512]``, the W+ latents the generator was tuned
  around (one per tuning image or video keyframe);
* the JSON metadata under the safetensors metadata key ``latentdub.profile``:
  base generator fingerprint (SHA-256), generator config, keyframe indices,
  source file, tool version, date, final LPIPS and the finetuner's settings.

Loading never unpickles anything. :func:`apply_profile` refuses a profile made
for other base weights than the generator's.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

from ..core.errors import BadInputError, OutputError
from ..core.files import temp_beside

#: ``format`` value in the metadata of every profile file.
PROFILE_FORMAT = "latentdub-profile"
#: Version of the layout described above.
PROFILE_VERSION = 1
_META_KEY = "latentdub.profile"
#: Attribute set on a generator module once a profile is applied to it.
APPLIED_ATTR = "_latentdub_profile"

Store = Literal["delta", "full"]


@dataclasses.dataclass(frozen=True)
class Profile:
    """A loaded identity profile.

    ``tensors``: ``{state-dict key: tensor}`` (differences for ``store ==
    "delta"``, weights for ``"full"``), on the CPU in their stored dtype;
    ``pivots``: float32 ``[N, L, 512]``; ``meta``: the metadata dictionary
    (keys ``base_fingerprint``, ``generator``, ``keyframes``, ``source``,
    ``tool_version``, ``created``, ``final_lpips``, ``finetuner`` ...).
    """

    path: Path
    store: Store
    tensors: dict[str, Any]
    pivots: Any
    meta: dict[str, Any]

    @property
    def base_fingerprint(self) -> str:
        """SHA-256 of the base generator weights the profile was tuned from."""
        return str(self.meta["base_fingerprint"])


def _describe_base(meta: Mapping[str, Any]) -> str:
    gen = meta.get("generator") or {}
    size = gen.get("size")
    return f"{str(meta.get('base_fingerprint', '?'))[:12]}" + (f" ({size} px)" if size else "")


def save_profile(
    out: str | os.PathLike,
    tuned: Mapping[str, Any],
    base: Mapping[str, Any],
    pivots: Any,
    base_fingerprint: str,
    generator_config: Mapping[str, Any],
    store: Store = "delta",
    half: bool = False,
    meta: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write a profile to ``out`` atomically and return its path.

    ``tuned`` / ``base``: state dicts (same keys and shapes) of the tuned and
    base generator modules; ``pivots``: ``[N, L, 512]``; ``store``:
    ``delta`` (changed tensors only, tuned - base) or ``full``; ``half``:
    store float16; ``meta``: extra JSON-ready fields (keyframes, source,
    final_lpips ...). A failure leaves nothing at ``out``.
    """
    import torch
    from safetensors.torch import save_file

    from latentdub import __version__

    out = Path(out).expanduser()
    if store not in ("delta", "full"):
        raise BadInputError(f"profile store {store!r}: choose 'delta' or 'full'")
    if out.is_dir():
        raise OutputError(f"{out}: is a folder; give a profile file name such as {out / 'person.profile'}")
    if not out.parent.is_dir():
        raise OutputError(f"{out}: folder {out.parent} does not exist; create it first")
    if set(tuned) != set(base):
        raise BadInputError("save_profile: tuned and base state dicts have different keys; tune a copy of the base generator")
    dtype = torch.float16 if half else torch.float32
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, value in tuned.items():
            if not torch.is_floating_point(value):
                continue
            value = value.detach().float().cpu()
            reference = base[key].detach().float().cpu()
            if store == "full":
                tensors[f"full/{key}"] = value.to(dtype).contiguous()
            elif not torch.equal(value, reference):
                tensors[f"delta/{key}"] = (value - reference).to(dtype).contiguous()
    tensors["pivots"] = torch.as_tensor(pivots).detach().float().cpu().contiguous()
    info = {
        "format": PROFILE_FORMAT,
        "version": PROFILE_VERSION,
        "store": store,
        "dtype": "float16" if half else "float32",
        "base_fingerprint": base_fingerprint,
        "generator": dict(generator_config),
        "tool_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "n_pivots": int(tensors["pivots"].shape[0]),
        **dict(meta or {}),
    }
    tmp = temp_beside(out)
    try:
        save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(info, default=str)})
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def read_profile_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata dictionary of a profile file without loading its tensors."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
    except Exception as exc:
        raise BadInputError(f"{path}: not a latentdub profile (unreadable as safetensors: {str(exc)[:120]}); create one with `latentdub tune`") from None
    return _parse_meta(path, raw)


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise BadInputError(f"{path}: profile file not found; create one with `latentdub tune IMAGE_OR_VIDEO -o {path}`")
    return path


def _parse_meta(path: Path, raw: Optional[str]) -> dict[str, Any]:
    try:
        meta = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != PROFILE_FORMAT:
        raise BadInputError(f"{path}: not a latentdub profile (no {_META_KEY} metadata); create one with `latentdub tune`")
    if int(meta.get("version", 0)) > PROFILE_VERSION:
        raise BadInputError(f"{path}: profile version {meta.get('version')} is newer than this latentdub reads ({PROFILE_VERSION}); upgrade latentdub")
    return meta


def load_profile(path: str | os.PathLike) -> Profile:
    """Read a profile (safetensors only, no pickles) into a :class:`Profile` on the CPU."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = _parse_meta(path, (f.metadata() or {}).get(_META_KEY))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except BadInputError:
        raise
    except Exception as exc:
        raise BadInputError(f"{path}: not a latentdub profile (unreadable as safetensors: {str(exc)[:120]}); create one with `latentdub tune`") from None
    store = meta.get("store")
    if store not in ("delta", "full") or "pivots" not in tensors:
        raise BadInputError(f"{path}: damaged profile (store {store!r}, pivots {'present' if 'pivots' in tensors else 'missing'}); re-create it with `latentdub tune`")
    prefix = f"{store}/"
    weights = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    return Profile(path=path, store=store, tensors=weights, pivots=tensors["pivots"], meta=meta)


def apply_profile(generator: Any, profile: str | os.PathLike | Profile) -> Profile:
    """Load an identity profile into ``generator.module`` in place and return it.

    Raises :class:`BadInputError` (one line: the base the profile was made
    for, the base that is loaded, and the fix) when the generator's
    :meth:`fingerprint` differs from the profile's, when its tensors do not
    fit the module, or when the module already carries a profile.
    """
    import torch

    if not isinstance(profile, Profile):
        profile = load_profile(profile)
    loaded = generator.fingerprint()
    if loaded != profile.base_fingerprint:
        raise BadInputError(
            f"{profile.path}: profile was tuned for base generator {_describe_base(profile.meta)} but the loaded generator is "
            f"{loaded[:12]} ({generator.size} px); load the generator checkpoint the profile was made with, "
            f"or re-run `latentdub tune` with this generator"
        )
    module = generator.module
    previous = getattr(module, APPLIED_ATTR, None)
    if previous is not None:
        raise BadInputError(f"{profile.path}: the generator already carries profile {previous}; build a fresh generator to apply another profile")
    state = module.state_dict()
    for key, value in profile.tensors.items():
        if key not in state or tuple(state[key].shape) != tuple(value.shape):
            raise BadInputError(f"{profile.path}: tensor {key!r} does not fit the generator ({'absent' if key not in state else f'shape {tuple(state[key].shape)} vs {tuple(value.shape)}'}); re-create the profile with this generator")
    with torch.no_grad():
        for key, value in profile.tensors.items():
            target = state[key]
            value = value.to(target.device)
            if profile.store == "delta":  # summed in float64 so base + (tuned - base) rounds back to tuned
                target.copy_((target.double() + value.double()).to(target.dtype))
            else:
                target.copy_(value.to(target.dtype))
    setattr(module, APPLIED_ATTR, str(profile.path))
    return profile
