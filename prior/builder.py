"""Prior model folders: `config.json` (kind, format version, PriorConfig incl. the tokenizer it was
trained for) + `model.safetensors`. Loading checks the tokenizer, so embeddings are never computed
from codes of another tokenizer."""

from __future__ import annotations

from pathlib import Path

from musetok.prior.config import PriorConfig
from musetok.prior.model import Prior
from musetok.shared.config import ConfigError, from_dict, to_dict
from musetok.shared.io import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    load_state_dict_strict,
    load_weights,
    read_versioned_json,
    save_model_folder,
)

FORMAT_VERSION = 1


def save_prior(folder: str | Path, model: Prior) -> None:
    from musetok.shared.io import unwrap

    m = unwrap(model)
    save_model_folder(folder, m, {"kind": "musetok-prior", "format_version": FORMAT_VERSION,
                                  "config": to_dict(m.cfg)})


def read_prior_config(folder: str | Path) -> PriorConfig:
    path = Path(folder) / CONFIG_FILE
    meta = read_versioned_json(path, "musetok-prior", FORMAT_VERSION, "prior config")
    try:
        return from_dict(PriorConfig, meta["config"])
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def check_tokenizer(cfg: PriorConfig, tokenizer, where: str | Path) -> None:
    """Refuse a tokenizer other than the one the prior was trained on, saying what differs."""
    pairs = [("tokenizer_id", cfg.tokenizer_id, getattr(tokenizer, "tokenizer_id", "")),
             ("frame_rate", cfg.frame_rate, tokenizer.frame_rate)]
    if cfg.discrete:
        pairs += [("codebook_size", cfg.codebook_size, tokenizer.codebook_size),
                  ("num_codebooks", cfg.num_codebooks, tokenizer.num_codebooks)]
    for key, want, got in pairs:
        if want != got:
            raise CheckpointError(f"{where}: prior was trained on tokenizer {cfg.tokenizer_id} but got tokenizer "
                                  f"{getattr(tokenizer, 'tokenizer_id', '?')} ({key}: {want!r} != {got!r})")


def load_prior(folder: str | Path, device: str = "cpu", tokenizer=None) -> Prior:
    """Rebuild a prior in eval mode; with `tokenizer`, check it is the one the prior was trained on."""
    cfg = read_prior_config(folder)
    if tokenizer is not None:
        check_tokenizer(cfg, tokenizer, folder)
    model = Prior(cfg)
    load_state_dict_strict(model, load_weights(folder), Path(folder) / WEIGHTS_FILE)
    return model.to(device).eval()
