import librosa
import numpy as np
import pytest
import torch

from musetok.shared.mel import MelConfig, MelFrontend, StreamingMel
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
