"""The one place where a tokenizer config becomes a model, and where a model folder is read/written.

Folder layout: `config.json` (kind, format version, tokenizer id, TokenizerConfig),
`model.safetensors`, and for mel tokenizers `normalizer.json` (per-bin mean/std of the corpus).
The tokenizer id is a hash of the weights: token stores and priors record it, and refuse to be
used with another tokenizer.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from musetok.shared.config import ConfigError, from_dict, to_dict
from musetok.shared.io import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    load_state_dict_strict,
    load_weights,
    read_versioned_json,
    save_model_folder,
    unwrap,
    write_json,
)
from musetok.shared.normalize import MelStats
from musetok.tokenizer.base import Tokenizer
from musetok.tokenizer.config import TokenizerConfig
from musetok.tokenizer.mel_vqvae import MelVQVAE
from musetok.tokenizer.waveform_vqvae import WaveformVQVAE

FORMAT_VERSION = 1
NORMALIZER_FILE = "normalizer.json"


def build_tokenizer(cfg: TokenizerConfig, stats: MelStats | None = None) -> Tokenizer:
    if cfg.input == "mel":
        return MelVQVAE(cfg, stats)
    return WaveformVQVAE(cfg)


def file_hash(path: str | Path, n: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def save_tokenizer(folder: str | Path, model: Tokenizer) -> str:
    """Write the model folder; returns the tokenizer id."""
    model = unwrap(model)
    folder = Path(folder)
    if isinstance(model, MelVQVAE):
        model.stats().save(folder / NORMALIZER_FILE)
    save_model_folder(folder, model, {})  # weights first; the real config.json follows
    tok_id = file_hash(folder / WEIGHTS_FILE)
    write_json(folder / CONFIG_FILE, {"kind": "musetok-tokenizer", "format_version": FORMAT_VERSION,
                                      "tokenizer_id": tok_id, "config": to_dict(model.cfg)})
    return tok_id


def read_tokenizer_config(folder: str | Path) -> tuple[TokenizerConfig, str]:
    meta = read_versioned_json(Path(folder) / CONFIG_FILE, "musetok-tokenizer", FORMAT_VERSION, "tokenizer config")
    try:
        return from_dict(TokenizerConfig, meta["config"]), meta["tokenizer_id"]
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"{Path(folder) / CONFIG_FILE}: {e}") from None


def load_tokenizer(folder: str | Path, device: str = "cpu") -> Tokenizer:
    """Rebuild a trained tokenizer from its folder, in eval mode. Attribute `tokenizer_id` is set."""
    folder = Path(folder)
    cfg, tok_id = read_tokenizer_config(folder)
    stats = MelStats.load(folder / NORMALIZER_FILE) if cfg.input == "mel" else None
    model = build_tokenizer(cfg, stats)
    load_state_dict_strict(model, load_weights(folder), folder / WEIGHTS_FILE)
    model.tokenizer_id = tok_id
    return model.to(device).eval()
