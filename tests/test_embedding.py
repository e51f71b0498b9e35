"""Embeddings: windows, pooling, batching, causal priors, the store and audio routes, the CLI."""

import csv

import numpy as np
import pytest
import torch

from musetok.embedding import Embedder, embed_corpus, parse_layers
from musetok.embedding.embedder import pool_frames, windows
from musetok.shared.errors import UserError
from tests.conftest import TINY_PRIOR, tone


def test_windows_overlap_and_cover_every_frame_once():
    for t, win in [(10, 32), (32, 32), (33, 32), (100, 32), (1000, 64), (65, 64)]:
        ws = windows(t, win)
        covered = np.concatenate([np.arange(lo, hi) for _, lo, hi in ws])
        assert (covered == np.arange(t)).all(), (t, win)  # cores are disjoint, in order, and cover [0, t)
        for s, lo, hi in ws:
            n = min(t, win)
            assert 0 <= s and s + n <= t  # every window is full length, the last one too
            assert s <= lo < hi <= s + n
            # a quarter window of context on each side, except at the clip's own ends
            assert lo == 0 or lo - s >= win // 4
            assert hi == t or s + n - hi >= win // 4


def test_long_clip_frames_see_context_across_window_edges(trained_tokenizer, prior_dirs):
    """A frame in the middle of a long clip gets the same state as when its own neighbourhood is embedded
    alone, centred: windows overlap, so no frame sits at a window's edge without context."""
    emb = Embedder.from_pretrained(trained_tokenizer, prior_dirs["mlm"])
    codes = emb.inputs_from_waveform(tone(6.0, 220.0), 16000)  # ~188 frames, context 32
    full = emb.embed_inputs([codes])[0]
    win = emb.prior.cfg.max_len
    compared = 0
    for t in (41, 48, 64, 100, 112):
        s = t - win // 2
        alone = emb.embed_inputs([codes[:, s:s + win]])[0]
        start = next(w for w in windows(codes.shape[1], win) if w[1] <= t < w[2])[0]
        if start == s:  # the frame was taken from exactly this window
            torch.testing.assert_close(full.layers[-1][t], alone.layers[-1][t - s], atol=1e-4, rtol=1e-4)
            compared += 1
        # in every case the frame was at least a quarter window from its window's edges
        assert win // 4 <= t - start < win - win // 4
    assert compared >= 2


@pytest.mark.parametrize("objective", ["mlm", "masked_frames", "frames_codes"])
def test_embeddings_invariant_to_batch_and_padding(trained_tokenizer, prior_dirs, objective):
    emb = Embedder.from_pretrained(trained_tokenizer, prior_dirs[objective], batch_size=16)
    clips = [emb.inputs_from_waveform(tone(s, f), 16000) for s, f in [(0.4, 200.0), (3.1, 330.0), (1.3, 262.0)]]
    together = emb.embed_inputs(clips)
    emb.batch_size = 1
    alone = [emb.embed_inputs([c])[0] for c in clips]
    for a, b in zip(together, alone):
        assert a.num_frames == b.num_frames
        for la, lb in zip(a.layers, b.layers):
            torch.testing.assert_close(la, lb, atol=1e-4, rtol=1e-4)
    # the 3.1 s clip (~100 frames) is longer than max_len=32: windows cover every frame once
    assert together[1].num_frames == (clips[1].shape[-1] if objective == "mlm" else clips[1].shape[0])


def test_pooling():
    from musetok.embedding import Embedding
    x = torch.randn(50, 8)
    e = Embedding([x, 2 * x], ["input", "layer1"], 43.0)
    torch.testing.assert_close(e.pooled("mean"), torch.stack([x.mean(0), 2 * x.mean(0)]))
    ms = e.pooled("meanstd")
    assert ms.shape == (2, 16)
    torch.testing.assert_close(ms[0, 8:], x.std(0, unbiased=False))
    torch.testing.assert_close(e.pooled("max")[1], 2 * x.amax(0))
    msm = e.pooled()  # the default: mean, std and max, what `musetok embed` and bench-repr use
    assert msm.shape == (2, 24)
    torch.testing.assert_close(msm[:, :16], ms)
    torch.testing.assert_close(msm[1, 16:], 2 * x.amax(0))
    np.testing.assert_allclose(pool_frames(x.numpy(), "meanstdmax"), msm[0].numpy(), rtol=1e-6)  # numpy in, out
    with pytest.raises(UserError, match="unknown pooling"):
        e.pooled("median")


