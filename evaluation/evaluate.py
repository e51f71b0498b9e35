"""Run probes for several feature sets and targets on the same splits; print and save the results.

Outputs in OUT: results.csv / results.json (with config, seeds and file hashes), one bar chart per
target (`probe_<target>.png`), and a per-layer curve for each multi-layer feature set
(`layers_<features>_<target>.png`).
"""

from __future__ import annotations

import csv
import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musetok.evaluation.baselines import HANDCRAFTED, handcrafted_features
from musetok.evaluation.probe import Labels, ProbeResult, make_split, probe_layers, read_labels
from musetok.shared.audio import is_auto_level, resolve_level
from musetok.shared.errors import UserError
from musetok.shared.io import file_sha1, write_json
from musetok.shared.plots import plot_bars, plot_layer_curve


@dataclass
class FeatureSet:
    """Features for the rows of `paths`: `(N, L, D)` with layer names, or `(N, D)`."""

    name: str
    x: np.ndarray
    paths: list[str]
    layer_names: list[str]
    source: str = ""       # the file the features came from, for error messages


def load_embeddings(path: str | Path, name: str | None = None) -> FeatureSet:
    """Read `musetok embed` output (`.npy` + `.csv` [+ `.layers.txt`], or `.npz`), refusing with a one-line
    error an array and index that do not match (row count, order, duplicate paths), frame-level output,
    or NaN / infinite values."""
    path = Path(path)
    base = path.with_suffix("")
    try:
        if path.suffix == ".npz":
            z = np.load(path)
            x, paths, names = z["embeddings"], [str(p) for p in z["paths"]], [str(v) for v in z["layers"]]
            index = path
        else:
            x = np.load(path)
            index = base.with_suffix(".csv")
            with open(index, newline="") as f:
                rows = list(csv.DictReader(f))
            paths = [r["path"] for r in rows]
            if any(r.get("length", "1") != "1" for r in rows):
                raise UserError(f"{path}: frame-level embeddings (--pool none); probes need one pooled row per clip")
            bad = next((i for i, r in enumerate(rows) if r.get("offset", str(i)) != str(i)), None)
            if bad is not None:
                raise UserError(f"{index}: row {bad + 2} ({rows[bad]['path']}) has offset {rows[bad]['offset']}, "
                                f"expected {bad}: the index does not match the rows of {path.name}")
            layers_file = base.parent / (base.name + ".layers.txt")
            names = [ln for ln in layers_file.read_text().splitlines() if ln and not ln.startswith("#")] \
                if layers_file.exists() else [f"layer{i}" for i in range(x.shape[1] if x.ndim == 3 else 1)]
    except (ValueError, KeyError, OSError) as e:
        if isinstance(e, (FileNotFoundError, PermissionError)):
            raise
        raise UserError(f"{path}: not a musetok embeddings file ({e})") from None
    if x.shape[0] != len(paths):
        raise UserError(f"{path}: {x.shape[0]} rows of embeddings but {len(paths)} clips in {index}")
    dup = next((p for p, n in Counter(paths).items() if n > 1), None)
    if dup is not None:
        raise UserError(f"{index}: {dup} is listed more than once")
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise UserError(f"{path}: NaN or infinite values in {int((~finite).sum())} rows, first {paths[i]}")
    return FeatureSet(name or base.name, x, paths, names, str(path))


def align(fs: FeatureSet, labels: Labels, labels_path: str | Path = "the labels") -> np.ndarray:
    """Feature rows in the order of the labels' paths; every labelled path must have features."""
    pos = {p: i for i, p in enumerate(fs.paths)}
    missing = [p for p in labels.paths if p not in pos]
    if missing:
        raise UserError(f"{fs.source or fs.name}: no embedding for {len(missing)} of the {len(labels.paths)} clips "
                        f"in {labels_path}, e.g. {missing[0]}")
    return fs.x[[pos[p] for p in labels.paths]]


