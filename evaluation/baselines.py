"""Baseline features for the probes: what a user already has, and controls for what the prior adds.

Hand-crafted (per clip, from audio): MFCC + deltas, log-mel and chroma (CQT) frames, each pooled over time as the
priors' states are (`DEFAULT_POOL`: mean, standard deviation and maximum of each coefficient).
Bag of codes (from the tokenizer alone): a normalised histogram of each codebook's codes.
The random-weights prior and the continuous `masked_frames` prior go through `Embedder` like the real one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import librosa
import numpy as np
import torch

from musetok.embedding.embedder import DEFAULT_POOL, pool_frames
from musetok.shared.audio import level_gain, load_audio, wave_rms
from musetok.shared.mel import MelConfig, MelFrontend

HANDCRAFTED = ("mfcc", "logmel", "chroma")


def handcrafted_features(paths: list[Path], sample_rate: int = 22050, which: tuple[str, ...] = HANDCRAFTED,
                         progress: Callable[[int], None] | None = None, pool: str = DEFAULT_POOL,
                         level_db: float | None = None) -> dict[str, np.ndarray]:
    """Decode each file once and compute the requested clip-level features, `pool`ed over time (`pool_frames`),
    each clip first brought to an RMS of `level_db` dBFS where one is given (as `Embedder` does). Returns name ->
    `(N, D)`."""
    fe = MelFrontend(MelConfig(sample_rate=sample_rate))
    out: dict[str, list[np.ndarray]] = {k: [] for k in which}
    for i, p in enumerate(paths):
        y = load_audio(p, sample_rate)
        if level_db is not None:
            y = y * np.float32(level_gain(wave_rms(y), level_db))
        if "logmel" in which or "mfcc" in which:
            with torch.no_grad():
                logmel = fe(torch.from_numpy(y)).numpy()  # (n_mels, T)
        if "logmel" in which:
            out["logmel"].append(pool_frames(np.ascontiguousarray(logmel.T), pool))
        if "mfcc" in which:
            mfcc = librosa.feature.mfcc(S=librosa.power_to_db(np.exp(logmel)), n_mfcc=20)
            feats = np.concatenate([mfcc, librosa.feature.delta(mfcc)])
            out["mfcc"].append(pool_frames(np.ascontiguousarray(feats.T), pool))
        if "chroma" in which:
            chroma = librosa.feature.chroma_cqt(y=y, sr=sample_rate, fmin=librosa.midi_to_hz(36))
            out["chroma"].append(pool_frames(np.ascontiguousarray(chroma.T), pool))
        if progress:
            progress(i + 1)
    return {k: np.stack(v).astype(np.float32) for k, v in out.items()}


def bag_of_codes(codes: np.ndarray, codebook_size: int) -> np.ndarray:
    """codes `(K, T)` -> `(K * codebook_size,)` normalised histogram per codebook."""
    hist = [np.bincount(codes[k].astype(np.int64), minlength=codebook_size) / max(1, codes.shape[1])
            for k in range(codes.shape[0])]
    return np.concatenate(hist).astype(np.float32)
