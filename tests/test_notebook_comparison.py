"""What ``pytest --nbval notebooks/`` counts as "the same output": the comparison itself.

Stored outputs are made on one CPU and re-run on others (see ``notebooks/conftest.py``):
a printed number may move by one unit in its last printed digit, a picture by the
tolerance measured across instruction sets (``tests/notebook_outputs.py``). Anything more,
another picture, a missing one or other words, must fail, with nbval's diff. The last test
runs real ``pytest --nbval`` on a notebook made up here, through the course's own conftest.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
from notebook_outputs import (
    NUMBER,
    keep_unchanged,
    number_cells,
    numbers_agree,
    reconcile_numbers,
    reconcile_outputs,
    same_outputs,
)
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "stored, rerun",
    [
        ("10.0", " 9.9"),
        ("0.2431", "0.2430"),
        ("84", "85"),
        ("1.5e-05", "1.6e-05"),
        ("-0.0", "0.0"),
        ("9.9e-07", "1.0e-06"),
        ("0.0e+00", "0.0e+00"),
    ],
)
def test_a_last_digit_change_is_the_same_number(stored, rerun):
    assert numbers_agree(stored.strip(), rerun.strip())


@pytest.mark.parametrize(
    "stored, rerun",
    [
        ("10.0", "9.8"),
        ("0.2431", "0.2433"),
        ("84", "86"),
        ("1.5e-05", "1.7e-05"),
        # A zero printed in e-notation is exactly zero: its "last digit" (0.1) is no scale.
        ("0.0e+00", "7.2e-07"),
        ("7.2e-07", "0.0e+00"),
    ],
)
def test_two_units_in_the_last_digit_is_another_number(stored, rerun):
    assert not numbers_agree(stored, rerun)


def test_numbers_are_tokens_with_their_padding():
    assert NUMBER.findall("row's  9.9 and 84%") == ["  9.9", " 84"]


def test_only_numbers_within_tolerance_are_taken_back():
    stored = "the other row's 10.0; loss 0.2431 at step 750"
    assert reconcile_numbers(stored, "the other row's  9.9; loss 0.2430 at step 750") == stored
    # The number that moved further stays, so a diff shows it and nothing else.
    assert (
        reconcile_numbers(stored, "the other row's  9.9; loss 0.2500 at step 750")
        == "the other row's 10.0; loss 0.2500 at step 750"
    )
    # Other words: nothing is taken back.
    assert reconcile_numbers(stored, "the same row's  9.9; loss 0.2431 at step 750") == (
        "the same row's  9.9; loss 0.2431 at step 750"
    )


def _stream(text):
    return {"output_type": "stream", "name": "stdout", "text": text}


def _png(array) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _picture(array):
    return {"output_type": "display_data", "data": {"image/png": _png(array), "text/plain": "<I>"}}


def test_outputs_are_compared_within_tolerance_and_no_further():
    assert same_outputs([_stream("mean 10.0\n")], [_stream("mean  9.9\n")])
    assert not same_outputs([_stream("mean 10.0\n")], [_stream("mean  9.7\n")])
    assert not same_outputs([_stream("mean 10.0\n")], [_stream("median 10.0\n")])
    rerun = [_stream(["mean  9.9\n", "std 1.01\n"])]  # stored as a list of lines
    assert reconcile_outputs([_stream("mean 10.0\nstd 1.00\n")], rerun)[0]["text"] == [
        "mean 10.0\n",
        "std 1.00\n",
    ]


def test_a_flipped_or_missing_picture_is_another_output():
    gradient = np.tile(np.arange(0, 256, 2, dtype=np.uint8), (64, 1))
    picture = np.stack([gradient] * 3, axis=-1)
    assert same_outputs([_picture(picture)], [_picture(picture)])
    assert not same_outputs([_picture(picture)], [_picture(picture[:, ::-1])])
    assert not same_outputs([_picture(picture), _picture(picture)], [_picture(picture)])


# The notebook for the end-to-end check: each cell's stored output is set by hand below.
CELLS = {
    "within": 'print(f"the other row\'s {9.96:.1f}")',
    "beyond": "print(f'loss {0.2431:.4f}')",
    "flipped": (
        "import numpy as np\nfrom IPython.display import display\nfrom PIL import Image\n"
        "g = np.tile(np.arange(0, 256, 2, dtype=np.uint8), (64, 1))\n"
        "display(Image.fromarray(np.stack([g] * 3, axis=-1)))"
    ),
    "missing": "display(Image.fromarray(np.stack([g] * 3, axis=-1)))",
}


def test_nbval_passes_a_last_digit_change_and_fails_real_changes_with_a_diff(tmp_path):
    import nbformat
    from notebook_outputs import execute, tidy

    folder = tmp_path / "notebooks"
    folder.mkdir()
    for name in ("conftest.py", "nbval_sanitize.cfg"):
        shutil.copy(ROOT / "notebooks" / name, folder / name)
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    path = folder / "made_up.ipynb"
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in CELLS.values()]
    nbformat.write(notebook, path)
    executed, error = execute(path)
    assert error is None, error
    tidy(executed)
    within, beyond, flipped, missing = executed.cells
    # What another CPU would print: one unit off in the last digit.
    within.outputs[0]["text"] = "the other row's  9.9\n"
    beyond.outputs[0]["text"] = "loss 0.2445\n"  # 14 units off: another number
    stored = flipped.outputs[0]["data"]["image/png"]
    flipped.outputs[0]["data"]["image/png"] = _png(
        np.asarray(Image.open(io.BytesIO(base64.b64decode(stored))))[:, ::-1].copy()
    )
    missing.outputs = missing.outputs * 2  # the stored run drew two pictures
    nbformat.write(executed, path)

    report = tmp_path / "report.xml"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--nbval", str(path), "-k", "Cell",
         "-p", "no:cacheprovider", f"--junitxml={report}", "-o", "junit_logging=all"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    cases = {
        case.get("name"): case for case in ElementTree.parse(report).getroot().iter("testcase")
    }
    failed = {name: case.find("failure") for name, case in cases.items()}
    assert list(failed) == ["Cell 0", "Cell 1", "Cell 2", "Cell 3"], run.stdout[-3000:]
    assert failed["Cell 0"] is None, failed["Cell 0"].text
    assert "0.2445" in failed["Cell 1"].text and "0.2431" in failed["Cell 1"].text
    assert "picture 1 differs" in failed["Cell 2"].text
    assert "dissimilar number of outputs" in failed["Cell 3"].text  # nbval's own diff


def test_stored_pictures_are_compacted_without_changing_a_pixel():
    from notebook_outputs import compact_png, decode_picture

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    flat = np.full((48, 64, 3), 200, dtype=np.uint8)
    picture = np.concatenate([noise, flat], axis=1)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG", compress_level=1)
    stored = base64.b64encode(buffer.getvalue()).decode()
    compact = compact_png(stored)
    assert len(compact) < len(stored)
    assert np.array_equal(decode_picture(compact), decode_picture(stored))
    assert compact_png(compact) == compact  # make notebooks twice changes no byte


def test_a_new_cell_that_prints_nothing_is_numbered_when_stored():
    import nbformat

    def notebook(counts):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(f"x = {i}") for i in range(3)]
        for cell, count in zip(nb.cells, counts, strict=True):
            cell.execution_count = count
        return nb

    stored = notebook([1, None, 2])  # the middle cell was added by hand, never run
    rerun = notebook([1, 2, 3])
    keep_unchanged(stored, rerun)
    assert rerun.cells[1].execution_count is None  # kept from the stored file
    number_cells(rerun)
    assert [c.execution_count for c in rerun.cells] == [1, 2, 3]
