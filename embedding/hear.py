"""The HEAR 2021 common API (what hear-eval-kit calls), for a musetok tokenizer + prior bundle.

    from musetok.embedding import hear
    model = hear.load_model("runs/bundle")                   # or a Hub repo id holding a bundle
    emb, ts = hear.get_timestamp_embeddings(audio, model)    # audio: (n_sounds, n_samples) at model.sample_rate
    scene = hear.get_scene_embeddings(audio, model)          # (n_sounds, model.scene_embedding_size)

A bundle is a folder with `tokenizer/`, `prior/` and `hear.json`; `musetok bundle` writes one. Which
states feed the embedding is the bundle's documented choice (`hear.json`):
- `layers`: `all` (default), `last`, or layer names / numbers (`input,layer2`);
- `combine`: `concat` (default; the layers side by side, as HEAR submissions built on transformers do) or
  `mean` (their average, one layer's width);
- `pool`: how scene embeddings summarise the timestamp embeddings over time: `meanstdmax` (what `musetok bundle`
  writes: their mean, standard deviation and maximum side by side, 3x the width; what `musetok embed` writes and
  the representation benchmark probes), `meanstd`, `mean` (a bundle without the key) or `max`;
- `level_db`: each sound brought to that RMS in dBFS before the front-end (`musetok bundle` writes the level of
  the prior's training audio, or `--level-db`'s), "auto" (that level, read from the prior), or null (and a bundle
  without the key, written before it existed): each sound read at its own level.
Timestamp embeddings are the prior's frames at the tokenizer's code rate (43 Hz, one every 23 ms for the
`small` tokenizer); timestamps are frame centres in milliseconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from musetok.embedding.corpus import parse_layers
from musetok.embedding.embedder import DEFAULT_POOL, POOLS, Embedder, pool_factor, pool_frames
from musetok.shared.audio import AUTO_LEVEL, is_auto_level
from musetok.shared.errors import UserError
from musetok.shared.hub import resolve_folder
from musetok.shared.io import write_json

HEAR_FILE = "hear.json"
HEAR_RATES = (16000, 22050, 44100, 48000)


class HearModel(torch.nn.Module):
    """An `Embedder` with the attributes the HEAR API asks for."""

    def __init__(self, embedder: Embedder, layers: str = "all", combine: str = "concat", pool: str = DEFAULT_POOL):
        super().__init__()
        if combine not in ("concat", "mean"):
            raise UserError(f"{HEAR_FILE}: combine must be 'concat' or 'mean', got {combine!r}")
        if pool not in POOLS:
            raise UserError(f"{HEAR_FILE}: pool must be one of {', '.join(POOLS)}, got {pool!r}")
        self.embedder = embedder
        self.tokenizer, self.prior = embedder.tokenizer, embedder.prior  # registered as submodules
        self.layer_index = parse_layers(layers, embedder.layer_names)
        self.combine, self.pool = combine, pool
        self.sample_rate = embedder.tokenizer.sample_rate
        if self.sample_rate not in HEAR_RATES:
            raise UserError(f"the tokenizer runs at {self.sample_rate} Hz; HEAR models must take one of {HEAR_RATES}")
        width = embedder.prior.cfg.dim
        self.timestamp_embedding_size = width * (len(self.layer_index) if combine == "concat" else 1)
        self.scene_embedding_size = self.timestamp_embedding_size * pool_factor(pool)

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        """`(n_sounds, n_samples)` -> `(n_sounds, n_frames, timestamp_embedding_size)` float32."""
        if audio.dim() != 2:
            raise ValueError(f"audio must be (n_sounds, n_samples), got shape {tuple(audio.shape)}")
        wave = audio.detach().float().cpu().numpy()
        inputs = [self.embedder.inputs_from_waveform(w, self.sample_rate) for w in wave]
        out = []
        for e in self.embedder.embed_inputs(inputs):
            x = e.stacked()[:, self.layer_index]  # (T, L, D)
            out.append(x.reshape(x.shape[0], -1) if self.combine == "concat" else x.mean(1))
        return torch.stack(out).to(audio.device)


def load_model(model_file_path: str = "") -> HearModel:
    """A bundle folder (or Hub repo id of one) -> the model, in eval mode."""
    if not model_file_path:
        raise UserError("musetok ships no weights: give load_model the folder (or Hub repo id) of a bundle made "
                        "with `musetok bundle`")
    folder = resolve_folder(model_file_path)
    cfg = json.loads((folder / HEAR_FILE).read_text()) if (folder / HEAR_FILE).is_file() else {}
    level = cfg.get("level_db")
    if level is not None and not is_auto_level(level) and (isinstance(level, bool) or
                                                           not isinstance(level, (int, float))):
        raise UserError(f"{folder / HEAR_FILE}: level_db must be a number of dBFS, \"auto\" or null, got {level!r}")
    emb = Embedder.from_pretrained(folder / "tokenizer", folder / "prior", level_db=level)
    # a bundle written before `pool` existed documented time-mean scene embeddings
    return HearModel(emb, cfg.get("layers", "all"), cfg.get("combine", "concat"), cfg.get("pool", "mean")).eval()


@torch.no_grad()
def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns embeddings `(n_sounds, n_frames, timestamp_embedding_size)` and timestamps `(n_sounds, n_frames)`
    in milliseconds (the centre of each frame), both float32."""
    emb = model.frames(audio)
    cfg = model.tokenizer.cfg
    hop_ms = 1000.0 / model.tokenizer.frame_rate
    # code frame i covers `units_per_code` input units from i * units_per_code; for mel input, unit j is
    # centred at j * hop_length samples (centred STFT)
    unit_ms = 1000.0 * (cfg.mel.hop_length if cfg.input == "mel" else 1) / cfg.mel.sample_rate
    centre = (cfg.units_per_code - 1) / 2 * unit_ms
    ts = torch.arange(emb.shape[1], dtype=torch.float32) * hop_ms + centre
    return emb, ts.expand(emb.shape[0], -1).contiguous().to(audio.device)


@torch.no_grad()
def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """Returns `(n_sounds, scene_embedding_size)` float32: the timestamp embeddings pooled over time as the
    bundle's `pool` says (by default their mean, standard deviation and maximum side by side)."""
    return pool_frames(model.frames(audio).transpose(0, 1), model.pool)


def write_bundle(tokenizer_dir: str | Path, prior_dir: str | Path, out: str | Path, layers: str = "all",
                 combine: str = "concat", pool: str = DEFAULT_POOL, level_db: float | str | None = AUTO_LEVEL
                 ) -> Path:
    """Copy a tokenizer and its prior into one folder with `hear.json` (checked by loading it); `level_db`: the
    bundle reads each sound at that RMS (dBFS); "auto": at the level of the prior's training audio (written
    into `hear.json` as the number); None: each sound at its own level."""
    out = Path(out)
    emb = Embedder.from_pretrained(tokenizer_dir, prior_dir, level_db=level_db)  # refuses another tokenizer's prior
    level_db = emb.level_db
    HearModel(emb, layers, combine, pool)  # checks layers, combine and pool
    for name, src in (("tokenizer", tokenizer_dir), ("prior", prior_dir)):
        shutil.copytree(src, out / name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("train_state.pt", ".lock*", "*.tmp"))
    write_json(out / HEAR_FILE, {"layers": layers, "combine": combine, "pool": pool, "level_db": level_db,
                                 "module": "musetok.embedding.hear", "sample_rate": emb.tokenizer.sample_rate})
    return out


__all__ = ["HearModel", "load_model", "get_scene_embeddings", "get_timestamp_embeddings", "write_bundle"]
