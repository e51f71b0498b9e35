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


def test_probe_cli_with_embeddings_and_baselines(tmp_path):
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


def test_demo_quick_end_to_end(tmp_path, capsys):
    from musetok.cli import main
    assert main(["demo", "--quick", "--out", str(tmp_path / "d"), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "musetok (mlm prior)" in text and "mfcc mean/std" in text and "random-weights prior" in text
    report = (tmp_path / "d" / "report.md").read_text()
    for png in ("probe/probe_instrument.png", "tokenizer/reconstruction.png", "prior_mlm/training_curve.png",
                "probe/layers_musetok_mlm_prior_instrument.png"):
        assert png in report and (tmp_path / "d" / png).is_file()
    res = list(csv.DictReader(open(tmp_path / "d" / "probe" / "results.csv")))
    assert len(res) == 3 * 7  # 3 targets x 7 feature sets
