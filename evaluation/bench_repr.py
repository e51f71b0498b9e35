"""The representation benchmark: `musetok bench-repr`. Inductive, several splits, equal pooling, one command.

For each suite (the synthetic one always; the real-music dev kit when `--data` points at it):

1. pretrain: the `small` tokenizer on the suite's pretraining audio, the token store (codes and
   spectrogram frames), and `small` priors with the same steps, batch, width, depth and context (checked,
   and stated in the table). By default three (`DEFAULT_PRIORS`): the recommended `small` prior (frames ->
   codes + frames, with a convolution along the bands beside the learned projection and the masked frames left
   out of its lower blocks, MAE-style), codes -> codes
   (`mlm`, the Jukebox route) and frames -> frames (the continuous `masked_frames` control); `--priors`
   adds the same recipe without the convolution, frames -> codes, frames -> BEST-RQ random-projection codes,
   frames -> second-round codes (HuBERT: k-means on the trained recommended prior's middle layer) and the
   recommended prior with MERT's chroma target beside its own (`frames_codes_chroma`), and the recommended
   prior trained on windows with others mixed in (`frames_codes_mix`, WavLM / MERT) or reading its masked
   frames as noise (`frames_codes_noise`, MusicFM / MuQ), and the control with that fill (`frames_noise`), and
   both with a frozen random orthogonal input projection (`frames_codes_fixed`, `frames_fixed`) or with one
   beside a learned one, half the width each (`frames_codes_split`, `frames_split`);
2. probe sets whose audio the tokenizer, its normaliser and the priors never saw (checked by path and
   by content hash: the benchmark refuses to run otherwise);
3. rows, all pooled over time the same way (`--pool`; by default mean, standard deviation and maximum,
   `meanstdmax`, what `musetok embed` writes): every prior per
   layer, and the mean and the concatenation of its layers (the candidate chosen on validation), the
   codes -> codes and the recommended prior with random weights, bag of codes (code histogram),
   MFCC(+delta), log-mel and CQT-chroma statistics, and the priors' own input (the tokenizer's front-end
   spectrogram, e.g. log-semitone) pooled alike: what pretraining must add to;
4. linear probes on `splits` grouped, stratified splits (a piece, a note, or for the unseen-program
   tasks a whole program stays in one split); layers and settings chosen on validation log-loss;
   each cell is the test metric's mean ± std over the splits.

Writes OUT/bench.md (the table, configs, seeds, wall times), OUT/bench.csv (one row per cell and
split), OUT/bench.json (everything, with file hashes) and OUT/layers_<suite>_<task>.png.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from musetok.demo.corpus import DemoCorpusConfig, make_demo_corpus
from musetok.demo.notes import NoteSetConfig, make_note_set
from musetok.embedding import Embedder
from musetok.embedding.embedder import DEFAULT_POOL, POOL_LABELS, POOLS, pool_frames
from musetok.embedding.relabel import relabel_store
from musetok.evaluation.baselines import bag_of_codes, handcrafted_features
from musetok.evaluation.evaluate import slug
from musetok.evaluation.probe import PRIMARY, Labels, make_split, probe_layers
from musetok.prior.builder import build_prior_for_store
from musetok.prior.config import PriorConfig
from musetok.prior.train import PriorRunConfig, train_prior
from musetok.shared.audio import AUTO_LEVEL, corpus_level, file_level, is_auto_level, list_audio, resolve_level
from musetok.shared.config import ConfigError, from_dict, load_config, to_dict
from musetok.shared.distributed import pick_device
from musetok.shared.errors import UserError
from musetok.shared.io import STATE_FILE, file_sha1, write_json
from musetok.shared.plots import plot_layer_curves
from musetok.shared.token_store import TokenStore
from musetok.shared.training import autocast_dtype
from musetok.tokenizer.builder import load_tokenizer
from musetok.tokenizer.encode_corpus import tokenize_corpus
from musetok.tokenizer.train import TokenizerRunConfig, train_tokenizer

log = logging.getLogger("musetok")
# The priors the benchmark can train, all with the `small` config at equal compute: name -> (settings, row).
# `frames` (the continuous control) is always trained.
# Every preset names its front-end (`model.frame_conv`, `model.conv_channels`) and whether every block reads every
# frame (`model.decoder_layers`), so each means what it meant when it was measured, whatever small.yaml ships.
PRIORS = {name: ([f"model.objective={o}", f"model.inputs={i}", f"model.targets={t}", f"model.aux_frames={a}",
                  "model.frame_conv=false", "model.conv_channels=32", "model.decoder_layers=0"], row)
          for name, (o, i, t, a, row) in {
    "codes": ("mlm", "codes", "codes", 0.0, "prior: codes -> codes (mlm)"),
    "frames_codes": ("mlm", "frames", "codes", 0.0, "prior: frames -> codes (mlm)"),
    "frames_random": ("mlm", "frames", "random", 0.0, "prior: frames -> random-projection codes (BEST-RQ)"),
    "frames_codes_aux": ("mlm", "frames", "codes", 1.0, "prior: frames -> codes + frames (mlm, MERT-style)"),
    "frames": ("masked_frames", "frames", "frames", 0.0, "prior: frames -> frames (masked_frames)"),
}.items()}


def _variant(base: str, *settings: str, row: str) -> tuple[list[str], str]:
    """A named prior: `base`'s settings plus more, under its own row name."""
    return PRIORS[base][0] + list(settings), row


# MERT's chroma target on top of the recommended recipe (needs a semitone tokenizer, as `small` ships).
PRIORS["frames_codes_chroma"] = _variant("frames_codes_aux", "model.aux_chroma=1.0",
                                         row="prior: frames -> codes + frames + chroma (mlm, MERT-style)")
# WavLM's utterance mixing / MERT's in-batch noise on top of the recommended recipe: half the training windows
# get a stretch of another mixed in at +-5 dB; the targets stay the clean window's.
PRIORS["frames_codes_mix"] = _variant("frames_codes_aux", "model.mix_prob=0.5",
                                      row="prior: frames -> codes + frames, windows mixed (mlm, WavLM-style)")
# MusicFM / MuQ's masking: the masked frames the recommended prior reads are noise, not 80/10/10 zeros.
PRIORS["frames_codes_noise"] = _variant("frames_codes_aux", "model.mask_fill=noise",
                                        row="prior: frames -> codes + frames, noise-filled masks (mlm, MusicFM-style)")
# The same fill on the continuous control: +0.014 (seed 0) and +0.010 (seed 1) against the control over the 9 cells.
PRIORS["frames_noise"] = _variant("frames", "model.mask_fill=noise",
                                  row="prior: frames -> frames, noise-filled masks (masked_frames, MusicFM-style)")
# A frozen random orthogonal input projection (`model.input_proj: fixed`) on the recommended prior and the control:
# the input layer keeps the frames' every direction. Seed 0: real-music pitch 0.725 -> 0.810, instrument 0.546 -> 0.448.
PRIORS["frames_codes_fixed"] = _variant("frames_codes_aux", "model.input_proj=fixed",
                                        row="prior: frames -> codes + frames, fixed input projection (mlm)")
PRIORS["frames_fixed"] = _variant("frames", "model.input_proj=fixed",
                                  row="prior: frames -> frames, fixed input projection (masked_frames)")
