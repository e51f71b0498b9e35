"""Never corrupt a store or a run: one writer at a time, full disks, unreadable files, mismatched inputs,
nonsense arguments. Each case gets one line on stderr and exit code 2, and leaves what was done loadable."""

import builtins
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from musetok.cli import main
from musetok.shared.errors import UserError
from musetok.shared.token_store import TokenStore
from tests.conftest import TINY_PRIOR, make_corpus, tone, write

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def one_line_error(capsys, *needles) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "error:" in err, err
    for n in needles:
        assert str(n) in err, (n, err)
    return err


def store_snapshot(root) -> dict:
    s = TokenStore(root)
    return {e.path: np.asarray(s.codes(i)).copy() for i, e in enumerate(s.items)}


@pytest.fixture()
def holder():
    """Start a separate process that holds a FolderLock; yields a function (folder, name) -> the Popen."""
    procs = []

    def hold(folder, name=""):
        code = ("import sys, time\nfrom musetok.shared.io import FolderLock\n"
                f"lock = FolderLock({str(folder)!r}, {name!r}).acquire()\nprint('held', flush=True)\ntime.sleep(120)\n")
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV)
        assert p.stdout.readline().strip() == "held"
        procs.append(p)
        return p
    yield hold
    for p in procs:
        p.kill()
        p.wait()


# -- one writer at a time ---------------------------------------------------------------------------------
def test_second_tokenize_on_a_store_is_refused_until_the_holder_dies(tmp_path, trained_tokenizer, corpus, holder,
                                                                     capsys):
    store = tmp_path / "store"
    p = holder(store, "main")
    args = ["tokenize", "--tokenizer", str(trained_tokenizer), "--audio", str(corpus), "--out", str(store),
            "--workers", "0", "--quiet"]
    assert main(args) == 2
    one_line_error(capsys, store, f"pid {p.pid}", "in use")
    assert sorted(x.name for x in store.iterdir()) == [".lock-main"]  # nothing written
    # a shard writer of another name may work beside it
    assert main(args[:-1] + ["--shard", "0/2", "--quiet"]) == 0
    p.kill()  # SIGKILL: the kernel drops the lock
    p.wait()
    assert main(args) == 0
    assert len(TokenStore(store)) == 8
    assert "4 encoded, 4 already done" in capsys.readouterr().out  # the shard's files were not redone


def test_two_real_tokenize_processes_never_damage_the_store(tmp_path, trained_tokenizer):
    audio = make_corpus(tmp_path / "audio", n=6, seconds=3.0)
    args = ["tokenize", "--tokenizer", str(trained_tokenizer), "--audio", str(audio), "--workers", "0", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "serial")]) == 0
    cmd = [sys.executable, "-m", "musetok.cli", *args, "--out", str(tmp_path / "s")]
    ps = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(2)]
    codes = sorted(p.wait() for p in ps)
    errs = [p.stderr.read() for p in ps]
    assert codes in ([0, 0], [0, 2]), errs  # the second either waited its turn or was refused
    if codes == [0, 2]:
        assert any("in use by another musetok process" in e for e in errs)
    lines = (tmp_path / "s" / "index.jsonl").read_text().splitlines()
    assert len(lines) == 6 == len({json.loads(ln)["path"] for ln in lines})  # every file once
    a, b = store_snapshot(tmp_path / "serial"), store_snapshot(tmp_path / "s")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


@pytest.mark.parametrize("what", ["pretrain", "train-tokenizer"])
def test_second_training_run_in_the_same_folder_is_refused(tmp_path, store, corpus, holder, capsys, what):
    out = tmp_path / "run"
    p = holder(out)
    if what == "pretrain":
        args = ["pretrain", "--store", str(store), "--out", str(out), "--quiet", "--set", "train.steps=2"]
    else:
        args = ["train-tokenizer", "--audio", str(corpus), "--out", str(out), "--quiet", "--set", "train.steps=2"]
    assert main(args) == 2
    one_line_error(capsys, out, f"pid {p.pid}")
    assert sorted(x.name for x in out.iterdir()) == [".lock"]


# -- full disks -------------------------------------------------------------------------------------------
class FullDisk:
    """Stands in for `open` in a module: from the `after`-th append on, a write puts down half its bytes and
    fails with ENOSPC, as a full disk does."""

    def __init__(self, after: int):
        self.after, self.appends = after, 0

    def __call__(self, path, mode="r", *a, **kw):
        f = builtins.open(path, mode, *a, **kw)
        if "a" not in mode:
            return f
        self.appends += 1
        return _FailingFile(f) if self.appends >= self.after else f


