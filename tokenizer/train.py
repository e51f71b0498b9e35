"""Train the VQ-VAE tokenizer. One function, read top to bottom (nanoGPT-style).

    musetok train-tokenizer --config small --audio DIR_OR_MANIFEST --out DIR [--resume] [--set k=v]

Writes to DIR: the model folder (config.json, model.safetensors, normalizer.json), run_config.json,
train_state.pt (for --resume), metrics.jsonl, reconstruction.png and codebook_usage.png.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from musetok.shared import distributed, training
from musetok.shared.audio import AudioError, list_audio
from musetok.shared.config import check, to_dict
from musetok.shared.model_card import write_model_card
from musetok.shared.normalize import MelStats, MelStatsAccumulator
from musetok.shared.plots import plot_codebook_usage, plot_reconstruction
from musetok.tokenizer.builder import NORMALIZER_FILE, build_tokenizer, save_tokenizer, tokenizer_id
from musetok.tokenizer.config import TokenizerConfig
from musetok.tokenizer.data import SegmentSource
from musetok.tokenizer.features import Featurizer

log = logging.getLogger("musetok")


@dataclass
class TokenizerTrainConfig(training.LoopConfig):
    lr: float = 1e-3
    segment_seconds: float = 2.0
    valid_segments: int = 32
    cache_hours: float = 4.0        # keep the training set's features in RAM if the corpus is this short
    stats_max_files: int = 200      # files (a random sample across the corpus) for the mel normalisation

    def __post_init__(self):
        super().__post_init__()
        check(self.segment_seconds > 0, "train.segment_seconds", "must be positive")
        check(self.stats_max_files > 0, "train.stats_max_files", "must be positive")


@dataclass
class TokenizerTrainResult:
    """What a training run produced. `valid_recon_loss` is the last validation loss."""

    out: Path
    steps: int
    tokenizer_id: str
    valid_recon_loss: float
    valid_usage: list[float]          # % of codes used on the validation set, per codebook
    train_files: int
    skipped_files: dict[str, str]


@dataclass
class TokenizerRunConfig:
    model: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TokenizerTrainConfig = field(default_factory=TokenizerTrainConfig)


def code_stats(codes: torch.Tensor, codebook_size: int) -> tuple[np.ndarray, list[float], list[float]]:
    """codes `(B, K, T)` -> counts `(K, codebook_size)`, usage % per codebook, perplexity per codebook."""
    k = codes.shape[1]
    flat = codes.transpose(0, 1).reshape(k, -1).cpu()
    counts = np.stack([torch.bincount(flat[i], minlength=codebook_size).numpy() for i in range(k)])
    p = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    ent = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(1)
    return counts, [float(u) for u in (counts > 0).mean(1) * 100], [float(v) for v in np.exp(ent)]


def stats_sample(files: list[str], max_files: int, seed: int) -> list[str]:
    """The files the normaliser is fitted on: a seeded random sample across the whole corpus (not the first
    `max_files` in sorted order, which would be one artist or one folder of a large corpus)."""
    if len(files) <= max_files:
        return list(files)
    pick = np.random.default_rng([seed, 7]).choice(len(files), size=max_files, replace=False)
    return [files[i] for i in sorted(pick)]


def compute_mel_stats(source: SegmentSource, max_files: int, seed: int) -> MelStats:
    acc = MelStatsAccumulator(source.fz.cfg.mel.n_mels)
    for rel in stats_sample(source.files, max_files, seed):
        x = source.cache[rel] if source.cache is not None else source.fz.file(source.corpus.path(rel))
        acc.add(x)
    return acc.result()


def train_tokenizer(run: TokenizerRunConfig, audio: str | Path, out: str | Path, resume: bool = False,
                    progress: bool = True, stop_at: int | None = None) -> TokenizerTrainResult:
    """Train (or with `resume`, continue) a tokenizer; `stop_at` ends this run early at that step with a
    checkpoint, keeping the schedule of `train.steps` (for time-limited jobs). The `out` folder is locked
    for the run: a second process writing to it is refused."""
    with training.run_lock(out):
        return _train_tokenizer(run, audio, out, resume, progress, stop_at)


def _train_tokenizer(run: TokenizerRunConfig, audio: str | Path, out: str | Path, resume: bool, progress: bool,
                     stop_at: int | None) -> TokenizerTrainResult:
    tc, mc = run.train, run.model
    r = training.start_run(out, resume, tc)
    out, d, device = r.out, r.dist, r.device

    # -- data: split by file, segments sampled per step from (seed, step) --------------------------
    corpus = list_audio(audio)
    train_files, valid_files = training.split_files(corpus.files, tc.valid_fraction, tc.seed, "tokenizer")
    fz = Featurizer(mc)
    train_src = SegmentSource(corpus, train_files, fz, tc.segment_seconds, tc.cache_hours)
    if not train_src.files:
        raise AudioError(audio, "no usable audio files to train on")
    valid_src = train_src if valid_files == train_files else \
        SegmentSource(corpus, valid_files, fz, tc.segment_seconds, tc.cache_hours)
    if not valid_src.files:
        log.warning("train-tokenizer: no usable held-out files: validating on the training files")
        valid_src = train_src
    if d.is_main:
        log.info("tokenizer data: %d train files (%.2f h), %d valid files%s", len(train_src.files),
                 train_src.hours, len(valid_src.files), f"; {d.world} processes" if d.enabled else "")

    # -- model, optimizer, state -------------------------------------------------------------------
    stats = None
    if mc.input == "mel":
        stats = MelStats.load(out / NORMALIZER_FILE) if resume else \
            compute_mel_stats(train_src, tc.stats_max_files, tc.seed)
    model = build_tokenizer(mc, stats).to(device)  # after init: the VQ syncs its codebooks when distributed
    opt = training.make_optimizer(model, tc.lr, tc.weight_decay)
    step, wrapped, metrics = training.open_state(r, model, opt, resume, to_dict(run))
    n_valid = math.ceil(tc.valid_segments / tc.batch_size)
    valid_batches = [valid_src.batch(tc.seed + 1, i, tc.batch_size) for i in range(n_valid)]
    last_valid: dict = {}

    def forward(batch: torch.Tensor) -> training.StepOutput:  # batch: this rank's (B / world, C, N)
        o = wrapped(batch)
        return training.StepOutput(o.loss, info=o)

    def train_metrics(outs: list[training.StepOutput]) -> dict:
        o = outs[-1].info
        _, usage, ppl = code_stats(o.codes, mc.codebook_size)
        return dict(recon_loss=o.recon_loss.item(), commit_loss=o.commit_loss.item(),
                    usage=[round(u, 2) for u in usage], perplexity=[round(p, 2) for p in ppl])

    def validate() -> dict:
        """On rank 0 only, with the unwrapped model (DDP's forward would wait for the other ranks)."""
        model.eval()
        losses, codes = [], []
        with torch.no_grad():
            for b in valid_batches:
                o = model(b.to(device))
                losses.append(o.recon_loss.item())
                codes.append(o.codes)
        model.train()
        counts, usage, ppl = code_stats(torch.cat(codes), mc.codebook_size)
        last_valid.update(loss=float(np.mean(losses)), counts=counts, usage=usage)
        return dict(recon_loss=last_valid["loss"], usage=[round(u, 2) for u in usage],
                    perplexity=[round(p, 2) for p in ppl])

    # -- the loop ----------------------------------------------------------------------------------
    step = training.run_steps(tc, r, model, wrapped, opt, train_src, step, stop_at, forward, train_metrics, validate,
                              lambda folder: save_tokenizer(folder, model), metrics, "train-tokenizer", progress)
    if not d.is_main:
        distributed.shutdown(d)
        return TokenizerTrainResult(out, step, "", float("nan"), [], len(train_src.files), {})

    # -- plots of the final model ------------------------------------------------------------------
    if not last_valid:  # nothing left to run (resumed at the end)
        validate()
    plot_codebook_usage(out / "codebook_usage.png", last_valid["counts"])
    model.eval()
    with torch.no_grad():
        x = valid_batches[0][:1].to(device)
        o = model(x)
        if mc.input == "mel":
            orig, dec = x[0].cpu().numpy(), o.recon[0].cpu().numpy()
        else:  # show the waveform model's input and output as log-mel too
            orig = fz.array(x[0, 0].cpu().numpy())
            dec = fz.array(o.recon[0, 0].cpu().numpy())
    plot_reconstruction(out / "reconstruction.png", orig, dec, mc.mel.frame_rate,
                        f"validation segment, recon loss {last_valid['loss']:.4f}")
    tok_id = tokenizer_id(model)
    write_model_card(out, f"musetok tokenizer {tok_id}",
                     f"A {mc.input} VQ-VAE tokenizer trained with musetok: {mc.num_codebooks} codebook(s) of "
                     f"{mc.codebook_size} codes at {mc.frame_rate:.2f} Hz.",
                     {"trained on": f"{len(train_src.files)} files, {train_src.hours:.2f} h ({audio}); "
                                    f"{len(valid_src.files)} files held out",
                      "steps": f"{step} of {tc.steps}, batch {tc.batch_size} x {tc.segment_seconds:g} s",
                      "validation reconstruction loss": f"{last_valid['loss']:.4f}",
                      "codebook usage (validation)": ", ".join(f"{u:.0f}%" for u in last_valid["usage"]),
                      "tokenizer id": tok_id, "sample rate": f"{mc.mel.sample_rate} Hz"},
                     f'from musetok.tokenizer import load_tokenizer\n\ntok = load_tokenizer("{out.name}")')
    distributed.shutdown(d)
    return TokenizerTrainResult(out, step, tok_id, last_valid["loss"], last_valid["usage"],
                                len(train_src.files), {**train_src.bad, **valid_src.bad})
