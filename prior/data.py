"""Training windows for the prior, read from the token store's memmaps (never the whole corpus).

Batch `s` is a pure function of (seed, s): runs are reproducible and `--resume` is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from musetok.shared.errors import UserError
from musetok.shared.mel import MelConfig
from musetok.shared.token_store import StoreMeta, TokenStore


@dataclass
class Batch:
    """codes `(B, K, T)` int64 and/or frames `(B, T, F)` float32 (what the prior reads or predicts; the other
    may be None); lengths `(B,)` valid frames; seeds `(B,)` int64: each row's masking seed; chroma
    `(B, T, S, 12)` float32 (`aux_chroma` only): each stacked mel frame's pitch-class distribution;
    frames_in `(B, T, F)` (`mix_prob` only): the frames the prior reads when they differ from the clean
    `frames` it predicts (another window mixed in); items `(B,)` int64 (`pairs` only): the store item each row
    comes from, rows 2i and 2i + 1 two windows of one item."""

    codes: torch.Tensor | None
    frames: torch.Tensor | None
    lengths: torch.Tensor
    seeds: torch.Tensor
    chroma: torch.Tensor | None = None
    frames_in: torch.Tensor | None = None
    items: torch.Tensor | None = None

    def to(self, device) -> Batch:
        codes, frames, chroma, frames_in = (None if v is None else v.to(device, non_blocking=True)
                                            for v in (self.codes, self.frames, self.chroma, self.frames_in))
        return Batch(codes, frames, self.lengths.to(device), self.seeds, chroma, frames_in,
                     None if self.items is None else self.items.to(device))

    @property
    def length(self) -> int:
        """T, the padded length."""
        return self.codes.shape[-1] if self.codes is not None else self.frames.shape[1]


def _log_power(meta: StoreMeta, where: str, option: str) -> tuple[np.ndarray, np.ndarray]:
    """The store's frame normaliser (log power = frame x std + mean, per band), or a one-line error."""
    if not meta.frames_mean:
        raise UserError(f"{where}: {option} needs the frames' normaliser, which stores written by "
                        "`tokenize --with-frames` record (older stores lack it: tokenize again into a new folder)")
    return np.asarray(meta.frames_mean, np.float32), np.asarray(meta.frames_std, np.float32)


class Chroma:
    """Normalised frames of a semitone store `(..., S * bands)` -> chroma `(..., S, 12)`: per stacked mel frame,
    the power of each pitch class over all octaves, as a distribution (loudness drops out). MERT's musical
    target, octave-free: what key and harmony are made of."""

    def __init__(self, meta: StoreMeta, where: str):
        if not meta.frames_pitch_class:
            raise UserError(f"{where}: model.aux_chroma needs each frame band's pitch class, which only a store of "
                            "a semitone tokenizer (mel.scale: semitone) written by `tokenize --with-frames` records "
                            "(stores written before the chroma target lack it: tokenize again into a new folder)")
        self.mean, self.std = _log_power(meta, where, "model.aux_chroma")
        self.onehot = np.eye(12, dtype=np.float32)[np.asarray(meta.frames_pitch_class)]  # (bands, 12)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        bands = len(self.mean)
        logp = frames.reshape(*frames.shape[:-1], -1, bands) * self.std + self.mean  # (..., S, bands)
        power = np.exp(logp - logp.max(-1, keepdims=True))  # a frame's scale cancels in the normalisation
        chroma = power @ self.onehot
        return chroma / chroma.sum(-1, keepdims=True)


