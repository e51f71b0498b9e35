"""The token store: a corpus as code sequences on disk, read back as memmaps.

Layout of a store folder:

    meta.json              kind, format_version, tokenizer_id, codebook_size, num_codebooks, frame_rate,
                           codes_source ("" for the tokenizer's own codes; `musetok relabel` writes others)
    shards/<writer>-NNNNN.u16   raw uint16 codes, frame-major: T frames x K codebooks
    shards/<writer>-NNNNN.f16   optional (`tokenize --with-frames`): float16 normalised mel frames,
                                stacked to the code rate, T x frames_dim, aligned with the codes
    index.jsonl            one JSON object per file (see `StoreEntry`); parallel writers add
    index.<writer>.jsonl   their own index files, merged into index.jsonl when they finish

Crash safety: a file's codes are appended to its shard and fsynced *before* its index line is
written (and fsynced). The index is the truth: bytes in a shard past the last indexed file are
ignored by readers and cut off by the next writer; a torn last index line is ignored. So an
interrupted run always leaves a store that opens, and a rerun continues it without duplicates.

Reading never loads the corpus: `store.codes(i)` and `store.window(i, start, n)` are memmap slices.
Items are ordered by path, so stores written in one pass, in parallel, or resumed, read the same.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from musetok.shared.audio import corpus_level
from musetok.shared.errors import UserError, write_error
from musetok.shared.io import CheckpointError, FolderLock, atomic_write_text, read_versioned_json, write_json

FORMAT_VERSION = 1
META_FILE = "meta.json"
INDEX_FILE = "index.jsonl"
SHARD_DIR = "shards"
DEFAULT_SHARD_FRAMES = 64 * 1024 * 1024  # frames per shard before a new one is started


@dataclass
class StoreMeta:
    tokenizer_id: str
    codebook_size: int
    num_codebooks: int
    frame_rate: float
    sample_rate: int = 0
    frames_dim: int = 0          # > 0: the store also holds mel frames (for the continuous baselines)
    codes_source: str = ""       # "": the tokenizer's codes; else what made them (`musetok relabel`: k-means)
    # With frames: the normaliser of one band (log power = frame * std + mean) and, for a semitone front-end,
    # each band's pitch class (0 = C), so a prior can compute chroma targets (`model.aux_chroma`).
    frames_mean: list[float] = field(default_factory=list)
    frames_std: list[float] = field(default_factory=list)
    frames_pitch_class: list[int] = field(default_factory=list)
    kind: str = "musetok-token-store"
    format_version: int = FORMAT_VERSION
    dtype: str = "uint16"
    layout: str = "frame-major (T, K)"

    def check_compatible(self, other: StoreMeta, where: str, frames: bool = True) -> None:
        """Refuse `other` (what a tokenizer would write) unless it is the same tokenizer; `frames`: the mel
        frames' size must match too (when writing into the store)."""
        keys = ("tokenizer_id", "codes_source", "codebook_size", "num_codebooks", "frame_rate") + \
            (("frames_dim",) if frames else ())
        for key in keys:
            a, b = getattr(self, key), getattr(other, key)
            if a != b:
                raise CheckpointError(f"{where}: {key} is {a!r} in the store but {b!r} for this tokenizer")


@dataclass
class StoreEntry:
    """One file of the corpus. `status` is "ok" (codes at shard/offset/length) or "failed" (reason)."""

    path: str
    status: str
    shard: str = ""
    offset: int = 0
    length: int = 0
    duration: float = 0.0
    size: int = -1
    mtime_ns: int = -1
    reason: str = ""
    written_ns: int = field(default_factory=time.time_ns)
    level_db: float | None = None  # the file's RMS in dBFS as tokenized (None: a store written before levels were)


def file_signature(path: str | Path) -> tuple[int, int]:
    """(size, mtime_ns) of a file, or of the link itself when it is broken; (-1, -1) if gone."""
    try:
        st = os.stat(path)
    except OSError:
        try:
            st = os.lstat(path)
        except OSError:
            return -1, -1
    return st.st_size, st.st_mtime_ns


def _read_index_file(path: Path) -> list[StoreEntry]:
    entries = []
    with open(path, "rb") as f:
        data = f.read()
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            entries.append(StoreEntry(**json.loads(line)))
        except (ValueError, TypeError):
            continue  # a torn last line from a crash, or garbage: not indexed
    return entries


def read_entries(root: Path) -> dict[str, StoreEntry]:
    """All index files of a store, newest entry per path."""
    latest: dict[str, StoreEntry] = {}
    for p in sorted(root.glob("index*.jsonl")):
        for e in _read_index_file(p):
            if e.path not in latest or e.written_ns >= latest[e.path].written_ns:
                latest[e.path] = e
    return latest


