"""Execute every notebook as a learner would, write it to HTML, and check what the learner sees.

Each notebook in ``notebooks/`` runs top to bottom once (nbclient, the current Python
environment, ``STABLEEMOTE_PRESET=tiny`` unless set) in one shared working folder, in order,
so notebook 06 finds the adapter notebook 05 trained, as it does on Colab. The executed
notebook and its HTML go to ``outputs/notebooks/`` (``$STABLEEMOTE_NOTEBOOK_OUT`` overrides)
so a reviewer can read them; ``make notebooks-html`` runs only this file. Then:

* every cell that promises a figure has an image among its outputs: a cell calling
  ``plt.show()``, ``display(...)``, a ``plot_*`` helper or a function the notebook defined
  to draw, or the first code cell after markdown that says "What to look at" (a helper
  that switched matplotlib's backend made such cells blank);
* no cell's stderr holds a warning, a library's log line, or a traceback, and no cell shows
  a "Loading weights" bar (on stderr, or as a widget);
* no cell raises (nbclient stops at the first error and the HTML shows where).

Notebooks whose config cell reads ``STABLEEMOTE_PRECISION`` run in the precision named in
:data:`NOTEBOOK_PRECISION`, so CI exercises the half-precision path on a CPU.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 1800
# Where notebook 05 keeps its tiny run (relative to the working folder); 06 must use it.
NOTEBOOK_05_RUN = Path("outputs") / "emoji-lora-tiny"
# Per notebook: the STABLEEMOTE_PRECISION its kernel gets (absent: the notebook's default).
# The notebooks that check numbers run in bf16, the half-precision path a GPU takes (same
# autocast, same accelerate wrapper), which a CPU runs too; the others run in fp32.
NOTEBOOK_PRECISION: dict[str, str] = {
    "03_unet_denoising_loop": "bf16",
    "04_lora_injection": "bf16",
    "05_lora_training": "bf16",
}

# Calls whose cell must show a picture. A helper that returns a PIL image or a grid shows
# only when displayed, so `display(` counts too.
FIGURE_CALLS = re.compile(r"plt\.show\(\)|\bdisplay\(|\bplot_\w+\(")
FIGURE_PROMISE = re.compile(r"what to look at", re.IGNORECASE)
IMAGE_MIME = ("image/png", "image/jpeg", "image/svg+xml")
STDERR_NOISE = re.compile(
    r"warning|traceback|Loading weights|IProgress|deprecat|^\[(transformers|diffusers|accelerate)\]",
    re.IGNORECASE,
)


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return source if isinstance(source, str) else "".join(source)


def _has_image(cell: dict) -> bool:
    return any(
        mime in output.get("data", {}) for output in cell.get("outputs", []) for mime in IMAGE_MIME
    )


def _top_level_and_figure_functions(source: str) -> tuple[str, set[str]]:
    """A cell's code outside function bodies, and the functions it defines that draw a figure.

    ``def show(...): ... plt.show()`` promises nothing by itself; a later ``show(grid)`` does.
    """
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return source, set()
    outside, drawing = [], set()
    for node in tree.body:
        text = ast.unparse(node)
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            if FIGURE_CALLS.search(text):
                drawing.add(node.name)
        else:
            outside.append(text)
    return "\n".join(outside), drawing


def promised_figures(notebook: dict) -> list[int]:
    """Indices of the code cells that must show an image (see the module docstring)."""
    promised, after_promise, drawing = [], False, set()
    for index, cell in enumerate(notebook.get("cells", [])):
        if cell.get("cell_type") == "markdown":
            after_promise = after_promise or bool(FIGURE_PROMISE.search(_source(cell)))
            continue
        if cell.get("cell_type") != "code":
            continue
        code, defined = _top_level_and_figure_functions(_source(cell))
        drawing |= defined
        calls_drawing = any(re.search(rf"\b{name}\(", code) for name in drawing)
        if after_promise or FIGURE_CALLS.search(code) or calls_drawing:
            promised.append(index)
        after_promise = False
    return promised


def figure_problems(notebook: dict) -> list[str]:
    """One message per promised figure that is missing from the executed outputs."""
    cells = notebook.get("cells", [])
    return [
        f"cell {i} promises a figure but shows none: {_source(cells[i]).strip()[:80]!r}"
        for i in promised_figures(notebook)
        if not _has_image(cells[i])
    ]


def stderr_problems(notebook: dict) -> list[str]:
    """One message per cell whose stderr or error output holds a warning or traceback."""
    problems = []
    for index, cell in enumerate(notebook.get("cells", [])):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                problems.append(
                    f"cell {index} raised {output.get('ename')}: {output.get('evalue')}"
                )
            elif output.get("output_type") == "stream" and output.get("name") == "stderr":
                text = _source({"source": output.get("text", "")})
                for line in text.splitlines():
                    if STDERR_NOISE.search(line):
                        problems.append(f"cell {index} stderr: {line.strip()[:160]}")
            elif "Loading weights" in _source(
                {"source": output.get("data", {}).get("text/plain", "")}
            ):
                problems.append(f"cell {index} shows a 'Loading weights' bar")  # a widget bar
    return problems


def _out_dir() -> Path:
    return Path(os.environ.get("STABLEEMOTE_NOTEBOOK_OUT", ROOT / "outputs" / "notebooks"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One folder all notebooks run in, so 06 finds what 05 wrote under ``outputs/``."""
    return tmp_path_factory.mktemp("notebook-run")


