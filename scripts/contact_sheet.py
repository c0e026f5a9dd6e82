"""Before/after contact sheet of the offline renderers: source, ``warp`` (preset ``preview``), ``mouthbank`` (preset ``offline``).

A GRID clip (CC BY 4.0, Cooke et al. 2006) is dubbed with the speech of
another; columns are output frames spread evenly over the speech, rows the
source frame and the two dubs, each cut to the mouth with the source's own
alignment; a mouth-bank tile its warp fallback drew says so.

    python scripts/contact_sheet.py [VIDEO SPEECH] [-o docs/images/offline_contact.png] [--columns 6] [--side 128]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GRID = REPO.parent / "shared" / "data" / "grid"
ROWS = (("source", None), ("warp", "preview"), ("mouthbank", "offline"))


def _lower_faces(path: Path, alignments: list, frames: list[int], side: int) -> list[np.ndarray]:
    """Mouth regions (``side`` px wide) of the aligned crops of ``frames`` of video ``path``."""
    import cv2

    from latentdub.toolkit.faces.align import warp_to_crop
    from latentdub.toolkit.media.video import read_frames_at

    images = read_frames_at(path, frames)
    out = []
    for f in frames:
        crop = warp_to_crop(images[f], alignments[f])
        size = crop.shape[0]
        lower = crop[int(0.58 * size) : int(0.95 * size), int(0.25 * size) : int(0.75 * size)]
        out.append(cv2.resize(lower, (side, round(side * lower.shape[0] / lower.shape[1])), interpolation=cv2.INTER_AREA))
    return out


def _label(tile: np.ndarray, text: str, bottom: bool = False) -> np.ndarray:
    """``tile`` with ``text`` written white on black in its top (or bottom) left corner."""
    import cv2

    tile = tile.copy()
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
    x, y = 3, tile.shape[0] - 5 if bottom else h + 4
    cv2.rectangle(tile, (x - 2, y - h - 3), (x + w + 2, y + 3), (0, 0, 0), -1)
    cv2.putText(tile, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", nargs="?", type=Path, default=GRID / "bbaf2n.mpg")
    parser.add_argument("speech", nargs="?", type=Path, default=GRID / "brbk7n.mpg")
    parser.add_argument("-o", "--out", type=Path, default=REPO / "docs" / "images" / "offline_contact.png")
    parser.add_argument("--columns", type=int, default=6)
    parser.add_argument("--side", type=int, default=144, help="width of one tile, px")
    args = parser.parse_args()

    from PIL import Image

    from latentdub.toolkit.core.plugins import get_component
    from latentdub.toolkit.core.presets import resolve_preset
    from latentdub.toolkit.dubbing.pipeline import FALLBACK, dub
    from latentdub.toolkit.faces.track import analyse_video
    from latentdub.toolkit.media.audio import load_audio
    from latentdub.toolkit.media.video import read_frames

    preset = resolve_preset("offline")
    detector = get_component("detector", "dlib")
    track = analyse_video(read_frames(args.video), detector.factory(detector.config(), None), preset.track)
    alignments = [t.alignment for t in track]
    with tempfile.TemporaryDirectory() as tmp:
        outputs, kinds = {"source": args.video}, {}
        for name, p in ROWS[1:]:
            outputs[name] = Path(tmp) / f"{name}.mp4"
            kinds[name] = dub(args.video, args.speech, outputs[name], preset=p, overrides=["timing.length_policy=trim"], log=lambda m: None).frame_kinds
        # frames spread evenly over the speech (target opening at least 0.08 IOD)
        motion_comp = get_component("motion", "visemes")
        codes = motion_comp.factory(motion_comp.config(), None).predict(load_audio(args.speech, sample_rate=16000), 25.0, track.n_frames).codes
        speaking = [t for t in range(track.n_frames) if codes[t, 0] >= 0.08 and alignments[t] is not None]
        picked = [speaking[int(i)] for i in np.linspace(0, len(speaking) - 1, args.columns).round()]
        rows = []
        for name, _ in ROWS:
            tiles = _lower_faces(outputs[name], alignments, picked, args.side)
            # tiles the renderer drew by its fallback path (the warp renderer) say so
            tiles = [_label(tile, "warp fallback", bottom=True) if name in kinds and kinds[name][t] == FALLBACK else tile for tile, t in zip(tiles, picked)]
            rows.append(np.concatenate([_label(tiles[0], name), *tiles[1:]], axis=1))
    sheet = np.concatenate(rows, axis=0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(args.out, format="PNG", optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB), frames {picked}")


if __name__ == "__main__":
    main()
