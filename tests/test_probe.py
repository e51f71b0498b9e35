import csv

import mir_eval
import numpy as np
import pytest

from musetok.evaluation.probe import Labels, fit_probe, make_split, probe_layers, read_labels, score
from musetok.shared.errors import UserError


def blobs(n=240, classes=4, d=16, sep=4.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n // classes)
    centers = rng.standard_normal((classes, d)) * sep
    return centers[y] + rng.standard_normal((len(y), d)), [f"c{v}" for v in y]


def test_separable_features_probe_near_perfect():
    x, y = blobs()
    labels = Labels([str(i) for i in range(len(y))], y, "classification")
    r = fit_probe(x, labels, make_split(labels), probes=("linear",))
    assert r.test["accuracy"] >= 0.95 and r.test["macro_f1"] >= 0.95


def test_shuffled_labels_are_about_chance():
    x, y = blobs(n=400, sep=4.0)
    y = list(np.random.default_rng(1).permutation(y))
    labels = Labels([str(i) for i in range(len(y))], y, "classification")
    r = fit_probe(x, labels, make_split(labels))
    assert r.test["accuracy"] < 0.25 + 0.15


def test_regression_and_multilabel():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8))
    labels = Labels([str(i) for i in range(300)], list(x @ rng.standard_normal(8) + 0.1 * rng.standard_normal(300)),
                    "regression")
    assert fit_probe(x, labels, make_split(labels), probes=("linear",)).test["r2"] > 0.95
    tags = [[t for t, on in (("a", x[i, 0] > 0), ("b", x[i, 1] > 0), ("c", x[i, 2] > 0)) if on] or ["none"]
            for i in range(300)]
    labels = Labels([str(i) for i in range(300)], tags, "multilabel")
    r = fit_probe(x, labels, make_split(labels), probes=("linear",))
    assert r.test["roc_auc"] > 0.9


def test_grouped_split_never_leaks_and_is_deterministic():
    groups = np.repeat([f"g{i}" for i in range(60)], 4)
    y = [f"c{int(g[1:]) % 3}" for g in groups]
    labels = Labels([str(i) for i in range(len(y))], y, "classification", groups=groups)
    split = make_split(labels, seed=3)
    for g in np.unique(groups):
        assert len(set(split[groups == g])) == 1
    assert set(split) == {"train", "valid", "test"}
    for part in ("valid", "test"):  # stratified: every class in every split
        assert {y[i] for i in np.flatnonzero(split == part)} == {"c0", "c1", "c2"}
    assert (make_split(labels, seed=3) == split).all()


@pytest.mark.parametrize("ref, est, expected", [
    ("C major", "C major", 1.0), ("C major", "G major", 0.5), ("C major", "A minor", 0.3),
    ("C major", "C minor", 0.2), ("C major", "F# major", 0.0), ("A minor", "E minor", 0.5)])
def test_key_metric_matches_mir_eval(ref, est, expected):
    assert mir_eval.key.weighted_score(ref, est) == pytest.approx(expected)
    assert score("key", [ref, ref], [est, ref])["weighted_score"] == pytest.approx((expected + 1.0) / 2)


def test_layer_sweep_picks_layer_on_validation():
    x, y = blobs(n=200)
    noise = np.random.default_rng(2).standard_normal(x.shape)
    feats = np.stack([noise, x, noise * 2], axis=1)  # only layer 1 is informative
    labels = Labels([str(i) for i in range(len(y))], y, "classification")
    r = probe_layers(feats, ["l0", "l1", "l2"], labels, make_split(labels), "toy", "label", probes=("linear",))
    assert r.layer == "l1" and len(r.per_layer) == 3
    assert r.per_layer[1][1] > r.per_layer[0][1]