# Both at once (`model.input_proj: split`): half the width the frozen map, half a learned one, side by side.
PRIORS["frames_codes_split"] = _variant("frames_codes_aux", "model.input_proj=split",
                                        row="prior: frames -> codes + frames, fixed + learned input projection (mlm)")
PRIORS["frames_split"] = _variant("frames", "model.input_proj=split",
                                  row="prior: frames -> frames, fixed + learned input projection (masked_frames)")
# MusicFM / MuQ's convolutional front-end, along frequency (`model.frame_conv`): one convolution across each
# frame's bands, its filters shared by every pitch, beside the learned map (32 channels: +0.004 to +0.016 over the
# 9 cells against frames_codes_aux in 5 runs at 2 seeds; `small` ships it with 16, below) and the control.
PRIORS["frames_codes_conv"] = _variant("frames_codes_aux", "model.frame_conv=true",
                                       row="prior: frames -> codes + frames, conv front-end (mlm)")
PRIORS["frames_conv"] = _variant("frames", "model.frame_conv=true",
                                 row="prior: frames -> frames, conv front-end (masked_frames)")
# Cheaper convolutions (the conv front-end's flattened map, 32 channels x 50 positions -> dim, is most of its cost):
# half the channels (what `small` ships since 2026-12-06: level with 32 at 2 seeds, at 40% of the convolution's
# cost), or half the positions (a stride of 4 semitones; the kernel still spans 7 bands: -0.011 over the 9 cells).
PRIORS["frames_codes_conv16"] = _variant("frames_codes_conv", "model.conv_channels=16",
                                         row="prior: frames -> codes + frames, conv front-end, 16 channels (mlm)")
# Half the recommended prior's channels: the convolution is about a tenth of its bf16 step. Measured: the step 1.083x
# eager HF BERT against 1.053x, but -0.003 over the 9 cells (benchmarks/levers.md), so `small` keeps 16.
PRIORS["frames_codes_conv8"] = _variant("frames_codes_conv", "model.conv_channels=8",
                                        row="prior: frames -> codes + frames, conv front-end, 8 channels (mlm)")
# Two convolutions along the bands instead of one (MusicFM / MuQ stack two), the recommended prior otherwise.
PRIORS["frames_codes_conv16_2l"] = _variant("frames_codes_conv16", "model.conv_layers=2",
                                            row="prior: frames -> codes + frames, two conv layers, 16 channels (mlm)")
# The recommended prior's convolution at stride 1: every band a position of the map (100 x 16 features, not 50 x 16).
PRIORS["frames_codes_conv16_s1"] = _variant("frames_codes_conv16", "model.conv_stride=1",
                                            row="prior: frames -> codes + frames, conv front-end at stride 1, 16 "
                                                "channels (mlm)")
# The recommended prior with its convolution's linear map to the width frozen at its random init.
PRIORS["frames_codes_conv16_outfixed"] = _variant("frames_codes_conv16", "model.conv_out_fixed=true",
                                                  row="prior: frames -> codes + frames, conv front-end, 16 channels, "
                                                      "fixed map to the width (mlm)")
# The recommended prior trained on windows transposed by up to +-4 semitones (`model.pitch_shift`: its frames moved
# along the semitone bands, the code targets kept): pitch-shift augmentation, for more pitches of every sound.
PRIORS["frames_codes_conv16_shift"] = _variant("frames_codes_conv16", "model.pitch_shift=4",
                                               row="prior: frames -> codes + frames, conv front-end, 16 channels, "
                                                   "windows transposed +-4 semitones (mlm)")
PRIORS["frames_codes_conv16_shift1"] = _variant("frames_codes_conv16", "model.pitch_shift=1",
                                                row="prior: frames -> codes + frames, conv front-end, 16 channels, "
                                                    "windows transposed +-1 semitone (mlm)")
PRIORS["frames_codes_conv16_shift2"] = _variant("frames_codes_conv16", "model.pitch_shift=2",
                                                row="prior: frames -> codes + frames, conv front-end, 16 channels, "
                                                    "windows transposed +-2 semitones (mlm)")
# MERT's chroma target on the recommended prior, and on it with pitch shift: the codes ask for a timbre that does not
# move with pitch, the chroma (computed from the moved frames) for pitch classes that do. Pitch shift cost synthetic
# key at both seeds; this asks whether a target that moves with the shift gives it back.
PRIORS["frames_codes_conv16_chroma"] = _variant("frames_codes_conv16", "model.aux_chroma=1.0",
                                                row="prior: frames -> codes + frames + chroma, conv front-end, 16 "
                                                    "channels (mlm)")
PRIORS["frames_codes_conv16_shift2_chroma"] = _variant("frames_codes_conv16_shift2", "model.aux_chroma=1.0",
                                                       row="prior: frames -> codes + frames + chroma, conv front-end, "
                                                           "16 channels, windows transposed +-2 semitones (mlm)")
# Pitch shift with code targets that move too: each transposed window re-encoded by the tokenizer. The kept codes ask
# for features that ignore absolute pitch (the codes' validation accuracy fell 0.608 -> 0.502, synthetic key -0.161
# at seed 1); these ask for what the shifted sound is, so the shift only adds pitches of every sound.
PRIORS["frames_codes_conv16_shift2_recode"] = _variant("frames_codes_conv16_shift2", "model.pitch_shift_codes=recoded",
                                                       row="prior: frames -> codes + frames, conv front-end, 16 "
                                                           "channels, windows transposed +-2 semitones and their "
                                                           "codes re-encoded (mlm)")
# Both at once, each through a head of its own: the kept codes (the timbre gain of the shift) and the re-encoded ones
# (which gave key back, and took the timbre gain with them when they replaced the kept ones).
PRIORS["frames_codes_conv16_shift2_both"] = _variant("frames_codes_conv16_shift2", "model.pitch_shift_codes=both",
                                                     row="prior: frames -> codes + frames, conv front-end, 16 "
                                                         "channels, windows transposed +-2 semitones, their kept "
                                                         "and re-encoded codes each a target (mlm)")
PRIORS["frames_codes_conv_s4"] = _variant("frames_codes_conv", "model.conv_stride=4",
                                          row="prior: frames -> codes + frames, conv front-end, stride 4 (mlm)")
# The convolution over harmonically stacked bands (Bittner et al.'s HCQT, as deep-salience pitch trackers read it):
# each band beside the bands of its harmonics 0.5-5, so one filter matches a note's partials at every pitch.
PRIORS["frames_codes_hconv"] = _variant("frames_codes_aux", "model.frame_conv=true",
                                        "model.conv_harmonics=[0.5,1,2,3,4,5]",
                                        row="prior: frames -> codes + frames, harmonic conv front-end (mlm)")
# The convolution beside the frozen map: the frozen map keeps pitch (real-music pitch 0.810 with `fixed` alone),
# the convolution learns timbre that every pitch shares (what the learned map bought at pitch's cost).
PRIORS["frames_codes_fixed_conv"] = _variant("frames_codes_aux", "model.input_proj=fixed", "model.frame_conv=true",
                                             row="prior: frames -> codes + frames, fixed projection + conv (mlm)")
