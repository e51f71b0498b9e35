"""A whole corpus -> embedding files: `musetok embed --tokenizer T --prior P --audio DIR --out OUT`.

Writes `OUT.npy` (float32 `[N, L, 3D]` pooled over time: mean, std and max, `DEFAULT_POOL`; `[N, L, 2D]` with
`pool="meanstd"`, `[N, L, D]` with `mean` or `max`; `[frames, L, D]` with `pool="none"`, rows of
clip i at `offset:offset+length` of the index) or `OUT.npz` (`embeddings`, `paths`, `layers`,
`frame_rate`, `pool`), plus `OUT.csv` with one row per embedded clip and `OUT.layers.txt`.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from musetok.embedding.embedder import DEFAULT_POOL, POOLS, Embedder, pool_factor
from musetok.prior.builder import check_tokenizer
from musetok.prior.model import join_input
from musetok.shared.audio import AUTO_LEVEL, AudioError, is_auto_level, list_audio, resolve_level
from musetok.shared.errors import UserError
from musetok.shared.io import atomic_write, atomic_write_text
from musetok.shared.token_store import TokenStore

log = logging.getLogger("musetok")


@dataclass
class EmbedResult:
    array_path: Path
    index_path: Path
    count: int
    shape: tuple[int, ...]
    failed: dict[str, str]
    audio_seconds: float
    wall_seconds: float

    @property
    def realtime_factor(self) -> float:
        return self.audio_seconds / max(self.wall_seconds, 1e-9)


def parse_layers(spec: str, names: list[str]) -> list[int]:
    """`all`, `last`, or comma-separated layer numbers / names (`0,2,layer4`)."""
    if spec == "all":
        return list(range(len(names)))
    if spec == "last":
        return [len(names) - 1]
    out = []
    for part in spec.split(","):
        part = part.strip()
        if part == "last":
            out.append(len(names) - 1)
        elif part.isdigit() and int(part) < len(names):
            out.append(int(part))
        elif part in names:
            out.append(names.index(part))
        else:
            raise UserError(f"--layers: unknown layer '{part}' (layers are 0..{len(names) - 1}: {', '.join(names)})")
    return out


def _store_loader(embedder: Embedder, store: str | Path):
    """(names, durations, load(i)) for the items of a token store written with the embedder's tokenizer."""
    st = TokenStore(store)
    cfg = embedder.prior.cfg
    check_tokenizer(cfg, st.meta, store)
    if cfg.reads_frames and not st.has_frames:
        raise UserError(f"{store}: this prior reads mel frames; the store has none (tokenize with --with-frames)")

    def load(i: int):
        n = st.items[i].length
        return join_input(cfg, np.asarray(st.codes(i)) if cfg.reads_codes else None,
                          np.asarray(st.frames_window(i, 0, n), dtype=np.float32) if cfg.reads_frames else None)
    return [e.path for e in st.items], [e.duration for e in st.items], load


