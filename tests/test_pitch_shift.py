"""Pitch-shift augmentation (`model.pitch_shift`): training windows of a semitone store transposed by whole
semitones, their frames moved along the bands in log power, the code targets left as they are."""

import json

import numpy as np
import pytest
import torch

from musetok.prior.config import PriorConfig
from musetok.prior.data import Chroma, Transposer, WindowSource
from musetok.shared.config import ConfigError, load_config
from musetok.shared.errors import UserError
from musetok.shared.token_store import StoreMeta, TokenStore
from tests.conftest import TINY_PRIOR, record_window_sources

BANDS = 6


def meta(pitch_class=True) -> StoreMeta:
    return StoreMeta(kind="mel", format_version=1, tokenizer_id="t", codebook_size=8, num_codebooks=1,
                     frame_rate=10.0, frames_dim=2 * BANDS, frames_mean=[-3.0, -2.0, -4.0, -1.0, -5.0, -2.5],
                     frames_std=[2.0, 1.0, 0.5, 3.0, 1.5, 1.0],
                     frames_pitch_class=list(range(BANDS)) if pitch_class else [])


def test_a_transposed_frame_is_the_same_log_power_some_bands_over():
    m = meta()
    t = Transposer(m, "meta.json", 3)
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((5, 2 * BANDS)).astype(np.float32)  # normalised, 2 stacked frames of 6 bands
    logp = lambda x: x.reshape(len(x), 2, BANDS) * m.frames_std + m.frames_mean  # noqa: E731
    np.testing.assert_array_equal(t(frames, 0), frames)
    up, down = logp(t(frames, 2)), logp(t(frames, -1))
    np.testing.assert_allclose(up[..., 2:], logp(frames)[..., :-2], rtol=1e-5, atol=1e-5)  # band b -> b + 2
    np.testing.assert_allclose(down[..., :-1], logp(frames)[..., 1:], rtol=1e-5, atol=1e-5)  # band b -> b - 1
    floor = logp(frames).min()  # the bands the shift empties hold the window's quietest level
    np.testing.assert_allclose(up[..., :2], floor, rtol=1e-5)
    np.testing.assert_allclose(down[..., -1], floor, rtol=1e-5)
    draws = t.draw(np.random.default_rng(1), 2000)
    assert set(draws.tolist()) == set(range(-3, 4))  # every shift in -3..3, and no other


def test_transposed_windows_keep_their_codes_and_draw_per_global_batch(semitone_store):
    s = TokenStore(semitone_store[0])
    items = list(range(len(s)))
    clean = WindowSource(s, items, 32, codes=True, frames=True)
    moved = WindowSource(s, items, 32, codes=True, frames=True, shift=4)
    a, b = clean.batch(3, 7, 8), moved.batch(3, 7, 8)
    # the same windows and code targets; the frames are each window's, some semitones over
    torch.testing.assert_close(a.codes, b.codes)
    torch.testing.assert_close(a.lengths, b.lengths)
    t = moved.transposer
    shifts = []
    for i in range(8):
        n = int(b.lengths[i])
        k = next(k for k in range(-4, 5) if np.allclose(t(a.frames[i, :n].numpy(), k), b.frames[i, :n].numpy(),
                                                        atol=1e-5))
        shifts.append(k)
        assert (b.frames[i, n:] == 0).all()  # padding stays padding
    assert any(shifts)  # some windows moved (8 draws from 9 shifts are all 0 with chance 1 in 4e7)
    # a data-parallel rank's rows are the same rows of the global batch, moved the same way
    half = moved.batch(3, 7, 8, part=slice(4, 8))
    torch.testing.assert_close(half.frames, b.frames[4:, : half.frames.shape[1]])
    # chroma targets are computed from the moved frames: they move with them
    with_chroma = WindowSource(s, items, 32, codes=True, frames=True, chroma=True, shift=4).batch(3, 7, 8)
    torch.testing.assert_close(with_chroma.frames, b.frames)
    np.testing.assert_allclose(with_chroma.chroma.numpy(), chroma_of(s, b.frames.numpy()), rtol=1e-5, atol=1e-6)
    # no shift: nothing else changes
    torch.testing.assert_close(WindowSource(s, items, 32, codes=True, frames=True, shift=0).batch(3, 7, 8).frames,
                               a.frames)


def chroma_of(store: TokenStore, frames: np.ndarray) -> np.ndarray:
    return Chroma(store.meta, "meta.json")(frames)


