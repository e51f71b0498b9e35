"""The raw-audio VQ-VAE (the route Jukebox takes): strided conv encoder/decoder on the waveform,
trained with a multi-resolution STFT loss."""

from __future__ import annotations

import torch
from torch import nn

from musetok.tokenizer.base import Tokenizer, TokenizerOutput
from musetok.tokenizer.config import TokenizerConfig
from musetok.tokenizer.layers import res_stack
from musetok.tokenizer.quantizer import Quantizer

STFT_SIZES = (256, 512, 1024)


def multi_resolution_stft_loss(pred: torch.Tensor, target: torch.Tensor,
                               sizes: tuple[int, ...] = STFT_SIZES) -> torch.Tensor:
    """Spectral convergence + log-magnitude L1, averaged over FFT sizes (Parallel WaveGAN's loss).
    pred, target: `(B, N)`."""
    total = pred.new_zeros(())
    for n in sizes:
        win = torch.hann_window(n, device=pred.device)
        p = torch.stft(pred, n, n // 4, window=win, return_complex=True).abs()
        t = torch.stft(target, n, n // 4, window=win, return_complex=True).abs()
        sc = torch.linalg.norm(t - p) / (torch.linalg.norm(t) + 1e-7)
        mag = (torch.log(p + 1e-5) - torch.log(t + 1e-5)).abs().mean()
        total = total + sc + mag
    return total / len(sizes)


class WaveformVQVAE(Tokenizer):
    """Input: waveform `(B, 1, N)`; codes at `N / prod(strides)` frames."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        c, depth = cfg.channels, cfg.res_blocks
        chans = [max(16, c // 2 ** (len(cfg.strides) - i)) for i in range(len(cfg.strides))] + [c]
        enc = [nn.Conv1d(1, chans[0], 7, padding=3)]
        for i, s in enumerate(cfg.strides):
            enc += [res_stack(chans[i], depth), nn.Conv1d(chans[i], chans[i + 1], 2 * s, stride=s, padding=s // 2)]
        enc += [nn.GELU()]
        self.encoder = nn.Sequential(*enc)
        self.quantizer = Quantizer(c, cfg.quantizer)
        dec = [nn.Conv1d(c, c, 3, padding=1)]
        for i, s in reversed(list(enumerate(cfg.strides))):
            dec += [nn.GELU(), nn.ConvTranspose1d(chans[i + 1], chans[i], 2 * s, stride=s, padding=s // 2),
                    res_stack(chans[i], depth, reverse=True)]
        dec += [nn.GELU(), nn.Conv1d(chans[0], 1, 7, padding=3), nn.Tanh()]
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        n = x.shape[-1]
        z = self.encoder(self.pad_to_codes(x)).transpose(1, 2)
        q = self.quantizer(z)
        recon = self.decoder(q.quantized.transpose(1, 2))[..., :n]
        recon_loss = multi_resolution_stft_loss(recon[:, 0], x[:, 0])
        return TokenizerOutput(recon, q.codes, recon_loss + q.commit_loss, recon_loss, q.commit_loss)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer.encode(self.encoder(self.pad_to_codes(x)).transpose(1, 2))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer.decode(codes).transpose(1, 2))
