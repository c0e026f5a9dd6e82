"""Device selection: ``auto`` picks CUDA, then Apple MPS, then the CPU; nothing hard-codes CUDA."""

from __future__ import annotations

from .errors import BadInputError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


class CpuDevice(str):
    """The CPU, named without importing torch (about 1.6 s): a ``str`` equal to ``"cpu"``, which torch takes wherever a
    device goes, with the ``type`` and ``index`` of ``torch.device("cpu")``. Runs without networks never import torch."""

    type = "cpu"
    index = None

    def __new__(cls) -> "CpuDevice":
        return super().__new__(cls, "cpu")


def resolve_device(name: str = "auto"):
    """Return a ``torch.device`` for ``auto``/``cuda``/``cuda:N``/``mps``, and a :class:`CpuDevice` for ``cpu``.

    Raises :class:`BadInputError` when the requested accelerator is absent.
    """
    if name == "cpu":
        return CpuDevice()
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError(f"device {name!r} requested but CUDA is not available; use --set device=cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise BadInputError("device 'mps' requested but Apple MPS is not available; use --set device=cpu")
    if name.split(":")[0] not in DEVICE_CHOICES:
        raise BadInputError(f"unknown device {name!r} (choose from {', '.join(DEVICE_CHOICES)})")
    return torch.device(name)


def cuda_available() -> bool:
    """True when torch imports and sees a CUDA device (False on any failure: a batch driver only asks)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def set_tf32(enabled: bool) -> None:
    """Allow (or forbid) TF32 matrix and convolution maths on CUDA; no effect elsewhere."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def synchronize(device) -> None:
    """Wait for queued work on ``device`` (CUDA only), e.g. before reading a timer."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
