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

# What a stored picture may differ by from a re-run's. On the machine that stored them the
# pictures come back pixel-identical (same arrays, same matplotlib). On another CPU, float
# rounding in other kernels can move a generated pixel by a level or two and an anti-aliased
# edge by a few more; a different picture (another seed, another figure, a changed plot)
# moves a large share of its pixels by tens of levels. So: the same size, a mean absolute
# difference under one level (of 255), and at most 0.5% of the values off by more than 16.
PICTURE_MEAN_LEVELS = 1.0
PICTURE_FAR_LEVELS = 16
PICTURE_FAR_SHARE = 0.005

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
    state, not every redraw), as nbval reads them; cell metadata loses execution timings;
    the notebook's metadata drops the Python patch version.
    """
    from nbval.plugin import coalesce_streams

    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = coalesce_streams(cell.outputs)
    notebook.metadata["language_info"] = {"name": "python"}


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


def picture_difference(stored: str, rerun: str) -> str | None:
    """``None`` when a re-run's picture matches the stored one, else what differs.

    Both are ``image/png`` outputs (base64). See :data:`PICTURE_MEAN_LEVELS` for the
    tolerance and why.
    """
    import numpy as np

    a, b = decode_picture(stored), decode_picture(rerun)
    if a.shape != b.shape:
        return f"size {a.shape[1]}x{a.shape[0]} stored, {b.shape[1]}x{b.shape[0]} drawn"
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    mean, far = float(diff.mean()), float((diff > PICTURE_FAR_LEVELS).mean())
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
        nbformat.write(notebook, path)
        print(f"{path.name}: {changed} cell(s) with new outputs")
    return status


if __name__ == "__main__":
    names = sys.argv[1:]
    chosen = [p for p in notebooks() if not names or any(n in p.name for n in names)]
    sys.exit(regenerate(chosen))