def test_read_labels_infers_task(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("path,label,split\na.wav,1.5,train\nb.wav,2,test\nc.wav,3,valid\n")
    assert read_labels(p).task == "regression"
    p.write_text("path,label\na.wav,rock;pop\nb.wav,jazz\n")
    lab = read_labels(p)
    assert lab.task == "multilabel" and lab.y[0] == ["rock", "pop"]
    with pytest.raises(UserError, match="needs columns 'path' and 'genre'"):
        read_labels(p, column="genre")


# -- the demo corpus -----------------------------------------------------------------------------------
def test_demo_corpus_deterministic_and_in_key(tmp_path):
    import librosa

    from musetok.demo.corpus import MAJOR, MINOR, NOTE_NAMES, DemoCorpusConfig, make_demo_corpus
    cfg = DemoCorpusConfig(pieces=12, seconds=4.0, seed=7)
    a = make_demo_corpus(tmp_path / "a", cfg)
    b = make_demo_corpus(tmp_path / "b", cfg)
    assert a.read_text() == b.read_text()
    rows = list(csv.DictReader(open(a)))
    assert {r["tempo_class"] for r in rows} <= {"slow", "medium", "fast"}
    for r in rows:
        assert (tmp_path / "a" / r["path"]).read_bytes() == (tmp_path / "b" / r["path"]).read_bytes()
        y, sr = librosa.load(tmp_path / "a" / r["path"], sr=None)
        chroma = librosa.feature.chroma_cqt(y=y, sr=sr, fmin=librosa.midi_to_hz(36)).mean(1)
        tonic = NOTE_NAMES.index(r["tonic"])
        scale = [(tonic + s) % 12 for s in (MAJOR if r["mode"] == "major" else MINOR)]
        in_scale = chroma[scale].sum() / chroma.sum()
        assert in_scale > 0.75, (r["key"], in_scale)  # 7 of 12 pitch classes hold most of the energy
        assert r["key"] == f"{r['tonic']} {r['mode']}"
        mir_eval.key.validate_key(r["key"])


def test_probe_cli_with_embeddings_and_baselines(tmp_path, monkeypatch, capsys):
    from musetok.cli import main
    from musetok.demo.corpus import DemoCorpusConfig, make_demo_corpus
    labels = make_demo_corpus(tmp_path / "c", DemoCorpusConfig(pieces=30, seconds=3.0))
    rows = list(csv.DictReader(open(labels)))
    x, _ = blobs(n=30, classes=3, d=8)
    np.save(tmp_path / "e.npy", x[:, None].astype(np.float32))
    (tmp_path / "e.csv").write_text("path,duration,frames,offset,length\n" +
                                    "".join(f"{r['path']},3,10,{i},1\n" for i, r in enumerate(rows)))
    out = tmp_path / "probe"
    assert main(["probe", "--labels", str(labels), "--column", "instrument", "--embeddings", f"toy={tmp_path}/e.npy",
                 "--baselines", "mfcc,chroma", "--probes", "linear", "--out", str(out)]) == 0
    res = list(csv.DictReader(open(out / "results.csv")))
    assert [r["features"] for r in res] == ["toy", "mfcc", "chroma"]
    assert (out / "probe_instrument.png").is_file() and (out / "results.json").is_file()
    assert main(["probe", "--labels", str(labels), "--column", "instrument", "--baselines", "nope",
                 "--out", str(out)]) == 2
    # --level-db: the baselines read each clip at that level (the number on a prior's card); auto needs a prior
    from musetok.evaluation import evaluate
    asked = []
    real = evaluate.handcrafted_features
    monkeypatch.setattr(evaluate, "handcrafted_features",
                        lambda *a, **kw: asked.append(kw.get("level_db")) or real(*a, **kw))
    for level, rc in (("-20", 0), ("none", 0), ("auto", 2)):
        assert main(["probe", "--labels", str(labels), "--column", "instrument", "--baselines", "mfcc", "--probes",
                     "linear", "--level-db", level, "--out", str(tmp_path / "lv")]) == rc
    assert asked == [-20.0, None]
    assert "--level-db: auto is the level of a prior's training audio" in capsys.readouterr().err



# -- choices on validation, splits, scaling ------------------------------------------------------------
def test_ties_go_to_the_lower_validation_log_loss():
    from musetok.evaluation.probe import best_index
    # equal accuracy: the continuous score decides, wherever the candidate stands in the order
    valid = [{"accuracy": 1.0, "log_loss": 0.40}, {"accuracy": 1.0, "log_loss": 0.05},
             {"accuracy": 0.9, "log_loss": 0.3}]
    assert best_index(valid, "classification") == 1
    assert best_index(valid[::-1], "key") == 1
    assert best_index([{"r2": 0.1}, {"r2": 0.7}], "regression") == 1


def test_layer_with_equal_accuracy_and_lower_log_loss_wins():
    """Two layers both separate the classes perfectly; the widely separated one is chosen although it comes
    second (ordering by accuracy alone picked the first)."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    sign = np.where(y == 1, 1.0, -1.0)[:, None]
    weak = sign * 1.0 + rng.standard_normal((120, 4)) * 0.25       # separable, small margin
    strong = sign * 1.0 + rng.standard_normal((120, 4)) * 0.02     # separable, large margin
    feats = np.stack([weak, strong], axis=1)  # (N, 2 layers, D)
    labels = Labels([str(i) for i in range(120)], [f"c{v}" for v in y], "classification")
    r = probe_layers(feats, ["input", "layer1"], labels, make_split(labels), "toy", "label", probes=("linear",))
    assert [p[1] for p in r.per_layer] == [1.0, 1.0]  # equal validation accuracy
    assert r.layer == "layer1"
    assert r.valid["log_loss"] < 0.2


def test_split_column_is_used_and_checked(tmp_path):
    p = tmp_path / "l.csv"
    rows = [(f"f{i}.wav", f"c{i % 2}", ("train", "valid", "test")[i % 3]) for i in range(12)]

    def write(bad_row: int = -1, value: str = ""):
        p.write_text("path,label,split\n" + "".join(f"{a},{b},{value if i == bad_row else c}\n"
                                                    for i, (a, b, c) in enumerate(rows)))
    write()
    assert list(read_labels(p).split) == [r[2] for r in rows]
    write(4, "")
    with pytest.raises(UserError, match=r"row 6: split is ''"):
        read_labels(p)
    write(7, "dev")
    with pytest.raises(UserError, match=r"row 9: split is 'dev'"):
        read_labels(p)


def test_given_split_decides_what_is_tested():
    """A probe on a given split tests exactly the rows marked test: label noise put only there shows up."""
    x, y = blobs(n=240, classes=4)
    split = np.array(["train"] * 160 + ["valid"] * 40 + ["test"] * 40)
    rng = np.random.default_rng(0)
    order = rng.permutation(240)
    x, y = x[order], [y[i] for i in order]
    noisy = list(y)
    for i in range(200, 240):
        noisy[i] = "c0"  # test labels all wrong except for one class in four
    labels = Labels([str(i) for i in range(240)], noisy, "classification", split=split)
    r = fit_probe(x, labels, split, probes=("linear",))
    assert r.valid["accuracy"] > 0.9 and r.test["accuracy"] < 0.5


def test_scaler_is_fitted_on_train_rows_only(monkeypatch):
    import musetok.evaluation.probe as probe_mod
    seen = []

    class Spy(probe_mod.StandardScaler):
        def fit(self, x, y=None, **kw):
            seen.append(len(x))
            return super().fit(x, y, **kw)
    monkeypatch.setattr(probe_mod, "StandardScaler", Spy)
    x, y = blobs(n=120, classes=3)
    labels = Labels([str(i) for i in range(len(y))], y, "classification")
    split = make_split(labels)
    fit_probe(x, labels, split, probes=("linear",))
    assert seen == [int((split == "train").sum())]


def test_key_task_through_the_probe(tmp_path):
    """`--task key`: keys are classes to the probe, scored with mir_eval's weighted score."""
    from musetok.cli import main
    keys = ["C major", "A minor", "G major", "E minor"]
    x, y = blobs(n=160, classes=4, d=8)
    rows = [(f"f{i}.wav", keys[int(v[1:])]) for i, v in enumerate(y)]
    (tmp_path / "labels.csv").write_text("path,tonality\n" + "".join(f"{a},{b}\n" for a, b in rows))
    np.save(tmp_path / "e.npy", x[:, None].astype(np.float32))
    (tmp_path / "e.csv").write_text("path,duration,frames,offset,length\n" +
                                    "".join(f"{a},3,10,{i},1\n" for i, (a, _) in enumerate(rows)))
    out = tmp_path / "probe"
    assert main(["probe", "--labels", str(tmp_path / "labels.csv"), "--column", "tonality", "--task", "key",
                 "--embeddings", f"toy={tmp_path}/e.npy", "--probes", "linear", "--out", str(out)]) == 0
    res = list(csv.DictReader(open(out / "results.csv")))
    assert res[0]["task"] == "key" and res[0]["metric"] == "weighted_score" and float(res[0]["test"]) > 0.9


def test_candidates_of_different_widths():
    """Layer combinations are candidates of their own width (a concatenation of layers is wider)."""
    x, y = blobs(n=200)
    noise = np.random.default_rng(2).standard_normal(x.shape)
    feats = [noise, np.concatenate([noise, x], axis=1), noise * 2]
    labels = Labels([str(i) for i in range(len(y))], y, "classification")
    r = probe_layers(feats, ["l0", "concat", "l2"], labels, make_split(labels), "toy", "label", probes=("linear",))
    assert r.layer == "concat"
    with pytest.raises(ValueError, match="3 feature sets but 2 names"):
        probe_layers(feats, ["l0", "l1"], labels, make_split(labels), "toy", "label", probes=("linear",))
