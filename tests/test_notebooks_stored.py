"""The notebooks as committed: with the outputs a learner reads before running anything.

Every notebook in ``notebooks/`` is stored with the outputs of a full run under the
``tiny`` preset on a CPU (``make notebooks``; ``pytest --nbval notebooks/`` proves a re-run
reproduces them). These checks read the stored files only:

* every code cell ran, none raised, and the seven together stay under 10 MiB;
* the outputs name no folder of the machine that made them, no user or host, no token,
  no date or clock time, and hold no progress bar stopped part-way (unless the cell says
  the run stopped there);
* every cell that promises a figure shows one, and no cell's stderr holds a warning, a
  library's log line or a "Loading weights" bar (the checks of ``test_notebooks_run``);
* cells whose output nbval may not compare (``# NBVAL_IGNORE_OUTPUT``) stay under one in
  ten, and each is listed in the sanitiser's comments;
* the notebook's metadata asks Colab for a GPU runtime.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import re
import socket

import pytest
from notebook_outputs import IGNORE_MARK, SANITIZER, notebooks, text_of
from test_notebooks_run import figure_problems, stderr_problems

NOTEBOOKS = notebooks()
# Stored pictures make the notebooks the bulk of a clone after the shipped weights (about 49 MB):
# each stays small enough for GitHub to render quickly, and seven together stay a small share.
MAX_NOTEBOOK_BYTES = 3 * 1024 * 1024
MAX_TOTAL_BYTES = 12 * 1024 * 1024

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
# What a stored output must not carry: the machine's folders, a date or a clock time.
MACHINE_PATTERNS = {
    "absolute path": re.compile(r"(?<![\w.:/])/(?:root|home|tmp|work|Users|var|opt|content)/"),
    "Windows path": re.compile(r"\b[A-Z]:\\\\"),
    "date": re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b"),
    "clock time": re.compile(r"\b[0-2]\d:[0-5]\d:[0-5]\d\b"),
}
# A tqdm bar that did not reach its total: "  50%|#####     | 100/200 [...]".
PROGRESS = re.compile(r"(\d+)%\|[^|]*\|\s*(\d+)/(\d+)")


def _output_texts(notebook: dict):
    """(cell index, text) for every text field of every output (pictures left out)."""
    for index, cell in enumerate(notebook.get("cells", [])):
        for output in cell.get("outputs", []):
            if "text" in output:
                yield index, text_of(output["text"])
            for mime, value in output.get("data", {}).items():
                if mime.startswith("text/"):
                    yield index, text_of(value)
            if output.get("output_type") == "error":
                yield index, f"{output.get('ename')}: {output.get('evalue')}"


def secret_problems(text: str) -> list[str]:
    """Token-like strings found in a notebook's raw text."""
    return [
        f"{label}: {match.group(0)[:12]}..."
        for label, pattern in TOKEN_PATTERNS.items()
        for match in pattern.finditer(text)
    ]


def stored_output_problems(notebook: dict, who: tuple[str, ...] = ()) -> list[str]:
    """Unrun cells, machine details and unfinished progress bars in the stored outputs.

    ``who``: names that must not appear (this machine's user and host names).
    """
    problems = []
    for index, cell in enumerate(notebook.get("cells", [])):
        if cell.get("cell_type") == "code" and cell.get("execution_count") is None:
            problems.append(f"cell {index} was not run")
    for index, text in _output_texts(notebook):
        for label, pattern in MACHINE_PATTERNS.items():
            for match in pattern.finditer(text):
                problems.append(f"cell {index}: {label} {match.group(0)!r}")
        for name in who:
            if name and re.search(rf"\b{re.escape(name)}\b", text):
                problems.append(f"cell {index}: names this machine ({name!r})")
    cell_texts: dict[int, str] = {}
    for index, text in _output_texts(notebook):
        cell_texts[index] = cell_texts.get(index, "") + text
    for index, text in cell_texts.items():
        for done, step, total in PROGRESS.findall(text):
            if int(step) < int(total) and "stopped" not in text:
                problems.append(f"cell {index}: a progress bar stopped at {done}%")
    return problems


def _machine_names() -> tuple[str, ...]:
    names = {socket.gethostname().split(".")[0]}
    with contextlib.suppress(KeyError, OSError):
        names.add(getpass.getuser())
    # Short or generic names ("root", "runner") would match ordinary words in the lessons.
    return tuple(n for n in names if len(n) >= 6 and n not in {"runner", "jovyan"})


def ignored_cells(notebook: dict) -> int:
    return sum(
        IGNORE_MARK in text_of(c.get("source", ""))
        for c in notebook.get("cells", [])
        if c.get("cell_type") == "code"
    )


