"""A real install: build the wheel, install it into a folder with `pip --target`, run the console script
from outside the checkout. The configs must come along as package data."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_corpus

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    src = tmp_path / "src"  # build from a copy: nothing is written into the checkout
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info",
                                                             "demo-out", "bench-out", "__pycache__", ".*_cache"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    r = subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("musetok-*.whl"))
    r = subprocess.run(pip + ["install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    site = tmp_path / "site"
    assert (site / "musetok" / "configs" / "tokenizer" / "small.yaml").is_file()
    assert not (site / "tests").exists()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    work = tmp_path / "elsewhere"
    audio = make_corpus(work / "audio", n=3, seconds=2.0)
    where = subprocess.run([sys.executable, "-c", "import musetok.shared.config as c; print(c.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(site)), where  # the installed copy, not the checkout
    cmd = [str(site / "bin" / "musetok"), "train-tokenizer", "--config", "small", "--audio", str(audio),
           "--out", str(work / "tok"), "--quiet"]
    for s in ("model.channels=16", "train.steps=3", "train.batch_size=2", "train.warmup_steps=1",
              "train.valid_segments=2"):
        cmd += ["--set", s]
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (work / "tok" / "model.safetensors").is_file() and "3 steps" in r.stdout
