"""Span masking (Mockingjay/TERA/HuBERT style), BERT's 80/10/10 corruption and band masking.

Randomness is per sequence: each row has its own seed (from the batch sampler), so a row is masked
the same way whichever batch, process or rank it lands in; N data-parallel ranks then train exactly
like one process on the same global batch.
"""

from __future__ import annotations

import torch


def row_generators(seeds: torch.Tensor) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def span_mask(lengths: torch.Tensor, max_len: int, rate: float, span: int, gens: list[torch.Generator]
              ) -> torch.Tensor:
    """Mask spans of `span` consecutive frames covering about `rate` of each sequence.

    Args:
        lengths: `(B,)` valid frames per sequence.
        max_len: T, the padded length.
        gens: one generator per row.
    Returns:
        `(B, T)` bool, True where masked; never True in padding. A sequence of n frames aims at
        m = rate * n masked frames: spans of `min(span, round(m))` frames (at least 1), `round(m / width)`
        of them (at least 1, so every sequence is scored), starts drawn without replacement, so spans may
        touch or overlap (then the masked fraction is a little under `rate`). Short sequences get shorter
        spans rather than one full span: 6 frames at rate 0.3 and span 5 mask 2 frames, not 5.
    """
    mask = torch.zeros(lengths.shape[0], max_len, dtype=torch.bool)
    for i, g in enumerate(gens):
        n = int(lengths[i])
        if n <= 0:
            continue
        width = max(1, min(span, round(rate * n)))
        starts_avail = n - width + 1
        k = max(1, min(starts_avail, round(rate * n / width)))
        starts = torch.randperm(starts_avail, generator=g)[:k]
        mask[i, (starts[:, None] + torch.arange(width)[None]).flatten()] = True
    return mask


def corrupt_codes(codes: torch.Tensor, mask: torch.Tensor, mask_id: int, vocab: int, gens: list[torch.Generator]
                  ) -> torch.Tensor:
    """BERT's corruption of masked frames: 80% -> [MASK], 10% -> random code, 10% -> unchanged.

    codes `(B, K, T)`; mask `(B, T)`; the choice is per frame (all K codebooks of a frame together).
    """
    k, t = codes.shape[1:]
    r, rand_codes = [], []
    for g in gens:  # each row's draws from its own generator, in this order
        r.append(torch.rand(t, generator=g))
        rand_codes.append(torch.randint(0, vocab, (k, t), generator=g))
    r = torch.stack(r)[:, None]  # (B, 1, T)
    m = mask[:, None]
    out = torch.where(m & (r >= 0.8) & (r < 0.9), torch.stack(rand_codes), codes)
    return out.masked_fill(m & (r < 0.8), mask_id)


def corrupt_frames(frames: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, gens: list[torch.Generator],
                   fill: str = "bert") -> torch.Tensor:
    """What a masked prior reads in place of the masked frames.

    `fill="bert"`: TERA's corruption, 80% -> zeros, 10% -> a random frame of the same sequence, 10% ->
    unchanged. `fill="noise"`: every masked frame becomes standard normal noise (MusicFM and MuQ fill the
    masked spans of the waveform with noise; the frames are standardised per band, so unit noise is at their
    scale): nothing of the masked frame is left to copy, and a masked span never looks like a real frame.

    frames `(B, T, F)` normalised; mask `(B, T)`.
    """
    t = frames.shape[1]
    if fill == "noise":
        noise = torch.stack([torch.randn(t, frames.shape[2], generator=g, dtype=frames.dtype) for g in gens])
        return torch.where(mask[..., None], noise, frames)
    r, src = [], []
    for n, g in zip(lengths.tolist(), gens):  # each row's draws from its own generator, in this order
        r.append(torch.rand(t, generator=g))
        src.append(torch.randint(0, max(1, n), (t,), generator=g))
    r, src = torch.stack(r), torch.stack(src)
    # the few replaced frames by index (the loop over rows this replaces took 3x as long)
    out = frames.clone()
    rows, pos = (mask & (r >= 0.8) & (r < 0.9)).nonzero(as_tuple=True)
    out[rows, pos] = frames[rows, src[rows, pos]]
    out[mask & (r < 0.8)] = 0.0
    return out


def band_mask(masked: torch.Tensor, lengths: torch.Tensor, bands: int, rate: float, width: int,
              gens: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """Bands hidden at frames left unmasked (`model.aux_bands`): at about `rate` of each row's valid frames outside
    `masked`, `width` adjacent bands from a start drawn uniformly.

    masked `(B, T)`; each row draws after its other draws. Returns `(B, T)` bool, the frames with hidden bands,
    and `(B, T, bands)` bool, the hidden bands (all False elsewhere).
    """
    t = masked.shape[1]
    r, start = [], []
    for g in gens:  # each row's draws from its own generator, in this order
        r.append(torch.rand(t, generator=g))
        start.append(torch.randint(0, bands - width + 1, (t,), generator=g))
    at = (torch.stack(r) < rate) & (torch.arange(t)[None] < lengths[:, None]) & ~masked
    j = torch.arange(bands)
    s = torch.stack(start)[..., None]
    return at, at[..., None] & (j >= s) & (j < s + width)
