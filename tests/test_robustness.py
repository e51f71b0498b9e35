"""Crashes (real processes, real SIGKILL), bad input files, damaged files."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from musetok.cli import main
from musetok.shared.token_store import TokenStore
from tests.conftest import TINY_TOKENIZER, make_corpus, tone, write

TINY_PRIOR = ["model.dim=64", "model.layers=2", "model.heads=2", "model.max_len=48", "train.batch_size=8",
              "train.warmup_steps=2", "train.log_every=5", "train.valid_every=1000"]


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "musetok.cli", *args]


def sets(items):
    return [x for s in items for x in ("--set", s)]


def kill_when(cmd: list[str], ready, timeout: float = 120.0) -> None:
    """Start `cmd`, SIGKILL it as soon as `ready()` is true; fail if it finished first."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    t0 = time.time()
    while not ready():
        if p.poll() is not None:
            raise AssertionError(f"finished before it could be killed: {p.stderr.read().decode()[-2000:]}")
        if time.time() - t0 > timeout:
            p.kill()
            raise AssertionError("never reached the kill point")
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL


def run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]


def index_lines(store) -> int:
    p = store / "index.jsonl"
    return p.read_bytes().count(b"\n") if p.exists() else 0


def test_kill9_during_tokenize_then_rerun_gives_identical_store(tmp_path, trained_tokenizer):
    audio = make_corpus(tmp_path / "audio", n=40, seconds=6.0)
    run(cli("tokenize", "--tokenizer", str(trained_tokenizer), "--audio", str(audio), "--out", str(tmp_path / "ref"),
            "--workers", "0", "--quiet"))
    store = tmp_path / "s"
    kill_when(cli("tokenize", "--tokenizer", str(trained_tokenizer), "--audio", str(audio), "--out", str(store),
                  "--workers", "1", "--quiet"), lambda: index_lines(store) >= 5)
    assert 5 <= len(TokenStore(store)) < 40  # the killed store opens and is consistent
    run(cli("tokenize", "--tokenizer", str(trained_tokenizer), "--audio", str(audio), "--out", str(store), "--quiet"))
    a, b = TokenStore(tmp_path / "ref"), TokenStore(store)
    assert [e.path for e in a.items] == [e.path for e in b.items]
    for i in range(len(a)):
        np.testing.assert_array_equal(a.codes(i), b.codes(i))
    assert (store / "shards" / "main-00000.u16").stat().st_size == a.total_frames * 2


def _kill_after_checkpoint(out) -> bool:
    return (out / "train_state.pt").exists()


@pytest.mark.parametrize("what", ["train-tokenizer", "pretrain"])
def test_kill9_during_training_then_resume_matches_uninterrupted(tmp_path, what, corpus, trained_tokenizer):
    if what == "train-tokenizer":
        src = ["--audio", str(corpus)]
        over = TINY_TOKENIZER + ["train.steps=150", "train.checkpoint_every=10", "train.valid_every=1000"]
    else:
        from musetok.tokenizer import load_tokenizer
        from musetok.tokenizer.encode_corpus import tokenize_corpus
        tokenize_corpus(load_tokenizer(trained_tokenizer), corpus, tmp_path / "store", workers=0, progress=False,
                        with_frames=True)  # the default (small) prior reads frames
        src = ["--store", str(tmp_path / "store")]
        over = TINY_PRIOR + ["train.steps=150", "train.checkpoint_every=10"]
    run(cli(what, *src, "--out", str(tmp_path / "full"), "--quiet", *sets(over)))
    out = tmp_path / "killed"
    kill_when(cli(what, *src, "--out", str(out), "--quiet", *sets(over)), lambda: _kill_after_checkpoint(out))
    step = torch.load(out / "train_state.pt", weights_only=True)["step"]
    assert 10 <= step < 150
    run(cli(what, *src, "--out", str(out), "--resume", "--quiet"))
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5, msg=k)


