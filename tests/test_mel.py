from dataclasses import replace

import librosa
import numpy as np
import pytest
import torch

from musetok.shared.mel import MelConfig, MelFrontend, StreamingMel, semitone_resolutions
from tests.conftest import tone


@pytest.mark.parametrize("cfg", [MelConfig(), MelConfig(sample_rate=16000, n_fft=512, hop_length=160, n_mels=64,
                                                        f_min=30.0, f_max=7600.0)])
def test_parity_with_librosa(cfg):
    y = tone(2.0, 261.6, sr=cfg.sample_rate) + np.random.default_rng(1).standard_normal(2 * cfg.sample_rate) * 0.01
    y = y.astype(np.float32)
    ref = librosa.feature.melspectrogram(y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                         n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max, power=2.0,
                                         center=True, pad_mode="constant")
    ref = np.log(ref + cfg.log_eps)
    out = MelFrontend(cfg)(torch.from_numpy(y)).numpy()
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)


def test_batched_and_streaming_match():
    cfg = MelConfig(sample_rate=16000, n_mels=40)
    fe = MelFrontend(cfg)
    y = tone(3.0, 440.0)
    whole = fe(torch.from_numpy(y)).numpy()
    batch = fe(torch.from_numpy(np.stack([y, y]))).numpy()
    np.testing.assert_allclose(batch[1], whole, atol=1e-5)
    s = StreamingMel(fe)
    parts = [s.push(y[i:i + 3001]) for i in range(0, len(y), 3001)] + [s.flush()]
    streamed = np.concatenate(parts, axis=1)
    assert streamed.shape == whole.shape == (40, 1 + len(y) // cfg.hop_length)
    np.testing.assert_allclose(streamed, whole, atol=1e-4)


@pytest.mark.parametrize("over", [{}, {"scale": "semitone", "n_fft": 4096, "n_mels": 100},
                                  {"scale": "semitone", "n_fft": 4096, "n_mels": 100, "min_fft": 1024}])
def test_frames_in_chunks_give_the_same_log_mel_bit_for_bit(monkeypatch, over):
    from musetok.shared import mel
    fe = MelFrontend(replace(MelConfig(), **over))
    y = torch.from_numpy(np.stack([tone(6.0, 220.0, seed=1), tone(6.0, 330.0, seed=2)]))
    chunked = fe(y)  # passes of 128 frames and a shorter last one
    assert chunked.shape[-1] > 2 * mel.FRAME_CHUNK
    monkeypatch.setattr(mel, "FRAME_CHUNK", 10 ** 9)
    torch.testing.assert_close(fe(y), chunked, rtol=0, atol=0)


def test_semitone_front_end_resolves_neighbouring_semitones():
    """The `semitone` scale puts each of A2 (110 Hz) and its neighbours a semitone up and down in a band of its
    own (band = MIDI note - 24 from C1); the default 80-band mel at n_fft 1024 gives two of them one band."""
    sr = 22050
    semi = MelFrontend(MelConfig(n_fft=4096, n_mels=100, scale="semitone"))
    mel = MelFrontend(MelConfig())
    peaks_semi, peaks_mel = [], []
    for midi in (44, 45, 46):
        y = torch.from_numpy(tone(1.0, float(librosa.midi_to_hz(midi)), sr=sr).astype(np.float32))
        peaks_semi.append(int(semi(y).mean(1).argmax()))
        peaks_mel.append(int(mel(y).mean(1).argmax()))
    assert peaks_semi == [20, 21, 22]
    assert len(set(peaks_mel)) < 3
    fb = semi.fb.numpy().T  # (bands, FFT bins)
    assert (fb > 0).sum(1).min() >= 2 and ((fb > 0).sum(0) > 0).sum() > 1000  # no empty band, wide coverage
    np.testing.assert_allclose(fb.sum(1), 1.0, rtol=1e-5)  # unit area per band


def test_semitone_bands_must_fit_below_nyquist():
    from musetok.shared.config import ConfigError
    with pytest.raises(ConfigError, match="mel.n_mels"):
        MelConfig(n_fft=4096, n_mels=120, scale="semitone")


MULTIRES = MelConfig(n_fft=4096, n_mels=100, scale="semitone", min_fft=1024)


def sine(seconds: float, hz: float, sr: int = 22050, start: float = 0.0) -> torch.Tensor:
    """A steady sine at half scale, silent before `start` seconds."""
    t = np.arange(int(seconds * sr)) / sr
    return torch.from_numpy((0.5 * np.sin(2 * np.pi * hz * t) * (t >= start)).astype(np.float32))


def test_multiresolution_bands_come_from_the_shortest_stft_that_resolves_them():
    """`min_fft`: the bands split into contiguous runs, longest STFT first; each band read from a shorter STFT
    spans at least 2 of its bins on its lower side (a semitone apart from its neighbour), and no band would in the
    next shorter one (the lowest stay in the longest, which resolves them least badly)."""
    res = semitone_resolutions(MULTIRES)
    assert [n for n, _, _ in res] == [4096, 2048, 1024]
    assert res[0][1] == 0 and res[-1][2] == 100 and all(a[2] == b[1] for a, b in zip(res, res[1:]))
    centres = librosa.cqt_frequencies(101, fmin=MULTIRES.semitone_low / 2 ** (1 / 12), bins_per_octave=12)
    width = np.diff(centres)
    for n, lo, hi in res:
        if n < 4096:
            assert (width[lo:hi] >= 2 * 22050 / n).all()
        if n > 1024:
            assert (width[lo:hi] < 2 * 22050 / (n // 2)).all()
    assert semitone_resolutions(replace(MULTIRES, min_fft=None)) == [(4096, 0, 100)]


def test_each_multiresolution_band_equals_the_shorter_stft_scaled():
    """Each band reads exactly what a single-resolution semitone front-end at its STFT length reads, its power
    scaled by n_fft / that length, from windows centred on the same sample."""
    noise = 0.05 * np.random.default_rng(0).standard_normal(44100)
    y = sine(2.0, 523.3) + sine(2.0, 1661.2) + torch.from_numpy(noise.astype(np.float32))
    multi = MelFrontend(MULTIRES)(y)
    for n, lo, hi in semitone_resolutions(MULTIRES):
        single = MelFrontend(replace(MULTIRES, n_fft=n, min_fft=None))(y)
        assert single.shape == multi.shape
        np.testing.assert_allclose(multi[lo:hi], single[lo:hi] + np.log(4096 / n), atol=2e-3)


def test_multiresolution_keeps_levels_and_sharpens_onsets():
    """A steady tone reads the same level in either front-end (the scaling); a tone that starts at 1 s reaches
    its level within 2 frames in a 1024-point band, against 6 or more frames with 4096 points everywhere."""
    single, multi = MelFrontend(replace(MULTIRES, min_fft=None)), MelFrontend(MULTIRES)
    for hz in (300.0, 700.0, 2000.0):
        band = int(round(float(librosa.hz_to_midi(hz)))) - 24
        assert abs(float(single(sine(3.0, hz))[band, 50:200].mean() - multi(sine(3.0, hz))[band, 50:200].mean())) < 0.1
    band = int(round(float(librosa.hz_to_midi(2000.0)))) - 24
    rise = []
    for fe in (single, multi):
        e = fe(sine(3.0, 2000.0, start=1.0))[band].numpy()
        final = e[150]
        rise.append(int(np.argmax(e > final - 0.7) - np.argmax(e > final - 9.0)))  # -39 dB to -3 dB, in frames
    assert rise[1] <= 2 and rise[0] >= 6


def test_multiresolution_streams_exactly():
    fe = MelFrontend(MULTIRES)
    y = tone(3.0, 880.0)
    whole = fe(torch.from_numpy(y)).numpy()
    s = StreamingMel(fe)
    streamed = np.concatenate([s.push(y[i:i + 5000]) for i in range(0, len(y), 5000)] + [s.flush()], axis=1)
    np.testing.assert_allclose(streamed, whole, atol=1e-4)


@pytest.mark.parametrize("over, key", [({"scale": "mel"}, "mel.min_fft"), ({"min_fft": 1536}, "mel.min_fft"),
                                       ({"min_fft": 0}, "mel.min_fft")])
def test_multiresolution_config_errors_name_the_key(over, key):
    from musetok.shared.config import ConfigError
    with pytest.raises(ConfigError, match=key):
        replace(MULTIRES, **over)
