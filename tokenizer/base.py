"""What every musetok tokenizer is: `encode`, `decode`, `frame_rate`, `codebook_size` (as audiocraft's
CompressionModel), its identity (`tokenizer_id`, `store_meta`) and chunked encoding of long inputs."""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from musetok.shared.config import to_dict
from musetok.shared.token_store import StoreMeta
from musetok.tokenizer.config import TokenizerConfig
from musetok.tokenizer.layers import receptive_field

# Config settings added after tokenizers were first saved: (section, key, default).
LATER_SETTINGS = [("mel", "scale", "mel"), ("mel", "min_fft", None)]


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

    @property
    def tokenizer_id(self) -> str:
        """A hash of everything that decides the codes: the config (mel settings included), the saved
        weights and buffers, and the mel normaliser (`identity_tensors`). Token stores and priors record it
        and refuse another tokenizer. Buffers that follow from the config (the mel filterbank) are left out."""
        cfg = to_dict(self.cfg)
        for section, key, default in LATER_SETTINGS:  # hashed only when set, so older folders keep their id
            if isinstance(cfg.get(section), dict) and cfg[section].get(key) == default:
                del cfg[section][key]
        h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
        tensors = self.identity_tensors()
        for name in sorted(tensors):
            t = tensors[name].detach().cpu().contiguous().reshape(-1)
            h.update(name.encode())
            h.update(str(t.dtype).encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    def identity_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors `tokenizer_id` hashes: the state dict, plus what a subclass keeps outside it."""
        return dict(self.state_dict())

    def store_meta(self, frames_dim: int = 0) -> StoreMeta:
        """The metadata of a token store written (or read) with this tokenizer."""
        return StoreMeta(self.tokenizer_id, self.codebook_size, self.num_codebooks, self.frame_rate,
                         self.sample_rate, frames_dim)

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
