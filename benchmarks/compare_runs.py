"""Cells of several `bench-repr` runs side by side, to read a lever's effect (the runs' own settings head
each column).

    .venv/bin/python benchmarks/compare_runs.py RUN1/bench.json RUN2/bench.json ... [--rows SUBSTRING]
    .venv/bin/python benchmarks/compare_runs.py RUN/bench.json [RUN2/bench.json] --pair LEVER BASE
    .venv/bin/python benchmarks/compare_runs.py RUN/bench.json ... --target

Without `--pair`: one Markdown table per suite; rows are (features, task), columns the runs, cells the test
metric's mean over the splits.

`--pair LEVER BASE` reads one row against another, split by split. Each is `[i:]substring`: the row of run
`i` (default 0) whose name contains the substring (it must name one row). Both rows are probed on the same
seeded splits (the same labels give the same splits in every run), so the difference is paired: the split
noise that the cells' own std shows mostly cancels. Per task it prints both means, the mean difference ±
its std over the splits, and in how many splits the lever was better; then the mean difference over all
tasks, with its std over the splits (each split's mean over the tasks).

`--target` prints, for each run, every prior against issue 11's bar (bench.md's "Against the target"
section, recomputed from the cells, so older runs get it too): its mean relative gain over the best
hand-crafted row per task, the tasks it does not win, its gain over the frames control and whether its
layer curve rises above the input on key and pitch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def label(record: dict) -> str:
    sets = record.get("tokenizer_overrides", []) + record.get("prior_overrides", [])
    return " ".join(sets) or "defaults"


def side_by_side(records: list[dict], rows: str) -> None:
    cells = [{(c["suite"], c["features"], c["task"]): c["mean"] for c in r["cells"]} for r in records]
    keys = list(dict.fromkeys(k for cs in cells for k in cs if rows in k[1]))
    for suite in dict.fromkeys(k[0] for k in keys):
        print(f"\n## {suite}\n")
        print("| features | task | " + " | ".join(f"{i}: {label(r)}" for i, r in enumerate(records)) + " |")
        print("|---|---|" + "---|" * len(records))
        for k in (k for k in keys if k[0] == suite):
            vals = [f"{cs[k]:.3f}" if k in cs else "" for cs in cells]
            print(f"| {k[1]} | {k[2]} | " + " | ".join(vals) + " |")


def find_row(records: list[dict], spec: str) -> tuple[int, str]:
    """`[i:]substring` -> (run index, the one row name of that run containing the substring)."""
    head, _, rest = spec.partition(":")
    i, sub = (int(head), rest) if head.isdigit() and rest else (0, spec)
    if i >= len(records):
        raise SystemExit(f"compare_runs: --pair {spec!r}: there is no run {i} (runs 0..{len(records) - 1})")
    names = list(dict.fromkeys(c["features"] for c in records[i]["cells"] if sub in c["features"]))
    if len(names) != 1:
        raise SystemExit(f"compare_runs: --pair {spec!r}: run {i} has {len(names)} rows containing {sub!r}"
                         + (f": {names}" if names else ""))
    return i, names[0]


def paired(records: list[dict], lever: str, base: str) -> dict[str, dict]:
    """Per suite: the tasks both rows have, each with the lever's and the base's per-split test metric."""
    (ia, ra), (ib, rb) = find_row(records, lever), find_row(records, base)
    a = {(c["suite"], c["task"]): c["test"] for c in records[ia]["cells"] if c["features"] == ra}
    b = {(c["suite"], c["task"]): c["test"] for c in records[ib]["cells"] if c["features"] == rb}
    out: dict[str, dict] = {"rows": (f"{ia}: {ra}", f"{ib}: {rb}"), "suites": {}}
    for key in (k for k in a if k in b):
        if len(a[key]) != len(b[key]):
            raise SystemExit(f"compare_runs: {key[0]} / {key[1]}: {len(a[key])} splits against {len(b[key])}")
        out["suites"].setdefault(key[0], {})[key[1]] = (np.asarray(a[key]), np.asarray(b[key]))
    if not out["suites"]:
        raise SystemExit(f"compare_runs: {ra!r} and {rb!r} share no task")
    return out


def print_paired(p: dict) -> None:
    print(f"lever: {p['rows'][0]}\nbase:  {p['rows'][1]}")
    per_split = []  # every (suite, task)'s per-split difference
    for suite, tasks in p["suites"].items():
        print(f"\n## {suite}\n")
        print("| task | lever | base | lever - base (± std over splits) | splits where the lever is better |")
        print("|---|---|---|---|---|")
        for task, (a, b) in tasks.items():
            d = a - b
            per_split.append(d)
            print(f"| {task} | {a.mean():.3f} | {b.mean():.3f} | {d.mean():+.3f} ± {d.std():.3f} | "
                  f"{int((d > 0).sum())} of {len(d)} ({int((d < 0).sum())} worse) |")
    by_split = np.stack(per_split).mean(0)  # each split's mean difference over the tasks
    print(f"\nmean difference over {len(per_split)} tasks: {by_split.mean():+.4f} ± {by_split.std():.4f} "
          f"(std over the {len(by_split)} splits of each split's mean)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--rows", default="", help="only rows whose name contains this")
    ap.add_argument("--pair", nargs=2, metavar=("LEVER", "BASE"),
                    help="read row LEVER against row BASE split by split (each: [run index:]substring)")
    ap.add_argument("--target", action="store_true", help="each run's priors against issue 11's bar")
    a = ap.parse_args(argv)
    records = []
    for p in a.runs:
        try:
            records.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"compare_runs: {p}: not a bench-repr bench.json ({e})") from None
    if a.target:
        from musetok.evaluation.bench_repr import cells_from_record, format_target, headroom, target_rows
        for p, r in zip(a.runs, records):
            cells = cells_from_record(r)
            print(f"## {p}\n\n{format_target(target_rows(cells), headroom(cells))}\n")
    elif a.pair:
        print_paired(paired(records, *a.pair))
    else:
        side_by_side(records, a.rows)


if __name__ == "__main__":
    main(sys.argv[1:])
