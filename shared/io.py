"""Files that survive a crash: atomic write (tmp + fsync + rename), model folders, training state.

A model folder is `config.json` + `model.safetensors` (+ whatever the model adds, e.g. the mel
normaliser), as in `transformers.save_pretrained`. Training state for `--resume` is one
`train_state.pt` holding model, optimizer and RNG states, loaded with `weights_only=True`: nothing
here unpickles arbitrary objects.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import weakref
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from musetok.shared.config import ConfigError, from_dict
from musetok.shared.errors import UserError, write_error

T = TypeVar("T")

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"


class CheckpointError(UserError, ValueError):
    """A checkpoint or store that is missing, damaged or of an unknown format. Names the file."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write_fn) -> None:
    """Call `write_fn(tmp_path)` then fsync and rename onto `path`: readers see old or new, never half.
    A failed write (e.g. a full disk) leaves `path` as it was and raises a `UserError` naming it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise write_error(path, e) from e
    try:
        write_fn(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, SafetensorError) as e:
        _unlink(tmp)
        raise write_error(path, e) from e
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class FolderLock:
    """An exclusive lock on a folder a process writes to: `flock` on `FOLDER/.lock[-name]`, so the kernel
    releases it when the process ends, even on `kill -9`. A second writer is refused with a one-line
    `UserError` naming the folder and the holder's pid, before it writes anything. `name` lets writers
    of different parts share a folder (the shards of `tokenize --shard i/n`)."""

    def __init__(self, folder: str | Path, name: str = ""):
        self.folder = Path(folder)
        self.path = self.folder / (f".lock-{name}" if name else ".lock")
        self.fd: int | None = None

    def acquire(self) -> FolderLock:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_error(self.path, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{self.folder}: in use by another musetok process (pid {holder}); wait for it to "
                            "finish or choose another folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        _held.add(self)
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        _held.discard(self)

    __del__ = release  # a writer dropped without close() does not keep its folder locked

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def file_sha1(path: str | Path) -> str:
    """The sha1 of a file's bytes (read in 1 MiB blocks), as hex."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def read_versioned_json(path: str | Path, kind: str, version: int, what: str) -> dict:
    """Read a JSON file that must carry `"kind": kind` and `"format_version": version`; refuse
    anything else with a message naming the file."""
    path = Path(path)
    meta = read_json(path)
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        raise CheckpointError(f"{path}: not a musetok {what}")
    if meta.get("format_version") != version:
        raise CheckpointError(f"{path}: unknown format version {meta.get('format_version')!r} "
                              f"(this musetok reads {version})")
    return meta


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and/or torch.compile wrappers (no `module.` / `_orig_mod.` prefixes)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def save_model_folder(folder: str | Path, model: torch.nn.Module, config: dict) -> None:
    """Write `config.json` and `model.safetensors` atomically (weights first, config last)."""
    folder = Path(folder)
    state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    write_json(folder / CONFIG_FILE, config)


def load_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (is {folder} a musetok model folder?)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: damaged weights file ({e})") from None


def load_state_dict_strict(model: torch.nn.Module, state: dict, source: str | Path) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not fit the model in config.json "
                              f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")


def read_model_config(folder: str | Path, kind: str, version: int, what: str, cls: type[T]) -> tuple[T, dict]:
    """A model folder's `config.json`: check kind and version, build the config dataclass `cls` from its
    `"config"` entry. Returns (config, the whole JSON)."""
    path = Path(folder) / CONFIG_FILE
    meta = read_versioned_json(path, kind, version, what)
    try:
        return from_dict(cls, meta["config"]), meta
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def load_model_weights(model: torch.nn.Module, folder: str | Path) -> None:
    """Load a model folder's `model.safetensors` into `model`, refusing weights that do not fit it."""
    load_state_dict_strict(model, load_weights(folder), Path(folder) / WEIGHTS_FILE)


def save_train_state(folder: str | Path, state: dict) -> None:
    atomic_write(Path(folder) / STATE_FILE, lambda tmp: torch.save(state, tmp))


_held: weakref.WeakSet[FolderLock] = weakref.WeakSet()


def _drop_inherited_locks() -> None:
    """In a forked child (a DataLoader worker), close the lock descriptors inherited from the parent without
    unlocking: the parent keeps its lock, and a killed parent's lock is not kept alive by its workers."""
    for lock in list(_held):
        if lock.fd is not None:
            os.close(lock.fd)
            lock.fd = None
    _held.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


def load_train_state(folder: str | Path) -> dict:
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged or foreign pickle
        raise CheckpointError(f"{path}: damaged or unsafe training state ({str(e).splitlines()[0]})") from None
