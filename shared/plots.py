"""PNG plots a user would rather look at than read. matplotlib with the Agg backend (no display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reconstruction(path: str | Path, original: np.ndarray, decoded: np.ndarray, frame_rate: float,
                        title: str = "") -> None:
    """Input vs decoded log-mel, both `(n_mels, T)`."""
    fig, axes = plt.subplots(2, 1, figsize=(9, 5), sharex=True, layout="constrained")
    vmin, vmax = float(np.percentile(original, 1)), float(original.max())
    extent = (0, original.shape[1] / frame_rate, 0, original.shape[0])
    for ax, x, name in zip(axes, (original, decoded), ("input log-mel", "decoded from codes")):
        im = ax.imshow(x, origin="lower", aspect="auto", extent=extent, vmin=vmin, vmax=vmax, cmap="magma")
        ax.set_ylabel(f"{name}\nmel bin")
    axes[1].set_xlabel("seconds")
    fig.colorbar(im, ax=axes, shrink=0.8, label="log power")
    if title:
        axes[0].set_title(title)
    _save(fig, path)


def plot_codebook_usage(path: str | Path, counts: np.ndarray) -> None:
    """Histogram of code use, one row per codebook. counts: `(K, codebook_size)`."""
    k = counts.shape[0]
    fig, axes = plt.subplots(k, 1, figsize=(9, 2.2 * k + 0.6), squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        c = np.sort(counts[i])[::-1]
        used = (c > 0).mean() * 100
        p = c / max(1, c.sum())
        ppl = float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum())) if c.sum() else 0.0
        ax.bar(np.arange(len(c)), c, width=1.0, color="tab:blue")
        ax.set_ylabel("count")
        ax.set_title(f"codebook {i}: {used:.1f}% of {len(c)} codes used, perplexity {ppl:.1f}")
    axes[-1, 0].set_xlabel("codes, most used first")
    _save(fig, path)


def plot_curves(path: str | Path, records: list[dict], keys: list[str], title: str = "") -> None:
    """Training curves from metrics JSONL records: one line per key present, against `step`."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for key in keys:
        pts = [(r["step"], r[key]) for r in records if key in r]
        if pts:
            s, v = zip(*pts)
            ax.plot(s, v, label=key, marker="o" if len(pts) < 30 else None)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    if title:
        ax.set_title(title)
    _save(fig, path)


def plot_bars(path: str | Path, names: list[str], values: list[float], ylabel: str, title: str = "") -> None:
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4))
    ax.bar(range(len(names)), values, color=["tab:red" if n.startswith("musetok") else "tab:gray" for n in names])
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    if title:
        ax.set_title(title)
    _save(fig, path)


def plot_layer_curve(path: str | Path, layers: list[str], valid: list[float], test: list[float],
                     metric: str, title: str = "") -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(len(layers)), valid, marker="o", label="valid")
    ax.plot(range(len(layers)), test, marker="s", label="test")
    ax.set_xticks(range(len(layers)), layers, rotation=30, ha="right")
    ax.set_ylabel(metric)
    ax.legend()
    if title:
        ax.set_title(title)
    _save(fig, path)


def plot_layer_curves(path: str | Path, layers: list[str], curves: dict[str, list[float]], ylabel: str,
                      title: str = "") -> None:
    """One line per model over its layers (e.g. the validation metric of every layer, for several priors)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in curves.items():
        ax.plot(range(len(values)), values, marker="o", label=name)
    ax.set_xticks(range(len(layers)), layers, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    _save(fig, path)
