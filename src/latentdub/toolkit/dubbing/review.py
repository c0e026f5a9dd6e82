"""The review page of a run (``output.review: true`` or ``--review``).

``OUT.review.html`` is written beside the output ``OUT.mp4`` with its assets
in the folder ``OUT.review/``:

* ``source.mp4``: the source frames each output frame was made from (so it
  follows the output's timeline under every length policy), H.264 so a
  browser plays it, with the source's own sound when the output keeps the
  source's timing (``pad``, or ``trim`` to shorter speech);
* ``plot.png``: mouth opening over time - measured on the written output
  (faces detected again), measured on the source, and the motion model's
  target - above the speech waveform and a strip of dubbed / passed-through
  / fallback frames.

The page plays source and dub in step (one transport drives both), puts a
playhead on the plot (click it to seek), reads out each frame's numbers, and
lists the stage times, notes and the resolved preset. Nothing is fetched
from a network: the page is plain HTML, CSS and a short script; the videos
and the plot are referenced relatively, so the page, its folder and the
output can move together.

Cost: one more decode and face analysis of the output (about the analysis
pass of the run), one H.264 encode of the source copy, and one plot.
"""

from __future__ import annotations

import dataclasses
import html
import json
import shutil
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..core.files import write_bytes_atomic, write_text_atomic
from ..core.types import Audio, Motion, TrackedFace
from ..faces.masks import mouth_openings
from ..media.figures import figure_bytes, new_figure, waveform_envelope
from ..media.video import MuxedAudio, VideoWriter, read_frames

#: Largest lag (frames, either way) searched when relating the output's mouth to the target.
MAX_LAG = 5
#: Detector that measures mouths when the run's own detector has no 68-point landmarks.
MEASURE_DETECTOR = "dlib"
#: Sample rate of the source's sound in the source copy, Hz.
SOURCE_AUDIO_RATE = 24000
#: Colour and name of each frame kind in the strip: passed through, dubbed, dubbed by the renderer's fallback.
KIND_COLOURS = ("#b8b8b8", "#2a9d5c", "#e07b00")
KIND_NAMES = ("passed through", "dubbed", "fallback")
#: Horizontal extent of every axis of the review figure, as fractions of its width (the page's playhead uses them).
REVIEW_X = (0.065, 0.985)


def review_paths(output: Path) -> tuple[Path, Path]:
    """(``OUT.review.html``, ``OUT.review/``) of the run writing ``output``."""
    return output.with_name(output.stem + ".review.html"), output.with_name(output.stem + ".review")


def motion_target(motion: Motion) -> Optional[np.ndarray]:
    """Target mouth opening float32 ``[T]`` of ``motion``: ``codes[:, 0]`` for kind ``mouth``, else ``extra["mouth"][:, 0]``, else None."""
    if motion.kind == "mouth":
        return np.asarray(motion.codes[:, 0], np.float32)
    shapes = motion.extra.get("mouth")
    return None if shapes is None else np.asarray(shapes, np.float32).reshape(len(motion), -1)[:, 0]


def follow(measured: np.ndarray, target: np.ndarray, max_lag: int = MAX_LAG) -> tuple[float, int]:
    """(Pearson r, lag in frames) of ``measured`` against ``target`` at the lag in ``[-max_lag, max_lag]`` that correlates best.

    A positive lag means ``measured`` comes later than ``target``. NaN
    frames are left out; r is NaN when fewer than 3 frames remain or a side
    is constant.
    """
    best = (np.nan, 0)
    for lag in range(-max_lag, max_lag + 1):
        a = measured[max(lag, 0):]
        b = target[max(-lag, 0):]
        n = min(len(a), len(b))
        a, b = a[:n], b[:n]
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.sum() < 3 or np.std(a[ok]) < 1e-9 or np.std(b[ok]) < 1e-9:
            continue
        r = float(np.corrcoef(a[ok], b[ok])[0, 1])
        if not np.isfinite(best[0]) or r > best[0] + 1e-9 or (abs(r - best[0]) <= 1e-9 and abs(lag) < abs(best[1])):
            best = (r, lag)
    return best


