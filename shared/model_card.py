"""A model card (`README.md`) for every saved tokenizer and prior folder, as a Hugging Face model repo
expects: YAML front matter (with a license field for the user to fill in) and what the model was
trained on, for how long, and how well it did."""

from __future__ import annotations

from pathlib import Path

from musetok.shared.io import atomic_write_text

CARD_FILE = "README.md"


def write_model_card(folder: str | Path, title: str, summary: str, facts: dict[str, str], usage: str) -> Path:
    """Write `folder/README.md`: `facts` become a two-column table, `usage` a Python example."""
    folder = Path(folder)
    lines = ["---", "library_name: musetok", "tags: [musetok, music, audio, self-supervised]",
             "license: unknown  # set the license that fits your training audio and these weights", "---", "",
             f"# {title}", "", summary, "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts.items()]
    lines += ["", "## Use", "", "```python", usage.strip(), "```", ""]
    path = folder / CARD_FILE
    atomic_write_text(path, "\n".join(lines))
    return path
