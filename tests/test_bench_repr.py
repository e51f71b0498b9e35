"""`musetok bench-repr`: inductive (refuses probe clips seen in pretraining), several splits, one table."""

import csv
import json
import re
import shutil

import numpy as np
import pytest
import torch

from musetok.cli import main
from musetok.evaluation.bench_repr import (
    FRONTEND,
    PRIORS,
    RANDOM,
    RECOMMENDED,
    RUN_RECORD,
    Cell,
    cells_from_record,
    check_disjoint,
    format_target,
    frontend_stats,
    handcrafted_rows,
    headroom,
    is_handcrafted,
    reuse,
    target_rows,
    train_recorded,
)
from musetok.prior.builder import load_prior
from musetok.shared.errors import UserError
from musetok.shared.normalize import MelStats
from musetok.shared.token_store import TokenStore
from musetok.tokenizer.features import FrameStacker
from tests.conftest import TINY_PRIOR, tone, write

QUICK_PRIORS = ["--set", "model.mask_span=3", "--priors", "codes,frames_random,frames_kmeans,frames_codes_chroma",
                "--tokenizer-set", "model.codebook_size=64"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "repr"
    assert main(["bench-repr", "--quick", "--out", str(out), "--quiet", *QUICK_PRIORS]) == 0
    return out


def test_quick_bench_writes_the_table_with_mean_and_std(bench):
    md = (bench / "bench.md").read_text()
    rows = list(csv.DictReader(open(bench / "bench.csv")))
    cells = {(c["task"], c["features"]): c for c in json.loads((bench / "bench.json").read_text())["cells"]}
    tasks = ["instrument", "pitch", "instrument (unseen program)", "key", "tempo", "melody instrument"]
    features = ["prior: codes -> codes (mlm)", "prior: frames -> random-projection codes (BEST-RQ)",
                PRIORS[RECOMMENDED][1], "prior: frames -> second-round codes + frames (HuBERT)",
                "prior: frames -> codes + frames + chroma (mlm, MERT-style)",
                "prior: frames -> frames (masked_frames)", *RANDOM.values(), "bag of codes",
                "mfcc+delta mean/std/max", "log-mel mean/std/max", "chroma (CQT) mean/std/max",
                "log-semitone spectrogram (the priors' input) mean/std/max"]
    assert {r["task"] for r in rows} == set(tasks) and {r["features"] for r in rows} == set(features)
    for t in tasks:
        for f in features:
            cell = [r for r in rows if r["task"] == t and r["features"] == f]
            assert [r["split"] for r in cell] == ["0", "1", "2"]  # three splits per cell
            test = np.array([float(r["test"]) for r in cell])
            assert float(cell[0]["mean"]) == pytest.approx(test.mean(), abs=1e-4)
            assert float(cell[0]["std"]) == pytest.approx(test.std(), abs=1e-4)
            c = cells[(t, f)]
            assert c["mean"] == pytest.approx(np.mean(c["test"])) and c["std"] == pytest.approx(np.std(c["test"]))
            line = next(ln for ln in md.splitlines() if ln.startswith(f"| {f} |"))
            assert f"{c['mean']:.3f} ± {c['std']:.3f}" in line
    # multi-layer rows report the layer chosen on validation; the per-layer plots exist
    prior_line = next(ln for ln in md.splitlines() if ln.startswith("| prior: frames -> random"))
    assert len(re.findall(r"\[(input|layer\d|mean of layers|concat of layers)\]", prior_line)) == len(tasks)
    assert "(mean/std/max, `--pool meanstdmax`" in md and "Equal compute for every prior" in md and "steps 20" in md
    assert (bench / "layers_synthetic_pitch.png").is_file()


def test_prior_settings_apply_to_every_prior_alike(bench):
    record = json.loads((bench / "bench.json").read_text())
    assert record["prior_overrides"] == ["model.mask_span=3"]
    priors = record["suites"]["synthetic"]["configs"]["priors"]
    # frames is always trained; the second round's first round (the recommended prior) before it
    assert list(priors) == ["codes", "frames_random", "frames_codes_chroma", "frames", RECOMMENDED, "frames_kmeans"]
    assert {p["model"]["mask_span"] for p in priors.values()} == {3}
    assert {(p["model"]["objective"], p["model"]["inputs"], p["model"]["targets"]) for p in priors.values()} == {
        ("mlm", "codes", "codes"), ("mlm", "frames", "random"), ("masked_frames", "frames", "frames"),
        ("mlm", "frames", "codes")}
    # the second round predicts k-means codes of the first round's middle layer, as many as the tokenizer's
    second = TokenStore(bench / "synthetic" / "store_kmeans").meta
    assert second.codebook_size == 64 and second.codes_source.endswith(":layer2")
    assert load_prior(bench / "synthetic" / "prior_frames_kmeans").cfg.codes_source == second.codes_source
    assert record["suites"]["synthetic"]["configs"]["tokenizer"]["model"]["codebook_size"] == 64
    # the chroma prior: the recommended recipe plus a chroma head, 12 pitch classes x 2 stacked semitone frames
    chroma = load_prior(bench / "synthetic" / "prior_frames_codes_chroma").cfg
    assert (chroma.aux_chroma, chroma.chroma_dim, chroma.aux_frames) == (1.0, 24, 1.0)
    assert [p["model"]["aux_chroma"] for p in priors.values()] == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    # each preset names its front-end: the band convolution on the recommended prior and its second round only
    assert [p["model"]["frame_conv"] for p in priors.values()] == [False, False, False, False, True, True]
    assert [p["model"]["conv_channels"] for p in priors.values()] == [32, 32, 32, 32, 16, 16]
    # the records say which precision `dtype: auto` meant on this machine, and every prior got the same
    from musetok.shared.training import autocast_dtype
    want = "float32" if autocast_dtype("auto", torch.device("cpu")) is None else "bfloat16"
    assert {p["train"]["dtype"] for p in priors.values()} == {want}
    assert record["suites"]["synthetic"]["equal_compute"]["dtype"] == want
    assert main(["bench-repr", "--quick", "--out", str(bench), "--priors", "nope"]) == 2


def test_layers_are_chosen_on_validation_log_loss_not_order(bench):
    """In every split, the chosen layer is the one with the lowest validation log-loss; where layers tie on
    validation accuracy, that is what decides (not which layer comes first)."""
    cells = json.loads((bench / "bench.json").read_text())["cells"]
    ties = 0
    for c in cells:
        if len(c["layer_names"]) < 2:
            continue
        for layer, acc, loss in zip(c["layers"], c["per_layer_valid"], c["per_layer_select"]):
            chosen = c["layer_names"].index(layer)
            assert chosen == int(np.argmin(loss)), (c["task"], c["features"], loss)
            best_acc = [i for i, a in enumerate(acc) if a == max(acc)]
            if len(best_acc) > 1:
                ties += 1
                assert loss[chosen] <= min(loss[i] for i in best_acc)  # not simply the first of the tied
    assert ties > 0  # the quick run's small validation sets do tie on accuracy


def test_the_probed_clips_were_never_pretrained_on(bench):
    pre = sorted((bench / "synthetic" / "data" / "pretrain" / "audio").rglob("*.wav"))
    probed = sorted((bench / "synthetic" / "data" / "probe_notes" / "audio").rglob("*.wav")) + \
        sorted((bench / "synthetic" / "data" / "probe_pieces" / "audio").rglob("*.wav"))
    assert pre and probed
    check_disjoint(pre, probed)  # no error: disjoint by path and content


def test_refuses_a_probe_clip_that_was_pretrained_on(tmp_path):
    """A dev kit whose notes include a copy of a pretraining file: refused before anything is trained."""
    data = tmp_path / "kit"
    for i in range(2):
        write(data / "music" / "audio" / f"m{i}.wav", tone(2.0, 200.0 + 50 * i, sr=22050), 22050)
    (data / "music" / "manifest.csv").write_text("path\naudio/m0.wav\naudio/m1.wav\n")
    (data / "notes" / "audio").mkdir(parents=True)
    write(data / "notes" / "audio" / "n0.wav", tone(1.0, 300.0, sr=22050), 22050)
    shutil.copy(data / "music" / "audio" / "m1.wav", data / "notes" / "audio" / "n1.wav")
    (data / "notes" / "labels.csv").write_text(
        "path,instrument_family_name,pitch,note_id,program\n"
        "audio/n0.wav,organ,60,n0,p0\naudio/n1.wav,organ,62,n1,p1\n")
    with pytest.raises(UserError, match="n1.wav: this probe clip is also in the pretraining audio"):
        check_disjoint([data / "music" / "audio" / "m1.wav"], [data / "notes" / "audio" / "n1.wav"])
    assert main(["bench-repr", "--quick", "--data", str(data), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert not (tmp_path / "out" / "synthetic" / "tokenizer").exists()  # nothing was trained


def test_demo_is_the_benchmark_at_demo_size(tmp_path, monkeypatch, capsys):
    import musetok.demo.run as demo
    from musetok.evaluation.bench_repr import DEMO, QUICK
    calls = []

    def fake(out, **kw):
        calls.append(kw)
        (tmp_path / "bench.md").write_text("table")
        return tmp_path / "bench.md", []
    monkeypatch.setattr(demo, "bench_repr", fake)
    assert main(["demo", "--out", str(tmp_path / "d"), "--quiet"]) == 0
    assert main(["demo", "--quick", "--out", str(tmp_path / "d"), "--quiet"]) == 0
    assert [c["sizes"] for c in calls] == [DEMO, QUICK] and all("data" not in c for c in calls)
    assert "table" in capsys.readouterr().out


def test_the_recommended_prior_is_what_the_small_config_ships():
    """The benchmark's recommended row is the `small` prior as shipped: its settings are small.yaml's."""
    from musetok.evaluation.bench_repr import PRIORS, RECOMMENDED
    from musetok.prior.train import PriorRunConfig
    from musetok.shared.config import load_config
    shipped = load_config(PriorRunConfig, "small", kind="prior").model
    assert RECOMMENDED in RANDOM
    settings = dict(s.removeprefix("model.").split("=") for s in PRIORS[RECOMMENDED][0])  # the last one wins
    for key, value in settings.items():
        assert str(getattr(shipped, key)).lower() == value.lower(), key


def test_the_command_trains_the_benchmarks_default_priors():
    """`musetok bench-repr` without --priors trains DEFAULT_PRIORS (the recommended prior among them)."""
    from musetok.cli.app import build_parser
    from musetok.evaluation.bench_repr import DEFAULT_PRIORS, RECOMMENDED
    a = build_parser().parse_args(["bench-repr", "--out", "x"])
    assert tuple(a.priors.split(",")) == DEFAULT_PRIORS and RECOMMENDED in DEFAULT_PRIORS


def test_every_prior_preset_is_a_valid_small_run_with_a_row_of_its_own():
    """Each `--priors` name loads as a run config (a preset with settings the config refuses, e.g. heads that do not
    divide the width, would only fail once its training starts), and no two presets share a table row."""
    from musetok.evaluation.bench_repr import PRIORS
    from musetok.prior.train import PriorRunConfig
    from musetok.shared.config import load_config
    for name, (settings, _) in PRIORS.items():
        run = load_config(PriorRunConfig, "small", settings, kind="prior")
        assert run.model.dim % run.model.heads == 0, name
    rows = [row for _, row in PRIORS.values()]
    assert len(set(rows)) == len(rows)


def test_a_model_trained_with_other_settings_is_refused_not_reused(bench, tmp_path, capsys):
    """Rerunning into the same folder reuses models trained with the same settings; one trained with other
    settings (an older demo, another --set) stops the run with a one-line error instead of being reused."""
    out = tmp_path / "again"
    shutil.copytree(bench, out)
    args = ["bench-repr", "--quick", "--out", str(out), "--quiet", *QUICK_PRIORS]
    assert main(args + ["--set", "model.mask_rate=0.5"]) == 2
    assert "prior_codes: holds a model trained with other settings" in capsys.readouterr().err


def test_a_setting_added_since_counts_at_its_default_when_reusing(tmp_path):
    """A model's run record from before a setting existed (the key absent) matches a run with that setting at its
    default, and only then; a record with a key no config has any more is refused."""
    from musetok.prior.train import PriorRunConfig
    from musetok.shared.config import load_config, to_dict
    folder = tmp_path / "prior"
    folder.mkdir()
    assert not reuse(folder, load_config(PriorRunConfig, "small", kind="prior"))  # nothing trained there yet
    (folder / "model.safetensors").write_bytes(b"")
    old = to_dict(load_config(PriorRunConfig, "small", kind="prior"))
    del old["model"]["conv_stride"]  # as written before the setting existed
    (folder / RUN_RECORD).write_text(json.dumps(old))
    assert reuse(folder, load_config(PriorRunConfig, "small", kind="prior"))
    with pytest.raises(UserError, match="prior: holds a model trained with other settings"):
        reuse(folder, load_config(PriorRunConfig, "small", ["model.conv_stride=4"], kind="prior"))
    old["model"]["retired_setting"] = 1
    (folder / RUN_RECORD).write_text(json.dumps(old))
    with pytest.raises(UserError, match="other settings"):
        reuse(folder, load_config(PriorRunConfig, "small", kind="prior"))


@pytest.mark.parametrize("amx", [True, False])
def test_dtype_auto_is_recorded_as_the_precision_it_meant(monkeypatch, amx):
    """A model trained in fp32 under `auto` is not reused by a run whose `auto` means bf16 (another CPU)."""
    from musetok.evaluation.bench_repr import concrete_dtype
    from musetok.prior.train import PriorRunConfig
    from musetok.shared.config import load_config
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert concrete_dtype(load_config(PriorRunConfig, "small", kind="prior")).train.dtype == \
        ("bfloat16" if amx else "float32")
    for fixed in ("float32", "bfloat16"):  # what was asked for stays
        run = load_config(PriorRunConfig, "small", [f"train.dtype={fixed}"], kind="prior")
        assert concrete_dtype(run).train.dtype == fixed


def test_a_training_killed_midway_resumes_and_one_with_other_settings_is_refused(tmp_path, store):
    """A prior whose training was killed after a checkpoint is neither refused nor started again when the benchmark
    runs again with the same settings: it resumes from the checkpoint and ends with the steps of the whole run."""
    from musetok.prior.train import PriorRunConfig, train_prior
    from musetok.shared.config import load_config
    folder = tmp_path / "prior"
    run = load_config(PriorRunConfig, None, TINY_PRIOR + ["train.steps=8", "train.checkpoint_every=4"])
    resumed = []

    def killed(resume):
        resumed.append(resume)
        train_prior(run, store, folder, resume, progress=False, stop_at=4)  # a checkpoint at step 4, then the kill
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_recorded(folder, run, killed)
    assert (folder / "model.safetensors").exists() and not (folder / RUN_RECORD).exists()
    assert not reuse(folder, run)  # not done, and not refused
    with pytest.raises(UserError, match="stopped training with other settings"):
        reuse(folder, load_config(PriorRunConfig, None, TINY_PRIOR + ["train.steps=9"]))
    train_recorded(folder, run, lambda resume: resumed.append(resume) or train_prior(run, store, folder, resume,
                                                                                     progress=False))
    assert resumed == [False, True] and reuse(folder, run)
    steps = [json.loads(ln)["step"] for ln in (folder / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 8


def test_the_front_end_row_is_each_band_s_statistics_over_every_mel_frame():
    """The priors' own input, pooled, is a row of its own: the unstacked normalised spectrogram's mean, std and
    max per band (as every row is pooled). A stacked frame holds `downsample` mel frames, each of which counts
    once."""
    rng = np.random.default_rng(0)
    logmel = rng.standard_normal((6, 10)).astype(np.float32) * 3 + np.arange(6)[:, None]  # (bands, T)
    stats = MelStats(mean=np.full(6, 1.0, np.float32), std=np.full(6, 2.0, np.float32), frames=1)
    frames = FrameStacker(stats, downsample=2)(logmel)  # (5, 12)
    want = (logmel - 1.0) / 2.0
    got = frontend_stats(frames, bands=6)
    np.testing.assert_allclose(got, np.concatenate([want.mean(1), want.std(1), want.max(1)]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(frontend_stats(frames, bands=6, pool="meanstd"), got[:12])


def test_hand_crafted_rows_are_known_by_name_whatever_their_pooling():
    """The target's bar (the best hand-crafted row) finds MFCC, log-mel, chroma and the priors' input in runs
    pooled either way, and nothing else."""
    for pool in ("meanstdmax", "meanstd"):
        for name in handcrafted_rows(pool):
            assert is_handcrafted(name)
    assert handcrafted_rows()[0] == "mfcc+delta mean/std/max"
    assert is_handcrafted("log-mel spectrogram (the priors' input) mean/std")
    for name in ("bag of codes", PRIORS[RECOMMENDED][1], "mfcc+delta", "mfcc+delta mean/std/min"):
        assert not is_handcrafted(name)


def _compare_runs():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).parents[1] / "benchmarks" / "compare_runs.py"
    spec = importlib.util.spec_from_file_location("compare_runs", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compare_runs_pairs_two_rows_split_by_split(bench, capsys):
    """`compare_runs.py --pair`: the per-split difference of two rows, across runs too, and a one-line refusal
    of a row name that is ambiguous or absent."""
    cr = _compare_runs()
    record = json.loads((bench / "bench.json").read_text())
    lever, base = "prior: frames -> frames (masked_frames)", "mfcc+delta mean/std/max"
    cells = {(c["features"], c["suite"], c["task"]): np.asarray(c["test"]) for c in record["cells"]}
    want = {k[1:]: cells[k] - cells[(base, *k[1:])] for k in cells if k[0] == lever}
    p = cr.paired([record, record], "masked_frames", "1:mfcc")
    assert p["rows"] == (f"0: {lever}", f"1: {base}")
    got = {(s, t): a - b for s, tasks in p["suites"].items() for t, (a, b) in tasks.items()}
    assert got.keys() == want.keys() and len(got) >= 3
    for k in want:
        np.testing.assert_allclose(got[k], want[k])
    cr.print_paired(p)
    out = capsys.readouterr().out
    overall = np.stack(list(want.values())).mean(0)
    assert f"mean difference over {len(want)} tasks: {overall.mean():+.4f} ± {overall.std():.4f}" in out
    d = next(iter(want.values()))
    assert f"| {d.mean():+.3f} ± {d.std():.3f} | {int((d > 0).sum())} of {len(d)}" in out
    for spec, msg in (("prior:", "rows containing 'prior:'"), ("nothing like it", "0 rows"), ("5:mfcc", "no run 5")):
        with pytest.raises(SystemExit, match=msg):
            cr.paired([record], spec, "mfcc")


def _cell(task, features, test, curve=None, suite="synthetic"):
    """A cell with per-split `test` values; `curve`: the validation metric of input, layer1, layer2, mean."""
    names = ["input", "layer1", "layer2", "mean of layers"] if curve else [features]
    valid = [list(curve)] * len(test) if curve else [[0.0]] * len(test)
    return Cell(suite, task, features, "accuracy", list(test), [names[0]] * len(test), valid, valid, names)


def test_the_target_report_measures_each_prior_against_the_best_hand_crafted_row_and_the_control():
    """Relative gain over the best hand-crafted row per task (the priors' input counts), a tie is not a win,
    the control's gain, and the layer curve on key and pitch (combinations are not layers)."""
    rec, ctl, front = PRIORS[RECOMMENDED][1], PRIORS["frames"][1], "log-semitone spectrogram" + FRONTEND + " mean/std"
    mfcc, logmel = handcrafted_rows("meanstd")[:2]  # runs before 2026-12-07 were pooled so
    cells = [_cell("key", rec, [0.9, 0.7], curve=[0.5, 0.6, 0.7, 0.9]), _cell("key", ctl, [0.5, 0.5], [0.5] * 4),
             _cell("key", mfcc, [0.2, 0.2]), _cell("key", front, [0.6, 0.4]),
             _cell("instrument", rec, [1.0, 1.0]), _cell("instrument", ctl, [0.8, 0.8]),
             _cell("instrument", mfcc, [1.0, 1.0]), _cell("instrument", logmel, [0.5, 0.5]),
             _cell("instrument", front, [0.4, 0.4]),
             _cell("pitch", rec, [0.6, 0.6], curve=[0.8, 0.7, 0.7, 0.9], suite="real"),
             _cell("pitch", mfcc, [0.3, 0.3], suite="real"), _cell("pitch", ctl, [0.3, 0.3], suite="real")]
    rows = {r.features: r for r in target_rows(cells)}
    assert set(rows) == {rec, ctl}
    r = rows[rec]
    assert r.gains == pytest.approx({("synthetic", "key"): 0.8 / 0.5 - 1, ("synthetic", "instrument"): 0.0,
                                     ("real", "pitch"): 1.0})
    assert r.gains_audio[("synthetic", "key")] == pytest.approx(0.8 / 0.2 - 1)
    assert r.gains_control == pytest.approx({("synthetic", "key"): 0.6, ("synthetic", "instrument"): 0.25,
                                             ("real", "pitch"): 1.0})
    assert r.not_won == [("synthetic", "instrument")]  # level with MFCC is not a win
    assert r.curves == {("synthetic", "key"): (0.5, 0.7), ("real", "pitch"): (0.8, 0.7)}
    assert not r.met
    assert rows[ctl].gains_control == pytest.approx({k: 0.0 for k in r.gains_control})
    won = [c for c in cells if not (c.task == "instrument" and c.features == mfcc)]
    won = [_cell("pitch", rec, [0.6, 0.6], curve=[0.6, 0.7, 0.7, 0.9], suite="real") if c.features == rec
           and c.task == "pitch" else c for c in won]
    assert {r.features: r for r in target_rows(won)}[rec].met
    md = format_target(target_rows(cells))
    assert f"| {rec} | {100 * np.mean(list(r.gains.values())):+.1f}% | 1 of 3; level: synthetic instrument |" in md
    assert f"| {ctl} | -6.7% | 3 of 3; below: synthetic instrument; level: synthetic key, real pitch |" in md
    assert "real pitch no (0.800 -> 0.700)" in md
    room = headroom(cells)  # best hand-crafted: key 0.5 (the input row), instrument 1.0 (MFCC), real pitch 0.3
    assert room.best == pytest.approx({("synthetic", "key"): 0.5, ("synthetic", "instrument"): 1.0,
                                       ("real", "pitch"): 0.3})
    assert room.ceiling == [("synthetic", "instrument")]
    assert room.max_mean_gain == pytest.approx((1 / 0.5 - 1 + 0 + 1 / 0.3 - 1) / 3)
    md = format_target(target_rows(cells), room)
    assert "At the ceiling (a hand-crafted row scores 1.000, so no row can win): synthetic instrument;" in md
    assert f"mean gain of {100 * room.max_mean_gain:+.1f}%" in md
    assert "No task is at the ceiling." in format_target(target_rows(won), headroom(won))


def test_bench_md_and_json_report_the_target_and_compare_runs_recomputes_it(bench, capsys):
    record = json.loads((bench / "bench.json").read_text())
    rows = target_rows(cells_from_record(record))
    assert [t["features"] for t in record["target"]] == [r.features for r in rows]
    assert [t["mean_gain"] for t in record["target"]] == pytest.approx([r.mean_gain for r in rows])
    md = (bench / "bench.md").read_text()
    room = headroom(cells_from_record(record))
    assert record["headroom"]["max_mean_gain"] == pytest.approx(room.max_mean_gain)
    assert "## Against the target" in md and format_target(rows, room) in md
    _compare_runs().main([str(bench / "bench.json"), "--target"])
    assert format_target(rows, room) in capsys.readouterr().out
