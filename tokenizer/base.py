"""What every musetok tokenizer is: `encode`, `decode`, `frame_rate`, `codebook_size` (as audiocraft's
CompressionModel), plus `features` (waveform -> model input) and chunked encoding of long inputs."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from musetok.tokenizer.config import TokenizerConfig
from musetok.tokenizer.layers import receptive_field


@dataclass
class TokenizerOutput:
    """recon: model-input-shaped reconstruction; codes `(B, K, T')`; losses are scalars."""

    recon: torch.Tensor
    codes: torch.Tensor
    loss: torch.Tensor
    recon_loss: torch.Tensor
    commit_loss: torch.Tensor


class Tokenizer(nn.Module, ABC):
    cfg: TokenizerConfig
    encoder: nn.Module

    # -- what the rest of musetok relies on ------------------------------------------------------
    @property
    def frame_rate(self) -> float:
        return self.cfg.frame_rate

    @property
    def codebook_size(self) -> int:
        return self.cfg.quantizer.codebook_size

    @property
    def num_codebooks(self) -> int:
        return self.cfg.quantizer.num_codebooks

    @property
    def sample_rate(self) -> int:
        return self.cfg.mel.sample_rate

    @property
    def units_per_code(self) -> int:
        return self.cfg.units_per_code

    @abstractmethod
    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """Waveform `(B, N)` at `sample_rate` -> model input `(B, C, N')`."""

    @abstractmethod
    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        """Training forward on model input `(B, C, N')`."""

    @abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Model input `(B, C, N')` -> codes `(B, K, ceil(N' / units_per_code))` int64."""

    @abstractmethod
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes `(B, K, T)` -> reconstruction in model-input space `(B, C, T * units_per_code)`."""

    # -- long inputs ------------------------------------------------------------------------------
    @property
    def context_units(self) -> int:
        """Input units of context kept on each side of a chunk: the encoder's receptive field,
        rounded up to whole codes, so chunked encoding equals encoding the whole input."""
        half = receptive_field(self.encoder) // 2 + 1
        return math.ceil(half / self.units_per_code) * self.units_per_code

    def pad_to_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Right-pad `(B, C, N)` with edge values to a whole number of codes."""
        extra = (-x.shape[-1]) % self.units_per_code
        return torch.nn.functional.pad(x, (0, extra), mode="replicate") if extra else x

    @torch.no_grad()
    def encode_stream(self, blocks: Iterable[np.ndarray], chunk_codes: int = 2048) -> Iterator[np.ndarray]:
        """Encode a model input that arrives in blocks of `(C, n)` float32; yields codes `(K, t)` int64.

        Memory is bounded by `chunk_codes`, whatever the input's length; the concatenated output
        equals `encode` on the whole input (chunks carry `context_units` of context each side).
        """
        device = next(self.parameters()).device
        for chunk, left, core in overlapping_chunks(blocks, chunk_codes * self.units_per_code,
                                                    self.context_units):
            x = torch.from_numpy(chunk)[None].to(device)
            codes = self.encode(x)[0]  # (K, t)
            c0 = left // self.units_per_code
            yield codes[:, c0:c0 + math.ceil(core / self.units_per_code)].cpu().numpy()


def overlapping_chunks(blocks: Iterable[np.ndarray], core: int, context: int
                       ) -> Iterator[tuple[np.ndarray, int, int]]:
    """Re-cut a stream of `(C, n)` blocks into chunks of `core` units with up to `context` units of
    real context on each side. Yields `(chunk, left, n_core)`: the core is `chunk[:, left:left+n_core]`.
    `core` and `context` should be multiples of the code size so chunk starts stay code-aligned."""
    buf: np.ndarray | None = None
    buf_start = 0  # absolute position of buf[:, 0]
    pos = 0        # absolute start of the next core
    ended = False
    it = iter(blocks)
    while True:
        have = buf_start + (buf.shape[1] if buf is not None else 0)
        while not ended and have < pos + core + context:
            try:
                block = next(it)
            except StopIteration:
                ended = True
                break
            buf = block if buf is None else np.concatenate([buf, block], axis=1)
            have = buf_start + buf.shape[1]
        if buf is None or have <= pos:
            return
        lo = max(pos - context, buf_start)
        hi = min(pos + core + context, have)
        n_core = min(core, have - pos)
        yield np.ascontiguousarray(buf[:, lo - buf_start:hi - buf_start]), pos - lo, n_core
        pos += n_core
        drop = max(0, pos - context - buf_start)
        buf, buf_start = buf[:, drop:], buf_start + drop
        if ended and pos >= have:
            return
