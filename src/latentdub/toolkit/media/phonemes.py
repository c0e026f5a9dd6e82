"""Phone segments of speech with pocketsphinx, and the phone -> viseme -> mouth shape table.

Two ways to get ARPAbet phones with times (pocketsphinx 5, the en-us
acoustic model and CMU dictionary shipped in its wheel, 10 ms frames):

* :meth:`PhoneDecoder.align`: forced alignment of a known transcript (word
  alignment, then a second pass for phone boundaries);
* :meth:`PhoneDecoder.recognize`: phone recognition with the en-us phonetic
  language model (pocketsphinx "allphone" search), for speech without a
  transcript. Less accurate per phone but it separates speech from silence.

Silence and noise (``SIL``, ``+NSN+``, ``+SPN+``) come back as ``"SIL"``.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..core.errors import BadInputError
from ..core.types import Audio

#: pocketsphinx analyses 100 frames per second.
PS_FRAME = 0.01


@dataclass(frozen=True)
class PhoneSegment:
    """One phone: ARPAbet ``phone`` without stress digits (``SIL`` for silence/noise),
    ``start``/``end`` in seconds, and when aligned the ``word`` it belongs to
    and that word's position ``word_index`` in the transcript."""

    phone: str
    start: float
    end: float
    word: Optional[str] = None
    word_index: Optional[int] = None

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping (for :attr:`Motion.extra` and JSON)."""
        return {"phone": self.phone, "start": round(self.start, 3), "end": round(self.end, 3), "word": self.word}


def word_segments(phones: list[PhoneSegment]) -> list[tuple[str, float, float]]:
    """``(word, start, end)`` in seconds of each aligned word, from its phones."""
    words: dict[int, tuple[str, float, float]] = {}
    for p in phones:
        if p.word_index is None or p.word is None:
            continue
        _, start, end = words.get(p.word_index, (p.word, p.start, p.end))
        words[p.word_index] = (p.word, min(start, p.start), max(end, p.end))
    return [words[k] for k in sorted(words)]


# --- viseme table -----------------------------------------------------------
#
# Viseme classes after the usual lip-reading groupings (bilabial closure,
# labiodental, dental, alveolar, post-alveolar rounded, velar, glides, and
# vowels by height/rounding). Shapes are (opening, width, protrusion):
# opening = inner-lip gap / inter-ocular distance (closed 0, wide "aa" ~0.3,
# GRID speakers peak at 0.14-0.29 measured with dlib); width = change of
# mouth-corner distance relative to inter-ocular distance (spread "ee" > 0,
# rounded "oo" < 0); protrusion = lip rounding 0..1. ``dominance`` says how
# strongly a class imposes its opening on its neighbours (coarticulation):
# lip closures and labiodentals must be reached, tongue consonants mostly
# take the opening of the surrounding vowels.

VISEME_OF_PHONE: dict[str, str] = {
    "P": "PBM", "B": "PBM", "M": "PBM",
    "F": "FV", "V": "FV",
    "TH": "TH", "DH": "TH",
    "T": "TDN", "D": "TDN", "N": "TDN", "L": "TDN",
    "S": "SZ", "Z": "SZ",
    "CH": "SH", "JH": "SH", "SH": "SH", "ZH": "SH",
    "K": "KG", "G": "KG", "NG": "KG", "HH": "KG",
    "R": "R", "W": "W", "Y": "Y",
    "AA": "AA", "AE": "AE", "AH": "AH", "AO": "AO",
    "EH": "EH", "IH": "IH", "IY": "IY", "ER": "ER", "UH": "UH", "UW": "UW",
    "SIL": "SIL",
    # not an ARPAbet phone: an audible inhalation before speech (see latentdub.plugins.viseme_motion.mark_breaths)
    "BREATH": "BREATH",
}

#: Diphthongs glide between two vowel targets (first at 1/3, second at 2/3 of the span).
DIPHTHONGS: dict[str, tuple[str, str]] = {
    "AW": ("AA", "UH"), "AY": ("AA", "IH"), "EY": ("EH", "IY"), "OW": ("AO", "UW"), "OY": ("AO", "IY"),
}

#: viseme -> (opening, width, protrusion, dominance)
VISEME_SHAPES: dict[str, tuple[float, float, float, float]] = {
    "SIL": (0.00, 0.00, 0.0, 0.6),
    "PBM": (0.00, -0.02, 0.1, 3.0),
    "FV": (0.03, -0.02, 0.0, 2.0),
    "TH": (0.07, 0.02, 0.0, 0.8),
    "TDN": (0.08, 0.02, 0.0, 0.4),
    "SZ": (0.06, 0.04, 0.0, 0.8),
    "SH": (0.06, -0.06, 0.6, 0.8),
    "KG": (0.10, 0.00, 0.0, 0.4),
    "R": (0.07, -0.06, 0.5, 0.6),
    "W": (0.04, -0.15, 0.9, 1.2),
    "Y": (0.06, 0.06, 0.0, 0.6),
    "AA": (0.28, 0.02, 0.0, 1.0),
    "AE": (0.27, 0.06, 0.0, 1.0),
    "AH": (0.20, 0.00, 0.0, 1.0),
    "AO": (0.24, -0.08, 0.5, 1.0),
    "EH": (0.20, 0.05, 0.0, 1.0),
    "IH": (0.14, 0.06, 0.0, 1.0),
    "IY": (0.14, 0.10, 0.0, 1.0),
    "ER": (0.11, -0.05, 0.4, 1.0),
    "UH": (0.13, -0.08, 0.6, 1.0),
    "UW": (0.10, -0.15, 1.0, 1.0),
    # breathing in through the mouth parts the lips moderately (GRID speakers: 0.1-0.25 before a sentence)
    "BREATH": (0.12, 0.00, 0.0, 0.5),
}


def phone_targets(phone: str, start: float, end: float) -> list[tuple[float, float, str]]:
    """Viseme targets ``(start, end, viseme)`` of one phone (two for a diphthong)."""
    if phone in DIPHTHONGS:
        mid = (start + end) / 2
        first, second = DIPHTHONGS[phone]
        return [(start, mid, first), (mid, end, second)]
    return [(start, end, VISEME_OF_PHONE.get(phone, "TDN"))]


# --- pocketsphinx -----------------------------------------------------------

_WORD = re.compile(r"[a-z0-9']+")


def normalise_transcript(text: str) -> list[str]:
    """Lower-case words of ``text`` with punctuation removed (apostrophes kept)."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def _clean_phone(name: str) -> str:
    name = name.upper().rstrip("0123456789")
    return name if name in VISEME_OF_PHONE or name in DIPHTHONGS else "SIL"


