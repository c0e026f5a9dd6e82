"""The delivered sound track: the user's speech at its own rate and channels, edited, fitted and encoded.

Motion models hear a 16 kHz mono copy (:func:`~latentdub.toolkit.media.audio.load_audio`);
the output carries the speech as delivered. Both are made by the same
:class:`~latentdub.toolkit.media.audio.SpeechPlan` (the ``speech`` edits, then the
timeline's offset and pad or cut), here at the speech's own rate on all its
channels. The speech is decoded once by ffmpeg into a raw file in the run's
temporary folder, read back in blocks and written as the encoder's input, so memory stays flat however long the speech is.

``output.audio_codec`` and the containers that take it (checked before any work):

=========  =====================================================================
codec      containers, what is stored
=========  =====================================================================
aac        .mp4 .m4v .mov .mkv; lossy at ``output.audio_bitrate``; rates
           above 96 kHz (or between AAC's rates) go to the nearest AAC rate
pcm        .mov .mkv; the speech's own bit depth: 16, 24 or 32-bit integers,
           32 or 64-bit float for float speech, 24-bit for lossy speech
flac       .mp4 .mkv; 16 or 24 bits (32-bit integer or float speech: 24)
alac       .mp4 .m4v .mov .mkv; 16 or 24 bits
copy       the speech's stream unchanged: only when no ``speech`` edit, no
           ``timing.audio_offset``, no rate or channel override applies, the
           timeline differs from the speech by at most half a frame, and the
           container takes the codec (:data:`COPYABLE`)
=========  =====================================================================

Samples are rounded (not dithered) to the stored bit depth after a fade or a
gain; untouched samples come out bit-exact on the lossless paths.
"""

from __future__ import annotations

import dataclasses
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.errors import BadInputError, OutputError
from ..core.presets import OutputConfig, SpeechConfig
from ..core.types import AudioInfo
from ..media.audio import decode_failure, edit_plan, loudness_gain, spans
from ..media.video import MuxedAudio, ffmpeg_exe
from .timing import Timeline

#: Container suffix -> the ``output.audio_codec`` values it takes (besides ``copy``).
CONTAINER_CODECS = {
    ".mp4": ("aac", "flac", "alac"),
    ".m4v": ("aac", "alac"),
    ".mov": ("aac", "pcm", "alac"),
    ".mkv": ("aac", "pcm", "flac", "alac"),
}
#: Container suffix -> speech codecs ``copy`` may put in it (None: any; ``pcm_`` covers every PCM variant).
COPYABLE: dict[str, Optional[tuple[str, ...]]] = {
    ".mp4": ("aac", "alac", "flac", "mp3", "opus", "ac3", "eac3"),
    ".m4v": ("aac", "alac"),
    ".mov": ("aac", "alac", "pcm_", "mp3", "ac3"),
    ".mkv": None,
}
#: Sample rates the AAC encoder takes, Hz.
AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
#: Samples per block when editing the delivered track.
BLOCK = 1 << 18
#: Raw sample type -> (ffmpeg raw format, numpy dtype).
RAW = {"s16": ("s16le", "<i2"), "s32": ("s32le", "<i4"), "f32": ("f32le", "<f4"), "f64": ("f64le", "<f8")}


@dataclass(frozen=True)
class TrackFormat:
    """How the delivered track is stored.

    ``codec``: the ``output.audio_codec`` value; ``sample``: raw sample type
    fed to the encoder (``s16``, ``s32``, ``f32``, ``f64``; empty for copy);
    ``bits``: stored bits of integer samples (None for aac and float);
    ``encoder``: ffmpeg's audio codec options; ``source``: the speech as probed.
    """

    codec: str
    sample_rate: int
    channels: int
    layout: str
    sample: str
    bits: Optional[int]
    encoder: tuple[str, ...]
    source: AudioInfo
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """One phrase for the run summary, e.g. ``flac, 48000 Hz, stereo, 24-bit (lossless)``."""
        if self.codec == "copy":
            return f"copied unchanged ({describe_source(self.source)})"
        depth = f"{self.bits}-bit" if self.bits else f"{self.sample[1:]}-bit float"
        if self.codec == "aac":
            return f"aac {self.encoder[-1]}, {self.sample_rate} Hz, {self.layout} (lossy)"
        return f"{self.codec}, {self.sample_rate} Hz, {self.layout}, {depth} (lossless)"


def describe_source(info: AudioInfo) -> str:
    """``pcm_s24le, 48000 Hz, stereo, 24-bit`` for a probed stream."""
    depth = f", {info.bits}-bit" if info.bits else ""
    return f"{info.codec}, {info.sample_rate} Hz, {info.layout}{depth}"


