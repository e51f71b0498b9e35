"""The training-loop skeleton both stages run (tokenizer and prior), and what it stands on.

A stage builds its data, model and optimizer, then hands `run_steps` three callables: `forward`
(a batch -> `StepOutput`), `validate` (-> metrics) and `checkpoint` (step -> None). The skeleton owns
everything else, identically for both stages: the learning-rate schedule, gradient accumulation,
DDP loss weighting, clipping, logging, validation and checkpoint cadence (the last step always logs,
validates and saves), and the progress bar. Batches come from `step_batches`: batch `s` is a pure
function of (seed, s), so a `--resume`d run continues exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from musetok.shared import distributed
from musetok.shared.config import ConfigError, apply_override, check, from_dict, load_config
from musetok.shared.errors import write_error
from musetok.shared.io import (
    STATE_FILE,
    FolderLock,
    load_train_state,
    read_json,
    save_train_state,
    unwrap,
    write_json,
)

log = logging.getLogger("musetok")
T = TypeVar("T")
RUN_CONFIG_FILE = "run_config.json"
METRICS_FILE = "metrics.jsonl"


def lr_at(step: int, base_lr: float, warmup: int, total: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up for `warmup` steps, then cosine decay to `min_ratio * base_lr` at `total`."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (Intel AMX tiles, as on Sapphire Rapids and later),
    so that bf16 autocast makes a CPU training step faster; elsewhere it emulates bf16 and is slower."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch 2.x: absent -> False
    try:
        return bool(probe()) if probe is not None else False
    except Exception:  # noqa: BLE001 - a failing capability probe only means "no"
        return False


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """`train.dtype` -> the autocast dtype, or None for plain fp32. `auto` is bf16 on CUDA and on a CPU
    with native bf16 (AMX; measured level in `bench-repr` and 1.15x faster on the `small` prior), fp32
    on any other CPU."""
    if setting == "bfloat16" or (setting == "auto" and (device.type == "cuda" or
                                                        (device.type == "cpu" and cpu_has_native_bf16()))):
        return torch.bfloat16
    return None


def decays(name: str, p: torch.Tensor) -> bool:
    """Weight decay goes on weight matrices and embeddings only: never on a bias, whatever its shape (the
    prior's `(K, V)` output bias is 2-D), nor on norms and other 1-D parameters."""
    return p.dim() >= 2 and not name.endswith("bias")


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                   betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW with two parameter groups (see `decays`).

    `fused=True` kept a steady ~3 ms/step on 2 CPU cores where the for-each AdamW slowed sharply when
    another process shared the cores.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if decays(n, p)], "weight_decay": weight_decay},
              {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """RNG states as tensors and plain values, so `torch.load(weights_only=True)` can read them back."""
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_pos": random.getstate()[2]}
    np_state = np.random.get_state()
    state["numpy_keys"] = torch.from_numpy(np_state[1].astype(np.int64))
    state["numpy_pos"] = int(np_state[2])
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class MetricsLog:
    """Append-only JSONL: one object per logged step. Reopened on resume; lines past `step` are dropped."""

    def __init__(self, path: str | Path, resume_step: int | None = None):
        self.path = Path(path)
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and _line_step(ln) is not None and _line_step(ln) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        self.t0 = time.time()

    def write(self, step: int, **metrics) -> None:
        rec = {"step": step, "time": round(time.time() - self.t0, 3)}
        rec.update({k: (round(float(v), 6) if isinstance(v, (float, np.floating)) else v)
                    for k, v in metrics.items()})
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise write_error(self.path, e) from e


def _line_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def read_metrics(path: str | Path) -> list[dict]:
    out = []
    for ln in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(ln))
        except ValueError:
            continue
    return out