def test_causal_prior_embeddings_do_not_see_the_future(trained_tokenizer, prior_dirs):
    emb = Embedder.from_pretrained(trained_tokenizer, prior_dirs["ar"])
    codes = emb.inputs_from_waveform(tone(0.6, 262.0), 16000)  # shorter than the context: one window
    n = codes.shape[1] // 2
    whole, prefix = emb.embed_inputs([codes, codes[:, :n]])
    for a, b in zip(whole.layers, prefix.layers):
        torch.testing.assert_close(a[:n], b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(whole.layers[-1][n:], whole.layers[-1][n - 1].expand(codes.shape[1] - n, -1))


def test_embed_api_any_rate_and_channels(trained_tokenizer, prior_dirs):
    emb = Embedder.from_pretrained(trained_tokenizer, prior_dirs["mlm"])
    y44 = tone(2.0, 220.0, sr=44100)
    e = emb.embed(np.stack([y44, y44]), 44100)  # stereo (C, N) at 44.1 kHz
    e16 = emb.embed(torch.from_numpy(tone(2.0, 220.0)), 16000)
    assert len(e.layers) == 3 and e.layer_names == ["input", "layer1", "layer2"]
    assert e.layers[0].shape == (e.num_frames, 64)
    assert e.frame_rate == pytest.approx(16000 / 256 / 2)
    assert abs(e.num_frames - e16.num_frames) <= 1
    assert e.pooled().shape == (3, 3 * 64)


def test_mismatched_tokenizer_refused(tmp_path, corpus, prior_dirs):
    from musetok.shared.config import load_config
    from musetok.shared.io import CheckpointError
    from musetok.tokenizer.train import TokenizerRunConfig, train_tokenizer
    from tests.conftest import TINY_TOKENIZER
    other = tmp_path / "other"
    train_tokenizer(load_config(TokenizerRunConfig, None, TINY_TOKENIZER + ["train.steps=5"]), corpus, other,
                    progress=False)
    with pytest.raises(CheckpointError, match="prior was trained on tokenizer"):
        Embedder.from_pretrained(other, prior_dirs["mlm"])


@pytest.mark.parametrize("objective", ["mlm", "masked_frames", "frames_codes"])
def test_embed_store_equals_embed_audio(tmp_path, trained_tokenizer, prior_dirs, store, objective):
    # a store holds each file as tokenized, at its own level: the audio read as it is gives the same
    emb = Embedder.from_pretrained(trained_tokenizer, prior_dirs[objective], level_db=None)
    a = embed_corpus(emb, tmp_path / "a", audio=store.parent / "audio", progress=False)
    b = embed_corpus(emb, tmp_path / "b", store=store, progress=False)
    assert a.count == b.count == 10
    assert open(a.index_path).read().splitlines()[1:] == open(b.index_path).read().splitlines()[1:]
    # the store keeps mel frames as float16: the continuous route agrees to that precision
    tol = 1e-5 if objective == "mlm" else 2e-2
    np.testing.assert_allclose(np.load(a.array_path), np.load(b.array_path), atol=tol, rtol=tol)


def test_layers_by_name_and_number():
    names = ["input", "layer1", "layer2", "layer3"]
    assert parse_layers("input,layer2", names) == [0, 2]
    assert parse_layers("3,last,layer1", names) == [3, 3, 1]
    assert parse_layers("all", names) == [0, 1, 2, 3]
    with pytest.raises(UserError, match="unknown layer 'layer99'"):
        parse_layers("layer99", names)


def test_cli_pretrain_and_embed(tmp_path, store, trained_tokenizer, corpus):
    from musetok.cli import main
    args = ["pretrain", "--store", str(store), "--out", str(tmp_path / "p"), "--quiet"]
    for s in TINY_PRIOR + ["train.steps=20"]:
        args += ["--set", s]
    assert main(args) == 0
    assert main(["embed", "--tokenizer", str(trained_tokenizer), "--prior", str(tmp_path / "p"),
                 "--audio", str(corpus), "--out", str(tmp_path / "e"), "--quiet"]) == 0
    x = np.load(tmp_path / "e.npy")
    assert x.shape == (8, 3, 3 * 64) and x.dtype == np.float32  # mean, std and max by default
    rows = list(csv.DictReader(open(tmp_path / "e.csv")))
    assert [r["path"] for r in rows] == sorted(p.name for p in corpus.iterdir())
    assert main(["embed", "--tokenizer", str(trained_tokenizer), "--prior", str(tmp_path / "p"),
                 "--store", str(store), "--out", str(tmp_path / "f"), "--pool", "none", "--layers", "last",
                 "--format", "npz", "--quiet"]) == 0
    z = np.load(tmp_path / "f.npz")
    rows = list(csv.DictReader(open(tmp_path / "f.csv")))
    assert z["embeddings"].shape == (sum(int(r["frames"]) for r in rows), 1, 64)
    assert list(z["layers"]) == ["layer2"]
    assert main(["embed", "--tokenizer", str(trained_tokenizer), "--prior", str(tmp_path / "p"),
                 "--store", str(store), "--out", str(tmp_path / "g"), "--pool", "meanstd", "--layers",
                 "input,layer1", "--quiet"]) == 0
    assert np.load(tmp_path / "g.npy").shape == (10, 2, 128)
    assert (tmp_path / "g.layers.txt").read_text().splitlines()[:2] == ["input", "layer1"]
    assert main(["embed", "--tokenizer", str(trained_tokenizer), "--prior", str(tmp_path / "p"),
                 "--store", str(store), "--out", str(tmp_path / "h"), "--layers", "layer99", "--quiet"]) == 2
