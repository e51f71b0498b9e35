"""Any clip -> per-layer embeddings from the prior's hidden states.

    emb = Embedder.from_pretrained("runs/tok", "runs/prior").embed(waveform, sample_rate)
    emb.layers[i]   # (T, D) frames of layer i;  emb.pooled()  # (L, D) time-mean;  emb.frame_rate

Audio -> codes (or normalised mel frames, for the continuous baselines) -> prior. Clips longer
than the prior's context are cut into consecutive windows of `max_len` frames whose outputs are
concatenated, so every frame is embedded exactly once and mean pooling weights frames equally.
Windows from many clips are batched together with padding and an attention mask; results do not
depend on batch size or on what else is in the batch (tests check it).
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from musetok.prior.builder import load_prior
from musetok.prior.model import Prior
from musetok.shared.audio import AudioError, list_audio, to_mono_resampled
from musetok.shared.token_store import TokenStore
from musetok.tokenizer.base import Tokenizer
from musetok.tokenizer.builder import load_tokenizer
from musetok.tokenizer.features import Featurizer

log = logging.getLogger("musetok")


@dataclass
class Embedding:
    """layers: one `(T, D)` float32 tensor per layer (input embedding first); frame_rate in Hz."""

    layers: list[torch.Tensor]
    layer_names: list[str]
    frame_rate: float

    @property
    def num_frames(self) -> int:
        return self.layers[0].shape[0]

    def pooled(self) -> torch.Tensor:
        """Time-mean of every layer: `(L, D)`."""
        return torch.stack([h.mean(0) for h in self.layers])

    def stacked(self) -> torch.Tensor:
        """All layers as one `(T, L, D)` tensor."""
        return torch.stack(self.layers, dim=1)


class Embedder:
    def __init__(self, tokenizer: Tokenizer, prior: Prior, batch_size: int = 16):
        self.tokenizer, self.prior, self.batch_size = tokenizer.eval(), prior.eval(), batch_size
        self.fz = Featurizer(tokenizer.cfg)
        self.device = next(prior.parameters()).device

    @classmethod
    def from_pretrained(cls, tokenizer_dir: str | Path, prior_dir: str | Path, device: str = "cpu",
                        batch_size: int = 16) -> Embedder:
        tok = load_tokenizer(tokenizer_dir, device=device)
        return cls(tok, load_prior(prior_dir, device=device, tokenizer=tok), batch_size)

    @property
    def frame_rate(self) -> float:
        return self.tokenizer.frame_rate

    @property
    def layer_names(self) -> list[str]:
        return self.prior.layer_names

    # -- inputs ------------------------------------------------------------------------------------
    def _from_features(self, blocks: Iterable[np.ndarray]) -> np.ndarray:
        """Model-input blocks -> the prior's input: codes `(K, T)` or frames `(T, F)`."""
        if self.prior.cfg.discrete:
            return np.concatenate(list(self.tokenizer.encode_stream(blocks)), axis=1)
        return self.tokenizer.stacked_frames(np.concatenate(list(blocks), axis=1))

    def inputs_from_file(self, path: str | Path) -> np.ndarray:
        return self._from_features(self.fz.iter_file(path))

    def inputs_from_waveform(self, waveform: np.ndarray | torch.Tensor, sample_rate: int) -> np.ndarray:
        wave = waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
        mono = to_mono_resampled(wave, sample_rate, self.tokenizer.sample_rate)
        return self._from_features([self.fz.array(mono)])

    # -- the prior ---------------------------------------------------------------------------------
    @torch.no_grad()
    def embed_inputs(self, inputs: list[np.ndarray]) -> list[Embedding]:
        """Prior inputs (codes `(K, T)` or frames `(T, F)`) -> one Embedding each."""
        discrete, win = self.prior.cfg.discrete, self.prior.cfg.max_len
        windows = []  # (input index, start, length)
        for i, x in enumerate(inputs):
            t = x.shape[1] if discrete else x.shape[0]
            windows += [(i, s, min(win, t - s)) for s in range(0, t, win)]
        outs: list[list[list[torch.Tensor]]] = [[] for _ in inputs]  # per input: windows of per-layer states
        for b0 in range(0, len(windows), self.batch_size):
            group = windows[b0:b0 + self.batch_size]
            t = max(n for _, _, n in group)
            if discrete:
                k = inputs[0].shape[0]
                x = torch.zeros(len(group), k, t, dtype=torch.long)
                for j, (i, s, n) in enumerate(group):
                    x[j, :, :n] = torch.from_numpy(inputs[i][:, s:s + n].astype(np.int64))
            else:
                x = torch.zeros(len(group), t, inputs[0].shape[1])
                for j, (i, s, n) in enumerate(group):
                    x[j, :n] = torch.from_numpy(np.asarray(inputs[i][s:s + n], dtype=np.float32))
            lengths = torch.tensor([n for _, _, n in group])
            valid = torch.arange(t)[None] < lengths[:, None]
            states = self.prior(x.to(self.device), valid.to(self.device), output_hidden_states=True).hidden_states
            for j, (i, _, n) in enumerate(group):
                outs[i].append([h[j, :n].float().cpu() for h in states])
        return [Embedding([torch.cat([w[layer] for w in ws]) for layer in range(len(self.layer_names))],
                          self.layer_names, self.frame_rate) for ws in outs]

    def embed(self, waveform: np.ndarray | torch.Tensor, sample_rate: int) -> Embedding:
        """A waveform at any rate, `(N,)`, `(C, N)` or `(N, C)` -> Embedding."""
        return self.embed_inputs([self.inputs_from_waveform(waveform, sample_rate)])[0]

    def embed_file(self, path: str | Path) -> Embedding:
        return self.embed_inputs([self.inputs_from_file(path)])[0]


