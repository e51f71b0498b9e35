"""Span masking (Mockingjay/TERA/HuBERT style) and BERT's 80/10/10 corruption."""

from __future__ import annotations

import torch


def span_mask(lengths: torch.Tensor, max_len: int, rate: float, span: int, generator: torch.Generator
              ) -> torch.Tensor:
    """Mask spans of `span` consecutive frames covering about `rate` of each sequence.

    Args:
        lengths: `(B,)` valid frames per sequence.
        max_len: T, the padded length.
    Returns:
        `(B, T)` bool, True where masked; never True in padding. Each sequence gets
        `round(rate * length / span)` (at least 1) span starts drawn without replacement, so spans may
        touch or overlap (then the masked fraction is a little under `rate`).
    """
    b = lengths.shape[0]
    mask = torch.zeros(b, max_len, dtype=torch.bool)
    for i in range(b):
        n = int(lengths[i])
        if n <= 0:
            continue
        width = min(span, n)
        starts_avail = n - width + 1
        k = max(1, min(starts_avail, round(rate * n / width)))
        starts = torch.randperm(starts_avail, generator=generator)[:k]
        idx = (starts[:, None] + torch.arange(width)[None]).flatten()
        mask[i, idx] = True
    return mask


def corrupt_codes(codes: torch.Tensor, mask: torch.Tensor, mask_id: int, vocab: int, generator: torch.Generator
                  ) -> torch.Tensor:
    """BERT's corruption of masked frames: 80% -> [MASK], 10% -> random code, 10% -> unchanged.

    codes `(B, K, T)`; mask `(B, T)`; the choice is per frame (all K codebooks of a frame together).
    """
    r = torch.rand(mask.shape, generator=generator)
    to_mask = (mask & (r < 0.8))[:, None].expand_as(codes)
    to_rand = (mask & (r >= 0.8) & (r < 0.9))[:, None].expand_as(codes)
    rand_codes = torch.randint(0, vocab, codes.shape, generator=generator)
    out = torch.where(to_mask, torch.full_like(codes, mask_id), codes)
    return torch.where(to_rand, rand_codes, out)


def corrupt_frames(frames: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """TERA's corruption: 80% -> zeros, 10% -> a random frame of the batch, 10% -> unchanged.

    frames `(B, T, F)` normalised; mask `(B, T)`.
    """
    b, t, f = frames.shape
    r = torch.rand(mask.shape, generator=generator)
    to_zero = (mask & (r < 0.8))[..., None]
    to_rand = (mask & (r >= 0.8) & (r < 0.9))[..., None]
    src = torch.randint(0, b * t, (b, t), generator=generator)
    rand_frames = frames.reshape(b * t, f)[src]
    out = torch.where(to_zero, torch.zeros_like(frames), frames)
    return torch.where(to_rand, rand_frames, out)