def read_meta(root: str | Path) -> StoreMeta:
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such token store")
    d = read_versioned_json(root / META_FILE, "musetok-token-store", FORMAT_VERSION, "token store")
    d.pop("audio_root", None)  # written by musetok <= 0.1.0, never read
    try:
        return StoreMeta(**d)
    except TypeError as e:
        raise CheckpointError(f"{root / META_FILE}: {e}") from None


class TokenStore:
    """Read side. `len(store)` files with codes; `store.codes(i)` -> `(K, T)` uint16 memmap view."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.meta = read_meta(self.root)
        entries = read_entries(self.root)
        self.items = sorted((e for e in entries.values() if e.status == "ok"), key=lambda e: e.path)
        self.failed = sorted((e for e in entries.values() if e.status != "ok"), key=lambda e: e.path)
        self._maps: dict[str, np.ndarray] = {}
        self._frame_maps: dict[str, np.ndarray] = {}
        self._by_path = {e.path: i for i, e in enumerate(self.items)}
        for e in self.items:
            shard = self.root / SHARD_DIR / e.shard
            need = (e.offset + e.length) * self.meta.num_codebooks * 2
            if not shard.is_file() or shard.stat().st_size < need:
                raise CheckpointError(f"{shard}: shard is missing or shorter than its index says "
                                      f"(store {self.root} is damaged)")
            if self.meta.frames_dim:
                fshard = shard.with_suffix(".f16")
                if not fshard.is_file() or fshard.stat().st_size < (e.offset + e.length) * self.meta.frames_dim * 2:
                    raise CheckpointError(f"{fshard}: frames shard is missing or shorter than its index says "
                                          f"(store {self.root} is damaged)")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def total_frames(self) -> int:
        return sum(e.length for e in self.items)

    @property
    def hours(self) -> float:
        return sum(e.duration for e in self.items) / 3600

    @property
    def level_db(self) -> float | None:
        """The level the corpus is heard at: its files' duration-weighted median RMS in dBFS. None when a file
        has no level (written before levels were recorded) or the store is empty."""
        if not self.items or any(e.level_db is None for e in self.items):
            return None
        return corpus_level([e.level_db for e in self.items], [e.duration for e in self.items])

    def summary(self) -> str:
        m = self.meta
        level = self.level_db
        return (f"store {self.root}: tokenizer {m.tokenizer_id}, {m.num_codebooks} x {m.codebook_size} codes "
                f"at {m.frame_rate:.2f} Hz; {len(self)} files, {self.hours:.3f} h, {self.total_frames} frames"
                + ("" if level is None else f", median level {level:.1f} dBFS") + f"; {len(self.failed)} failed")

    def index_of(self, path: str) -> int:
        if path not in self._by_path:
            raise UserError(f"{path} is not in store {self.root}")
        return self._by_path[path]

    def _map(self, shard: str) -> np.ndarray:
        if shard not in self._maps:
            mm = np.memmap(self.root / SHARD_DIR / shard, dtype=np.uint16, mode="r")
            self._maps[shard] = mm[: len(mm) - len(mm) % self.meta.num_codebooks].reshape(-1, self.meta.num_codebooks)
        return self._maps[shard]

    def window(self, i: int, start: int, length: int) -> np.ndarray:
        """Frames `[start, start+length)` of item `i` as `(K, length)` (a view; copy before writing)."""
        e = self.items[i]
        start = max(0, min(start, e.length))
        stop = min(e.length, start + length)
        return self._map(e.shard)[e.offset + start:e.offset + stop].T

    def codes(self, i: int) -> np.ndarray:
        """All codes of item `i`: `(K, T)` uint16."""
        return self.window(i, 0, self.items[i].length)

    @property
    def has_frames(self) -> bool:
        return self.meta.frames_dim > 0

    def frames_window(self, i: int, start: int, length: int) -> np.ndarray:
        """Mel frames `[start, start+length)` of item `i`: `(length, frames_dim)` float16 view."""
        if not self.has_frames:
            raise CheckpointError(f"{self.root}: store has no mel frames (tokenize it with --with-frames)")
        e = self.items[i]
        if e.shard not in self._frame_maps:
            mm = np.memmap((self.root / SHARD_DIR / e.shard).with_suffix(".f16"), dtype=np.float16, mode="r")
            self._frame_maps[e.shard] = mm.reshape(-1, self.meta.frames_dim)
        start = max(0, min(start, e.length))
        stop = min(e.length, start + length)
        return self._frame_maps[e.shard][e.offset + start:e.offset + stop]


class TokenStoreWriter:
    """Append side. One writer per process; `name` keeps parallel writers' shards and indexes apart.

    The writer holds a lock named after it (`FolderLock(root, name)`) until `close()` or the end of the
    process: a second writer of the same name is refused before it writes anything. A failed write (a
    full disk) raises a one-line `UserError` naming the file; what was indexed before stays readable, and
    a rerun continues from there."""

    def __init__(self, root: str | Path, meta: StoreMeta, name: str = "main",
                 shard_frames: int = DEFAULT_SHARD_FRAMES):
        self.root = Path(root)
        self.name = name
        self.k = meta.num_codebooks
        self.shard_frames = shard_frames
        self.lock = FolderLock(self.root, name).acquire()
        try:
            self._open(meta)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, meta: StoreMeta) -> None:
        try:
            (self.root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(self.root / SHARD_DIR, e) from e
        if (self.root / META_FILE).exists():
            read_meta(self.root).check_compatible(meta, str(self.root / META_FILE))
        else:
            write_json(self.root / META_FILE, asdict(meta))
        self.meta = read_meta(self.root)
        self.index_path = self.root / (INDEX_FILE if self.name == "main" else f"index.{self.name}.jsonl")
        self._repair_index()
        self.entries = read_entries(self.root)
        self._open_shard()

    def close(self) -> None:
        self.lock.release()

    def __enter__(self) -> TokenStoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _repair_index(self) -> None:
        """Cut a torn last line so new lines start clean."""
        if not self.index_path.exists():
            return
        data = self.index_path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.index_path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def _open_shard(self) -> None:
        """Continue this writer's last shard after its last indexed frame (anything beyond is garbage)."""
        mine = sorted(self.root.glob(f"{SHARD_DIR}/{self.name}-*.u16"))
        ends: dict[str, int] = {}
        for e in self.entries.values():
            if e.status == "ok":
                ends[e.shard] = max(ends.get(e.shard, 0), e.offset + e.length)
        self.shard = mine[-1].name if mine else f"{self.name}-00000.u16"
        self.end = ends.get(self.shard, 0)
        self._truncate()

    def _truncate(self) -> None:
        path = self.root / SHARD_DIR / self.shard
        with open(path, "ab") as f:
            f.truncate(self.end * self.k * 2)
        if self.meta.frames_dim:
            with open(path.with_suffix(".f16"), "ab") as f:
                f.truncate(self.end * self.meta.frames_dim * 2)

    def done(self, path: str, size: int, mtime_ns: int) -> bool:
        """Whether `path` is already in the store (ok or failed) with this size and mtime."""
        e = self.entries.get(path)
        return e is not None and e.size == size and e.mtime_ns == mtime_ns

    def _append_index(self, entry: StoreEntry) -> None:
        _append(self.index_path, (json.dumps(asdict(entry)) + "\n").encode())
        self.entries[entry.path] = entry

    def add(self, path: str, codes: np.ndarray, duration: float, size: int, mtime_ns: int,
            frames: np.ndarray | None = None, level_db: float | None = None) -> StoreEntry:
        """Append one file's codes `(K, T)` (and mel frames `(T, frames_dim)` if the store keeps them);
        `level_db`: the file's RMS in dBFS."""
        if codes.shape[0] != self.k:
            raise ValueError(f"{path}: codes have {codes.shape[0]} codebooks, the store {self.k}")
        if self.meta.frames_dim and (frames is None or frames.shape != (codes.shape[1], self.meta.frames_dim)):
            raise ValueError(f"{path}: the store keeps frames of {self.meta.frames_dim} per code frame; got "
                             f"{None if frames is None else frames.shape}")
        if self.end + codes.shape[1] > self.shard_frames and self.end > 0:
            n = int(self.shard.rsplit("-", 1)[1].split(".")[0]) + 1
            self.shard, self.end = f"{self.name}-{n:05d}.u16", 0
        shard = self.root / SHARD_DIR / self.shard
        if self.meta.frames_dim:
            _append(shard.with_suffix(".f16"), np.ascontiguousarray(frames, dtype=np.float16).tobytes())
        _append(shard, np.ascontiguousarray(codes.T.astype(np.uint16)).tobytes())  # (T, K)
        entry = StoreEntry(path, "ok", self.shard, self.end, codes.shape[1], duration, size, mtime_ns,
                           level_db=None if level_db is None else round(float(level_db), 3))
        self._append_index(entry)
        self.end += codes.shape[1]
        return entry

    def fail(self, path: str, reason: str, size: int, mtime_ns: int) -> StoreEntry:
        entry = StoreEntry(path, "failed", size=size, mtime_ns=mtime_ns, reason=reason)
        self._append_index(entry)
        return entry


def _append(path: Path, data: bytes) -> None:
    """Append and fsync. Bytes of a failed append are never indexed: readers ignore them and the next
    writer cuts them off."""
    try:
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise write_error(path, e) from e


def merge_indexes(root: str | Path) -> int:
    """Fold every `index.<writer>.jsonl` into `index.jsonl` (atomically), newest entry per path.
    Returns the number of entries. Safe to run again after a crash."""
    root = Path(root)
    entries = read_entries(root)
    text = "".join(json.dumps(asdict(e)) + "\n" for e in sorted(entries.values(), key=lambda e: e.path))
    atomic_write_text(root / INDEX_FILE, text)
    for p in root.glob("index.*.jsonl"):
        p.unlink()
    return len(entries)
