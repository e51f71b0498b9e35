"""The mel VQ-VAE: 1-D conv residual encoder over log-mel frames -> VQ -> mirrored decoder."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from musetok.shared.mel import MelFrontend
from musetok.shared.normalize import MelStats
from musetok.tokenizer.base import Tokenizer, TokenizerOutput
from musetok.tokenizer.config import TokenizerConfig
from musetok.tokenizer.layers import res_stack
from musetok.tokenizer.quantizer import Quantizer


class MelVQVAE(Tokenizer):
    """Input: log-mel `(B, n_mels, T)`; codes at `T / downsample` frames."""

    def __init__(self, cfg: TokenizerConfig, stats: MelStats | None = None):
        super().__init__()
        self.cfg = cfg
        m, c, depth = cfg.mel.n_mels, cfg.channels, cfg.res_blocks
        levels = int(math.log2(cfg.downsample))
        self.frontend = MelFrontend(cfg.mel)
        stats = stats or MelStats.identity(m)
        # Derived from normalizer.json, which is the stored copy: not saved in the weights.
        self.register_buffer("mel_mean", torch.from_numpy(stats.mean)[:, None], persistent=False)
        self.register_buffer("mel_std", torch.from_numpy(stats.std)[:, None], persistent=False)

        enc = [nn.Conv1d(m, c, 3, padding=1)]
        for _ in range(levels):
            enc += [res_stack(c, depth), nn.Conv1d(c, c, 4, stride=2, padding=1)]
        enc += [res_stack(c, depth), nn.GELU()]
        self.encoder = nn.Sequential(*enc)
        self.quantizer = Quantizer(c, cfg.quantizer)
        dec = [nn.Conv1d(c, c, 3, padding=1), res_stack(c, depth, reverse=True)]
        for _ in range(levels):
            dec += [nn.ConvTranspose1d(c, c, 4, stride=2, padding=1), res_stack(c, depth, reverse=True)]
        dec += [nn.GELU(), nn.Conv1d(c, m, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def identity_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().identity_tensors(), "mel_mean": self.mel_mean, "mel_std": self.mel_std}

    def stats(self) -> MelStats:
        """The corpus normaliser the model was built with (per-bin mean/std of the log-mel)."""
        return MelStats(self.mel_mean[:, 0].cpu().numpy().astype(np.float32),
                        self.mel_std[:, 0].cpu().numpy().astype(np.float32), 0)

    def _encode_latent(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        n = x.shape[-1]
        x = self.pad_to_codes((x - self.mel_mean) / self.mel_std)
        return self.encoder(x).transpose(1, 2), n  # (B, T', C)

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        z, n = self._encode_latent(x)
        q = self.quantizer(z)
        recon_norm = self.decoder(q.quantized.transpose(1, 2))[..., :n]  # (B, n_mels, T)
        target = (x - self.mel_mean) / self.mel_std
        recon_loss = F.mse_loss(recon_norm, target)
        recon = recon_norm * self.mel_std + self.mel_mean
        return TokenizerOutput(recon, q.codes, recon_loss + q.commit_loss, recon_loss, q.commit_loss)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z, _ = self._encode_latent(x)
        return self.quantizer.encode(z)

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """`encode` for input already normalised and stacked to the code rate, as a store `--with-frames` holds it
        (`features.FrameStacker`): frames `(B, T, downsample * n_mels)` -> codes `(B, K, T)`. A prior that moves
        its frames (`model.pitch_shift_codes: recoded`) gets the codes of what it reads."""
        b, t, _ = frames.shape
        x = frames.to(self.mel_std.dtype).reshape(b, t * self.cfg.downsample, self.cfg.mel.n_mels).transpose(1, 2)
        return self.quantizer.encode(self.encoder(x).transpose(1, 2))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        q = self.quantizer.decode(codes)  # (B, T, C)
        return self.decoder(q.transpose(1, 2)) * self.mel_std + self.mel_mean
