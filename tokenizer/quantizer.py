"""The quantizer: vector-quantize-pytorch wrapped once, here, behind a small interface.

`VectorQuantize` for one codebook, `ResidualVQ` for K. Settings that keep codebooks healthy:
k-means init, EMA updates, dead-code expiry, cosine similarity on low-dimensional codes.
`encode` is a plain nearest-code search (the library's eval forward does ~2x the work for the same
indices; tests check they agree).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from vector_quantize_pytorch import ResidualVQ, VectorQuantize

from musetok.tokenizer.config import QuantizerConfig


@dataclass
class QuantizerOutput:
    """quantized: `(B, T, D)`; codes: `(B, K, T)` int64; commit_loss: scalar."""

    quantized: torch.Tensor
    codes: torch.Tensor
    commit_loss: torch.Tensor


class Quantizer(nn.Module):
    def __init__(self, dim: int, cfg: QuantizerConfig):
        super().__init__()
        self.cfg = cfg
        kw = dict(codebook_size=cfg.codebook_size, codebook_dim=cfg.code_dim, use_cosine_sim=cfg.cosine_sim,
                  kmeans_init=cfg.kmeans_init, kmeans_iters=cfg.kmeans_iters,
                  threshold_ema_dead_code=cfg.dead_code_threshold, decay=cfg.ema_decay,
                  commitment_weight=cfg.commitment_weight)
        self.residual = cfg.num_codebooks > 1
        if self.residual:
            self.vq = ResidualVQ(dim=dim, num_quantizers=cfg.num_codebooks, **kw)
        else:
            self.vq = VectorQuantize(dim=dim, **kw)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z: `(B, T, D)` -> quantized `(B, T, D)` with straight-through gradients, codes, commitment loss."""
        quantized, idx, loss = self.vq(z)[:3]
        codes = idx.permute(0, 2, 1) if self.residual else idx[:, None]  # (B, K, T)
        return QuantizerOutput(quantized, codes.long(), loss.sum())

    @staticmethod
    def _nearest(layer: VectorQuantize, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code of one VectorQuantize layer for `x` `(B, T, D_in)`: `(B, T)`."""
        x = layer.project_in(x)
        embed = layer._codebook.embed[0]  # (codebook_size, code_dim)
        if layer._codebook.__class__.__name__ == "CosineSimCodebook":
            return (F.normalize(x, dim=-1) @ F.normalize(embed, dim=-1).t()).argmax(-1)
        return (2 * x @ embed.t() - embed.square().sum(-1)).argmax(-1)

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z: `(B, T, D)` -> codes `(B, K, T)` int64."""
        if not self.residual:
            return self._nearest(self.vq, z)[:, None]
        residual = self.vq.project_in(z)
        codes = []
        for layer in self.vq.layers:
            idx = self._nearest(layer, residual)
            codes.append(idx)
            residual = residual - layer.get_output_from_indices(idx)
        return torch.stack(codes, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes `(B, K, T)` -> quantized vectors `(B, T, D)`."""
        if self.residual:
            return self.vq.get_output_from_indices(codes.permute(0, 2, 1))
        return self.vq.get_output_from_indices(codes[:, 0])