# Regularisation for hours of audio (BERT's and MERT's dropout 0.1), on the residual branches only: dropout on the
# attention weights takes SDPA off its fused CPU kernel (~4x slower attention). The recommended prior and the control.
PRIORS["frames_codes_drop"] = _variant("frames_codes_aux", "model.dropout=0.1", "model.attn_dropout=0.0",
                                       row="prior: frames -> codes + frames, dropout 0.1 (mlm)")
PRIORS["frames_drop"] = _variant("frames", "model.dropout=0.1", "model.attn_dropout=0.0",
                                 row="prior: frames -> frames, dropout 0.1 (masked_frames)")
# Gain augmentation (CLMR's, COLA's): each training window heard up to 20 dB louder or quieter, the code targets kept
# (`model.gain_db`). Music is mastered loud and a prior only ever read that; a clip it embeds may be 30 dB quieter
# (the dev kit's notes run from -69 to -10 dBFS RMS, its music from -29 to -10), which moves every normalised band.
PRIORS["frames_codes_conv16_gain"] = _variant("frames_codes_conv16", "model.gain_db=20",
                                              row="prior: frames -> codes + frames, conv front-end, 16 channels, "
                                                  "windows heard +-20 dB (mlm)")
# The `small` recipe before the masked frames left its lower blocks (2026-12-08): the base of the levers measured on it.
CONV16 = "frames_codes_conv16"
# BEST-RQ's frozen random-projection codes as the targets of the recommended recipe instead of the VQ-VAE's (the
# issue's question: are learned codes worth their training?). The VQ-VAE's codes carry almost no pitch (bag of codes:
# real-music pitch 0.05); a random projection of the semitone frames keeps whatever its 16 directions see.
PRIORS["frames_random_conv16"] = _variant(CONV16, "model.targets=random",
                                          row="prior: frames -> random-projection codes + frames, conv front-end, "
                                              "16 channels (BEST-RQ-style)")
# Both targets (MERT's multi-target idea): the recommended recipe with BEST-RQ's codes as a second cross-entropy
# beside the VQ-VAE's codes and the frames (`model.aux_random`), each with its own head.
PRIORS["frames_codes_conv16_rand"] = _variant(CONV16, "model.aux_random=1.0",
                                              row="prior: frames -> codes + random-projection codes + frames, conv "
                                                  "front-end, 16 channels (mlm)")
# data2vec / M2D's target beside the recommended recipe's: an EMA teacher's normalised top layers over the clean
# window, regressed at the masked frames (`model.aux_teacher`). Contextual targets that carry whatever the teacher
# keeps of pitch and timbre together, where every fixed target so far kept one at the other's cost.
PRIORS["frames_codes_conv16_teacher"] = _variant(CONV16, "model.aux_teacher=1.0",
                                                 row="prior: frames -> codes + frames + EMA teacher, conv front-end, "
                                                     "16 channels (mlm)")
# The frame target from the middle block (`model.aux_frames_layer`), the codes from the last: both targets now shape
# the whole stack, and every lever on them traded real-music pitch for timbre; this gives the lower blocks to the
# spectrum (so pitch) and the upper ones to the codes, and the probe picks its layer per task.
PRIORS["frames_codes_conv16_mid"] = _variant(CONV16, "model.aux_frames_layer=2",
                                             row="prior: frames -> codes + frames from layer 2, conv front-end, "
                                                 "16 channels (mlm)")
# Masked objectives score the masked positions only; nothing asks a visible position to keep its own frame, yet every
# position is visible when a clip is embedded. The frames left unmasked as a second L1 target, from the same head.
PRIORS["frames_codes_conv16_vis"] = _variant(CONV16, "model.aux_visible=1.0",
                                             row="prior: frames -> codes + frames + unmasked frames, conv front-end, "
                                                 "16 channels (mlm)")
# Whitening each layer's states before pooling lifted the prior's real-music pitch from 0.72 to 0.81 (and the
# spectrogram's from 0.78 to 0.82: a probe effect, so not offered). This asks the prior itself for decorrelated
# channels: VICReg's covariance term on its input layer at the visible frames (`model.aux_decorr`).
PRIORS["frames_codes_conv16_decorr"] = _variant(CONV16, "model.aux_decorr=1.0",
                                                row="prior: frames -> codes + frames, decorrelated input layer, conv "
                                                    "front-end, 16 channels (mlm)")
# Masking across the bands as well as across time (Audio-MAE / MSM-MAE's patches): an octave of bands hidden at 30% of
# the unmasked frames, scored by the frame head. Hidden bands can only be filled from the rest of the spectrum, by
# its harmonics, where a masked span in time is filled from its neighbours (`model.aux_bands`).
PRIORS["frames_codes_conv16_bands"] = _variant(CONV16, "model.aux_bands=1.0",
                                               row="prior: frames -> codes + frames + hidden bands, conv front-end, "
                                                   "16 channels (mlm)")
PRIORS["frames_bands"] = _variant("frames", "model.aux_bands=1.0",
                                  row="prior: frames -> frames + hidden bands (masked_frames)")
# The recommended recipe trained exactly as it is, its saved weights an exponential moving average of the weights
# trained (`train.ema_decay`, bias-corrected; DINO found its momentum teacher, an average of the student, the better
# representation throughout training). Training is untouched: only what is saved differs.
PRIORS["frames_codes_conv16_ema"] = _variant(CONV16, "train.ema_decay=0.998",
                                             row="prior: frames -> codes + frames, conv front-end, 16 channels, "
                                                 "weights averaged (mlm)")
PRIORS["frames_ema"] = _variant("frames", "train.ema_decay=0.998",
                                row="prior: frames -> frames, weights averaged (masked_frames)")
# MAE / MAE-AST: the recommended recipe and the control with the masked positions dropped from the lower blocks and
# joining at the last one as a mask embedding (`model.decoder_layers: 1`): the lower blocks never read a corrupted
# input, and a training step skips their work at the masked positions.
PRIORS["frames_codes_conv16_mae"] = _variant(CONV16, "model.decoder_layers=1",
                                             row="prior: frames -> codes + frames, conv front-end, 16 channels, "
                                                 "masked frames at the last block only (mlm, MAE-style)")
# The same at MusicFM / MuQ's mask rate 0.6 (MAE-AST and Audio-MAE mask more). Level (+0.003 +- 0.002 over the 9
# cells, seed 0, bf16), and not faster: the lower blocks read fewer frames, but the last block and the heads twice as
# many (priors trained in 217-229 s against 196-198).
PRIORS["frames_codes_conv16_mae_r60"] = _variant("frames_codes_conv16_mae", "model.mask_rate=0.6",
                                                 row="prior: frames -> codes + frames, conv front-end, 16 channels, "
                                                     "masked frames at the last block only, 60% masked (mlm, "
                                                     "MAE-style)")
# The same with the masked frames joining two blocks from the top instead of one (MAE's decoder is deeper; MAE-AST's
# has 2 layers): the last two blocks read every position. Level (+0.001 +- 0.004, seed 0, bf16).
PRIORS["frames_codes_conv16_mae2"] = _variant("frames_codes_conv16_mae", "model.decoder_layers=2",
                                              row="prior: frames -> codes + frames, conv front-end, 16 channels, "
                                                  "masked frames at the last 2 blocks only (mlm, MAE-style)")
PRIORS["frames_mae"] = _variant("frames", "model.decoder_layers=1",
                                row="prior: frames -> frames, masked frames at the last block only (masked_frames, "
                                    "MAE-style)")
