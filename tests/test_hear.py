"""The HEAR 2021 API (the checks hear-validator makes, without its TensorFlow import), bundles, model cards,
and Hub repo ids resolved offline from a pre-populated cache."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from musetok.cli import main
from musetok.embedding import hear


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, trained_tokenizer, prior_dirs):
    out = tmp_path_factory.mktemp("bundle") / "b"
    assert main(["bundle", "--tokenizer", str(trained_tokenizer), "--prior", str(prior_dirs["mlm"]),
                 "--out", str(out)]) == 0
    return out


def test_bundle_loads_with_the_hear_attributes(bundle):
    model = hear.load_model(str(bundle))
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate in (16000, 22050, 44100, 48000)
    assert model.timestamp_embedding_size == 3 * 64  # 3 layers concatenated
    assert model.scene_embedding_size == 3 * model.timestamp_embedding_size  # their mean, std and max
    assert not (bundle / "tokenizer" / "train_state.pt").exists() and (bundle / "hear.json").is_file()


def test_timestamp_and_scene_embeddings_follow_the_spec(bundle):
    model = hear.load_model(str(bundle))
    sr = model.sample_rate
    noise = torch.rand(3, 2 * sr) * 2 - 1  # a batch of white noise in [-1, 1]
    emb, ts = hear.get_timestamp_embeddings(noise, model)
    assert emb.dtype == torch.float32 and ts.dtype == torch.float32
    assert emb.shape[:2] == ts.shape and emb.shape[0] == 3 and emb.shape[2] == model.timestamp_embedding_size
    steps = ts[0, 1:] - ts[0, :-1]
    assert (steps > 0).all() and steps.max() <= 50.0 and torch.allclose(steps, steps[0])  # regular, <= 50 ms
    assert 0 <= ts[0, 0] < steps[0] and ts[0, -1] <= 2000.0
    assert torch.equal(ts[0], ts[2])
    scene = hear.get_scene_embeddings(noise, model)
    assert scene.shape == (3, model.scene_embedding_size) and scene.dtype == torch.float32
    torch.testing.assert_close(scene, torch.cat([emb.mean(1), emb.std(1, unbiased=False), emb.amax(1)], -1))
    assert torch.isfinite(emb).all()
    short = torch.rand(2, 100) - 0.5  # far shorter than one analysis window
    e, t = hear.get_timestamp_embeddings(short, model)
    assert e.shape[0] == 2 and e.shape[1] >= 1 and t.shape == e.shape[:2]
    assert hear.get_scene_embeddings(short, model).shape == (2, model.scene_embedding_size)


def test_layer_choice_is_the_bundles(tmp_path, trained_tokenizer, prior_dirs):
    out = hear.write_bundle(trained_tokenizer, prior_dirs["mlm"], tmp_path / "b", layers="last", combine="mean",
                            pool="mean")
    model = hear.load_model(str(out))
    assert model.scene_embedding_size == 64
    cfg = json.loads((out / "hear.json").read_text())
    assert cfg["pool"] == "mean"
    del cfg["pool"]  # a bundle written before the key existed keeps its time-mean scene embeddings
    (out / "hear.json").write_text(json.dumps(cfg))
    assert hear.load_model(str(out)).pool == "mean"
    with pytest.raises(Exception, match="pool must be one of"):
        hear.write_bundle(trained_tokenizer, prior_dirs["mlm"], tmp_path / "c", pool="median")
    with pytest.raises(Exception, match="give load_model the folder"):
        hear.load_model("")


def test_a_bundle_can_read_every_sound_at_one_level(tmp_path, trained_tokenizer, prior_dirs):
    out = tmp_path / "b"
    assert main(["bundle", "--tokenizer", str(trained_tokenizer), "--prior", str(prior_dirs["frames_codes"]),
                 "--out", str(out), "--level-db", "-20"]) == 0
    assert json.loads((out / "hear.json").read_text())["level_db"] == -20.0
    model = hear.load_model(str(out))
    torch.manual_seed(0)
    noise = torch.rand(1, model.sample_rate) * 2 - 1
    loud, soft = (hear.get_scene_embeddings(g * noise, model) for g in (0.5, 0.005))
    torch.testing.assert_close(loud, soft, atol=1e-3, rtol=1e-3)  # 40 dB apart, read alike
    cfg = json.loads((out / "hear.json").read_text())
    del cfg["level_db"]  # a bundle written before the key existed reads each sound at its own level
    (out / "hear.json").write_text(json.dumps(cfg))
    plain = hear.load_model(str(out))
    assert plain.embedder.level_db is None
    a, b = (hear.get_scene_embeddings(g * noise, plain) for g in (0.5, 0.005))
    assert (a - b).abs().max() > 0.1
    (out / "hear.json").write_text(json.dumps({**cfg, "level_db": "loud"}))
    with pytest.raises(Exception, match=r"hear.json: level_db must be a number of dBFS, \"auto\" or null, got 'loud'"):
        hear.load_model(str(out))
    # by default a bundle reads each sound at the level of the prior's training audio, written as the number
    assert main(["bundle", "--tokenizer", str(trained_tokenizer), "--prior", str(prior_dirs["frames_codes"]),
                 "--out", str(tmp_path / "d")]) == 0
    level = json.loads((tmp_path / "d" / "hear.json").read_text())["level_db"]
    assert level == hear.load_model(str(tmp_path / "d")).embedder.prior.cfg.corpus_level_db and -40 < level < -10


def test_saved_folders_have_model_cards(trained_tokenizer, prior_dirs):
    tok = (trained_tokenizer / "README.md").read_text()
    assert tok.startswith("---\nlibrary_name: musetok") and "license:" in tok
    for needle in ("trained on", "files", " h (", "steps", "300 of 300", "validation reconstruction loss",
                   "tokenizer id"):
        assert needle in tok, needle
    prior = (prior_dirs["mlm"] / "README.md").read_text()
    for needle in ("musetok prior (mlm)", "trained on", "steps", "20 of 20", "accuracy", "tokenizer id"):
        assert needle in prior, needle


def test_hub_repo_id_resolved_offline_from_the_cache(tmp_path, bundle):
    """A bundle laid out as the Hub cache holds a downloaded repo; with HF_HUB_OFFLINE=1 nothing goes to
    the network, and both entry points find it by repo id."""
    cache = tmp_path / "hub"
    repo = cache / "models--someone--musetok-demo"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(bundle, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = ("from musetok.embedding import Embedder, hear\n"
            "m = hear.load_model('someone/musetok-demo')\n"
            "e = Embedder.from_pretrained('someone/musetok-demo')\n"
            "print(m.scene_embedding_size, e.prior.cfg.dim)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["576", "64"]  # 3 layers x 64, pooled by mean, std and max
    r = subprocess.run([sys.executable, "-m", "musetok.cli", "embed", "--tokenizer", "someone/not-cached",
                        "--prior", "someone/not-cached", "--audio", str(tmp_path), "--out", str(tmp_path / "e")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "someone/not-cached" in r.stderr, r.stderr