def test_pitch_shift_config_and_store_errors(store, tmp_path):
    from musetok.prior.train import PriorRunConfig, train_prior
    base = dict(dim=32, layers=2, heads=2, max_len=64, codebook_size=16, num_codebooks=1, frame_dim=12)
    for bad in (dict(objective="mlm", pitch_shift=2),  # reads codes only
                dict(objective="mlm", inputs="codes+frames", pitch_shift=2),  # the codes it reads would not follow
                dict(objective="masked_frames", pitch_shift=-1),
                dict(objective="masked_frames", pitch_shift=25)):
        with pytest.raises(ConfigError, match="model.pitch_shift"):
            PriorConfig(**base, **bad)
    with pytest.raises(UserError, match="meta.json: model.pitch_shift moves frames along semitone bands"):
        Transposer(meta(pitch_class=False), "meta.json", 2)
    # the mel store of the other tests: its bands are not semitones
    run = load_config(PriorRunConfig, None, TINY_PRIOR + ["model.inputs=frames", "model.pitch_shift=2",
                                                          "train.steps=2"])
    with pytest.raises(UserError, match=r"store/meta.json: model.pitch_shift moves frames along semitone bands"):
        train_prior(run, store, tmp_path / "p", progress=False)
    assert not (tmp_path / "p" / "model.safetensors").exists()


def test_a_transposing_prior_trains_and_its_validation_stays_clean(semitone_store, tmp_path, monkeypatch):
    from musetok.prior.train import PriorRunConfig, train_prior
    made = record_window_sources(monkeypatch, "transposer")
    over = TINY_PRIOR + ["model.inputs=frames", "model.aux_frames=1.0", "train.steps=30", "model.max_len=32"]
    for k in (0, 3):
        train_prior(load_config(PriorRunConfig, None, over + [f"model.pitch_shift={k}"]), semitone_store[0],
                    tmp_path / f"p{k}", progress=False)
    train = {k: [json.loads(ln)["loss"] for ln in (tmp_path / f"p{k}" / "metrics.jsonl").read_text().splitlines()
                 if json.loads(ln)["split"] == "train"] for k in (0, 3)}
    assert train[3] != train[0]  # training read transposed windows
    assert np.mean(train[3][-2:]) < train[3][0]
    card = (tmp_path / "p3" / "README.md").read_text()
    assert "| reads -> predicts | frames -> codes + 1 x frames; training windows transposed by up to +-3 " \
           "semitones |" in card
    assert "transposed" not in (tmp_path / "p0" / "README.md").read_text()
    assert made[0] is None and made[1] is None  # pitch_shift 0: train and valid windows
    assert made[2] is not None and made[2].semitones == 3 and made[3] is None  # moved train, clean valid


def test_encode_frames_gives_the_codes_the_store_holds(semitone_store):
    from musetok.tokenizer.builder import load_tokenizer
    s = TokenStore(semitone_store[0])
    tok = load_tokenizer(semitone_store[0].parent / "tokenizer")
    for i in range(len(s)):
        n = s.items[i].length
        frames = torch.from_numpy(np.array(s.frames_window(i, 0, n)))[None]  # as stored (float16)
        np.testing.assert_array_equal(tok.encode_frames(frames)[0].numpy(), s.window(i, 0, n))


