"""MFCC windows per video frame, as the ATVGnet-style audio encoder E_A consumes them.

Registers the audio feature extractor ``mfcc``. Speech is resampled to
``sample_rate``; librosa computes ``n_mfcc + 1`` MFCCs every ``hop_ms``
(``win_ms`` Hann window, ``n_mels`` mel bands, log power floored at the
fixed level :data:`LOG_FLOOR`, so a frame's features depend only on the audio
in its window) and c0 (overall level) is dropped. Video frame ``t`` is at
``t / fps`` seconds (the convention of :mod:`latentdub.toolkit.dubbing.timing`); its
window holds the ``window`` MFCC frames whose centres are
``(c - window // 2 + k) * hop`` for ``k = 0 .. window-1``, with ``c`` the
hop nearest to ``t / fps``. Defaults give ATVGnet's 28 x 12 window, 0.28 s
centred on the frame. Time before the start or after the end of the audio
is treated as silence, so any ``n_frames`` works for any fps.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import numpy as np

from latentdub.toolkit.core.config import Range
from latentdub.toolkit.core.errors import BadInputError, ConfigError
from latentdub.toolkit.core.hookspecs import hookimpl
from latentdub.toolkit.core.types import Audio

#: Floor of the mel power before the log (librosa's power scale, where a
#: full-scale 1 kHz tone peaks at about +22 dB): -60 dB, ~80 dB below full scale.
LOG_FLOOR = 1e-6


@dataclasses.dataclass(frozen=True)
class MfccConfig:
    """Settings of the MFCC features.

    ``sample_rate``: Hz the speech is resampled to; ``n_mfcc``: coefficients
    kept per hop after dropping c0; ``window``: hops per frame window;
    ``hop_ms``/``win_ms``: analysis hop and window, ms; ``n_mels``: mel bands;
    ``normalise``: per-utterance mean/variance normalisation of each
    coefficient (statistics over the speech, not the padding).
    """

    sample_rate: Annotated[int, Range(ge=4000, le=192000)] = 16000
    n_mfcc: Annotated[int, Range(ge=1, le=128)] = 12
    window: Annotated[int, Range(ge=1)] = 28
    hop_ms: Annotated[float, Range(gt=0, le=1000)] = 10.0
    win_ms: Annotated[float, Range(gt=0, le=1000)] = 25.0
    n_mels: Annotated[int, Range(ge=2, le=256)] = 40
    normalise: bool = True

    def check(self, where: str) -> None:
        """The hop is whole samples, the window covers a hop, and the coefficients kept come from the mel bands (c0 is dropped)."""
        hop = self.sample_rate * self.hop_ms / 1000.0
        if hop < 1 or abs(hop - round(hop)) > 1e-6:
            raise ConfigError(f"{where}.hop_ms: {self.hop_ms} ms is not a whole number of samples at {self.sample_rate} Hz")
        if self.win_ms < self.hop_ms:
            raise ConfigError(f"{where}.win_ms: {self.win_ms} must be >= {where}.hop_ms ({self.hop_ms})")
        if self.n_mfcc >= self.n_mels:
            raise ConfigError(f"{where}.n_mfcc: {self.n_mfcc} must be below {where}.n_mels ({self.n_mels}); c0 is dropped from n_mels coefficients")


@hookimpl
def register_audio_features(register):
    register("mfcc", build_mfcc, config=MfccConfig, summary="MFCC windows per video frame (ATVGnet: 28 x 12, 0.28 s)")


def build_mfcc(config: MfccConfig, context: Any) -> "MfccFeatures":
    """Factory: returns :class:`MfccFeatures`."""
    return MfccFeatures(config)


class MfccFeatures:
    """``compute(audio, fps, n_frames)`` -> float32 ``[n_frames, window, n_mfcc]``."""

    def __init__(self, config: MfccConfig = MfccConfig()) -> None:
        config.check("audio_features")
        self.config = config
        self.sample_rate = config.sample_rate
        self.hop = int(round(config.sample_rate * config.hop_ms / 1000.0))
        self.win = int(round(config.sample_rate * config.win_ms / 1000.0))

    def mfcc(self, samples: np.ndarray) -> np.ndarray:
        """float32 ``[n_hops, n_mfcc]``: MFCCs (c0 dropped) centred at ``j * hop`` samples."""
        import librosa

        n_fft = 1 << max(int(np.ceil(np.log2(self.win))), 1)
        mel = librosa.feature.melspectrogram(
            y=np.asarray(samples, np.float32), sr=self.sample_rate, n_fft=n_fft, win_length=self.win,
            hop_length=self.hop, n_mels=self.config.n_mels, center=True,
        )
        log_mel = librosa.power_to_db(mel, amin=LOG_FLOOR, top_db=None)
        feats = librosa.feature.mfcc(S=log_mel, n_mfcc=self.config.n_mfcc + 1)
        return feats[1:].T.astype(np.float32)

    def compute(self, audio: Audio, fps: float, n_frames: int) -> np.ndarray:
        """One ``[window, n_mfcc]`` window per frame ``t`` centred on ``t / fps`` s: float32 ``[n_frames, window, n_mfcc]``."""
        if not fps > 0 or n_frames < 0:
            raise BadInputError(f"audio_features: need fps > 0 and n_frames >= 0, got fps={fps}, n_frames={n_frames}")
        from latentdub.toolkit.media.audio import resample

        cfg = self.config
        x = resample(audio, self.sample_rate).samples
        half = cfg.window // 2
        hop_s = self.hop / self.sample_rate
        centres = np.rint(np.arange(n_frames) / fps / hop_s).astype(np.int64)  # hop index of each frame
        last = int(centres.max()) + cfg.window - half if n_frames else 0
        n_hops = max(last, len(x) // self.hop + 1)
        padded = np.zeros((n_hops + half) * self.hop + 1, np.float32)
        padded[half * self.hop: half * self.hop + len(x)] = x
        feats = self.mfcc(padded)  # row j is centred at (j - half) hops of the audio
        if cfg.normalise:
            speech = feats[half: half + len(x) // self.hop + 1]
            mean = speech.mean(0)
            std = speech.std(0)
            feats = (feats - mean) / np.where(std > 1e-5, std, 1.0)
        rows = centres[:, None] + np.arange(cfg.window)[None, :]  # (c - half + k) + half
        return np.ascontiguousarray(feats[rows], dtype=np.float32)
