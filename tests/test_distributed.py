"""Data-parallel training with torchrun: 2 CPU processes over gloo, against one process."""

import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from musetok.shared.config import load_config
from tests.conftest import TINY_TOKENIZER

TINY_PRIOR = ["model.dim=64", "model.layers=2", "model.heads=2", "model.max_len=48", "train.batch_size=8",
              "train.warmup_steps=2", "train.log_every=2", "train.valid_every=100", "train.checkpoint_every=100"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], env_extra: dict | None = None, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "musetok.cli", *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def sets(items: list[str]) -> list[str]:
    out = []
    for s in items:
        out += ["--set", s]
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory, trained_tokenizer):
    from musetok.tokenizer import load_tokenizer
    from musetok.tokenizer.encode_corpus import tokenize_corpus
    from tests.conftest import make_corpus

    root = tmp_path_factory.mktemp("ddp")
    audio = make_corpus(root / "audio", n=8, seconds=5.0)
    tokenize_corpus(load_tokenizer(trained_tokenizer), audio, root / "store", workers=0, progress=False,
                    with_frames=True)
    return root / "store"


def test_prior_two_processes_equal_one(tmp_path, store):
    from musetok.prior.train import PriorRunConfig, train_prior

    # fp32: a bf16 matmul rounds differently at another batch shape, so only fp32 can be held to this tolerance
    # (`dtype: auto` would pick bf16 on an AMX CPU)
    overrides = TINY_PRIOR + ["train.steps=6", "train.grad_accum=2", "train.dtype=float32"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1): same float summation order
    try:
        # the `small` recipe (frames -> codes + frames), as `pretrain` runs it by default
        train_prior(load_config(PriorRunConfig, "small", overrides, kind="prior"), store, tmp_path / "one",
                    progress=False)
    finally:
        torch.set_num_threads(threads)
    torchrun(["pretrain", "--config", "small", "--store", str(store), "--out", str(tmp_path / "two"), "--quiet",
              *sets(overrides)],
             {"MUSETOK_RANK_STATE_DIR": str(tmp_path / "ranks")})
    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model.safetensors"))
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=2e-5, rtol=1e-4, msg=k)
    r0 = load_file(str(tmp_path / "ranks" / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "ranks" / "rank1.safetensors"))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    assert not (tmp_path / "two" / "metrics.jsonl").read_text().count("\n") == 0


def test_tokenizer_two_processes_keep_codebooks_identical(tmp_path, corpus):
    overrides = TINY_TOKENIZER + ["train.steps=30", "train.valid_every=30", "model.dead_code_threshold=4.0"]
    torchrun(["train-tokenizer", "--audio", str(corpus), "--out", str(tmp_path / "tok"), "--quiet", *sets(overrides)],
             {"MUSETOK_RANK_STATE_DIR": str(tmp_path / "ranks")})
    r0 = load_file(str(tmp_path / "ranks" / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "ranks" / "rank1.safetensors"))
    codebook = [k for k in r0 if "_codebook" in k]
    assert any(k.endswith("embed") for k in codebook) and any(k.endswith("initted") for k in codebook)
    assert bool(r0["quantizer.vq._codebook.initted"].all())
    for k in r0:  # parameters and VQ buffers (k-means init, EMA, expired codes) identical on both ranks
        assert torch.equal(r0[k], r1[k]), k
    from musetok.tokenizer import load_tokenizer
    assert load_tokenizer(tmp_path / "tok").codebook_size == 32
