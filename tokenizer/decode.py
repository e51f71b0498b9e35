"""Codes -> audio, so a user can listen to what the codes keep.

Mel tokenizers decode to log-mel, then to audio with Griffin-Lim (librosa's `mel_to_audio`);
waveform tokenizers decode straight to audio.
"""

from __future__ import annotations

import librosa
import numpy as np
import torch

from musetok.tokenizer.base import Tokenizer


def codes_to_audio(model: Tokenizer, codes: np.ndarray, n_iter: int = 32) -> np.ndarray:
    """codes `(K, T)` -> mono float32 waveform at `model.sample_rate`, shape `(N,)`."""
    with torch.no_grad():
        x = torch.as_tensor(np.asarray(codes, dtype=np.int64))[None].to(next(model.parameters()).device)
        out = model.decode(x)[0].cpu().numpy()  # (C, N)
    if model.cfg.input == "waveform":
        return out[0].astype(np.float32)
    m = model.cfg.mel
    power = np.maximum(np.exp(out) - m.log_eps, 0.0)
    wave = librosa.feature.inverse.mel_to_audio(power, sr=m.sample_rate, n_fft=m.n_fft, hop_length=m.hop_length,
                                                fmin=m.f_min, fmax=m.f_max, power=2.0, n_iter=n_iter,
                                                center=True, pad_mode="constant")
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    return (wave / peak * 0.9 if peak > 1.0 else wave).astype(np.float32)
