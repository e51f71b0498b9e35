"""Training windows for the prior, read from the token store's memmaps (never the whole corpus).

Batch `s` is a pure function of (seed, s): runs are reproducible and `--resume` is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from musetok.shared.errors import UserError
from musetok.shared.token_store import StoreMeta, TokenStore


@dataclass
class Batch:
    """codes `(B, K, T)` int64 and/or frames `(B, T, F)` float32 (what the prior reads or predicts; the other
    may be None); lengths `(B,)` valid frames; seeds `(B,)` int64: each row's masking seed; chroma
    `(B, T, S, 12)` float32 (`aux_chroma` only): each stacked mel frame's pitch-class distribution."""

    codes: torch.Tensor | None
    frames: torch.Tensor | None
    lengths: torch.Tensor
    seeds: torch.Tensor
    chroma: torch.Tensor | None = None

    def to(self, device) -> Batch:
        codes, frames, chroma = (None if v is None else v.to(device, non_blocking=True)
                                 for v in (self.codes, self.frames, self.chroma))
        return Batch(codes, frames, self.lengths.to(device), self.seeds, chroma)

    @property
    def length(self) -> int:
        """T, the padded length."""
        return self.codes.shape[-1] if self.codes is not None else self.frames.shape[1]


class Chroma:
    """Normalised frames of a semitone store `(..., S * bands)` -> chroma `(..., S, 12)`: per stacked mel frame,
    the power of each pitch class over all octaves, as a distribution (loudness drops out). MERT's musical
    target, octave-free: what key and harmony are made of."""

    def __init__(self, meta: StoreMeta, where: str):
        if not meta.frames_pitch_class:
            raise UserError(f"{where}: model.aux_chroma needs each frame band's pitch class, which only a store of "
                            "a semitone tokenizer (mel.scale: semitone) written by `tokenize --with-frames` records "
                            "(stores written before the chroma target lack it: tokenize again into a new folder)")
        self.mean, self.std = np.asarray(meta.frames_mean, np.float32), np.asarray(meta.frames_std, np.float32)
        self.onehot = np.eye(12, dtype=np.float32)[np.asarray(meta.frames_pitch_class)]  # (bands, 12)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        bands = len(self.mean)
        logp = frames.reshape(*frames.shape[:-1], -1, bands) * self.std + self.mean  # (..., S, bands)
        power = np.exp(logp - logp.max(-1, keepdims=True))  # a frame's scale cancels in the normalisation
        chroma = power @ self.onehot
        return chroma / chroma.sum(-1, keepdims=True)


class WindowSource:
    """Random windows of up to `max_len` frames from the given store items: their codes and/or mel frames, and
    with `chroma` the frames' chroma (which needs the frames read)."""

    def __init__(self, store: TokenStore, items: list[int], max_len: int, codes: bool = True, frames: bool = False,
                 chroma: bool = False):
        self.store, self.items, self.max_len, self.codes, self.frames = store, items, max_len, codes, frames
        self.lengths = np.array([store.items[i].length for i in items], dtype=np.int64)
        if frames and not store.has_frames:
            raise UserError(f"{store.root}: this prior reads or predicts mel frames; the store has none "
                            "(run `musetok tokenize --with-frames`)")
        if chroma and not frames:
            raise ValueError("chroma targets are computed from the frames: ask for frames too")
        self.chroma = Chroma(store.meta, str(store.root / "meta.json")) if chroma else None

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
        codes = np.zeros((batch_size, self.store.meta.num_codebooks, t), np.int64) if self.codes else None
        frames = np.zeros((batch_size, t, self.store.meta.frames_dim), np.float32) if self.frames else None
        for b, (j, n, start) in enumerate(zip(pick, lens, starts)):
            start = int(start)
            if frames is not None:
                frames[b, :n] = self.store.frames_window(self.items[j], start, n)
            if codes is not None:
                codes[b, :, :n] = self.store.window(self.items[j], start, n)
        return Batch(None if codes is None else torch.from_numpy(codes),
                     None if frames is None else torch.from_numpy(frames), torch.from_numpy(lens),
                     torch.from_numpy(seeds), None if self.chroma is None else torch.from_numpy(self.chroma(frames)))
