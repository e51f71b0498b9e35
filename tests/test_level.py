"""Reading each clip at one level (`--level-db`): the embedder and the hand-crafted baselines bring a clip to an RMS
in dBFS before the front-end, so a note played softly and the same note played loudly read alike."""

import numpy as np
import pytest

from musetok.embedding import Embedder
from musetok.evaluation.baselines import handcrafted_features
from musetok.shared.audio import audio_rms, level_gain
from musetok.shared.errors import UserError
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
    plain = Embedder.from_pretrained(trained_tokenizer, prior_dirs["frames_codes"])
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