# The prior the `small` configs ship (configs/prior/small.yaml; checked by the tests): MAE since 2026-12-08.
RECOMMENDED = "frames_codes_conv16_mae"
# HuBERT's second round: the recommended prior again, its code targets replaced by k-means on the middle layer of
# the trained recommended prior (`musetok relabel`). Same steps, but it needs the first round trained first.
SECOND_ROUND = "frames_kmeans"
PRIORS[SECOND_ROUND] = _variant(RECOMMENDED, row="prior: frames -> second-round codes + frames (HuBERT)")
# The random-weights controls: the same priors, never trained (the opponents small models must beat).
RANDOM = {"codes": "random-weights prior (codes -> codes)",
          RECOMMENDED: "random-weights prior (" + PRIORS[RECOMMENDED][1].split(": ", 1)[1] + ")"}
# Trained by default: the Jukebox route, the recommended prior and the continuous control (more: --priors).
DEFAULT_PRIORS = ("codes", RECOMMENDED, "frames")
# The hand-crafted rows a prior must beat (issue 11's bar): clip statistics from audio, and the priors' own input
# (a row named "<scale> spectrogram" + FRONTEND), each named with its pooling's label (`handcrafted_rows`).
HANDCRAFTED = ("mfcc+delta", "log-mel", "chroma (CQT)")
FRONTEND = " (the priors' input)"


def handcrafted_rows(pool: str = DEFAULT_POOL) -> tuple[str, ...]:
    """The audio feature rows' names for a pooling, e.g. "mfcc+delta mean/std/max"."""
    return tuple(f"{h} {POOL_LABELS[pool]}" for h in HANDCRAFTED)


# Clip embeddings from several layers, offered to the probe beside each single layer (HEAR-style).
COMBINED = ("mean of layers", "concat of layers")


@dataclass(frozen=True)
class BenchSizes:
    """How much audio and how many steps. `None` steps keep the `small` configs' own."""

    pretrain_pieces: int = 160
    probe_pieces: int = 160
    piece_seconds: float = 8.0
    notes: NoteSetConfig = field(default_factory=NoteSetConfig)
    tokenizer_steps: int | None = None
    prior_steps: int | None = None
    splits: int = 3


FULL = BenchSizes()
DEMO = BenchSizes(pretrain_pieces=120, probe_pieces=120, piece_seconds=6.0,
                  notes=NoteSetConfig(programs=7, pitches=tuple(range(48, 80, 4)), seconds=1.5),
                  tokenizer_steps=800, prior_steps=400)
QUICK = BenchSizes(pretrain_pieces=16, probe_pieces=36, piece_seconds=3.0,
                   notes=NoteSetConfig(programs=4, pitches=(52, 59, 64, 71), seconds=1.0),
                   tokenizer_steps=30, prior_steps=20, splits=3)


@dataclass
class Task:
    """A label column probed on a probe set; `group` keeps rows with the same value in one split."""

    name: str
    column: str
    kind: str          # classification | key
    group: str


@dataclass
class ProbeSet:
    name: str
    root: Path         # the labels' paths are relative to this folder
    labels: Path
    tasks: list[Task]


@dataclass
class Suite:
    name: str
    pretrain: Path     # audio folder or manifest the tokenizer and priors are trained on
    probe_sets: list[ProbeSet]


# -- data ---------------------------------------------------------------------------------------------
def synthetic_suite(out: Path, sizes: BenchSizes, seed: int) -> Suite:
    """Demo-corpus pieces to pretrain on; other pieces and single notes, from other seeds, to probe."""
    pre = out / "pretrain"
    if not (pre / "labels.csv").exists():
        make_demo_corpus(pre, DemoCorpusConfig(sizes.pretrain_pieces, sizes.piece_seconds, seed=seed))
    pieces, notes = out / "probe_pieces", out / "probe_notes"
    if not (pieces / "labels.csv").exists():
        make_demo_corpus(pieces, DemoCorpusConfig(sizes.probe_pieces, sizes.piece_seconds, seed=seed + 1000))
    if not (notes / "labels.csv").exists():
        make_note_set(notes, NoteSetConfig(**{**asdict(sizes.notes), "seed": seed + 2000}))
    return Suite("synthetic", pre / "audio", [
        ProbeSet("notes", notes, notes / "labels.csv", [
            Task("instrument", "family", "classification", "note"),
            Task("pitch", "pitch", "classification", "note"),
            Task("instrument (unseen program)", "family", "classification", "program")]),
        ProbeSet("pieces", pieces, pieces / "labels.csv", [
            Task("key", "key", "key", "group"),
            Task("tempo", "tempo_class", "classification", "group"),
            Task("melody instrument", "instrument", "classification", "group")])])


def devkit_suite(data: Path) -> Suite:
    """The real-music dev kit (../shared/data): pretrain on `music/`, probe its `notes/`. It has no key or
    tempo labels, so those tasks exist only in the synthetic suite."""
    music, notes = data / "music", data / "notes"
    for need in (music / "manifest.csv", notes / "labels.csv"):
        if not need.is_file():
            raise UserError(f"--data {data}: {need} not found (build the dev kit with ../shared/data/make_dev_data.sh)")
    return Suite("real music (dev kit)", music / "manifest.csv", [
        ProbeSet("notes", notes, notes / "labels.csv", [
            Task("instrument", "instrument_family_name", "classification", "note_id"),
            Task("pitch", "pitch", "classification", "note_id"),
            Task("instrument (unseen program)", "instrument_family_name", "classification", "program")])])


def check_disjoint(pretrain: list[Path], probe: list[Path]) -> dict[str, str]:
    """Refuse a probe clip that is also in the pretraining audio, by resolved path or by content hash.
    Returns sha1 per file, for the record."""
    hashes = {str(p): file_sha1(p) for p in [*pretrain, *probe]}
    seen_paths = {p.resolve(): p for p in pretrain}
    seen_hashes = {hashes[str(p)]: p for p in pretrain}
    for p in probe:
        other = seen_paths.get(p.resolve()) or seen_hashes.get(hashes[str(p)])
        if other is not None:
            raise UserError(f"{p}: this probe clip is also in the pretraining audio ({other}); the benchmark "
                            "only probes clips the tokenizer and priors never saw")
    return hashes


def read_rows(labels: Path) -> list[dict]:
    with open(labels, newline="") as f:
        return list(csv.DictReader(f))


# -- pretraining ----------------------------------------------------------------------------------------
RUN_RECORD = "bench_run.json"  # the run config a model in the benchmark's folder was trained with
PARTIAL_RECORD = "bench_run.partial.json"  # the same, written before training: a killed training resumes from it


def _settings(record: Path, cls) -> dict | None:
    """A run record read back through its config class, so a setting added since (absent from the record) counts
    at its default; None when the record no longer parses (a setting removed or renamed)."""
    try:
        return json.loads(json.dumps(to_dict(from_dict(cls, json.loads(record.read_text())))))
    except ConfigError:
        return None


def concrete_dtype(run: PriorRunConfig) -> PriorRunConfig:
    """`train.dtype: auto` made what it means on this machine (bf16 on a GPU or an AMX CPU, else fp32), so a
    run record says which precision its model was trained in, and a model trained in one is never reused for
    a run in the other."""
    if run.train.dtype == "auto":
        run.train.dtype = "float32" if autocast_dtype("auto", pick_device(run.train.device)) is None else "bfloat16"
    return run