class _FailingFile:
    def __init__(self, f):
        self.f = f

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_during_tokenize(tmp_path, trained_tokenizer, monkeypatch, capsys):
    import musetok.shared.token_store as ts
    audio = make_corpus(tmp_path / "audio", n=6, seconds=2.0)
    args = ["tokenize", "--tokenizer", str(trained_tokenizer), "--audio", str(audio), "--workers", "0", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "serial")]) == 0
    monkeypatch.setattr(ts, "open", FullDisk(after=7), raising=False)  # 2 appends per file: fails in file 4
    assert main(args + ["--out", str(tmp_path / "s")]) == 2
    one_line_error(capsys, "No space left on device", tmp_path / "s")
    assert 0 < len(TokenStore(tmp_path / "s")) < 6  # loadable, with what was indexed before the failure
    monkeypatch.undo()  # space freed: the rerun continues
    assert main(args + ["--out", str(tmp_path / "s")]) == 0
    a, b = store_snapshot(tmp_path / "serial"), store_snapshot(tmp_path / "s")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert len((tmp_path / "s" / "index.jsonl").read_text().splitlines()) == 6


def test_disk_full_during_a_checkpoint_then_resume(tmp_path, store, monkeypatch):
    from musetok.prior.train import PriorRunConfig, train_prior
    from musetok.shared import io
    from musetok.shared.config import load_config
    run = load_config(PriorRunConfig, None, TINY_PRIOR + ["train.steps=15", "train.checkpoint_every=5"])
    train_prior(run, store, tmp_path / "full", progress=False)
    real, calls = torch.save, []

    def full_disk(obj, f, *a, **kw):
        calls.append(f)
        if len(calls) == 2:
            with open(f, "wb") as fh:
                fh.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *a, **kw)
    monkeypatch.setattr(io.torch, "save", full_disk)
    with pytest.raises(UserError, match=r"train_state.pt: cannot write \(No space left on device\)"):
        train_prior(run, store, tmp_path / "p", progress=False)
    monkeypatch.setattr(io.torch, "save", real)
    assert io.load_train_state(tmp_path / "p")["step"] == 5  # the last good checkpoint is intact
    assert not [f for f in os.listdir(tmp_path / "p") if f.endswith(".tmp")]
    train_prior(run, store, tmp_path / "p", resume=True, progress=False)
    a, b = io.load_weights(tmp_path / "full"), io.load_weights(tmp_path / "p")
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_disk_full_during_embed(tmp_path, trained_tokenizer, prior_dirs, store, monkeypatch, capsys):
    import musetok.embedding.corpus as ec
    args = ["embed", "--tokenizer", str(trained_tokenizer), "--prior", str(prior_dirs["mlm"]), "--store", str(store),
            "--out", str(tmp_path / "e"), "--quiet"]

    def full(f, *a, **kw):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(ec.np, "save", full)
    assert main(args) == 2
    one_line_error(capsys, tmp_path / "e.npy", "No space left on device")
    assert not (tmp_path / "e.npy").exists() and not list(tmp_path.glob(".e.npy*"))
    monkeypatch.undo()
    assert main(args) == 0 and np.load(tmp_path / "e.npy").shape[0] == 10


# -- unreadable files, as root too ------------------------------------------------------------------------
def test_permission_denied_is_reported(tmp_path, trained_tokenizer, monkeypatch):
    """Root reads any file, so the OS error is injected where the audio module opens files (the venv's
    interpreter may live where an unprivileged user cannot run it, so dropping privileges is not portable)."""
    import musetok.shared.audio as audio
    write(tmp_path / "audio" / "ok.wav", tone(1.0, 200.0))
    write(tmp_path / "audio" / "locked.wav", tone(1.0, 300.0))
    os.chmod(tmp_path / "audio" / "locked.wav", 0)  # for a non-root run this alone is enough

    def guarded_open(path, *a, **kw):
        if Path(path).name == "locked.wav":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return builtins.open(path, *a, **kw)
    monkeypatch.setattr(audio, "open", guarded_open, raising=False)
    assert main(["tokenize", "--tokenizer", str(trained_tokenizer), "--audio", str(tmp_path / "audio"),
                 "--out", str(tmp_path / "s"), "--workers", "0", "--quiet"]) == 1
    s = TokenStore(tmp_path / "s")
    assert [e.path for e in s.items] == ["ok.wav"]
    assert [(e.path, e.reason) for e in s.failed] == [("locked.wav", "permission denied")]


