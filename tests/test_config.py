import pytest

from musetok.cli import main
from musetok.shared.config import ConfigError, load_config
from musetok.tokenizer.train import TokenizerRunConfig


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  codebook_size: 128\ntrain:\n  lr: 0.01\n")
    run = load_config(TokenizerRunConfig, p, ["model.codebook_size=2048", "model.mel.n_mels=64", "train.steps=7"])
    assert run.model.codebook_size == 2048
    assert run.model.mel.n_mels == 64
    assert run.train.steps == 7 and run.train.lr == 0.01
    assert run.model.frame_rate == pytest.approx(22050 / 256 / 2)


def test_named_configs_load():
    for name in ("small", "base", "waveform_small"):
        run = load_config(TokenizerRunConfig, name, kind="tokenizer")
        assert run.model.codebook_size >= 2


@pytest.mark.parametrize("override, message", [
    ("model.codebok_size=3", "unknown config key 'model.codebok_size' (did you mean 'model.codebook_size'?)"),
    ("model.codebook_size=abc", "model.codebook_size: expected an integer, got 'abc'"),
    ("model.codebook_size=1.5", "model.codebook_size: expected an integer"),
    ("model.cosine_sim=3", "model.cosine_sim: expected true/false"),
    ("model.input=midi", "model.input: expected one of ['mel', 'waveform']"),
    ("model.downsample=3", "model.downsample: must be 1, 2 or 4"),
    ("train.steps=0", "train.steps: must be positive"),
    ("model.mel.n_fft=1023", "mel.n_fft: must be a positive even number"),
])
def test_bad_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(TokenizerRunConfig, None, [override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_cli_config_error_is_one_line_exit_2(tmp_path, capsys, corpus):
    rc = main(["train-tokenizer", "--audio", str(corpus), "--out", str(tmp_path / "t"),
               "--set", "model.codebook_size=abc"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1] == "musetok train-tokenizer: error: model.codebook_size: expected an integer, got 'abc'"
    rc = main(["train-tokenizer", "--config", "no-such", "--audio", str(corpus), "--out", str(tmp_path / "t")])
    assert rc == 2
    assert "config file not found: no-such" in capsys.readouterr().err


def test_cli_bugs_keep_their_traceback(tmp_path, monkeypatch, store):
    """Only user errors become one-line exit-2 messages; an internal error propagates with its traceback."""
    from musetok.shared.token_store import TokenStore

    def broken(self):
        raise KeyError("internal")
    monkeypatch.setattr(TokenStore, "summary", broken)
    with pytest.raises(KeyError, match="internal"):
        main(["info", str(store)])
    assert main(["info", str(tmp_path / "no-store")]) == 2
