"""Train the VQ-VAE tokenizer. One function, read top to bottom (nanoGPT-style).

    musetok train-tokenizer --config small --audio DIR_OR_MANIFEST --out DIR [--resume] [--set k=v]

Writes to DIR: the model folder (config.json, model.safetensors, normalizer.json), run_config.json,
train_state.pt (for --resume), metrics.jsonl, reconstruction.png and codebook_usage.png.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from musetok.shared import distributed
from musetok.shared.audio import AudioError, list_audio
from musetok.shared.config import check, from_dict, to_dict
from musetok.shared.io import read_json, write_json
from musetok.shared.normalize import MelStats, MelStatsAccumulator
from musetok.shared.plots import plot_codebook_usage, plot_reconstruction
from musetok.shared.training import (
    MetricsLog,
    StepDataset,
    lr_at,
    make_optimizer,
    restore_state,
    save_state,
    set_lr,
    split_files,
    start_run,
)
from musetok.tokenizer.builder import build_tokenizer, save_tokenizer
from musetok.tokenizer.config import TokenizerConfig
from musetok.tokenizer.data import SegmentSource
from musetok.tokenizer.features import Featurizer

log = logging.getLogger("musetok")
RUN_CONFIG_FILE = "run_config.json"


@dataclass
class TokenizerTrainConfig:
    steps: int = 2000
    batch_size: int = 16
    segment_seconds: float = 2.0
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    valid_fraction: float = 0.1     # of files, held out for validation
    valid_segments: int = 32
    valid_every: int = 250
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0
    num_workers: int = 0            # DataLoader workers building batches
    cache_hours: float = 4.0        # keep the training set's features in RAM if the corpus is this short
    stats_max_files: int = 200      # files used for the mel normalisation statistics
    device: str = "auto"

    def __post_init__(self):
        check(self.steps > 0, "train.steps", "must be positive")
        check(self.batch_size > 0, "train.batch_size", "must be positive")
        check(self.segment_seconds > 0, "train.segment_seconds", "must be positive")
        check(0 <= self.valid_fraction < 1, "train.valid_fraction", "must be in [0, 1)")
        check(self.num_workers >= 0, "train.num_workers", "must be >= 0")


@dataclass
class TokenizerRunConfig:
    model: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TokenizerTrainConfig = field(default_factory=TokenizerTrainConfig)


@dataclass
class TokenizerTrainResult:
    """What a training run produced. `valid_recon_loss` is the last validation loss."""

    out: Path
    steps: int
    tokenizer_id: str
    valid_recon_loss: float
    valid_usage: list[float]          # % of codes used on the validation set, per codebook
    train_files: int
    skipped_files: dict[str, str]


def code_stats(codes: torch.Tensor, codebook_size: int) -> tuple[np.ndarray, list[float], list[float]]:
    """codes `(B, K, T)` -> counts `(K, codebook_size)`, usage % per codebook, perplexity per codebook."""
    k = codes.shape[1]
    flat = codes.transpose(0, 1).reshape(k, -1).cpu()
    counts = np.stack([torch.bincount(flat[i], minlength=codebook_size).numpy() for i in range(k)])
    p = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    ent = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(1)
    return counts, [float(u) for u in (counts > 0).mean(1) * 100], [float(v) for v in np.exp(ent)]


def compute_mel_stats(source: SegmentSource, max_files: int) -> MelStats:
    acc = MelStatsAccumulator(source.fz.cfg.mel.n_mels)
    for rel in source.files[:max_files]:
        x = source.cache[rel] if source.cache is not None else source.fz.file(source.corpus.path(rel))
        acc.add(x)
    return acc.result()


def load_run_config(out: str | Path) -> TokenizerRunConfig:
    return from_dict(TokenizerRunConfig, read_json(Path(out) / RUN_CONFIG_FILE))


def train_tokenizer(run: TokenizerRunConfig, audio: str | Path, out: str | Path, resume: bool = False,
                    progress: bool = True, stop_at: int | None = None) -> TokenizerTrainResult:
    """Train (or with `resume`, continue) a tokenizer; `stop_at` ends this run early at that step with a
    checkpoint, keeping the schedule of `train.steps` (for time-limited jobs)."""
    tc, mc = run.train, run.model
    out = Path(out)
    d, device, part = start_run(out, resume, tc.device, tc.batch_size, tc.seed)

    # -- data: split by file, segments sampled per step from (seed, step) --------------------------
    corpus = list_audio(audio)
    train_files, valid_files = split_files(corpus.files, tc.valid_fraction, tc.seed)
    fz = Featurizer(mc)
    train_src = SegmentSource(corpus, train_files, fz, tc.segment_seconds, tc.cache_hours)
    if not train_src.files:
        raise AudioError(audio, "no usable audio files to train on")
    valid_src = SegmentSource(corpus, valid_files, fz, tc.segment_seconds, tc.cache_hours) if valid_files else None
    if valid_src is None or not valid_src.files:
        log.warning("no held-out files: validating on training files")
        valid_src = train_src
    if d.is_main:
        log.info("tokenizer data: %d train files (%.2f h), %d valid files%s", len(train_src.files),
                 train_src.hours, len(valid_src.files), f"; {d.world} processes" if d.enabled else "")

    # -- model, optimizer, state -------------------------------------------------------------------
    stats = None
    if mc.input == "mel":
        stats = MelStats.load(out / "normalizer.json") if resume else compute_mel_stats(train_src, tc.stats_max_files)
    model = build_tokenizer(mc, stats).to(device)  # after init: the VQ syncs its codebooks when distributed
    opt = make_optimizer(model, tc.lr, tc.weight_decay)
    step = 0
    if resume:
        step = restore_state(out, model, opt)
        log.info("resuming %s at step %d", out, step)
    ddp_model = distributed.wrap(model, d, device)
    if d.is_main:
        write_json(out / RUN_CONFIG_FILE, to_dict(run))
        metrics = MetricsLog(out / "metrics.jsonl", resume_step=step if resume else None)
    n_valid = math.ceil(tc.valid_segments / tc.batch_size)
    valid_batches = [valid_src.batch(tc.seed + 1, i, tc.batch_size) for i in range(n_valid)]

    def validate() -> tuple[float, np.ndarray, list[float], list[float]]:
        """On rank 0 only, with the unwrapped model (DDP's forward would wait for the other ranks)."""
        model.eval()
        losses, codes = [], []
        with torch.no_grad():
            for b in valid_batches:
                o = model(b.to(device))
                losses.append(o.recon_loss.item())
                codes.append(o.codes)
        model.train()
        counts, usage, ppl = code_stats(torch.cat(codes), mc.codebook_size)
        return float(np.mean(losses)), counts, usage, ppl

    def checkpoint() -> str:
        tok_id = save_tokenizer(out, model)
        save_state(out, model, opt, step)
        return tok_id

    # -- the loop ----------------------------------------------------------------------------------
    last = tc.steps if stop_at is None else min(stop_at, tc.steps)
    loader = torch.utils.data.DataLoader(StepDataset(train_src, tc.seed, tc.batch_size, step, last, part),
                                         batch_size=None, shuffle=False, num_workers=tc.num_workers,
                                         # its own generator: drawing the loader's seed from the global RNG
                                         # would shift the VQ's random draws after a resume
                                         generator=torch.Generator().manual_seed(tc.seed))
    bar = tqdm(total=last, initial=step, desc="train-tokenizer", unit="step", disable=not progress or not d.is_main)
    model.train()
    valid_loss, usage = float("nan"), [0.0] * mc.num_codebooks
    tok_id = ""
    for batch in loader:
        lr = lr_at(step, tc.lr, tc.warmup_steps, tc.steps, tc.min_lr_ratio)
        set_lr(opt, lr)
        o = ddp_model(batch.to(device))  # batch: this rank's (B / world, C, N)
        opt.zero_grad(set_to_none=True)
        o.loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        step += 1

        if d.is_main and (step % tc.log_every == 0 or step == tc.steps):
            _, b_usage, b_ppl = code_stats(o.codes, mc.codebook_size)
            metrics.write(step, split="train", lr=lr, loss=o.loss.item(), recon_loss=o.recon_loss.item(),
                          commit_loss=o.commit_loss.item(), grad_norm=gnorm.item(),
                          usage=[round(u, 2) for u in b_usage], perplexity=[round(p, 2) for p in b_ppl])
            bar.set_postfix(recon=f"{o.recon_loss.item():.4f}", usage=f"{b_usage[0]:.0f}%")
        if d.is_main and (step % tc.valid_every == 0 or step == tc.steps):
            valid_loss, counts, usage, ppl = validate()
            metrics.write(step, split="valid", recon_loss=valid_loss, usage=[round(u, 2) for u in usage],
                          perplexity=[round(p, 2) for p in ppl])
        if step % tc.checkpoint_every == 0 or step == last:
            if d.is_main:
                tok_id = checkpoint()
            d.barrier()
        bar.update(1)
    bar.close()
    distributed.dump_rank_state(model, d)
    if not d.is_main:
        distributed.shutdown(d)
        return TokenizerTrainResult(out, step, "", float("nan"), [], len(train_src.files), {})

    # -- plots of the final model ------------------------------------------------------------------
    valid_loss, counts, usage, _ = validate()
    plot_codebook_usage(out / "codebook_usage.png", counts)
    model.eval()
    with torch.no_grad():
        x = valid_batches[0][:1].to(device)
        o = model(x)
        if mc.input == "mel":
            orig, dec = x[0].cpu().numpy(), o.recon[0].cpu().numpy()
        else:  # show the waveform model's input and output as log-mel too
            orig = fz.array(x[0, 0].cpu().numpy())
            dec = fz.array(o.recon[0, 0].cpu().numpy())
    plot_reconstruction(out / "reconstruction.png", orig, dec, mc.mel.frame_rate,
                        f"validation segment, recon loss {valid_loss:.4f}")
    distributed.shutdown(d)
    return TokenizerTrainResult(out, step, tok_id or save_tokenizer(out, model), valid_loss, usage,
                                len(train_src.files), {**train_src.bad, **(valid_src.bad if valid_src else {})})
