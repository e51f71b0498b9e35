"""The chroma target (`model.aux_chroma`, MERT's musical target): what a semitone store records, the chroma it
computes from its frames, the loss it adds, and what is refused."""

import json

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from musetok.prior.config import PriorConfig
from musetok.prior.data import Batch, WindowSource
from musetok.prior.masking import corrupt_codes, corrupt_frames, row_generators, span_mask
from musetok.prior.model import Prior
from musetok.prior.objectives import compute_loss
from musetok.shared.config import ConfigError, load_config
from musetok.shared.errors import UserError
from musetok.shared.mel import MelFrontend
from musetok.shared.token_store import TokenStore
from tests.conftest import SR, TINY_PRIOR


def test_semitone_store_records_each_band_pitch_class_and_the_normaliser(semitone_store):
    store_dir, mel, stats = semitone_store
    meta = json.loads((store_dir / "meta.json").read_text())
    centres = librosa.cqt_frequencies(mel.n_mels, fmin=mel.semitone_low, bins_per_octave=12)
    names = [librosa.hz_to_note(f, unicode=False)[:-1] for f in centres]  # e.g. "C#"
    assert [librosa.note_to_midi(n + "4") % 12 for n in names] == meta["frames_pitch_class"]
    np.testing.assert_allclose(meta["frames_mean"], stats.mean, rtol=1e-6)
    np.testing.assert_allclose(meta["frames_std"], stats.std, rtol=1e-6)


def test_chroma_targets_follow_the_tone_and_match_an_independent_computation(semitone_store):
    store_dir, mel, _ = semitone_store
    store = TokenStore(store_dir)
    src = WindowSource(store, [0, 1], max_len=40, codes=False, frames=True, chroma=True)
    batch = src.batch(0, 0, 4)
    assert batch.chroma.shape == (*batch.frames.shape[:2], 2, 12)  # downsample 2: two mel frames per code frame
    torch.testing.assert_close(batch.chroma.sum(-1), torch.ones(batch.chroma.shape[:-1]))
    # independently: the semitone spectrum of the file, its power summed per pitch class over all octaves
    for i in range(2):
        e = store.items[i]
        y, sr = sf.read(store_dir.parent / "audio" / e.path, dtype="float32")
        assert sr == SR
        logmel = MelFrontend(mel)(torch.from_numpy(y)).numpy()  # (bands, T)
        pcs = np.round(librosa.hz_to_midi(librosa.cqt_frequencies(mel.n_mels, fmin=mel.semitone_low))).astype(int) % 12
        power = np.exp(logmel)
        want = np.stack([power[pcs == c].sum(0) for c in range(12)], -1)
        want = want / want.sum(-1, keepdims=True)  # (T, 12)
        got = src.chroma(store.frames_window(i, 0, e.length).astype(np.float32)).reshape(-1, 12)[: len(want)]
        np.testing.assert_allclose(got[4:-4], want[4:-4], atol=2e-2)  # float16 frames; edges padded
        expect = 9 if e.path in ("0.wav", "2.wav") else 1  # A3 (pitch class 9) or C#4 (1)
        assert np.mean(got[4:-4].argmax(-1) == expect) > 0.9


def cfg(**kw) -> PriorConfig:
    base = dict(dim=32, layers=2, heads=2, max_len=64, codebook_size=16, num_codebooks=1, frame_dim=12,
                chroma_dim=24)
    base.update(kw)
    return PriorConfig(**base)


@pytest.mark.parametrize("objective,inputs", [("mlm", "frames"), ("mlm", "codes"), ("masked_frames", "")])
def test_aux_chroma_adds_the_kl_of_the_masked_frames_chroma(objective, inputs):
    torch.manual_seed(0)
    m = Prior(cfg(objective=objective, inputs=inputs, aux_chroma=0.5))
    codes, frames = torch.randint(0, 16, (2, 1, 20)), torch.randn(2, 20, 12)
    chroma = torch.softmax(torch.randn(2, 20, 2, 12), -1)
    batch = Batch(codes, frames, torch.full((2,), 20), torch.arange(2), chroma)
    with_aux = compute_loss(m, batch).loss
    m.cfg.aux_chroma = 0.0
    without = compute_loss(m, batch).loss.detach()
    gens = row_generators(batch.seeds)  # the masking draws, in compute_loss's order
    mask = span_mask(batch.lengths, 20, m.cfg.mask_rate, m.cfg.mask_span, gens)
    x = corrupt_codes(codes, mask, 16, 16, gens) if m.cfg.reads_codes else corrupt_frames(frames, mask, batch.lengths,
                                                                                            gens)
    h = m(x, keep=mask).hidden
    q, p = torch.log_softmax(m.chroma_head(h).view(-1, 2, 12), -1), chroma[mask]
    kl = (p * (p.log() - q)).sum(-1).mean()
    assert torch.allclose(with_aux - without, 0.5 * kl, atol=1e-5)
    with_aux.backward()
    assert m.chroma_head.weight.grad.abs().sum() > 0


