"""Second-round targets (HuBERT's iteration): k-means on a trained prior's layer relabels a token store.

    musetok relabel --prior PRIOR --store STORE --out STORE2 [--layer 2] [--codes 512]

1. fit: every frame of STORE goes through PRIOR (read as the embedder reads clips); the states of one
   layer (default: the middle block, as HuBERT and MARBLE's best key layers) are sampled, up to
   `fit_frames` of them spread over all files, and k-means (scikit-learn's MiniBatchKMeans, seeded)
   finds `codes` centroids. They are saved first (`relabel.json`, `centroids.npy`), so a rerun reuses
   them;
2. relabel: STORE2 gets every file of STORE with the same mel frames and, as its one codebook, each
   frame's nearest centroid. It is written like any store (fsynced, resumable: a rerun continues).

A prior trained on STORE2 with `model.inputs=frames` predicts the new codes (BEST-RQ / MusicFM's recipe
with HuBERT's second-round targets); it embeds new audio with the first-round tokenizer's front-end, as
before. It cannot *read* them: nothing turns new audio into them without running PRIOR, so a prior that
reads codes is refused on STORE2 (`StoreMeta.codes_source` says where the codes came from).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import MiniBatchKMeans

from musetok.embedding.embedder import prior_states
from musetok.prior.builder import check_tokenizer, load_prior
from musetok.prior.model import Prior, join_input
from musetok.shared.errors import UserError
from musetok.shared.io import atomic_write, atomic_write_text, file_sha1
from musetok.shared.token_store import TokenStore, TokenStoreWriter

log = logging.getLogger("musetok")
RECORD, CENTROIDS = "relabel.json", "centroids.npy"


@dataclass(frozen=True)
class RelabelConfig:
    prior: str              # the prior folder whose states are clustered
    prior_sha1: str         # of its weights: a retrained prior is a different source
    layer: str              # one of the prior's layer names
    codes: int = 512        # k-means centroids: the new codebook's size
    fit_frames: int = 100_000
    seed: int = 0

    @property
    def source(self) -> str:
        """What the new store's `codes_source` says."""
        return f"kmeans{self.codes}:prior {self.prior_sha1[:12]}:{self.layer}"


@dataclass
class RelabelResult:
    out: Path
    files: int              # files written by this call (the rest were already there)
    source: str
    inertia: float          # mean squared distance of the fit frames to their centroid
    usage: float            # fraction of centroids used by at least one frame of the store