def slug(name: str) -> str:
    """A file-name-safe form of a feature-set or target name ("musetok (mlm prior)" -> "musetok_mlm_prior")."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_")


def run_probes(feature_sets: list[FeatureSet], labels_csv: str | Path, targets: list[tuple[str, str]],
               out: str | Path, seed: int = 0, probes: tuple[str, ...] = ("linear", "mlp"),
               log=print) -> list[ProbeResult]:
    """targets: (label column, task) pairs. All feature sets share each target's split."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[ProbeResult] = []
    t0 = time.time()
    for column, task in targets:
        labels = read_labels(labels_csv, column, task)
        split = labels.split if labels.split is not None else make_split(labels, seed)
        for fs in feature_sets:
            x = align(fs, labels, labels_csv)
            r = probe_layers(x, fs.layer_names, labels, split, fs.name, column, probes, seed)
            results.append(r)
            log(f"  {column:12s} {fs.name:22s} {r.metric} test {r.test[r.metric]:.3f} "
                f"(valid {r.valid[r.metric]:.3f}, {r.layer}, {r.probe})")
            if len(r.per_layer) > 1:
                plot_layer_curve(out / f"layers_{slug(fs.name)}_{slug(column)}.png", [p[0] for p in r.per_layer],
                                 [p[1] for p in r.per_layer], [p[2] for p in r.per_layer], r.metric,
                                 f"{fs.name} on {column}: best layer on valid = {r.layer}")
        rs = [r for r in results if r.target == column]
        plot_bars(out / f"probe_{slug(column)}.png", [r.features for r in rs], [r.test[r.metric] for r in rs],
                  f"test {rs[0].metric}", f"{column} ({task}), layer chosen on validation")
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["target", "task", "features", "metric", "test", "valid", "layer", "probe", "params",
                    "test_all", "valid_all"])
        for r in results:
            w.writerow([r.target, r.task, r.features, r.metric, f"{r.test[r.metric]:.4f}", f"{r.valid[r.metric]:.4f}",
                        r.layer, r.probe, r.params, json.dumps(r.test), json.dumps(r.valid)])
    write_json(out / "results.json", {
        "seed": seed, "probes": list(probes), "targets": [list(t) for t in targets],
        "labels": {"path": str(labels_csv), "sha1": file_sha1(labels_csv)},
        "features": {fs.name: {"shape": list(fs.x.shape), "layers": fs.layer_names} for fs in feature_sets},
        "seconds": round(time.time() - t0, 1), "results": [r.to_dict() for r in results]})
    return results


def format_table(results: list[ProbeResult]) -> str:
    """Targets as columns, feature sets as rows: the test metric of the layer chosen on validation."""
    targets = list(dict.fromkeys(r.target for r in results))
    names = list(dict.fromkeys(r.features for r in results))
    by = {(r.features, r.target): r for r in results}
    head = [f"{'features':24s}"] + [f"{t + ' (' + by[(names[0], t)].metric + ')':>30s}" for t in targets]
    lines = [" ".join(head), "-" * len(" ".join(head))]
    for n in names:
        cells = []
        for t in targets:
            r = by.get((n, t))
            cells.append(f"{(f'{r.test[r.metric]:.3f}  [{r.layer}]' if r else '-'):>30s}")
        lines.append(" ".join([f"{n:24s}"] + cells))
    return "\n".join(lines)


def probe(labels_csv: str | Path, column: str, out: str | Path, task: str = "auto", embeddings: list[str] = (),
          baselines: list[str] = (), audio: str | Path | None = None, sample_rate: int = 22050,
          probes: tuple[str, ...] = ("linear", "mlp"), seed: int = 0, log=print,
          level_db: float | None = None) -> list[ProbeResult]:
    """`musetok probe`: probe `[NAME=]PATH` embedding files and hand-crafted baselines (computed from the
    labelled audio, relative to `audio` or the labels' folder, each clip brought to an RMS of `level_db` dBFS
    first where one is given) on one label column."""
    if is_auto_level(level_db):
        raise UserError("--level-db: auto is the level of a prior's training audio, and probe reads no prior; give "
                        "the number its model card says (or none)")
    level_db = resolve_level(level_db, None)
    unknown = [b for b in baselines if b not in HANDCRAFTED]
    if unknown:
        raise UserError(f"--baselines: unknown baseline '{unknown[0]}' (known: {', '.join(HANDCRAFTED)})")
    bad = [p for p in probes if p not in ("linear", "mlp")]
    if bad or not probes:
        raise UserError(f"--probes: unknown probe '{bad[0] if bad else ''}' (known: linear, mlp)")
    if sample_rate <= 0:
        raise UserError(f"--sample-rate must be positive, got {sample_rate}")
    sets = []
    for spec in embeddings:
        name, _, path = spec.rpartition("=")
        sets.append(load_embeddings(path, name or None))
    if baselines:
        labels = read_labels(labels_csv, column, task)
        root = Path(audio) if audio else Path(labels_csv).parent
        feats = handcrafted_features([root / p for p in labels.paths], sample_rate, tuple(baselines),
                                     level_db=level_db)
        sets += [FeatureSet(k, v, labels.paths, [k]) for k, v in feats.items()]
    if not sets:
        raise UserError("nothing to probe: give --embeddings and/or --baselines")
    return run_probes(sets, labels_csv, [(column, task)], out, seed=seed, probes=tuple(probes), log=log)
