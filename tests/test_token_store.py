import json
import os

import numpy as np
import pytest

from musetok.cli import main
from musetok.shared.io import CheckpointError
from musetok.shared.token_store import StoreMeta, TokenStore, TokenStoreWriter
from musetok.tokenizer import load_tokenizer
from musetok.tokenizer.encode_corpus import tokenize_corpus
from musetok.tokenizer.features import Featurizer
from tests.conftest import make_corpus, tone, write

META = StoreMeta("abc", 1024, 2, 43.07)


def test_round_trip_and_windows(tmp_path):
    w = TokenStoreWriter(tmp_path / "s", META, shard_frames=250)
    rng = np.random.default_rng(0)
    data = {f"f{i}.wav": rng.integers(0, 1024, size=(2, int(rng.integers(1, 200)))) for i in range(6)}
    for p, c in data.items():
        w.add(p, c, c.shape[1] / 43.07, 1, 1)
    w.fail("bad.wav", "cannot decode", 3, 4)
    s = TokenStore(tmp_path / "s")
    assert len(s) == 6 and [e.path for e in s.failed] == ["bad.wav"]
    assert len(list((tmp_path / "s" / "shards").iterdir())) > 1  # rolled over to new shards
    for i, e in enumerate(s.items):
        np.testing.assert_array_equal(s.codes(i), data[e.path])
        assert s.codes(i).dtype == np.uint16
    i = s.index_of("f3.wav")
    np.testing.assert_array_equal(s.window(i, 5, 10), data["f3.wav"][:, 5:15])


def test_store_refuses_other_tokenizer_and_unknown_version(tmp_path):
    TokenStoreWriter(tmp_path / "s", META)
    with pytest.raises(CheckpointError, match="tokenizer_id is 'abc' in the store but 'xyz'"):
        TokenStoreWriter(tmp_path / "s", StoreMeta("xyz", 1024, 2, 43.07))
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    meta["format_version"] = 7
    (tmp_path / "s" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="meta.json: unknown format version 7"):
        TokenStore(tmp_path / "s")


def test_tokenize_matches_whole_file_encoding(tmp_path, trained_tokenizer, corpus):
    model = load_tokenizer(trained_tokenizer)
    r = tokenize_corpus(model, corpus, tmp_path / "s", workers=0, chunk_codes=16, progress=False)
    assert r.encoded == 8 and not r.failed
    s = TokenStore(tmp_path / "s")
    assert s.meta.tokenizer_id == model.tokenizer_id and s.meta.frame_rate == model.frame_rate
    fz = Featurizer(model.cfg)
    for i, e in enumerate(s.items):
        import torch
        whole = model.encode(torch.from_numpy(fz.file(corpus / e.path))[None])[0].numpy()
        assert (s.codes(i) == whole).all()
        assert e.duration == pytest.approx(4.0, abs=0.02)


def test_interrupted_tokenize_resumes_to_identical_store(tmp_path, trained_tokenizer, corpus):
    model = load_tokenizer(trained_tokenizer)
    tokenize_corpus(model, corpus, tmp_path / "ref", workers=0, progress=False)
    # a first run that got through 3 files, then crashed mid-write: codes of a 4th file in the
    # shard but no index line, and half an index line
    files = sorted(os.listdir(corpus))
    tokenize_corpus(model, corpus, tmp_path / "s", workers=0, progress=False, files=files[:3])
    with open(tmp_path / "s" / "shards" / "main-00000.u16", "ab") as f:
        f.write(b"\x07\x00" * 101)
    with open(tmp_path / "s" / "index.jsonl", "a") as f:
        f.write('{"path": "tone03.wav", "stat')
    half = TokenStore(tmp_path / "s")  # an interrupted store opens and is consistent
    assert len(half) == 3
    r = tokenize_corpus(model, corpus, tmp_path / "s", workers=1, progress=False)
    assert (r.encoded, r.skipped) == (5, 3)
    a, b = TokenStore(tmp_path / "ref"), TokenStore(tmp_path / "s")
    assert [e.path for e in a.items] == [e.path for e in b.items]
    for i in range(len(a)):
        np.testing.assert_array_equal(a.codes(i), b.codes(i))
    assert b.total_frames == a.total_frames
    assert (tmp_path / "s" / "shards" / "main-00000.u16").stat().st_size == a.total_frames * 2  # no garbage kept
    r = tokenize_corpus(model, corpus, tmp_path / "s", workers=0, progress=False)
    assert (r.encoded, r.skipped) == (0, 8)  # nothing duplicated


