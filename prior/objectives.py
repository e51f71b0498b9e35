"""The four training objectives on one backbone. Each returns the loss and what to log.

- `mlm` (BERT): span-masked codes, 80/10/10 corruption, cross-entropy on masked frames only.
- `ar` (GPT): next-code cross-entropy with a causal model.
- `masked_frames` (Mockingjay/TERA): span-masked normalised mel frames, L1 on masked frames only.
- `next_frames` (APC): L1 prediction of the frame `predict_ahead` steps later, causal model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from musetok.prior.data import Batch
from musetok.prior.masking import corrupt_codes, corrupt_frames, row_generators, span_mask
from musetok.prior.model import Prior
from musetok.shared.io import unwrap


@dataclass
class LossOutput:
    """loss: scalar; targets: how many frames it averages over; correct: codes predicted right
    (discrete objectives; counted over frames x codebooks)."""

    loss: torch.Tensor
    targets: int
    correct: int = 0


def _valid(lengths: torch.Tensor, t: int) -> torch.Tensor:
    return torch.arange(t, device=lengths.device)[None] < lengths[:, None]  # (B, T)


def compute_loss(model: Prior, batch: Batch) -> LossOutput:
    """`model` may be wrapped (DDP, compile); its config is read from the unwrapped module."""
    cfg = unwrap(model).cfg
    x, lengths = batch.x, batch.lengths
    dev = x.device
    if cfg.objective in ("mlm", "masked_frames"):
        t = x.shape[-1] if cfg.discrete else x.shape[1]
        valid = _valid(lengths, t)
        gens = row_generators(batch.seeds)
        mask = span_mask(lengths.cpu(), t, cfg.mask_rate, cfg.mask_span, gens)
        if cfg.discrete:
            inp = corrupt_codes(x.cpu(), mask, cfg.codebook_size, cfg.codebook_size, gens).to(dev)
        else:
            inp = corrupt_frames(x.cpu(), mask, lengths.cpu(), gens).to(dev)
        mask = mask.to(dev)
        h = model(inp, valid, keep=mask).hidden  # (N, D): only masked frames are predicted
        if cfg.discrete:
            return _code_loss(model, h, x.permute(0, 2, 1)[mask])
        return LossOutput(F.l1_loss(unwrap(model).frame_prediction(h), x[mask]), int(mask.sum()))

    # causal objectives: predict `shift` frames ahead from the past
    shift = 1 if cfg.discrete else cfg.predict_ahead
    if cfg.discrete:
        inp, target = x[:, :, :-shift], x[:, :, shift:].permute(0, 2, 1)  # (B, K, T'), (B, T', K)
    else:
        inp, target = x[:, :-shift], x[:, shift:]
    valid = _valid(lengths - shift, target.shape[1])
    h = model(inp, valid, keep=valid if not bool(valid.all()) else None).hidden
    h = h if h.dim() == 2 else h.reshape(-1, h.shape[-1])  # (N, D), in valid order
    if cfg.discrete:
        return _code_loss(model, h, target[valid])
    return LossOutput(F.l1_loss(unwrap(model).frame_prediction(h), target[valid]), int(valid.sum()))


def _code_loss(model: Prior, h: torch.Tensor, target: torch.Tensor) -> LossOutput:
    """h `(N, D)`, target `(N, K)` -> mean cross-entropy over frames and codebooks."""
    logits = unwrap(model).code_logits(h)  # (N, K, V)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1))
    correct = int((logits.argmax(-1) == target).sum())
    return LossOutput(loss, int(target.shape[0]), correct)
