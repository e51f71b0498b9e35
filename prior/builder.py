"""Prior model folders: `config.json` (kind, format version, PriorConfig incl. the tokenizer it was
trained for) + `model.safetensors`. Loading checks the tokenizer, so embeddings are never computed
from codes of another tokenizer."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from musetok.prior.config import PriorConfig
from musetok.prior.model import Prior
from musetok.shared.config import to_dict
from musetok.shared.io import CheckpointError, load_model_weights, read_model_config, save_model_folder, unwrap
from musetok.shared.token_store import StoreMeta, TokenStore

FORMAT_VERSION = 1


def bind_to_store(cfg: PriorConfig, meta: StoreMeta, level_db: float | None = None) -> PriorConfig:
    """A copy of `cfg` with its input/output sizes and tokenizer identity taken from a token store's meta, and
    the level its audio is heard at (`TokenStore.level_db`)."""
    bands = len(meta.frames_pitch_class)
    chroma_dim = 12 * (meta.frames_dim // bands) if cfg.aux_chroma > 0 and bands else 0
    return replace(cfg, codebook_size=meta.codebook_size, num_codebooks=meta.num_codebooks,
                   frame_rate=meta.frame_rate, tokenizer_id=meta.tokenizer_id, frame_dim=meta.frames_dim,
                   codes_source=meta.codes_source, chroma_dim=chroma_dim, frame_bands=len(meta.frames_mean),
                   corpus_level_db=level_db)


def build_prior_for_store(cfg: PriorConfig, store: TokenStore) -> Prior:
    """A fresh (untrained) prior sized for this store: the random-weights control of the probes."""
    return Prior(bind_to_store(cfg, store.meta, store.level_db))


def save_prior(folder: str | Path, model: Prior) -> None:
    m = unwrap(model)
    save_model_folder(folder, m, {"kind": "musetok-prior", "format_version": FORMAT_VERSION,
                                  "config": to_dict(m.cfg)})


def read_prior_config(folder: str | Path) -> PriorConfig:
    return read_model_config(folder, "musetok-prior", FORMAT_VERSION, "prior config", PriorConfig)[0]


def check_tokenizer(cfg: PriorConfig, meta: StoreMeta, where: str | Path, targets: bool = False) -> None:
    """Refuse codes or frames from a tokenizer other than the one the prior was trained on (given as the
    meta of a store it wrote, `tokenizer.store_meta()`), saying what differs. The codes must be the ones it
    reads (the tokenizer's own); with `targets` (resuming training) also the ones it predicts."""
    pairs = [("tokenizer_id", cfg.tokenizer_id, meta.tokenizer_id), ("frame_rate", cfg.frame_rate, meta.frame_rate)]
    if cfg.reads_codes or (targets and cfg.target_kind == "codes"):
        pairs += [("codes_source", "" if not targets else cfg.codes_source, meta.codes_source),
                  ("codebook_size", cfg.codebook_size, meta.codebook_size),
                  ("num_codebooks", cfg.num_codebooks, meta.num_codebooks)]
    for key, want, got in pairs:
        if want != got:
            if key == "codes_source" and not targets:
                raise CheckpointError(f"{where}: holds second-round codes ({got}); this prior reads the tokenizer's "
                                      "codes (a prior can predict second-round codes, model.inputs=frames, but "
                                      "not read them: no tokenizer turns new audio into them)")
            raise CheckpointError(f"{where}: prior was trained on tokenizer {cfg.tokenizer_id} but got tokenizer "
                                  f"{meta.tokenizer_id} ({key}: {want!r} != {got!r})")


def load_prior(folder: str | Path, device: str = "cpu", tokenizer=None) -> Prior:
    """Rebuild a prior in eval mode; with `tokenizer`, check it is the one the prior was trained on."""
    cfg = read_prior_config(folder)
    if tokenizer is not None:
        check_tokenizer(cfg, tokenizer.store_meta(), folder)
    model = Prior(cfg)
    load_model_weights(model, folder)
    return model.to(device).eval()