def embed_corpus(embedder: Embedder, out: str | Path, audio: str | Path | None = None,
                 store: str | Path | None = None, layers: str = "all", pool: str = DEFAULT_POOL,
                 fmt: str = "npy", files_per_batch: int = 16, progress: bool = True) -> EmbedResult:
    """Embed every file of a corpus (audio folder/manifest, or an existing token store); see the module doc."""
    t0 = time.time()
    out = Path(out)
    base = out.with_suffix("") if out.suffix in (".npy", ".npz", ".csv") else out
    sel = parse_layers(layers, embedder.layer_names)
    if pool not in POOLS + ("none",):
        raise UserError(f"--pool: unknown pooling '{pool}' (known: {', '.join(POOLS)}, none)")
    if (audio is None) == (store is None):
        raise UserError("give exactly one of --audio or --store")
    if store is not None:
        names, durations, load = _store_loader(embedder, store)
    else:
        corpus = list_audio(audio)
        names, durations = corpus.files, [0.0] * len(corpus.files)

        def load(i: int) -> np.ndarray:
            return embedder.inputs_from_file(corpus.path(names[i]))

    rows, arrays, failed, seconds, offset = [], [], {}, 0.0, 0
    bar = tqdm(total=len(names), desc="embed", unit="file", disable=not progress)
    for b0 in range(0, len(names), files_per_batch):
        batch_idx, inputs = [], []
        for i in range(b0, min(len(names), b0 + files_per_batch)):
            try:
                inputs.append(load(i))
                batch_idx.append(i)
            except AudioError as e:
                failed[names[i]] = e.reason
                log.warning("failed: %s: %s", names[i], e.reason)
        for i, emb in zip(batch_idx, embedder.embed_inputs(inputs) if inputs else []):
            dur = durations[i] or emb.num_frames / emb.frame_rate
            seconds += dur
            x = (emb.stacked()[:, sel] if pool == "none" else emb.pooled(pool)[sel][None]).numpy().astype(np.float32)
            arrays.append(x)
            rows.append({"path": names[i], "duration": round(dur, 4), "frames": emb.num_frames,
                         "offset": offset, "length": x.shape[0]})
            offset += x.shape[0]
        bar.update(min(len(names), b0 + files_per_batch) - b0)
        bar.set_postfix(rtf=f"{seconds / max(time.time() - t0, 1e-9):.0f}x", failed=len(failed))
    bar.close()
    layer_names = [embedder.layer_names[i] for i in sel]
    d = embedder.prior.cfg.dim * pool_factor(pool)
    emb_all = np.concatenate(arrays) if arrays else np.zeros((0, len(sel), d), np.float32)
    # every file is written whole or not at all (a full disk leaves no half-written array behind)
    if fmt == "npz":
        array_path = base.with_suffix(".npz")
        arrays_npz = dict(embeddings=emb_all, paths=np.array([r["path"] for r in rows]), layers=np.array(layer_names),
                          frame_rate=np.array(embedder.frame_rate), pool=np.array(pool))
        atomic_write(array_path, lambda tmp: _save(tmp, np.savez, **arrays_npz))
    else:
        array_path = base.with_suffix(".npy")
        atomic_write(array_path, lambda tmp: _save(tmp, np.save, emb_all))
    index_path = base.with_suffix(".csv")
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=["path", "duration", "frames", "offset", "length"])
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(index_path, text.getvalue())
    atomic_write_text(base.parent / (base.name + ".layers.txt"),
                      "\n".join(layer_names) + f"\n# frame_rate {embedder.frame_rate}\n# pool {pool}\n")
    return EmbedResult(array_path, index_path, len(rows), emb_all.shape, failed, seconds, time.time() - t0)


def _save(path: str, fn, *args, **kw) -> None:
    with open(path, "wb") as f:  # a file object: np.save would add ".npy" to the temporary name
        fn(f, *args, **kw)


def embed(tokenizer_dir: str | Path, prior_dir: str | Path, out: str | Path, audio: str | Path | None = None,
          store: str | Path | None = None, layers: str = "all", pool: str = DEFAULT_POOL, fmt: str = "npy",
          batch_size: int = 16, device: str = "cpu", progress: bool = True,
          level_db: float | str | None = AUTO_LEVEL) -> EmbedResult:
    """`musetok embed`: load the tokenizer and prior, then `embed_corpus`. `level_db`: each audio file is brought
    to that RMS (dBFS) first; "auto" (the default): the level of the prior's own training audio; None: each file
    as it is. A store's codes and frames were computed already: with `store` a number is refused, and "auto"
    reads each file at the level it was tokenized at."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {batch_size}")
    auto = is_auto_level(level_db)
    explicit = None if auto else resolve_level(level_db, None)
    if explicit is not None and store is not None:
        raise UserError(f"--level-db: {store} holds codes and frames computed already; give --audio to read each "
                        "file at another level")
    emb = Embedder.from_pretrained(tokenizer_dir, prior_dir, device=device, batch_size=batch_size,
                                   level_db=None if store is not None else level_db)
    if audio is not None:
        log.info("embed: %s", "each file read at its own level" if emb.level_db is None else
                 f"each file brought to {emb.level_db:.1f} dBFS RMS first" +
                 (" (the level of the prior's training audio)" if auto else ""))
    return embed_corpus(emb, out, audio=audio, store=store, layers=layers, pool=pool, fmt=fmt, progress=progress)