def pick_layer(prior: Prior, layer: str | int | None) -> str:
    """A layer name from a number (0 is the input embedding), a name, or None (the middle block)."""
    names = prior.layer_names
    if layer is None or layer == "":
        return names[max(1, prior.cfg.layers // 2)]
    if str(layer).isdigit() and int(layer) < len(names):
        return names[int(layer)]
    if str(layer) in names:
        return str(layer)
    raise UserError(f"--layer: unknown layer '{layer}' (layers are 0..{len(names) - 1}: {', '.join(names)})")


def _states(prior: Prior, store: TokenStore, items: list[int], layer: int, batch_size: int) -> list[np.ndarray]:
    """One layer's states `(T, D)` for these store items."""
    cfg = prior.cfg
    inputs = [join_input(cfg, np.asarray(store.codes(i)) if cfg.reads_codes else None,
                         np.asarray(store.frames_window(i, 0, store.items[i].length), dtype=np.float32)
                         if cfg.reads_frames else None) for i in items]
    return [s[layer].numpy() for s in prior_states(prior, inputs, batch_size)]


def _fit(prior: Prior, store: TokenStore, cfg: RelabelConfig, layer: int, batch_size: int) -> tuple[np.ndarray, float]:
    """Centroids `(codes, D)` from up to `fit_frames` states sampled evenly over the store; and their inertia."""
    rng = np.random.default_rng(cfg.seed)
    share = min(1.0, cfg.fit_frames / max(1, store.total_frames))
    sample = []
    for b0 in range(0, len(store), 32):
        for x in _states(prior, store, list(range(b0, min(len(store), b0 + 32))), layer, batch_size):
            keep = rng.random(len(x)) < share
            sample.append(x[keep])
    x = np.concatenate(sample).astype(np.float32)
    if len(x) < cfg.codes:
        raise UserError(f"--codes: {cfg.codes} centroids need at least as many frames; {store.root} gives "
                        f"{len(x)} (use fewer codes or a larger store)")
    km = MiniBatchKMeans(cfg.codes, random_state=cfg.seed, batch_size=4096, n_init=3, max_iter=100,
                         compute_labels=False).fit(x)
    inertia = float(((x - km.cluster_centers_[km.predict(x)]) ** 2).sum(1).mean())
    return km.cluster_centers_.astype(np.float32), inertia


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # np.save on a name would add ".npy" to the temporary file's name
        np.save(f, array)


def _nearest(x: np.ndarray, centroids: torch.Tensor) -> np.ndarray:
    return torch.cdist(torch.from_numpy(x), centroids).argmin(1).numpy()


def relabel_store(prior_dir: str | Path, store_dir: str | Path, out: str | Path, layer: str | int | None = None,
                  codes: int = 512, fit_frames: int = 100_000, seed: int = 0, batch_size: int = 16
                  ) -> RelabelResult:
    """Write `out`: `store_dir`'s files and frames with second-round codes (see the module doc)."""
    prior_dir, store, out = Path(prior_dir), TokenStore(store_dir), Path(out)
    if len(store) == 0:
        raise UserError(f"{store_dir}: the token store has no items to relabel")
    if not store.has_frames:
        raise UserError(f"{store_dir}: the store has no mel frames; second-round codes are written beside them "
                        "(tokenize with --with-frames)")
    if codes < 2 or codes > 65535:
        raise UserError(f"--codes: must be in 2..65535 (got {codes})")
    prior = load_prior(prior_dir)
    check_tokenizer(prior.cfg, store.meta, store_dir)
    cfg = RelabelConfig(str(prior_dir), file_sha1(prior_dir / "model.safetensors"), pick_layer(prior, layer), codes,
                        fit_frames, seed)
    index = prior.layer_names.index(cfg.layer)
    meta = replace(store.meta, codebook_size=codes, num_codebooks=1, codes_source=cfg.source)

    out.mkdir(parents=True, exist_ok=True)
    record = out / RECORD
    if record.exists():
        old = json.loads(record.read_text())
        if {k: v for k, v in old.items() if k not in ("prior", "inertia")} != \
                {k: v for k, v in asdict(cfg).items() if k != "prior"}:
            raise UserError(f"{record}: this store was relabelled with other settings or another prior; use another "
                            "--out or remove it")
        centroids, inertia = np.load(out / CENTROIDS), float(old["inertia"])
    else:
        if any(p.name != CENTROIDS and not p.name.startswith(".") for p in out.iterdir()):  # left by a crash
            raise UserError(f"{out}: not empty and not a relabelled store; use another --out")
        log.info("relabel: k-means (%d codes) on %s of %s over %s", codes, cfg.layer, prior_dir, store.summary())
        centroids, inertia = _fit(prior, store, cfg, index, batch_size)
        atomic_write(out / CENTROIDS, lambda tmp: _save_npy(tmp, centroids))
        atomic_write_text(record, json.dumps({**asdict(cfg), "inertia": inertia}, indent=1) + "\n")

    c = torch.from_numpy(centroids)
    written = 0
    with TokenStoreWriter(out, meta) as w:
        todo = [i for i, e in enumerate(store.items) if not w.done(e.path, e.size, e.mtime_ns)]
        for b0 in range(0, len(todo), 32):
            part = todo[b0:b0 + 32]
            for i, x in zip(part, _states(prior, store, part, index, batch_size)):
                e = store.items[i]
                w.add(e.path, _nearest(x, c)[None].astype(np.uint16), e.duration, e.size, e.mtime_ns,
                      frames=np.asarray(store.frames_window(i, 0, e.length)), level_db=e.level_db)
                written += 1
        for e in store.failed:
            if not w.done(e.path, e.size, e.mtime_ns):
                w.fail(e.path, e.reason, e.size, e.mtime_ns)
    new = TokenStore(out)
    used = np.zeros(codes, bool)
    for i in range(len(new)):
        used[np.asarray(new.codes(i))[0]] = True
    return RelabelResult(out, written, cfg.source, inertia, float(used.mean()))