def reuse(folder: Path, run) -> bool:
    """True when `folder` holds a model trained by this benchmark with exactly `run` (a repeated run picks it up);
    False when there is none, or only a training of exactly `run` that was stopped (`train_recorded` resumes it).
    A model trained, or a training begun, with other settings is refused, never reused."""
    record, partial = folder / RUN_RECORD, folder / PARTIAL_RECORD
    want = json.loads(json.dumps(to_dict(run)))
    if not record.exists() and partial.exists():
        if _settings(partial, type(run)) != want:
            raise UserError(f"{folder}: holds a stopped training with other settings than this run's; use another "
                            "--out or remove that folder")
        return False
    if not (folder / "model.safetensors").exists():
        return False
    if not record.exists() or _settings(record, type(run)) != want:
        raise UserError(f"{folder}: holds a model trained with other settings than this run's; use another --out "
                        "or remove that folder")
    return True


def train_recorded(folder: Path, run, train: Callable[[bool], object]) -> None:
    """`train(resume)` into `folder`, its settings recorded before (so a training killed midway resumes from its
    last checkpoint when the benchmark is run again) and after (the model is done)."""
    resume = (folder / PARTIAL_RECORD).exists() and (folder / STATE_FILE).exists()
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / PARTIAL_RECORD, to_dict(run))
    train(resume)
    write_json(folder / RUN_RECORD, to_dict(run))
    (folder / PARTIAL_RECORD).unlink()


def recoding(run: PriorRunConfig, out: Path):
    """The run's tokenizer where a prior re-encodes its transposed windows with it, else None."""
    return load_tokenizer(out / "tokenizer") if run.model.recodes else None


def pretrain(suite: Suite, out: Path, sizes: BenchSizes, seed: int, progress: bool, times: dict,
             prior_overrides: list[str] = (), priors: tuple[str, ...] = DEFAULT_PRIORS,
             tokenizer_overrides: list[str] = ()) -> dict:
    """Tokenizer, store and the two priors at equal compute; returns their folders and run configs."""
    t = time.time()
    tok_over = [f"train.seed={seed}"] + ([f"train.steps={sizes.tokenizer_steps}"] if sizes.tokenizer_steps else [])
    tok_run = load_config(TokenizerRunConfig, "small", tok_over + list(tokenizer_overrides), kind="tokenizer")
    if not reuse(out / "tokenizer", tok_run):
        stale = [p for p in out.glob("prior_*") if (p / "model.safetensors").exists()]
        if stale:
            raise UserError(f"{stale[0]}: a prior trained on another tokenizer; use another --out or remove it")
        train_recorded(out / "tokenizer", tok_run,
                       lambda resume: train_tokenizer(tok_run, suite.pretrain, out / "tokenizer", resume, progress))
    times["tokenizer"] = time.time() - t
    t = time.time()
    tokenize_corpus(load_tokenizer(out / "tokenizer"), suite.pretrain, out / "store", progress=progress,
                    with_frames=True)
    times["tokenize"] = time.time() - t
    runs = {}
    for name in priors:
        t = time.time()
        over = PRIORS[name][0] + [f"train.seed={seed}"]
        over += [f"train.steps={sizes.prior_steps}"] if sizes.prior_steps else []
        runs[name] = concrete_dtype(load_config(PriorRunConfig, "small", over + list(prior_overrides), kind="prior"))
        store = out / "store"
        if name == SECOND_ROUND:  # its codes: k-means on the first round's middle layer, as many as the tokenizer's
            store = out / "store_kmeans"
            relabel_store(out / f"prior_{RECOMMENDED}", out / "store", store,
                          codes=TokenStore(out / "store").meta.codebook_size, seed=seed)
            times["relabel"] = time.time() - t
        if not reuse(out / f"prior_{name}", runs[name]):
            train_recorded(out / f"prior_{name}", runs[name],
                           lambda resume, run=runs[name], store=store, folder=out / f"prior_{name}":
                           train_prior(run, store, folder, resume, progress, tokenizer=recoding(run, out)))
        times[f"prior_{name}"] = time.time() - t

    # the random-weights control: the codes -> codes prior's config, never trained
    random_runs = {name: load_config(PriorRunConfig, "small", PRIORS[name][0] + list(prior_overrides), kind="prior")
                   for name in RANDOM}

    def budget(r: PriorRunConfig) -> dict:
        return {**{k: getattr(r.model, k) for k in ("dim", "layers", "heads", "mlp", "max_len")},
                **{k: getattr(r.train, k) for k in ("steps", "batch_size", "grad_accum", "dtype")}}
    same = budget(runs["frames"])
    assert all(budget(r) == same for r in runs.values()), "the priors must get equal compute"
    return {"tokenizer": to_dict(tok_run), "priors": {k: to_dict(v) for k, v in runs.items()}, "equal_compute": same,
            "random": {name: r.model for name, r in random_runs.items()}}


def suite_level(level_db: float | str | None, store: TokenStore, files: list[Path], sample_rate: int
                ) -> float | None:
    """The level every row reads a suite's probed clips at: `level_db` itself, or for "auto" the pretraining
    audio's median level as its store recorded it (measured from the audio for a store tokenized before levels
    were recorded): the level `musetok embed` brings clips to by default."""
    if not is_auto_level(level_db):
        return resolve_level(level_db, None)
    if store.level_db is not None:
        return store.level_db
    meters = [file_level(f, sample_rate) for f in files]
    return corpus_level([m.db for m in meters], [m.n / sample_rate for m in meters])


# -- features -------------------------------------------------------------------------------------------
def pooled(emb: Embedder, inputs: list[np.ndarray], pool: str = DEFAULT_POOL, batch: int = 32) -> list[np.ndarray]:
    """Prior inputs -> the pooled states of every layer, `(N, pD)` each (p: 3 for mean/std/max), then of the
    `COMBINED` layers: their frame-wise mean `(N, pD)` and their concatenation `(N, pLD)`."""
    out = []
    for i in range(0, len(inputs), batch):
        for e in emb.embed_inputs(inputs[i:i + batch]):
            x = e.stacked()  # (T, L, D), once for both
            per_layer = pool_frames(x, pool)  # (L, pD), as e.pooled(pool)
            out.append([*per_layer, pool_frames(x.mean(1), pool), per_layer.flatten()])
    return [np.stack([o[j].numpy() for o in out]).astype(np.float32) for j in range(len(out[0]))]


