"""The notebooks' stored outputs: how they are made, and how a re-run is compared with them.

The notebooks in ``notebooks/`` are committed with the outputs of a full run, so that a
reader sees every figure before running anything, and ``pytest --nbval notebooks/``
proves that a re-run reproduces them. Both sides run the same way, set here once:

* the kernel runs in the notebook's own folder (as Jupyter, Colab and nbval run it), so
  notebook 06 finds the run notebook 05 left in ``notebooks/outputs/``;
* under ``STABLEEMOTE_PRESET=tiny``, on the CPU, in fp32, on one thread, offline
  (:data:`KERNEL_ENV`): the outputs do not depend on a GPU, a precision setting or the
  number of cores of the machine that made them.

``make notebooks`` runs this file: it re-executes every notebook (or those named) in
place and tidies what it stores (:func:`tidy`), so that running it twice in a row
changes no byte. The pictures are compared by :func:`picture_difference`, within the
tolerance stated there.
"""

from __future__ import annotations

import base64
import io
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
CELL_TIMEOUT_S = 1800

# The environment the notebooks' kernel gets, on top of the caller's, for the stored run and
# for nbval's re-run alike. CUDA_VISIBLE_DEVICES hides a GPU (the stored outputs are the
# CPU's); STABLEEMOTE_PRECISION is removed (fp32, the CPU's policy).
KERNEL_ENV = {
    "STABLEEMOTE_PRESET": "tiny",
    "CUDA_VISIBLE_DEVICES": "",
    "OMP_NUM_THREADS": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONHASHSEED": "0",
}
KERNEL_ENV_REMOVED = ("STABLEEMOTE_PRECISION",)

# What a stored picture may differ by from a re-run's, set from the spread measured across
# CPUs (`python tests/notebook_outputs.py --measure --isa=avx2`). On the machine that stored
# them the pictures come back pixel-identical. Re-run on AVX2 code paths (forced on an
# AVX-512 Xeon) most come back identical or within 0.001 levels; the largest spread was a
# heatmap whose colour scale followed its own maximum: mean 0.24 levels, 0.23% of values off
# by more than 16; on an AMD EPYC (AVX2 only) the same heatmap moved by 0.65 levels and
# 0.51%. A different picture (another seed, a flipped or changed plot) moves a large share
# of its values by tens of levels. So: the same size, a mean absolute difference of at most
# one level (of 255), and at most 1% of the values (twice the largest spread measured) off
# by more than 16.
PICTURE_MEAN_LEVELS = 1.0
PICTURE_FAR_LEVELS = 16
PICTURE_FAR_SHARE = 0.01

# What a printed number may differ by: one unit in its last printed digit (0.1 for "9.9",
# 1 for "84%", 0.001 for "1.234e-05"'s mantissa). A value that sits on a rounding boundary
# prints one way on one CPU and the other way on another (measured: a stored "10.0" came
# back " 9.9" on an AVX2-only machine); a real change (another seed, model or formula)
# moves a number by more than that, or moves many. The words around the numbers are
# compared exactly, and so is the padding a number takes in a table column only as part of
# the number ("10.0" and " 9.9" fill the same width).
NUMBER = re.compile(r"[ \t]*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")

SANITIZER = NOTEBOOK_DIR / "nbval_sanitize.cfg"
IGNORE_MARK = "NBVAL_IGNORE_OUTPUT"
# Output fields that say nothing about what the cell printed or drew.
_NOT_COMPARED = {"metadata", "execution_count", "application/vnd.jupyter.widget-view+json"}


