"""Speech-driven mouth motion from pocketsphinx phones, checked against the real GRID mouths.

GRID corpus clips (CC BY 4.0, Cooke, Barker, Cunningham, Shao 2006). The real
mouth opening of each frame is measured with dlib's HOG detector and 68-point
shape predictor as inner-lip gap / inter-ocular distance.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from latentdub.plugins.viseme_motion import BREATH_HOLD_S, ENVELOPE_HOP, VisemeConfig, VisemeMotion, breath_islands, mark_breaths
from latentdub.toolkit.core.config import parse_config
from latentdub.toolkit.core.errors import BadInputError
from latentdub.toolkit.core.plugins import get_component
from latentdub.toolkit.core.types import Audio
from latentdub.toolkit.media.audio import load_audio
from latentdub.toolkit.media.phonemes import VISEME_SHAPES, PhoneDecoder, PhoneSegment, word_segments

FPS = 25.0
SWWP2S = "id2_vcd_swwp2s.mpg"


@pytest.fixture(scope="session")
def transcripts(shared_data: Path) -> dict[str, str]:
    rows = (shared_data / "grid" / "TRANSCRIPTS.tsv").read_text().splitlines()
    return dict(r.split("\t") for r in rows if r and not r.startswith("#"))


@pytest.fixture(scope="session")
def grid_speech(grid_clips) -> dict[str, Audio]:
    return {p.name: load_audio(p) for p in grid_clips}


@pytest.fixture(scope="session")
def reference_words(shared_data: Path) -> list[tuple[str, float, float]]:
    """Word timings of swwp2s from the GRID .align file (1/1000 frame at 25 fps)."""
    rows = [line.split() for line in (shared_data / "grid" / "swwp2s.align").read_text().splitlines() if line.strip()]
    return [(w, int(a) / 1000 / FPS, int(b) / 1000 / FPS) for a, b, w in rows]


@pytest.fixture(scope="session")
def real_mouth(grid_clips) -> dict[str, np.ndarray]:
    """Measured (opening, width) per frame float64 ``[75, 2]`` relative to inter-ocular
    distance (NaN where dlib finds no face), per clip."""
    dlib = pytest.importorskip("dlib")
    import imageio_ffmpeg

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("face_recognition_models is not installed: no dlib 68-point model")
    model = Path(spec.submodule_search_locations[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    detector, predictor = dlib.get_frontal_face_detector(), dlib.shape_predictor(str(model))
    out = {}
    for path in grid_clips:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        w, h = meta["size"]
        values: list[tuple[float, float]] = []
        box = None
        for i, raw in enumerate(reader):
            image = np.frombuffer(raw, np.uint8).reshape(h, w, 3)
            if i % 5 == 0 or box is None:  # GRID heads barely move: detect every 5th frame
                faces = detector(image, 0)
                box = faces[0] if faces else None
            if box is None:
                values.append((np.nan, np.nan))
                continue
            shape = predictor(image, box)
            p = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], np.float64)
            iod = np.linalg.norm(p[36:42].mean(0) - p[42:48].mean(0))
            gap = np.mean([np.linalg.norm(p[a] - p[b]) for a, b in ((61, 67), (62, 66), (63, 65))])
            values.append((gap / iod, np.linalg.norm(p[48] - p[54]) / iod))
        out[path.name] = np.array(values)
    return out


def _pearson_by_lag(pred: np.ndarray, real: np.ndarray, max_lag: int = 3) -> dict[int, float]:
    """r(k) = corr(pred[t], real[t + k]) for k in -max_lag..max_lag (NaN frames skipped)."""
    out = {}
    n = min(len(pred), len(real))
    for k in range(-max_lag, max_lag + 1):
        a = pred[max(0, -k): n - max(0, k)]
        b = real[max(0, k): n - max(0, -k)]
        ok = ~np.isnan(b)
        out[k] = float(np.corrcoef(a[ok], b[ok])[0, 1])
    return out


def test_registered_with_typed_config():
    comp = get_component("motion", "visemes")
    cfg = parse_config(comp.config, {"method": "energy", "smoothing_ms": 30}, "motion")
    model = comp.factory(cfg, None)
    assert model.kind == "mouth" and cfg.smoothing_ms == 30.0


def test_forced_alignment_matches_grid_word_timings(grid_speech, reference_words):
    phones = PhoneDecoder().align(grid_speech[SWWP2S], "set white with p two soon")
    words = word_segments(phones)
    ref = [w for w in reference_words if w[0] != "sil"]
    assert [w[0] for w in words] == [w[0] for w in ref]
    errors = [abs(a - b) for (_, *ours), (_, *theirs) in zip(words, ref) for a, b in zip(ours, theirs)]
    assert np.mean(errors) < 0.1  # measured 0.03 s
    assert max(errors) < 0.2


def test_recognition_separates_speech_from_silence(grid_speech, reference_words):
    phones = PhoneDecoder().recognize(grid_speech[SWWP2S])
    speech = [p for p in phones if p.phone != "SIL"]
    assert phones[0].phone == "SIL" and phones[-1].phone == "SIL"
    start, end = reference_words[0][2], reference_words[-1][1]  # 0.49 s, 2.21 s
    assert abs(speech[0].start - start) < 0.1 and abs(speech[-1].end - end) < 0.1
    assert len(speech) >= 10


@pytest.mark.parametrize("method", ["align", "recognize", "energy"])
def test_mouth_closed_in_silence_open_in_vowels(grid_speech, method):
    cfg = VisemeConfig(method=method, transcript="set white with p two soon" if method == "align" else None, breaths=False)
    motion = VisemeMotion(cfg).predict(grid_speech[SWWP2S], FPS, 75)
    assert motion.kind == "mouth" and motion.codes.shape == (75, 3) and motion.codes.dtype == np.float32
    assert motion.extra["method"] == method and len(motion) == 75
    opening = motion.codes[:, 0]
    # silence before 0.4 s and after 2.5 s; the speaker breathes in before speaking (the real mouth
    # is open ~0.2 there), which the energy method hears as a little opening
    closed = 0.08 if method == "energy" else 0.01
    assert opening[:10].max() < closed and opening[-12:].max() < closed
    assert opening[14:56].max() > 0.12  # speech between 0.56 s and 2.2 s


@pytest.mark.parametrize("method", ["align", "recognize"])
def test_audible_breath_before_speech_parts_the_lips(grid_speech, method):
    """swwp2s breathes in audibly from about 0.1 s to 0.45 s, before "set" (0.49 s), with the mouth open about 0.2 IOD
    until the word starts."""
    cfg = VisemeConfig(method=method, transcript="set white with p two soon" if method == "align" else None)
    motion = VisemeMotion(cfg).predict(grid_speech[SWWP2S], FPS, 75)
    phones = motion.extra["phones"]
    at = next(n for n, s in enumerate(phones) if s["phone"] == "BREATH")
    assert [s["phone"] for s in phones].count("BREATH") == 1 and 0.05 <= phones[at]["start"] < 0.2
    assert 0.45 < phones[at]["end"] == phones[at + 1]["start"] < 0.6  # held open until "set" starts
    opening = motion.codes[:, 0]
    assert 0.08 < opening[5:10].min() and opening[5:10].max() <= VISEME_SHAPES["BREATH"][0] + 1e-6
    assert opening[-12:].max() < 0.01  # after the sentence: no breath, the speech's decay is not one
    pause = [PhoneSegment("SIL", 0.0, 1.0)]  # no speech follows: nothing is a breath, however loud
    assert mark_breaths(pause, np.ones(100)) == pause


def _level(spans: list[tuple[float, float, float]], seconds: float = 1.2) -> np.ndarray:
    """Speech-band level 0..1 per envelope hop: ``value`` over each ``(start, end, value)``, 0 elsewhere."""
    level = np.zeros(int(round(seconds / ENVELOPE_HOP)))
    for start, end, value in spans:
        level[int(round(start / ENVELOPE_HOP)):int(round(end / ENVELOPE_HOP))] = value
    return level


def test_quiet_island_before_speech_is_a_breath_and_the_lips_stay_parted():
    """A short, quiet "phone" between two pauses before speech is the noise of breathing in: it becomes one
    BREATH, held open over the short silence up to the first word; loud, long or last islands stay words."""
    def clip(island: PhoneSegment, pause_end: float = 0.55) -> list[PhoneSegment]:
        return [PhoneSegment("SIL", 0.0, island.start), island, PhoneSegment("SIL", island.end, pause_end),
                PhoneSegment("G", pause_end, pause_end + 0.08), PhoneSegment("AE", pause_end + 0.08, pause_end + 0.3),
                PhoneSegment("SIL", pause_end + 0.3, 1.2)]

    speech = (0.55, 0.85, 1.0)
    quiet = clip(PhoneSegment("TH", 0.23, 0.32))
    level = _level([(0.23, 0.32, 0.3), speech])
    marked = mark_breaths(breath_islands(quiet, level), level)
    assert [(s.phone, s.start, s.end) for s in marked[:3]] == [("SIL", 0.0, 0.23), ("BREATH", 0.23, 0.55), ("G", 0.55, 0.63)]
    assert breath_islands(quiet, _level([(0.23, 0.32, 0.9), speech])) == quiet  # loud: a word
    long = clip(PhoneSegment("TH", 0.1, 0.35))
    assert breath_islands(long, _level([(0.1, 0.35, 0.3), speech])) == long  # 0.25 s: a word
    last = [PhoneSegment("SIL", 0.0, 0.5), PhoneSegment("AE", 0.5, 0.8), PhoneSegment("SIL", 0.8, 1.0), PhoneSegment("TH", 1.0, 1.05),
            PhoneSegment("SIL", 1.05, 1.2)]
    assert breath_islands(last, _level([(0.5, 0.8, 1.0), (1.0, 1.05, 0.2)])) == last  # no speech after it
    # a breath long before the first word: the lips close in between
    early = mark_breaths(breath_islands(clip(PhoneSegment("TH", 0.05, 0.1), pause_end=0.2 + BREATH_HOLD_S), level), level)
    assert [s.phone for s in early[:4]] == ["SIL", "BREATH", "SIL", "G"] and early[1].end == 0.1


def test_breath_noise_recognised_as_a_consonant_parts_the_lips(grid_speech, real_mouth):
    """lrwp9a breathes in with its mouth open from about 0.25 s and keeps it open (about 0.2 IOD) until "lay" at
    0.55 s; the recogniser hears the breath as a "TH" at 0.23-0.32 s."""
    motion = VisemeMotion(VisemeConfig(method="recognize")).predict(grid_speech["lrwp9a.mpg"], FPS, 75)
    breaths = [s for s in motion.extra["phones"] if s["phone"] == "BREATH"]
    assert len(breaths) == 1 and 0.15 < breaths[0]["start"] < 0.3 and 0.5 < breaths[0]["end"] < 0.6
    frames = np.arange(8, 14)  # 0.32-0.52 s
    assert real_mouth["lrwp9a.mpg"][frames, 0].min() > 0.1
    assert motion.codes[frames, 0].min() > 0.08
    plain = VisemeMotion(VisemeConfig(method="recognize", breaths=False)).predict(grid_speech["lrwp9a.mpg"], FPS, 75)
    assert plain.codes[frames, 0].min() < 0.01  # without breaths the mouth shuts there


def test_bilabial_closure_and_rounding(grid_speech):
    motion = VisemeMotion(VisemeConfig(transcript="set white with p two soon")).predict(grid_speech[SWWP2S], FPS, 75)
    phones = motion.extra["phones"]
    p = next(s for s in phones if s["phone"] == "P")
    frames = [t for t in range(75) if p["start"] <= t / FPS < p["end"]]
    assert motion.codes[frames, 0].min() < 0.03  # the lips close for "p"
    uw = next(s for s in phones if s["phone"] == "UW")
    t = int(round((uw["start"] + uw["end"]) / 2 * FPS))
    assert motion.codes[t, 2] > 0.5 and motion.codes[t, 1] < -0.05  # "two": rounded, narrow


def test_gain_latency_and_silence(grid_speech):
    speech = grid_speech[SWWP2S]
    base = VisemeMotion(VisemeConfig(method="energy")).predict(speech, FPS, 75).codes
    louder = VisemeMotion(VisemeConfig(method="energy", gain=2.0)).predict(speech, FPS, 75).codes
    assert np.allclose(louder[:, 0], 2 * base[:, 0])
    late = VisemeMotion(VisemeConfig(method="energy", latency_ms=40.0)).predict(speech, FPS, 75).codes
    assert np.allclose(late[1:, 0], base[:-1, 0], atol=1e-6)  # one frame later
    silent = VisemeMotion().predict(Audio(np.zeros(32000, np.float32), 16000), FPS, 50)
    assert silent.extra["method"] == "energy" and not silent.codes.any()
    empty = VisemeMotion().predict(Audio(np.zeros(0, np.float32), 16000), FPS, 10)
    assert empty.codes.shape == (10, 3) and not empty.codes.any()


def test_transcript_file_and_errors(tmp_path, grid_speech):
    text = tmp_path / "words.txt"
    text.write_text("Set white with P two, soon.\n")
    motion = VisemeMotion(VisemeConfig(method="align", transcript_file=text)).predict(grid_speech[SWWP2S], 30.0, 90)
    assert motion.extra["method"] == "align" and motion.codes.shape == (90, 3)
    with pytest.raises(BadInputError, match="transcript"):
        VisemeMotion(VisemeConfig(method="align"))
    with pytest.raises(BadInputError, match="nope.txt"):
        VisemeMotion(VisemeConfig(transcript_file=tmp_path / "nope.txt"))
    with pytest.raises(BadInputError, match="'zzxqv'"):
        VisemeMotion(VisemeConfig(method="align", transcript="set zzxqv")).predict(grid_speech[SWWP2S], FPS, 75)
    auto = VisemeMotion(VisemeConfig(transcript="set zzxqv")).predict(grid_speech[SWWP2S], FPS, 75)
    assert auto.extra["method"] == "recognize"  # auto falls back when the transcript cannot be aligned
    assert "'zzxqv'" in auto.extra["fallback"]
    assert auto.extra["notes"] == [f"motion: fell back to recognize: {auto.extra['fallback']}"]  # the run summary shows it


def test_predicted_mouth_tracks_the_real_mouth(grid_speech, transcripts, real_mouth):
    """Acceptance check of the mouth model: Pearson r against the dlib-measured mouth on GRID."""
    report = {}
    widths = []
    for method in ("align", "recognize", "energy"):
        curves = []
        for clip, real in real_mouth.items():
            cfg = VisemeConfig(method=method, transcript=transcripts[clip] if method == "align" else None)
            codes = VisemeMotion(cfg).predict(grid_speech[clip], FPS, len(real)).codes.astype(np.float64)
            curves.append(_pearson_by_lag(codes[:, 0], real[:, 0]))
            if method == "align":
                widths.append(_pearson_by_lag(codes[:, 1], real[:, 1], max_lag=0)[0])
        mean_by_lag = {k: float(np.mean([c[k] for c in curves])) for k in curves[0]}
        report[method] = (round(mean_by_lag[0], 3), max(mean_by_lag, key=mean_by_lag.get))
    # measured (8 clips, lag 0): opening align 0.75, recognize 0.74 (0.62, 0.61 before breaths), energy 0.55, best lag 0;
    # width align 0.41
    assert report["align"][0] > 0.65 and report["recognize"][0] > 0.65 and report["energy"][0] > 0.45, report
    assert all(abs(lag) <= 1 for _, lag in report.values()), report
    assert np.mean(widths) > 0.25, widths
