"""Pieces both training loops (tokenizer and prior) share: schedule, optimizer, metrics log, RNG state."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from musetok.shared.config import ConfigError
from musetok.shared.io import STATE_FILE, load_train_state, save_train_state, unwrap


def split_files(files: list[str], valid_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic split by file (hash of path and seed). Keeps at least one file on each side
    when there are two or more files."""
    def h(p: str) -> float:
        return int(hashlib.sha1(f"{seed}:{p}".encode()).hexdigest()[:8], 16) / 16**8
    valid = [f for f in files if h(f) < valid_fraction]
    train = [f for f in files if h(f) >= valid_fraction]
    if len(files) >= 2 and valid_fraction > 0 and not valid:
        valid = [min(train, key=h)]
        train.remove(valid[0])
    if not train:
        train, valid = valid, []
    return train, valid


def lr_at(step: int, base_lr: float, warmup: int, total: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up for `warmup` steps, then cosine decay to `min_ratio * base_lr` at `total`."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                   betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW with decay on matrices only (not on norms, biases, embeddings' 1-D params).

    `fused=True` kept a steady ~3 ms/step on 2 CPU cores where the for-each AdamW slowed sharply when
    another process shared the cores.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())


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


def start_run(out: Path, resume: bool, device: str, batch_size: int, seed: int):
    """Common start of a training run: refuse to overwrite a run unless resuming, join torchrun's
    process group if any, create `out` (rank 0), seed. Returns (Dist, device, this rank's batch slice)."""
    from musetok.shared import distributed

    if not resume and (out / STATE_FILE).exists():
        raise ConfigError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    d, dev = distributed.init(device)  # torchrun: one process per device, global batch split across them
    part = d.part(batch_size)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
    d.barrier()
    seed_everything(seed)
    return d, dev, part


def restore_state(out: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    """Load model, optimizer and RNG states from `out/train_state.pt`; returns the step to continue from."""
    state = load_train_state(out)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return int(state["step"])


def save_state(out: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    save_train_state(out, {"step": step, "model": unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                           "rng": rng_state()})


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