def review_figure(
    fps: float,
    output: np.ndarray,
    source: np.ndarray,
    target: Optional[np.ndarray],
    speech: tuple[np.ndarray, np.ndarray, np.ndarray],
    kinds: np.ndarray,
) -> bytes:
    """PNG of the review timeline (1200 px wide): mouth opening, speech waveform, frame kinds.

    ``output``/``source``/``target``: float ``[T]`` mouth opening per output
    frame (inner-lip gap / inter-ocular distance; NaN where unmeasured,
    ``target`` None when the motion model gives none); ``speech``: the
    envelope of :func:`~latentdub.toolkit.media.figures.waveform_envelope`;
    ``kinds``: uint8 ``[T]`` codes indexing :data:`KIND_COLOURS`. Every axis
    spans :data:`REVIEW_X` of the width and ``[0, T / fps]`` seconds.
    """
    from matplotlib.colors import ListedColormap

    n = len(kinds)
    end = max(n, 1) / fps
    times = np.arange(n) / fps
    fig = new_figure(12.0, 4.6)
    left, right = REVIEW_X
    mouth = fig.add_axes((left, 0.45, right - left, 0.49))
    wave = fig.add_axes((left, 0.22, right - left, 0.19), sharex=mouth)
    strip = fig.add_axes((left, 0.12, right - left, 0.06), sharex=mouth)
    if target is not None:
        mouth.plot(times, target, color="#7b61c9", lw=1.4, ls="--", label="target (motion model)")
    mouth.plot(times, source, color="#8a8a8a", lw=1.2, label="source (measured)")
    mouth.plot(times, output, color="#d1495b", lw=1.8, label="output (measured on the dub)")
    mouth.set_ylabel("mouth opening\n(lip gap / eye distance)")
    mouth.set_ylim(bottom=0.0)
    mouth.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8, ncol=3, frameon=False, borderaxespad=0.1)
    mouth.grid(alpha=0.25)
    mouth.tick_params(labelbottom=False)
    t, lo, hi = speech
    wave.fill_between(t, lo, hi, color="#3b6ea5", lw=0)
    peak = max(float(np.max(np.abs(np.concatenate([lo, hi])))), 1e-3)
    wave.set_ylim(-peak, peak)
    wave.set_yticks([])
    wave.set_ylabel("speech", rotation=0, ha="right", va="center")
    wave.tick_params(labelbottom=False)
    strip.imshow(np.asarray(kinds, np.int64)[None, :], aspect="auto", interpolation="nearest", extent=(0, end, 0, 1),
                 cmap=ListedColormap(KIND_COLOURS), vmin=-0.5, vmax=len(KIND_COLOURS) - 0.5)
    strip.set_yticks([])
    strip.set_ylabel("frames", rotation=0, ha="right", va="center")
    strip.set_xlabel("time (s)")
    mouth.set_xlim(0, end)
    return figure_bytes(fig, "png")


def measure_openings(frames, detector, track_config, n_frames_hint: Optional[int] = None, progress=None) -> np.ndarray:
    """Mouth opening float64 ``[N]`` of each frame of ``frames`` (NaN without a face), tracked as the run tracks.

    ``detector`` must give 68-point landmarks.
    """
    from ..faces.track import analyse_video

    track = analyse_video(frames, detector, track_config, n_frames_hint=n_frames_hint, progress=progress)
    return mouth_openings(track.landmarks68)


def mouth_detector(components):
    """The run's detector when it gives 68-point landmarks, else :data:`MEASURE_DETECTOR` (for measuring mouths)."""
    detector = components["detector"]
    if getattr(detector, "dense_landmarks", False):
        return detector
    from ..core.build import build_with_defaults

    return build_with_defaults("detector", MEASURE_DETECTOR, components.context)


