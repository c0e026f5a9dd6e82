"""Generator plugin ``stylegan2``: the paper's frozen StyleGAN2 G, loaded from official checkpoints.

Also registers the public weights of the paper's neural stack (rosinality-converted
FFHQ StyleGAN2, pSp, e4e, the IR-SE50 backbone).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal, Optional

from latentdub.toolkit.core.config import NAMES_WEIGHTS, PowerOfTwo, Range
from latentdub.toolkit.core.hookspecs import hookimpl
from latentdub.toolkit.core.weights import WeightSpec

Precision = Literal["fp32", "bf16", "fp16"]


@dataclasses.dataclass(frozen=True)
class StyleGAN2Config:
    """Settings of the StyleGAN2 generator.

    ``checkpoint``: registered weight name or file path (rosinality ``.pt``, pSp/e4e ``.pt``
    (its decoder), our ``.safetensors``; NVIDIA ``.pkl`` only with ``allow_pickle: true``,
    since unpickling can run code). ``random_init: true`` ignores the checkpoint and builds a
    random generator seeded by the preset seed from ``size`` (px), ``channel_multiplier``,
    ``channel_max``, ``style_dim`` and ``n_mlp``; these architecture fields apply to random
    init only (files carry their own) and default to the tiny test network (official:
    1024, 2, 512, 512, 8). ``truncation``: psi in (0, 1] towards the mean W (1 disables).
    ``precision``: autocast dtype. ``channels_last``: NHWC feature maps (faster on GPUs).
    ``batch_size``: latents per forward pass. ``modconv``: modulated-conv path (same maths): ``fused_up``
    folds each upsampling conv and its blur into one dense conv (fastest on GPUs),
    ``batched`` is fastest on CPUs, ``grouped`` is the reference formulation;
    ``auto`` picks ``fused_up`` on CUDA and ``batched`` elsewhere.
    ``resize_to``: area-downsample outputs to this side in px (pSp's 256 px face pool);
    None keeps ``size``. ``compile``: wrap inference in ``torch.compile`` (slow first call).
    """

    checkpoint: Annotated[Optional[str], NAMES_WEIGHTS] = "stylegan2-ffhq-config-f"
    random_init: bool = False
    size: Annotated[int, PowerOfTwo(ge=8, le=2048)] = 64
    channel_multiplier: Annotated[int, Range(ge=1, le=8)] = 2
    channel_max: Annotated[int, Range(ge=1)] = 32
    style_dim: Annotated[int, Range(ge=1)] = 512
    n_mlp: Annotated[int, Range(ge=1, le=16)] = 2
    truncation: Annotated[float, Range(gt=0, le=1)] = 1.0
    precision: Precision = "fp32"
    channels_last: bool = False
    batch_size: Annotated[int, Range(ge=1)] = 8
    modconv: Literal["auto", "fused_up", "batched", "grouped"] = "auto"
    resize_to: Optional[Annotated[int, Range(ge=8, le=4096)]] = None
    allow_pickle: bool = False
    compile: bool = False


@hookimpl
def register_generators(register):
    register("stylegan2", build_stylegan2, config=StyleGAN2Config, summary="StyleGAN2 (rosinality/pSp/NVIDIA checkpoints or tiny random), W+ -> image")


#: Public Google Drive files linked from the pSp / e4e READMEs. Drive may answer large files
#: with a confirmation page; then download by hand and put the file in ``LATENTDUB_WEIGHTS_DIR``.
_DRIVE = "https://drive.google.com/uc?export=download&id="

#: Public weights of the paper's stack (checksums unknown here: not checked).
WEIGHTS = (
    WeightSpec(
        name="stylegan2-ffhq-config-f",
        filename="stylegan2-ffhq-config-f.pt",
        url=_DRIVE + "1EM87UquaoQmk17Q8d5kYIAHqu0dkYqdT",
        sha256="",
        size=0,
        licence="NVIDIA Source Code License-NC (non-commercial; weights converted from NVIDIA StyleGAN2)",
        description="StyleGAN2 FFHQ 1024 px config-f, rosinality stylegan2-pytorch layout (g_ema, latent_avg)",
    ),
    WeightSpec(
        name="psp_ffhq_encode",
        filename="psp_ffhq_encode.pt",
        url=_DRIVE + "1bMTNWkh5LArlaWSc_wa8VKyq2V42T2z0",
        sha256="",
        size=0,
        licence="MIT (code); decoder weights derived from NVIDIA StyleGAN2 (non-commercial)",
        description="pSp FFHQ inversion encoder (IR-SE50 GradualStyleEncoder, 18 styles) with its 1024 px decoder",
    ),
    WeightSpec(
        name="e4e_ffhq_encode",
        filename="e4e_ffhq_encode.pt",
        url=_DRIVE + "1cUv_reLE6k3604or78EranS7XzuVMWeO",
        sha256="",
        size=0,
        licence="MIT (code); decoder weights derived from NVIDIA StyleGAN2 (non-commercial)",
        description="e4e FFHQ encoder (Encoder4Editing, IR-SE50) with its 1024 px decoder",
    ),
    WeightSpec(
        name="model_ir_se50",
        filename="model_ir_se50.pth",
        url=_DRIVE + "1KW7bjndL3QG3sxBbZxreGHigcCCpsDgn",
        sha256="",
        size=0,
        licence="MIT (InsightFace_Pytorch); trained on MS-Celeb-1M (research use)",
        description="ArcFace IR-SE50 backbone used to initialise pSp/e4e encoders and for identity loss",
    ),
)


@hookimpl
def register_weights(register):
    for spec in WEIGHTS:
        register(spec)


def build_stylegan2(config: StyleGAN2Config, context) -> "StyleGAN2Generator":
    """Load (or randomly initialise) the generator on ``context.device``."""
    import torch

    from latentdub.nets.generator_files import load_generator
    from latentdub.nets.stylegan2 import Generator
    from latentdub.toolkit.core.errors import ConfigError

    if config.random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed)
            gen = Generator(config.size, config.style_dim, config.n_mlp, config.channel_multiplier, channel_max=config.channel_max)
        latent_avg = gen.mean_latent(4096, seed=context.seed)[0]
    elif config.checkpoint:
        gen, latent_avg = load_generator(context.weights(config.checkpoint), map_location="cpu", allow_pickle=config.allow_pickle)
    else:
        raise ConfigError("generator.checkpoint: none given; name a weight file or set generator.random_init=true for a random (test) generator")
    if latent_avg is not None:
        gen.latent_avg = latent_avg.float()
    runtime = getattr(context, "runtime", None)
    graph_batches = tuple(runtime.graph_batches) if runtime is not None and runtime.cuda_graphs else ()
    generator = StyleGAN2Generator(gen, config, context.device, graph_batches=graph_batches, log=getattr(context, "log", None))
    if context.profile is not None:
        from latentdub.toolkit.learning.profiles import apply_profile

        apply_profile(generator, context.profile)
    return generator


class StyleGAN2Generator:
    """Implements :class:`~latentdub.toolkit.core.protocols.Generator` around :class:`latentdub.nets.stylegan2.Generator`.

    ``module`` is the trainable network (PTI tunes it in place); ``synthesize`` keeps gradients,
    so wrap calls in ``torch.no_grad()`` for inference. ``graph_batches`` (``runtime.cuda_graphs``):
    batch sizes at which inference on CUDA replays captured CUDA graphs
    (:class:`latentdub.nets.graphs.GraphedCall`; eager with gradients on or off CUDA).
    """

    def __init__(self, module: Any, config: StyleGAN2Config, device: Any, graph_batches: tuple[int, ...] = (), log: Any = None) -> None:
        import torch

        from latentdub.nets.graphs import GraphedCall

        self.config = config
        self.device = torch.device(device)
        modconv = config.modconv if config.modconv != "auto" else ("fused_up" if self.device.type == "cuda" else "batched")
        self.module = module.set_modconv(modconv).to(self.device).eval().requires_grad_(False)
        if config.channels_last:
            module.memory_format = torch.channels_last
        self.size = config.resize_to or module.size
        self.n_styles = module.n_latent
        self.style_dim = module.style_dim
        self._fingerprint = weights_fingerprint(module)
        self._run = torch.compile(module) if config.compile else module
        #: CUDA-graph replays of one chunk (None: eager); captured under autocast without its weight cache
        self.graphed = GraphedCall(self._forward, graph_batches, context=lambda: self.autocast(cache=False), log=log, name="generator") if graph_batches else None

    def capture_graphs(self) -> int:
        """With ``runtime.cuda_graphs`` on CUDA: capture the generator's graphs now (one per batch size); returns how many are held."""
        import torch

        if self.graphed is None:
            return 0
        avg = self.latent_avg
        w = (avg.reshape(1, 1, -1) if avg is not None else torch.zeros(1, 1, self.style_dim, device=self.device)).to(self.device)
        with torch.inference_mode():
            return self.graphed.prepare(w.expand(1, self.n_styles, self.style_dim).contiguous())

    def _forward(self, chunk: Any) -> Any:
        """One chunk of W+ ``[b, L, D]`` -> float32 images ``[b, 3, S, S]`` (unclamped)."""
        return self._run(chunk, input_is_latent=True, noise_mode="const", truncation=self.config.truncation).float()

    @property
    def latent_avg(self) -> Any:
        """Mean W ``[style_dim]`` (float32, on the device) or None."""
        return self.module.latent_avg

    def autocast(self, cache: bool = True) -> Any:
        """Autocast context for the configured precision (a no-op for fp32); ``cache=False`` for CUDA-graph capture."""
        import torch

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.precision)
        return torch.autocast(device_type=self.device.type, dtype=dtype, enabled=dtype is not None, cache_enabled=cache)

    def synthesize(self, w: Any) -> Any:
        """W+ ``[B, n_styles, D]`` (or W ``[B, D]``) -> float32 images ``[B, 3, size, size]`` in [-1, 1], const noise.

        Rendered ``batch_size`` latents at a time under the configured precision; clamped to [-1, 1].
        """
        import torch

        w = torch.as_tensor(w, dtype=torch.float32, device=self.device)
        if w.ndim == 2:
            w = w[:, None, :].expand(-1, self.n_styles, -1)
        if w.ndim != 3 or w.shape[1:] != (self.n_styles, self.style_dim):
            from latentdub.toolkit.core.errors import BadInputError

            raise BadInputError(f"latents of shape {tuple(w.shape)}: generator expects [B, {self.n_styles}, {self.style_dim}]")
        if self.graphed is not None and self.graphed.graphable(w):
            images = torch.cat([self.graphed(chunk) for chunk in w.split(self.config.batch_size)])
        else:
            with self.autocast():
                images = torch.cat([self._forward(chunk) for chunk in w.split(self.config.batch_size)])
        if self.size != self.module.size:
            images = torch.nn.functional.interpolate(images, size=(self.size, self.size), mode="area")
        return images.clamp(-1.0, 1.0)

    def fingerprint(self) -> str:
        """SHA-256 of the base weights as loaded (architecture config + float32 tensors in key order)."""
        return self._fingerprint


def weights_fingerprint(module: Any) -> str:
    """SHA-256 over ``module.config()`` JSON and each state-dict entry (name, shape, float32 bytes)."""
    import hashlib
    import json

    import torch

    h = hashlib.sha256(json.dumps(module.config(), sort_keys=True).encode())
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            t = tensor.detach().to("cpu", torch.float32).contiguous()
            h.update(f"{name}:{tuple(t.shape)};".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()
