"""Audio file -> the tokenizer's input (log-mel or waveform), streamed in blocks; and log-mel -> the
continuous prior's input (normalised mel frames stacked to the code rate)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from musetok.shared.audio import LevelMeter, iter_audio
from musetok.shared.errors import UserError
from musetok.shared.mel import MelFrontend, StreamingMel, semitone_pitch_classes
from musetok.shared.normalize import MelStats
from musetok.tokenizer.base import Tokenizer
from musetok.tokenizer.config import TokenizerConfig
from musetok.tokenizer.mel_vqvae import MelVQVAE


class Featurizer:
    """Turns audio files or arrays into model input `(C, N)` float32 numpy, for either input kind."""

    def __init__(self, cfg: TokenizerConfig, block_seconds: float = 30.0):
        self.cfg = cfg
        self.block_seconds = block_seconds
        self.frontend = MelFrontend(cfg.mel) if cfg.input == "mel" else None

    @property
    def sample_rate(self) -> int:
        return self.cfg.mel.sample_rate

    @property
    def units_per_second(self) -> float:
        return self.cfg.mel.frame_rate if self.cfg.input == "mel" else float(self.sample_rate)

    def iter_file(self, path: str | Path, start: float = 0.0, duration: float | None = None, gain: float = 1.0,
                  meter: LevelMeter | None = None) -> Iterator[np.ndarray]:
        """Yield `(C, n)` blocks of model input for a file (raises AudioError for a bad file), its samples
        multiplied by `gain` first; `meter` measures the level of the samples read (at `sample_rate`)."""
        blocks = iter_audio(path, self.sample_rate, self.block_seconds, start=start, duration=duration)
        if gain != 1.0:
            blocks = (b * np.float32(gain) for b in blocks)
        if meter is not None:
            blocks = (meter.add(b) for b in blocks)
        return self.iter_blocks(blocks)

    def iter_blocks(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Mono blocks at `sample_rate`, in order -> `(C, n)` blocks of model input (as `iter_file` yields)."""
        if self.frontend is None:
            for b in blocks:
                yield b[None]
            return
        stream = StreamingMel(self.frontend)
        for b in blocks:
            out = stream.push(b)
            if out.shape[1]:
                yield out
        out = stream.flush()
        if out.shape[1]:
            yield out

    def file(self, path: str | Path, start: float = 0.0, duration: float | None = None) -> np.ndarray:
        return np.concatenate(list(self.iter_file(path, start, duration)), axis=1)

    def array(self, wave: np.ndarray) -> np.ndarray:
        """Mono waveform `(N,)` at `sample_rate` -> `(C, N')`."""
        if self.frontend is None:
            return np.asarray(wave, np.float32)[None]
        with torch.no_grad():
            return self.frontend(torch.from_numpy(np.asarray(wave, np.float32))).numpy()


class FrameStacker:
    """Log-mel `(n_mels, T)` -> normalised frames stacked to the code rate, `(ceil(T / ds), ds * n_mels)`
    float32: the input of the continuous priors, frame-aligned with the codes (edge-padded at the end)."""

    def __init__(self, stats: MelStats, downsample: int, pitch_class: np.ndarray | None = None):
        self.mean, self.std = stats.mean[:, None], stats.std[:, None]
        self.downsample = downsample
        self.pitch_class = pitch_class

    def store_fields(self) -> dict:
        """What a token store records about these frames (`StoreMeta.frames_*`): enough to turn them back into
        log power and, for a semitone front-end, into chroma."""
        return {"frames_dim": self.dim, "frames_mean": self.mean[:, 0].tolist(), "frames_std": self.std[:, 0].tolist(),
                "frames_pitch_class": [] if self.pitch_class is None else [int(c) for c in self.pitch_class]}

    @property
    def dim(self) -> int:
        return self.mean.shape[0] * self.downsample

    def __call__(self, logmel: np.ndarray) -> np.ndarray:
        x = (logmel - self.mean) / self.std
        ds = self.downsample
        extra = (-x.shape[1]) % ds
        if extra:
            x = np.pad(x, ((0, 0), (0, extra)), mode="edge")
        return np.ascontiguousarray(x.T.reshape(-1, ds * x.shape[0]), dtype=np.float32)


def frame_stacker(model: Tokenizer) -> FrameStacker:
    """The continuous-input features that go with a mel tokenizer (its normaliser and downsampling)."""
    if not isinstance(model, MelVQVAE):
        raise UserError("mel frames (--with-frames, and priors that read frames) need a mel tokenizer, "
                        f"not a {model.cfg.input} one")
    mel = model.cfg.mel
    return FrameStacker(model.stats(), model.cfg.downsample,
                        semitone_pitch_classes(mel) if mel.scale == "semitone" else None)
