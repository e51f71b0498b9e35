"""Gain augmentation (`model.gain_db`): training windows heard louder or quieter, their log power moved above the
front-end's floor, the code targets left as they are."""

import json

import numpy as np
import pytest
import torch

from musetok.prior.config import PriorConfig
from musetok.prior.data import Leveller, WindowSource
from musetok.shared.config import ConfigError, load_config
from musetok.shared.errors import UserError
from musetok.shared.mel import MelConfig, MelFrontend
from musetok.shared.token_store import StoreMeta, TokenStore
from tests.conftest import SR, TINY_PRIOR, record_window_sources, tone

BANDS = 40


def meta(mean: np.ndarray, std: np.ndarray, normaliser: bool = True) -> StoreMeta:
    return StoreMeta(kind="mel", format_version=1, tokenizer_id="t", codebook_size=8, num_codebooks=1,
                     frame_rate=10.0, frames_dim=2 * BANDS, frames_mean=mean.tolist() if normaliser else [],
                     frames_std=std.tolist() if normaliser else [])


@pytest.mark.parametrize("db", [-30.0, -6.0, 12.0])
def test_a_gained_window_is_what_the_front_end_gives_for_the_louder_or_quieter_audio(db):
    cfg = MelConfig(sample_rate=SR, n_fft=512, hop_length=128, n_mels=BANDS)
    front = MelFrontend(cfg)
    wave = np.concatenate([tone(0.5, 330.0, seed=1) * 0.3, np.zeros(SR // 4)]).astype(np.float32)  # ends in silence
    rng = np.random.default_rng(0)
    mean, std = rng.uniform(-8, -2, BANDS).astype(np.float32), rng.uniform(1, 3, BANDS).astype(np.float32)
    leveller = Leveller(meta(mean, std), "meta.json", 30.0)

    def frames(w: np.ndarray) -> np.ndarray:  # normalised, two log-mel frames stacked per row, as a store holds them
        logmel = front(torch.from_numpy(w)).T.double().numpy()
        logmel = logmel[: len(logmel) // 2 * 2]
        return ((logmel - mean) / std).reshape(-1, 2 * BANDS).astype(np.float32)
    clean, louder = frames(wave), frames(wave * np.float32(10 ** (db / 20)))
    np.testing.assert_array_equal(leveller(clean, 0.0), clean)
    np.testing.assert_allclose(leveller(clean, db), louder, atol=2e-3)
    # silence stays at the floor, however much quieter or louder
    silent = (np.log(cfg.log_eps) - mean) / std
    np.testing.assert_allclose(leveller(clean, db)[-1].reshape(2, BANDS), np.stack([silent, silent]), atol=2e-3)
    draws = leveller.draw(np.random.default_rng(1), 4000)
    assert draws.min() >= -30 and draws.max() <= 30 and draws.min() < -29 and draws.max() > 29


def test_gained_windows_keep_their_codes_and_draw_per_global_batch(semitone_store):
    s = TokenStore(semitone_store[0])
    items = list(range(len(s)))
    clean = WindowSource(s, items, 32, codes=True, frames=True)
    gained = WindowSource(s, items, 32, codes=True, frames=True, gain_db=20.0)
    a, b = clean.batch(3, 7, 8), gained.batch(3, 7, 8)
    torch.testing.assert_close(a.codes, b.codes)  # the same windows and code targets
    torch.testing.assert_close(a.lengths, b.lengths)
    moved = 0
    for i in range(8):
        n = int(b.lengths[i])
        # each window is the clean one at one level: the mean log power of its loud bands moved alike
        la = a.frames[i, :n].numpy().reshape(n, -1, len(gained.leveller.mean)) * gained.leveller.std
        lb = b.frames[i, :n].numpy().reshape(n, -1, len(gained.leveller.mean)) * gained.leveller.std
        loud = la > np.percentile(la, 90)
        shift = (lb - la)[loud]
        assert shift.std() < 0.05 * max(abs(shift.mean()), 1.0)
        assert abs(shift.mean()) <= 20 * np.log(10) / 10 + 1e-3
        moved += abs(shift.mean()) > 0.01
        assert (b.frames[i, n:] == 0).all()  # padding stays padding
    assert moved >= 6
    half = gained.batch(3, 7, 8, part=slice(4, 8))  # a data-parallel rank's rows: the same rows, the same gains
    torch.testing.assert_close(half.frames, b.frames[4:, : half.frames.shape[1]])
    # with a shift too: the same windows, moved in level then along the bands
    both = WindowSource(s, items, 32, codes=True, frames=True, gain_db=20.0, shift=2).batch(3, 7, 8)
    assert not torch.equal(both.frames, b.frames) and torch.equal(both.codes, a.codes)
    with pytest.raises(ValueError, match="gain"):
        WindowSource(s, items, 32, codes=True, frames=False, gain_db=5.0)


def test_gain_config_and_store_errors(store):
    base = dict(dim=32, layers=2, heads=2, max_len=64, codebook_size=16, num_codebooks=1, frame_dim=12)
    for bad in (dict(objective="mlm", gain_db=6.0),  # reads codes only
                dict(objective="masked_frames", gain_db=-1.0),
                dict(objective="masked_frames", gain_db=61.0)):
        with pytest.raises(ConfigError, match="model.gain_db"):
            PriorConfig(**base, **bad)
    PriorConfig(**base, objective="mlm", inputs="codes+frames", gain_db=6.0)
    zeros = np.zeros(BANDS, np.float32)
    with pytest.raises(UserError, match="meta.json: model.gain_db needs the frames' normaliser"):
        Leveller(meta(zeros, zeros, normaliser=False), "meta.json", 6.0)


def test_a_gained_prior_trains_and_its_validation_stays_clean(store, tmp_path, monkeypatch):
    from musetok.prior.train import PriorRunConfig, train_prior
    made = record_window_sources(monkeypatch, "leveller")
    over = TINY_PRIOR + ["model.inputs=frames", "model.aux_frames=1.0", "train.steps=20", "model.max_len=32"]
    for db in (0, 12):
        train_prior(load_config(PriorRunConfig, None, over + [f"model.gain_db={db}"]), store, tmp_path / f"p{db}",
                    progress=False)
    train = {db: [json.loads(ln)["loss"] for ln in (tmp_path / f"p{db}" / "metrics.jsonl").read_text().splitlines()
                  if json.loads(ln)["split"] == "train"] for db in (0, 12)}
    assert train[12] != train[0]  # training read gained windows
    assert "training windows heard up to +-12 dB louder or quieter |" in (tmp_path / "p12" / "README.md").read_text()
    assert "louder" not in (tmp_path / "p0" / "README.md").read_text()
    assert made[0] is None and made[1] is None  # gain 0: train and valid windows
    assert made[2] is not None and made[2].db == 12 and made[3] is None  # gained train, clean valid
