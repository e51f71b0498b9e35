"""The tokenizer's own config: what a checkpoint's config.json holds (no training settings)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from musetok.shared.config import check
from musetok.shared.mel import MelConfig


@dataclass(frozen=True)
class QuantizerConfig:
    """The quantizer's own settings (built from `TokenizerConfig.quantizer`)."""

    codebook_size: int = 512
    num_codebooks: int = 1
    code_dim: int = 8
    cosine_sim: bool = True
    kmeans_init: bool = True
    kmeans_iters: int = 10
    dead_code_threshold: float = 2.0
    ema_decay: float = 0.99
    commitment_weight: float = 0.25


@dataclass
class TokenizerConfig:
    input: Literal["mel", "waveform"] = "mel"
    mel: MelConfig = field(default_factory=MelConfig)
    channels: int = 128
    res_blocks: int = 2
    downsample: int = 2                        # mel input: mel frames per code (1, 2 or 4)
    strides: tuple[int, ...] = (4, 4, 4, 4)    # waveform input: samples per code = their product
    codebook_size: int = 512
    num_codebooks: int = 1                     # > 1 selects ResidualVQ (K codes per frame)
    code_dim: int = 8                          # low-dimensional codes (as DAC) keep codebooks alive
    cosine_sim: bool = True
    kmeans_init: bool = True
    kmeans_iters: int = 10
    dead_code_threshold: float = 2.0           # EMA cluster size under which a code is re-seeded
    ema_decay: float = 0.99
    commitment_weight: float = 0.25

    def __post_init__(self):
        check(self.downsample in (1, 2, 4), "model.downsample", "must be 1, 2 or 4")
        check(self.channels > 0, "model.channels", "must be positive")
        check(self.res_blocks >= 0, "model.res_blocks", "must be >= 0")
        check(len(self.strides) > 0 and all(s >= 2 and s % 2 == 0 for s in self.strides),
              "model.strides", "must be even numbers >= 2")
        check(2 <= self.codebook_size <= 65536, "model.codebook_size", "must be in [2, 65536] (codes are uint16)")
        check(1 <= self.num_codebooks <= 16, "model.num_codebooks", "must be in [1, 16]")
        check(self.code_dim >= 1, "model.code_dim", "must be positive")
        check(0.0 < self.ema_decay < 1.0, "model.ema_decay", "must be in (0, 1)")

    @property
    def quantizer(self) -> QuantizerConfig:
        return QuantizerConfig(self.codebook_size, self.num_codebooks, self.code_dim, self.cosine_sim,
                               self.kmeans_init, self.kmeans_iters, self.dead_code_threshold,
                               self.ema_decay, self.commitment_weight)

    @property
    def units_per_code(self) -> int:
        """Input units (mel frames or samples) per code frame."""
        return self.downsample if self.input == "mel" else math.prod(self.strides)

    @property
    def frame_rate(self) -> float:
        """Code frames per second."""
        if self.input == "mel":
            return self.mel.frame_rate / self.downsample
        return self.mel.sample_rate / self.units_per_code
