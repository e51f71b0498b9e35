"""Test helpers: every test makes its own small audio (no downloads, no dev data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SR = 16000

# A tokenizer small enough to train in seconds on 2 cores.
TINY_TOKENIZER = [
    "model.mel.sample_rate=16000", "model.mel.n_mels=40", "model.channels=32", "model.codebook_size=32",
    "train.batch_size=8", "train.segment_seconds=1.0", "train.warmup_steps=10", "train.log_every=20",
    "train.valid_every=100", "train.checkpoint_every=100",
]

# A prior small enough to train in seconds.
TINY_PRIOR = ["model.dim=64", "model.layers=2", "model.heads=2", "model.max_len=64", "train.batch_size=8",
              "train.warmup_steps=10", "train.log_every=10", "train.valid_every=50", "train.checkpoint_every=50"]


def tone(seconds: float, f0: float, sr: int = SR, seed: int = 0, decay: float = 4.0) -> np.ndarray:
    """A plucked harmonic tone repeated every 0.5 s, with a little noise."""
    t = np.arange(int(seconds * sr)) / sr
    env = np.exp(-(t % 0.5) * decay)
    y = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * env * 0.2
    y += np.random.default_rng(seed).standard_normal(len(t)) * 0.003
    return y.astype(np.float32)


def write(path: Path, y: np.ndarray, sr: int = SR, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(str(path), "w", sr, 1 if y.ndim == 1 else y.shape[1], **kw) as f:
        for i in range(0, len(y), 1 << 15):  # blocks: one big OGG write can crash libsndfile
            f.write(y[i:i + (1 << 15)])
    return path


def make_corpus(root: Path, n: int = 8, seconds: float = 4.0, sr: int = SR) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        f0 = 110 * 2 ** (rng.integers(0, 24) / 12)
        write(root / f"tone{i:02d}.wav", tone(seconds, f0, sr, seed=i), sr)
    return root


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def trained_tokenizer(tmp_path_factory, corpus) -> Path:
    """A tiny mel tokenizer trained for 300 steps on the toy corpus (shared by several tests)."""
    from musetok.shared.config import load_config
    from musetok.tokenizer.train import TokenizerRunConfig, train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    run = load_config(TokenizerRunConfig, None, TINY_TOKENIZER + ["train.steps=300"])
    train_tokenizer(run, corpus, out, progress=False)
    return out


@pytest.fixture(scope="session")
def store(tmp_path_factory, trained_tokenizer):
    """10 toy files of 6 s tokenized (codes and mel frames) with the trained tokenizer."""
    from musetok.tokenizer import load_tokenizer
    from musetok.tokenizer.encode_corpus import tokenize_corpus

    root = tmp_path_factory.mktemp("store")
    audio = make_corpus(root / "audio", n=10, seconds=6.0)
    tokenize_corpus(load_tokenizer(trained_tokenizer), audio, root / "store", workers=0, progress=False,
                    with_frames=True)
    return root / "store"


@pytest.fixture(scope="session")
def prior_dirs(tmp_path_factory, store):
    """Tiny priors (20 steps, context 32 frames): objectives mlm, masked_frames and ar, and frames_codes
    (mlm reading mel frames, predicting codes)."""
    from musetok.prior.train import PriorRunConfig, train_prior
    from musetok.shared.config import load_config

    root = tmp_path_factory.mktemp("priors")
    out = {}
    for name, objective, inputs in (("mlm", "mlm", ""), ("masked_frames", "masked_frames", ""), ("ar", "ar", ""),
                                    ("frames_codes", "mlm", "frames")):
        over = [f"model.objective={objective}", "train.steps=20", "model.max_len=32"]
        run = load_config(PriorRunConfig, None, TINY_PRIOR + over + ([f"model.inputs={inputs}"] if inputs else []))
        train_prior(run, store, root / name, progress=False)
        out[name] = root / name
    return out


SEMITONE = ["model.mel.scale=semitone", "model.mel.n_fft=2048", "model.mel.n_mels=80"]


@pytest.fixture(scope="session")
def semitone_store(tmp_path_factory):
    """Tones of A3 (220 Hz) and C#4 (277 Hz) tokenized with a semitone tokenizer (untrained weights; a normaliser
    that is not the identity, so the chroma has to undo it)."""
    from musetok.shared.config import load_config
    from musetok.shared.normalize import MelStats
    from musetok.tokenizer.builder import build_tokenizer, save_tokenizer
    from musetok.tokenizer.encode_corpus import tokenize_corpus
    from musetok.tokenizer.train import TokenizerRunConfig

    root = tmp_path_factory.mktemp("semitone")
    for i, f0 in enumerate((220.0, 277.18, 220.0, 277.18)):
        write(root / "audio" / f"{i}.wav", tone(3.0, f0, seed=i))
    cfg = load_config(TokenizerRunConfig, None, TINY_TOKENIZER + SEMITONE).model
    rng = np.random.default_rng(0)
    stats = MelStats(rng.uniform(-8, -2, 80).astype(np.float32), rng.uniform(1, 3, 80).astype(np.float32), 1)
    model = build_tokenizer(cfg, stats).eval()
    save_tokenizer(root / "tokenizer", model)  # beside the store, for priors that re-encode transposed windows
    tokenize_corpus(model, root / "audio", root / "store", workers=0, progress=False, with_frames=True)
    return root / "store", cfg.mel, stats


def record_window_sources(monkeypatch, attr: str) -> list:
    """Patch prior training's `WindowSource` so that each one made (train, then valid) appends its `attr` (its
    mixer, transposer or leveller) to the list returned."""
    from musetok.prior import train as train_mod
    from musetok.prior.data import WindowSource
    made = []

    class Recording(WindowSource):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(getattr(self, attr))
    monkeypatch.setattr(train_mod, "WindowSource", Recording)
    return made
