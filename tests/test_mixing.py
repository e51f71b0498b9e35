"""In-batch mixing (`model.mix_prob`, WavLM's utterance mixing / MERT's in-batch noise): what the prior reads
gets a stretch of another window mixed in; what it predicts stays the clean window's."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from musetok.prior.config import PriorConfig
from musetok.prior.data import Batch, Mixer, WindowSource
from musetok.prior.masking import corrupt_frames, row_generators, span_mask
from musetok.prior.model import Prior
from musetok.prior.objectives import compute_loss
from musetok.shared.config import ConfigError, load_config
from musetok.shared.errors import UserError
from musetok.shared.token_store import StoreMeta, TokenStore
from tests.conftest import TINY_PRIOR, record_window_sources


def test_the_stretch_is_added_in_power_at_the_level_asked():
    """Normalised frames are log power after `x * std + mean`; the mix adds the other window's power, scaled so
    that its energy over the stretch is `level_db` relative to the window's own there."""
    bands, s = 4, 2
    meta = StoreMeta(kind="mel", format_version=1, tokenizer_id="t", codebook_size=8, num_codebooks=1,
                     frame_rate=10.0, frames_dim=bands * s, frames_mean=[-3.0, -2.0, -4.0, -1.0],
                     frames_std=[2.0, 1.0, 0.5, 3.0])
    mixer = Mixer(meta, "meta.json", prob=1.0, db=5.0)
    rng = np.random.default_rng(0)
    frames, other = rng.standard_normal((10, bands * s)), rng.standard_normal((3, bands * s))
    out = mixer(frames, other, at=4, level_db=-3.0)
    np.testing.assert_array_equal(out[:4], frames[:4])
    np.testing.assert_array_equal(out[7:], frames[7:])
    power = lambda x: np.exp(x.reshape(len(x), s, bands) * meta.frames_std + meta.frames_mean)  # noqa: E731
    added = power(out[4:7]) - power(frames[4:7])
    np.testing.assert_allclose(added / power(other), (added / power(other)).flat[0], rtol=1e-5)  # one gain
    assert 10 * np.log10(added.mean() / power(frames[4:7]).mean()) == pytest.approx(-3.0, abs=1e-4)


def test_mixed_windows_keep_clean_targets_and_are_drawn_per_global_batch(store):
    s = TokenStore(store)
    items = list(range(len(s)))
    clean = WindowSource(s, items, 32, codes=True, frames=True)
    mixed = WindowSource(s, items, 32, codes=True, frames=True, mix=(1.0, 5.0))
    a, b = clean.batch(3, 7, 8), mixed.batch(3, 7, 8)
    # the same windows, codes and (target) frames as without mixing; only what the prior reads differs
    torch.testing.assert_close(a.codes, b.codes)
    torch.testing.assert_close(a.frames, b.frames)
    assert a.frames_in is None and b.frames_in.shape == b.frames.shape
    for i in range(8):
        n = int(b.lengths[i])
        changed = (b.frames_in[i, :n] != b.frames[i, :n]).any(-1).numpy()
        where = np.flatnonzero(changed)
        assert 1 <= len(where) <= n // 2  # a stretch of at most half the window
        assert where[-1] - where[0] + 1 == len(where)  # one contiguous stretch
        assert (b.frames_in[i, n:] == 0).all()  # padding stays padding
        # mixing only adds power: no band of the mixed stretch is quieter than the clean one
        assert (b.frames_in[i, where] >= b.frames[i, where] - 1e-5).all()
    # a data-parallel rank's rows are the same rows of the global batch, mixed the same way
    half = mixed.batch(3, 7, 8, part=slice(4, 8))
    torch.testing.assert_close(half.frames_in, b.frames_in[4:, : half.frames_in.shape[1]])
    # mix_prob 0: nothing is mixed and nothing else changes
    off = WindowSource(s, items, 32, codes=True, frames=True, mix=(0.0, 5.0)).batch(3, 7, 8)
    assert off.frames_in is None
    torch.testing.assert_close(off.frames, a.frames)