# -- the run: start, data, state -------------------------------------------------------------------
@dataclass
class LoopConfig:
    """What the loop skeleton reads from a stage's `train` config (both stages' configs extend it)."""

    steps: int = 2000
    batch_size: int = 16            # global batch, split across torchrun processes
    grad_accum: int = 1             # micro-batches per optimizer step
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    valid_fraction: float = 0.1     # of files, held out for validation
    valid_every: int = 250
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0
    num_workers: int = 0            # DataLoader workers building batches
    device: str = "auto"

    def __post_init__(self):
        check(self.steps > 0, "train.steps", "must be positive")
        check(self.batch_size > 0, "train.batch_size", "must be positive")
        check(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")
        check(0 <= self.valid_fraction < 1, "train.valid_fraction", "must be in [0, 1)")
        check(self.num_workers >= 0, "train.num_workers", "must be >= 0")
        for key in ("valid_every", "checkpoint_every", "log_every"):
            check(getattr(self, key) > 0, f"train.{key}", "must be positive")


def resolve_run_config(cls: type[T], out: str | Path, config: str | None, overrides: list[str], resume: bool,
                       kind: str) -> T:
    """The run config: `config` + `overrides`, or with `resume` the saved run's config + `overrides`."""
    if not resume:
        return load_config(cls, config, overrides, kind=kind)
    d = read_json(Path(out) / RUN_CONFIG_FILE)
    for item in overrides:
        apply_override(d, item)
    return from_dict(cls, d)


def run_lock(out: str | Path) -> contextlib.AbstractContextManager:
    """Hold the `--out` folder of a training run for this process (rank 0 under torchrun: it alone writes)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return FolderLock(out)


def split_files(files: list[str], valid_fraction: float, seed: int, what: str = "") -> tuple[list[str], list[str]]:
    """Deterministic train/valid split by file (hash of path and seed), at least one file on each side when
    there are two or more. With a single file (or `valid_fraction` 0) there is nothing to hold out: the
    valid list is then the train list, and a warning says so."""
    def h(p: str) -> float:
        return int(hashlib.sha1(f"{seed}:{p}".encode()).hexdigest()[:8], 16) / 16**8
    valid = [f for f in files if h(f) < valid_fraction]
    train = [f for f in files if h(f) >= valid_fraction]
    if len(files) >= 2 and valid_fraction > 0 and not valid:
        valid = [min(train, key=h)]
        train.remove(valid[0])
    if not train:
        train, valid = valid, []
    if not valid:
        log.warning("%sno held-out files: validating on the training files", f"{what}: " if what else "")
        valid = list(train)
    return train, valid


@dataclass
class Run:
    """A started run: where it writes, this process's place in torchrun's group, its device and batch rows."""

    out: Path
    dist: distributed.Dist
    device: torch.device
    part: slice


def start_run(out: str | Path, resume: bool, tc: LoopConfig) -> Run:
    """Refuse to overwrite a run unless resuming, join torchrun's process group if any, create `out`
    (rank 0), seed."""
    out = Path(out)
    if not resume and (out / STATE_FILE).exists():
        raise ConfigError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    d, dev = distributed.init(tc.device)  # torchrun: one process per device, global batch split across them
    part = d.part(tc.batch_size)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
    d.barrier()
    seed_everything(tc.seed)
    return Run(out, d, dev, part)


def weight_average(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of `model`'s weights (and float buffers), or None for `decay` 0.

    PyTorch's `AveragedModel`, bias-corrected as Adam corrects its moments: after n updates it is
    `sum_i decay^(n-i) w_i / sum_i decay^(n-i)`, so the weights it started from do not linger (a plain EMA at
    0.998 would still hold 2% of the first step's weights after 2000 steps). `run_steps` updates it after every
    optimizer step; its `.module` is the averaged model."""
    if decay <= 0:
        return None

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = int(n_averaged)  # updates already in `averaged` (>= 1: the first one copies)
        weight = (1.0 - decay) / (1.0 - decay ** (n + 1))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, weight)
        # integer buffers stay as the first update copied them

    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def open_state(run: Run, model: torch.nn.Module, opt: torch.optim.Optimizer, resume: bool, run_config: dict,
               average: torch.optim.swa_utils.AveragedModel | None = None
               ) -> tuple[int, torch.nn.Module, MetricsLog | None]:
    """Restore model/optimizer/RNG (and the weight `average`, if any) when resuming, wrap the model for DDP, and
    (rank 0) write the run config and open the metrics log. Returns (step to continue from, the wrapped model,
    the log or None)."""
    step = 0
    if resume:
        state = load_train_state(run.out)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        step = int(state["step"])
        if average is not None:
            if "average" not in state:
                raise ConfigError(f"{run.out / STATE_FILE}: this run was started without a weight average; resume it "
                                  "without train.ema_decay")
            average.load_state_dict(state["average"])
        log.info("resuming %s at step %d", run.out, step)
    wrapped = distributed.wrap(model, run.dist, run.device)
    metrics = None
    if run.dist.is_main:
        write_json(run.out / RUN_CONFIG_FILE, run_config)
        metrics = MetricsLog(run.out / METRICS_FILE, resume_step=step if resume else None)
    return step, wrapped, metrics


def save_state(out: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int,
               average: torch.optim.swa_utils.AveragedModel | None = None) -> None:
    state = {"step": step, "model": unwrap(model).state_dict(), "optimizer": opt.state_dict(), "rng": rng_state()}
    if average is not None:
        state["average"] = average.state_dict()
    save_train_state(out, state)