def choose_format(info: AudioInfo, output: OutputConfig, target: Path) -> TrackFormat:
    """The :class:`TrackFormat` for ``info``'s speech written into ``target`` as ``output`` says.

    Raises :class:`BadInputError` naming the setting when the container cannot
    take the codec (rates and channel counts are range-checked with the preset).
    """
    codec, suffix = output.audio_codec, target.suffix.lower()
    takes = CONTAINER_CODECS.get(suffix, ())
    if codec != "copy" and codec not in takes:
        homes = " or ".join(s for s, codecs in CONTAINER_CODECS.items() if codec in codecs)
        raise BadInputError(
            f"output.audio_codec={codec}: {target.name}: {suffix} files do not take {codec} audio (they take {', '.join(takes)}); "
            f"write a {homes} file or choose one of those"
        )
    rate = output.audio_rate or info.sample_rate
    channels = output.audio_channels or info.channels
    layout = info.layout if channels == info.channels else _default_layout(channels)
    if codec == "copy":
        return _copy_format(info, output, suffix, target)
    notes: list[str] = []
    if codec == "aac":
        if rate not in AAC_RATES:
            wanted = rate
            rate = min((r for r in AAC_RATES if r >= wanted), default=AAC_RATES[-1])
            notes.append(f"aac takes no {wanted} Hz audio: the track is resampled to {rate} Hz (output.audio_codec=flac or pcm keeps {wanted} Hz)")
        return TrackFormat("aac", rate, channels, layout, "f32", None, ("-c:a", "aac", "-b:a", output.audio_bitrate), info, tuple(notes))
    sample, bits = _lossless_depth(info, codec, notes)
    if codec == "pcm":
        name = f"pcm_s{bits}le" if bits else f"pcm_{sample}le"
        encoder: tuple[str, ...] = ("-c:a", name)
    elif codec == "flac":
        encoder = ("-c:a", "flac", "-sample_fmt", sample)
    else:
        encoder = ("-c:a", "alac", "-sample_fmt", sample + "p")
    return TrackFormat(codec, rate, channels, layout, sample, bits, encoder, info, tuple(notes))


def _default_layout(channels: int) -> str:
    return {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}.get(channels, f"{channels} channels")


def _lossless_depth(info: AudioInfo, codec: str, notes: list[str]) -> tuple[str, Optional[int]]:
    """Raw sample type and stored bits of a pcm/flac/alac track of ``info``'s speech (24-bit never drops to 16)."""
    if info.bits:
        bits = 16 if info.bits <= 16 else 24 if info.bits <= 24 else 32
    elif info.lossless:  # float speech
        if codec == "pcm":
            return ("f64" if info.sample_format == "dbl" else "f32"), None
        bits = 24
        notes.append(f"{codec} holds no float samples: the float speech is stored as 24-bit integers (output.audio_codec=pcm keeps float)")
    else:  # lossy speech: its decoder gives 16-bit or float samples
        bits = 16 if info.sample_format == "s16" else 24
    if bits == 32 and codec != "pcm":
        bits = 24
        notes.append(f"{codec} stores at most 24 bits here: the 32-bit speech is rounded to 24 bits (output.audio_codec=pcm keeps 32)")
    return ("s16" if bits == 16 else "s32"), bits


def _copy_format(info: AudioInfo, output: OutputConfig, suffix: str, target: Path) -> TrackFormat:
    changed = [f"output.{k}" for k, v, own in (("audio_rate", output.audio_rate, info.sample_rate), ("audio_channels", output.audio_channels, info.channels))
               if v is not None and v != own]
    if changed:
        raise BadInputError(f"output.audio_codec=copy keeps the speech as it is; drop {' and '.join(changed)} or choose aac, pcm, flac or alac")
    allowed = COPYABLE.get(suffix, ())
    if allowed is not None and not any(info.codec == c or (c.endswith("_") and info.codec.startswith(c)) for c in allowed):
        raise BadInputError(
            f"output.audio_codec=copy: {info.path.name} holds {info.codec} audio, which {suffix} files do not take "
            f"({', '.join(c.rstrip('_') for c in allowed)}); write a .mkv file or choose aac, pcm, flac or alac"
        )
    return TrackFormat("copy", info.sample_rate, info.channels, info.layout, "", info.bits, ("-c:a", "copy"), info)


def require_copyable(fmt: TrackFormat, edits: SpeechConfig, timeline: Timeline) -> None:
    """For ``copy``: raise :class:`BadInputError` naming what would change the speech (nothing for other codecs)."""
    if fmt.codec != "copy":
        return
    pad = timeline.pad_audio_seconds
    if not edits.is_identity:
        problem, fix = "the speech.* edits change it", "drop them"
    elif timeline.audio_offset:
        problem, fix = f"timing.audio_offset={timeline.audio_offset:g} moves it", "drop the offset"
    elif abs(pad) > 0.5 / timeline.fps + 1e-9:
        side = "longer" if pad > 0 else "shorter"
        problem = f"the output runs {abs(pad):.2f} s {side} than the speech (timing.length_policy={timeline.policy})"
        fix = "use timing.length_policy=trim"
    else:
        return
    raise BadInputError(f"output.audio_codec=copy: {fmt.source.path.name} cannot be copied unchanged: {problem}; {fix} or choose aac, pcm, flac or alac")