def test_the_prior_reads_the_mixed_frames_and_predicts_the_clean_ones():
    torch.manual_seed(0)
    m = Prior(PriorConfig(objective="masked_frames", dim=32, layers=2, heads=2, max_len=64, frame_dim=12,
                          mix_prob=0.5))
    frames, heard = torch.randn(2, 20, 12), torch.randn(2, 20, 12)
    lengths, seeds = torch.full((2,), 20), torch.arange(2)
    got = compute_loss(m, Batch(None, frames, lengths, seeds, frames_in=heard)).loss
    gens = row_generators(seeds)  # the masking draws, in compute_loss's order
    mask = span_mask(lengths, 20, m.cfg.mask_rate, m.cfg.mask_span, gens)
    h = m(corrupt_frames(heard, mask, lengths, gens), keep=mask).hidden
    assert torch.allclose(got, F.l1_loss(m.frame_prediction(h), frames[mask]), atol=1e-6)
    assert not torch.allclose(got, compute_loss(m, Batch(None, frames, lengths, seeds)).loss)


def test_mixing_config_and_store_errors(store, tmp_path):
    from musetok.prior.train import PriorRunConfig, train_prior
    base = dict(dim=32, layers=2, heads=2, max_len=64, codebook_size=16, num_codebooks=1, frame_dim=12)
    for bad in (dict(objective="mlm", mix_prob=0.5),  # reads codes only
                dict(objective="next_frames", mix_prob=0.5),  # causal
                dict(objective="masked_frames", mix_prob=1.5),
                dict(objective="masked_frames", mix_prob=0.5, mix_db=-1.0)):
        with pytest.raises(ConfigError, match="model.mix_"):
            PriorConfig(**base, **bad)
    old = tmp_path / "old_store"  # a store written before stores recorded their normaliser
    shutil.copytree(store, old)
    meta = json.loads((old / "meta.json").read_text())
    meta.update(frames_mean=[], frames_std=[])
    (old / "meta.json").write_text(json.dumps(meta))
    run = load_config(PriorRunConfig, None, TINY_PRIOR + ["model.inputs=frames", "model.mix_prob=0.5",
                                                          "train.steps=2"])
    with pytest.raises(UserError, match=r"old_store/meta.json: model.mix_prob needs the frames' normaliser"):
        train_prior(run, old, tmp_path / "p", progress=False)
    assert not (tmp_path / "p" / "model.safetensors").exists()


def test_a_mixing_prior_trains_and_its_validation_stays_clean(store, tmp_path, monkeypatch):
    from musetok.prior.train import PriorRunConfig, train_prior
    made = record_window_sources(monkeypatch, "mixer")
    over = TINY_PRIOR + ["model.inputs=frames", "model.aux_frames=1.0", "train.steps=30", "model.max_len=32"]
    runs = {p: train_prior(load_config(PriorRunConfig, None, over + [f"model.mix_prob={p}"]), store,
                           tmp_path / f"p{p}", progress=False) for p in (0.0, 1.0)}
    recs = {p: [json.loads(ln) for ln in (tmp_path / f"p{p}" / "metrics.jsonl").read_text().splitlines()]
            for p in runs}
    train = {p: [x["loss"] for x in r if x["split"] == "train"] for p, r in recs.items()}
    assert train[1.0] != train[0.0]  # training read mixed windows
    assert np.mean(train[1.0][-2:]) < train[1.0][0]
    assert json.loads((tmp_path / "p1.0" / "config.json").read_text())["config"]["mix_prob"] == 1.0
    card = (tmp_path / "p1.0" / "README.md").read_text()
    assert "| reads -> predicts | frames -> codes + 1 x frames; 100% of training windows heard with another mixed " \
           "in at +-5 dB |" in card
    assert "mixed" not in (tmp_path / "p0.0" / "README.md").read_text()
    assert made[0] is None and made[1] is None  # mix_prob 0: train and valid windows
    assert made[2] is not None and made[2].prob == 1.0 and made[3] is None  # mixed train, clean valid
