"""Single synthetic notes with instrument-family, program and pitch labels: the NSynth-like probe set of
the synthetic benchmark, made with the demo's synthesiser.

Each family (the demo's five instruments) has `programs` variants (a timbre setting drawn per program),
each played at every pitch of `pitches` at a random level. Labels (labels.csv): path, family,
program (e.g. `organ-3`), pitch (MIDI), note (a unique id). Deterministic from the seed.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musetok.demo.corpus import INSTRUMENTS, render_note
from musetok.shared.audio import write_audio


@dataclass(frozen=True)
class NoteSetConfig:
    """Families x programs x pitches notes of `seconds` each (note-off at 3/4 of it), rendered from `seed`."""

    programs: int = 7
    pitches: tuple[int, ...] = tuple(range(45, 82, 3))
    seconds: float = 2.0
    sample_rate: int = 22050
    seed: int = 0


def make_note_set(out: str | Path, cfg: NoteSetConfig | None = None) -> Path:
    """Write the notes under OUT/audio/<family>/ and OUT/labels.csv; returns the labels path."""
    cfg = cfg or NoteSetConfig()
    out = Path(out)
    rng = np.random.default_rng(cfg.seed)
    sr, n = cfg.sample_rate, int(cfg.seconds * cfg.sample_rate)
    rows = []
    for family in INSTRUMENTS:
        for p in range(cfg.programs):
            timbre = float(rng.uniform(-0.5, 0.5))
            for pitch in cfg.pitches:
                y = np.zeros(n, np.float32)
                note = render_note(family, pitch, 0.75 * cfg.seconds, sr, rng, timbre)[:n]
                y[:len(note)] = note * float(rng.uniform(0.3, 0.9))
                y += rng.standard_normal(n).astype(np.float32) * 1e-4  # no exact digital silence
                rel = f"audio/{family}/{family}-{p}-{pitch:03d}.wav"
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                write_audio(out / rel, np.clip(y, -1, 1), sr)
                rows.append({"path": rel, "family": family, "program": f"{family}-{p}", "pitch": pitch,
                             "note": f"{family}-{p}-{pitch:03d}"})
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out / "labels.csv"