# -- corpus -> files ---------------------------------------------------------------------------------
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
            raise ValueError(f"--layers: unknown layer '{part}' (layers are 0..{len(names) - 1}: {', '.join(names)})")
    return out


def embed_corpus(embedder: Embedder, out: str | Path, audio: str | Path | None = None,
                 store: str | Path | None = None, layers: str = "all", pool: str = "mean",
                 fmt: str = "npy", files_per_batch: int = 16, progress: bool = True) -> EmbedResult:
    """Embed every file of a corpus (audio folder/manifest, or an existing token store).

    Writes `OUT.npy` (float32 `[N, L, D]` with mean pooling; `[frames, L, D]` with `pool="none"`, rows
    of clip i at `offset:offset+length` of the index) or `OUT.npz` (`embeddings`, `paths`, `layers`,
    `frame_rate`), plus `OUT.csv` with one row per embedded clip.
    """
    t0 = time.time()
    out = Path(out)
    base = out.with_suffix("") if out.suffix in (".npy", ".npz", ".csv") else out
    sel = parse_layers(layers, embedder.layer_names)
    if (audio is None) == (store is None):
        raise ValueError("give exactly one of audio or store")
    if store is not None:
        st = TokenStore(store)
        if embedder.prior.cfg.discrete:
            st.meta.check_compatible(_store_meta_of(embedder, st), str(store))
        names = [e.path for e in st.items]

        def load(i):
            if embedder.prior.cfg.discrete:
                return np.asarray(st.codes(i))
            return np.asarray(st.frames_window(i, 0, st.items[i].length), dtype=np.float32)
        durations = [e.duration for e in st.items]
    else:
        corpus = list_audio(audio)
        names = corpus.files
        durations = [0.0] * len(names)

        def load(i):
            return embedder.inputs_from_file(corpus.path(names[i]))

    rows, arrays, failed, seconds = [], [], {}, 0.0
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
            x = (emb.pooled()[sel] if pool == "mean" else emb.stacked()[:, sel]).numpy().astype(np.float32)
            offset = sum(a.shape[0] for a in arrays) if pool == "none" else len(arrays)
            arrays.append(x[None] if pool == "mean" else x)
            rows.append({"path": names[i], "duration": round(dur, 4), "frames": emb.num_frames,
                         "offset": offset, "length": emb.num_frames if pool == "none" else 1})
        bar.update(min(len(names), b0 + files_per_batch) - b0)
        bar.set_postfix(rtf=f"{seconds / max(time.time() - t0, 1e-9):.0f}x", failed=len(failed))
    bar.close()
    layer_names = [embedder.layer_names[i] for i in sel]
    d = embedder.prior.cfg.dim
    emb_all = np.concatenate(arrays) if arrays else np.zeros((0, len(sel), d), np.float32)
    base.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "npz":
        array_path = base.with_suffix(".npz")
        np.savez(array_path, embeddings=emb_all, paths=np.array([r["path"] for r in rows]),
                 layers=np.array(layer_names), frame_rate=np.array(embedder.frame_rate))
    else:
        array_path = base.with_suffix(".npy")
        np.save(array_path, emb_all)
    index_path = base.with_suffix(".csv")
    with open(index_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "duration", "frames", "offset", "length"])
        w.writeheader()
        w.writerows(rows)
    (base.parent / (base.name + ".layers.txt")).write_text(
        "\n".join(layer_names) + f"\n# frame_rate {embedder.frame_rate}\n# pool {pool}\n")
    return EmbedResult(array_path, index_path, len(rows), emb_all.shape, failed, seconds, time.time() - t0)


def _store_meta_of(embedder: Embedder, st: TokenStore):
    from dataclasses import replace

    tok = embedder.tokenizer
    return replace(st.meta, tokenizer_id=getattr(tok, "tokenizer_id", ""), codebook_size=tok.codebook_size,
                   num_codebooks=tok.num_codebooks, frame_rate=tok.frame_rate)