def test_the_notebook_folder_has_the_seven_lessons():
    assert len(NOTEBOOKS) == 7, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_with_its_outputs(path):
    text = path.read_text(encoding="utf-8")
    notebook = json.loads(text)
    problems = (
        stored_output_problems(notebook, _machine_names())
        + secret_problems(text)
        + figure_problems(notebook)
        + stderr_problems(notebook)
    )
    assert not problems, (
        f"{path.name}: " + "; ".join(problems[:12]) + ". Fix the notebook, then store its "
        "outputs again with `make notebooks`."
    )
    drawn = sum(
        "image/png" in o.get("data", {}) for c in notebook["cells"] for o in c.get("outputs", [])
    )
    assert drawn > 0, f"{path.name} stores no picture"
    if path.name.startswith("06"):  # 06 compares the adapter 05 trained, not a fallback
        printed = "".join(text for _, text in _output_texts(notebook))
        assert "adapter from notebook 05" in printed


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_asks_colab_for_a_gpu(path):
    metadata = json.loads(path.read_text(encoding="utf-8"))["metadata"]
    assert metadata["kernelspec"]["name"] == "python3"
    assert metadata.get("accelerator") == "GPU"
    assert metadata.get("colab", {}).get("gpuType") == "T4"


def test_the_notebooks_stay_small():
    total = sum(p.stat().st_size for p in NOTEBOOKS)
    assert total < MAX_TOTAL_BYTES, f"{total / 1e6:.1f} MB of notebooks (at most 12 MiB)"
    for path in NOTEBOOKS:
        size = path.stat().st_size
        assert size < MAX_NOTEBOOK_BYTES, f"{path.name}: {size / 1e6:.1f} MB (at most 3 MiB)"


def test_outputs_nbval_ignores_are_few_and_listed():
    listed = SANITIZER.read_text()
    ignored = code = 0
    for path in NOTEBOOKS:
        notebook = json.loads(path.read_text(encoding="utf-8"))
        n = ignored_cells(notebook)
        if n:
            assert path.stem in listed, (
                f"{path.name}'s ignored cell(s) are not listed in {SANITIZER}"
            )
        ignored += n
        code += sum(c["cell_type"] == "code" for c in notebook["cells"])
    assert ignored * 10 < code, f"{ignored} of {code} code cells skip nbval's comparison"


# The checks themselves, on notebooks made up here: each must be able to fail.


def _code(text: str, outputs: list | None = None, count: int | None = 1) -> dict:
    return {"cell_type": "code", "source": text, "outputs": outputs or [], "execution_count": count}


def _out(text: str, name: str = "stdout") -> dict:
    return {"output_type": "stream", "name": name, "text": text}


def test_the_checks_catch_machine_details_and_unfinished_bars():
    notebook = {
        "cells": [
            _code("a", [_out("model /root/.cache/stableemote/tinyemote\n")]),
            _code("b", [_out("saved at 2026-12-05 14:02:01\n")]),
            _code("c", [_out("training:  50%|#####     | 100/200 [00:10<00:10]\n", "stderr")]),
            _code("d", [_out("training: 100%|##########| 200/200 [00:20<00:00]\n", "stderr")]),
            _code("e", [_out("stopped at step 100; training:  50%|##  | 100/200\n")]),
            _code("f", count=None),
            _code("g", [_out("made on build-host-7\n")]),
            _code("h", [_out("runs are kept under outputs/emoji-lora-tiny, 0.5 s per step\n")]),
        ]
    }
    problems = stored_output_problems(notebook, ("build-host-7",))
    cells = sorted({int(p.split(" ")[1].rstrip(":")) for p in problems})
    assert cells == [0, 1, 2, 5, 6], problems


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


def test_the_ignore_count_reads_the_marker():
    notebook = {"cells": [_code("# NBVAL_IGNORE_OUTPUT\nbench()"), _code("x = 1")]}
    assert ignored_cells(notebook) == 1


# The stored outputs are pictures of a run: nbval compares their text, tests/notebook_outputs
# their pictures. A changed picture must fail that comparison.


def test_a_changed_picture_fails_the_comparison():
    import base64
    import io

    import numpy as np
    from notebook_outputs import picture_difference
    from PIL import Image

    def png(array) -> str:
        buffer = io.BytesIO()
        Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (40, 60, 3))
    assert picture_difference(png(picture), png(picture)) is None
    nudged = np.clip(picture + rng.integers(-1, 2, picture.shape), 0, 255)  # a level either way
    assert picture_difference(png(picture), png(nudged)) is None
    other = rng.integers(0, 256, (40, 60, 3))
    assert "mean difference" in picture_difference(png(picture), png(other))
    patched = picture.copy()
    patched[:10, :10] = 255 - patched[:10, :10]  # one corner redrawn
    assert picture_difference(png(picture), png(patched)) is not None
    assert "size" in picture_difference(png(picture), png(picture[:, :50]))
