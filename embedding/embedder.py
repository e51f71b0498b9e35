"""Any clip -> per-layer embeddings from the prior's hidden states.

    emb = Embedder.from_pretrained("runs/tok", "runs/prior").embed(waveform, sample_rate)
    emb.layers[i]   # (T, D) frames of layer i;  emb.pooled()  # (L, 3D) mean, std, max over time;  emb.frame_rate

Audio -> codes (or normalised mel frames, for priors that read frames) -> prior. A clip longer than
the prior's context (`max_len` frames) is read in full-length windows that overlap by half; each
frame's state is taken from the window whose centre is nearest, so every frame is embedded exactly
once, with at least a quarter window of context on each side (except at the clip's own ends), and
the last window is as long as the others. Windows from many clips are batched together with padding
and an attention mask; results do not depend on batch size or on what else is in the batch.

Layers: "input" (the input embedding), then one entry per block; the last entry is after the final
LayerNorm (what the prior's output heads read), inner ones are the residual stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from musetok.prior.builder import load_prior
from musetok.prior.model import Prior, join_input, split_input
from musetok.shared.audio import (
    AUTO_LEVEL,
    LevelMeter,
    audio_rms,
    iter_audio,
    level_gain,
    resolve_level,
    to_mono_resampled,
    wave_rms,
)
from musetok.shared.errors import UserError
from musetok.shared.hub import resolve_folder
from musetok.tokenizer.base import Tokenizer
from musetok.tokenizer.builder import load_tokenizer
from musetok.tokenizer.features import Featurizer, frame_stacker

POOLS = ("mean", "meanstd", "meanstdmax", "max")
# What `musetok embed`, the HEAR scene embeddings and the representation benchmark pool with (every row alike).
# With the max beside the mean and std, the `small` prior's linear probes on the real-music dev kit rose from
# 0.595 to 0.692 (instrument) and 0.297 to 0.388 (unseen programs), its input spectrogram's from 0.292 to 0.407
# and 0.282 to 0.317 (benchmarks/levers.md, section 4); the time-mean alone did worst.
DEFAULT_POOL = "meanstdmax"
POOL_LABELS = {"mean": "mean", "meanstd": "mean/std", "meanstdmax": "mean/std/max", "max": "max"}


def pool_frames(x: torch.Tensor | np.ndarray, how: str = DEFAULT_POOL) -> torch.Tensor | np.ndarray:
    """Frames `(T, ..., D)` summarised over time (axis 0): `mean` and `max` -> `(..., D)`, `meanstd` (mean, then
    standard deviation) -> `(..., 2D)`, `meanstdmax` (mean, standard deviation, maximum) -> `(..., 3D)`. A numpy
    array in, a numpy array out."""
    if isinstance(x, np.ndarray):
        return pool_frames(torch.from_numpy(x), how).numpy()
    if how not in POOLS:
        raise UserError(f"--pool: unknown pooling '{how}' (known: {', '.join(POOLS)}, none)")
    if how == "mean":
        return x.mean(0)
    if how == "max":
        return x.amax(0)
    extra = [x.amax(0)] if how == "meanstdmax" else []
    return torch.cat([x.mean(0), x.std(0, unbiased=False), *extra], dim=-1)


def pool_factor(how: str) -> int:
    """How many times the width a pooled vector is."""
    return {"meanstd": 2, "meanstdmax": 3}.get(how, 1)


@dataclass
class Embedding:
    """layers: one `(T, D)` float32 tensor per layer (input embedding first); frame_rate in Hz."""

    layers: list[torch.Tensor]
    layer_names: list[str]
    frame_rate: float

    @property
    def num_frames(self) -> int:
        return self.layers[0].shape[0]

    def pooled(self, how: str = DEFAULT_POOL) -> torch.Tensor:
        """Every layer summarised over time (`pool_frames`): `meanstdmax` (the default: mean, standard deviation,
        maximum) -> `(L, 3D)`, `meanstd` -> `(L, 2D)`, `mean` or `max` -> `(L, D)`."""
        return pool_frames(self.stacked(), how)

    def stacked(self) -> torch.Tensor:
        """All layers as one `(T, L, D)` tensor."""
        return torch.stack(self.layers, dim=1)


def windows(t: int, win: int) -> list[tuple[int, int, int]]:
    """Windows over `t` frames for a context of `win`: `(start, core_start, core_stop)` each. Every window is
    `min(t, win)` long and they overlap by half; the cores (frames taken from each window, those nearest
    its centre) are disjoint and cover `[0, t)`."""
    if t <= win:
        return [(0, 0, t)]
    hop = max(1, win // 2)
    starts = list(range(0, t - win, hop)) + [t - win]
    centres = [s + win / 2 for s in starts]
    bounds = [0] + [int(np.ceil((a + b) / 2)) for a, b in zip(centres, centres[1:])] + [t]
    return [(s, lo, hi) for s, lo, hi in zip(starts, bounds, bounds[1:]) if hi > lo]


def _collate(prior: Prior, inputs: list, group: list[tuple], t: int, device):
    """Windows `(input, start, length, ...)` of prior inputs -> one padded model input of `t` frames."""
    cfg = prior.cfg
    codes = frames = None
    for j, (i, s, n, _, _) in enumerate(group):
        c, f = split_input(cfg, inputs[i])
        if c is not None:
            if codes is None:
                codes = torch.zeros(len(group), c.shape[0], t, dtype=torch.long)
            codes[j, :, :n] = torch.from_numpy(np.asarray(c[:, s:s + n], dtype=np.int64))
        if f is not None:
            if frames is None:
                frames = torch.zeros(len(group), t, f.shape[1])
            frames[j, :n] = torch.from_numpy(np.asarray(f[s:s + n], dtype=np.float32))
    return join_input(cfg, *(None if v is None else v.to(device) for v in (codes, frames)))


@torch.no_grad()
def prior_states(prior: Prior, inputs: list, batch_size: int = 16) -> list[list[torch.Tensor]]:
    """Prior inputs (as `prior.cfg.input_kind` says) -> per input, every layer's `(T, D)` float32 states (on the
    CPU), read in the overlapping windows the module doc describes."""
    win, device = prior.cfg.max_len, next(prior.parameters()).device
    jobs = []  # (input index, window start, window length, core start, core stop)
    for i, x in enumerate(inputs):
        c, f = split_input(prior.cfg, x)
        t = c.shape[1] if c is not None else f.shape[0]
        jobs += [(i, s, min(win, t), lo, hi) for s, lo, hi in windows(t, win)]
    outs: list[list[list[torch.Tensor]]] = [[] for _ in inputs]  # per input: cores of per-layer states
    for b0 in range(0, len(jobs), batch_size):
        group = jobs[b0:b0 + batch_size]
        t = max(n for _, _, n, _, _ in group)
        x = _collate(prior, inputs, group, t, device)
        lengths = torch.tensor([n for _, _, n, _, _ in group])
        valid = torch.arange(t)[None] < lengths[:, None]
        states = prior(x, valid.to(device), output_hidden_states=True).hidden_states
        for j, (i, s, _, lo, hi) in enumerate(group):
            outs[i].append([h[j, lo - s:hi - s].float().cpu() for h in states])
    return [[torch.cat([w[layer] for w in ws]) for layer in range(len(prior.layer_names))] for ws in outs]


LEVEL_HELD_SECONDS = 600.0  # read at a level, a file up to this long is decoded once and held in memory


class Embedder:
    """A tokenizer and a prior that turn audio into per-layer frame states. `level_db`: each clip (a file, or a
    waveform) is first brought to that RMS in dBFS, as if played louder or quieter; "auto" (the default): the
    level of the audio the prior was trained on (`prior.cfg.corpus_level_db`; a prior that did not record one
    reads each clip as it is); None reads each clip as it is."""

    def __init__(self, tokenizer: Tokenizer, prior: Prior, batch_size: int = 16,
                 level_db: float | str | None = AUTO_LEVEL):
        self.tokenizer, self.prior, self.batch_size = tokenizer.eval(), prior.eval(), batch_size
        self.level_db = resolve_level(level_db, prior.cfg.corpus_level_db)
        self.fz = Featurizer(tokenizer.cfg)
        self.frames = frame_stacker(tokenizer) if prior.cfg.reads_frames else None

    @classmethod
    def from_pretrained(cls, tokenizer_dir: str | Path, prior_dir: str | Path | None = None, device: str = "cpu",
                        batch_size: int = 16, level_db: float | str | None = AUTO_LEVEL) -> Embedder:
        """From a tokenizer folder and a prior folder, or from one bundle folder holding `tokenizer/` and
        `prior/` (`musetok bundle`). Each may be a Hugging Face Hub repo id instead of a local path."""
        if prior_dir is None:
            bundle = resolve_folder(tokenizer_dir)
            tokenizer_dir, prior_dir = bundle / "tokenizer", bundle / "prior"
        tok = load_tokenizer(resolve_folder(tokenizer_dir), device=device)
        return cls(tok, load_prior(resolve_folder(prior_dir), device=device, tokenizer=tok), batch_size, level_db)

    @property
    def frame_rate(self) -> float:
        return self.tokenizer.frame_rate

    @property
    def layer_names(self) -> list[str]:
        return self.prior.layer_names

    # -- inputs ------------------------------------------------------------------------------------
    def _from_features(self, blocks: Iterable[np.ndarray]):
        """Model-input blocks -> the prior's input (`prior.cfg.input_kind`): codes `(K, T)`, frames `(T, F)`,
        or the pair `(codes, frames)`."""
        cfg = self.prior.cfg
        blocks = list(blocks)
        codes = np.concatenate(list(self.tokenizer.encode_stream(blocks)), axis=1) if cfg.reads_codes else None
        frames = self.frames(np.concatenate(blocks, axis=1)) if cfg.reads_frames else None
        return join_input(cfg, codes, frames)

    def inputs_from_file(self, path: str | Path):
        if self.level_db is None:
            return self._from_features(self.fz.iter_file(path))
        # the level needs the whole file before the front-end: a file up to LEVEL_HELD_SECONDS is decoded once
        # and held; a longer one is measured first, then read again, so it stays out of memory
        sr, blocks, meter = self.fz.sample_rate, [], LevelMeter()
        for b in iter_audio(path, sr, self.fz.block_seconds):
            blocks.append(meter.add(b))
            if meter.n > LEVEL_HELD_SECONDS * sr:
                gain = level_gain(audio_rms(path, sr, self.fz.block_seconds), self.level_db)
                return self._from_features(self.fz.iter_file(path, gain=gain))
        gain = np.float32(level_gain(meter.rms, self.level_db))
        return self._from_features(self.fz.iter_blocks(b * gain for b in blocks))

    def inputs_from_waveform(self, waveform: np.ndarray | torch.Tensor, sample_rate: int):
        wave = waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
        mono = to_mono_resampled(wave, sample_rate, self.tokenizer.sample_rate)
        if self.level_db is not None:
            mono = mono * np.float32(level_gain(wave_rms(mono), self.level_db))
        return self._from_features([self.fz.array(mono)])

    # -- the prior ---------------------------------------------------------------------------------
    def embed_inputs(self, inputs: list) -> list[Embedding]:
        """Prior inputs (codes `(K, T)`, frames `(T, F)` or both, as `prior.cfg.input_kind` says) -> one
        Embedding each."""
        return [Embedding(states, self.layer_names, self.frame_rate)
                for states in prior_states(self.prior, inputs, self.batch_size)]

    def embed(self, waveform: np.ndarray | torch.Tensor, sample_rate: int) -> Embedding:
        """A waveform at any rate, `(N,)`, `(C, N)` or `(N, C)` -> Embedding."""
        return self.embed_inputs([self.inputs_from_waveform(waveform, sample_rate)])[0]

    def embed_file(self, path: str | Path) -> Embedding:
        return self.embed_inputs([self.inputs_from_file(path)])[0]
