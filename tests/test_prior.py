import json

import numpy as np
import pytest
import torch

from musetok.prior.config import PriorConfig
from musetok.prior.data import Batch
from musetok.prior.masking import corrupt_codes, row_generators, span_mask
from musetok.prior.model import Prior
from musetok.prior.objectives import compute_loss
from musetok.shared.config import ConfigError, load_config


def cfg(**kw) -> PriorConfig:
    base = dict(dim=32, layers=2, heads=2, max_len=64, codebook_size=16, num_codebooks=2, frame_dim=12)
    base.update(kw)
    return PriorConfig(**base)


def test_span_mask_policy():
    lengths = torch.tensor([400, 250, 37, 0])
    m = span_mask(lengths, 400, rate=0.3, span=5, gens=row_generators(torch.arange(4)))
    assert m.shape == (4, 400)
    for i, n in enumerate(lengths.tolist()):
        assert not m[i, n:].any()  # never in padding
        if n == 0:
            continue
        frac = m[i, :n].float().mean().item()
        assert 0.15 <= frac <= 0.35, frac
        # spans: every run of masked frames is at least `span` long
        runs, cur = [], 0
        for v in m[i, :n].tolist() + [False]:
            if v:
                cur += 1
            elif cur:
                runs.append(cur)
                cur = 0
        assert min(runs) >= 5


def test_bert_corruption_80_10_10():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 100, (64, 1, 500), generator=g)
    mask = torch.rand(64, 500, generator=g) < 0.5
    out = corrupt_codes(codes, mask, mask_id=100, vocab=100, gens=row_generators(torch.arange(64)))
    assert torch.equal(out[:, 0][~mask], codes[:, 0][~mask])  # unmasked frames untouched
    m_out, m_in = out[:, 0][mask], codes[:, 0][mask]
    p_mask = (m_out == 100).float().mean().item()
    p_same = (m_out == m_in).float().mean().item()
    assert abs(p_mask - 0.8) < 0.02
    assert abs(p_same - 0.1 - 0.1 / 100) < 0.02  # kept, plus random codes that happen to match


def test_mlm_loss_only_on_masked_positions():
    """Code 15 sits only at unmasked frames. If those frames were in the loss, code 15's output bias
    would get a negative gradient (its one-hot target); on masked frames only, it gets only softmax mass."""
    torch.manual_seed(0)
    model = Prior(cfg(objective="mlm"))
    lengths, seeds = torch.tensor([40, 40, 25]), torch.tensor([5, 6, 7])
    mask = span_mask(lengths, 40, 0.3, 5, row_generators(seeds))  # what compute_loss will draw
    codes = torch.full((3, 2, 40), 15)
    codes[mask[:, None].expand_as(codes)] = torch.randint(0, 15, (int(mask.sum()) * 2,))
    o = compute_loss(model, Batch(codes, lengths, seeds))
    assert o.targets == int(mask.sum())
    o.loss.backward()
    g = model.head_bias.grad  # (K, V)
    assert (g[:, 15] > 0).all()
    assert (g[:, :15].min(dim=1).values < 0).all()


def test_causal_model_cannot_see_the_future():
    torch.manual_seed(0)
    for objective in ("ar", "next_frames"):
        model = Prior(cfg(objective=objective)).eval()
        if objective == "ar":
            x = torch.randint(0, 16, (1, 2, 30))
            y = x.clone()
            y[:, :, 20] = (y[:, :, 20] + 1) % 16
        else:
            x = torch.randn(1, 30, 12)
            y = x.clone()
            y[:, 20] += 1.0
        with torch.no_grad():
            a, b = model(x).hidden, model(y).hidden
        torch.testing.assert_close(a[:, :20], b[:, :20])
        assert (a[:, 20:] - b[:, 20:]).abs().max() > 1e-4
    bidirectional = Prior(cfg(objective="mlm")).eval()
    x = torch.randint(0, 16, (1, 2, 30))
    y = x.clone()
    y[:, :, 20] = (y[:, :, 20] + 1) % 16
    with torch.no_grad():
        assert (bidirectional(x).hidden[:, :20] - bidirectional(y).hidden[:, :20]).abs().max() > 1e-4


