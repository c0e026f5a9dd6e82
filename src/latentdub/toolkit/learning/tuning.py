"""Stage 2 from a file: an image or a video of one person -> an identity profile.

An image gives one aligned crop (the preset's detector and target
selection); a video is analysed like ``dub`` does (detect, track, smooth),
``finetuner.keyframes`` frames covering its mouth shapes and poses are
chosen (:func:`latentdub.toolkit.faces.track.select_keyframes`) and only those
frames are decoded again. Crops are aligned straight at the generator's
resolution (FFHQ alignment from the tracked 5 points), then handed to the
preset's finetuner, which writes the profile.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..core.build import Components
from ..core.errors import ConfigError, NoFaceError
from ..core.files import check_input_file, check_not_an_input, check_writable_file, claim_outputs
from ..core.presets import Preset, preset_path_for, resolve_preset


@dataclasses.dataclass
class TuneSummary:
    """What a ``tune`` run produced: the profile, the frames used and the tuning statistics."""

    profile: Path
    source: Path
    preset_file: Path
    keyframes: list[int]
    n_frames: int
    seconds: float
    stats: Optional[Any] = None

    def lines(self) -> list[str]:
        """Human-readable summary lines for the CLI."""
        out = [f"wrote {self.profile} (tuned on {len(self.keyframes)} of {self.n_frames} frame(s) of {self.source}: {self.keyframes})"]
        if self.stats is not None:
            s = self.stats
            out.append(f"LPIPS {s.lpips_before:.4f} -> {s.lpips_after:.4f}, L2 {s.l2_before:.4f} -> {s.l2_after:.4f}, {s.updates} update(s){' (early stop)' if s.early_stop else ''}")
        out.append(f"time: {self.seconds:.1f} s; resolved preset: {self.preset_file}")
        return out


def _finetuner(components: Components) -> Any:
    """The preset's finetuner stage (ConfigError naming the fix when the preset has none)."""
    if not components.has("finetuner"):
        raise ConfigError(f"preset {components.preset.name!r} has no finetuner stage; add `finetuner: {{plugin: pti}}` or --set finetuner.plugin=pti")
    return components["finetuner"]


def _image_crops(source: Path, components: Components, size: int) -> tuple[np.ndarray, list[int], int]:
    from ..faces.align import ffhq_alignment, warp_to_crop
    from ..faces.track import track_still
    from ..media.video import read_image

    picture = read_image(source)
    tracked = track_still(picture, components["detector"], components.preset.track)
    if tracked.face is None:
        raise NoFaceError(f"{source}: no face found in the image; give a photo with a clear frontal face, or try --set detector.plugin=mtcnn")
    crop = warp_to_crop(picture, ffhq_alignment(tracked.face.landmarks5, size))
    return crop[None], [0], 1


def _video_crops(source: Path, components: Components, size: int, k: int, progress: bool) -> tuple[np.ndarray, list[int], int]:
    from tqdm import tqdm

    from ..faces.align import ffhq_alignment, warp_to_crop
    from ..faces.track import analyse_video, select_keyframes
    from ..media.video import probe_video, read_frames, read_frames_at

    info = probe_video(source)
    with tqdm(total=info.n_frames, desc="analyse", unit="frame", disable=not progress, leave=False, dynamic_ncols=True) as bar:
        track = analyse_video(
            read_frames(source, fps=info.fps, info=info), components["detector"], components.preset.track,
            n_frames_hint=info.n_frames, progress=lambda done, total: bar.update(done - bar.n),
        )
    track.require_face(source)
    picks = select_keyframes(track, k)
    images = read_frames_at(source, picks, info)
    crops = {i: warp_to_crop(image, ffhq_alignment(track.landmarks5[i], size)) for i, image in images.items()}
    picks = [i for i in picks if i in crops]
    return np.stack([crops[i] for i in picks]), picks, track.n_frames


def tune(
    source: str | Path,
    out: str | Path,
    preset: Preset | str = "paper-1024",
    overrides: Optional[list[str]] = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
    overwrite: Optional[bool] = None,
) -> TuneSummary:
    """Tune the preset's generator to the person in ``source`` (image or video); write the profile ``out``.

    The resolved preset is written beside the profile
    (``NAME.latentdub.yaml``). Raises :class:`NoFaceError` when no face is
    found, :class:`ConfigError` for presets without a generator,
    :class:`BadInputError` for unreadable inputs; nothing is left at ``out``
    on failure. ``overwrite``: replace an existing profile (None: the
    preset's ``output.overwrite``); the profile is never one of the inputs.
    """
    start = time.perf_counter()
    source = check_input_file(source, "image or video of the person to tune on")
    if not isinstance(preset, Preset):
        preset = resolve_preset(preset, overrides)
    inputs = {"source": source, **preset.input_files()}
    check_not_an_input(Path(out), inputs)
    out = check_writable_file(out, "person.profile")
    replace = preset.output.overwrite if overwrite is None else overwrite
    with claim_outputs([out, preset_path_for(out)], inputs, replace):
        return _tune(source, out, preset, log, progress, start)


def _tune(source: Path, out: Path, preset: Preset, log: Callable[[str], None], progress: bool, start: float) -> TuneSummary:
    from ..media.video import IMAGE_SUFFIXES

    components = Components(preset, log=log)
    if not components.has("generator"):
        raise ConfigError(f"preset {preset.name!r} has no generator stage; `tune` needs a neural preset (paper-256, paper-1024, or tiny for a smoke test)")
    finetuner = _finetuner(components)
    generator = components["generator"]
    needs_encoder = bool(getattr(finetuner, "needs_encoder", True))
    if needs_encoder and not components.has("encoder"):
        raise ConfigError(f"preset {preset.name!r} has no encoder stage for the finetuner's pivots; add `encoder: {{plugin: psp}}` or --set finetuner.pivots=optimise_wplus")
    encoder = components["encoder"] if needs_encoder else None
    if source.suffix.lower() in IMAGE_SUFFIXES:
        crops, picks, n_frames = _image_crops(source, components, generator.size)
    else:
        k = int(getattr(finetuner, "keyframes", 8))
        crops, picks, n_frames = _video_crops(source, components, generator.size, k, progress)
    accepted = inspect.signature(finetuner.tune).parameters
    extra: dict[str, Any] = {}
    if "meta" in accepted:
        extra["meta"] = {"source": str(source.resolve()), "keyframes": picks, "source_frames": n_frames, "preset": preset.name}
    if "progress" in accepted:
        extra["progress"] = progress
    profile = Path(finetuner.tune(generator, encoder, crops, out, **extra))
    preset_file = preset.write(preset_path_for(profile))
    return TuneSummary(
        profile=profile, source=source, preset_file=preset_file, keyframes=picks, n_frames=n_frames,
        seconds=time.perf_counter() - start, stats=getattr(finetuner, "last_stats", None),
    )
