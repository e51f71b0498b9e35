"""Probing: how much a representation knows, with the protocol of JukeMIR / MARBLE.

Standardise on train; a linear probe and a one-hidden-layer MLP probe, each over a small grid
(C / L2 strength, hidden size, learning rate, with early stopping); the best model is chosen on
validation and tested once. Multi-layer features are probed layer by layer and the best layer is
picked on validation, never on test. scikit-learn does the fitting.

Choices on validation use a continuous score (`SELECT`), not the reported metric: accuracy on a
small validation set ties often, and a tie would go to whatever came first (the `input` layer, the
smallest C). Classification and key use validation log-loss (lower is better); regression R^2 and
multi-label average precision are continuous already.

Tasks: `classification` (accuracy, macro-F1), `multilabel` (';'-separated tags: ROC-AUC, average
precision, macro), `regression` (R^2), `key` (mir_eval's weighted key score).
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, r2_score, roc_auc_score
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.preprocessing import MultiLabelBinarizer, StandardScaler

from musetok.shared.errors import UserError

TASKS = ("classification", "multilabel", "regression", "key")
PRIMARY = {"classification": "accuracy", "multilabel": "average_precision", "regression": "r2", "key": "weighted_score"}
SELECT = {"classification": "log_loss", "multilabel": "average_precision", "regression": "r2", "key": "log_loss"}
LOWER_IS_BETTER = {"log_loss"}
SPLITS = ("train", "valid", "test")


@dataclass
class Labels:
    """Targets aligned with feature rows. `y` holds strings (classification/key), tag lists, or floats."""

    paths: list[str]
    y: list
    task: str
    split: np.ndarray | None = None     # "train" / "valid" / "test" per row, if the CSV had one
    groups: np.ndarray | None = None


def read_labels(path: str | Path, column: str = "label", task: str = "auto") -> Labels:
    """Read `path,<column>[,split][,group]` CSV. `task="auto"`: numbers -> regression, ';' -> multilabel,
    a column named `key` -> key, else classification."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise UserError(f"{path}: no rows")
    if "path" not in rows[0] or column not in rows[0]:
        raise UserError(f"{path}: needs columns 'path' and '{column}' (has {', '.join(rows[0])})")
    raw = [r[column] for r in rows]
    if task == "auto":
        if column == "key":
            task = "key"
        elif all(_is_number(v) for v in raw):
            task = "regression"
        elif any(";" in v for v in raw):
            task = "multilabel"
        else:
            task = "classification"
    if task not in TASKS:
        raise UserError(f"task must be one of {TASKS}, got {task!r}")
    if task == "regression":
        bad = next((i for i, v in enumerate(raw) if not _is_number(v)), None)
        if bad is not None:
            raise UserError(f"{path}: row {bad + 2}: '{column}' is {raw[bad]!r}, not a number (task regression)")
        y = [float(v) for v in raw]
    elif task == "multilabel":
        y = [[t.strip() for t in v.split(";") if t.strip()] for v in raw]
    else:
        y = raw
    split = None
    if "split" in rows[0]:
        for i, r in enumerate(rows):
            if r["split"] not in SPLITS:
                raise UserError(f"{path}: row {i + 2}: split is {r['split']!r}; it must be one of "
                                f"{', '.join(SPLITS)} (or leave out the split column for an automatic split)")
        split = np.array([r["split"] for r in rows])
        for part in SPLITS:
            if part not in split:
                raise UserError(f"{path}: the split column has no '{part}' rows")
    groups = np.array([r["group"] for r in rows]) if "group" in rows[0] else None
    return Labels([r["path"] for r in rows], y, task, split, groups)


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def make_split(labels: Labels, seed: int = 0, n_folds: int = 7) -> np.ndarray:
    """Deterministic train/valid/test split (~5:1:1), stratified by class, never splitting a group."""
    n = len(labels.y)
    groups = labels.groups if labels.groups is not None else np.arange(n).astype(str)
    strat = np.array(labels.y) if labels.task in ("classification", "key") else None
    if strat is not None and np.unique(strat, return_counts=True)[1].min() >= n_folds:
        cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        parts = [test for _, test in cv.split(np.zeros(n), strat, groups)]
    else:  # regression, tags, or classes too rare to stratify: shuffled groups
        rng = np.random.default_rng(seed)
        uniq = np.unique(groups)
        perm = {g: i for i, g in enumerate(rng.permutation(uniq))}
        cv = GroupKFold(n_splits=n_folds)
        keyed = np.array([perm[g] for g in groups])
        parts = [test for _, test in cv.split(np.zeros(n), groups=keyed)]
    split = np.full(n, "train", dtype=object)
    split[parts[0]] = "test"
    split[parts[1]] = "valid"
    return split.astype(str)