def features(out: Path, paths: list[Path], seed: int, times: dict, priors: tuple[str, ...],
             random_cfgs: dict[str, PriorConfig], pool: str = DEFAULT_POOL, level_db: float | None = None
             ) -> tuple[dict[str, np.ndarray | list[np.ndarray]], list[str]]:
    """Every row of the table for these clips: name -> `(N, D)`, or for the priors a list of `(N, D_i)`
    candidates (each layer, then `COMBINED`); plus the priors' candidate names. `level_db`: every row reads each
    clip brought to that RMS (dBFS) first."""
    tok = load_tokenizer(out / "tokenizer")
    embs = {name: Embedder.from_pretrained(out / "tokenizer", out / f"prior_{name}", level_db=level_db)
            for name in priors}
    store = TokenStore(out / "store")
    randoms = {}
    for name, cfg in random_cfgs.items():
        torch.manual_seed(seed)
        randoms[name] = Embedder(tok, build_prior_for_store(cfg, store), level_db=level_db)
    t = time.time()
    inputs = {name: [emb.inputs_from_file(p) for p in paths] for name, emb in embs.items()}
    for name, emb in randoms.items():
        if name not in inputs:
            inputs[name] = [emb.inputs_from_file(p) for p in paths]
    feats = {PRIORS[name][1]: pooled(emb, inputs[name], pool) for name, emb in embs.items()}
    feats.update({RANDOM[name]: pooled(emb, inputs[name], pool) for name, emb in randoms.items()})
    codes = inputs["codes"]
    feats["bag of codes"] = np.stack([bag_of_codes(c, tok.codebook_size) for c in codes])
    times["embed"] = times.get("embed", 0.0) + time.time() - t
    t = time.time()
    hand = handcrafted_features(paths, tok.sample_rate, pool=pool, level_db=level_db)
    feats.update(dict(zip(handcrafted_rows(pool), (hand["mfcc"], hand["logmel"], hand["chroma"]))))
    feats[frontend_row(tok, pool)] = np.stack([frontend_stats(f, tok.cfg.mel.n_mels, pool) for f in inputs["frames"]])
    times["baselines"] = times.get("baselines", 0.0) + time.time() - t
    return feats, randoms["codes"].layer_names + list(COMBINED)


def frontend_row(tok, pool: str = DEFAULT_POOL) -> str:
    """The row of the priors' own input, pooled: the tokenizer's front-end, a hand-crafted feature too."""
    scale = "log-semitone" if tok.cfg.mel.scale == "semitone" else "log-mel"
    return f"{scale} spectrogram{FRONTEND} {POOL_LABELS[pool]}"


def frontend_stats(frames: np.ndarray, bands: int, pool: str = DEFAULT_POOL) -> np.ndarray:
    """The frames priors read, `(T, S * bands)` normalised and stacked, -> each band pooled over every mel frame
    (`(3 * bands,)` for mean/std/max). The hand-crafted row a frame prior must beat: its own input, untrained."""
    return pool_frames(np.ascontiguousarray(frames.reshape(-1, bands), dtype=np.float32), pool)


# -- probes ---------------------------------------------------------------------------------------------
@dataclass
class Cell:
    """One row x task: the test metric over the splits, and the layer chosen on validation in each."""

    suite: str
    task: str
    features: str
    metric: str
    test: list[float]
    layers: list[str]
    per_layer_valid: list[list[float]]   # per split: the validation primary metric of every layer
    per_layer_select: list[list[float]]  # per split: the score layers were chosen by (validation log-loss)
    layer_names: list[str]

    @property
    def mean(self) -> float:
        return float(np.mean(self.test))

    @property
    def std(self) -> float:
        return float(np.std(self.test))

    @property
    def layer(self) -> str:
        """The layer chosen most often on validation (ties: the earlier)."""
        return Counter(self.layers).most_common(1)[0][0]


def probe_suite(suite: Suite, feats_by_set: dict[str, tuple[dict, list[str]]], sizes: BenchSizes, seed: int,
                probes: tuple[str, ...]) -> list[Cell]:
    cells = []
    for ps in suite.probe_sets:
        rows = read_rows(ps.labels)
        feats, layer_names = feats_by_set[ps.name]
        for task in ps.tasks:
            labels = Labels([r["path"] for r in rows], [r[task.column] for r in rows], task.kind,
                            groups=np.array([r[task.group] for r in rows]))
            splits = [make_split(labels, seed=seed + s) for s in range(sizes.splits)]
            for name, x in feats.items():
                names = layer_names if isinstance(x, list) else [name]
                cell = Cell(suite.name, task.name, name, PRIMARY[task.kind], [], [], [], [], names)
                for split in splits:
                    r = probe_layers(x, names, labels, split, name, task.name, probes, seed, jobs=2)
                    cell.test.append(r.test[r.metric])
                    cell.layers.append(r.layer)
                    cell.per_layer_valid.append([p[1] for p in r.per_layer])
                    cell.per_layer_select.append([p[3] for p in r.per_layer])
                cells.append(cell)
                log.info("  %-20s %-28s %-36s %.3f ± %.3f [%s]", suite.name[:20], task.name, name, cell.mean,
                         cell.std, cell.layer)
    return cells


# -- the target -----------------------------------------------------------------------------------------
TARGET_GAIN = 0.15  # the mean relative gain over the best hand-crafted feature per task that the issue asks for
CURVE_TASKS = ("key", "pitch")  # tasks whose layer curve should rise above the input layer


def is_audio_row(name: str) -> bool:
    """MFCC, log-mel or chroma, with any pooling."""
    return any(name == f"{h} {label}" for h in HANDCRAFTED for label in POOL_LABELS.values())


def is_handcrafted(name: str) -> bool:
    """An audio feature row or the priors' own input, with any pooling."""
    return is_audio_row(name) or any(name.endswith(f"{FRONTEND} {label}") for label in POOL_LABELS.values())


@dataclass
class TargetRow:
    """One prior against the bar: per (suite, task) its test mean, the best hand-crafted row's and the control's."""

    features: str
    gains: dict[tuple[str, str], float]          # relative gain over the best hand-crafted row per task
    gains_audio: dict[tuple[str, str], float]    # the same against MFCC, log-mel and chroma only
    gains_control: dict[tuple[str, str], float]  # relative gain over the frames control
    curves: dict[tuple[str, str], tuple[float, float]]  # key/pitch: (input layer, best deeper layer), validation

    @staticmethod
    def _mean(d: dict) -> float:
        return float(np.mean(list(d.values()))) if d else float("nan")

    @property
    def mean_gain(self) -> float:
        return self._mean(self.gains)

    @property
    def mean_gain_audio(self) -> float:
        return self._mean(self.gains_audio)

    @property
    def mean_gain_control(self) -> float:
        return self._mean(self.gains_control)

    @property
    def not_won(self) -> list[tuple[str, str]]:
        """The tasks where it does not beat the best hand-crafted row (a tie is not a win)."""
        return [k for k, g in self.gains.items() if g <= 0]

    @property
    def met(self) -> bool:
        """The issue's target: beats the best hand-crafted row on every task, the control on average, by at least
        `TARGET_GAIN` relative on average over both; the layer curve rises above the input on key and pitch."""
        return (not self.not_won and self.mean_gain >= TARGET_GAIN and self.mean_gain_control >= TARGET_GAIN
                and all(deep > inp for inp, deep in self.curves.values()))


def cells_from_record(record: dict) -> list[Cell]:
    """The cells of a run's bench.json, back as `Cell`s."""
    names = [f.name for f in fields(Cell)]
    return [Cell(**{k: c[k] for k in names}) for c in record["cells"]]


@dataclass
class Headroom:
    """How much the bar leaves to win: per (suite, task) the best hand-crafted row's test mean. A task where it
    scores the metric's maximum (1.0: accuracy, weighted score) is at the ceiling: no row can beat it there, so
    "every task" cannot be met while the suite has one."""

    best: dict[tuple[str, str], float]

    @property
    def ceiling(self) -> list[tuple[str, str]]:
        return [k for k, v in self.best.items() if v >= 1 - 1e-9]

    @property
    def max_mean_gain(self) -> float:
        """The largest mean relative gain any row could reach: a perfect score on every task."""
        return float(np.mean([1 / max(v, 1e-9) - 1 for v in self.best.values()])) if self.best else float("nan")


