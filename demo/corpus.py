"""A small labelled music corpus synthesised with numpy: the demo's data, made in seconds, no downloads.

Each piece has a key and mode, a 4/4 meter at a tempo, a chord progression (one chord per bar)
played by a pad, a root-note bass, a melody that moves by step between chord tones on the beats,
and drums. The melody's instrument is one of five timbres:

    pluck  Karplus-Strong plucked string       epiano  FM electric piano (ratio 1, decaying index)
    organ  additive drawbar organ               brass   sawtooth with an envelope-driven brightness
    bell   FM bell (inharmonic ratio 3.5)

Labels (labels.csv): path, instrument, key (e.g. "A minor", mir_eval's format), tonic, mode, tempo (bpm),
tempo_class (slow / medium / fast), group (the piece; one file per piece here). No split column: probes
make their own, grouped by piece. Deterministic from the seed.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

from musetok.shared.audio import write_audio
from musetok.shared.config import check

NOTE_NAMES = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
INSTRUMENTS = ["pluck", "epiano", "organ", "brass", "bell"]
TEMPO_CLASSES = {"slow": (66, 84), "medium": (96, 116), "fast": (132, 156)}
MAJOR, MINOR = [0, 2, 4, 5, 7, 9, 11], [0, 2, 3, 5, 7, 8, 10]
# progressions as scale degrees (0-based) of triads
PROGRESSIONS = {"major": [[0, 4, 5, 3], [0, 3, 4, 0], [0, 5, 3, 4], [0, 3, 0, 4]],
                "minor": [[0, 5, 2, 6], [0, 3, 4, 0], [0, 6, 5, 4], [0, 3, 6, 2]]}


@dataclass(frozen=True)
class DemoCorpusConfig:
    """How many pieces, how long, at what rate; every piece is drawn from `seed`."""

    pieces: int = 160
    seconds: float = 8.0
    sample_rate: int = 22050
    seed: int = 0

    def __post_init__(self):
        check(self.pieces > 0, "--pieces", "must be positive")
        check(self.seconds >= 1.0, "--seconds", "must be at least 1")
        check(self.sample_rate >= 8000, "sample_rate", "must be at least 8000")


def midi_hz(m: float) -> float:
    return 440.0 * 2 ** ((m - 69) / 12)


def _env(n: int, sr: int, attack: float, decay: float, sustain: float, release: float) -> np.ndarray:
    t = np.arange(n) / sr
    a = np.clip(t / max(attack, 1e-4), 0, 1)
    d = sustain + (1 - sustain) * np.exp(-np.maximum(t - attack, 0) / max(decay, 1e-4))
    r = np.clip((n / sr - t) / max(release, 1e-4), 0, 1)
    return a * d * r


def render_note(instrument: str, pitch: float, dur: float, sr: int, rng: np.random.Generator,
                timbre: float = 0.0) -> np.ndarray:
    """One note, mono float32, `dur` seconds (plus its own release tail for plucked/bell sounds).

    `timbre` in about [-0.5, 0.5] moves the instrument's main tone parameter (damping, modulation index,
    drawbar mix, brightness, bell ratio): the "programs" of one instrument family. 0 is the demo's sound.
    """
    f = midi_hz(pitch)
    n = int(dur * sr)
    t = np.arange(n) / sr
    if instrument == "pluck":  # Karplus-Strong: noise burst through a damped comb filter
        delay = max(2, int(round(sr / f)))
        x = np.zeros(n)
        x[:delay] = rng.uniform(-1, 1, delay)
        a = np.zeros(delay + 2)
        damp = 0.498 - 0.006 * timbre
        a[0], a[delay], a[delay + 1] = 1.0, -damp, -damp
        y = lfilter([1.0], a, x)
        return (y * 0.6).astype(np.float32)
    if instrument == "epiano":
        index = 2.5 * (1 + timbre) * np.exp(-t * 6 * (1 + timbre))
        y = np.sin(2 * np.pi * f * t + index * np.sin(2 * np.pi * f * t)) * _env(n, sr, 0.003, 0.5, 0.0, 0.05)
        return (y * 0.6).astype(np.float32)
    if instrument == "organ":
        bars = [(0.5, 0.5), (1, 1), (2, 0.6), (3, 0.4), (4, 0.3)]
        y = sum(w * (1 + timbre * (h - 1)) * np.sin(2 * np.pi * f * h * t) for h, w in bars)
        return (y * _env(n, sr, 0.01, 0.1, 0.9, 0.02) * 0.25).astype(np.float32)
    if instrument == "brass":
        env = _env(n, sr, 0.06, 0.2, 0.7, 0.05)
        bright = (2 + 10 * env) * (1 + timbre)  # harmonics fade above `bright`: opens with the envelope
        kmax = int(min(30, (sr / 2) // f))
        y = sum(np.sin(2 * np.pi * f * k * t) / k * np.exp(-k / bright) for k in range(1, kmax + 1))
        return (y * env * 0.35).astype(np.float32)
    if instrument == "bell":
        index = 3.0 * np.exp(-t * 2)
        y = np.sin(2 * np.pi * f * t + index * np.sin(2 * np.pi * (3.5 + timbre) * f * t)) * np.exp(-t * 2.5)
        return (y * _env(n, sr, 0.002, 10, 1.0, 0.02) * 0.5).astype(np.float32)
    raise ValueError(f"unknown instrument {instrument}")


def _drum(kind: str, sr: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "kick":
        t = np.arange(int(0.25 * sr)) / sr
        return (np.sin(2 * np.pi * (50 * t + 60 * (1 - np.exp(-t * 30)) / 30)) * np.exp(-t * 14)).astype(np.float32)
    n = int((0.18 if kind == "snare" else 0.05) * sr)
    noise = rng.standard_normal(n)
    if kind == "hat":
        noise = np.diff(noise, prepend=0.0)  # brighter
    return (noise * np.exp(-np.arange(n) / sr * (25 if kind == "snare" else 80)) * 0.3).astype(np.float32)


def _add(buf: np.ndarray, x: np.ndarray, at: int, gain: float) -> None:
    end = min(len(buf), at + len(x))
    if end > at:
        buf[at:end] += gain * x[: end - at]


def render_piece(rng: np.random.Generator, cfg: DemoCorpusConfig) -> tuple[np.ndarray, dict]:
    sr = cfg.sample_rate
    tonic = int(rng.integers(12))
    mode = str(rng.choice(["major", "minor"]))
    tempo_class = str(rng.choice(list(TEMPO_CLASSES)))
    lo, hi = TEMPO_CLASSES[tempo_class]
    bpm = float(rng.integers(lo, hi + 1))
    instrument = str(rng.choice(INSTRUMENTS))
    pad = str(rng.choice([i for i in ("organ", "epiano") if i != instrument] or ["organ"]))
    scale = MAJOR if mode == "major" else MINOR
    prog = PROGRESSIONS[mode][int(rng.integers(len(PROGRESSIONS[mode])))]
    beat = 60.0 / bpm
    n = int(cfg.seconds * sr)
    buf = np.zeros(n + sr, np.float32)
    base = 48 + tonic  # C3 .. B3

    def degree_pitch(deg: int, octave: int = 0) -> int:
        return base + scale[deg % 7] + 12 * (deg // 7 + octave)

    cache: dict[tuple, np.ndarray] = {}  # one tempo per piece: the same notes recur, render each once

    def note(instr: str, pitch: int, dur: float) -> np.ndarray:
        key = (instr, pitch, round(dur, 5))
        if key not in cache:
            cache[key] = render_note(instr, pitch, dur, sr, rng)
        return cache[key]

    melody_deg = 7 + 2 * int(rng.integers(2))  # start on the tonic or the third, an octave up
    n_beats = int(cfg.seconds / beat) + 1
    for b in range(n_beats):
        at = int(b * beat * sr)
        bar, pos = divmod(b, 4)
        chord_deg = prog[bar % len(prog)]
        triad = [chord_deg, chord_deg + 2, chord_deg + 4]
        if pos == 0:  # pad chord and bass on each bar
            for d in triad:
                _add(buf, note(pad, degree_pitch(d), 4 * beat), at, 0.12)
            _add(buf, note("organ", degree_pitch(chord_deg, -1) - 12, 4 * beat), at, 0.25)
        # melody: on each beat move by step towards a chord tone (voice leading), sometimes two eighths
        targets = [d + 7 * k for d in triad for k in (0, 1, 2)]
        nearest = min(targets, key=lambda d: (abs(d - melody_deg), rng.random()))
        melody_deg = nearest if abs(nearest - melody_deg) <= 2 else melody_deg + int(np.sign(nearest - melody_deg))
        melody_deg = int(np.clip(melody_deg, 5, 16))
        if rng.random() < 0.3:  # passing eighth note
            _add(buf, note(instrument, degree_pitch(melody_deg), beat / 2), at, 0.5)
            step = int(rng.choice([-1, 1]))
            _add(buf, note(instrument, degree_pitch(melody_deg + step), beat / 2),
                 at + int(beat / 2 * sr), 0.45)
        else:
            _add(buf, note(instrument, degree_pitch(melody_deg), beat), at, 0.5)
        # drums: kick on 1 and 3, snare on 2 and 4, hats on eighths
        _add(buf, _drum("kick" if pos in (0, 2) else "snare", sr, rng), at, 0.5 if pos in (0, 2) else 0.35)
        for h in range(2):
            _add(buf, _drum("hat", sr, rng), at + int(h * beat / 2 * sr), 0.15)
    y = buf[:n]
    y = y / max(1e-6, float(np.abs(y).max())) * 0.9
    key = f"{NOTE_NAMES[tonic]} {mode}"
    return y.astype(np.float32), {"instrument": instrument, "key": key, "tonic": NOTE_NAMES[tonic], "mode": mode,
                                  "tempo": bpm, "tempo_class": tempo_class}


def make_demo_corpus(out: str | Path, cfg: DemoCorpusConfig | None = None) -> Path:
    """Write `pieces` WAV files under OUT/audio/<instrument>/ and OUT/labels.csv. Returns the labels path."""
    cfg = cfg or DemoCorpusConfig()
    out = Path(out)
    rng = np.random.default_rng(cfg.seed)
    rows = []
    for i in range(cfg.pieces):
        y, labels = render_piece(rng, cfg)
        rel = f"audio/{labels['instrument']}/piece{i:04d}.wav"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        write_audio(out / rel, y, cfg.sample_rate)
        rows.append({"path": rel, **labels, "group": f"piece{i:04d}"})
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out / "labels.csv"
