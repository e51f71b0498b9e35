"""Data-parallel training on PyTorch's own engine, launched by torchrun.

    torchrun --nproc_per_node 2 -m musetok.cli pretrain --config small --store S --out P

`init()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and joins the process group:
NCCL on GPUs, gloo on CPU. Without torchrun it is a no-op (world size 1). `train.batch_size` is the
global batch: each rank computes its own slice of it, so N processes train exactly like one process
on the same batch. Only rank 0 writes checkpoints and metrics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from musetok.shared.config import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def part(self, n: int) -> slice:
        """This rank's slice of a global batch of `n` (n must divide by the world size)."""
        if n % self.world:
            raise ConfigError(f"train.batch_size {n} must divide by the number of processes ({self.world})")
        k = n // self.world
        return slice(self.rank * k, (self.rank + 1) * k)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def pick_device(name: str = "auto") -> torch.device:
    """`auto`: the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def init(device: str = "auto") -> tuple[Dist, torch.device]:
    """Join torchrun's process group if there is one; returns (Dist, this rank's device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), pick_device(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    return Dist(rank, world, local), dev


def wrap(model: torch.nn.Module, d: Dist, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` when distributed; the model itself otherwise."""
    if not d.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def dump_rank_state(model: torch.nn.Module, d: Dist) -> None:
    """With MUSETOK_RANK_STATE_DIR set, every rank writes its full state (parameters and buffers, the VQ
    codebooks among them) to `rank<r>.safetensors` there, to check that ranks stayed identical."""
    folder = os.environ.get("MUSETOK_RANK_STATE_DIR")
    if not folder:
        return
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(folder, f"rank{d.rank}.safetensors"))


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
