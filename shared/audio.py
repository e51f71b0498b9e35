"""Audio in: decode, downmix to mono, resample to the model's rate, in blocks.

Every reader here streams: an hour-long file is read `block_seconds` at a time and resampled with a
streaming soxr resampler, so nothing ever holds the whole waveform unless the caller asks for it
(`load_audio`). Problems with a file raise `AudioError`, whose message names the file.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from musetok.shared.errors import UserError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au", ".opus")
# Formats whose header gives an exact frame count, so a file that ends early is known to be truncated.
EXACT_LENGTH_FORMATS = ("WAV", "WAVEX", "FLAC", "AIFF", "AU", "W64", "RF64")


class AudioError(UserError):
    """A file that cannot be used as audio. `reason` is short enough for an index or a table."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class AudioCorpus:
    """A list of audio files and the folder their relative paths start from.

    Attributes:
        root: folder the relative paths are relative to.
        files: relative paths (POSIX style), sorted for a deterministic order.
    """

    root: Path
    files: list[str]

    def path(self, rel: str) -> Path:
        return self.root / rel


def list_audio(source: str | Path) -> AudioCorpus:
    """List a corpus from a folder (recursively, by extension) or a manifest CSV with a `path` column.

    Manifest paths are relative to the manifest's folder (absolute paths are kept).
    """
    src = Path(source)
    if src.is_dir():
        files = []
        for dirpath, _dirs, names in os.walk(src, followlinks=True):
            for name in names:
                if name.lower().endswith(AUDIO_EXTENSIONS):
                    files.append(Path(dirpath, name).relative_to(src).as_posix())
        return AudioCorpus(src, sorted(files))
    if src.is_file() and src.suffix.lower() in (".csv", ".tsv"):
        with open(src, newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if src.suffix.lower() == ".tsv" else ",")
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise AudioError(src, "manifest has no 'path' column")
            files = [row["path"] for row in reader if row.get("path")]
        return AudioCorpus(src.parent, files)
    if src.is_file():
        return AudioCorpus(src.parent, [src.name])
    raise AudioError(src, "no such folder, manifest or audio file")


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def _open(path: str | Path) -> sf.SoundFile:
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise AudioError(path, "broken symlink")
    if not p.exists():
        raise AudioError(path, "file not found")
    if p.is_file() and p.stat().st_size == 0:
        raise AudioError(path, "empty file")
    try:
        with open(p, "rb"):  # libsndfile reports an unreadable file only as a "System error"
            pass
        return sf.SoundFile(str(p))
    except PermissionError:
        raise AudioError(path, "permission denied") from None
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        msg = str(e).split(":")[-1].strip() or "unknown format"
        raise AudioError(path, f"cannot decode ({msg})") from None
    except OSError as e:
        raise AudioError(path, f"cannot open ({e.strerror or e})") from None


_DATA_CHUNK = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _check_not_truncated(f: sf.SoundFile, path) -> None:
    """libsndfile silently shortens a WAV whose data chunk runs past the end of the file; its log says
    `data : <declared> (should be <on disk>)`. Declared > on disk means the file was cut short (a
    declared size of 0 or a placeholder from a streaming writer is the other direction, and fine)."""
    m = _DATA_CHUNK.search(f.extra_info) if f.format in ("WAV", "WAVEX", "W64", "RF64") else None
    if m and int(m.group(1)) > int(m.group(2)) and int(m.group(1)) < 0xFFFFFFF0:
        raise AudioError(path, f"truncated file (data chunk declares {m.group(1)} bytes, {m.group(2)} present)")


def audio_info(path: str | Path) -> AudioInfo:
    with _open(path) as f:
        return AudioInfo(f.samplerate, f.channels, f.frames)


