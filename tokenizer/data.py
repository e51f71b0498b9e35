"""Training data for the tokenizer: random fixed-length segments, batch `s` a pure function of
(seed, s), so runs are reproducible and `--resume` continues exactly."""

from __future__ import annotations

import logging

import numpy as np
import torch

from musetok.shared.audio import AudioCorpus, AudioError, audio_info
from musetok.tokenizer.features import Featurizer

log = logging.getLogger("musetok")


class SegmentSource:
    """Random segments of model input from a list of files, read from RAM (cached) or from disk."""

    def __init__(self, corpus: AudioCorpus, files: list[str], featurizer: Featurizer,
                 segment_seconds: float, cache_hours: float):
        self.corpus, self.fz = corpus, featurizer
        self.files, self.durations, self.bad = [], [], {}
        for rel in files:
            try:
                info = audio_info(corpus.path(rel))
                if info.frames == 0:
                    raise AudioError(rel, "zero-length audio")
            except AudioError as e:
                self.bad[rel] = e.reason
                continue
            self.files.append(rel)
            self.durations.append(info.duration)
        for rel, why in self.bad.items():
            log.warning("skipping %s: %s", rel, why)
        self.segment_seconds = segment_seconds
        self.segment_units = int(round(segment_seconds * featurizer.units_per_second))
        self.cache: dict[str, np.ndarray] | None = None
        if self.files and sum(self.durations) <= cache_hours * 3600:
            self.cache = {}
            for rel in list(self.files):
                try:
                    self.cache[rel] = self.fz.file(corpus.path(rel))
                except AudioError as e:
                    self.bad[rel] = e.reason
                    log.warning("skipping %s: %s", rel, e.reason)
            keep = [i for i, f in enumerate(self.files) if f in self.cache]
            self.files = [self.files[i] for i in keep]
            self.durations = [self.durations[i] for i in keep]

    @property
    def hours(self) -> float:
        return sum(self.durations) / 3600

    def segment(self, i: int, start: float) -> np.ndarray:
        """Segment of file `i` starting at `start` seconds, `(C, segment_units)` (edge-padded)."""
        n = self.segment_units
        if self.cache is not None:
            x = self.cache[self.files[i]]
            s = int(start * self.fz.units_per_second)
            seg = x[:, s:s + n]
        else:
            seg = self.fz.file(self.corpus.path(self.files[i]), start, self.segment_seconds)[:, :n]
        if seg.shape[1] < n:
            seg = np.pad(seg, ((0, 0), (0, n - seg.shape[1])), mode="edge")
        return seg

    def batch(self, seed: int, step: int, batch_size: int, part: slice = slice(None)) -> torch.Tensor:
        """Global batch for `step`, `(B, C, segment_units)`, drawn from (seed, step) alone; `part`
        selects the rows this rank reads."""
        rng = np.random.default_rng([seed, step])
        p = np.asarray(self.durations) / sum(self.durations)
        idx = rng.choice(len(self.files), size=batch_size, p=p)
        starts = rng.uniform(0, 1, size=batch_size) * np.maximum(
            0.0, np.asarray(self.durations)[idx] - self.segment_seconds)
        segs = [self.segment(int(i), float(s)) for i, s in zip(idx[part], starts[part])]
        return torch.from_numpy(np.stack(segs))