class Mixer:
    """In-batch mixing (WavLM's utterance mixing, MERT's in-batch noise): with probability `prob` a window's
    input gets a stretch of another random window added in the power domain, at most half its length, at
    an energy ratio drawn uniformly from +-`db` dB. Only the input changes: the targets (codes, frames,
    chroma) stay those of the clean window, so the prior learns to hear the main source through another."""

    def __init__(self, meta: StoreMeta, where: str, prob: float, db: float):
        self.mean, self.std = _log_power(meta, where, "model.mix_prob")
        self.prob, self.db = prob, db

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`(n, 6)` uniforms per window (mix?, source file, its start, stretch length, where, level), drawn for
        the whole global batch so that a window is mixed alike on whichever rank it lands."""
        return rng.random((n, 6))

    def __call__(self, frames: np.ndarray, other: np.ndarray, at: int, level_db: float) -> np.ndarray:
        """frames `(n, F)` and other `(m, F)` normalised, m <= n -> frames with `other` added at frame `at`."""
        bands = len(self.mean)
        out = frames.copy()
        a = frames[at:at + len(other)].reshape(len(other), -1, bands) * self.std + self.mean  # log power
        b = other.reshape(len(other), -1, bands) * self.std + self.mean
        # energy ratio of the stretch to the window's own power over the same frames, as `level_db` says
        shift = np.log(np.exp(a).mean() / max(np.exp(b).mean(), 1e-30)) + level_db * np.log(10) / 10
        mixed = np.logaddexp(a, b + shift)
        out[at:at + len(other)] = ((mixed - self.mean) / self.std).reshape(len(other), -1)
        return out


class Transposer:
    """Pitch-shift augmentation for a semitone store: a window's frames moved `k` bands (semitones) up or down, in
    log power, the `|k|` bands left empty at the edge set to the window's quietest level. Only the frames change
    (what the prior reads and its frame targets; chroma is computed after); the code targets stay the clean
    window's, which the one-codebook VQ-VAE mostly keeps apart by timbre, not pitch."""

    def __init__(self, meta: StoreMeta, where: str, semitones: int):
        if not meta.frames_pitch_class:
            raise UserError(f"{where}: model.pitch_shift moves frames along semitone bands, which only a store of a "
                            "semitone tokenizer (mel.scale: semitone) written by `tokenize --with-frames` has; "
                            "set it to 0 for this store")
        self.mean, self.std = _log_power(meta, where, "model.pitch_shift")
        self.semitones = semitones

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`(n,)` shifts in -semitones..semitones, drawn for the whole global batch (as `Mixer.draw`)."""
        return rng.integers(-self.semitones, self.semitones + 1, size=n)

    def __call__(self, frames: np.ndarray, k: int) -> np.ndarray:
        """frames `(n, S * bands)` normalised -> the same frames `k` semitones higher (lower for k < 0)."""
        if k == 0:
            return frames
        bands = len(self.mean)
        logp = frames.reshape(len(frames), -1, bands) * self.std + self.mean  # (n, S, bands)
        out = np.full_like(logp, logp.min())
        if k > 0:
            out[..., k:] = logp[..., :bands - k]
        else:
            out[..., :bands + k] = logp[..., -k:]
        return ((out - self.mean) / self.std).reshape(frames.shape)


class Leveller:
    """Gain augmentation for a store of frames: a window's log power moved by `db` decibels, as if its audio had been
    played that much louder or quieter. The front-end took log(power + eps) (`MelConfig.log_eps`), so the power above
    the floor is scaled and the floor stays where it is: silence stays silence and a quiet frame never goes below it.
    Only the frames change (what the prior reads and its frame targets); the code targets stay the clean window's."""

    def __init__(self, meta: StoreMeta, where: str, db: float, log_eps: float = MelConfig.log_eps):
        self.mean, self.std = _log_power(meta, where, "model.gain_db")
        self.db, self.log_eps = db, log_eps

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`(n,)` gains in dB, uniform in -db..db, drawn for the whole global batch (as `Mixer.draw`)."""
        return rng.uniform(-self.db, self.db, size=n)

    def __call__(self, frames: np.ndarray, db: float) -> np.ndarray:
        """frames `(n, S * bands)` normalised -> the same frames `db` dB louder (quieter for db < 0)."""
        if db == 0:
            return frames
        bands = len(self.mean)
        logp = frames.reshape(len(frames), -1, bands) * self.std + self.mean
        power = np.maximum(np.exp(logp.astype(np.float64)) - self.log_eps, 0.0) * 10.0 ** (db / 10)
        out = np.log(power + self.log_eps).astype(np.float32)
        return ((out - self.mean) / self.std).reshape(frames.shape)


class WindowSource:
    """Random windows of up to `max_len` frames from the given store items: their codes and/or mel frames, and
    with `chroma` the frames' chroma (which needs the frames read). With `pairs`, a batch holds two windows of each
    of half as many items (rows 2i and 2i + 1, independent starts; items drawn without replacement where there are
    enough), for a loss that tells windows of one recording from the rest (`aux_contrast`). With `shift` > 0 each
    window is transposed by up to that many semitones (`Transposer`; `model.pitch_shift`); with `recode` (normalised
    frames `(n, F)` -> codes `(K, n)`, the store's tokenizer) a transposed window's codes are those of its moved
    frames, not the store's (`model.pitch_shift_codes: recoded`). With `views` 2 a window has both: codes
    `(B, 2K, T)`, the store's then the re-encoded ones (the same where a window was not moved, and for a source with
    no shift, such as validation's; `model.pitch_shift_codes: both`)."""

    def __init__(self, store: TokenStore, items: list[int], max_len: int, codes: bool = True, frames: bool = False,
                 chroma: bool = False, mix: tuple[float, float] | None = None, pairs: bool = False, shift: int = 0,
                 recode: Callable[[np.ndarray], np.ndarray] | None = None, views: int = 1, gain_db: float = 0.0):
        self.store, self.items, self.max_len, self.codes, self.frames = store, items, max_len, codes, frames
        self.pairs = pairs
        if views not in (1, 2) or (views == 2 and not codes):
            raise ValueError(f"views must be 1, or 2 with codes, not {views}")
        self.views = views
        self.lengths = np.array([store.items[i].length for i in items], dtype=np.int64)
        if frames and not store.has_frames:
            raise UserError(f"{store.root}: this prior reads or predicts mel frames; the store has none "
                            "(run `musetok tokenize --with-frames`)")
        if chroma and not frames:
            raise ValueError("chroma targets are computed from the frames: ask for frames too")
        self.chroma = Chroma(store.meta, str(store.root / "meta.json")) if chroma else None
        mix = mix if mix and mix[0] > 0 else None
        if mix and not frames:
            raise ValueError("mixing changes the frames the prior reads: ask for frames too")
        self.mixer = Mixer(store.meta, str(store.root / "meta.json"), *mix) if mix else None
        self.cum_weights = np.cumsum(self.lengths) / self.lengths.sum()  # a mixed-in file is drawn by its length
        if shift and not frames:
            raise ValueError("transposing moves the frames: ask for frames too")
        self.transposer = Transposer(store.meta, str(store.root / "meta.json"), shift) if shift else None
        if recode is not None and not (shift and codes):
            raise ValueError("recoding gives transposed windows their own codes: ask for codes and a shift")
        self.recode = recode
        if gain_db and not frames:
            raise ValueError("a gain moves the frames' level: ask for frames too")
        self.leveller = Leveller(store.meta, str(store.root / "meta.json"), gain_db) if gain_db else None

    @property
    def frames_total(self) -> int:
        return int(self.lengths.sum())

    def batch(self, seed: int, step: int, batch_size: int, part: slice = slice(None)) -> Batch:
        """The global batch for `step` is drawn from (seed, step); `part` selects this rank's rows."""
        rng = np.random.default_rng([seed, step])
        p = self.lengths / self.lengths.sum()
        if self.pairs:
            if batch_size % 2:
                raise ValueError(f"a batch of pairs needs an even size, not {batch_size}")
            n = batch_size // 2
            pick = np.repeat(rng.choice(len(self.items), size=n, p=p, replace=n > np.count_nonzero(p)), 2)
        else:
            pick = rng.choice(len(self.items), size=batch_size, p=p)
        lens = np.minimum(self.lengths[pick], self.max_len)
        starts = rng.integers(0, self.lengths[pick] - lens + 1)
        seeds = rng.integers(0, 2**62, size=batch_size)
        mix = self.mixer.draw(rng, batch_size)[part] if self.mixer else None
        shifts = self.transposer.draw(rng, batch_size)[part] if self.transposer else None
        gains = self.leveller.draw(rng, batch_size)[part] if self.leveller else None
        pick, lens, starts, seeds = pick[part], lens[part], starts[part], seeds[part]
        batch_size = len(pick)
        t = int(lens.max())
        codes = np.zeros((batch_size, self.store.meta.num_codebooks * self.views, t), np.int64) if self.codes else None
        frames = np.zeros((batch_size, t, self.store.meta.frames_dim), np.float32) if self.frames else None
        for b, (j, n, start) in enumerate(zip(pick, lens, starts)):
            start = int(start)
            if frames is not None:
                frames[b, :n] = self.store.frames_window(self.items[j], start, n)
                if gains is not None:
                    frames[b, :n] = self.leveller(frames[b, :n], float(gains[b]))
                if shifts is not None:
                    frames[b, :n] = self.transposer(frames[b, :n], int(shifts[b]))
            if codes is not None:
                moved = shifts is not None and shifts[b] != 0 and self.recode is not None
                kept = None if moved and self.views == 1 else self.store.window(self.items[j], start, n)
                recoded = self.recode(frames[b, :n]) if moved else kept
                codes[b, :, :n] = recoded if self.views == 1 else np.concatenate([kept, recoded])
        return Batch(None if codes is None else torch.from_numpy(codes),
                     None if frames is None else torch.from_numpy(frames), torch.from_numpy(lens),
                     torch.from_numpy(seeds), None if self.chroma is None else torch.from_numpy(self.chroma(frames)),
                     None if mix is None else torch.from_numpy(self._mixed(frames, lens, mix)),
                     torch.from_numpy(np.asarray(self.items, dtype=np.int64)[pick]) if self.pairs else None)

    def _mixed(self, frames: np.ndarray, lens: np.ndarray, mix: np.ndarray) -> np.ndarray:
        """The input frames: each window, or with probability `mix_prob` it with a stretch of another mixed in."""
        out = frames.copy()
        for b, (u_on, u_src, u_start, u_len, u_at, u_db) in enumerate(mix):
            n = int(lens[b])
            if u_on >= self.mixer.prob or n < 2:
                continue
            m = 1 + int(u_len * (n // 2))  # 1 .. n // 2 frames
            j = min(int(np.searchsorted(self.cum_weights, u_src, side="right")), len(self.items) - 1)
            src_len = int(self.lengths[j])
            m = min(m, src_len)
            src_start = int(u_start * (src_len - m + 1))
            other = self.store.frames_window(self.items[j], src_start, m)
            at = int(u_at * (n - m + 1))
            out[b, :n] = self.mixer(frames[b, :n], other, at, (2 * u_db - 1) * self.mixer.db)
        return out
