import json

import numpy as np
import pytest
import torch

from musetok.shared.config import load_config
from musetok.shared.io import CheckpointError
from musetok.tokenizer import TokenizerConfig, build_tokenizer, load_tokenizer
from musetok.tokenizer.train import TokenizerRunConfig, train_tokenizer
from tests.conftest import TINY_TOKENIZER


def tiny(**kw) -> TokenizerConfig:
    base = dict(channels=32, codebook_size=64)
    base.update(kw)
    return TokenizerConfig(**base)


@pytest.mark.parametrize("cfg, in_shape, codes_shape", [
    (tiny(), (2, 80, 301), (2, 1, 151)),
    (tiny(downsample=4, num_codebooks=3), (2, 80, 300), (2, 3, 75)),
    (tiny(downsample=1), (2, 80, 64), (2, 1, 64)),
    (tiny(input="waveform", strides=(4, 4)), (2, 1, 4000), (2, 1, 250)),
])
def test_forward_backward_shapes(cfg, in_shape, codes_shape):
    torch.manual_seed(0)
    m = build_tokenizer(cfg)
    x = torch.randn(*in_shape) * (0.1 if cfg.input == "waveform" else 1)
    out = m(x)
    assert out.recon.shape == x.shape
    assert out.codes.shape == codes_shape and out.codes.dtype == torch.long
    assert out.loss.dim() == 0
    out.loss.backward()
    grads = [p.grad for p in m.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert m.frame_rate == pytest.approx(cfg.frame_rate)


@pytest.mark.parametrize("cfg", [tiny(), tiny(num_codebooks=3), tiny(cosine_sim=False),
                                 tiny(input="waveform", strides=(4, 4))])
def test_encode_decode_consistent_in_eval(cfg):
    torch.manual_seed(0)
    m = build_tokenizer(cfg)
    x = torch.randn(2, 1, 4000) * 0.1 if cfg.input == "waveform" else torch.randn(2, 80, 200)
    m(x)  # one training forward: k-means init of the codebooks
    m.eval()
    with torch.no_grad():
        out = m(x)
        codes = m.encode(x)
        # the fast nearest-code search gives the library's indices
        assert torch.equal(codes, out.codes)
        # quantized == get_output_from_indices(indices), and decode(encode(x)) is the eval reconstruction
        z, n = (m._encode_latent(x) if cfg.input == "mel" else (m.encoder(m.pad_to_codes(x)).transpose(1, 2), 0))
        q = m.quantizer(z)
        torch.testing.assert_close(m.quantizer.decode(codes), q.quantized, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m.decode(codes)[..., :x.shape[-1]], out.recon, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cfg", [tiny(num_codebooks=2), tiny(input="waveform", strides=(4, 4))])
def test_chunked_encoding_equals_whole(cfg):
    torch.manual_seed(0)
    m = build_tokenizer(cfg).eval()
    c = 1 if cfg.input == "waveform" else 80
    x = np.random.default_rng(0).standard_normal((c, 5003 if c == 80 else 9001)).astype(np.float32)
    whole = m.encode(torch.from_numpy(x)[None])[0].numpy()
    blocks = [x[:, i:i + 777] for i in range(0, x.shape[1], 777)]
    streamed = np.concatenate(list(m.encode_stream(blocks, chunk_codes=100)), axis=1)
    assert streamed.shape == whole.shape
    assert (streamed == whole).all()


def test_receptive_field_within_context():
    """Perturbing input further than `context_units` from a code must not change that code."""
    torch.manual_seed(0)
    m = build_tokenizer(tiny(downsample=2)).eval()
    x = torch.randn(1, 80, 400)
    with torch.no_grad():
        base = m._encode_latent(x)[0]  # (1, T', C)
        y = x.clone()
        y[..., 300:] += 5.0
        changed = ((m._encode_latent(y)[0] - base).abs().amax(-1) > 1e-6)[0].nonzero().flatten()
    first = 300 // m.units_per_code
    assert changed.numel() > 0
    assert changed.min() >= first - m.context_units // m.units_per_code


def test_training_lowers_loss_and_uses_codes(trained_tokenizer):
    recs = [json.loads(ln) for ln in (trained_tokenizer / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["split"] == "train"]
    assert train[-1]["recon_loss"] < 0.35 * train[0]["recon_loss"]
    assert train[-1]["usage"][0] > 50.0  # % of the 32 codes used in one batch
    for name in ("config.json", "model.safetensors", "normalizer.json", "reconstruction.png", "codebook_usage.png"):
        assert (trained_tokenizer / name).is_file()


def test_save_load_round_trip(trained_tokenizer):
    m = load_tokenizer(trained_tokenizer)
    assert len(m.tokenizer_id) == 16
    x = torch.randn(1, 40, 120)
    m2 = load_tokenizer(trained_tokenizer)
    assert torch.equal(m.encode(x), m2.encode(x))
    assert not torch.equal(m.mel_mean, torch.zeros_like(m.mel_mean))  # normaliser restored


def test_damaged_checkpoint_refused(tmp_path, trained_tokenizer):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(trained_tokenizer, bad)
    (bad / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_tokenizer(bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["format_version"] = 99
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown format version 99"):
        load_tokenizer(bad)


def test_resume_continues_exactly(tmp_path, corpus):
    common = TINY_TOKENIZER + ["train.steps=40", "train.checkpoint_every=20", "train.valid_every=20"]
    run = load_config(TokenizerRunConfig, None, common)
    train_tokenizer(run, corpus, tmp_path / "full", progress=False)
    # stop after 17 steps (same 40-step schedule), then resume to 40
    train_tokenizer(run, corpus, tmp_path / "resumed", progress=False, stop_at=17)
    train_tokenizer(run, corpus, tmp_path / "resumed", resume=True, progress=False)
    a = load_tokenizer(tmp_path / "full").state_dict()
    b = load_tokenizer(tmp_path / "resumed").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)


def test_tokenizer_id_covers_weights_normaliser_and_config(tmp_path, trained_tokenizer):
    import shutil

    from musetok.tokenizer import save_tokenizer
    m = load_tokenizer(trained_tokenizer)
    assert m.tokenizer_id == json.loads((trained_tokenizer / "config.json").read_text())["tokenizer_id"]
    ids = {m.tokenizer_id}
    m.mel_std[3] *= 1.5  # the same weights with another normaliser give other codes: another id
    ids.add(m.tokenizer_id)
    m = load_tokenizer(trained_tokenizer)
    with torch.no_grad():
        m.encoder[0].bias[0] += 1e-3
    ids.add(m.tokenizer_id)
    assert len(ids) == 3
    save_tokenizer(tmp_path / "re", m)
    assert load_tokenizer(tmp_path / "re").tokenizer_id == m.tokenizer_id
    # a folder whose normaliser was changed after saving is refused
    bad = tmp_path / "bad"
    shutil.copytree(trained_tokenizer, bad)
    norm = json.loads((bad / "normalizer.json").read_text())
    norm["mean"][0] += 1.0
    (bad / "normalizer.json").write_text(json.dumps(norm))
    with pytest.raises(CheckpointError, match="records tokenizer .* hash to"):
        load_tokenizer(bad)


def test_normaliser_is_fitted_on_a_sample_across_the_corpus():
    from musetok.tokenizer.train import stats_sample
    files = [f"{g}/{i:03d}.wav" for g in ("a_folder", "b_folder", "c_folder") for i in range(100)]
    pick = stats_sample(files, 30, seed=0)
    assert len(pick) == 30 == len(set(pick)) and pick == stats_sample(files, 30, seed=0)
    assert pick != files[:30]
    assert {p.split("/")[0] for p in pick} == {"a_folder", "b_folder", "c_folder"}
    assert stats_sample(files[:10], 30, seed=0) == files[:10]


def test_waveform_tokenizer_trains_tokenizes_and_decodes(tmp_path, corpus):
    """The raw-audio route end to end at toy size: train, tokenize, decode back to a file."""
    import soundfile as sf

    from musetok.cli import main
    from musetok.shared.token_store import TokenStore
    over = ["model.input=waveform", "model.mel.sample_rate=16000", "model.strides=[4, 4]", "model.channels=16",
            "model.codebook_size=16", "model.res_blocks=1", "train.batch_size=4", "train.segment_seconds=0.5",
            "train.steps=60", "train.lr=0.0002", "train.warmup_steps=5", "train.log_every=5", "train.valid_every=30",
            "train.checkpoint_every=60"]
    args = ["train-tokenizer", "--config", "waveform_small", "--audio", str(corpus), "--out", str(tmp_path / "tok"),
            "--quiet"]
    for s in over:
        args += ["--set", s]
    assert main(args) == 0
    recs = [json.loads(ln) for ln in (tmp_path / "tok" / "metrics.jsonl").read_text().splitlines()]
    # the train loss of a toy this small first rises (codebook collapse), so judge on the fixed valid clips
    valid = [r["recon_loss"] for r in recs if r["split"] == "valid"]
    assert len(valid) == 2 and valid[1] < valid[0]
    assert not (tmp_path / "tok" / "normalizer.json").exists()
    assert main(["tokenize", "--tokenizer", str(tmp_path / "tok"), "--audio", str(corpus), "--out",
                 str(tmp_path / "store"), "--workers", "0", "--quiet"]) == 0
    s = TokenStore(tmp_path / "store")
    assert len(s) == 8 and s.meta.frame_rate == 1000.0 and s.codes(0).shape == (1, 4000)
    assert main(["decode", "--tokenizer", str(tmp_path / "tok"), "--store", str(tmp_path / "store"), "--item", "0",
                 "--out", str(tmp_path / "x.wav")]) == 0
    y, sr = sf.read(tmp_path / "x.wav")
    assert sr == 16000 and abs(len(y) - 4 * 16000) <= 16 and np.isfinite(y).all() and np.abs(y).max() > 0
    # mel frames belong to mel tokenizers: asking for them is a one-line error
    assert main(["tokenize", "--tokenizer", str(tmp_path / "tok"), "--audio", str(corpus), "--out",
                 str(tmp_path / "store2"), "--workers", "0", "--with-frames", "--quiet"]) == 2


@pytest.mark.parametrize("key", ["scale", "min_fft"])
def test_folders_saved_before_a_setting_existed_keep_their_id(tmp_path, trained_tokenizer, key):
    """`mel.scale` and `mel.min_fft` were added later: a config.json without them still loads and keeps its id
    (the id hashes them only when set)."""
    import shutil
    old = tmp_path / "old"
    shutil.copytree(trained_tokenizer, old)
    cfg = json.loads((old / "config.json").read_text())
    del cfg["config"]["mel"][key]
    (old / "config.json").write_text(json.dumps(cfg))
    assert load_tokenizer(old).tokenizer_id == load_tokenizer(trained_tokenizer).tokenizer_id


@pytest.mark.parametrize("extra", [[], ["model.mel.min_fft=512"]])
def test_semitone_tokenizer_decodes_to_audio(extra):
    """`decode` inverts the tokenizer's own filterbank: a semitone tokenizer decodes to audio of the clip's
    length (untrained weights: only the path is checked, not the sound). A multi-resolution one (`min_fft`) is
    inverted as if every band came from its longest STFT, which its scaling makes them read alike."""
    from musetok.tokenizer.builder import build_tokenizer
    from musetok.tokenizer.decode import codes_to_audio
    run = load_config(TokenizerRunConfig, None, TINY_TOKENIZER + ["model.mel.scale=semitone", "model.mel.n_fft=2048",
                                                                  "model.mel.n_mels=80"] + extra)
    model = build_tokenizer(run.model).eval()
    codes = np.zeros((1, 50), dtype=np.int64)
    wave = codes_to_audio(model, codes, n_iter=2)
    hop = run.model.mel.hop_length * run.model.downsample
    assert wave.ndim == 1 and abs(len(wave) - 50 * hop) <= hop and np.isfinite(wave).all()