def test_bad_input_corpus(tmp_path, trained_tokenizer):
    good = make_corpus(tmp_path / "audio", n=3, seconds=2.0)
    d = good
    write(d / "silent.wav", np.zeros(16000, np.float32))
    write(d / "eight_channels.wav", np.stack([tone(1.5, 100.0 * (c + 1)) for c in range(8)], 1))
    write(d / "low_rate.wav", tone(2.0, 220.0, sr=8000), 8000)
    write(d / "high_rate.flac", tone(1.0, 220.0, sr=192000), 192000, format="FLAC")
    write(d / "héllo wörld ♪.wav", tone(1.0, 330.0))
    bad = {}
    write(d / "truncated.wav", tone(2.0, 200.0))
    data = (d / "truncated.wav").read_bytes()
    (d / "truncated.wav").write_bytes(data[: len(data) // 2])
    bad["truncated.wav"] = "truncated"
    (d / "not_audio.wav").write_text("definitely not audio\n" * 20)
    bad["not_audio.wav"] = "cannot decode"
    (d / "empty.wav").write_bytes(b"")
    bad["empty.wav"] = "empty file"
    y = tone(1.0, 200.0)
    y[50], y[60] = np.nan, np.inf
    sf.write(str(d / "nan_inf.wav"), y, 16000, subtype="FLOAT")
    bad["nan_inf.wav"] = "NaN or infinite"
    write(d / "tiny.wav", tone(0.005, 200.0))
    bad["tiny.wav"] = "too short"
    os.symlink(d / "gone.wav", d / "broken_link.wav")
    bad["broken_link.wav"] = "broken symlink"
    if os.geteuid() != 0:  # root reads anything, so this case only exists for other users
        write(d / "locked.wav", tone(1.0, 200.0))
        os.chmod(d / "locked.wav", 0)
        bad["locked.wav"] = "permission denied"
    out = tmp_path / "store"
    rc = main(["tokenize", "--tokenizer", str(trained_tokenizer), "--audio", str(d), "--out", str(out), "--quiet"])
    assert rc == 1
    s = TokenStore(out)
    reasons = {e.path: e.reason for e in s.failed}
    assert set(reasons) == set(bad), reasons
    for name, why in bad.items():
        assert why in reasons[name], (name, reasons[name])
    good_names = {"tone00.wav", "tone01.wav", "tone02.wav", "silent.wav", "eight_channels.wav", "low_rate.wav",
                  "high_rate.flac", "héllo wörld ♪.wav"}
    assert {e.path for e in s.items} == good_names
    from musetok.tokenizer import load_tokenizer
    from musetok.tokenizer.features import Featurizer
    model = load_tokenizer(trained_tokenizer)
    fz = Featurizer(model.cfg)
    for i, e in enumerate(s.items):  # every good file has the codes of encoding it alone
        whole = model.encode(torch.from_numpy(fz.file(d / e.path))[None])[0].numpy()
        np.testing.assert_array_equal(s.codes(i), whole)
    assert abs(s.items[s.index_of("low_rate.wav")].duration - 2.0) < 0.05
    # a rerun retries nothing unchanged and keeps the same verdicts
    assert main(["tokenize", "--tokenizer", str(trained_tokenizer), "--audio", str(d), "--out", str(out),
                 "--quiet"]) == 0


def test_damaged_files_refused_with_their_name(tmp_path, trained_tokenizer, capsys):
    tok = tmp_path / "tok"
    shutil.copytree(trained_tokenizer, tok)
    (tok / "train_state.pt").write_bytes(b"\x80\x04not a pickle")
    from musetok.shared.io import CheckpointError, load_train_state
    with pytest.raises(CheckpointError, match="train_state.pt: damaged"):
        load_train_state(tok)
    (tok / "config.json").write_text("{ not json")
    assert main(["tokenize", "--tokenizer", str(tok), "--audio", str(tmp_path), "--out", str(tmp_path / "s")]) == 2
    assert "config.json: not valid JSON" in capsys.readouterr().err
    assert main(["tokenize", "--tokenizer", str(trained_tokenizer), "--audio", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("missing: no such folder, manifest or audio file") and "\n" not in err
