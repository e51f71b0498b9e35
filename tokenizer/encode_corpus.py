"""Tokenize a corpus into a token store: `musetok tokenize --tokenizer DIR --audio DIR --out STORE`.

Decode workers (DataLoader processes) read each file in blocks, resample, compute the model input
and cut it into overlapping chunks; the main process encodes chunks and appends each finished
file's codes to the store. Memory stays bounded by the chunk size whatever a file's length, and the
codes equal encoding each whole file at once. A bad file is recorded in the store with its reason and
never stops the run. A rerun skips files already in the store (same size and mtime).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from musetok.shared import distributed
from musetok.shared.audio import AudioCorpus, AudioError, LevelMeter, list_audio
from musetok.shared.errors import UserError
from musetok.shared.token_store import TokenStoreWriter, file_signature, merge_indexes
from musetok.tokenizer.base import Tokenizer, overlapping_chunks
from musetok.tokenizer.builder import load_tokenizer
from musetok.tokenizer.features import Featurizer, frame_stacker

log = logging.getLogger("musetok")


def bound_malloc() -> None:
    """Fix glibc's mmap threshold at 1 MiB in a decode worker. By default it rises after large blocks are
    freed, so the multi-MB per-block arrays of a long file then come from the heap, which fragments:
    peak RSS grew ~27% from a 1- to a 60-minute file. Only in worker processes: in a training process
    it would send every large tensor through mmap/munmap (measured ~1.6x slower prior steps). No-op off glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _worker_init(_: int) -> None:
    bound_malloc()
    torch.set_num_threads(1)


@dataclass
class TokenizeResult:
    """Summary of one `tokenize` run."""

    store: Path
    total: int                     # files in the corpus
    encoded: int                   # files encoded in this run
    skipped: int                   # already in the store
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason, this run
    audio_seconds: float = 0.0     # audio encoded in this run
    wall_seconds: float = 0.0
    shard: tuple[int, int] = (0, 1)  # this process's share of the corpus: (i, n)
    merged: int = 0                # under torchrun, on rank 0: files in the merged index

    @property
    def realtime_factor(self) -> float:
        return self.audio_seconds / max(self.wall_seconds, 1e-9)

    def summary(self) -> str:
        return (f"{self.encoded} encoded, {self.skipped} already done, {len(self.failed)} failed "
                f"of {self.total} files; {self.audio_seconds / 3600:.3f} h of audio in {self.wall_seconds:.1f} s "
                f"({self.realtime_factor:.0f}x real time)")


class ChunkStream(torch.utils.data.IterableDataset):
    """Yields, per file, `("chunk", i, chunk, left, n_core)` items then one `("end", i, seconds, error, level)`
    (`level`: the file's RMS in dBFS)."""

    def __init__(self, corpus: AudioCorpus, files: list[str], featurizer: Featurizer, core: int, context: int,
                 min_seconds: float = 0.0):
        self.corpus, self.files, self.fz, self.core, self.context = corpus, files, featurizer, core, context
        self.min_seconds = min_seconds

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        for i in range(wid, len(self.files), nw):
            units, meter = 0, LevelMeter()
            try:
                blocks = self.fz.iter_file(self.corpus.path(self.files[i]), meter=meter)
                for chunk, left, n_core in overlapping_chunks(blocks, self.core, self.context):
                    units += n_core
                    yield ("chunk", i, chunk, left, n_core)
                seconds = units / self.fz.units_per_second
                if seconds < self.min_seconds:
                    raise AudioError(self.files[i], f"too short ({seconds * 1000:.0f} ms; one code frame is "
                                                    f"{self.min_seconds * 1000:.0f} ms)")
                yield ("end", i, seconds, "", meter.db)
            except AudioError as e:
                yield ("end", i, 0.0, e.reason, None)
            except Exception as e:  # noqa: BLE001 - one bad file must never stop the corpus
                yield ("end", i, 0.0, f"{type(e).__name__}: {e}", None)