@dataclasses.dataclass
class Review:
    """Collects what the review page shows while a run streams; per-frame numbers only (memory stays flat).

    ``source_openings``: float64 ``[T]`` per output frame; ``source_audio``:
    the source's sound on the output timeline, or None; ``source_label``:
    what the left player shows.
    """

    output: Path
    source_openings: np.ndarray
    source_audio: Optional[Audio]
    source_label: str
    target: Optional[np.ndarray] = None
    speech: Optional[Audio] = None
    fps: float = 0.0
    source_copy: Optional[Path] = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def for_dub(cls, output: Path, video: Path, info, track, timeline, components) -> "Review":
        """The review of dubbing ``video`` (probed ``info``, analysed ``track``) onto ``timeline``."""
        from ..media.audio import fit_duration, load_audio

        openings = mouth_openings(track.landmarks68) if track.landmarks68 is not None else measure_openings(
            read_frames(video, fps=timeline.fps, info=info), mouth_detector(components), _measure_config(track.crop_size), info.n_frames
        )
        index = np.minimum(timeline.source_index, len(openings) - 1)
        keeps_timing = bool(np.array_equal(timeline.source_index, np.arange(timeline.n_frames)))
        notes = []
        audio = None
        if info.has_audio and keeps_timing:
            audio = fit_duration(load_audio(video, sample_rate=SOURCE_AUDIO_RATE), timeline.audio_duration)
        elif info.has_audio:
            notes.append(f"the source player is silent: the output reorders the source's frames (length policy {timeline.policy})")
        return cls(output, openings[index], audio, f"source: {video.name}", notes=notes)

    @classmethod
    def for_still(cls, output: Path, image: Path, picture: np.ndarray, tracked: TrackedFace, n_out: int, components) -> "Review":
        """The review of animating the portrait ``picture`` (its tracked face ``tracked``) for ``n_out`` frames."""
        face = tracked.face
        if face is not None and face.landmarks68 is not None:
            opening = float(mouth_openings(face.landmarks68[None])[0])
        else:
            from ..faces.track import track_still

            still = track_still(picture, mouth_detector(components), _measure_config(picture.shape[0]))
            opening = float(mouth_openings(still.face.landmarks68[None])[0]) if still.face is not None else np.nan
        return cls(output, np.full(n_out, opening), None, f"portrait: {image.name}")

    def start(self, motion: Motion, speech: Audio, fps: float, size: tuple[int, int], output_config, workdir: Path) -> VideoWriter:
        """Keep the motion target and the speech; open the writer of the source copy (in ``workdir`` until :meth:`write`)."""
        from ..media.audio import save_wav

        self.target = motion_target(motion)
        self.speech = speech
        self.fps = fps
        sound = None
        if self.source_audio is not None:
            wav = save_wav(self.source_audio, workdir / "source-sound.wav")
            sound = MuxedAudio(("-i", str(wav)), ("-c:a", "aac", "-b:a", output_config.audio_bitrate))
        self.source_copy = workdir / "review-source.mp4"
        return VideoWriter(self.source_copy, fps, size, max(output_config.crf, 20), output_config.x264_preset, audio=sound)

    def write(self, summary, components, progress: Callable[[Optional[int], str], Any]) -> Path:
        """Measure the written output, draw the plot, write the assets folder and the page; returns the page's path.

        The time this takes is added to ``summary.stage_seconds["review"]``;
        ``progress(total, desc)`` makes the progress bar of the measurement.
        """
        assert self.speech is not None, "Review.start was not called"
        started = time.perf_counter()
        preset = components.preset
        page, assets = review_paths(self.output)
        n = len(summary.frame_kinds)
        with progress(n, "review") as bar:
            measured = measure_openings(read_frames(self.output), mouth_detector(components), preset.track, n,
                                        progress=lambda done, total: bar.update(done - bar.n))
        output = np.full(n, np.nan)
        output[: min(n, len(measured))] = measured[:n]
        source = np.asarray(self.source_openings, np.float64)[:n]
        target = None if self.target is None else np.asarray(self.target, np.float64)[:n]
        envelope = waveform_envelope(self.speech.samples, self.speech.sample_rate)
        png = review_figure(self.fps, output, source, target, envelope, summary.frame_kinds)
        summary.stage_seconds["review"] = summary.stage_seconds.get("review", 0.0) + time.perf_counter() - started
        part = assets.with_name("." + assets.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir()
        shutil.move(str(self.source_copy), part / "source.mp4")
        write_bytes_atomic(part / "plot.png", png)
        if assets.exists():
            shutil.rmtree(assets)
        part.replace(assets)
        data = {
            "fps": self.fps,
            "frames": n,
            "kinds": summary.frame_kinds.astype(int).tolist(),
            "kind_names": list(KIND_NAMES),
            "kind_colours": list(KIND_COLOURS),
            "output": _floats(output),
            "source": _floats(source),
            "target": None if target is None else _floats(target),
            "plot_x": list(REVIEW_X),
            "duration": n / self.fps,
            "follow": _follow_report(output, source, target),
        }
        text = _page(self, summary, preset, data, assets.name)
        return write_text_atomic(page, text)


def _measure_config(crop_size: int):
    from ..core.presets import TrackConfig

    return TrackConfig(crop_size=int(crop_size))


def _floats(values: np.ndarray) -> list[Optional[float]]:
    return [None if not np.isfinite(v) else round(float(v), 5) for v in values]


def _follow_report(output: np.ndarray, source: np.ndarray, target: Optional[np.ndarray]) -> Optional[dict[str, Any]]:
    if target is None:
        return None
    r, lag = follow(output, target)
    r_source, _ = follow(source, target, max_lag=0)
    return {"r": None if not np.isfinite(r) else round(r, 4), "lag": lag, "r_source": None if not np.isfinite(r_source) else round(r_source, 4)}


def _follow_sentence(report: Optional[dict[str, Any]], fps: float) -> str:
    if report is None:
        return "The motion model gives no target mouth shape, so only the measured openings are plotted."
    if report["r"] is None:
        return "The output's mouth opening could not be related to the target (too few frames with a face, or a constant curve)."
    lag = report["lag"]
    when = "at the same frame" if lag == 0 else f"{abs(lag)} frame{'s' if abs(lag) > 1 else ''} ({abs(lag) / fps * 1000:.0f} ms) {'later' if lag > 0 else 'earlier'}"
    base = "" if report["r_source"] is None else f" (the source's own mouth: r = {report['r_source']:+.2f})"
    return f"The dub's mouth opening follows the motion model's target with r = {report['r']:+.2f}, best {when}{base}."


def _page(review: Review, summary, preset, data: dict[str, Any], folder: str) -> str:
    esc = html.escape
    link = urllib.parse.quote
    total = sum(summary.stage_seconds.values())
    stage_rows = "".join(
        f"<tr><td>{esc(k)}</td><td>{v:.2f} s</td><td>{100 * v / max(total, 1e-9):.0f}%</td></tr>" for k, v in summary.stage_seconds.items()
    )
    counts = np.bincount(summary.frame_kinds.astype(np.int64), minlength=len(data["kind_names"])) if len(summary.frame_kinds) else np.zeros(3, int)
    legend = "".join(
        f'<span class="key"><i style="background:{c}"></i>{esc(name)} {int(k)}</span>'
        for name, c, k in zip(data["kind_names"], data["kind_colours"], counts)
    )
    notes = "".join(f"<li>{esc(n)}</li>" for n in [*summary.notes, *review.notes]) or "<li>none</li>"
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    plot_src = f"{link(folder)}/plot.png"
    return _TEMPLATE.format(
        title=esc(summary.output.name),
        dub=esc(link(summary.output.name)),
        source=esc(f"{link(folder)}/source.mp4"),
        source_label=esc(review.source_label),
        dub_label=esc(f"dub: {summary.output.name}"),
        plot=esc(plot_src),
        follow=esc(_follow_sentence(data["follow"], data["fps"])),
        summary=esc("\n".join(summary.lines()[:3])),
        legend=legend,
        stages=stage_rows,
        total=f"{total:.2f}",
        notes=notes,
        preset=esc(preset.to_yaml()),
        data=payload,
    )


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>review: {title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 16px 24px; color: #222; background: #fafafa; }}
h1 {{ font-size: 18px; margin: 0 0 4px; }}
.players {{ display: flex; gap: 12px; }}
.players figure {{ flex: 1; margin: 0; background: #111; }}
.players video {{ width: 100%; display: block; }}
.players figcaption {{ color: #eee; font-size: 12px; padding: 4px 8px; }}
.transport {{ display: flex; align-items: center; gap: 8px; margin: 8px 0; }}
.transport input[type=range] {{ flex: 1; }}
button, select {{ font: inherit; }}
#readout {{ font-variant-numeric: tabular-nums; min-width: 30em; }}
.plot {{ position: relative; margin-top: 8px; cursor: crosshair; }}
.plot img {{ width: 100%; display: block; }}
#playhead {{ position: absolute; top: 0; bottom: 0; width: 2px; background: #d1495b; pointer-events: none; left: 0; }}
.key {{ margin-right: 14px; }} .key i {{ display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: -1px; }}
table {{ border-collapse: collapse; }} td {{ padding: 1px 12px 1px 0; }}
pre {{ background: #f0f0f0; padding: 8px; overflow: auto; }}
.follow {{ font-weight: 600; }}
</style>
</head>
<body>
<h1>Review of {title}</h1>
<pre class="summary">{summary}</pre>
<div class="players">
  <figure><video id="source" src="{source}" preload="auto" muted playsinline></video><figcaption>{source_label}</figcaption></figure>
  <figure><video id="dub" src="{dub}" preload="auto" playsinline></video><figcaption>{dub_label}</figcaption></figure>
</div>
<div class="transport">
  <button id="play" title="play / pause (space)">play</button>
  <button id="back" title="one frame back (left arrow)">&#9664;</button>
  <button id="next" title="one frame on (right arrow)">&#9654;</button>
  <input id="scrub" type="range" min="0" max="1" step="0.001" value="0" aria-label="time">
  <span id="readout"></span>
  <label>speed <select id="speed"><option>0.25</option><option>0.5</option><option selected>1</option></select></label>
  <label>sound <select id="sound"><option value="dub" selected>dub</option><option value="source">source</option><option value="none">none</option></select></label>
</div>
<p class="follow">{follow}</p>
<div class="plot" id="plot"><img id="plotimg" src="{plot}" alt="mouth opening over time, speech waveform and frame kinds"><div id="playhead"></div></div>
<p>{legend}</p>
<h2>Stage times</h2>
<table>{stages}<tr><td><b>total</b></td><td><b>{total} s</b></td><td></td></tr></table>
<h2>Notes</h2>
<ul>{notes}</ul>
<details><summary>Resolved preset</summary><pre>{preset}</pre></details>
<script type="application/json" id="review-data">{data}</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("review-data").textContent);
const dub = document.getElementById("dub"), source = document.getElementById("source");
const scrub = document.getElementById("scrub"), readout = document.getElementById("readout");
const plot = document.getElementById("plot"), playhead = document.getElementById("playhead");
const frameTime = 1 / data.fps;
const duration = () => (isFinite(dub.duration) && dub.duration > 0 ? dub.duration : data.duration);
const frameAt = (t) => Math.max(0, Math.min(data.frames - 1, Math.floor(t * data.fps + 1e-3)));
const fmt = (v) => (v === null || v === undefined ? "-" : v.toFixed(3));
function seek(t) {{
  t = Math.max(0, Math.min(duration(), t));
  dub.currentTime = t;
  source.currentTime = t;
  draw();
}}
function draw() {{
  const t = dub.currentTime, i = frameAt(t);
  scrub.value = String(t / duration());
  const [x0, x1] = data.plot_x;
  playhead.style.left = (100 * (x0 + (x1 - x0) * Math.min(t / data.duration, 1))) + "%";
  readout.textContent = t.toFixed(2) + " s, frame " + (i + 1) + "/" + data.frames + ": " + data.kind_names[data.kinds[i]] +
    ", opening output " + fmt(data.output[i]) + ", source " + fmt(data.source[i]) + (data.target ? ", target " + fmt(data.target[i]) : "");
}}
function keepInStep() {{
  // the dub leads; the source follows by nudging its rate, and jumps only when far off
  const drift = source.currentTime - dub.currentTime;
  if (Math.abs(drift) > 0.25) source.currentTime = dub.currentTime;
  source.playbackRate = dub.playbackRate * (1 - Math.max(-0.5, Math.min(0.5, 2 * drift)));
  draw();
  if (!dub.paused) requestAnimationFrame(keepInStep);
}}
dub.addEventListener("play", () => {{ source.currentTime = dub.currentTime; source.play(); requestAnimationFrame(keepInStep); document.getElementById("play").textContent = "pause"; }});
dub.addEventListener("pause", () => {{ source.pause(); source.playbackRate = dub.playbackRate; source.currentTime = dub.currentTime; draw(); document.getElementById("play").textContent = "play"; }});
dub.addEventListener("seeked", () => {{ if (Math.abs(source.currentTime - dub.currentTime) > 1e-3) source.currentTime = dub.currentTime; draw(); }});
dub.addEventListener("ratechange", () => {{ source.playbackRate = dub.playbackRate; }});
dub.addEventListener("loadedmetadata", draw);
document.getElementById("play").addEventListener("click", () => (dub.paused ? dub.play() : dub.pause()));
document.getElementById("back").addEventListener("click", () => {{ dub.pause(); seek((frameAt(dub.currentTime) - 1 + 0.5) * frameTime); }});
document.getElementById("next").addEventListener("click", () => {{ dub.pause(); seek((frameAt(dub.currentTime) + 1 + 0.5) * frameTime); }});
scrub.addEventListener("input", () => seek(Number(scrub.value) * duration()));
document.getElementById("speed").addEventListener("change", (e) => {{ dub.playbackRate = Number(e.target.value); }});
document.getElementById("sound").addEventListener("change", (e) => {{ dub.muted = e.target.value !== "dub"; source.muted = e.target.value !== "source"; }});
plot.addEventListener("click", (e) => {{
  const box = plot.getBoundingClientRect(), [x0, x1] = data.plot_x;
  const f = ((e.clientX - box.left) / box.width - x0) / (x1 - x0);
  if (f >= 0 && f <= 1) seek(f * data.duration);
}});
document.addEventListener("keydown", (e) => {{
  if (e.target.tagName === "SELECT" || e.target.tagName === "INPUT") return;
  if (e.key === " ") {{ e.preventDefault(); document.getElementById("play").click(); }}
  if (e.key === "ArrowLeft") document.getElementById("back").click();
  if (e.key === "ArrowRight") document.getElementById("next").click();
}});
window.review = {{ seek, data }};
draw();
</script>
</body>
</html>
"""