def _pcm16(audio: Audio) -> bytes:
    from .audio import SPEECH_RATE, resample

    audio = resample(audio, SPEECH_RATE)
    return (np.clip(audio.samples, -1, 1) * 32767.0).round().astype("<i2").tobytes()


class PhoneDecoder:
    """Lazily built pocketsphinx decoders for alignment and phone recognition (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._aligner: Any = None
        self._recognizer: Any = None

    def _get_aligner(self) -> Any:
        if self._aligner is None:
            import pocketsphinx

            self._aligner = pocketsphinx.Decoder(loglevel="FATAL")
        return self._aligner

    def _get_recognizer(self) -> Any:
        if self._recognizer is None:
            import pocketsphinx

            self._recognizer = pocketsphinx.Decoder(
                loglevel="FATAL", lm=None, allphone=pocketsphinx.get_model_path("en-us/en-us-phone.lm.bin"),
                backtrace=False, beam=1e-20, pbeam=1e-20, lw=2.0,
            )
        return self._recognizer

    def missing_words(self, words: list[str]) -> list[str]:
        """Words of a transcript that the CMU pronunciation dictionary lacks."""
        with self._lock:
            dec = self._get_aligner()
            return [w for w in words if dec.lookup_word(w) is None]

    def align(self, audio: Audio, transcript: str, where: str = "transcript") -> list[PhoneSegment]:
        """Forced alignment of ``transcript`` to ``audio``: phone segments covering the whole clip.

        Raises :class:`BadInputError` when a word is not in the dictionary or
        the transcript cannot be aligned to the audio.
        """
        words = normalise_transcript(transcript)
        if not words:
            raise BadInputError(f"{where}: transcript is empty; give the spoken words or use method: recognize")
        missing = self.missing_words(words)
        if missing:
            raise BadInputError(
                f"{where}: word {missing[0]!r} is not in the pronunciation dictionary; spell it as common words or use method: recognize"
            )
        pcm = _pcm16(audio)
        with self._lock:
            dec = self._get_aligner()
            dec.reinit_feat()  # feature state leaks between utterances otherwise
            try:
                dec.set_align_text(" ".join(words))
                dec.start_utt()
                dec.process_raw(pcm, full_utt=True)
                dec.end_utt()
                dec.set_alignment()
                dec.start_utt()
                dec.process_raw(pcm, full_utt=True)
                dec.end_utt()
                alignment = dec.get_alignment()
            except RuntimeError as exc:
                raise BadInputError(f"{where}: cannot align the transcript to the audio ({exc}); check it matches the speech or use method: recognize") from None
            if alignment is None:
                raise BadInputError(f"{where}: cannot align the transcript to the audio; check it matches the speech or use method: recognize")
            out = []
            index = 0
            for word in alignment:
                name = re.sub(r"\(\d+\)$", "", word.name)
                spoken = name in words
                for phone in word:
                    start = round(phone.start * PS_FRAME, 3)
                    end = round((phone.start + phone.duration) * PS_FRAME, 3)
                    label = _clean_phone(phone.name)
                    out.append(PhoneSegment(label, start, end, name if spoken else None, index if spoken else None))
                index += spoken
        if not any(seg.phone != "SIL" for seg in out):
            raise BadInputError(f"{where}: alignment found no speech; check the audio holds the transcript or use method: energy")
        return out

    def recognize(self, audio: Audio) -> list[PhoneSegment]:
        """Phone recognition (no transcript): segments covering the speech, silence as ``SIL``."""
        pcm = _pcm16(audio)
        with self._lock:
            dec = self._get_recognizer()
            dec.reinit_feat()
            dec.start_utt()
            dec.process_raw(pcm, full_utt=True)
            dec.end_utt()
            out = [
                PhoneSegment(_clean_phone(seg.word), round(seg.start_frame * PS_FRAME, 3), round((seg.end_frame + 1) * PS_FRAME, 3))
                for seg in dec.seg()
            ]
        return out


_shared_lock = threading.Lock()
_shared: Optional[PhoneDecoder] = None


def shared_decoder() -> PhoneDecoder:
    """The process-wide :class:`PhoneDecoder` (its pocketsphinx models load once, on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = PhoneDecoder()
        return _shared