def notebooks() -> list[Path]:
    """The course's notebooks, in order."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def kernel_env(base: dict | None = None) -> dict:
    """``base`` (default: this process's environment) with :data:`KERNEL_ENV` applied."""
    env = dict(os.environ if base is None else base)
    env.update(KERNEL_ENV)
    for name in KERNEL_ENV_REMOVED:
        env.pop(name, None)
    return env


def text_of(value) -> str:
    """A notebook field stored as one string or as a list of lines, as one string."""
    return value if isinstance(value, str) else "".join(value)


def tidy(notebook) -> None:
    """Make a freshly executed notebook's stored form depend on its outputs alone.

    Streams are joined and keep only what a terminal would show (a progress bar's last
    state, not every redraw), as nbval reads them; pictures are stored as compactly as they
    losslessly go (:func:`compact_png`); cell metadata loses execution timings; the
    notebook's metadata drops the Python patch version.
    """
    from nbval.plugin import coalesce_streams

    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = coalesce_streams(cell.outputs)
            for output in cell.outputs:
                data = output.get("data", {})
                if "image/png" in data:
                    data["image/png"] = compact_png(data["image/png"])
    notebook.metadata["language_info"] = {"name": "python"}


def compact_png(data: str) -> str:
    """A stored ``image/png`` (base64) re-encoded with the smallest of Pillow's lossless
    settings: every pixel stays as drawn (the notebooks' pictures are about 5% smaller),
    and a second pass gives the same bytes. Returns ``data`` itself if that is smaller."""
    from PIL import Image

    picture = Image.open(io.BytesIO(base64.b64decode(data.replace("\n", ""))))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    smaller = base64.b64encode(buffer.getvalue()).decode()
    return smaller if len(smaller) < len(data.replace("\n", "")) else data


def _last_digit_unit(token: str) -> float:
    """One unit in the last printed digit of a number as printed: 0.1 for ``"9.9"``."""
    mantissa, _, exponent = token.strip().lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def numbers_agree(stored: str, rerun: str) -> bool:
    """True when two printed numbers differ by at most one unit in the last printed digit
    (of the coarser of the two; see :data:`NUMBER`). A zero printed in e-notation
    (``0.0e+00``, a difference that came out exactly zero) matches only zero: its last
    digit says nothing about the size of the numbers around it."""
    if "e" in (stored + rerun).lower() and 0.0 in (float(stored), float(rerun)):
        return float(stored) == float(rerun)
    unit = max(_last_digit_unit(stored), _last_digit_unit(rerun))
    return abs(float(stored) - float(rerun)) <= unit * (1 + 1e-9)


def reconcile_numbers(stored: str, rerun: str) -> str:
    """``rerun`` with each number that agrees with ``stored``'s (:func:`numbers_agree`)
    replaced by the stored one's text.

    The two must read the same around their numbers; if they do not, ``rerun`` comes back
    unchanged. So comparing the result with ``stored`` passes when only last-digit changes
    differ, and a diff of the two shows only the numbers that moved further, or the words.
    """
    if not isinstance(stored, str) or not isinstance(rerun, str) or stored == rerun:
        return rerun
    words_stored, words_rerun = NUMBER.split(stored), NUMBER.split(rerun)
    if words_stored != words_rerun:
        return rerun
    kept = [
        old if numbers_agree(old, new) else new
        for old, new in zip(NUMBER.findall(stored), NUMBER.findall(rerun), strict=True)
    ]
    pieces = [words_rerun[0]]
    for number, words in zip(kept, words_rerun[1:], strict=True):
        pieces += [number, words]
    return "".join(pieces)


def reconcile_outputs(stored, rerun) -> list:
    """A cell's re-run ``outputs`` with every text field reconciled with the stored one's
    (:func:`reconcile_numbers`); outputs are paired in order, field by field."""
    import copy

    if len(stored) != len(rerun):
        return rerun
    result = []
    for old, new in zip(stored, rerun, strict=True):
        new = copy.deepcopy(new)
        for key, value in list(new.items()):
            if key == "data" and isinstance(value, dict):
                for name, text in value.items():
                    if not name.startswith("image/") and name in old.get("data", {}):
                        value[name] = _reconciled_field(old["data"][name], text)
            elif key in ("text",) and key in old:
                new[key] = _reconciled_field(old[key], value)
        result.append(new)
    return result


def _reconciled_field(stored, rerun):
    """One stored field (a string or a list of lines) reconciled, in the re-run's form."""
    if isinstance(rerun, list):
        return reconcile_numbers(text_of(stored), text_of(rerun)).splitlines(keepends=True)
    return reconcile_numbers(text_of(stored), rerun) if isinstance(rerun, str) else rerun


def sanitize(text: str) -> str:
    """``text`` with the sanitiser's replacements (``notebooks/nbval_sanitize.cfg``) applied."""
    from nbval.plugin import get_sanitize_patterns

    for regex, replacement in get_sanitize_patterns(SANITIZER.read_text()):
        text = re.sub(regex, replacement, text)
    return text


def _comparable(outputs) -> list:
    """What nbval compares of ``outputs``: every text field, sanitised; no pictures."""
    seen = []
    for output in outputs:
        fields = {}
        for key, value in output.items():
            if key in _NOT_COMPARED:
                continue
            items = value.items() if key == "data" else [(key, value)]
            for name, text in items:
                if name not in _NOT_COMPARED and not name.startswith("image/"):
                    fields[name] = sanitize(text_of(text)) if isinstance(text, str | list) else text
        seen.append(fields)
    return seen


def same_outputs(stored, rerun) -> bool:
    """True when a re-run's outputs pass the comparison ``pytest --nbval`` makes."""
    rerun = reconcile_outputs(stored, rerun)
    return _comparable(stored) == _comparable(rerun) and picture_problem(stored, rerun) is None


def keep_unchanged(stored, rerun) -> int:
    """Keep ``stored``'s outputs in ``rerun`` wherever the re-run reproduced them.

    A cell whose source is unchanged and whose new outputs pass nbval's comparison (or that
    is marked ``NBVAL_IGNORE_OUTPUT`` and made outputs of the same kinds) keeps the stored
    outputs, so that re-running the notebooks changes no byte of the file. Returns how many
    cells took new outputs.
    """
    changed = 0
    for old, new in zip(stored.cells, rerun.cells, strict=True):
        if new.cell_type != "code":
            continue
        same_kinds = [o.get("output_type") for o in old.outputs] == [
            o.get("output_type") for o in new.outputs
        ]
        if old.source == new.source and (
            same_outputs(old.outputs, new.outputs) or (IGNORE_MARK in new.source and same_kinds)
        ):
            new.outputs, new.execution_count = old.outputs, old.execution_count
        else:
            changed += 1
    return changed


def number_cells(notebook) -> None:
    """Number the code cells 1, 2, 3, ... in order, as one top-to-bottom run does.

    Kept outputs keep their old counts in :func:`keep_unchanged`; a cell added since the last
    run that prints nothing would keep none. Numbering afresh gives every cell its count and
    is the same on every run, so storing twice still changes no byte.
    """
    code = (cell for cell in notebook.cells if cell.cell_type == "code")
    for count, cell in enumerate(code, start=1):
        cell.execution_count = count


def execute(path: Path, env: dict | None = None, cwd: Path | None = None):
    """Run one notebook top to bottom; returns ``(notebook, error text or None)``.

    ``env`` defaults to :func:`kernel_env`; ``cwd`` to the notebook's own folder.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3", record_timing=False
    )
    error = None
    try:
        client.execute(env=kernel_env() if env is None else env, cwd=str(cwd or path.parent))
    except CellExecutionError as err:
        error = str(err)
    return notebook, error


def decode_picture(data: str):
    """A stored ``image/png`` (base64 text) as an ``(H, W, C)`` uint8 array."""
    import numpy as np
    from PIL import Image

    raw = base64.b64decode(data.replace("\n", ""))
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGBA"))


def picture_spread(stored: str, rerun: str) -> tuple[float, float] | None:
    """How far a re-run's picture is from the stored one: the mean absolute difference in
    levels (of 255) and the share of values off by more than :data:`PICTURE_FAR_LEVELS`;
    ``None`` when their sizes differ. Both are ``image/png`` outputs (base64)."""
    import numpy as np

    a, b = decode_picture(stored), decode_picture(rerun)
    if a.shape != b.shape:
        return None
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float(diff.mean()), float((diff > PICTURE_FAR_LEVELS).mean())


def picture_difference(stored: str, rerun: str) -> str | None:
    """``None`` when a re-run's picture matches the stored one, else what differs.

    Both are ``image/png`` outputs (base64). See :data:`PICTURE_MEAN_LEVELS` for the
    tolerance and why.
    """
    spread = picture_spread(stored, rerun)
    if spread is None:
        a, b = decode_picture(stored), decode_picture(rerun)
        return f"size {a.shape[1]}x{a.shape[0]} stored, {b.shape[1]}x{b.shape[0]} drawn"
    mean, far = spread
    if mean > PICTURE_MEAN_LEVELS or far > PICTURE_FAR_SHARE:
        return (
            f"mean difference {mean:.2f} levels (at most {PICTURE_MEAN_LEVELS}), "
            f"{far:.2%} of values off by more than {PICTURE_FAR_LEVELS} "
            f"(at most {PICTURE_FAR_SHARE:.1%})"
        )
    return None


def pictures(outputs) -> list[str]:
    """The ``image/png`` data of a cell's outputs, in order."""
    return [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]


def picture_problem(stored, rerun) -> str | None:
    """``None`` when a cell's re-run draws its stored pictures again (see
    :func:`picture_difference`), else what differs. Both are a cell's outputs."""
    old, new = pictures(stored), pictures(rerun)
    if len(old) != len(new):
        return f"{len(old)} stored picture(s), {len(new)} drawn by the re-run"
    for index, (a, b) in enumerate(zip(old, new, strict=True)):
        problem = picture_difference(a, b)
        if problem:
            return f"picture {index + 1} differs: {problem}"
    return None


def regenerate(paths: list[Path]) -> int:
    """Execute ``paths`` in place (``make notebooks``); returns a process exit status."""
    import nbformat

    status = 0
    for path in paths:
        stored = nbformat.read(path, as_version=4)
        notebook, error = execute(path)
        if error is not None:
            print(f"{path.name}: a cell failed; the stored notebook is left as it was.\n{error}")
            status = 1
            continue
        tidy(notebook)
        if len(stored.cells) == len(notebook.cells):
            changed = keep_unchanged(stored, notebook)
        else:
            changed = sum(cell.cell_type == "code" for cell in notebook.cells)
        number_cells(notebook)
        nbformat.write(notebook, path)
        print(f"{path.name}: {changed} cell(s) with new outputs")
    return status


def measure_spread(paths: list[Path], env: dict | None = None) -> int:
    """Re-run ``paths`` without storing anything and print how far each re-run output is
    from the stored one: every picture's spread (:func:`picture_spread`), every text output
    that differs before the number tolerance, and whether it passes after. This is how the
    picture tolerance was measured across instruction sets (``--isa avx2``). Returns 1 when
    any cell fails the comparison ``pytest --nbval`` makes, else 0."""
    import nbformat

    status, worst = 0, (0.0, 0.0)
    for path in paths:
        stored = nbformat.read(path, as_version=4)
        notebook, error = execute(path, env=env)
        if error is not None:
            print(f"{path.name}: a cell failed:\n{error[-2000:]}")
            status = 1
            continue
        tidy(notebook)
        for index, (old, new) in enumerate(zip(stored.cells, notebook.cells, strict=True)):
            if old.cell_type != "code" or IGNORE_MARK in old.source:
                continue
            for number, (a, b) in enumerate(
                zip(pictures(old.outputs), pictures(new.outputs), strict=False)
            ):
                spread = picture_spread(a, b)
                if spread is None:
                    print(f"{path.name} cell {index} picture {number + 1}: another size")
                    continue
                worst = (max(worst[0], spread[0]), max(worst[1], spread[1]))
                if spread != (0.0, 0.0):
                    print(
                        f"{path.name} cell {index} picture {number + 1}: mean "
                        f"{spread[0]:.3f} levels, {spread[1]:.3%} off by > {PICTURE_FAR_LEVELS}"
                    )
            same_text = _comparable(old.outputs) == _comparable(new.outputs)
            passes = same_outputs(old.outputs, new.outputs)
            if not same_text or not passes:
                verdict = "passes within the number tolerance" if passes else "FAILS"
                print(f"{path.name} cell {index}: text differs; {verdict}")
            status |= not passes
    print(
        f"largest picture spread: mean {worst[0]:.3f} levels, {worst[1]:.3%} off by more "
        f"than {PICTURE_FAR_LEVELS}"
    )
    return status


# The kernel's environment for a run on AVX2 code paths on a machine that has more: ATen's
# vector kernels, oneDNN (convolutions, bf16 matmuls) and MKL's BLAS each capped at AVX2.
# On an AVX2 machine this is its native run; other processors ignore the variables.
AVX2_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}


if __name__ == "__main__":
    args = sys.argv[1:]
    measure = "--measure" in args
    isa_env = kernel_env({**os.environ, **AVX2_ENV}) if "--isa=avx2" in args else None
    names = [a for a in args if not a.startswith("--")]
    chosen = [p for p in notebooks() if not names or any(n in p.name for n in names)]
    sys.exit(measure_spread(chosen, isa_env) if measure else regenerate(chosen))
