"""moviepy integration: dub a clip inside an edit with the :class:`LipSync` effect.

::

    from moviepy import AudioFileClip, VideoFileClip, concatenate_videoclips
    from latentdub.moviepy import LipSync

    take = VideoFileClip("take.mp4")
    line = AudioFileClip("line-de.wav")                      # or just the path
    dubbed = take.subclipped(2, 6).with_effects([LipSync(line, preset="auto")])
    edit = concatenate_videoclips([take.subclipped(0, 2), dubbed, take.subclipped(6)])
    edit.write_videofile("edit.mp4")

The effect streams: the clip's frames are encoded to a temporary H.264 file
one at a time, the speech (a path, or any moviepy ``AudioClip`` written out
at its own rate) goes to a WAV, both run through
:func:`latentdub.toolkit.dubbing.pipeline.dub` with the preset, and the result comes
back as a :class:`DubbedClip` (a ``VideoFileClip`` carrying the new speech
as its audio and the run's ``summary``). No whole-clip array is ever held.
Its files live in a temporary folder for as long as the returned clip (or
any copy, subclip or composition holding it) exists, or under ``output`` when
one is given - the place to find the extras a preset asks for
(``output.review``, ``output.preview``, the resolved preset).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from moviepy import AudioClip, VideoFileClip
from moviepy.Effect import Effect

from .toolkit.core.errors import BadInputError
from .toolkit.core.presets import Preset

#: x264 quality of the temporary copy of the clip handed to the pipeline (visually lossless).
SOURCE_CRF = 12


class DubbedClip(VideoFileClip):
    """The dubbed clip: a ``VideoFileClip`` of the pipeline's output, its audio the new speech.

    ``summary`` is the run's :class:`~latentdub.toolkit.dubbing.pipeline.RunSummary`;
    copies made by moviepy (``subclipped``, ``with_*``) keep the files alive.
    """

    summary: Any = None
    _files: Any = None


@dataclasses.dataclass
class LipSync(Effect):
    """Re-lip-sync a clip to ``speech`` (a path or a moviepy ``AudioClip``).

    ``preset``: a shipped name (``auto`` picks the neural stack when its
    weights are present, else ``preview``), a YAML path or a resolved
    :class:`~latentdub.toolkit.core.presets.Preset`; ``overrides``:
    ``["stage.key=value", ...]`` as ``--set``; ``profile``: an identity
    profile from ``latentdub tune``; ``transcript``: the spoken text (or a
    text file), as ``--transcript``; ``output``: where to keep the dubbed
    file and its extras (default: a temporary folder); ``device``: as
    ``--device``; ``progress``: show the pipeline's progress bars.
    """

    speech: Any
    preset: Any = "auto"
    overrides: Sequence[str] = ()
    profile: Optional[Path] = None
    transcript: Optional[str] = None
    output: Optional[Path] = None
    device: Optional[str] = None
    progress: bool = False
    log: Callable[[str], None] = print

    def apply(self, clip) -> DubbedClip:
        """Dub ``clip`` (any moviepy video clip with ``fps`` and ``duration``) and return the dubbed clip."""
        from .commands.options import load_preset, transcript_override
        from .toolkit.dubbing.pipeline import dub
        from .toolkit.media.video import VideoWriter, check_output_path

        if getattr(clip, "fps", None) is None or clip.duration is None:
            raise BadInputError("LipSync: the clip needs a frame rate and a duration; set them with clip.with_fps(25).with_duration(SECONDS)")
        if not isinstance(self.speech, (str, Path, AudioClip)):
            raise BadInputError(f"LipSync: speech must be a file path or a moviepy AudioClip, got {type(self.speech).__name__}")
        if isinstance(self.speech, (str, Path)) and not Path(self.speech).is_file():
            raise BadInputError(f"{self.speech}: speech file not found; check the path")
        extra = tuple(self.overrides) + tuple(transcript_override(self.transcript))
        if isinstance(self.preset, Preset):
            if extra or self.device:
                raise BadInputError("LipSync: overrides, transcript and device apply to a preset name or YAML path, not to a resolved Preset")
            preset = self.preset
        else:
            preset = load_preset(str(self.preset), extra, self.device, self.log)
        files = tempfile.TemporaryDirectory(prefix="latentdub-moviepy-")
        work = Path(files.name)
        output = check_output_path(self.output) if self.output is not None else work / "dubbed.mp4"
        with VideoWriter(work / "source.mp4", float(clip.fps), tuple(clip.size), crf=SOURCE_CRF, x264_preset="ultrafast") as writer:
            for frame in clip.iter_frames(fps=clip.fps, dtype="uint8"):
                writer.write(frame[..., :3])
        speech = Path(self.speech) if isinstance(self.speech, (str, Path)) else _write_speech(self.speech, work / "speech.wav")
        summary = dub(work / "source.mp4", speech, output, preset=preset, profile=self.profile, progress=self.progress, log=self.log)
        dubbed = DubbedClip(str(output))
        dubbed.summary, dubbed._files = summary, files
        if dubbed.audio is not None:
            dubbed.audio._latentdub_files = files  # the audio reader reopens the file too
        dubbed = dubbed.with_duration(summary.frames / summary.fps)
        if getattr(clip, "mask", None) is not None and summary.frames == round(clip.duration * clip.fps):
            dubbed = dubbed.with_mask(clip.mask)
        return dubbed.with_start(clip.start).with_position(clip.pos, relative=clip.relative_pos).with_layer_index(clip.layer_index)


def _write_speech(audio: AudioClip, path: Path) -> Path:
    """Write a moviepy ``AudioClip`` to 16-bit WAV at its own sample rate (moviepy resamples badly), streaming it."""
    fps = int(getattr(audio, "fps", None) or 44100)
    if audio.duration is None:
        raise BadInputError("LipSync: the speech AudioClip has no duration; set one with audio.with_duration(SECONDS)")
    audio.write_audiofile(str(path), fps=fps, nbytes=2, codec="pcm_s16le", logger=None)
    return path
