"""The numeric notebooks again, in half precision, where only their asserts count.

The stored outputs (fp32, the CPU's precision) are checked by ``pytest --nbval notebooks/``
(``make test`` runs it; see ``notebooks/conftest.py``). A GPU learner runs the same cells
in fp16 or bf16, so the notebooks whose config cell reads ``STABLEEMOTE_PRECISION`` run
once more here in the precision named in :data:`NOTEBOOK_PRECISION`, the half-precision
path a GPU takes (same autocast, same accelerate wrapper), which a CPU runs too. Each runs
top to bottom in a scratch folder (``notebooks/`` and its stored outputs stay untouched);
then:

* no cell raises (nbclient stops at the first error);
* every cell that promises a figure has an image among its outputs: a cell calling
  ``plt.show()``, ``display(...)``, a ``plot_*`` helper or a function the notebook defined
  to draw, or the first code cell after markdown that says "What to look at" (a helper
  that switched matplotlib's backend made such cells blank);
* no cell's stderr holds a warning, a library's log line, or a traceback, and no cell shows
  a "Loading weights" bar (on stderr, or as a widget).

The same figure and stderr checks run on the stored outputs in ``test_notebooks_stored``.

These whole notebooks run in bf16 only where this CPU multiplies bf16 matrices in hardware
(AVX512-BF16 or AMX: :func:`cpu_has_fast_bf16`). Elsewhere (most laptops and CI runners:
AVX2 x86, where torch emulates bf16 and a 512 x 512 matmul is 14 to 40 times slower than
in fp32) a bf16 notebook would take half an hour or more, so they are skipped with that
reason, and the short bf16 runs cover the paths they take: training with autocast, its
checkpoint, its validation grid (the sampler and the half-precision VAE after accelerate's
wrapper) and a resume (``test_training_precision``), and LoRA weights kept fp32 in a
half-precision UNet (``test_lora``).
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest
from notebook_outputs import execute, kernel_env, notebooks, text_of

ROOT = Path(__file__).resolve().parent.parent
# Per notebook: the STABLEEMOTE_PRECISION its kernel gets for this second run.
# 05 is not here: its whole run in bf16 costs 5 minutes or more even with bf16 hardware
# (1,500 training steps, then measurements), and its training step is the package's
# (the notebook asserts the two equal), which the short bf16 runs of
# test_training_precision drive through autocast, a checkpoint, the validation grid (the
# sampler and the half-precision VAE behind accelerate's wrapper) and a resume.
NOTEBOOK_PRECISION: dict[str, str] = {
    "03_unet_denoising_loop": "bf16",
    "04_lora_injection": "bf16",
}
NOTEBOOKS = [p for p in notebooks() if p.stem in NOTEBOOK_PRECISION]

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
    return text_of(cell.get("source", ""))


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


def cpu_has_fast_bf16(size: int = 256, repeats: int = 3) -> bool:
    """True when a ``(size, size)`` bf16 matmul takes at most twice as long as in fp32 here.

    With bf16 hardware it is faster than fp32 (measured: 4 ms against 14 ms on AMX); without
    it, many times slower (1,238 ms against 30 ms with oneDNN held to AVX2). The margin
    either side is wide, so the answer does not depend on the load of the machine.
    """
    import time

    import torch

    def seconds(dtype) -> float:
        a = torch.randn(size, size).to(dtype)
        a @ a
        start = time.perf_counter()
        for _ in range(repeats):
            a @ a
        return time.perf_counter() - start

    return seconds(torch.bfloat16) <= 2 * seconds(torch.float32)


@pytest.mark.slow
# Each notebook is an xdist group of its own: they run in scratch folders of their own.
@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.xdist_group(f"half-{p.stem}")) for p in NOTEBOOKS],
    ids=[p.stem for p in NOTEBOOKS],
)
def test_notebook_runs_in_half_precision(path, tmp_path_factory):
    if NOTEBOOK_PRECISION[path.stem] == "bf16" and not cpu_has_fast_bf16():
        pytest.skip("no bf16 hardware on this CPU: the short bf16 runs cover these paths")
    workdir = tmp_path_factory.mktemp(path.stem)
    env = kernel_env()
    env["STABLEEMOTE_PRECISION"] = NOTEBOOK_PRECISION[path.stem]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    notebook, error = execute(path, env=env, cwd=workdir)
    assert error is None, f"{path.name} failed in {env['STABLEEMOTE_PRECISION']}:\n{error[-3000:]}"
    problems = figure_problems(notebook) + stderr_problems(notebook)
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


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
