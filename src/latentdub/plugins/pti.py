"""Finetuner plugin ``pti``: Pivotal Tuning Inversion (Roich et al. 2021) for Stage 2.

1. Pivots: one W+ latent per tuning crop, from the image encoder (default),
   or by optimising a latent in W or W+ from the mean latent (LPIPS + L2,
   with per-layer noise maps optimised alongside under the StyleGAN2
   projector's noise regularisation and then discarded).
2. Tuning: every generator weight is trained with Adam on
   ``l2_weight * L2 + lpips_weight * LPIPS`` between ``G(pivot)`` and the crop,
   one pass over all pivots per step; optional locality regularisation: a
   random ``w`` from the mapping network (truncated towards the mean) is moved
   from the pivot towards it by ``locality_alpha`` (at most all the way),
   and the tuned and original generators are held together there
   (``locality_weight * (L2 + LPIPS)``). Training stops early once the
   mean LPIPS over all pivots drops below ``lpips_threshold``.
3. The result is written as an identity profile
   (:mod:`latentdub.toolkit.learning.profiles`); the generator given is not changed.

Video keyframes (:func:`latentdub.toolkit.faces.track.select_keyframes`) cover the mouth shapes and head
poses of the clip by farthest-point sampling in a standardised landmark
feature space.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional

import numpy as np

from latentdub.toolkit.core.config import Range
from latentdub.toolkit.core.hookspecs import hookimpl
from latentdub.toolkit.core.weights import WeightSpec
from latentdub.toolkit.learning.perceptual import BACKBONES, LpipsSettings


@dataclasses.dataclass(frozen=True)
class PtiConfig(LpipsSettings):
    """Settings of pivotal tuning.

    ``pivots``: ``encoder`` (invert with the preset's encoder), ``optimise_w``
    or ``optimise_wplus`` (latent optimisation from the mean latent);
    ``pivot_steps``/``pivot_lr``: optimisation steps and Adam peak learning
    rate for optimised pivots; ``noise_reg``: weight of the noise-map
    autocorrelation penalty during that optimisation; ``steps``: tuning passes
    over all pivots (PTI: 350); ``lr``: Adam learning rate of the generator
    weights; ``lpips_threshold``: stop once mean LPIPS is below it;
    ``l2_weight``/``lpips_weight``: loss weights; ``locality``: enable
    locality regularisation, weighted ``locality_weight``, at distance
    ``locality_alpha`` (W+ Euclidean units) from the pivot, every
    ``locality_every`` updates, sampling ``w`` with truncation
    ``locality_truncation``; ``keyframes``: frames tuned on from a video;
    ``batch_size``: pivots per update; the ``lpips_*`` keys are
    :class:`~latentdub.toolkit.learning.perceptual.LpipsSettings` (PTI uses
    VGG at 256 px); ``precision``: autocast dtype (``auto`` = bf16 on CUDA, else fp32);
    ``compile``: ``torch.compile`` the generator for tuning; ``store``:
    profile holds the weight ``delta`` or the ``full`` weights; ``half``:
    store them as float16; ``seed``: sampling seed (None = preset seed).
    """

    pivots: Literal["encoder", "optimise_w", "optimise_wplus"] = "encoder"
    pivot_steps: Annotated[int, Range(ge=1)] = 450
    pivot_lr: Annotated[float, Range(gt=0, le=1)] = 0.005
    noise_reg: Annotated[float, Range(ge=0)] = 1e5
    steps: Annotated[int, Range(ge=1)] = 350
    lr: Annotated[float, Range(gt=0, le=1)] = 3e-4
    lpips_threshold: Annotated[float, Range(ge=0)] = 0.06
    l2_weight: Annotated[float, Range(ge=0)] = 1.0
    lpips_weight: Annotated[float, Range(ge=0)] = 1.0
    locality: bool = False
    locality_weight: Annotated[float, Range(ge=0)] = 0.1
    locality_alpha: Annotated[float, Range(gt=0)] = 30.0
    locality_every: Annotated[int, Range(ge=1)] = 1
    locality_truncation: Annotated[float, Range(gt=0, le=1)] = 0.5
    keyframes: Annotated[int, Range(ge=1)] = 8
    batch_size: Annotated[int, Range(ge=1)] = 1
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    store: Literal["delta", "full"] = "delta"
    half: bool = False
    seed: Optional[Annotated[int, Range(ge=0)]] = None


@hookimpl
def register_finetuners(register):
    register("pti", build_pti, config=PtiConfig, summary="Pivotal Tuning Inversion: tune all generator weights around encoder/optimised pivots")


@hookimpl
def register_weights(register):
    nets = {"vgg": "VGG16 (torchvision.models.VGG16_Weights.IMAGENET1K_V1)", "alex": "AlexNet (torchvision.models.AlexNet_Weights.IMAGENET1K_V1)"}
    for net, (name, filename) in BACKBONES.items():
        register(
            WeightSpec(
                name=name,
                filename=filename,
                url="",
                sha256="",
                size=0,
                licence="BSD-3-Clause (torchvision); trained on ImageNet (research use)",
                description=f"ImageNet {nets[net]} backbone for LPIPS; copy torchvision's {filename} (torch hub cache) here",
            )
        )


def build_pti(config: PtiConfig, context: Any) -> "PtiFinetuner":
    """Factory: checks the LPIPS backbone is on disk; networks are built when :meth:`PtiFinetuner.tune` runs."""
    config.require_backbone(context.weights)  # fail before any work when the LPIPS backbone is missing
    runtime = getattr(context, "runtime", None)
    return PtiFinetuner(config, seed=context.seed if config.seed is None else config.seed, log=context.log,
                        cuda_graphs=bool(runtime is not None and runtime.cuda_graphs))


# --------------------------------------------------------------------------- tuning


@dataclasses.dataclass
class TuneStats:
    """What one tuning run did: losses before/after (means over pivots), updates, seconds."""

    lpips_before: float
    lpips_after: float
    l2_before: float
    l2_after: float
    updates: int
    early_stop: bool
    seconds: float
    pivot_seconds: float


class TuneNetworks:
    """The base generator (frozen) and a trainable copy, rendered without clamping.

    For latentdub's StyleGAN2 (a module with ``synthesize_wplus`` and
    ``mapping``) images are rendered straight from the module, unclamped, with
    the generator's truncation, so gradients reach saturated pixels;
    other generators go through their ``synthesize``.
    """

    def __init__(self, generator: Any, dtype: Any, compile: bool) -> None:
        import torch

        self.generator = generator
        self.base = generator.module
        self.direct = hasattr(self.base, "synthesize_wplus") and hasattr(self.base, "mapping")
        self.device = next(self.base.parameters()).device
        self.dtype = dtype
        if self.direct:
            self.module = copy.deepcopy(self.base)
            self.psi = float(getattr(getattr(generator, "config", None), "truncation", 1.0))
            self._tuned_call = torch.compile(self.module) if compile else self.module
        else:
            self.tuned_generator = copy.deepcopy(generator)
            self.module = self.tuned_generator.module
        self.module.requires_grad_(True)
        self.base_requires = [p.requires_grad for p in self.base.parameters()]
        self.base.requires_grad_(False)

    def restore(self) -> None:
        """Give the base generator back its ``requires_grad`` flags."""
        for p, flag in zip(self.base.parameters(), self.base_requires):
            p.requires_grad_(flag)

    #: Autocast's weight cache; off while a CUDA graph of the update is in use (graphs need it off).
    autocast_cache = True

    def autocast(self) -> Any:
        """Autocast to :attr:`dtype` (bf16) on the device, or nothing for float32."""
        import contextlib

        import torch

        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype, cache_enabled=self.autocast_cache)

    def _render(self, call: Callable[..., Any], w: Any, noise: Optional[list] = None) -> Any:
        with self.autocast():
            return call(w, input_is_latent=True, noise_mode="const", truncation=self.psi, noise=noise).float()

    def tuned(self, w: Any) -> Any:
        """``[B, L, D]`` -> ``[B, 3, S, S]`` float32 from the trainable copy (with gradients)."""
        if self.direct:
            return self._render(self._tuned_call, w)
        return self.tuned_generator.synthesize(w)

    def original(self, w: Any, noise: Optional[list] = None) -> Any:
        """``[B, L, D]`` -> ``[B, 3, S, S]`` float32 from the base generator (gradients reach ``w`` and ``noise`` only)."""
        if self.direct:
            return self._render(self.base, w, noise)
        return self.generator.synthesize(w)

    def require_mapping(self, what: str) -> None:
        from latentdub.toolkit.core.errors import PluginError

        if not self.direct:
            raise PluginError(f"finetuner pti: {what} needs a generator module with mapping() and synthesize_wplus() (latentdub's stylegan2); set finetuner.pivots=encoder and finetuner.locality=false")

    def latent_stats(self, seed: int, n: int = 10000) -> tuple[Any, float]:
        """Mean W ``[1, D]`` and the RMS distance of mapped samples to it (the projector's ``w_std``)."""
        import torch

        gen = torch.Generator(device="cpu").manual_seed(seed)
        with torch.no_grad():
            z = torch.randn(n, self.base.style_dim, generator=gen).to(self.device)
            w = self.base.mapping(z)
            avg = self.base.latent_avg.reshape(1, -1).to(w) if getattr(self.base, "latent_avg", None) is not None else w.mean(0, keepdim=True)
            std = float(((w - avg) ** 2).sum(1).mean().sqrt())
        return avg, std


def crops_to_tensor(crops: np.ndarray, size: int, device: Any) -> Any:
    """uint8 ``[N, H, W, 3]`` -> float32 ``[N, 3, size, size]`` in [-1, 1] (antialiased resize)."""
    import torch
    import torch.nn.functional as F

    x = torch.tensor(np.asarray(crops), device=device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous()


def _noise_penalty(noises: list) -> Any:
    """StyleGAN2 projector noise regularisation: squared autocorrelation at every octave above 8 px."""
    import torch.nn.functional as F

    total = 0.0
    for n in noises:
        while n.shape[-1] > 8:
            total = total + (n * n.roll(1, dims=3)).mean() ** 2 + (n * n.roll(1, dims=2)).mean() ** 2
            n = F.avg_pool2d(n, 2)
    return total


class PtiFinetuner:
    """Implements :class:`~latentdub.toolkit.core.protocols.Finetuner` (see the module docstring)."""

    def __init__(self, config: PtiConfig, seed: int = 0, log: Callable[[str], None] = print, cuda_graphs: bool = False) -> None:
        #: ``runtime.cuda_graphs``: full-batch updates without locality run as CUDA graphs (forward and backward), on CUDA only
        self.cuda_graphs = cuda_graphs
        self.config = config
        self.seed = seed
        self.log = log
        self.keyframes = config.keyframes
        #: statistics of the last :meth:`tune` call
        self.last_stats: Optional[TuneStats] = None

    @property
    def needs_encoder(self) -> bool:
        """True when pivots come from the image encoder."""
        return self.config.pivots == "encoder"

    # ------------------------------------------------------------------ helpers

    def _dtype(self, device: Any) -> Any:
        import torch

        p = self.config.precision
        if p == "bf16" or (p == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
            return torch.bfloat16
        return None

    def networks(self, generator: Any) -> TuneNetworks:
        """The frozen base and a trainable copy of ``generator`` with this config's precision and compile settings."""
        return TuneNetworks(generator, self._dtype(next(generator.module.parameters()).device), self.config.compile)

    def lpips(self, device: Any) -> Any:
        """The LPIPS module of this config on ``device``."""
        return self.config.build_lpips(device, seed=self.seed, log=self.log)

    def _distance(self, lpips: Any, a: Any, b: Any, nets: TuneNetworks) -> tuple[Any, Any]:
        """Per-image (L2, LPIPS), each ``[B]`` float32."""
        from latentdub.toolkit.learning.perceptual import lpips_distance

        l2 = ((a - b) ** 2).flatten(1).mean(1)
        with nets.autocast():
            lp = lpips_distance(lpips, a, b, self.config.lpips_size).float()
        return l2, lp

    # ------------------------------------------------------------------ pivots

    def encode_pivots(self, generator: Any, encoder: Any, targets: Any) -> Any:
        """W+ pivots ``[N, L, D]`` from the image encoder (targets resized to ``encoder.size``)."""
        import torch
        import torch.nn.functional as F

        from latentdub.toolkit.core.errors import BadInputError, ConfigError

        if encoder is None:
            raise ConfigError("finetuner.pivots=encoder needs an encoder stage in the preset; add `encoder: {plugin: psp}` or set finetuner.pivots=optimise_wplus")
        size = int(getattr(encoder, "size", targets.shape[-1]))
        x = targets if targets.shape[-1] == size else F.interpolate(targets, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        with torch.no_grad():
            w = torch.cat([torch.as_tensor(encoder.encode(chunk)).float() for chunk in x.split(self.config.batch_size)]).to(targets.device)
        if w.ndim != 3 or w.shape[1] != generator.n_styles:
            raise BadInputError(f"encoder returned latents of shape {tuple(w.shape)} but the generator takes [N, {generator.n_styles}, D]; pair an encoder and generator of the same resolution")
        return w

    def optimise_pivots(self, nets: TuneNetworks, targets: Any, lpips: Any, wplus: bool) -> Any:
        """Latent optimisation (StyleGAN2 projector schedule) from the mean latent -> pivots ``[N, L, D]``.

        Adam on W (``[N, 1, D]``, broadcast to all layers) or W+ and on fresh
        per-image noise maps; learning rate ramps up over the first 5 % and
        down (cosine) over the last 25 %; Gaussian noise of 5 % ``w_std``
        decaying to 0 at 75 % is added to the latent; noise maps are
        renormalised after each step and discarded at the end.
        """
        import torch

        c = self.config
        nets.require_mapping(f"pivots={c.pivots}")
        avg, w_std = nets.latent_stats(self.seed)
        n_styles = nets.base.n_latent
        buffers = nets.base.make_noise("const")
        gen = torch.Generator(device="cpu").manual_seed(self.seed + 1)
        out = []
        for tgt in targets.split(c.batch_size):
            b = tgt.shape[0]
            w_opt = avg.reshape(1, 1, -1).repeat(b, n_styles if wplus else 1, 1).clone().requires_grad_(True)
            noises = [torch.randn(b, 1, *buf.shape[-2:], generator=gen).to(nets.device).requires_grad_(True) for buf in buffers]
            opt = torch.optim.Adam([w_opt, *noises], lr=c.pivot_lr, betas=(0.9, 0.999))
            for step in range(c.pivot_steps):
                t = step / c.pivot_steps
                ramp = min(1.0, (1.0 - t) / 0.25)
                lr = c.pivot_lr * (0.5 - 0.5 * math.cos(ramp * math.pi)) * min(1.0, (step + 1) / (0.05 * c.pivot_steps))
                for group in opt.param_groups:
                    group["lr"] = lr
                jitter = w_std * 0.05 * max(0.0, 1.0 - t / 0.75) ** 2
                w = w_opt + torch.randn(w_opt.shape, generator=gen).to(nets.device) * jitter
                img = nets.original(w.expand(-1, n_styles, -1), noise=noises)
                l2, lp = self._distance(lpips, img, tgt, nets)
                loss = c.lpips_weight * lp.sum() + c.l2_weight * l2.sum() + c.noise_reg * _noise_penalty(noises)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for n in noises:
                        n -= n.mean(dim=(1, 2, 3), keepdim=True)
                        n *= n.square().mean(dim=(1, 2, 3), keepdim=True).rsqrt()
            out.append(w_opt.detach().expand(-1, n_styles, -1).clone())
        return torch.cat(out)

    # ------------------------------------------------------------------ tuning

    def _locality_latents(self, nets: TuneNetworks, pivots: Any, avg: Any, gen: Any) -> Any:
        """W+ ``[B, L, D]``: from each pivot towards a random ``w`` (truncated towards ``avg``), ``alpha`` far, capped at ``w``."""
        import torch

        c = self.config
        with torch.no_grad():
            z = torch.randn(pivots.shape[0], nets.base.style_dim, generator=gen).to(nets.device)
            w = avg + c.locality_truncation * (nets.base.mapping(z) - avg)
            direction = w[:, None, :] - pivots
            norm = direction.flatten(1).norm(dim=1).clamp_min(1e-8)
            step = (c.locality_alpha / norm).clamp(max=1.0)
            return pivots + direction * step[:, None, None]

    def evaluate(self, render: Callable[[Any], Any], pivots: Any, targets: Any, lpips: Any, nets: TuneNetworks) -> tuple[float, float]:
        """Mean (L2, LPIPS) of ``render(pivots)`` against ``targets``, in batches, without gradients."""
        import torch

        l2s, lps = [], []
        with torch.no_grad():
            for w, tgt in zip(pivots.split(self.config.batch_size), targets.split(self.config.batch_size)):
                l2, lp = self._distance(lpips, render(w), tgt, nets)
                l2s.append(l2)
                lps.append(lp)
        return float(torch.cat(l2s).mean()), float(torch.cat(lps).mean())

    def graphed_update(self, nets: TuneNetworks, pivots: Any, targets: Any, lpips: Any) -> Callable[[Any, Any], Any] | None:
        """``(w, targets) -> stack([l2, lpips])`` ``[2, B]`` as CUDA graphs (forward and backward), for full batches of
        ``batch_size``; None (eager updates) without ``runtime.cuda_graphs``, off CUDA, for generators other than
        latentdub's StyleGAN2, with ``compile``, or when the capture fails."""
        import torch

        from latentdub.nets.graphs import graphed_module

        b = self.config.batch_size
        if not (self.cuda_graphs and nets.device.type == "cuda" and nets.direct and not self.config.compile and pivots.shape[0] >= b):
            return None
        finetuner = self

        class _Update(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.generator, self.lpips = nets.module, lpips

            def forward(self, w: Any, tgt: Any) -> Any:
                return torch.stack(finetuner._distance(lpips, nets.tuned(w), tgt, nets))

        nets.autocast_cache = False
        step = _Update()
        graphed = graphed_module(step, (pivots[:b].detach().clone(), targets[:b].detach().clone()), log=self.log, name="the PTI update")
        if graphed is step:
            nets.autocast_cache = True
            return None
        return graphed

    def tune_weights(self, nets: TuneNetworks, pivots: Any, targets: Any, lpips: Any, progress: bool = False) -> tuple[int, bool]:
        """Train ``nets.module`` around ``pivots``; returns (updates, stopped early)."""
        import torch
        from tqdm import tqdm

        c = self.config
        avg = None
        if c.locality:
            nets.require_mapping("locality regularisation")
            avg = nets.latent_stats(self.seed)[0]
        params = [p for p in nets.module.parameters() if p.requires_grad]
        fast = {"fused": True} if nets.device.type == "cuda" else {"foreach": True}
        opt = torch.optim.Adam(params, lr=c.lr, betas=(0.9, 0.999), **fast)
        gen = torch.Generator(device="cpu").manual_seed(self.seed + 2)
        n = pivots.shape[0]
        graphed = self.graphed_update(nets, pivots, targets, lpips)
        seen = torch.full((n,), float("inf"))
        updates, stopped = 0, False
        bar = tqdm(total=c.steps * math.ceil(n / c.batch_size), desc="tune", unit="step", disable=not progress, leave=False, dynamic_ncols=True)
        try:
            for _ in range(c.steps):
                for idx in torch.randperm(n, generator=gen).split(c.batch_size):
                    w, tgt = pivots[idx.to(pivots.device)], targets[idx.to(targets.device)]
                    b = w.shape[0]
                    local = c.locality and updates % c.locality_every == 0
                    if local:
                        w_r = self._locality_latents(nets, w, avg, gen)
                        with torch.no_grad():
                            ref = nets.original(w_r)
                        img = nets.tuned(torch.cat([w, w_r]))
                        l2, lp = self._distance(lpips, img, torch.cat([tgt, ref]), nets)
                    elif graphed is not None and b == c.batch_size:
                        l2, lp = graphed(w, tgt).unbind(0)
                    else:
                        l2, lp = self._distance(lpips, nets.tuned(w), tgt, nets)
                    loss = c.l2_weight * l2[:b].mean() + c.lpips_weight * lp[:b].mean()
                    if local:
                        loss = loss + c.locality_weight * (c.l2_weight * l2[b:].mean() + c.lpips_weight * lp[b:].mean())
                    seen[idx] = lp[:b].detach().float().cpu()
                    if bool(torch.isfinite(seen).all()) and float(seen.mean()) < c.lpips_threshold:
                        stopped = True
                        break
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    updates += 1
                    bar.update(1)
                if stopped:
                    break
        finally:
            bar.close()
        return updates, stopped

    def tune(self, generator: Any, encoder: Any, crops: np.ndarray, out: Path, meta: Optional[dict] = None, progress: bool = False) -> Path:
        """Tune on aligned crops uint8 ``[N, S, S, 3]`` and write an identity profile to ``out``.

        ``meta``: extra JSON fields for the profile (keyframes, source ...).
        Statistics of the run are kept in :attr:`last_stats`.
        """
        import torch

        from latentdub.toolkit.core.errors import BadInputError
        from latentdub.toolkit.learning.profiles import save_profile

        c = self.config
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8 or len(crops) == 0:
            raise BadInputError(f"finetuner pti: expected aligned crops uint8 [N, S, S, 3], got {crops.dtype} {crops.shape}")
        start = time.perf_counter()
        nets = self.networks(generator)
        try:
            lpips = self.lpips(nets.device)
            targets = crops_to_tensor(crops, generator.size, nets.device)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                if c.pivots == "encoder":
                    pivots = self.encode_pivots(generator, encoder, targets)
                else:
                    pivots = self.optimise_pivots(nets, targets, lpips, wplus=c.pivots == "optimise_wplus")
                pivot_seconds = time.perf_counter() - start
                l2_0, lp_0 = self.evaluate(nets.original, pivots, targets, lpips, nets)
                updates, stopped = self.tune_weights(nets, pivots, targets, lpips, progress)
                l2_1, lp_1 = self.evaluate(nets.tuned, pivots, targets, lpips, nets)
        finally:
            nets.restore()
        stats = TuneStats(lp_0, lp_1, l2_0, l2_1, updates, stopped, time.perf_counter() - start, pivot_seconds)
        self.last_stats = stats
        self.log(
            f"pti: {len(crops)} pivot(s) by {c.pivots}; LPIPS {lp_0:.4f} -> {lp_1:.4f}, L2 {l2_0:.4f} -> {l2_1:.4f} "
            f"after {updates} update(s){' (early stop)' if stopped else ''} in {stats.seconds:.1f} s"
        )
        module_config = generator.module.config() if hasattr(generator.module, "config") else {}
        info = {
            "finetuner": {"plugin": "pti", **dataclasses.asdict(c)},
            "final_lpips": lp_1,
            "initial_lpips": lp_0,
            "final_l2": l2_1,
            "initial_l2": l2_0,
            "updates": updates,
            "early_stop": stopped,
            "lpips_net": f"{c.lpips_net}{' (random backbone)' if c.lpips_random_backbone else ''}",
            **(meta or {}),
        }
        generator_config = {"size": generator.size, "n_styles": generator.n_styles, **module_config}
        return save_profile(
            out, nets.module.state_dict(), generator.module.state_dict(), pivots, generator.fingerprint(), generator_config,
            store=c.store, half=c.half, meta=info,
        )