def test_bad_files_are_listed_not_fatal(tmp_path, trained_tokenizer):
    audio = make_corpus(tmp_path / "a", n=3, seconds=2.0)
    (audio / "empty.wav").write_bytes(b"")
    (audio / "fake.wav").write_text("RIFF but not really")
    y = tone(1.0, 300.0)
    y[10] = np.inf
    write(audio / "inf.wav", y, subtype="FLOAT")
    write(audio / "stereo_44k.flac", np.stack([tone(1.5, 200.0, 44100)] * 2, 1), 44100, format="FLAC")
    rc = main(["tokenize", "--tokenizer", str(trained_tokenizer), "--audio", str(audio),
               "--out", str(tmp_path / "s"), "--workers", "1", "--quiet"])
    assert rc == 1  # some files failed
    s = TokenStore(tmp_path / "s")
    assert sorted(e.path for e in s.items) == ["stereo_44k.flac", "tone00.wav", "tone01.wav", "tone02.wav"]
    reasons = {e.path: e.reason for e in s.failed}
    assert set(reasons) == {"empty.wav", "fake.wav", "inf.wav"}
    assert "empty" in reasons["empty.wav"] and "NaN or infinite" in reasons["inf.wav"]


def test_cli_end_to_end(tmp_path, corpus, capsys):
    tok, store, wav = tmp_path / "tok", tmp_path / "store", tmp_path / "x.wav"
    from tests.conftest import TINY_TOKENIZER
    args = ["train-tokenizer", "--audio", str(corpus), "--out", str(tok), "--quiet"]
    for s in TINY_TOKENIZER + ["train.steps=30"]:
        args += ["--set", s]
    assert main(args) == 0
    assert main(["tokenize", "--tokenizer", str(tok), "--audio", str(corpus), "--out", str(store), "--quiet"]) == 0
    assert main(["info", str(store)]) == 0
    assert "8 files" in capsys.readouterr().out
    assert main(["decode", "--tokenizer", str(tok), "--store", str(store), "--item", "tone01.wav",
                 "--out", str(wav)]) == 0
    import soundfile as sf
    info = sf.info(str(wav))
    assert info.samplerate == 16000 and abs(info.duration - 4.0) < 0.1
    assert main(["decode", "--tokenizer", str(tok), "--store", str(store), "--item", "99", "--out", str(wav)]) == 2
    assert main(["train-tokenizer", "--audio", str(corpus), "--out", str(tok)]) == 2  # would overwrite a run


def test_sharded_tokenize_and_merge_equal_single_process(tmp_path, trained_tokenizer, corpus):
    from tests.test_distributed import torchrun
    single, sharded, ranks = tmp_path / "single", tmp_path / "sharded", tmp_path / "torchrun"
    assert main(["tokenize", "--tokenizer", str(trained_tokenizer), "--audio", str(corpus), "--out", str(single),
                 "--quiet"]) == 0
    for i in range(3):
        assert main(["tokenize", "--tokenizer", str(trained_tokenizer), "--audio", str(corpus), "--out",
                     str(sharded), "--shard", f"{i}/3", "--workers", "0", "--quiet"]) == 0
    assert sorted(p.name for p in sharded.glob("index*.jsonl")) == [f"index.shard{i}-of-3.jsonl" for i in range(3)]
    assert main(["merge-store", str(sharded)]) == 0
    assert [p.name for p in sharded.glob("index*.jsonl")] == ["index.jsonl"]
    torchrun(["tokenize", "--tokenizer", str(trained_tokenizer), "--audio", str(corpus), "--out", str(ranks),
              "--workers", "0", "--quiet"])
    a = TokenStore(single)
    for other in (TokenStore(sharded), TokenStore(ranks)):
        assert [e.path for e in other.items] == [e.path for e in a.items]
        for i in range(len(a)):
            np.testing.assert_array_equal(other.codes(i), a.codes(i))
    assert main(["tokenize", "--tokenizer", str(trained_tokenizer), "--audio", str(corpus), "--out", str(sharded),
                 "--shard", "3/3"]) == 2


def test_stored_frames_equal_frames_recomputed_from_audio(trained_tokenizer, store):
    from musetok.tokenizer.features import frame_stacker
    model = load_tokenizer(trained_tokenizer)
    stack, fz = frame_stacker(model), Featurizer(model.cfg)
    s = TokenStore(store)
    assert s.meta.frames_dim == stack.dim == 40 * 2
    for i, e in enumerate(s.items):
        want = stack(fz.file(store.parent / "audio" / e.path))
        got = np.asarray(s.frames_window(i, 0, e.length), dtype=np.float32)
        assert got.shape == want.shape == (e.length, 80)
        np.testing.assert_allclose(got, want, atol=2e-3 * np.abs(want).max(), rtol=1e-3)