class StepDataset(torch.utils.data.Dataset):
    """Map-style dataset over step numbers: item i is `source.batch(seed, start + i, batch_size, part)`, so
    DataLoader workers build batches in parallel and batch s depends on (seed, s) alone."""

    def __init__(self, source, seed: int, batch_size: int, start: int, stop: int, part: slice = slice(None)):
        self.source, self.seed, self.batch_size, self.start, self.stop = source, seed, batch_size, start, stop
        self.part = part

    def __len__(self):
        return self.stop - self.start

    def __getitem__(self, i):
        return self.source.batch(self.seed, self.start + i, self.batch_size, self.part)


def step_batches(source, tc: LoopConfig, part: slice, step: int, last: int) -> Iterator:
    """This rank's micro-batches for optimizer steps `[step, last)`, built by `tc.num_workers` DataLoader workers."""
    ds = StepDataset(source, tc.seed, tc.batch_size, step * tc.grad_accum, last * tc.grad_accum, part)
    # the loader's own generator: drawing its seed from the global RNG would shift the model's random
    # draws (e.g. the VQ's) after a resume
    return iter(torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=tc.num_workers,
                                            generator=torch.Generator().manual_seed(tc.seed)))


# -- the loop ----------------------------------------------------------------------------------------
@dataclass
class StepOutput:
    """What a stage's `forward` returns for one micro-batch.

    loss: scalar, the mean over this rank's scored units. scored: how many units it averages over (masked
    frames, ...), used to weight ranks so N processes equal one; None when every rank scores the same
    amount. info: anything the stage wants back in `train_metrics` (codes, counts).
    """

    loss: torch.Tensor
    scored: int | None = None
    info: Any = None


def run_steps(tc: LoopConfig, run: Run, model: torch.nn.Module, wrapped: torch.nn.Module,
              opt: torch.optim.Optimizer, source, step: int, stop_at: int | None,
              forward: Callable[[Any], StepOutput], train_metrics: Callable[[list[StepOutput]], dict],
              validate: Callable[[], dict], save_model: Callable[[Path], None], metrics: MetricsLog | None,
              desc: str, progress: bool = True, autocast=None,
              average: torch.optim.swa_utils.AveragedModel | None = None) -> int:
    """Optimizer steps from `step` to `train.steps` (or `stop_at`, keeping the schedule of `train.steps`);
    returns the step reached. Batches come from `source.batch(seed, s, batch_size, part)`. `model` is the
    plain module (clipping, saving), `wrapped` its DDP form; `forward` gets a batch already on the run's
    device. Rank 0 logs every `log_every` steps and validates every `valid_every`; a checkpoint
    (`save_model(out)`, then the training state) is written by rank 0 every `checkpoint_every` steps while
    the other ranks wait. The last step always logs, validates and checkpoints. `average` (`weight_average`) is
    updated after every optimizer step and saved with the training state."""
    d = run.dist
    autocast = autocast or contextlib.nullcontext()
    last = tc.steps if stop_at is None else min(stop_at, tc.steps)
    batches = step_batches(source, tc, run.part, step, last)
    bar = tqdm(total=last, initial=step, desc=desc, unit="step", disable=not progress or not d.is_main)
    model.train()
    while step < last:
        lr = lr_at(step, tc.lr, tc.warmup_steps, tc.steps, tc.min_lr_ratio)
        set_lr(opt, lr)
        outs = []
        for micro in range(tc.grad_accum):
            batch = next(batches).to(run.device)
            # gradients are averaged across ranks once per optimizer step, not per micro-batch
            sync = wrapped.no_sync() if d.enabled and micro < tc.grad_accum - 1 else contextlib.nullcontext()
            with sync:
                with autocast:
                    o = forward(batch)
                loss = o.loss
                if d.enabled and o.scored is not None:
                    # DDP averages per-rank means; weight each rank by its share of the scored units
                    total = torch.tensor([o.scored], dtype=torch.float64, device=run.device)
                    torch.distributed.all_reduce(total)
                    loss = loss * (o.scored * d.world / total.item())
                (loss / tc.grad_accum).backward()
            outs.append(o)
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if average is not None:
            average.update_parameters(model)
        step += 1

        if metrics is not None and (step % tc.log_every == 0 or step == last):
            loss_mean = sum(o.loss.item() for o in outs) / len(outs)
            metrics.write(step, split="train", lr=lr, loss=loss_mean, grad_norm=gnorm.item(), **train_metrics(outs))
            bar.set_postfix(loss=f"{loss_mean:.4f}")
        if metrics is not None and (step % tc.valid_every == 0 or step == last):
            metrics.write(step, split="valid", **validate())
        if step % tc.checkpoint_every == 0 or step == last:
            if d.is_main:
                save_model(run.out)
                save_state(run.out, model, opt, step, average)
            d.barrier()
        bar.update(1)
    bar.close()
    distributed.dump_rank_state(model, d)
    return step