# -- metrics ----------------------------------------------------------------------------------------
def score(task: str, y_true, y_pred, y_score=None) -> dict[str, float]:
    if task == "classification":
        return {"accuracy": accuracy_score(y_true, y_pred), "macro_f1": f1_score(y_true, y_pred, average="macro")}
    if task == "key":
        import mir_eval

        ws = [mir_eval.key.weighted_score(t, p) for t, p in zip(y_true, y_pred)]
        return {"weighted_score": float(np.mean(ws)), "accuracy": accuracy_score(y_true, y_pred)}
    if task == "multilabel":
        keep = (y_true.sum(0) > 0) & (y_true.sum(0) < len(y_true))  # tags with both classes present
        return {"roc_auc": roc_auc_score(y_true[:, keep], y_score[:, keep], average="macro"),
                "average_precision": average_precision_score(y_true[:, keep], y_score[:, keep], average="macro")}
    return {"r2": r2_score(y_true, y_pred)}


# -- probes -----------------------------------------------------------------------------------------
def _grid(task: str, kind: str, seed: int) -> list[tuple[str, object]]:
    if kind == "linear":
        if task == "regression":
            return [(f"ridge alpha={a}", Ridge(alpha=a)) for a in (0.1, 1.0, 10.0, 100.0)]
        # tol 1e-3 / 500 iterations: the same choices as 1e-4 / 2000 on our tests, at a third of the time
        make = (lambda c: OneVsRestClassifier(LogisticRegression(C=c, max_iter=500, tol=1e-3))) \
            if task == "multilabel" else (lambda c: LogisticRegression(C=c, max_iter=500, tol=1e-3))
        return [(f"logreg C={c}", make(c)) for c in (0.01, 0.1, 1.0, 10.0)]
    out = []
    for hidden in (128, 512):
        for alpha in (1e-4, 1e-2):
            kw = dict(hidden_layer_sizes=(hidden,), alpha=alpha, learning_rate_init=1e-3, max_iter=300,
                      early_stopping=True, validation_fraction=0.15, n_iter_no_change=15, random_state=seed)
            model = MLPRegressor(**kw) if task == "regression" else MLPClassifier(**kw)
            out.append((f"mlp h={hidden} l2={alpha}", model))
    return out


@dataclass
class FitResult:
    probe: str            # "linear" or "mlp"
    params: str
    valid: dict[str, float]
    test: dict[str, float]