def test_padding_does_not_change_valid_outputs():
    torch.manual_seed(0)
    for objective in ("mlm", "ar"):
        model = Prior(cfg(objective=objective)).eval()
        x = torch.randint(0, 16, (1, 2, 20))
        padded = torch.cat([x, torch.randint(0, 16, (1, 2, 12))], dim=2)
        valid = torch.arange(32)[None] < 20
        with torch.no_grad():
            torch.testing.assert_close(model(x).hidden, model(padded, valid).hidden[:, :20], atol=1e-5, rtol=1e-5)


def test_config_errors():
    from musetok.prior.train import PriorRunConfig
    with pytest.raises(ConfigError, match="model.dim: must be divisible by model.heads"):
        load_config(PriorRunConfig, None, ["model.dim=100", "model.heads=3"])
    with pytest.raises(ConfigError, match="model.objective: expected one of"):
        load_config(PriorRunConfig, None, ["model.objective=gpt"])
    for name in ("small", "base"):
        load_config(PriorRunConfig, name, kind="prior")


@pytest.fixture(scope="module")
def store(tmp_path_factory, trained_tokenizer):
    from musetok.tokenizer import load_tokenizer
    from musetok.tokenizer.encode_corpus import tokenize_corpus
    from tests.conftest import make_corpus

    root = tmp_path_factory.mktemp("prior")
    audio = make_corpus(root / "audio", n=10, seconds=6.0)
    tokenize_corpus(load_tokenizer(trained_tokenizer), audio, root / "store", workers=0, progress=False,
                    with_frames=True)
    return root / "store"


TINY_PRIOR = ["model.dim=64", "model.layers=2", "model.heads=2", "model.max_len=64", "train.batch_size=8",
              "train.warmup_steps=10", "train.log_every=10", "train.valid_every=50", "train.checkpoint_every=50"]


@pytest.mark.parametrize("objective", ["mlm", "ar", "masked_frames", "next_frames"])
def test_loss_falls_for_each_objective(tmp_path, store, objective):
    from musetok.prior.train import PriorRunConfig, train_prior
    run = load_config(PriorRunConfig, None, TINY_PRIOR + [f"model.objective={objective}", "train.steps=150"])
    r = train_prior(run, store, tmp_path / objective, progress=False)
    recs = [json.loads(ln) for ln in (tmp_path / objective / "metrics.jsonl").read_text().splitlines()]
    train = [x["loss"] for x in recs if x["split"] == "train"]
    assert np.mean(train[-3:]) < 0.85 * train[0], train
    assert (tmp_path / objective / "training_curve.png").is_file()
    if objective in ("mlm", "ar"):
        assert r.valid_accuracy > 1.5 / 32  # clearly above chance over 32 codes


def test_resume_gives_same_parameters(tmp_path, store):
    from musetok.prior.train import PriorRunConfig, train_prior
    from musetok.shared.io import load_weights
    run = load_config(PriorRunConfig, None, TINY_PRIOR + ["train.steps=30", "train.grad_accum=2",
                                                          "train.checkpoint_every=10"])
    train_prior(run, store, tmp_path / "full", progress=False)
    train_prior(run, store, tmp_path / "resumed", progress=False, stop_at=13)
    train_prior(run, store, tmp_path / "resumed", resume=True, progress=False)
    a, b = load_weights(tmp_path / "full"), load_weights(tmp_path / "resumed")
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


@pytest.fixture(scope="module")
def prior_dirs(tmp_path_factory, store):
    from musetok.prior.train import PriorRunConfig, train_prior
    root = tmp_path_factory.mktemp("priors")
    out = {}
    for objective in ("mlm", "masked_frames"):
        run = load_config(PriorRunConfig, None, TINY_PRIOR + [f"model.objective={objective}", "train.steps=20",
                                                              "model.max_len=32"])
        train_prior(run, store, root / objective, progress=False)
        out[objective] = root / objective
    return out