@dataclass(frozen=True)
class Soundtrack:
    """A prepared track: what the video writer muxes, and the loudness gain applied (dB, None when not asked)."""

    mux: MuxedAudio
    gain_db: Optional[float] = None


def write_track(fmt: TrackFormat, edits: SpeechConfig, timeline: Timeline, workdir: Path) -> Soundtrack:
    """Decode, edit and fit the speech of ``fmt.source`` into ``workdir`` for the video writer.

    The track lasts ``timeline.audio_duration`` seconds at ``fmt.sample_rate``
    (rounded to whole samples) with the speech placed at ``timeline.audio_offset``.
    """
    require_copyable(fmt, edits, timeline)
    speech = fmt.source.path
    if fmt.codec == "copy":
        return Soundtrack(MuxedAudio(("-i", str(speech)), fmt.encoder))
    decoded = workdir / "speech.source.raw"
    track = workdir / "speech.track.raw"
    read_as, scale = _decode(fmt, decoded)
    frame = fmt.channels * np.dtype(RAW[read_as][1]).itemsize
    if decoded.stat().st_size < frame:
        raise BadInputError(f"{speech}: audio stream holds no samples; give a file with speech")
    source = RawSamples(decoded, RAW[read_as][1], fmt.channels)
    plan = edit_plan(len(source), fmt.sample_rate, edits.trim, edits.fade_in, edits.fade_out)
    gain_db = None
    if edits.loudness is not None:
        plan = dataclasses.replace(plan, gain=loudness_gain(plan, source, edits.loudness, scale, BLOCK))
        gain_db = float(20 * np.log10(plan.gain))
    plan = plan.placed(timeline.audio_duration, timeline.audio_offset, fmt.sample_rate)
    try:
        with open(track, "wb") as out:
            for first, stop in spans(plan.total, BLOCK):
                out.write(_quantise(plan.block(source, first, stop, scale), fmt).tobytes())
    except OSError as exc:
        raise OutputError(f"{track}: cannot write the sound track ({exc.strerror or exc}); free space in the temporary folder (TMPDIR)") from None
    finally:
        decoded.unlink(missing_ok=True)
    raw_format = RAW[fmt.sample][0]
    inputs = ("-f", raw_format, "-ar", str(fmt.sample_rate), "-ch_layout", fmt.layout, "-i", str(track))
    return Soundtrack(MuxedAudio(inputs, fmt.encoder), gain_db)


def _decode(fmt: TrackFormat, path: Path) -> tuple[str, float]:
    """Decode ``fmt.source`` to raw interleaved samples at ``path``; returns (raw sample type, scale to full-scale units).

    Integer lossless speech is read as 32-bit integers (exact for any depth),
    float speech as itself; resampled, remixed or lossy speech as 32-bit float.
    """
    info = fmt.source
    converted = fmt.sample_rate != info.sample_rate or fmt.channels != info.channels
    if info.bits and not converted:
        read_as = "s32"
    elif info.lossless and info.sample_format == "dbl" and not converted:
        read_as = "f64"
    else:
        read_as = "f32"
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", str(info.path), "-map", "0:a:0", "-vn"]
    if fmt.sample_rate != info.sample_rate:
        cmd += ["-af", "aresample=resampler=soxr:precision=28", "-ar", str(fmt.sample_rate)]
    if fmt.channels != info.channels:
        cmd += ["-ac", str(fmt.channels)]
    cmd += ["-f", RAW[read_as][0], str(path)]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise decode_failure(info.path, proc.stderr.decode("utf-8", "replace"), proc.returncode)
    return read_as, (2.0 ** -31 if read_as == "s32" else 1.0)


class RawSamples:
    """Interleaved raw samples in a file, sliced like an ``[n, channels]`` array: each slice is read
    from disk (no memmap, whose pages would count in the process's memory as the file is read)."""

    def __init__(self, path: Path, dtype: str, channels: int) -> None:
        self.path, self.dtype, self.channels = path, np.dtype(dtype), channels
        self.shape = (path.stat().st_size // (channels * self.dtype.itemsize), channels)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, span: slice) -> np.ndarray:
        first, stop, _ = span.indices(self.shape[0])
        count = max(stop - first, 0) * self.channels
        data = np.fromfile(self.path, self.dtype, count=count, offset=first * self.channels * self.dtype.itemsize)
        return data.reshape(-1, self.channels)


def _quantise(block: np.ndarray, fmt: TrackFormat) -> np.ndarray:
    """float64 full-scale ``[m, channels]`` -> the encoder's raw samples (integers rounded to ``fmt.bits``, left-aligned in 32 bits)."""
    dtype = RAW[fmt.sample][1]
    if fmt.bits is None:
        return block.astype(dtype)
    top = 2.0 ** (fmt.bits - 1)
    ints = np.clip(np.round(block * top), -top, top - 1).astype(np.int64)
    width = 8 * np.dtype(dtype).itemsize
    return (ints << (width - fmt.bits)).astype(dtype)
