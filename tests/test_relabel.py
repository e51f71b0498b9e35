"""Second-round codes (`musetok relabel`): k-means on a prior's layer becomes a new store's codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from musetok.cli import main
from musetok.embedding import Embedder
from musetok.embedding.embedder import prior_states
from musetok.embedding.relabel import relabel_store
from musetok.prior.builder import load_prior
from musetok.prior.train import PriorRunConfig, train_prior
from musetok.shared.config import load_config
from musetok.shared.errors import UserError
from musetok.shared.io import CheckpointError
from musetok.shared.token_store import StoreMeta, TokenStore, TokenStoreWriter

from .conftest import TINY_PRIOR


@pytest.fixture(scope="module")
def relabelled(tmp_path_factory, store, prior_dirs):
    out = tmp_path_factory.mktemp("relabel") / "store2"
    r = relabel_store(prior_dirs["frames_codes"], store, out, codes=16, fit_frames=2000)
    return out, r


def test_codes_are_the_nearest_centroid_of_the_middle_layer(relabelled, store, prior_dirs):
    out, r = relabelled
    old, new = TokenStore(store), TokenStore(out)
    assert r.files == len(old) == len(new) and [e.path for e in new.items] == [e.path for e in old.items]
    assert new.meta.num_codebooks == 1 and new.meta.codebook_size == 16
    assert new.meta.tokenizer_id == old.meta.tokenizer_id and new.meta.codes_source == r.source
    assert "layer1" in r.source  # a 2-block prior: the middle block
    centroids = torch.from_numpy(np.load(out / "centroids.npy"))
    prior = load_prior(prior_dirs["frames_codes"])
    frames = [np.asarray(old.frames_window(i, 0, old.items[i].length), np.float32) for i in range(len(old))]
    states = prior_states(prior, frames)
    used = set()
    for i, s in enumerate(states):
        want = torch.cdist(s[1], centroids).argmin(1).numpy()
        assert np.array_equal(np.asarray(new.codes(i))[0], want)
        n = old.items[i].length
        assert np.array_equal(new.frames_window(i, 0, n), old.frames_window(i, 0, n))
        used |= set(want.tolist())
    assert r.usage == len(used) / 16 and r.usage > 0.5


def test_rerun_continues_and_other_settings_are_refused(relabelled, store, prior_dirs):
    out, r = relabelled
    before = [np.asarray(c).copy() for c in map(TokenStore(out).codes, range(len(TokenStore(out))))]
    again = relabel_store(prior_dirs["frames_codes"], store, out, codes=16, fit_frames=2000)
    assert again.files == 0 and again.source == r.source
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(before, map(TokenStore(out).codes, range(len(before)))))
    with pytest.raises(UserError, match="relabel.json: this store was relabelled with other settings"):
        relabel_store(prior_dirs["frames_codes"], store, out, codes=8, fit_frames=2000)
    with pytest.raises(UserError, match="--layer: unknown layer 'layer9'"):
        relabel_store(prior_dirs["frames_codes"], store, out.parent / "x", layer="layer9", codes=16)
    assert json.loads((out / "relabel.json").read_text())["codes"] == 16
    # a crash between the centroids and their record: the rerun fits again instead of refusing the folder
    crashed = out.parent / "crashed"
    crashed.mkdir()
    (crashed / "centroids.npy").write_bytes(b"torn")
    assert relabel_store(prior_dirs["frames_codes"], store, crashed, codes=16, fit_frames=2000).files == len(before)
    assert np.load(crashed / "centroids.npy").shape == (16, 64)


def test_a_frames_prior_learns_them_and_embeds_with_the_first_tokenizer(relabelled, trained_tokenizer, tmp_path,
                                                                          corpus):
    out, r = relabelled
    run = load_config(PriorRunConfig, None, TINY_PRIOR + ["model.inputs=frames", "train.steps=5", "model.max_len=32"])
    res = train_prior(run, out, tmp_path / "p2", progress=False)
    assert res.valid_accuracy is not None
    cfg = load_prior(tmp_path / "p2").cfg
    assert cfg.codes_source == r.source and cfg.codebook_size == 16  # the tokenizer has 32 codes: not what it reads
    emb = Embedder.from_pretrained(trained_tokenizer, tmp_path / "p2").embed_file(next(corpus.glob("*.wav")))
    assert emb.num_frames > 0 and len(emb.layers) == 3
    # a prior that reads codes is refused on second-round codes: nothing turns new audio into them
    codes_run = load_config(PriorRunConfig, None, TINY_PRIOR + ["train.steps=5"])
    with pytest.raises(CheckpointError, match="holds second-round codes"):
        train_prior(codes_run, out, tmp_path / "p3", progress=False)


def test_cli_refuses_a_store_without_frames_and_codes_priors_on_second_round_stores(tmp_path, capsys, relabelled,
                                                                                    prior_dirs, trained_tokenizer,
                                                                                    corpus):
    bare = tmp_path / "bare"
    with TokenStoreWriter(bare, StoreMeta("x", 32, 1, 50.0)) as w:
        w.add("a.wav", np.zeros((1, 10), np.int64), 0.2, 1, 1)
    assert main(["relabel", "--prior", str(prior_dirs["frames_codes"]), "--store", str(bare),
                 "--out", str(tmp_path / "o")]) == 2
    assert "has no mel frames" in capsys.readouterr().err
    out, _ = relabelled
    assert main(["embed", "--tokenizer", str(trained_tokenizer), "--prior", str(prior_dirs["mlm"]), "--store", str(out),
                 "--out", str(tmp_path / "e"), "--quiet"]) == 2
    assert "holds second-round codes" in capsys.readouterr().err
    # the tokenizer never writes its own codes into a second-round store
    assert main(["tokenize", "--tokenizer", str(trained_tokenizer), "--audio", str(corpus), "--out", str(out),
                 "--workers", "0", "--with-frames", "--quiet"]) == 2
    assert "codes_source is 'kmeans16:prior" in capsys.readouterr().err
