"""Pretrain the transformer prior on a token store. One function, read top to bottom.

    musetok pretrain --config small --store STORE --out DIR [--resume] [--set k=v]

Writes to DIR: the model folder (config.json, model.safetensors), run_config.json, train_state.pt
(model, optimizer, RNG, step: for an exact --resume), metrics.jsonl and training_curve.png.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from musetok.prior.builder import bind_to_store, check_tokenizer, read_prior_config, save_prior
from musetok.prior.config import PriorConfig
from musetok.prior.data import WindowSource
from musetok.prior.model import Prior
from musetok.prior.objectives import compute_loss
from musetok.shared import distributed, training
from musetok.shared.config import ConfigError, check, to_dict
from musetok.shared.model_card import write_model_card
from musetok.shared.plots import plot_curves
from musetok.shared.token_store import TokenStore

log = logging.getLogger("musetok")


@dataclass
class PriorTrainConfig(training.LoopConfig):
    weight_decay: float = 0.1
    valid_batches: int = 8
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"   # auto: bf16 autocast on GPU and AMX CPUs, else fp32
    compile: bool = False
    # > 0: the prior saved (and validated, and embedded with) is an exponential moving average of the weights
    # trained, at this decay per step (bias-corrected; `training.weight_average`). 0: the last weights.
    ema_decay: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        check(0.0 <= self.ema_decay < 1.0, "train.ema_decay", "must be in [0, 1)")


@dataclass
class PriorRunConfig:
    model: PriorConfig = field(default_factory=PriorConfig)
    train: PriorTrainConfig = field(default_factory=PriorTrainConfig)

    def __post_init__(self):
        # Refused here, when the config is read, not at the first step: an MAE prior keeps a different number of
        # positions in every batch, a data-dependent size that torch.compile cannot trace.
        check(not (self.train.compile and self.model.decoder_layers), "train.compile",
              "cannot trace a prior with model.decoder_layers > 0 (it keeps a different number of positions in "
              "every batch): set train.compile: false, or model.decoder_layers: 0")


@dataclass
class PriorTrainResult:
    """What a run produced: the last validation loss (and, for code targets, accuracy and perplexity)."""

    out: Path
    steps: int
    valid_loss: float
    valid_accuracy: float | None     # discrete objectives: masked / next code accuracy
    valid_perplexity: float | None


def train_prior(run: PriorRunConfig, store_dir: str | Path, out: str | Path, resume: bool = False,
                progress: bool = True, stop_at: int | None = None, tokenizer=None) -> PriorTrainResult:
    """Train (or continue, with `resume`) a prior; `stop_at` ends this run early with a checkpoint. The `out`
    folder is locked for the run: a second process writing to it is refused. `tokenizer`: the store's own (a
    loaded mel tokenizer), needed only to re-encode transposed windows
    (`model.pitch_shift_codes: recoded` or `both`)."""
    with training.run_lock(out):
        return _train_prior(run, store_dir, out, resume, progress, stop_at, tokenizer)


def recoder(tokenizer, store: TokenStore, store_dir: str | Path, mode: str):
    """The store's tokenizer as a function of normalised stacked frames `(n, F)` -> codes `(K, n)`, on the CPU in
    fp32 beside the data (a one-line error, naming `model.pitch_shift_codes: <mode>`, when it is missing or is
    another tokenizer)."""
    where = Path(store_dir) / "meta.json"
    if tokenizer is None:
        raise ConfigError(f"model.pitch_shift_codes: {mode} re-encodes transposed windows with the store's tokenizer: "
                          "pass it (`musetok pretrain --tokenizer DIR`)")
    if not hasattr(tokenizer, "encode_frames"):
        raise ConfigError(f"model.pitch_shift_codes: {mode} needs a mel tokenizer, not a {tokenizer.cfg.input} one")
    if store.meta.codes_source:
        raise ConfigError(f"{where}: holds second-round codes ({store.meta.codes_source}), which no tokenizer "
                          f"re-encodes; model.pitch_shift_codes: {mode} needs the tokenizer's own store")
    if tokenizer.tokenizer_id != store.meta.tokenizer_id:
        raise ConfigError(f"{where}: the store holds the codes of tokenizer {store.meta.tokenizer_id}, not of the "
                          f"tokenizer given to re-encode them ({tokenizer.tokenizer_id})")
    model = tokenizer.float().cpu().eval()

    def recode(frames):
        return model.encode_frames(torch.from_numpy(frames)[None])[0].numpy()
    return recode


def _train_prior(run: PriorRunConfig, store_dir: str | Path, out: str | Path, resume: bool, progress: bool,
                 stop_at: int | None, tokenizer) -> PriorTrainResult:
    tc = run.train
    store = TokenStore(store_dir)
    if len(store) == 0:
        raise ConfigError(f"{store_dir}: the token store has no items to train on")
    mc = bind_to_store(run.model, store.meta, store.level_db)
    if mc.conv_harmonics and not store.meta.frames_pitch_class:
        raise ConfigError(f"{Path(store_dir) / 'meta.json'}: model.conv_harmonics stacks bands whole semitones "
                          "apart, which needs a store of a semitone tokenizer (mel.scale: semitone)")
    check_tokenizer(mc, store.meta, store_dir)  # a prior reads the tokenizer's codes, never second-round ones
    if resume:  # the run's checkpoint must come from a store of the same tokenizer and codes
        check_tokenizer(read_prior_config(out), store.meta, store_dir, targets=True)
    recode = recoder(tokenizer, store, store_dir, mc.pitch_shift_codes) if mc.recodes else None
    r = training.start_run(out, resume, tc)
    out, d, device = r.out, r.dist, r.device
    amp = training.autocast_dtype(tc.dtype, device)
    autocast = torch.autocast(device.type, dtype=amp) if amp is not None else None
    precision = ("bf16 autocast" if amp is not None else "fp32") + f" on {device.type}"

    # -- data: windows from the store, split by file ----------------------------------------------
    paths = [e.path for e in store.items]
    train_paths, valid_paths = training.split_files(paths, tc.valid_fraction, tc.seed, "pretrain")
    pos = {p: i for i, p in enumerate(paths)}
    if mc.aux_contrast > 0 and (tc.batch_size // d.world) % 2:
        raise ConfigError(f"model.aux_contrast pairs the windows of a batch: train.batch_size {tc.batch_size} must "
                          f"give each of the {d.world} processes an even number")
    train_src, valid_src = (WindowSource(store, [pos[p] for p in part], mc.max_len, mc.uses_codes, mc.uses_frames,
                                         mc.aux_chroma > 0, mix, pairs=mc.aux_contrast > 0, shift=shift,
                                         recode=recode if shift else None, views=mc.code_views, gain_db=gain)
                            for part, mix, shift, gain in ((train_paths, (mc.mix_prob, mc.mix_db), mc.pitch_shift,
                                                            mc.gain_db),
                                                           (valid_paths, None, 0, 0.0)))  # validation stays clean
    if d.is_main:
        log.info("prior data: %d train files (%d frames), %d valid files; objective %s (%s -> %s); %s%s",
                 len(train_paths), train_src.frames_total, len(valid_paths), mc.objective, mc.input_kind,
                 mc.target_kind, precision,
                 f"; {d.world} processes" if d.enabled else "")

    # -- model, optimizer, state -------------------------------------------------------------------
    model = Prior(mc).to(device)
    opt = training.make_optimizer(model, tc.lr, tc.weight_decay)
    average = training.weight_average(model, tc.ema_decay)
    saved = average.module if average is not None else model  # what is validated, saved and embedded with
    step, wrapped, metrics = training.open_state(r, model, opt, resume, to_dict(PriorRunConfig(mc, tc)), average)
    fwd_model = torch.compile(wrapped) if tc.compile else wrapped
    valid_batches = [valid_src.batch(tc.seed + 1, i, tc.batch_size) for i in range(tc.valid_batches)]
    last_valid = {"loss": float("nan"), "accuracy": None, "perplexity": None}

    def forward(batch) -> training.StepOutput:
        o = compute_loss(fwd_model, batch)
        return training.StepOutput(o.loss, o.targets, o)

    def train_metrics(outs: list[training.StepOutput]) -> dict:
        if not mc.predicts_codes:
            return {}
        scored = sum(o.scored for o in outs) * mc.target_codebooks[0]
        return {"accuracy": sum(o.info.correct for o in outs) / max(scored, 1)}

    def validate() -> dict:
        """On rank 0 only, with the unwrapped model (DDP's forward would wait for the other ranks)."""
        saved.eval()
        total, ce, n, correct = 0.0, 0.0, 0, 0
        with torch.no_grad(), autocast or contextlib.nullcontext():
            for b in valid_batches:
                o = compute_loss(saved, b.to(device))
                total += o.loss.item() * o.targets
                ce += o.cross_entropy * o.targets
                n += o.targets
                correct += o.correct
        saved.train()
        loss = total / max(n, 1)
        accuracy = correct / max(n * mc.target_codebooks[0], 1) if mc.predicts_codes else None
        perplexity = math.exp(min(ce / max(n, 1), 50)) if mc.predicts_codes else None  # of the codes alone (no aux)
        last_valid.update(loss=loss, accuracy=accuracy, perplexity=perplexity)
        if not mc.predicts_codes:
            return {"valid_loss": loss}
        return {"valid_loss": loss, "valid_accuracy": accuracy, "valid_perplexity": perplexity}

    # -- the loop ----------------------------------------------------------------------------------
    step = training.run_steps(tc, r, model, wrapped, opt, train_src, step, stop_at, forward, train_metrics, validate,
                              lambda folder: save_prior(folder, saved), metrics, f"pretrain ({mc.objective})",
                              progress, autocast, average)
    if not d.is_main:
        distributed.shutdown(d)
        return PriorTrainResult(out, step, float("nan"), None, None)
    if last_valid["loss"] != last_valid["loss"]:  # NaN: nothing left to run (resumed at the end)
        validate()
    plot_curves(out / "training_curve.png", training.read_metrics(out / training.METRICS_FILE),
                ["loss", "valid_loss"], f"prior ({mc.objective})")
    loss = last_valid["loss"]
    metrics_txt = f"loss {loss:.4f}" + (f", accuracy {last_valid['accuracy']:.3f}" if mc.predicts_codes else "")
    write_model_card(out, f"musetok prior ({mc.objective})",
                     f"A transformer prior ({mc.layers} layers x {mc.dim}, context {mc.max_len} frames) trained "
                     f"with musetok's `{mc.objective}` objective on the token store of tokenizer {mc.tokenizer_id}. "
                     "Its hidden states are music embeddings.",
                     {"trained on": f"{len(train_paths)} files, {store.hours:.2f} h in the store ({store_dir}); "
                                    f"{len(valid_paths)} files for validation",
                      "steps": f"{step} of {tc.steps}, batch {tc.batch_size} x {mc.max_len} frames",
                      "precision": precision,
                      **({"weights": f"an exponential moving average of the weights trained (decay {tc.ema_decay:g} "
                                     "per step, bias-corrected)"} if average is not None else {}),
                      "reads -> predicts": f"{mc.input_kind} -> {mc.target_kind}" +
                                           "".join(f" + {w:g} x {name}" for name, w in
                                                   (("frames" + (f" (from layer {mc.aux_frames_layer})"
                                                                if mc.aux_frames_layer else ""), mc.aux_frames),
                                                    ("unmasked frames", mc.aux_visible), ("chroma", mc.aux_chroma),
                                                    ("random-projection codes", mc.aux_random),
                                                    (f"EMA teacher's top {mc.teacher_layers} layers (decay "
                                                     f"{mc.teacher_decay:g})", mc.aux_teacher),
                                                    (f"decorrelation of layer {mc.aux_decorr_layer}", mc.aux_decorr),
                                                    (f"{mc.band_mask_width} bands hidden at {mc.band_mask_rate:.0%} of "
                                                     "the unmasked frames", mc.aux_bands),
                                                    ("the other window of its recording (contrastive, temperature "
                                                     f"{mc.contrast_temperature:g})", mc.aux_contrast)) if w > 0)
                                           + (f"; {mc.mix_prob:.0%} of training windows heard with another mixed in "
                                              f"at +-{mc.mix_db:g} dB" if mc.mix_prob > 0 else "")
                                           + (f"; training windows transposed by up to +-{mc.pitch_shift} semitones"
                                              + {"kept": "", "recoded": ", their code targets re-encoded by the "
                                                 "tokenizer", "both": ", the kept and the re-encoded code targets "
                                                 "each through a head of its own"}[mc.pitch_shift_codes]
                                              if mc.pitch_shift else "")
                                           + (f"; training windows heard up to +-{mc.gain_db:g} dB louder or quieter"
                                              if mc.gain_db else "")
                                           + ("; masked frames read as noise" if mc.mask_fill == "noise" else "")
                                           + (f"; masked frames left out of the first {mc.layers - mc.decoder_layers} "
                                              f"blocks, joining at the last {mc.decoder_layers} (MAE)"
                                              if mc.decoder_layers else "")
                                           + {"learned": "", "fixed": "; frames through a fixed random orthogonal "
                                              "projection", "split": "; frames through a fixed random orthogonal "
                                              "projection beside a learned one (half the width each)"}[mc.input_proj]
                                           + (("; plus a convolution along their bands" if mc.conv_layers == 1 else
                                               f"; plus {mc.conv_layers} stacked convolutions along their bands")
                                              + (" (its map to the width fixed at random)" if mc.conv_out_fixed else "")
                                              if mc.frame_conv else "")
                                           + (f" and their harmonics {', '.join(f'{h:g}' for h in mc.conv_harmonics)}"
                                              if mc.conv_harmonics else ""),
                      "validation": metrics_txt, "tokenizer id": mc.tokenizer_id,
                      "frame rate": f"{mc.frame_rate:.2f} Hz",
                      "level": (f"its audio's median RMS is {mc.corpus_level_db:.1f} dBFS; the embedder brings each "
                                "clip to it first (`level_db`)" if mc.corpus_level_db is not None else
                                "not recorded (a store written before levels were); the embedder reads each clip "
                                "at its own level")},
                     'from musetok.embedding import Embedder\n\n'
                     f'emb = Embedder.from_pretrained("TOKENIZER_FOLDER", "{out.name}")')
    distributed.shutdown(d)
    return PriorTrainResult(out, step, loss, last_valid["accuracy"], last_valid["perplexity"])
