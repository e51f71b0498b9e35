"""Reading each clip at one level (`--level-db`): the embedder and the hand-crafted baselines bring a clip to an RMS
in dBFS before the front-end, so a note played softly and the same note played loudly read alike."""

import json
from dataclasses import replace

import numpy as np
import pytest

from musetok.embedding import Embedder
from musetok.evaluation.baselines import handcrafted_features
from musetok.prior.builder import load_prior
from musetok.shared.audio import SILENT_DBFS, audio_rms, corpus_level, level_gain
from musetok.shared.errors import UserError
from musetok.shared.token_store import TokenStore
from tests.conftest import SR, tone, write


def test_the_gain_brings_a_clip_to_the_level_asked_for(tmp_path):
    y = 0.5 * np.sin(2 * np.pi * 440 * np.arange(SR * 2) / SR).astype(np.float32)
    path = write(tmp_path / "a.wav", y, subtype="FLOAT")
    rms = audio_rms(path, SR, block_seconds=0.3)  # read in blocks: the same as over the whole file
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=1e-4)
    gain = level_gain(rms, -20.0)
    assert 20 * np.log10(rms * gain) == pytest.approx(-20.0)
    assert level_gain(rms, None) == 1.0
    assert level_gain(0.0, -20.0) == 1.0 and level_gain(1e-7, -20.0) == 1.0  # silence stays silence


def test_a_clip_reads_the_same_at_any_level_with_level_db(prior_dirs, trained_tokenizer, tmp_path):
    y = tone(2.0, 330.0, seed=3).astype(np.float32)
    loud, soft = write(tmp_path / "loud.wav", 0.5 * y, subtype="FLOAT"), write(tmp_path / "soft.wav", 0.01 * y,
                                                                                subtype="FLOAT")
    plain = Embedder.from_pretrained(trained_tokenizer, prior_dirs["frames_codes"], level_db=None)
    levelled = Embedder.from_pretrained(trained_tokenizer, prior_dirs["frames_codes"], level_db=-20.0)
    a, b = (levelled.inputs_from_file(p) for p in (loud, soft))
    np.testing.assert_allclose(a, b, atol=1e-3)  # the same frames: both read at -20 dBFS
    assert np.abs(plain.inputs_from_file(loud) - plain.inputs_from_file(soft)).max() > 1.0  # 34 dB apart as they are
    # a waveform reads as its file does
    np.testing.assert_allclose(levelled.inputs_from_waveform(0.01 * y, SR), a, atol=1e-3)
    ea, eb = (levelled.embed_inputs([x])[0].pooled() for x in (a, b))
    np.testing.assert_allclose(ea.numpy(), eb.numpy(), atol=1e-3)
    # the hand-crafted rows read the same level
    hand = handcrafted_features([loud, soft], SR, which=("mfcc", "logmel"), level_db=-20.0)
    for name in ("mfcc", "logmel"):
        np.testing.assert_allclose(hand[name][0], hand[name][1], rtol=1e-3, atol=1e-2)
    raw = handcrafted_features([loud, soft], SR, which=("logmel",))
    assert np.abs(raw["logmel"][0] - raw["logmel"][1]).max() > 1.0


def test_embed_reads_audio_at_one_level_and_refuses_a_store(prior_dirs, trained_tokenizer, store, tmp_path):
    from musetok.embedding import embed
    y = tone(1.5, 262.0, seed=5).astype(np.float32)
    audio = tmp_path / "audio"
    write(audio / "loud.wav", 0.5 * y, subtype="FLOAT")
    write(audio / "soft.wav", 0.02 * y, subtype="FLOAT")
    r = embed(trained_tokenizer, prior_dirs["frames_codes"], tmp_path / "e", audio=audio, level_db=-18.0,
              progress=False)
    x = np.load(r.array_path)
    np.testing.assert_allclose(x[0], x[1], atol=1e-3)
    with pytest.raises(UserError, match="--level-db: .*store.* give --audio"):
        embed(trained_tokenizer, prior_dirs["frames_codes"], tmp_path / "f", store=store, level_db=-18.0,
              progress=False)


