"""`musetok demo`: the representation benchmark's synthetic suite at demo size, in one folder.

    demo corpus (pretraining pieces) -> train the small tokenizer -> tokenize (+ spectrogram frames)
    -> pretrain the small prior (frames -> codes + frames), codes -> codes and the continuous
       masked_frames control at equal compute
    -> probe pieces and single notes made with other seeds (never seen in pretraining)
    -> every row (priors per layer, random-weights priors, bag of codes, MFCC, log-mel, chroma),
       pooled the same way, linear probes on 3 grouped splits -> bench.md with the table and plots.

It is `musetok bench-repr` with smaller sizes (`evaluation.bench_repr.DEMO`) and without the real-music
suite; `--quick` is the benchmark's `--quick`.
"""

from __future__ import annotations

from pathlib import Path

from musetok.evaluation.bench_repr import DEMO, QUICK, bench_repr


def run_demo(out: str | Path, quick: bool = False, seed: int = 0, progress: bool = True) -> Path:
    """Run the demo into `out`; prints the table and returns the path of bench.md."""
    sizes = QUICK if quick else DEMO
    print(f"musetok demo: synthetic suite, {sizes.pretrain_pieces} pretraining pieces, {sizes.probe_pieces} probe "
          f"pieces, {5 * sizes.notes.programs * len(sizes.notes.pitches)} probe notes -> {out}", flush=True)
    report, _ = bench_repr(out, sizes=sizes, seed=seed, progress=progress,
                           command=f"musetok demo{' --quick' if quick else ''} --out {out}")
    print("\n" + report.read_text())
    print(f"demo finished; everything is in {out}; report: {report}")
    return report