def execute(path: Path, workdir: Path) -> tuple[dict, str | None]:
    """Run one notebook; returns the executed notebook and the error text, if a cell failed."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(path, as_version=4)
    env = dict(os.environ)
    env.setdefault("STABLEEMOTE_PRESET", "tiny")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    if path.stem in NOTEBOOK_PRECISION:
        env["STABLEEMOTE_PRECISION"] = NOTEBOOK_PRECISION[path.stem]
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    error = None
    try:
        client.execute(env=env, cwd=str(workdir))
    except CellExecutionError as err:
        error = str(err)
    return notebook, error


def write_html(notebook: dict, path: Path) -> Path:
    """The executed notebook (``.ipynb``) and its HTML, under the output folder."""
    import nbformat
    from nbconvert import HTMLExporter

    out = _out_dir()
    out.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, out / path.name)
    body, _ = HTMLExporter().from_notebook_node(notebook)
    html = out / f"{path.stem}.html"
    html.write_text(body, encoding="utf-8")
    return html


# One xdist worker runs them all, in order (06 reads what 05 wrote).
@pytest.mark.xdist_group("notebooks")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_shows_what_it_promises(path, workdir):
    trained_by_05 = (workdir / NOTEBOOK_05_RUN).is_dir()
    notebook, error = execute(path, workdir)
    html = write_html(notebook, path)
    assert error is None, f"{path.name} failed (see {html}):\n{error[-3000:]}"
    problems = figure_problems(notebook) + stderr_problems(notebook)
    assert not problems, f"{path.name} (see {html}):\n" + "\n".join(problems)
    if path.name.startswith("06") and trained_by_05:
        printed = "".join(
            _source({"source": o.get("text", "")})
            for cell in notebook.cells
            for o in cell.get("outputs", [])
            if o.get("output_type") == "stream"
        )
        assert "adapter from notebook 05" in printed, (
            f"notebook 06 did not use the adapter notebook 05 trained in {workdir / NOTEBOOK_05_RUN}"
        )


# The checks themselves, on notebooks made up here: each must be able to fail.


def _md(text: str) -> dict:
    return {"cell_type": "markdown", "source": text}


def _code(text: str, outputs: list | None = None) -> dict:
    return {"cell_type": "code", "source": text, "outputs": outputs or []}


PNG = {"output_type": "display_data", "data": {"image/png": "iVBOR", "text/plain": "<Figure>"}}


def test_a_blank_figure_is_caught():
    notebook = {
        "cells": [
            _md("The schedule. **What to look at:** the curve falls."),
            _code("x = schedule()\nx"),  # promised by the markdown, shows nothing
            _code("fig = plot_noise_schedule(s)", [PNG]),
            _code("plt.imshow(a)\nplt.show()"),  # blank: the backend was switched
            _code("print(1)"),  # no promise: fine without an image
            _md("**What to look at**: the grid."),
            _code("display(grid)", [PNG]),
            _code("def show(image):\n    plt.imshow(image)\n    plt.show()"),  # defines only
            _code("show(grid)"),  # calls it: blank
        ]
    }
    assert promised_figures(notebook) == [1, 2, 3, 6, 8]
    problems = figure_problems(notebook)
    assert [p.split(" promises")[0] for p in problems] == ["cell 1", "cell 3", "cell 8"]


def test_warnings_and_tracebacks_on_stderr_are_caught():
    def stderr(text):
        return {"output_type": "stream", "name": "stderr", "text": text}

    notebook = {
        "cells": [
            _code("a", [stderr("100%|####| 200/200 [00:10<00:00, loss=0.1]\n")]),
            _code("b", [stderr("tqdm/auto.py:21: TqdmWarning: IProgress not found.\n")]),
            _code("c", [stderr("Loading weights: 100%|####| 196/196\n")]),
            _code("d", [{"output_type": "error", "ename": "ValueError", "evalue": "bad"}]),
            _code("e", [{"output_type": "stream", "name": "stdout", "text": "warning: in stdout"}]),
            _code("f", [stderr("[transformers] Token indices sequence length is longer\n")]),
            _code(
                "g",
                [{"output_type": "display_data", "data": {"text/plain": "Loading weights: 0%"}}],
            ),
        ]
    }
    cells = [p.split(" ")[1] for p in stderr_problems(notebook)]
    assert cells == ["1", "2", "3", "5", "6"]
