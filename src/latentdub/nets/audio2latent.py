"""Stage 1 of the paper: speech -> displacement of the identity latent in a PCA subspace of W+.

``wbar_t = w_I + V^T D(E_A(a)_t, V (w_I - mean))`` where

* ``E_A`` (:class:`AudioEncoder`): a small conv stack over each frame's MFCC
  window ``[window, coeffs]`` (ATVGnet style) -> one vector per frame, then an
  LSTM or GRU over time -> an audio code per frame;
* ``V`` (buffers ``pca_mean`` ``[L*D]``, ``pca_basis`` ``[k, L*D]`` with
  orthonormal rows, ``pca_std`` ``[k]``): a PCA basis of W+ fitted on training
  latents (:func:`fit_pca`), non-zero only on the moving layers
  (``spec.layers``), so every other layer gets zero displacement;
* ``D`` (:class:`Audio2Latent.decoder`): 3 dense layers from
  ``[audio code, V (w_I - mean) / std]`` to whitened subspace coefficients;
  the network returns coefficients ``c = z * std`` and ``V^T c`` is the
  displacement in W+.

Checkpoints are safetensors files holding the state dict (PCA buffers
included) and, in the metadata, the :class:`Audio2LatentSpec` as JSON, so a
file describes itself (:func:`save_checkpoint`, :func:`load_checkpoint`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

#: ``format`` value in the metadata of an audio2latent checkpoint.
FORMAT = "latentdub.audio2latent"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Audio2LatentSpec:
    """Architecture of :class:`Audio2Latent` (saved in every checkpoint).

    ``n_styles`` ``L`` and ``latent_dim`` ``D``: the W+ shape ``[L, D]``;
    ``layers``: W+ layers the motion moves; ``components`` ``k``: PCA
    dimensions; ``window`` x ``coeffs``: MFCC window per frame;
    ``conv_channels``: channels of the stride-2 3x3 conv stack;
    ``audio_dim``: per-frame audio vector and recurrent width; ``rnn``:
    ``lstm`` or ``gru``; ``rnn_layers``; ``bidirectional``: the recurrent
    layer also sees the future (lip shapes lead the sound); ``hidden``: width
    of the decoder's dense layers.
    """

    n_styles: int
    latent_dim: int = 512
    layers: tuple[int, ...] = tuple(range(8))
    components: int = 64
    window: int = 28
    coeffs: int = 12
    conv_channels: tuple[int, ...] = (64, 128, 256)
    audio_dim: int = 256
    rnn: str = "lstm"
    rnn_layers: int = 1
    bidirectional: bool = True
    hidden: int = 512

    def __post_init__(self) -> None:
        if not self.layers or min(self.layers) < 0 or max(self.layers) >= self.n_styles:
            raise ValueError(f"layers {list(self.layers)} must be non-empty indices below n_styles={self.n_styles}")
        if self.rnn not in ("lstm", "gru"):
            raise ValueError(f"rnn must be 'lstm' or 'gru', got {self.rnn!r}")
        if self.components < 1 or self.components > len(self.layers) * self.latent_dim:
            raise ValueError(f"components must be in 1..{len(self.layers) * self.latent_dim}, got {self.components}")

    def to_json(self) -> str:
        """JSON text of the spec."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "Audio2LatentSpec":
        """Spec from a mapping (lists become tuples; unknown keys are an error)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown audio2latent spec keys {unknown}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


class AudioEncoder(nn.Module):
    """E_A: MFCC windows ``[B, T, window, coeffs]`` -> audio codes ``[B, T, out_dim]``."""

    def __init__(self, spec: Audio2LatentSpec) -> None:
        super().__init__()
        convs: list[nn.Module] = []
        c_in, h, w = 1, spec.window, spec.coeffs
        for c_out in spec.conv_channels:
            convs += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(1, c_out), nn.LeakyReLU(0.2)]
            c_in, h, w = c_out, math.ceil(h / 2), math.ceil(w / 2)
        self.conv = nn.Sequential(*convs)
        self.frame = nn.Sequential(nn.Flatten(), nn.Linear(c_in * h * w, spec.audio_dim), nn.LeakyReLU(0.2))
        rnn = nn.LSTM if spec.rnn == "lstm" else nn.GRU
        self.rnn = rnn(spec.audio_dim, spec.audio_dim, num_layers=spec.rnn_layers, batch_first=True, bidirectional=spec.bidirectional)
        self.out_dim = spec.audio_dim * (2 if spec.bidirectional else 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, t, h, w = features.shape
        x = self.conv(features.reshape(b * t, 1, h, w))  # [B*T, C, h', w']
        x = self.frame(x).reshape(b, t, -1)  # [B, T, audio_dim]
        out, _ = self.rnn(x)
        return out  # [B, T, out_dim]


class Audio2Latent(nn.Module):
    """E_A + D with the PCA subspace V as buffers.

    ``forward(features [B, T, window, coeffs], identity [B, L, D])`` ->
    subspace coefficients float ``[B, T, k]``; :meth:`expand` maps them to
    W+ displacements ``[..., L, D]``.
    """

    def __init__(self, spec: Audio2LatentSpec) -> None:
        super().__init__()
        self.spec = spec
        k, dim = spec.components, spec.n_styles * spec.latent_dim
        self.audio = AudioEncoder(spec)
        self.decoder = nn.Sequential(
            nn.Linear(self.audio.out_dim + k, spec.hidden), nn.LeakyReLU(0.2),
            nn.Linear(spec.hidden, spec.hidden), nn.LeakyReLU(0.2),
            nn.Linear(spec.hidden, k),
        )
        with torch.no_grad():  # start near "no displacement"
            self.decoder[-1].weight.mul_(0.1)
            self.decoder[-1].bias.zero_()
        self.register_buffer("pca_mean", torch.zeros(dim))
        self.register_buffer("pca_basis", torch.zeros(k, dim))
        self.register_buffer("pca_std", torch.ones(k))

    def set_pca(self, mean: torch.Tensor, basis: torch.Tensor, std: torch.Tensor) -> None:
        """Install V: ``mean`` ``[L*D]``, ``basis`` ``[k, L*D]`` (orthonormal rows), ``std`` ``[k]`` (> 0)."""
        k, dim = self.pca_basis.shape
        if tuple(mean.shape) != (dim,) or tuple(basis.shape) != (k, dim) or tuple(std.shape) != (k,):
            raise ValueError(f"PCA shapes {tuple(mean.shape)}, {tuple(basis.shape)}, {tuple(std.shape)} do not fit k={k}, L*D={dim}")
        self.pca_mean.copy_(mean)
        self.pca_basis.copy_(basis)
        self.pca_std.copy_(std.clamp_min(1e-6))

    def project(self, w: torch.Tensor) -> torch.Tensor:
        """V (w - mean): W+ ``[..., L, D]`` -> coefficients ``[..., k]``."""
        flat = w.reshape(*w.shape[:-2], -1).to(self.pca_basis.dtype) - self.pca_mean
        return flat @ self.pca_basis.T

    def expand(self, coeffs: torch.Tensor) -> torch.Tensor:
        """V^T c: coefficients ``[..., k]`` -> W+ displacement ``[..., L, D]`` (zero off the moving layers)."""
        out = coeffs.to(self.pca_basis.dtype) @ self.pca_basis
        return out.reshape(*coeffs.shape[:-1], self.spec.n_styles, self.spec.latent_dim)

    def forward(self, features: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        audio = self.audio(features)  # [B, T, A]
        ident = (self.project(identity) / self.pca_std).to(audio.dtype)  # [B, k]
        ident = ident[:, None, :].expand(-1, audio.shape[1], -1)
        z = self.decoder(torch.cat([audio, ident], dim=-1))  # [B, T, k] whitened
        return z * self.pca_std.to(z.dtype)

    def latents(self, features: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """wbar ``[B, T, L, D]`` = w_I + V^T D(E_A(a), V w_I)."""
        return identity[:, None].to(self.pca_basis.dtype) + self.expand(self(features, identity))


def fit_pca(latents: torch.Tensor, groups: Optional[torch.Tensor], layers: Sequence[int], components: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """PCA of W+ restricted to ``layers``.

    ``latents``: float ``[N, L, D]``; ``groups``: int ``[N]`` clip index of
    each row, or None. With groups the directions come from each clip's
    deviations from its own mean (the motion within a clip, not the spread
    between identities); the returned ``mean`` is the global mean either way.
    Returns ``mean`` ``[L*D]``, ``basis`` ``[k, L*D]`` (orthonormal rows, zero
    off ``layers``), ``std`` ``[k]`` (standard deviation along each row) and
    the fraction of the (centred) variance on ``layers`` the basis explains.
    """
    n, n_styles, dim = latents.shape
    x = latents.double()
    mean = x.mean(0)
    if groups is None:
        centred = x - mean
    else:
        sums = torch.zeros(int(groups.max()) + 1, n_styles, dim, dtype=torch.float64).index_add_(0, groups, x)
        counts = torch.bincount(groups, minlength=sums.shape[0]).clamp_min(1).double()
        centred = x - (sums / counts[:, None, None])[groups]
    sel = centred[:, list(layers)].reshape(n, -1)  # [N, |layers| * D]
    if components > min(sel.shape):
        raise ValueError(f"PCA with {components} components needs more than {components} frames; got {n} frames")
    _, s, vh = torch.linalg.svd(sel, full_matrices=False)
    basis = torch.zeros(components, n_styles, dim, dtype=torch.float64)
    basis[:, list(layers)] = vh[:components].reshape(components, len(layers), dim)
    std = s[:components] / math.sqrt(max(n - 1, 1))
    explained = float((s[:components] ** 2).sum() / (s**2).sum().clamp_min(1e-30))
    return mean.reshape(-1).float(), basis.reshape(components, -1).float(), std.float(), explained


def random_pca(spec: Audio2LatentSpec, seed: int = 0, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random orthonormal subspace on ``spec.layers`` (for untrained ``random_init`` models)."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(len(spec.layers) * spec.latent_dim, spec.components, generator=gen, dtype=torch.float64)
    q, _ = torch.linalg.qr(rows)
    basis = torch.zeros(spec.components, spec.n_styles, spec.latent_dim, dtype=torch.float64)
    basis[:, list(spec.layers)] = q.T.reshape(spec.components, len(spec.layers), spec.latent_dim)
    mean = torch.zeros(spec.n_styles * spec.latent_dim)
    return mean, basis.reshape(spec.components, -1).float(), torch.full((spec.components,), float(scale))


def window_slices(n_frames: int, window: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Overlapping chunks covering ``n_frames``: ``(lo, hi, keep_lo, keep_hi)`` each.

    The network runs on frames ``lo:hi`` (at most ``window + 2 * overlap``)
    and its output for frames ``keep_lo:keep_hi`` (consecutive, disjoint,
    covering everything) is kept, so every kept frame sees ``overlap``
    frames of context on each side where the speech has them.
    """
    out = []
    for start in range(0, n_frames, window):
        stop = min(start + window, n_frames)
        out.append((max(0, start - overlap), min(n_frames, stop + overlap), start, stop))
    return out