def headroom(cells: list[Cell]) -> Headroom:
    by: dict[tuple[str, str], float] = {}
    for c in cells:
        if is_handcrafted(c.features):
            by[(c.suite, c.task)] = max(by.get((c.suite, c.task), 0.0), c.mean)
    return Headroom(by)


def target_rows(cells: list[Cell], control: str = PRIORS["frames"][1]) -> list[TargetRow]:
    """Every prior row (trained, or random weights) against the issue's bar. The control is measured against
    itself too (its gain over the control is 0). Tasks no hand-crafted row has are skipped."""
    by = {(c.suite, c.task, c.features): c for c in cells}
    tasks = list(dict.fromkeys((c.suite, c.task) for c in cells))
    all_names = list(dict.fromkeys(c.features for c in cells))
    names = [n for n in all_names if n.startswith(("prior: ", "random-weights prior"))]
    best = headroom(cells).best
    rows = []
    for n in names:
        row = TargetRow(n, {}, {}, {}, {})
        for st in tasks:
            c = by.get((*st, n))
            audio = [c2.mean for (s2, t2, h), c2 in by.items() if (s2, t2) == st and is_audio_row(h)]
            if c is None or st not in best:
                continue
            row.gains[st] = c.mean / max(best[st], 1e-9) - 1
            if audio:
                row.gains_audio[st] = c.mean / max(max(audio), 1e-9) - 1
            if (*st, control) in by:
                row.gains_control[st] = c.mean / max(by[(*st, control)].mean, 1e-9) - 1
            if any(t in st[1] for t in CURVE_TASKS) and "input" in c.layer_names:
                valid = np.mean(c.per_layer_valid, axis=0)
                deeper = [v for name, v in zip(c.layer_names, valid) if name.startswith("layer")]
                if deeper:
                    row.curves[st] = (float(valid[c.layer_names.index("input")]), float(max(deeper)))
        rows.append(row)
    return rows


def format_target(rows: list[TargetRow], room: Headroom | None = None) -> str:
    """Markdown: each prior against the bar, then its relative gain per task; with `room`, what the bar leaves
    to win (the tasks at the ceiling, the largest reachable mean gain)."""
    pct = lambda g: f"{100 * g:+.1f}%"  # noqa: E731
    lines = [f"Target (issue 11): beat the best hand-crafted row on every task and the frames control, by "
             f"{100 * TARGET_GAIN:.0f}% relative on average; the layer curve above the input layer on key and pitch. "
             "Hand-crafted rows: MFCC, log-mel, chroma and the priors' own input.", "",
             "| prior | mean gain over the best hand-crafted row | tasks not won | the same without the priors' "
             "input row | mean gain over the control | layer curve above the input (validation: input -> best "
             "layer) | target met |", "|---|---|---|---|---|---|---|"]
    short = lambda k: f"{k[0].split(' ')[0]} {k[1]}"  # noqa: E731
    for r in rows:
        below = [short(k) for k in r.not_won if r.gains[k] < -1e-9]
        level = [short(k) for k in r.not_won if r.gains[k] >= -1e-9]
        lost = (f"{len(r.not_won)} of {len(r.gains)}" + (f"; below: {', '.join(below)}" if below else "")
                + (f"; level: {', '.join(level)}" if level else ""))
        curve = "; ".join(f"{short(k)} {'yes' if d > i else 'no'} ({i:.3f} -> {d:.3f})"
                          for k, (i, d) in r.curves.items()) or "-"
        lines.append(f"| {r.features} | {pct(r.mean_gain)} | {lost} | {pct(r.mean_gain_audio)} | "
                     f"{pct(r.mean_gain_control)} | {curve} | {'yes' if r.met else 'no'} |")
    tasks = list(dict.fromkeys(k for r in rows for k in r.gains))
    lines += ["", "Relative gain over the best hand-crafted row, per task:", "",
              "| prior | " + " | ".join(short(k) for k in tasks) + " |",
              "|---|" + "---|" * len(tasks)]
    lines += [f"| {r.features} | " + " | ".join(pct(r.gains[k]) if k in r.gains else "" for k in tasks) + " |"
              for r in rows]
    if room is not None:
        at = ", ".join(short(k) for k in room.ceiling)
        lines += ["", f"Headroom: a perfect score on every task would be a mean gain of {pct(room.max_mean_gain)}. "
                  + (f"At the ceiling (a hand-crafted row scores 1.000, so no row can win): {at}; the target's "
                     "\"every task\" cannot be met on this run." if at else "No task is at the ceiling.")]
    return "\n".join(lines)


# -- output ---------------------------------------------------------------------------------------------
def format_table(cells: list[Cell], suite: str) -> str:
    """Markdown: rows are feature sets, columns tasks; `mean ± std` of the test metric over the splits, and
    for multi-layer rows the layer chosen most often on validation."""
    cs = [c for c in cells if c.suite == suite]
    tasks = list(dict.fromkeys(c.task for c in cs))
    names = list(dict.fromkeys(c.features for c in cs))
    by = {(c.features, c.task): c for c in cs}
    head = "| features | " + " | ".join(f"{t} ({by[(names[0], t)].metric})" for t in tasks) + " |"
    lines = [head, "|" + "---|" * (len(tasks) + 1)]
    for n in names:
        cells_txt = []
        for t in tasks:
            c = by[(n, t)]
            best = max(by[(m, t)].mean for m in names)
            txt = f"{c.mean:.3f} ± {c.std:.3f}" + (f" [{c.layer}]" if len(c.layer_names) > 1 else "")
            cells_txt.append(f"**{txt}**" if c.mean == best else txt)
        lines.append(f"| {n} | " + " | ".join(cells_txt) + " |")
    return "\n".join(lines)


def level_text(record: dict) -> str:
    """What bench.md says of the level every row read the probed clips at."""
    level = record.get("level_db")
    if level is None:
        return "; every row reads each probed clip at its own level (`--level-db none`)"
    if is_auto_level(level):
        return ("; every row reads each probed clip brought to the median RMS level of its suite's pretraining "
                "audio, what `musetok embed` does (`--level-db auto`; the level is under each suite)")
    return f"; every row reads each probed clip brought to {level:g} dBFS RMS first (`--level-db {level:g}`)"