def fit_probe(x: np.ndarray, labels: Labels, split: np.ndarray, probes: tuple[str, ...] = ("linear", "mlp"),
              seed: int = 0) -> FitResult:
    """Fit every probe of the grid on train, choose on valid, score the chosen one on test. x: `(N, D)`."""
    task = labels.task
    tr, va, te = (split == "train"), (split == "valid"), (split == "test")
    scaler = StandardScaler().fit(x[tr])
    xs = np.nan_to_num(scaler.transform(x)).astype(np.float32)
    if task == "multilabel":
        mlb = MultiLabelBinarizer().fit(labels.y)
        y = mlb.transform(labels.y)
    elif task == "regression":
        y = np.asarray(labels.y, dtype=np.float64)
    else:
        y = np.asarray(labels.y)
    fits, models = [], []
    for kind in probes:
        for params, model in _grid(task, kind, seed):
            with warnings.catch_warnings():  # tiny grids on small sets: convergence / rare-class chatter
                warnings.simplefilter("ignore", ConvergenceWarning)
                warnings.simplefilter("ignore", UserWarning)
                model.fit(xs[tr], y[tr])
            fits.append(FitResult(kind, params, _evaluate(task, model, xs[va], y[va]), {}))
            models.append(model)
    i = best_index([f.valid for f in fits], task)
    fits[i].test = _evaluate(task, models[i], xs[te], y[te])
    return fits[i]


def best_index(valid: list[dict[str, float]], task: str) -> int:
    """The candidate (probe setting or layer) with the best validation `SELECT` score; a tie on it goes
    to the first, but a continuous score rarely ties."""
    key = SELECT[task]
    sign = 1.0 if key in LOWER_IS_BETTER else -1.0
    return min(range(len(valid)), key=lambda i: (sign * valid[i][key], i))


def log_loss(y: np.ndarray, proba: np.ndarray, classes: np.ndarray, eps: float = 1e-7) -> float:
    """Mean negative log-probability of the true class; a class the probe never saw in training gets `eps`."""
    col = {c: j for j, c in enumerate(classes)}
    p = np.array([proba[i, col[v]] if v in col else 0.0 for i, v in enumerate(y)])
    return float(-np.log(np.clip(p, eps, 1.0)).mean())


def _evaluate(task: str, model, x: np.ndarray, y) -> dict[str, float]:
    if task == "multilabel":
        return score(task, y, None, model.predict_proba(x))
    out = score(task, y, model.predict(x))
    if task in ("classification", "key"):
        out["log_loss"] = log_loss(y, model.predict_proba(x), model.classes_)
    return out


@dataclass
class ProbeResult:
    """One feature set on one task. `per_layer`: (layer, valid primary, test primary, valid selection score)
    for every layer; `layer` is the one chosen on validation (by `SELECT[task]`, the fourth entry), and
    `valid`/`test` are its full metrics."""

    features: str
    task: str
    target: str
    metric: str
    layer: str
    probe: str
    params: str
    valid: dict[str, float]
    test: dict[str, float]
    per_layer: list[tuple[str, float, float, float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def probe_layers(features: np.ndarray | list[np.ndarray], layer_names: list[str], labels: Labels, split: np.ndarray,
                 name: str, target: str, probes: tuple[str, ...] = ("linear", "mlp"), seed: int = 0, jobs: int = 1
                 ) -> ProbeResult:
    """Probe each layer of `(N, L, D)` (or `(N, D)`) features, or each of a list of `(N, D_i)` candidates
    (layers of different widths, e.g. a concatenation of layers); pick one on validation. `jobs` > 1 fits
    them in that many processes."""
    if isinstance(features, np.ndarray):
        if features.ndim == 2:
            features = features[:, None]
            layer_names = layer_names or ["features"]
        features = [features[:, i] for i in range(features.shape[1])]
    if len(features) != len(layer_names):
        raise ValueError(f"{len(features)} feature sets but {len(layer_names)} names")
    metric = PRIMARY[labels.task]
    jobs = min(jobs, len(features))
    fits = Parallel(n_jobs=jobs)(delayed(fit_probe)(x, labels, split, probes, seed) for x in features) \
        if jobs > 1 else [fit_probe(x, labels, split, probes, seed) for x in features]
    best = best_index([f.valid for f in fits], labels.task)
    f, key = fits[best], SELECT[labels.task]
    return ProbeResult(name, labels.task, target, metric, layer_names[best], f.probe, f.params, f.valid, f.test,
                       [(layer_names[i], g.valid[metric], g.test[metric], g.valid[key]) for i, g in enumerate(fits)])


