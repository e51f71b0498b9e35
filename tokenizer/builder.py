"""The one place where a tokenizer config becomes a model, and where a model folder is read/written.

Folder layout: `config.json` (kind, format version, tokenizer id, TokenizerConfig),
`model.safetensors`, and for mel tokenizers `normalizer.json` (per-bin mean/std of the corpus).
`config.json` records the tokenizer id (`Tokenizer.tokenizer_id`: config, weights and normaliser
hashed together); loading recomputes it and refuses a folder whose files no longer match it. Token
stores and priors record the id and refuse to be used with another tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from musetok.shared.config import to_dict
from musetok.shared.io import (
    CONFIG_FILE,
    CheckpointError,
    load_model_weights,
    read_model_config,
    save_model_folder,
    unwrap,
)
from musetok.shared.normalize import MelStats
from musetok.tokenizer.base import Tokenizer
from musetok.tokenizer.config import TokenizerConfig
from musetok.tokenizer.mel_vqvae import MelVQVAE
from musetok.tokenizer.waveform_vqvae import WaveformVQVAE

FORMAT_VERSION = 1
NORMALIZER_FILE = "normalizer.json"


def build_tokenizer(cfg: TokenizerConfig, stats: MelStats | None = None) -> Tokenizer:
    """The one place a tokenizer config becomes a model. `stats`: the mel normaliser (mel input only)."""
    if cfg.input == "mel":
        return MelVQVAE(cfg, stats)
    return WaveformVQVAE(cfg)


def tokenizer_id(model: Tokenizer) -> str:
    """The id of a (possibly DDP-wrapped or compiled) tokenizer."""
    return unwrap(model).tokenizer_id


def save_tokenizer(folder: str | Path, model: Tokenizer) -> str:
    """Write the model folder (normaliser and weights first, config.json last); returns the tokenizer id."""
    model = unwrap(model)
    folder = Path(folder)
    if isinstance(model, MelVQVAE):
        model.stats().save(folder / NORMALIZER_FILE)
    tok_id = model.tokenizer_id
    save_model_folder(folder, model, {"kind": "musetok-tokenizer", "format_version": FORMAT_VERSION,
                                      "tokenizer_id": tok_id, "config": to_dict(model.cfg)})
    return tok_id


def read_tokenizer_config(folder: str | Path) -> tuple[TokenizerConfig, str]:
    cfg, meta = read_model_config(folder, "musetok-tokenizer", FORMAT_VERSION, "tokenizer config", TokenizerConfig)
    return cfg, str(meta.get("tokenizer_id", ""))


def load_tokenizer(folder: str | Path, device: str = "cpu") -> Tokenizer:
    """Rebuild a trained tokenizer from its folder, in eval mode; check its files still give the recorded id."""
    folder = Path(folder)
    cfg, recorded = read_tokenizer_config(folder)
    stats = MelStats.load(folder / NORMALIZER_FILE) if cfg.input == "mel" else None
    model = build_tokenizer(cfg, stats)
    load_model_weights(model, folder)
    if model.tokenizer_id != recorded:
        raise CheckpointError(f"{folder / CONFIG_FILE}: records tokenizer {recorded} but the folder's weights, "
                              f"normaliser and config hash to {model.tokenizer_id} (changed since it was saved, or "
                              f"saved by an older musetok: re-save it with this one)")
    return model.to(device).eval()