def write_outputs(out: Path, cells: list[Cell], record: dict) -> Path:
    suites = list(dict.fromkeys(c.suite for c in cells))
    with open(out / "bench.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["suite", "task", "features", "metric", "split", "test", "layer", "mean", "std"])
        for c in cells:
            for i, (v, layer) in enumerate(zip(c.test, c.layers)):
                w.writerow([c.suite, c.task, c.features, c.metric, i, f"{v:.4f}", layer, f"{c.mean:.4f}",
                            f"{c.std:.4f}"])
    for suite in suites:
        for task in dict.fromkeys(c.task for c in cells if c.suite == suite):
            multi = [c for c in cells if c.suite == suite and c.task == task and len(c.layer_names) > 1]
            if multi:
                plot_layer_curves(out / f"layers_{slug(suite)}_{slug(task)}.png", multi[0].layer_names,
                                  {c.features: np.mean(c.per_layer_valid, axis=0).tolist() for c in multi},
                                  f"validation {multi[0].metric}", f"{suite}: {task} (mean over splits)")
    record["cells"] = [{**asdict(c), "mean": c.mean, "std": c.std, "layer": c.layer} for c in cells]
    rows = target_rows(cells)
    record["target"] = [{"features": r.features, "mean_gain": r.mean_gain, "mean_gain_audio": r.mean_gain_audio,
                         "mean_gain_control": r.mean_gain_control, "not_won": [list(k) for k in r.not_won],
                         "met": r.met} for r in rows]
    room = headroom(cells)
    record["headroom"] = {"best_handcrafted": [[*k, v] for k, v in room.best.items()],
                          "ceiling": [list(k) for k in room.ceiling], "max_mean_gain": room.max_mean_gain}
    write_json(out / "bench.json", record)
    lines = ["# musetok representation benchmark", "",
             f"Command: `{record['command']}`. Wall time {record['wall_seconds']:.0f} s on "
             f"{record['threads']} threads.", "",
             f"Every row is pooled over time the same way ({POOL_LABELS[record['pool']]}, `--pool {record['pool']}`; "
             "bag of codes is "
             "a code histogram)" + level_text(record) +
             ". Linear probes; layer and C chosen on validation log-loss; each cell is the "
             f"test metric's mean ± std over {record['splits']} grouped splits (seeds {record['split_seeds']}); "
             "[layer] is the layer chosen most often. Best row per task in bold. No probed clip was seen in "
             "pretraining (checked by path and sha1).", ""]
    for suite in suites:
        pre = record["suites"][suite]
        level = pre.get("level_db")
        lines += [f"## {suite}", "", f"Pretraining: {pre['pretrain_files']} files, {pre['pretrain_hours']:.2f} h"
                  + ("" if level is None else f" (median level {level:g} dBFS)") + "; "
                  f"probed: {pre['probe_files']} clips"
                  + ("" if level is None else f", each read at {level:g} dBFS") + ". Equal compute for every prior: "
                  + ", ".join(f"{k} {v}" for k, v in pre["equal_compute"].items()) + ".", "",
                  format_table(cells, suite), ""]
        lines += [f"![{p.stem}]({p.name})" for p in sorted(out.glob(f"layers_{slug(suite)}_*.png"))] + [""]
    lines += ["## Against the target", "", format_target(rows, room), ""]
    lines += ["## Wall time per stage (s)", "", "| suite | stage | seconds |", "|---|---|---|"]
    for suite in suites:
        lines += [f"| {suite} | {k} | {v:.0f} |" for k, v in record["suites"][suite]["times"].items()]
    path = out / "bench.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def bench_repr(out: str | Path, data: str | Path | None = None, quick: bool = False, sizes: BenchSizes | None = None,
               seed: int = 0, probes: tuple[str, ...] = ("linear",), progress: bool = True,
               command: str = "musetok bench-repr", prior_overrides: list[str] = (),
               priors: tuple[str, ...] = DEFAULT_PRIORS, tokenizer_overrides: list[str] = (),
               pool: str = DEFAULT_POOL, level_db: float | str | None = AUTO_LEVEL) -> tuple[Path, list[Cell]]:
    """Run the benchmark into `out` (see the module doc); `data`: the dev kit folder (music/ and notes/) for the
    real-music suite; `prior_overrides` / `tokenizer_overrides`: `key=value` settings applied to every prior
    alike / to the tokenizer (a lever to measure, e.g. `model.mask_span=17`); `priors`: which of `PRIORS` to
    train (the `frames` control always is); `level_db`: every probed clip brought to that RMS (dBFS) before any row
    reads it; "auto": each suite's pretraining audio's median level (`suite_level`); None: as it is. Returns the
    path of bench.md and every cell."""
    unknown = [p for p in priors if p not in PRIORS]
    if unknown:
        raise UserError(f"--priors: unknown prior '{unknown[0]}' (known: {', '.join(PRIORS)})")
    if pool not in POOLS:
        raise UserError(f"--pool: unknown pooling '{pool}' (known: {', '.join(POOLS)})")
    # a bad level is refused before anything is trained
    level_db = AUTO_LEVEL if is_auto_level(level_db) else resolve_level(level_db, None)
    priors = tuple(dict.fromkeys([*priors, "frames"]))
    if SECOND_ROUND in priors:  # its first round comes first
        priors = tuple(dict.fromkeys([p for p in priors if p != SECOND_ROUND] + [RECOMMENDED, SECOND_ROUND]))
    t0 = time.time()
    out = Path(out)
    sizes = sizes or (QUICK if quick else FULL)
    suites = [synthetic_suite(out / "synthetic" / "data", sizes, seed)]
    if data is not None:
        suites.append(devkit_suite(Path(data)))
    cells: list[Cell] = []
    record = {"command": command, "seed": seed, "splits": sizes.splits,
              "split_seeds": [seed + s for s in range(sizes.splits)], "probes": list(probes), "pool": pool,
              "level_db": level_db, "sizes": asdict(sizes), "prior_overrides": list(prior_overrides),
              "tokenizer_overrides": list(tokenizer_overrides), "priors": list(priors),
              "threads": torch.get_num_threads(),
              "suites": {}}
    checked = []  # every suite is checked before anything is trained
    for suite in suites:
        corpus = list_audio(suite.pretrain)
        pre_files = [corpus.path(f) for f in corpus.files]
        probe_files = {ps.name: [ps.root / r["path"] for r in read_rows(ps.labels)] for ps in suite.probe_sets}
        hashes = check_disjoint(pre_files, [p for ps in probe_files.values() for p in ps])
        log.info("%s: %d pretraining files, %d probe clips, disjoint", suite.name, len(pre_files), len(hashes) -
                 len(pre_files))
        checked.append((suite, pre_files, probe_files, hashes))
    for suite, pre_files, probe_files, hashes in checked:
        work = out / slug(suite.name.split(" ")[0])
        work.mkdir(parents=True, exist_ok=True)
        times: dict[str, float] = {}
        configs = pretrain(suite, work, sizes, seed, progress, times, prior_overrides, priors, tokenizer_overrides)
        store = TokenStore(work / "store")
        random_cfgs = configs.pop("random")
        level = suite_level(level_db, store, pre_files, store.meta.sample_rate)
        log.info("%s: every row reads each probed clip %s", suite.name,
                 "as it is" if level is None else f"brought to {level:g} dBFS RMS")
        feats = {ps.name: features(work, probe_files[ps.name], seed, times, priors, random_cfgs, pool, level)
                 for ps in suite.probe_sets}
        t = time.time()
        cells += probe_suite(suite, feats, sizes, seed, probes)
        times["probes"] = time.time() - t
        record["suites"][suite.name] = {
            "pretrain_files": len(pre_files), "pretrain_hours": store.hours, "level_db": level,
            "probe_files": len(hashes) - len(pre_files),
            "equal_compute": configs.pop("equal_compute"), "configs": configs, "times": times,
            "sha1": {str(Path(p).resolve()): h for p, h in hashes.items()}}
    record["wall_seconds"] = time.time() - t0
    return write_outputs(out, cells, record), cells
