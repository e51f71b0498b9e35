"""Pretrain the transformer prior on a token store. One function, read top to bottom.

    musetok pretrain --config small --store STORE --out DIR [--resume] [--set k=v]

Writes to DIR: the model folder (config.json, model.safetensors), run_config.json, train_state.pt
(model, optimizer, RNG, step: for an exact --resume), metrics.jsonl and training_curve.png.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from musetok.prior.builder import save_prior
from musetok.prior.config import PriorConfig
from musetok.prior.data import WindowSource
from musetok.prior.model import Prior
from musetok.prior.objectives import compute_loss
from musetok.shared import distributed
from musetok.shared.config import ConfigError, check, from_dict, to_dict
from musetok.shared.io import read_json, write_json
from musetok.shared.plots import plot_curves
from musetok.shared.token_store import TokenStore
from musetok.shared.training import (
    MetricsLog,
    StepDataset,
    lr_at,
    make_optimizer,
    read_metrics,
    restore_state,
    save_state,
    set_lr,
    split_files,
    start_run,
)

log = logging.getLogger("musetok")
RUN_CONFIG_FILE = "run_config.json"


@dataclass
class PriorTrainConfig:
    steps: int = 2000
    batch_size: int = 16
    grad_accum: int = 1             # micro-batches per optimizer step
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    valid_fraction: float = 0.1     # of files, held out
    valid_batches: int = 8
    valid_every: int = 250
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"   # auto: bf16 autocast on GPU, fp32 on CPU
    compile: bool = False

    def __post_init__(self):
        check(self.steps > 0, "train.steps", "must be positive")
        check(self.batch_size > 0, "train.batch_size", "must be positive")
        check(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")
        check(0 <= self.valid_fraction < 1, "train.valid_fraction", "must be in [0, 1)")


@dataclass
class PriorRunConfig:
    model: PriorConfig = field(default_factory=PriorConfig)
    train: PriorTrainConfig = field(default_factory=PriorTrainConfig)


@dataclass
class PriorTrainResult:
    out: Path
    steps: int
    valid_loss: float
    valid_accuracy: float | None     # discrete objectives: masked / next code accuracy
    valid_perplexity: float | None


def load_run_config(out: str | Path) -> PriorRunConfig:
    return from_dict(PriorRunConfig, read_json(Path(out) / RUN_CONFIG_FILE))


def bind_to_store(cfg: PriorConfig, store: TokenStore) -> None:
    """Fill the config's input/output sizes and tokenizer identity from the store."""
    m = store.meta
    cfg.codebook_size, cfg.num_codebooks, cfg.frame_rate, cfg.tokenizer_id = (
        m.codebook_size, m.num_codebooks, m.frame_rate, m.tokenizer_id)
    cfg.frame_dim = m.frames_dim


