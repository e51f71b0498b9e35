"""The training objectives on one backbone. Each returns the loss and what to log.

Masked (`mlm`, `masked_frames`): spans of the input are corrupted (or, with `decoder_layers`, dropped from the
lower blocks, as MAE drops them) and only they are scored. Causal (`ar`,
`next_frames`): the target `shift` frames ahead is predicted from the past. What the prior reads and what
it predicts are `cfg.input_kind` / `cfg.target_kind` (see `prior/config.py`):
- code targets: cross-entropy over every codebook (one head each);
- frame targets: L1 on normalised mel frames (Mockingjay/TERA, APC with `predict_ahead`);
- random targets: cross-entropy over BEST-RQ's random-projection codes of the clean frames;
- `aux_frames` > 0 adds L1 on the masked frames to a code loss (MERT's CQT reconstruction, with the
  `semitone` front-end), predicted from the last block or, with `aux_frames_layer`, from a lower one;
- `aux_random` > 0 adds cross-entropy over BEST-RQ's random-projection codes of the clean masked frames to
  the tokenizer's code loss (its own head);
- `aux_visible` > 0 adds L1 on the frames left unmasked, from the frame head (masked objectives score only the
  masked frames; this asks every position to keep its own);
- `aux_teacher` > 0 adds the mean squared error of a head's prediction against an EMA teacher's targets at the
  masked frames (data2vec / M2D: the mean of the teacher's normalised top layers over the clean window);
- `aux_decorr` > 0 adds VICReg's covariance term on one layer's states at the visible frames (`decorrelation`):
  its channels, standardised, kept decorrelated;
- `aux_bands` > 0 hides a stretch of bands at some of the frames left unmasked and adds L1 on them, from the frame
  head (masking across the bands as well as across time);
- `aux_contrast` > 0 adds InfoNCE between recordings: each window's pooled last-layer states must find the other
  window of its recording in the batch (`contrastive`);
- `aux_chroma` > 0 adds the KL divergence of the predicted from the true chroma of the masked frames
  (MERT's chroma target; `prior.data.Chroma`), to either masked loss;
- `mix_prob` > 0 (masked priors reading frames): the prior reads `batch.frames_in`, windows with another
  mixed in (`prior.data.Mixer`), and predicts the clean window's targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from musetok.prior.data import Batch
from musetok.prior.masking import band_mask, corrupt_codes, corrupt_frames, row_generators, span_mask
from musetok.prior.model import Prior, join_input
from musetok.shared.io import unwrap


@dataclass
class LossOutput:
    """loss: scalar; targets: how many frames it averages over; correct: codes predicted right and
    cross_entropy: the code part of the loss (objectives with code targets; the loss less `aux_frames`)."""

    loss: torch.Tensor
    targets: int
    correct: int = 0
    cross_entropy: float = float("nan")


def _valid(lengths: torch.Tensor, t: int) -> torch.Tensor:
    return torch.arange(t, device=lengths.device)[None] < lengths[:, None]  # (B, T)


def compute_loss(model: Prior, batch: Batch) -> LossOutput:
    """`model` may be wrapped (DDP, compile); its config is read from the unwrapped module. Masked objectives
    corrupt what the prior reads (codes: 80/10/10 with [MASK]; frames: 80/10/10 with zeros, or noise with
    `mask_fill: noise`) and score the masked frames only; causal ones predict the target `shift` frames ahead
    from the past."""
    cfg = unwrap(model).cfg
    compiled = hasattr(model, "_orig_mod")  # torch.compile: no data-dependent sizes inside the model's graph
    codes, frames, lengths = batch.codes, batch.frames, batch.lengths
    t = batch.length
    if not cfg.causal:
        valid = _valid(lengths, t)
        gens = row_generators(batch.seeds)
        mask = span_mask(lengths.cpu(), t, cfg.mask_rate, cfg.mask_span, gens)
        heard = frames if batch.frames_in is None else batch.frames_in  # `mix_prob`: another window mixed in
        if cfg.decoder_layers:  # MAE: the masked positions are dropped from the lower blocks, not corrupted
            if compiled:
                raise ValueError("model.decoder_layers drops a different number of positions in every batch, which "
                                 "torch.compile cannot trace: set train.compile: false")
            c_in, f_in = (codes if cfg.reads_codes else None), (heard if cfg.reads_frames else None)
        else:
            c_in = corrupt_codes(codes.cpu(), mask, cfg.codebook_size, cfg.codebook_size, gens).to(codes.device) \
                if cfg.reads_codes else None
            f_in = corrupt_frames(heard.cpu(), mask, lengths.cpu(), gens, cfg.mask_fill).to(frames.device) \
                if cfg.reads_frames else None
        scored = mask
        if cfg.aux_bands > 0:  # bands hidden at some unmasked frames, scored too
            banded, hidden = band_mask(mask, lengths.cpu(), cfg.frame_bands, cfg.band_mask_rate, cfg.band_mask_width,
                                       gens)
            hidden = hidden.repeat(1, 1, cfg.frame_dim // cfg.frame_bands).to(frames.device)  # (B, T, F): every stack
            f_in = f_in.masked_fill(hidden, 0.0)
            scored = mask | banded
            banded = banded.to(lengths.device)
        mask, scored = mask.to(lengths.device), scored.to(lengths.device)
        # `aux_visible` scores the unmasked frames too and `aux_contrast` pools every frame, so the last block runs
        # everywhere; so it does under torch.compile, where `keep`'s data-dependent sizes would break the graph (the
        # scored states are picked out here instead, outside it). With no padding no mask is passed, for the same reason
        everywhere = cfg.aux_visible > 0 or cfg.aux_contrast > 0 or compiled
        o = model(join_input(cfg, c_in, f_in), None if bool(valid.all()) else valid,
                  keep=None if everywhere else scored,
                  output_hidden_states=cfg.aux_frames_layer > 0 or cfg.aux_decorr > 0,
                  drop=mask if cfg.decoder_layers else None)
        h_scored = o.hidden[scored] if everywhere else o.hidden  # (N, D), in `scored` order
        h = h_scored[mask[scored]] if cfg.aux_bands > 0 else h_scored  # the masked frames' states
        # `aux_frames_layer`: the frames from a lower block's output (its own LayerNorm), the codes from the last
        h_frames = unwrap(model).aux_norm(o.hidden_states[cfg.aux_frames_layer][mask]) if cfg.aux_frames_layer else h
        if cfg.predicts_codes:
            target = unwrap(model).random_codes(frames[mask]) if cfg.target_kind == "random" \
                else codes.permute(0, 2, 1)[mask]
            out = _code_loss(model, h, target)
            if cfg.aux_frames > 0:  # MERT: a reconstruction target beside the codes
                out.loss = out.loss + cfg.aux_frames * F.l1_loss(unwrap(model).frame_prediction(h_frames),
                                                            frames[mask])
            if cfg.aux_random > 0:  # BEST-RQ's codes of the clean masked frames beside the tokenizer's
                logits = unwrap(model).random_logits(h).float()  # (N, K, V)
                target = unwrap(model).random_codes(frames[mask])  # (N, K)
                out.loss = out.loss + cfg.aux_random * F.cross_entropy(logits.flatten(0, 1), target.flatten())
        else:
            out = LossOutput(F.l1_loss(unwrap(model).frame_prediction(h), frames[mask]), int(mask.sum()))
        if cfg.aux_bands > 0:  # the hidden bands, from the rest of their frame and its neighbours
            pred = unwrap(model).frame_prediction(h_scored[banded[scored]]).float()
            out.loss = out.loss + cfg.aux_bands * (pred - frames[banded])[hidden[banded]].abs().mean()
        if cfg.aux_visible > 0:  # each unmasked position's own frame, from the same head
            seen = valid & ~scored
            out.loss = out.loss + cfg.aux_visible * F.l1_loss(unwrap(model).frame_prediction(o.hidden[seen]),
                                                              frames[seen])
        if cfg.aux_teacher > 0:  # data2vec: regress an EMA teacher's view of the clean window at the masked frames
            m = unwrap(model)
            if m.training and torch.is_grad_enabled():  # each training forward, so after every optimizer step
                m.update_teacher()
            clean = join_input(cfg, codes if cfg.reads_codes else None, frames if cfg.reads_frames else None)
            target = m.teacher_targets(clean, valid)[mask]
            out.loss = out.loss + cfg.aux_teacher * F.mse_loss(m.teacher_head(h).float(), target)
        if cfg.aux_decorr > 0:  # VICReg: one layer's channels decorrelated, at the frames the prior heard
            out.loss = out.loss + cfg.aux_decorr * decorrelation(o.hidden_states[cfg.aux_decorr_layer][valid & ~mask])
        if cfg.aux_contrast > 0:  # COLA / SimCLR: which other window in the batch is from the same recording
            if batch.items is None:
                raise ValueError("model.aux_contrast needs batches of window pairs (WindowSource(pairs=True))")
            w = valid[..., None].float()
            pooled = (o.hidden.float() * w).sum(1) / w.sum(1).clamp_min(1.0)  # (B, D)
            z = unwrap(model).contrast_head(pooled)
            out.loss = out.loss + cfg.aux_contrast * contrastive(z, batch.items, cfg.contrast_temperature)
        if cfg.aux_chroma > 0:  # MERT's other musical target: pitch classes, octave- and loudness-free
            logp = F.log_softmax(unwrap(model).chroma_logits(h).float(), -1)  # (N, S, 12)
            out.loss = out.loss + cfg.aux_chroma * F.kl_div(logp.flatten(0, 1), batch.chroma[mask].flatten(0, 1),
                                                            reduction="batchmean")
        return out

    shift = 1 if cfg.predicts_codes else cfg.predict_ahead
    c_in = codes[:, :, :-shift] if cfg.reads_codes else None                       # (B, K, T')
    f_in = frames[:, :-shift] if cfg.reads_frames else None                        # (B, T', F)
    if cfg.target_kind == "random":
        target = unwrap(model).random_codes(frames[:, shift:])   # (B, T', K)
    elif cfg.predicts_codes:
        target = codes[:, :, shift:].permute(0, 2, 1)             # (B, T', K)
    else:
        target = frames[:, shift:]                                # (B, T', F)
    valid = _valid(lengths - shift, target.shape[1])
    padded = not bool(valid.all())
    # as above: under torch.compile the valid positions are picked out here, not by `keep` inside the graph
    h = model(join_input(cfg, c_in, f_in), valid if padded else None,
              keep=valid if padded and not compiled else None).hidden
    h = h if h.dim() == 2 else h[valid] if padded else h.reshape(-1, h.shape[-1])  # (N, D), in valid order
    if cfg.predicts_codes:
        return _code_loss(model, h, target[valid])
    return LossOutput(F.l1_loss(unwrap(model).frame_prediction(h), target[valid]), int(valid.sum()))


def contrastive(z: torch.Tensor, items: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent over a batch of pairs: z `(B, E)`, rows 2i and 2i + 1 two views of one recording; items
    `(B,)` the recording of each row. Each row's partner is its positive, every other row of another recording a
    negative (rows of the same recording that are not its partner are left out of the softmax). Mean cross-entropy
    over the rows: log(B - 1) for features that tell nothing apart, 0 when each partner is found with certainty."""
    z = F.normalize(z.float(), dim=-1)
    sim = z @ z.T / temperature  # (B, B)
    b = len(z)
    partner = torch.arange(b, device=z.device) ^ 1  # 0 <-> 1, 2 <-> 3, ...
    same = items[:, None] == items[None, :]
    same[torch.arange(b, device=z.device), partner] = False
    sim = sim.masked_fill(same, float("-inf"))  # itself, and its recording's other windows but the partner
    return F.cross_entropy(sim, partner)


def decorrelation(h: torch.Tensor) -> torch.Tensor:
    """VICReg's covariance term on standardised states: h `(N, D)` -> the sum of the squared off-diagonal entries of
    the channels' correlation matrix, over D. 0 for uncorrelated channels, D - 1 when all are one."""
    z = h.float()
    z = (z - z.mean(0)) / (z.std(0) + 1e-4)
    c = z.T @ z / max(len(z) - 1, 1)
    return (c.square().sum() - c.diagonal().square().sum()) / z.shape[1]


def _code_loss(model: Prior, h: torch.Tensor, target: torch.Tensor) -> LossOutput:
    """h `(N, D)`, target `(N, K)` -> mean cross-entropy over frames and codebooks."""
    logits = unwrap(model).code_logits(h)  # (N, K, V)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1))
    correct = int((logits.argmax(-1) == target).sum())
    return LossOutput(loss, int(target.shape[0]), correct, float(loss.detach()))
