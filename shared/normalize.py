"""Per-corpus normalisation of log-mel: mean and std per mel bin, computed once, stored as JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musetok.shared.io import CheckpointError, atomic_write_text


@dataclass
class MelStats:
    """Mean and std per mel bin, each `(n_mels,)` float32, and how many frames they came from."""

    mean: np.ndarray
    std: np.ndarray
    frames: int

    def to_json(self) -> str:
        return json.dumps({"mean": self.mean.tolist(), "std": self.std.tolist(), "frames": self.frames})

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> MelStats:
        try:
            d = json.loads(Path(path).read_text())
            return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32), int(d["frames"]))
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: not a valid normaliser file ({e})") from None

    @classmethod
    def identity(cls, n_mels: int) -> MelStats:
        return cls(np.zeros(n_mels, np.float32), np.ones(n_mels, np.float32), 0)


class MelStatsAccumulator:
    """Streaming mean/std over frames, in float64 so hours of audio do not lose precision."""

    def __init__(self, n_mels: int):
        self.sum = np.zeros(n_mels)
        self.sumsq = np.zeros(n_mels)
        self.n = 0

    def add(self, logmel: np.ndarray) -> None:
        """Add `(n_mels, T)` frames."""
        x = logmel.astype(np.float64)
        self.sum += x.sum(axis=1)
        self.sumsq += np.square(x).sum(axis=1)
        self.n += x.shape[1]

    def result(self, min_std: float = 1e-3) -> MelStats:
        if self.n == 0:
            raise ValueError("no frames to compute normalisation statistics from")
        mean = self.sum / self.n
        var = np.maximum(self.sumsq / self.n - mean**2, 0.0)
        return MelStats(mean.astype(np.float32), np.maximum(np.sqrt(var), min_std).astype(np.float32), self.n)
