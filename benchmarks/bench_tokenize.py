"""Stage-1 benchmark: front-end vs full tokenize throughput, and peak memory vs file length.

    python benchmarks/bench_tokenize.py [--audio DIR] [--minutes 10] [--workers 1] [--set KEY=VALUE ...]

On the same audio, in one run:
  1. decode + resample + log-mel alone (no model), as real-time factor (audio s per wall s);
  2. the full `tokenize` with the `small` tokenizer config (untrained weights: speed does not depend
     on training), same files;
  3. peak RSS of `tokenize` on a 1-minute and a 60-minute file (each in a fresh process).
Without --audio it uses the dev data kit's music if present ($DEV_DATA or ~/musetok-dev-data/music),
else a synthetic corpus made by the demo-corpus generator.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from musetok.shared.audio import list_audio, load_audio
from musetok.shared.config import load_config
from musetok.tokenizer.builder import build_tokenizer, save_tokenizer
from musetok.tokenizer.encode_corpus import tokenize_corpus
from musetok.tokenizer.features import Featurizer
from musetok.tokenizer.train import TokenizerRunConfig


def default_audio() -> Path | None:
    root = Path(os.environ.get("DEV_DATA", Path.home() / "musetok-dev-data")) / "music" / "audio"
    return root if root.is_dir() else None


def pick_files(audio: Path, minutes: float) -> tuple[Path, list[str], float]:
    corpus = list_audio(audio)
    chosen, total = [], 0.0
    for rel in corpus.files:
        d = sf.info(str(corpus.path(rel))).duration
        chosen.append(rel)
        total += d
        if total >= minutes * 60:
            break
    return corpus.root, chosen, total


def write_manifest(folder: Path, root: Path, files: list[str]) -> Path:
    m = folder / "manifest.csv"
    m.write_text("path\n" + "".join(f"{(root / f).resolve()}\n" for f in files))
    return m


def peak_rss_child(tok_dir: Path, audio: Path, store: Path, workers: int) -> tuple[float, float]:
    """Run tokenize in a fresh process; return (peak RSS MB over it and its workers, seconds)."""
    code = (
        "import resource, json, sys, time\n"
        "from musetok.tokenizer.builder import load_tokenizer\n"
        "from musetok.tokenizer.encode_corpus import tokenize_corpus\n"
        "m = load_tokenizer(sys.argv[1]); t = time.time()\n"
        "tokenize_corpus(m, sys.argv[2], sys.argv[3], workers=int(sys.argv[4]), progress=False)\n"
        "s = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "c = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(json.dumps({'self': s, 'children': c, 'seconds': time.time() - t}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tok_dir), str(audio), str(store), str(workers)],
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return max(r["self"], r["children"]) / 1024, r["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--audio", type=Path, default=None)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a tokenizer setting to measure, e.g. model.mel.scale=semitone (repeatable)")
    args = ap.parse_args()

    audio = args.audio or default_audio()
    tmp = Path(tempfile.mkdtemp(prefix="musetok-bench-"))
    if audio is None:
        from musetok.demo.corpus import DemoCorpusConfig, make_demo_corpus

        audio = tmp / "demo"
        make_demo_corpus(audio, DemoCorpusConfig(pieces=40, seconds=15.0))
    root, files, seconds = pick_files(audio, args.minutes)
    manifest = write_manifest(tmp, root, files)
    print(f"audio: {len(files)} files, {seconds / 60:.1f} min from {audio}")

    run = load_config(TokenizerRunConfig, "small", args.overrides, kind="tokenizer")
    print(f"tokenizer: small {' '.join(args.overrides)}; mel {run.model.mel}")
    model = build_tokenizer(run.model).eval()
    tok_dir = tmp / "tok"
    save_tokenizer(tok_dir, model)
    fz = Featurizer(run.model)

    # 1. front-end alone (one process: decode + resample + log-mel)
    t = time.time()
    frames = 0
    for rel in files:
        for block in fz.iter_file(root / rel):
            frames += block.shape[1]
    fe_s = time.time() - t
    fe_rtf = seconds / fe_s

    # 2. full tokenize (decode workers + model in the main process)
    t = time.time()
    r = tokenize_corpus(model, manifest, tmp / "store", workers=args.workers, progress=False)
    full_s = time.time() - t
    full_rtf = seconds / full_s
    assert not r.failed, r.failed

    print(f"front-end alone : {fe_s:7.2f} s  {fe_rtf:7.0f}x real time")
    print(f"full tokenize   : {full_s:7.2f} s  {full_rtf:7.0f}x real time  (workers={args.workers})")
    print(f"ratio full/front-end: {full_rtf / fe_rtf:.2f}  (target >= 0.5); full >= 300x: {full_rtf >= 300}")

    if not args.skip_rss:
        # 3. peak RSS: 1-minute vs 60-minute file (FLAC made by looping the corpus)
        wave = load_audio(root / files[0], 22050, duration=60.0)
        wave = np.resize(wave, 60 * 22050)
        for minutes in (1, 60):
            d = tmp / f"long{minutes}"
            d.mkdir()
            with sf.SoundFile(str(d / "x.flac"), "w", 22050, 1, format="FLAC") as f:
                for _ in range(minutes):
                    f.write(wave)
            rss, secs = peak_rss_child(tok_dir, d, tmp / f"store{minutes}", args.workers)
            print(f"peak RSS, {minutes:2d}-minute file: {rss:7.0f} MB  ({minutes * 60 / secs:.0f}x real time)")
    print(f"scratch folder: {tmp}")


if __name__ == "__main__":
    main()
