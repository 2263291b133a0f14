"""Every committed notebook in notebooks/ is clean: no outputs, no execution counts, no secrets.

Notebooks are committed without outputs (they would show the tiny model's noise and bloat
the history) and must never carry an access token. The checks cover every ``*.ipynb`` in
the folder, so notebooks added later are checked too.
"""

import json
import re
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

# Patterns that look like credentials: Hugging Face tokens, 40-hex keys (wandb), and
# "api_key=..." / "token: ..." assignments with a literal value.
TOKEN_PATTERNS = {
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{20,}"),
    "40-hex-character key (wandb style)": re.compile(
        r"(?<![0-9a-fA-F])[0-9a-fA-F]{40}(?![0-9a-fA-F])"
    ),
    "api_key/token assignment": re.compile(
        r"""(?i)\b(api[_-]?key|access[_-]?token|secret|password)\s*[=:]\s*["']?[A-Za-z0-9_\-]{8,}"""
    ),
}


def output_problems(notebook: dict) -> list[str]:
    """Cells that carry outputs or execution counts, as readable messages."""
    problems = []
    for index, cell in enumerate(notebook.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"cell {index} has {len(cell['outputs'])} output(s)")
        if cell.get("execution_count") is not None:
            problems.append(f"cell {index} has execution_count {cell['execution_count']}")
    return problems


def secret_problems(text: str) -> list[str]:
    """Token-like strings found in a notebook's raw text."""
    return [
        f"{label}: {match.group(0)[:12]}..."
        for label, pattern in TOKEN_PATTERNS.items()
        for match in pattern.finditer(text)
    ]


def test_the_notebook_folder_has_notebooks():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_clean(path):
    text = path.read_text(encoding="utf-8")
    notebook = json.loads(text)
    problems = output_problems(notebook) + secret_problems(text)
    assert not problems, (
        f"{path.name}: " + "; ".join(problems) + ". Clear all outputs (e.g. "
        "`jupyter nbconvert --clear-output --inplace`) and remove secrets before committing."
    )
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"


def test_checks_catch_outputs_and_counts():
    dirty = {
        "cells": [
            {"cell_type": "markdown", "source": "x"},
            {"cell_type": "code", "execution_count": 3, "outputs": [{"output_type": "stream"}]},
            {"cell_type": "code", "execution_count": None, "outputs": []},
        ]
    }
    assert output_problems(dirty) == ["cell 1 has 1 output(s)", "cell 1 has execution_count 3"]


@pytest.mark.parametrize(
    "text",
    [
        'login(token="hf_' + "aB3" * 12 + '")',
        "WANDB_API_KEY=" + "0123456789abcdef" * 2 + "01234567",
        'client(api_key="sk-live-123456789")',
    ],
)
def test_checks_catch_token_like_strings(text):
    assert secret_problems(text)


def test_checks_leave_ordinary_text_alone():
    text = 'hidden_size = 768  # "hf_hub" and a short hex 0xdeadbeef; api_key=os.environ["KEY"]'
    assert secret_problems(text) == []
