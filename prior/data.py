"""Training windows for the prior, read from the token store's memmaps (never the whole corpus).

Batch `s` is a pure function of (seed, s): runs are reproducible and `--resume` is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from musetok.shared.errors import UserError
from musetok.shared.token_store import TokenStore


@dataclass
class Batch:
    """x: codes `(B, K, T)` int64 or frames `(B, T, F)` float32; lengths `(B,)` valid frames;
    seeds `(B,)` int64: each row's masking seed."""

    x: torch.Tensor
    lengths: torch.Tensor
    seeds: torch.Tensor

    def to(self, device) -> Batch:
        return Batch(self.x.to(device, non_blocking=True), self.lengths.to(device), self.seeds)


class WindowSource:
    """Random windows of up to `max_len` frames from the given store items (codes or mel frames)."""

    def __init__(self, store: TokenStore, items: list[int], max_len: int, frames: bool):
        self.store, self.items, self.max_len, self.frames = store, items, max_len, frames
        self.lengths = np.array([store.items[i].length for i in items], dtype=np.int64)
        if frames and not store.has_frames:
            raise UserError(f"{store.root}: continuous objectives need mel frames in the store "
                             "(run `musetok tokenize --with-frames`)")

    @property
    def frames_total(self) -> int:
        return int(self.lengths.sum())

    def batch(self, seed: int, step: int, batch_size: int, part: slice = slice(None)) -> Batch:
        """The global batch for `step` is drawn from (seed, step); `part` selects this rank's rows."""
        rng = np.random.default_rng([seed, step])
        pick = rng.choice(len(self.items), size=batch_size, p=self.lengths / self.lengths.sum())
        lens = np.minimum(self.lengths[pick], self.max_len)
        starts = rng.integers(0, self.lengths[pick] - lens + 1)
        seeds = rng.integers(0, 2**62, size=batch_size)
        pick, lens, starts, seeds = pick[part], lens[part], starts[part], seeds[part]
        batch_size = len(pick)
        t = int(lens.max())
        if self.frames:
            x = np.zeros((batch_size, t, self.store.meta.frames_dim), np.float32)
        else:
            x = np.zeros((batch_size, self.store.meta.num_codebooks, t), np.int64)
        for b, (j, n, start) in enumerate(zip(pick, lens, starts)):
            start = int(start)
            if self.frames:
                x[b, :n] = self.store.frames_window(self.items[j], start, n)
            else:
                x[b, :, :n] = self.store.window(self.items[j], start, n)
        return Batch(torch.from_numpy(x), torch.from_numpy(lens), torch.from_numpy(seeds))