def test_aux_chroma_config_and_store_errors(store, tmp_path):
    from musetok.prior.train import PriorRunConfig, train_prior
    with pytest.raises(ConfigError, match="model.aux_chroma"):
        cfg(objective="ar", aux_chroma=1.0)
    with pytest.raises(ConfigError, match="model.aux_chroma"):
        cfg(aux_chroma=-1.0)
    run = load_config(PriorRunConfig, None, TINY_PRIOR + ["model.inputs=frames", "model.aux_chroma=1.0",
                                                          "train.steps=2"])
    with pytest.raises(UserError, match=r"meta.json: model.aux_chroma needs each frame band's pitch class"):
        train_prior(run, store, tmp_path / "p", progress=False)  # a mel store: no pitch classes
    assert not (tmp_path / "p" / "model.safetensors").exists()


def test_a_chroma_prior_trains_on_a_semitone_store_and_embeds(semitone_store, tmp_path):
    from musetok.prior.builder import load_prior
    from musetok.prior.train import PriorRunConfig, train_prior
    store_dir, _, _ = semitone_store
    run = load_config(PriorRunConfig, None, TINY_PRIOR + ["model.inputs=frames", "model.aux_frames=1.0",
                                                          "model.aux_chroma=1.0", "train.steps=60",
                                                          "model.max_len=32"])
    r = train_prior(run, store_dir, tmp_path / "p", progress=False)
    prior = load_prior(tmp_path / "p")
    assert prior.cfg.chroma_dim == 24 and prior.cfg.aux_chroma == 1.0
    recs = [json.loads(ln) for ln in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()]
    # the perplexity reported is of the codes alone: below exp(loss), which includes the frame and chroma terms
    last = [x for x in recs if x["split"] == "valid"][-1]
    assert r.valid_perplexity == pytest.approx(last["valid_perplexity"])
    assert r.valid_loss == pytest.approx(last["valid_loss"], abs=1e-5)
    assert r.valid_perplexity < 0.95 * np.exp(r.valid_loss)
    card = (tmp_path / "p" / "README.md").read_text()
    assert "| reads -> predicts | frames -> codes + 1 x frames + 1 x chroma |" in card
    train = [x["loss"] for x in recs if x["split"] == "train"]
    assert np.mean(train[-2:]) < 0.8 * train[0], train
    frames = torch.from_numpy(TokenStore(store_dir).frames_window(0, 0, 32).astype(np.float32))[None]
    states = prior(frames, output_hidden_states=True).hidden_states
    assert len(states) == 3 and torch.isfinite(states[-1]).all()


def test_a_harmonic_conv_prior_trains_on_a_semitone_store(semitone_store, tmp_path):
    """`model.conv_harmonics` on semitone bands: trained, saved and read back with its harmonic channels."""
    from musetok.prior.builder import load_prior
    from musetok.prior.train import PriorRunConfig, train_prior
    store_dir, _, _ = semitone_store
    run = load_config(PriorRunConfig, None, TINY_PRIOR + ["model.inputs=frames", "model.aux_frames=1.0",
                                                          "model.frame_conv=true", "model.conv_harmonics=[0.5,1,2,3]",
                                                          "model.conv_channels=8", "train.steps=30",
                                                          "model.max_len=32"])
    train_prior(run, store_dir, tmp_path / "p", progress=False)
    prior = load_prior(tmp_path / "p")
    assert prior.cfg.conv_harmonics == (0.5, 1.0, 2.0, 3.0) and prior.proj_conv.shifts == [-12, 0, 12, 19]
    assert prior.proj_conv.conv.in_channels == 4 * prior.cfg.frame_dim // prior.cfg.frame_bands
    assert "plus a convolution along their bands and their harmonics 0.5, 1, 2, 3" in \
        (tmp_path / "p" / "README.md").read_text()
    train = [json.loads(ln)["loss"] for ln in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()
             if json.loads(ln)["split"] == "train"]
    assert np.mean(train[-2:]) < train[0]
