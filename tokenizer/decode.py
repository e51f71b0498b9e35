"""Codes -> audio, so a user can listen to what the codes keep.

Spectrogram tokenizers decode to the log spectrogram, invert its filterbank (mel: non-negative least
squares, as librosa's `mel_to_audio`; semitone: the pseudo-inverse, clipped at 0) and recover a waveform
with Griffin-Lim; waveform tokenizers decode straight to audio.
"""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import torch

from musetok.shared.audio import write_audio
from musetok.shared.errors import UserError
from musetok.shared.mel import semitone_filterbank
from musetok.shared.token_store import StoreEntry, TokenStore
from musetok.tokenizer.base import Tokenizer
from musetok.tokenizer.builder import load_tokenizer


def codes_to_audio(model: Tokenizer, codes: np.ndarray, n_iter: int = 32) -> np.ndarray:
    """codes `(K, T)` -> mono float32 waveform at `model.sample_rate`, shape `(N,)`."""
    with torch.no_grad():
        x = torch.as_tensor(np.asarray(codes, dtype=np.int64))[None].to(next(model.parameters()).device)
        out = model.decode(x)[0].cpu().numpy()  # (C, N)
    if model.cfg.input == "waveform":
        return out[0].astype(np.float32)
    m = model.cfg.mel
    power = np.maximum(np.exp(out) - m.log_eps, 0.0)
    if m.scale == "semitone":
        # pseudo-inverse, clipped at 0: librosa's nnls (scipy's L-BFGS-B) crashed here on the FFT bins above
        # the top band, which no band covers
        stft_power = np.maximum(np.linalg.pinv(semitone_filterbank(m)) @ power, 0.0)
    else:
        fb = librosa.filters.mel(sr=m.sample_rate, n_fft=m.n_fft, n_mels=m.n_mels, fmin=m.f_min, fmax=m.f_max)
        stft_power = librosa.util.nnls(fb, power)
    magnitude = np.sqrt(stft_power)  # (1 + n_fft // 2, T)
    wave = librosa.griffinlim(magnitude, n_iter=n_iter, hop_length=m.hop_length, n_fft=m.n_fft, center=True,
                              pad_mode="constant")
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    return (wave / peak * 0.9 if peak > 1.0 else wave).astype(np.float32)


def decode_item(tokenizer_dir: str | Path, store_dir: str | Path, item: str, out: str | Path) -> StoreEntry:
    """`musetok decode`: decode one store item (its number or relative path) to an audio file; returns its entry."""
    model = load_tokenizer(tokenizer_dir)
    store = TokenStore(store_dir)
    store.meta.check_compatible(model.store_meta(), str(store_dir), frames=False)
    i = int(item) if item.isdigit() else store.index_of(item)
    if not 0 <= i < len(store):
        raise UserError(f"--item {i}: the store has {len(store)} items")
    write_audio(out, codes_to_audio(model, store.codes(i)), model.sample_rate)
    return store.items[i]
