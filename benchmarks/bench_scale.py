"""Scale benchmark: memory that does not grow with the corpus, and parallel tokenize speed.

    python benchmarks/bench_scale.py [--audio DIR] [--minutes 10]

In one run, each measurement in a fresh process (peak RSS of the process and its workers):
  1. `tokenize` peak RSS on a 10-file and a 1000-file corpus (3-second synthetic pieces);
  2. `pretrain` peak RSS (small prior, 30 steps) on a store of 1e5 vs 2e7 code frames (memmapped);
  3. `tokenize` wall time with --workers 1 vs --workers 2 on the same real music (the dev data kit's
     OGG files if present, else synthetic), as real-time factors and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_tokenize import default_audio, peak_rss_child, pick_files, write_manifest  # noqa: E402

from musetok.demo.corpus import DemoCorpusConfig, make_demo_corpus  # noqa: E402
from musetok.shared.config import load_config  # noqa: E402
from musetok.shared.token_store import StoreMeta, TokenStoreWriter  # noqa: E402
from musetok.tokenizer.builder import build_tokenizer, save_tokenizer  # noqa: E402
from musetok.tokenizer.train import TokenizerRunConfig  # noqa: E402


def fake_store(root: Path, frames: int, files: int) -> None:
    w = TokenStoreWriter(root, StoreMeta("bench", 512, 1, 43.07))
    rng = np.random.default_rng(0)
    per = frames // files
    for i in range(files):
        w.add(f"f{i:06d}.wav", rng.integers(0, 512, (1, per), dtype=np.uint16), per / 43.07, 1, 1)


def pretrain_rss(store: Path, out: Path) -> float:
    code = (
        "import resource, sys\n"
        "from musetok.shared.config import load_config\n"
        "from musetok.prior.train import PriorRunConfig, train_prior\n"
        "run = load_config(PriorRunConfig, 'small', ['train.steps=30', 'train.valid_batches=2'], kind='prior')\n"
        "train_prior(run, sys.argv[1], sys.argv[2], progress=False)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(store), str(out)], capture_output=True, text=True, check=True)
    return int(r.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--audio", type=Path, default=None)
    ap.add_argument("--minutes", type=float, default=10.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="musetok-scale-"))
    run = load_config(TokenizerRunConfig, "small", kind="tokenizer")
    model = build_tokenizer(run.model).eval()
    tok = tmp / "tok"
    save_tokenizer(tok, model)

    # 1. RSS vs number of files
    make_demo_corpus(tmp / "c1000", DemoCorpusConfig(pieces=1000, seconds=3.0))
    files = sorted(str(p.relative_to(tmp / "c1000")) for p in (tmp / "c1000").rglob("*.wav"))
    (tmp / "m10").mkdir()
    small = write_manifest(tmp / "m10", tmp / "c1000", files[:10])
    rss10, s10 = peak_rss_child(tok, small, tmp / "s10", 2)
    rss1000, s1000 = peak_rss_child(tok, tmp / "c1000", tmp / "s1000", 2)
    print(f"tokenize peak RSS, 10 files:   {rss10:7.0f} MB")
    print(f"tokenize peak RSS, 1000 files: {rss1000:7.0f} MB  (ratio {rss1000 / rss10:.2f}; {s1000:.1f} s)")

    # 2. pretraining RSS vs store size
    fake_store(tmp / "store_small", 100_000, 100)
    fake_store(tmp / "store_big", 20_000_000, 2000)
    a = pretrain_rss(tmp / "store_small", tmp / "p_small")
    b = pretrain_rss(tmp / "store_big", tmp / "p_big")
    size = sum(f.stat().st_size for f in (tmp / "store_big" / "shards").iterdir()) / 2**20
    print(f"pretrain peak RSS, 1e5-frame store:  {a:7.0f} MB")
    print(f"pretrain peak RSS, 2e7-frame store:  {b:7.0f} MB  (store shards {size:.0f} MB; ratio {b / a:.2f})")

    # 3. parallel tokenize speedup on real audio
    audio = args.audio or default_audio()
    if audio is None:
        audio = tmp / "demo"
        make_demo_corpus(audio, DemoCorpusConfig(pieces=60, seconds=10.0))
    root, chosen, seconds = pick_files(audio, args.minutes)
    (tmp / "m").mkdir()
    manifest = write_manifest(tmp / "m", root, chosen)
    rtf: dict[int, float] = {}
    for w in (1, 2, 1, 2):  # interleaved, best of two each; the run's own real-time factor (no start-up)
        r = subprocess.run([sys.executable, "-m", "musetok.cli", "tokenize", "--tokenizer", str(tok),
                            "--audio", str(manifest), "--out", str(tmp / f"par{w}-{time.time()}"), "--workers", str(w),
                            "--quiet"], check=True, capture_output=True, text=True)
        x = float(re.search(r"\((\d+)x real time\)", r.stdout).group(1))
        rtf[w] = max(rtf.get(w, 0.0), x)
    print(f"tokenize {seconds / 60:.1f} min of audio: --workers 1 {rtf[1]:.0f}x real time, "
          f"--workers 2 {rtf[2]:.0f}x real time, speedup {rtf[2] / rtf[1]:.2f}x")
    print(json.dumps({"scratch": str(tmp), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