def test_tokenize_records_each_files_level_and_the_store_the_median(trained_tokenizer, tmp_path, capsys):
    from musetok.tokenizer import load_tokenizer
    from musetok.tokenizer.encode_corpus import tokenize_corpus
    y = np.sin(2 * np.pi * 440 * np.arange(SR * 6) / SR).astype(np.float32)
    audio = tmp_path / "audio"
    # RMS of a sine: amplitude / sqrt(2); 6 s at -29 dBFS outweighs 2 s at -9 and 1 s at -23 (median by duration)
    for name, amp, seconds in (("a.wav", 0.05, 6), ("b.wav", 0.5, 2), ("c.wav", 0.1, 1), ("d.wav", 0.0, 3)):
        write(audio / name, amp * y[:SR * seconds], subtype="FLOAT")
    tokenize_corpus(load_tokenizer(trained_tokenizer), audio, tmp_path / "store", workers=0, progress=False)
    store = TokenStore(tmp_path / "store")
    levels = {e.path: e.level_db for e in store.items}
    for name, amp in (("a.wav", 0.05), ("b.wav", 0.5), ("c.wav", 0.1)):
        assert levels[name] == pytest.approx(20 * np.log10(amp / np.sqrt(2)), abs=0.05)
    assert levels["d.wav"] < SILENT_DBFS  # digital silence has a level, and does not count
    assert store.level_db == pytest.approx(levels["a.wav"], abs=0.01)
    assert "median level -29.0 dBFS" in store.summary()
    # the command says it; a store whose files have no level (written before levels were recorded) says that
    from musetok.cli import main
    assert main(["tokenize", "--tokenizer", str(trained_tokenizer), "--audio", str(audio), "--out",
                 str(tmp_path / "cli"), "--workers", "0", "--quiet"]) == 0
    assert "a median of -29.0 dBFS RMS" in capsys.readouterr().out
    index = tmp_path / "cli" / "index.jsonl"
    rows = [json.loads(line) for line in index.read_text().splitlines()]
    index.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "level_db"}) + "\n" for r in rows))
    assert main(["tokenize", "--tokenizer", str(trained_tokenizer), "--audio", str(audio), "--out",
                 str(tmp_path / "cli"), "--workers", "0", "--quiet"]) == 0
    assert "some files in the store have no level" in capsys.readouterr().out
    assert corpus_level([-20.0, -10.0, -30.0], [1.0, 1.0, 1.0]) == -20.0
    assert corpus_level([-20.0, -10.0], [1.0, 3.0]) == -10.0
    assert corpus_level([-200.0], [5.0]) is None and corpus_level([], []) is None


def test_a_prior_reads_clips_at_its_training_audios_level_by_default(prior_dirs, trained_tokenizer, store, tmp_path):
    from musetok.prior.builder import read_prior_config
    level = TokenStore(store).level_db
    assert level is not None and -40 < level < -10
    assert read_prior_config(prior_dirs["frames_codes"]).corpus_level_db == level  # recorded at pretraining
    assert f"{level:.1f} dBFS" in (prior_dirs["frames_codes"] / "README.md").read_text()  # and on its card
    y = tone(2.0, 330.0, seed=3).astype(np.float32)
    soft = write(tmp_path / "soft.wav", 0.01 * y, subtype="FLOAT")
    auto = Embedder.from_pretrained(trained_tokenizer, prior_dirs["frames_codes"])
    assert auto.level_db == level
    at_level = Embedder.from_pretrained(trained_tokenizer, prior_dirs["frames_codes"], level_db=level)
    plain = Embedder.from_pretrained(trained_tokenizer, prior_dirs["frames_codes"], level_db="none")
    np.testing.assert_array_equal(auto.inputs_from_file(soft), at_level.inputs_from_file(soft))
    assert np.abs(auto.inputs_from_file(soft) - plain.inputs_from_file(soft)).max() > 1.0
    # a prior that recorded no level (trained on a store from before levels were recorded) reads clips as they are
    old = Embedder(auto.tokenizer, load_prior(prior_dirs["frames_codes"]))
    old.prior.cfg = replace(old.prior.cfg, corpus_level_db=None)
    assert Embedder(old.tokenizer, old.prior).level_db is None
    with pytest.raises(UserError, match="level_db: expected a number of dBFS, 'auto' or 'none', got 'loud'"):
        Embedder(auto.tokenizer, auto.prior, level_db="loud")
    with pytest.raises(UserError, match=r"level_db: 6.0 dBFS is not a level"):
        Embedder(auto.tokenizer, auto.prior, level_db=6.0)


