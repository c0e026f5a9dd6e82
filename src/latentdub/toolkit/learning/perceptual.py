"""LPIPS perceptual distance (Zhang et al. 2018) built strictly offline.

The ``lpips`` package ships its calibrated linear heads but not the
ImageNet backbones, which it would fetch through torchvision. Here the
backbone is always built without pretrained weights (nothing is
downloaded) and then filled from a local torchvision checkpoint:
``vgg16-397923af.pth`` (registered as ``vgg16-torchvision``) or
``alexnet-owt-7be5be79.pth`` (``alexnet-torchvision``), found through the
weights registry or torch's own hub cache. ``random_backbone=True`` keeps
the random trunk: the distance is then no perceptual metric, only a
deterministic image distance fit for wiring tests and timing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional

from ..core.config import NAMES_WEIGHTS, Range
from ..core.errors import BadInputError, MissingWeightsError

#: Registered weight name of each backbone and its torchvision file name.
BACKBONES = {
    "vgg": ("vgg16-torchvision", "vgg16-397923af.pth"),
    "alex": ("alexnet-torchvision", "alexnet-owt-7be5be79.pth"),
}

#: Side (px) LPIPS is computed at by :func:`lpips_distance` by default (PTI's choice).
LPIPS_SIZE = 256


def find_backbone(net: str) -> Path:
    """Local path of the torchvision checkpoint of ``net``: weights registry, then torch's hub cache.

    Raises :class:`MissingWeightsError` naming the file and where to put it.
    """
    from ..core import weights

    name, filename = BACKBONES[net]
    try:
        return weights.resolve(name, offline=True)
    except MissingWeightsError as exc:
        missing = exc
    import torch.hub

    hub = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if hub.is_file():
        return hub
    raise MissingWeightsError(
        f"LPIPS backbone {filename} not found (weight {name!r}, nor {hub}); copy torchvision's ImageNet {filename} "
        f"into {weights.WEIGHTS_DIR_ENV} or the latentdub cache, or set the lpips weights path ({missing})"
    )


@contextlib.contextmanager
def _quiet_torchvision():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(pretrained|weights).*", category=UserWarning)
        yield


def _load_backbone(model: Any, path: Path) -> None:
    """Copy torchvision ``features.N.*`` tensors into lpips's ``net.sliceK.N.*`` modules."""
    from latentdub.nets.safe_load import torch_load

    state = torch_load(path)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BadInputError(f"{path}: not a torchvision state dict; give torchvision's ImageNet {model.pnet_type} checkpoint")
    mapped, missing = {}, []
    for name, tensor in model.net.state_dict().items():
        _, index, kind = name.split(".")  # sliceK.N.weight
        key = f"features.{index}.{kind}"
        if key not in state or tuple(state[key].shape) != tuple(tensor.shape):
            missing.append(key)
        else:
            mapped[name] = state[key]
    if missing:
        raise BadInputError(
            f"{path}: missing or mis-shaped backbone tensors ({', '.join(missing[:3])}); give torchvision's ImageNet checkpoint for lpips net {model.pnet_type!r}"
        )
    model.net.load_state_dict(mapped, strict=True)


def _load_heads(model: Any, net: str) -> None:
    """Load the calibrated linear heads shipped inside the lpips wheel (v0.1)."""
    import importlib.util

    import torch

    spec = importlib.util.find_spec("lpips")
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin).parent / "weights" / "v0.1" / f"{net}.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    unexpected = model.load_state_dict(state, strict=False).unexpected_keys
    if unexpected:
        raise BadInputError(f"{path}: unexpected LPIPS head keys {unexpected[:3]}; reinstall the lpips package")


def build_lpips(
    device: Any = "cpu",
    net: str = "vgg",
    backbone_weights: Optional[Path | str] = None,
    random_backbone: bool = False,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> Any:
    """A frozen, eval-mode ``lpips.LPIPS`` module: ``model(a, b) -> [B, 1, 1, 1]`` for images ``[B, 3, H, W]`` in [-1, 1].

    ``net`` is ``vgg`` (PTI's loss) or ``alex`` (the usual metric).
    ``backbone_weights`` is a torchvision checkpoint path or registered
    weight name (default: :func:`find_backbone`). ``random_backbone`` uses a
    randomly initialised trunk seeded by ``seed`` (tests and timing only: it
    is not a perceptual metric; the module's ``random_backbone`` attribute
    says so). Never downloads anything. Use :func:`lpips_distance` for ``[B]``
    distances at a bounded resolution.
    """
    import torch

    if net not in BACKBONES:
        raise BadInputError(f"lpips net {net!r}: choose one of {', '.join(BACKBONES)}")
    import lpips

    with _quiet_torchvision(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # pretrained=False: no head loading by lpips itself; pnet_rand=True: torchvision builds weights=None
        model = lpips.LPIPS(pretrained=False, net=net, pnet_rand=True, verbose=False)
    _load_heads(model, net)
    if random_backbone:
        log(f"LPIPS ({net}) uses a RANDOM backbone: a deterministic image distance for tests and timing, not a perceptual metric")
    else:
        from ..core import weights

        path = weights.resolve(backbone_weights) if backbone_weights is not None else find_backbone(net)
        _load_backbone(model, Path(path))
    model.random_backbone = random_backbone
    return model.eval().requires_grad_(False).to(device)


def lpips_distance(model: Any, a: Any, b: Any, size: Optional[int] = LPIPS_SIZE) -> Any:
    """LPIPS of ``a`` vs ``b`` (``[B, 3, H, W]`` in [-1, 1]) -> float32 ``[B]``, area-downsampled to ``size`` px when larger.

    ``size=None`` keeps the full resolution; downsampling bounds memory at 1024 px.
    """
    import torch.nn.functional as F

    if size is not None and a.shape[-1] > size:
        a = F.interpolate(a, size=(size, size), mode="area")
        b = F.interpolate(b, size=(size, size), mode="area")
    return model(a, b).reshape(a.shape[0]).float()


@dataclasses.dataclass(frozen=True)
class LpipsSettings:
    """The LPIPS settings a learning component's config shares (extend it; the keys stay flat in presets).

    ``lpips_net``: ``vgg`` or ``alex``; ``lpips_weights``: torchvision
    backbone file or weight name (None: the registry's, see
    :data:`BACKBONES`); ``lpips_random_backbone``: untrained trunk (tests and
    timing only: the distance is then no perceptual metric); ``lpips_size``:
    side in px LPIPS is computed at (larger images are area-downsampled).
    """

    lpips_net: Literal["vgg", "alex"] = "vgg"
    lpips_weights: Annotated[Optional[str], NAMES_WEIGHTS] = None
    lpips_random_backbone: bool = False
    lpips_size: Annotated[int, Range(ge=32, le=1024)] = LPIPS_SIZE

    def require_backbone(self, weights: Callable[[str], Path]) -> None:
        """Fail now (MissingWeightsError) when the backbone file is absent, before any work; ``weights`` resolves names."""
        if self.lpips_random_backbone:
            return
        if self.lpips_weights is not None:
            weights(self.lpips_weights)
        else:
            find_backbone(self.lpips_net)

    def build_lpips(self, device: Any, seed: int = 0, log: Callable[[str], None] = print) -> Any:
        """The LPIPS module these settings describe, on ``device`` (see :func:`build_lpips`)."""
        return build_lpips(device, net=self.lpips_net, backbone_weights=self.lpips_weights, random_backbone=self.lpips_random_backbone, seed=seed, log=log)