# -- mismatched inputs to probe ---------------------------------------------------------------------------
def probe_inputs(tmp_path, n=30):
    rng = np.random.default_rng(0)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"c{i}.wav,{'ab'[i % 2]}\n" for i in range(n)))
    x = rng.standard_normal((n, 2, 4)).astype(np.float32)
    rows = [f"c{i}.wav,1,10,{i},1\n" for i in range(n)]
    return labels, x, rows


def write_emb(tmp_path, x, rows):
    np.save(tmp_path / "e.npy", x)
    (tmp_path / "e.csv").write_text("path,duration,frames,offset,length\n" + "".join(rows))
    return tmp_path / "e.npy"


@pytest.mark.parametrize("case, needles", [
    ("fewer rows", ["e.npy", "29 rows of embeddings but 30 clips"]),
    ("order", ["e.csv", "offset", "does not match the rows"]),
    ("duplicate", ["e.csv", "c3.wav is listed more than once"]),
    ("nan", ["e.npy", "NaN or infinite values in 1 rows, first c7.wav"]),
    ("inf", ["e.npy", "NaN or infinite"]),
    ("missing", ["e.npy", "no embedding for 1 of the 31 clips", "labels.csv", "c30.wav"]),
])
def test_mismatched_probe_inputs_are_refused(tmp_path, capsys, case, needles):
    labels, x, rows = probe_inputs(tmp_path)
    if case == "fewer rows":
        x = x[:-1]
    elif case == "order":
        rows[3], rows[4] = rows[4], rows[3]
    elif case == "duplicate":
        rows[4] = rows[3].replace(",3,1", ",4,1")
    elif case == "nan":
        x[7, 1, 2] = np.nan
    elif case == "inf":
        x[2, 0, 0] = np.inf
    elif case == "missing":
        labels.write_text(labels.read_text() + "c30.wav,a\n")
    emb = write_emb(tmp_path, x, rows)
    assert main(["probe", "--labels", str(labels), "--embeddings", str(emb), "--probes", "linear",
                 "--out", str(tmp_path / "p")]) == 2
    one_line_error(capsys, *needles)


def test_matching_probe_inputs_still_work(tmp_path):
    labels, x, rows = probe_inputs(tmp_path)
    assert main(["probe", "--labels", str(labels), "--embeddings", str(write_emb(tmp_path, x, rows)),
                 "--probes", "linear", "--out", str(tmp_path / "p")]) == 0


# -- nonsense arguments -----------------------------------------------------------------------------------
@pytest.mark.parametrize("args, needle", [
    (["embed", "--batch-size", "0"], "--batch-size must be positive"),
    (["embed", "--layers", "layer99"], "unknown layer 'layer99'"),
    (["pretrain", "--set", "train.steps=0"], "train.steps: must be positive"),
    (["pretrain", "--set", "train.steps=-3"], "train.steps: must be positive"),
    (["pretrain", "--set", "train.log_every=0"], "train.log_every: must be positive"),
    (["tokenize", "--workers", "-1"], "--workers must be >= 0"),
    (["tokenize", "--shard", "3/2"], "--shard must look like i/n"),
    (["decode", "--item", "999"], "--item 999: the store has 10 items"),
    (["probe", "--probes", "svm"], "unknown probe 'svm'"),
    (["make-demo-corpus", "--pieces", "0"], "--pieces: must be positive"),
])
def test_nonsense_arguments_get_one_line(tmp_path, capsys, trained_tokenizer, prior_dirs, store, args, needle):
    cmd, rest = args[0], args[1:]
    full = {
        "embed": ["--tokenizer", str(trained_tokenizer), "--prior", str(prior_dirs["mlm"]), "--store", str(store),
                  "--out", str(tmp_path / "e")],
        "pretrain": ["--store", str(store), "--out", str(tmp_path / "p")],
        "tokenize": ["--tokenizer", str(trained_tokenizer), "--audio", str(store.parent / "audio"),
                     "--out", str(tmp_path / "s")],
        "decode": ["--tokenizer", str(trained_tokenizer), "--store", str(store), "--out", str(tmp_path / "x.wav")],
        "probe": ["--labels", str(tmp_path / "l.csv"), "--baselines", "mfcc", "--out", str(tmp_path / "pr")],
        "make-demo-corpus": ["--out", str(tmp_path / "c")],
    }[cmd]
    assert main([cmd, *full, *rest]) == 2
    one_line_error(capsys, needle)
    assert not (tmp_path / "p" / "train_state.pt").exists() and not (tmp_path / "s").exists()