@torch.no_grad()
def predict_windows(model: Audio2Latent, features: torch.Tensor, identity: torch.Tensor, window: int, overlap: int, batch: int) -> torch.Tensor:
    """Coefficients float32 ``[T, k]`` for features ``[T, window, coeffs]`` and one identity ``[L, D]``.

    Chunks of equal length run ``batch`` at a time; memory is bounded by
    ``batch * (window + 2 * overlap)`` frames whatever ``T`` is.
    """
    n = features.shape[0]
    out = torch.empty(n, model.spec.components, dtype=torch.float32)
    chunks = window_slices(n, window, overlap)
    by_length: dict[int, list[tuple[int, int, int, int]]] = {}
    for chunk in chunks:
        by_length.setdefault(chunk[1] - chunk[0], []).append(chunk)
    device = model.pca_basis.device
    ident = identity.to(device, torch.float32)[None]
    for group in by_length.values():
        for i in range(0, len(group), batch):
            part = group[i : i + batch]
            x = torch.stack([features[lo:hi] for lo, hi, _, _ in part]).to(device, torch.float32)
            coeffs = model(x, ident.expand(len(part), -1, -1)).float().cpu()
            for row, (lo, _, keep_lo, keep_hi) in zip(coeffs, part):
                out[keep_lo:keep_hi] = row[keep_lo - lo : keep_hi - lo]
    return out