def train_prior(run: PriorRunConfig, store_dir: str | Path, out: str | Path, resume: bool = False,
                progress: bool = True, stop_at: int | None = None) -> PriorTrainResult:
    """Train (or continue, with `resume`) a prior; `stop_at` ends this run early with a checkpoint."""
    tc, mc = run.train, run.model
    out = Path(out)
    d, device, part = start_run(out, resume, tc.device, tc.batch_size, tc.seed)
    use_bf16 = tc.dtype == "bfloat16" or (tc.dtype == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()

    # -- data: windows from the store, split by file ----------------------------------------------
    store = TokenStore(store_dir)
    bind_to_store(mc, store)
    if len(store) == 0:
        raise ConfigError(f"{store_dir}: the token store has no items to train on")
    paths = [e.path for e in store.items]
    train_paths, valid_paths = split_files(paths, tc.valid_fraction, tc.seed)
    pos = {p: i for i, p in enumerate(paths)}
    train_src = WindowSource(store, [pos[p] for p in train_paths], mc.max_len, frames=not mc.discrete)
    valid_src = WindowSource(store, [pos[p] for p in (valid_paths or train_paths)], mc.max_len,
                             frames=not mc.discrete)
    if d.is_main:
        log.info("prior data: %d train files (%d frames), %d valid files; objective %s%s",
                 len(train_paths), train_src.frames_total, len(valid_paths), mc.objective,
                 f"; {d.world} processes" if d.enabled else "")

    # -- model, optimizer, state -------------------------------------------------------------------
    model = Prior(mc).to(device)
    opt = make_optimizer(model, tc.lr, tc.weight_decay)
    step = 0
    if resume:
        step = restore_state(out, model, opt)
        log.info("resuming %s at step %d", out, step)
    ddp_model = distributed.wrap(model, d, device)
    fwd_model = torch.compile(ddp_model) if tc.compile else ddp_model
    if d.is_main:
        write_json(out / RUN_CONFIG_FILE, to_dict(run))
        metrics = MetricsLog(out / "metrics.jsonl", resume_step=step if resume else None)
    valid_batches = [valid_src.batch(tc.seed + 1, i, tc.batch_size) for i in range(tc.valid_batches)]

    def validate() -> tuple[float, float | None]:
        """On rank 0 only, with the unwrapped model (DDP's forward would wait for the other ranks)."""
        model.eval()
        total, n, correct = 0.0, 0, 0
        with torch.no_grad(), autocast:
            for b in valid_batches:
                o = compute_loss(model, b.to(device))
                total += o.loss.item() * o.targets
                n += o.targets
                correct += o.correct
        model.train()
        return total / max(n, 1), (correct / max(n * mc.num_codebooks, 1) if mc.discrete else None)

    # -- the loop ----------------------------------------------------------------------------------
    last = tc.steps if stop_at is None else min(stop_at, tc.steps)
    loader = torch.utils.data.DataLoader(
        StepDataset(train_src, tc.seed, tc.batch_size, step * tc.grad_accum, last * tc.grad_accum, part),
        batch_size=None, shuffle=False, num_workers=tc.num_workers,
        generator=torch.Generator().manual_seed(tc.seed))  # keeps the global RNG untouched (exact resume)
    batches = iter(loader)
    bar = tqdm(total=last, initial=step, desc=f"pretrain ({mc.objective})", unit="step",
               disable=not progress or not d.is_main)
    model.train()
    valid_loss, valid_acc = float("nan"), None
    while step < last:
        lr = lr_at(step, tc.lr, tc.warmup_steps, tc.steps, tc.min_lr_ratio)
        set_lr(opt, lr)
        loss_sum, targets, correct = 0.0, 0, 0
        for micro in range(tc.grad_accum):
            batch = next(batches).to(device)
            # gradients are averaged across ranks once per optimizer step, not per micro-batch
            sync = ddp_model.no_sync() if d.enabled and micro < tc.grad_accum - 1 else contextlib.nullcontext()
            with sync:
                with autocast:
                    o = compute_loss(fwd_model, batch)
                loss = o.loss
                if d.enabled:  # DDP averages per-rank means; weight each rank by its share of the scored frames
                    total = torch.tensor([o.targets], dtype=torch.float64, device=device)
                    torch.distributed.all_reduce(total)
                    loss = loss * (o.targets * d.world / total.item())
                (loss / tc.grad_accum).backward()
            loss_sum += o.loss.item() / tc.grad_accum
            targets, correct = targets + o.targets, correct + o.correct
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1

        if d.is_main and (step % tc.log_every == 0 or step == last):
            extra = {"accuracy": correct / max(targets * mc.num_codebooks, 1)} if mc.discrete else {}
            metrics.write(step, split="train", lr=lr, loss=loss_sum, grad_norm=gnorm.item(), **extra)
            bar.set_postfix(loss=f"{loss_sum:.4f}")
        if d.is_main and (step % tc.valid_every == 0 or step == last):
            valid_loss, valid_acc = validate()
            extra = {"valid_accuracy": valid_acc, "valid_perplexity": math.exp(min(valid_loss, 50))} \
                if mc.discrete else {}
            metrics.write(step, split="valid", valid_loss=valid_loss, **extra)
        if step % tc.checkpoint_every == 0 or step == last:
            if d.is_main:
                save_prior(out, model)
                save_state(out, model, opt, step)
            d.barrier()
        bar.update(1)
    bar.close()
    distributed.dump_rank_state(model, d)
    if not d.is_main:
        distributed.shutdown(d)
        return PriorTrainResult(out, step, float("nan"), None, None)
    if not (out / "model.safetensors").exists():
        save_prior(out, model)
    plot_curves(out / "training_curve.png", read_metrics(out / "metrics.jsonl"), ["loss", "valid_loss"],
                f"prior ({mc.objective})")
    distributed.shutdown(d)
    return PriorTrainResult(out, step, valid_loss, valid_acc,
                            math.exp(min(valid_loss, 50)) if mc.discrete else None)


def build_prior_for_store(cfg: PriorConfig, store: TokenStore) -> Prior:
    """A fresh (untrained) prior sized for this store: the random-weights control of the probes."""
    bind_to_store(cfg, store)
    return Prior(cfg)