@pytest.mark.parametrize("objective", ["mlm", "masked_frames"])
def test_embeddings_invariant_to_batch_and_padding(trained_tokenizer, prior_dirs, objective):
    from musetok.embedding import Embedder
    from tests.conftest import tone
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
    assert together[1].num_frames == clips[1].shape[-1 if objective == "mlm" else 0]


def test_embed_api_any_rate_and_channels(trained_tokenizer, prior_dirs):
    from musetok.embedding import Embedder
    from tests.conftest import tone
    emb = Embedder.from_pretrained(trained_tokenizer, prior_dirs["mlm"])
    y44 = tone(2.0, 220.0, sr=44100)
    e = emb.embed(np.stack([y44, y44]), 44100)  # stereo (C, N) at 44.1 kHz
    e16 = emb.embed(torch.from_numpy(tone(2.0, 220.0)), 16000)
    assert len(e.layers) == 3 and e.layer_names == ["input", "layer1", "layer2"]
    assert e.layers[0].shape == (e.num_frames, 64)
    assert e.frame_rate == pytest.approx(16000 / 256 / 2)
    assert abs(e.num_frames - e16.num_frames) <= 1
    assert e.pooled().shape == (3, 64)


def test_mismatched_tokenizer_refused(tmp_path, corpus, prior_dirs):
    from musetok.embedding import Embedder
    from musetok.shared.config import load_config as lc
    from musetok.shared.io import CheckpointError
    from musetok.tokenizer.train import TokenizerRunConfig, train_tokenizer
    from tests.conftest import TINY_TOKENIZER
    other = tmp_path / "other"
    train_tokenizer(lc(TokenizerRunConfig, None, TINY_TOKENIZER + ["train.steps=5"]), corpus, other, progress=False)
    with pytest.raises(CheckpointError, match="prior was trained on tokenizer"):
        Embedder.from_pretrained(other, prior_dirs["mlm"])


def test_cli_pretrain_and_embed(tmp_path, store, trained_tokenizer, corpus):
    from musetok.cli import main
    args = ["pretrain", "--store", str(store), "--out", str(tmp_path / "p"), "--quiet"]
    for s in TINY_PRIOR + ["train.steps=20"]:
        args += ["--set", s]
    assert main(args) == 0
    assert main(["embed", "--tokenizer", str(trained_tokenizer), "--prior", str(tmp_path / "p"),
                 "--audio", str(corpus), "--out", str(tmp_path / "e"), "--quiet"]) == 0
    x = np.load(tmp_path / "e.npy")
    assert x.shape == (8, 3, 64) and x.dtype == np.float32
    import csv
    rows = list(csv.DictReader(open(tmp_path / "e.csv")))
    assert [r["path"] for r in rows] == sorted(p.name for p in corpus.iterdir())
    assert main(["embed", "--tokenizer", str(trained_tokenizer), "--prior", str(tmp_path / "p"),
                 "--store", str(store), "--out", str(tmp_path / "f"), "--pool", "none", "--layers", "last",
                 "--format", "npz", "--quiet"]) == 0
    z = np.load(tmp_path / "f.npz")
    rows = list(csv.DictReader(open(tmp_path / "f.csv")))
    assert z["embeddings"].shape == (sum(int(r["frames"]) for r in rows), 1, 64)
    assert list(z["layers"]) == ["layer2"]


@pytest.mark.parametrize("objective", ["mlm", "ar"])
def test_keep_computes_exactly_the_kept_positions(objective):
    """The pruned last block (queries/MLP only at scored positions) equals the full model there."""
    torch.manual_seed(0)
    model = Prior(cfg(objective=objective)).eval()
    x = torch.randint(0, 16, (3, 2, 40))
    keep = torch.rand(3, 40) < 0.3
    valid = torch.ones(3, 40, dtype=torch.bool)
    valid[2, 30:] = False
    keep &= valid
    with torch.no_grad():
        full = model(x, valid).hidden[keep]
        part = model(x, valid, keep=keep).hidden
    torch.testing.assert_close(part, full, atol=1e-5, rtol=1e-5)