def test_a_long_file_is_measured_first_and_reads_the_same(prior_dirs, trained_tokenizer, tmp_path, monkeypatch):
    from musetok.embedding import embedder
    path = write(tmp_path / "a.wav", 0.03 * tone(3.0, 220.0, seed=2), subtype="FLOAT")
    emb = Embedder.from_pretrained(trained_tokenizer, prior_dirs["frames_codes"], level_db=-18.0)
    emb.fz.block_seconds = 0.5
    held = emb.inputs_from_file(path)  # decoded once, held
    monkeypatch.setattr(embedder, "LEVEL_HELD_SECONDS", 1.0)
    reads = []
    real = embedder.iter_audio
    monkeypatch.setattr(embedder, "iter_audio", lambda *a, **kw: reads.append(a[0]) or real(*a, **kw))
    np.testing.assert_array_equal(emb.inputs_from_file(path), held)  # measured, then read again: the same frames
    assert reads == [path]  # the held read stopped past 1 s; the measuring and the reading are their own


def test_embed_reads_audio_at_the_priors_level_and_a_store_as_tokenized(prior_dirs, trained_tokenizer, store, tmp_path,
                                                                         capsys):
    from musetok.cli import main
    from musetok.embedding import embed
    y = tone(1.5, 262.0, seed=5).astype(np.float32)
    audio = tmp_path / "audio"
    write(audio / "loud.wav", 0.5 * y, subtype="FLOAT")
    write(audio / "soft.wav", 0.02 * y, subtype="FLOAT")
    x = np.load(embed(trained_tokenizer, prior_dirs["frames_codes"], tmp_path / "e", audio=audio,
                      progress=False).array_path)
    np.testing.assert_allclose(x[0], x[1], atol=1e-3)  # "auto": both at the prior's level
    r = embed(trained_tokenizer, prior_dirs["frames_codes"], tmp_path / "s", store=store, progress=False)
    assert r.count == len(TokenStore(store))  # "auto" with a store: its frames as tokenized, nothing refused
    with pytest.raises(SystemExit):
        main(["embed", "--tokenizer", str(trained_tokenizer), "--prior", str(prior_dirs["frames_codes"]),
              "--audio", str(audio), "--out", str(tmp_path / "f"), "--level-db", "loud"])
    assert "--level-db: expected a number of dBFS, 'auto' or 'none', got 'loud'" in capsys.readouterr().err
    assert main(["embed", "--tokenizer", str(trained_tokenizer), "--prior", str(prior_dirs["frames_codes"]),
                 "--audio", str(audio), "--out", str(tmp_path / "g"), "--level-db", "none", "--quiet"]) == 0
    x = np.load(tmp_path / "g.npy")
    assert np.abs(x[0] - x[1]).max() > 0.1  # none: each file as it is, 28 dB apart


def test_the_benchmark_reads_every_row_at_the_pretraining_audios_level(store, tmp_path):
    from musetok.evaluation.bench_repr import suite_level
    s = TokenStore(store)
    assert suite_level("auto", s, [], SR) == s.level_db
    assert suite_level(-20, s, [], SR) == -20.0 and suite_level(None, s, [], SR) is None
    # a store tokenized before levels were recorded: the level is measured from the pretraining audio
    y = np.sin(2 * np.pi * 440 * np.arange(SR * 2) / SR).astype(np.float32)
    files = [write(tmp_path / name, amp * y[:n], subtype="FLOAT")
             for name, amp, n in (("a.wav", 0.1, 2 * SR), ("b.wav", 0.1, SR), ("c.wav", 0.4, SR // 2))]
    old = TokenStore(store)
    old.items = [replace(e, level_db=None) for e in old.items]
    assert old.level_db is None
    assert suite_level("auto", old, files, SR) == pytest.approx(20 * np.log10(0.1 / np.sqrt(2)), abs=0.05)
