"""Before/after contact sheet of the offline renderers: source, ``warp`` (preset ``preview``), ``mouthbank`` (preset ``offline``).

A GRID clip (CC BY 4.0, Cooke et al. 2006) is dubbed with the speech of
another; columns are the output frames with the widest target openings
(spread over the clip), rows the source frame and the two dubs, each cut to
the lower face with the source's own alignment.

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


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    import cv2

    tile = tile.copy()
    cv2.putText(tile, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(tile, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
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
    from latentdub.toolkit.dubbing.pipeline import dub
    from latentdub.toolkit.faces.track import analyse_video
    from latentdub.toolkit.media.video import read_frames

    preset = resolve_preset("offline")
    detector = get_component("detector", "dlib")
    track = analyse_video(read_frames(args.video), detector.factory(detector.config(), None), preset.track)
    alignments = [t.alignment for t in track]
    with tempfile.TemporaryDirectory() as tmp:
        outputs = {"source": args.video}
        for name, p in ROWS[1:]:
            outputs[name] = Path(tmp) / f"{name}.mp4"
            dub(args.video, args.speech, outputs[name], preset=p, overrides=["timing.length_policy=trim"], log=lambda m: None)
        # the widest target openings, at least 6 frames apart
        motion_comp = get_component("motion", "visemes")
        from latentdub.toolkit.media.audio import load_audio

        codes = motion_comp.factory(motion_comp.config(), None).predict(load_audio(args.speech, sample_rate=16000), 25.0, track.n_frames).codes
        picked: list[int] = []
        for t in np.argsort(-codes[:, 0]):
            if alignments[t] is not None and all(abs(int(t) - p) >= 6 for p in picked):
                picked.append(int(t))
            if len(picked) == args.columns:
                break
        picked.sort()
        rows = []
        for name, _ in ROWS:
            tiles = _lower_faces(outputs[name], alignments, picked, args.side)
            rows.append(np.concatenate([_label(tiles[0], name), *tiles[1:]], axis=1))
    sheet = np.concatenate(rows, axis=0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(args.out, format="PNG", optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB), frames {picked}")


if __name__ == "__main__":
    main()