def save_checkpoint(model: Audio2Latent, path: Path | str, extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``model`` (weights, PCA buffers, spec, ``extra`` JSON metadata) as safetensors, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {"format": FORMAT, "version": str(FORMAT_VERSION), "spec": model.spec.to_json(), "extra": json.dumps(dict(extra or {}), sort_keys=True)}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".part")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def read_metadata(path: Path | str) -> dict[str, str]:
    """The safetensors metadata of ``path`` (empty when it has none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_checkpoint(path: Path | str, map_location: Any = "cpu") -> tuple[Audio2Latent, dict[str, Any]]:
    """Model (eval mode) and its ``extra`` metadata from a :func:`save_checkpoint` file.

    Raises ``ValueError`` naming the file when it is not an audio2latent checkpoint.
    """
    from safetensors.torch import load_file

    path = Path(path)
    try:
        meta = read_metadata(path)
    except Exception as exc:
        raise ValueError(f"{path}: not a safetensors file ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an audio2latent checkpoint (format {meta.get('format')!r}); give a file written by `latentdub train`")
    if int(meta.get("version", "0")) > FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format version {meta['version']} is newer than this latentdub reads ({FORMAT_VERSION}); upgrade latentdub")
    model = Audio2Latent(Audio2LatentSpec.from_mapping(json.loads(meta["spec"])))
    state = load_file(str(path), device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint tensors do not match its spec (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(map_location).eval(), json.loads(meta.get("extra", "{}"))