def iter_audio(path: str | Path, sample_rate: int, block_seconds: float = 30.0,
               start: float = 0.0, duration: float | None = None) -> Iterator[np.ndarray]:
    """Yield mono float32 blocks of `path` resampled to `sample_rate`.

    Args:
        path: audio file.
        sample_rate: output rate in Hz.
        block_seconds: input seconds decoded per block (bounds memory).
        start: offset in seconds to start from.
        duration: seconds to read (None: to the end).

    Raises:
        AudioError: unreadable, empty, zero-length or non-finite audio.
    """
    with _open(path) as f:
        sr_in = f.samplerate
        if f.frames == 0:
            raise AudioError(path, "zero-length audio")
        _check_not_truncated(f, path)
        first = int(round(start * sr_in))
        if first:
            f.seek(min(first, f.frames))
        remaining = None if duration is None else int(round(duration * sr_in))
        block = max(1, int(block_seconds * sr_in))
        stream = soxr.ResampleStream(sr_in, sample_rate, 1, dtype="float32", quality="HQ") \
            if sr_in != sample_rate else None
        any_samples = False
        total_read = 0
        while True:
            n = block if remaining is None else min(block, remaining)
            if n <= 0:
                break
            try:
                x = f.read(n, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as e:
                raise AudioError(path, f"decode error ({e})") from None
            last = len(x) < n or (remaining is not None and remaining - len(x) <= 0)
            total_read += len(x)
            if remaining is not None:
                remaining -= len(x)
            expected = f.frames - first if duration is None else None
            if last and expected and total_read < expected and f.format in EXACT_LENGTH_FORMATS:
                raise AudioError(path, f"truncated file (header says {expected} frames, found {total_read})")
            mono = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
            if not np.isfinite(mono).all():
                raise AudioError(path, "NaN or infinite samples")
            if stream is not None:
                mono = stream.resample_chunk(mono, last=last)
            if len(mono):
                any_samples = True
                yield np.ascontiguousarray(mono, dtype=np.float32)
            if last:
                break
        if not any_samples:
            raise AudioError(path, "zero-length audio")


def load_audio(path: str | Path, sample_rate: int, start: float = 0.0,
               duration: float | None = None) -> np.ndarray:
    """Whole (or part of a) file as one mono float32 array at `sample_rate`. Shape `(N,)`."""
    return np.concatenate(list(iter_audio(path, sample_rate, start=start, duration=duration)))


SILENT_DBFS = -100.0  # a clip whose RMS is below this is silence: `level_gain` leaves it as it is


AUTO_LEVEL = "auto"  # a level asked for as "auto": the level of the audio a model was trained on


def is_auto_level(level_db: float | str | None) -> bool:
    """Whether a level asked for is "auto" (any case)."""
    return isinstance(level_db, str) and level_db.strip().lower() == AUTO_LEVEL


def resolve_level(level_db: float | str | None, auto: float | None) -> float | None:
    """A level asked for (dBFS, None for each clip as it is, or "auto") as a number or None; "auto" is `auto`,
    the level a model recorded (None when it did not)."""
    if is_auto_level(level_db):
        return auto
    if isinstance(level_db, str):
        if level_db.strip().lower() == "none":
            return None
        try:
            level_db = float(level_db)
        except ValueError:
            raise UserError(f"level_db: expected a number of dBFS, 'auto' or 'none', got {level_db!r}") from None
    if level_db is not None and (isinstance(level_db, bool) or not np.isfinite(level_db) or not
                                 -100 < float(level_db) <= 0):
        raise UserError(f"level_db: {level_db!r} dBFS is not a level a clip can be brought to (-100 < dB <= 0)")
    return None if level_db is None else float(level_db)


def level_gain(rms: float, level_db: float | None) -> float:
    """The amplitude gain that brings a clip of RMS `rms` (full scale 1.0) to `level_db` dBFS; 1.0 with no level
    asked for or for a silent clip."""
    if level_db is None or rms <= 10 ** (SILENT_DBFS / 20):
        return 1.0
    return float(10 ** (level_db / 20) / rms)


def wave_rms(wave: np.ndarray) -> float:
    """The RMS of a waveform (full scale 1.0), summed in float64 (as `LevelMeter` sums a file's blocks)."""
    meter = LevelMeter()
    meter.add(np.ravel(wave))
    return meter.rms


def file_level(path: str | Path, sample_rate: int, block_seconds: float = 30.0) -> LevelMeter:
    """A file's mono signal at `sample_rate` read block by block through a `LevelMeter` (long files stay out of
    memory): its `rms`, `db` and samples `n`."""
    meter = LevelMeter()
    for b in iter_audio(path, sample_rate, block_seconds):
        meter.add(b)
    return meter


def audio_rms(path: str | Path, sample_rate: int, block_seconds: float = 30.0) -> float:
    """The RMS of a file's mono signal at `sample_rate`, read block by block."""
    return file_level(path, sample_rate, block_seconds).rms


def rms_db(rms: float) -> float:
    """An RMS (full scale 1.0) in dBFS, floored at `SILENT_DBFS` - 20 so that digital silence is a number."""
    return float(20 * np.log10(max(rms, 10 ** ((SILENT_DBFS - 20) / 20))))


class LevelMeter:
    """The RMS of a signal fed block by block (`add`), summed in float64; `db` is it in dBFS."""

    def __init__(self):
        self.total, self.n = 0.0, 0

    def add(self, block: np.ndarray) -> np.ndarray:
        # einsum, not np.dot: a BLAS call would wake BLAS threads that keep spinning beside the front-end's FFT
        self.total += float(np.einsum("i,i->", block, block, dtype=np.float64))
        self.n += len(block)
        return block

    @property
    def rms(self) -> float:
        return float(np.sqrt(self.total / max(self.n, 1)))

    @property
    def db(self) -> float:
        return rms_db(self.rms)


def corpus_level(levels_db: list[float], durations: list[float]) -> float | None:
    """The level a corpus is heard at: the median of its files' RMS levels (dBFS), each file weighted by its
    duration (what a prior reads most); silent files do not count. None when no file has a level."""
    pairs = sorted((lv, d) for lv, d in zip(levels_db, durations) if lv is not None and lv > SILENT_DBFS and d > 0)
    if not pairs:
        return None
    half, acc = sum(d for _, d in pairs) / 2, 0.0
    for lv, d in pairs:
        acc += d
        if acc >= half:
            return round(lv, 2)
    return round(pairs[-1][0], 2)


def to_mono_resampled(wave: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """Downmix an in-memory `(N,)`, `(N, C)` or `(C, N)` array and resample it. Returns `(N',)` float32.

    A 2-D array is taken as `(C, N)` when its first axis is the shorter one (up to 16 channels).
    """
    x = np.asarray(wave, dtype=np.float32)
    if x.ndim == 2:
        channels_first = x.shape[0] <= 16 and x.shape[0] < x.shape[1]
        x = x.mean(axis=0 if channels_first else 1)
    elif x.ndim != 1:
        raise ValueError(f"waveform must be 1-D or 2-D, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("waveform has NaN or infinite samples")
    if sample_rate != target_rate:
        x = soxr.resample(x, sample_rate, target_rate, quality="HQ")
    return np.ascontiguousarray(x, dtype=np.float32)


def write_audio(path: str | Path, wave: np.ndarray, sample_rate: int, block: int = 1 << 16) -> None:
    """Write mono float audio in blocks (one huge write can crash libsndfile's OGG encoder)."""
    wave = np.asarray(wave, dtype=np.float32)
    fmt = Path(path).suffix.lstrip(".").upper() or "WAV"
    subtype = "PCM_16" if fmt in ("WAV", "FLAC") else None
    with sf.SoundFile(str(path), "w", samplerate=sample_rate, channels=1, format=fmt, subtype=subtype) as f:
        for i in range(0, len(wave), block):
            f.write(wave[i:i + block])