def tokenize_corpus(model: Tokenizer, audio: str | Path, store: str | Path, workers: int = 1,
                    chunk_codes: int = 2048, progress: bool = True, writer_name: str = "main",
                    files: list[str] | None = None, with_frames: bool = False) -> TokenizeResult:
    """Encode every audio file under `audio` (folder or manifest) into the store at `store`.

    Args:
        model: a trained tokenizer in eval mode (from `load_tokenizer`).
        audio: folder or manifest CSV.
        store: store folder (created, or continued if it exists with the same tokenizer).
        workers: decode processes (0 decodes in the main process).
        chunk_codes: code frames encoded per model call; bounds memory for long files.
        writer_name: keeps shards/indexes of parallel writers apart.
        files: restrict to these relative paths (used to shard a corpus across processes).
        with_frames: also store normalised mel frames at the code rate (mel tokenizers only), the input
            of the continuous baselines (`masked_frames`, `next_frames`).
    """
    stacker = frame_stacker(model) if with_frames else None
    t0 = time.time()
    corpus = list_audio(audio)
    threads = torch.get_num_threads()
    meta = model.store_meta()
    writer = TokenStoreWriter(store, replace(meta, **stacker.store_fields()) if stacker else meta, name=writer_name)
    try:
        todo, skipped = [], 0
        for rel in (corpus.files if files is None else files):
            size, mtime = file_signature(corpus.path(rel))
            if writer.done(rel, size, mtime):
                skipped += 1
            else:
                todo.append((rel, size, mtime))
        result = TokenizeResult(Path(store), len(corpus.files if files is None else files), 0, skipped)

        fz = Featurizer(model.cfg)
        stream = ChunkStream(corpus, [t[0] for t in todo], fz, chunk_codes * model.units_per_code, model.context_units,
                             min_seconds=1.0 / model.frame_rate)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers if todo else 0,
                                             prefetch_factor=4 if workers and todo else None,
                                             worker_init_fn=_worker_init if workers and todo else None)
        device = next(model.parameters()).device
        # Decode workers own the other cores: one model thread per spare core avoids oversubscription.
        if workers and device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
        pending: dict[int, list[np.ndarray]] = {}
        pending_frames: dict[int, list[np.ndarray]] = {}
        bar = tqdm(total=len(todo), desc="tokenize", unit="file", disable=not progress)
        with torch.inference_mode():
            for item in loader:
                kind, i = item[0], item[1]
                if kind == "chunk":
                    _, _, chunk, left, n_core = item
                    x = torch.as_tensor(chunk)[None].to(device)  # (1, C, n)
                    codes = model.encode(x)[0]  # (K, t)
                    c0 = left // model.units_per_code
                    c1 = c0 + -(-n_core // model.units_per_code)
                    pending.setdefault(i, []).append(codes[:, c0:c1].cpu().numpy())
                    if stacker is not None:
                        core = chunk[:, left:left + n_core].numpy()
                        pending_frames.setdefault(i, []).append(stacker(core))
                    continue
                _, _, seconds, error, level = item
                rel, size, mtime = todo[i]
                parts = pending.pop(i, [])
                frames = pending_frames.pop(i, [])
                if error:
                    writer.fail(rel, error, size, mtime)
                    result.failed[rel] = error
                    log.warning("failed: %s: %s", rel, error)
                else:
                    writer.add(rel, np.concatenate(parts, axis=1), seconds, size, mtime,
                               np.concatenate(frames) if with_frames else None, level_db=level)
                    result.encoded += 1
                    result.audio_seconds += seconds
                result.wall_seconds = time.time() - t0
                bar.set_postfix(hours=f"{result.audio_seconds / 3600:.2f}", rtf=f"{result.realtime_factor:.0f}x",
                                failed=len(result.failed))
                bar.update(1)
        bar.close()
    finally:
        torch.set_num_threads(threads)
        writer.close()
    result.wall_seconds = time.time() - t0
    return result


def parse_shard(spec: str) -> tuple[int, int]:
    """`"i/n"` -> (i, n) with 0 <= i < n."""
    try:
        i, n = (int(v) for v in spec.split("/"))
        if 0 <= i < n:
            return i, n
    except ValueError:
        pass
    raise UserError(f"--shard must look like i/n with 0 <= i < n, got '{spec}'")


def tokenize(tokenizer_dir: str | Path, audio: str | Path, store: str | Path, workers: int = 1, shard: str = "",
             with_frames: bool = False, device: str = "cpu", progress: bool = True) -> TokenizeResult:
    """`musetok tokenize`: load the tokenizer and encode this process's share of the corpus into `store`.

    `shard="i/n"` takes every n-th file from the i-th into its own shard files (then `merge-store`). Under
    torchrun (WORLD_SIZE > 1) each rank takes its own share, and rank 0 merges the indexes when all are done.
    """
    if workers < 0:
        raise UserError(f"--workers must be >= 0, got {workers}")
    d = distributed.Dist()
    if shard:
        i, n = parse_shard(shard)
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        d, _ = distributed.init("cpu")
        i, n = d.rank, d.world
    else:
        i, n = 0, 1
    model = load_tokenizer(tokenizer_dir, device=device)
    files = list_audio(audio).files[i::n] if n > 1 else None
    result = tokenize_corpus(model, audio, store, workers=workers, progress=progress, with_frames=with_frames,
                             files=files, writer_name=f"shard{i}-of-{n}" if n > 1 else "main")
    result.shard = (i, n)
    if d.enabled:
        d.barrier()
        if d.is_main:
            result.merged = merge_indexes(store)
        distributed.shutdown(d)
    return result
