"""Cells of several `bench-repr` runs side by side, to read a lever's effect (the runs' own settings head
each column).

    .venv/bin/python benchmarks/compare_runs.py RUN1/bench.json RUN2/bench.json ... [--rows SUBSTRING]

Prints one Markdown table per suite: rows are (features, task), columns the runs, cells the test metric's
mean over the splits.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def label(record: dict) -> str:
    sets = record.get("tokenizer_overrides", []) + record.get("prior_overrides", [])
    return " ".join(sets) or "defaults"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--rows", default="", help="only rows whose name contains this")
    a = ap.parse_args()
    records = [json.loads(p.read_text()) for p in a.runs]
    cells = [{(c["suite"], c["features"], c["task"]): c["mean"] for c in r["cells"]} for r in records]
    keys = list(dict.fromkeys(k for cs in cells for k in cs if a.rows in k[1]))
    for suite in dict.fromkeys(k[0] for k in keys):
        print(f"\n## {suite}\n")
        print("| features | task | " + " | ".join(f"{i}: {label(r)}" for i, r in enumerate(records)) + " |")
        print("|---|---|" + "---|" * len(records))
        for k in (k for k in keys if k[0] == suite):
            vals = [f"{cs[k]:.3f}" if k in cs else "" for cs in cells]
            print(f"| {k[1]} | {k[2]} | " + " | ".join(vals) + " |")


if __name__ == "__main__":
    main()
