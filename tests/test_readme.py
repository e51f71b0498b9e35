"""The README's Python examples, run as written (in a folder holding the runs they name)."""

import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import tone, write

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_python_example_runs(i, tmp_path, monkeypatch, trained_tokenizer, prior_dirs, store):
    runs = tmp_path / "runs"
    shutil.copytree(trained_tokenizer, runs / "tok")
    shutil.copytree(prior_dirs["mlm"], runs / "prior")
    shutil.copytree(store, runs / "store")
    write(tmp_path / "clip.wav", tone(3.0, 220.0, sr=44100), 44100)
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[i], f"README.md python block {i + 1}", "exec"), {})