def test_recoded_windows_predict_the_codes_of_their_moved_frames(semitone_store):
    from musetok.tokenizer.builder import load_tokenizer
    s = TokenStore(semitone_store[0])
    items = list(range(len(s)))
    tok = load_tokenizer(semitone_store[0].parent / "tokenizer")
    frames = torch.from_numpy(np.concatenate([s.frames_window(i, 0, s.items[i].length) for i in items]))[None]
    torch.manual_seed(0)
    with torch.no_grad():  # k-means on these frames gives the untrained codebook codes that tell the tones apart
        x = frames.float().reshape(1, -1, tok.cfg.mel.n_mels).transpose(1, 2)
        tok.quantizer.train()(tok.encoder(x).transpose(1, 2))
    tok.eval()

    def recode(f):
        return tok.encode_frames(torch.from_numpy(f)[None])[0].numpy()
    kept = WindowSource(s, items, 32, codes=True, frames=True, shift=4)
    moved = WindowSource(s, items, 32, codes=True, frames=True, shift=4, recode=recode)
    clean = WindowSource(s, items, 32, codes=True, frames=True).batch(3, 7, 8)
    a, b = kept.batch(3, 7, 8), moved.batch(3, 7, 8)
    torch.testing.assert_close(a.frames, b.frames)  # the same windows, moved alike
    changed = 0
    for i in range(8):
        n = int(b.lengths[i])
        if torch.equal(b.frames[i, :n], clean.frames[i, :n]):  # not moved: the store's codes
            torch.testing.assert_close(b.codes[i], a.codes[i])
        else:  # moved: the tokenizer's codes of the moved frames, over the window's frames only
            torch.testing.assert_close(b.codes[i, :, :n], tok.encode_frames(b.frames[i:i + 1, :n])[0])
            assert (b.codes[i, :, n:] == 0).all()
            changed += int(not torch.equal(b.codes[i, :, :n], tok.encode_frames(clean.frames[i:i + 1, :n])[0]))
    assert changed  # the tokenizer heard the transposition: moved tones got other codes than clean ones
    # `both`: the kept codes, then the re-encoded ones, of the same windows moved alike
    two = WindowSource(s, items, 32, codes=True, frames=True, shift=4, recode=recode, views=2).batch(3, 7, 8)
    torch.testing.assert_close(two.frames, b.frames)
    torch.testing.assert_close(two.codes[:, :1], a.codes)
    torch.testing.assert_close(two.codes[:, 1:], b.codes)
    assert not torch.equal(two.codes[:, :1], two.codes[:, 1:])
    # unmoved windows (validation's) have the store's codes twice
    still = WindowSource(s, items, 32, codes=True, frames=True, views=2).batch(3, 7, 8)
    torch.testing.assert_close(still.codes, clean.codes.repeat(1, 2, 1))
    with pytest.raises(ValueError, match="views"):
        WindowSource(s, items, 32, codes=False, frames=True, views=2)


def test_recoding_needs_the_stores_tokenizer_and_trains_with_it(semitone_store, trained_tokenizer, tmp_path):
    from musetok.prior.train import PriorRunConfig, train_prior
    from musetok.tokenizer.builder import load_tokenizer
    base = dict(dim=32, layers=2, heads=2, max_len=64, codebook_size=16, num_codebooks=1, frame_dim=12)
    for bad in (dict(objective="mlm", inputs="frames", pitch_shift_codes="recoded"),  # nothing moves
                dict(objective="masked_frames", pitch_shift=2, pitch_shift_codes="recoded")):  # no codes to recode
        with pytest.raises(ConfigError, match="model.pitch_shift_codes"):
            PriorConfig(**base, **bad)
    run = load_config(PriorRunConfig, None, TINY_PRIOR + ["model.inputs=frames", "model.pitch_shift=2",
                                                          "model.pitch_shift_codes=recoded", "train.steps=2"])
    with pytest.raises(ConfigError, match="--tokenizer"):
        train_prior(run, semitone_store[0], tmp_path / "p", progress=False)
    other = load_tokenizer(trained_tokenizer)  # the mel store's tokenizer
    with pytest.raises(ConfigError, match=r"store/meta.json: the store holds the codes of tokenizer \w+, not"):
        train_prior(run, semitone_store[0], tmp_path / "p", progress=False, tokenizer=other)
    assert not (tmp_path / "p" / "model.safetensors").exists()
    r = train_prior(run, semitone_store[0], tmp_path / "p", progress=False,
                    tokenizer=load_tokenizer(semitone_store[0].parent / "tokenizer"))
    assert r.steps == 2 and (tmp_path / "p" / "model.safetensors").exists()
    assert "transposed by up to +-2 semitones, their code targets re-encoded by the tokenizer |" in \
        (tmp_path / "p" / "README.md").read_text()
    # both: a head for the kept codes and one for the re-encoded ones
    both = load_config(PriorRunConfig, None, TINY_PRIOR + ["model.inputs=frames", "model.pitch_shift=2",
                                                           "model.pitch_shift_codes=both", "train.steps=2"])
    assert both.model.target_codebooks[0] == 2 * run.model.target_codebooks[0]
    with pytest.raises(ConfigError, match="model.pitch_shift_codes: both .*--tokenizer"):
        train_prior(both, semitone_store[0], tmp_path / "b", progress=False)
    r = train_prior(both, semitone_store[0], tmp_path / "b", progress=False,
                    tokenizer=load_tokenizer(semitone_store[0].parent / "tokenizer"))
    assert r.steps == 2 and r.valid_accuracy is not None
    from musetok.prior.builder import load_prior
    head = load_prior(tmp_path / "b").head_bias
    assert head.shape == (2, TokenStore(semitone_store[0]).meta.codebook_size)
    assert "the kept and the re-encoded code targets each through a head of its own |" in \
        (tmp_path / "b" / "README.md").read_text()
