import numpy as np
import pytest
import soundfile as sf
import soxr

from musetok.shared.audio import AudioError, iter_audio, list_audio, load_audio, to_mono_resampled
from tests.conftest import tone, write


@pytest.mark.parametrize("fmt, ext", [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg")])
def test_decode_formats_downmix_resample(tmp_path, fmt, ext):
    y = tone(3.0, 220.0, sr=44100)
    stereo = np.stack([y, 0.5 * y], axis=1)
    p = write(tmp_path / f"x.{ext}", stereo, 44100, format=fmt)
    out = load_audio(p, 22050)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - 3 * 22050) <= 2
    ref = soxr.resample(0.75 * y, 44100, 22050, quality="HQ")
    if fmt != "OGG":  # lossless: the downmix and resampling are exact up to PCM_16 quantisation
        np.testing.assert_allclose(out[:len(ref)], ref[:len(out)], atol=2e-3)
    else:
        assert np.corrcoef(out[1000:60000], ref[1000:60000])[0, 1] > 0.99


def test_blocks_equal_whole(tmp_path):
    p = write(tmp_path / "x.flac", tone(5.0, 330.0, sr=44100), 44100, format="FLAC")
    whole = load_audio(p, 16000)
    blocks = list(iter_audio(p, 16000, block_seconds=0.7))
    assert len(blocks) > 5
    np.testing.assert_allclose(np.concatenate(blocks), whole, atol=1e-6)


def test_segment_read(tmp_path):
    y = tone(4.0, 220.0)
    p = write(tmp_path / "x.wav", y, subtype="FLOAT")
    seg = load_audio(p, 16000, start=1.0, duration=0.5)
    np.testing.assert_allclose(seg, y[16000:24000], atol=1e-6)


def test_bad_files_raise_audio_error_naming_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("not audio at all")
    bad = tone(1.0, 200.0)
    bad[100] = np.nan
    sf.write(str(tmp_path / "nan.wav"), bad, 16000, subtype="FLOAT")
    for name, reason in [("empty.wav", "empty file"), ("text.wav", "cannot decode"), ("nan.wav", "NaN"),
                         ("missing.wav", "file not found")]:
        with pytest.raises(AudioError) as e:
            load_audio(tmp_path / name, 16000)
        assert name in str(e.value) and reason in e.value.reason


def test_list_audio_folder_and_manifest(tmp_path):
    write(tmp_path / "a" / "x.wav", tone(0.5, 200.0))
    write(tmp_path / "b.flac", tone(0.5, 200.0), format="FLAC")
    (tmp_path / "notes.txt").write_text("ignored")
    c = list_audio(tmp_path)
    assert c.files == ["a/x.wav", "b.flac"]
    (tmp_path / "m.csv").write_text("path,label\nb.flac,1\n")
    assert list_audio(tmp_path / "m.csv").files == ["b.flac"]
    with pytest.raises(AudioError):
        list_audio(tmp_path / "nope")


def test_in_memory_downmix_any_layout():
    y = tone(1.0, 200.0, sr=48000)
    a = to_mono_resampled(np.stack([y, y]), 48000, 16000)      # (C, N)
    b = to_mono_resampled(np.stack([y, y], 1), 48000, 16000)   # (N, C)
    np.testing.assert_allclose(a, b)
    assert abs(len(a) - 16000) <= 1


@pytest.mark.parametrize("fmt, subtype, ext, sr", [("MP3", "MPEG_LAYER_III", "mp3", 44100),
                                                   ("OGG", "OPUS", "opus", 48000)])
def test_lossy_mp3_and_opus_input(tmp_path, fmt, subtype, ext, sr):
    """MP3 and Opus decode through libsndfile like the rest: found by extension, downmixed, resampled. Lossy
    codecs shift and smear the signal a little, so the check is length and correlation, not samples."""
    y = tone(3.0, 220.0, sr=sr)
    p = write(tmp_path / "music" / f"x.{ext}", np.stack([y, y], axis=1), sr, format=fmt, subtype=subtype)
    assert list_audio(tmp_path / "music").files == [f"x.{ext}"]
    out = load_audio(p, 22050)
    assert abs(len(out) - 3 * 22050) < 0.05 * 22050
    ref = soxr.resample(y, sr, 22050, quality="HQ")
    n = min(len(out), len(ref))
    lag = int(np.argmax(np.correlate(out[4000:8000], ref[3000:9000], "valid"))) - 1000
    a, b = (out[4000:n - 4000], ref[4000 - lag:n - 4000 - lag])
    assert np.corrcoef(a, b)[0, 1] > 0.8  # (a tone a semitone away correlates near 0)
