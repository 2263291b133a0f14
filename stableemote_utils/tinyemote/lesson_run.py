"""Notebook 05's finished LoRA run on TinyEmote, stored with the course.

Notebook 06 compares the adapter notebook 05 trains. Under the ``tiny`` preset that run is
the ``tiny-quick`` recipe (1,500 steps, seed 0), and it is stored in the package
(``stableemote_utils/weights/tinyemote-openmoji-lora``): the final adapter and the adapters
of the checkpoints notebook 06 draws, with the run's ``summary.json``. So notebook 06 runs
on its own, in seconds rather than after minutes of training, and its stored outputs do not
depend on which notebook ran first. A learner who trained their own run points notebook 06
at it instead.

The folder has the layout of a run folder written by ``stableemote train``
(:func:`stableemote_utils.compare.list_adapter_checkpoints` reads it), without the
optimizer states, random-number states and logs a run keeps for resuming.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors.torch import save_file

from stableemote_utils.files import staged_folder
from stableemote_utils.lora_files import LORA_WEIGHT_NAME, read_lora_file
from stableemote_utils.tinyemote.install import portable_record

LESSON_RUN_DIR = Path(__file__).parent.parent / "weights" / "tinyemote-openmoji-lora"
# The presets whose notebook-05 run is stored, by preset name.
LESSON_RUNS = {"tiny": LESSON_RUN_DIR}
# The checkpoints notebook 06 draws (its checkpoint strip), besides the final adapter.
STORED_CHECKPOINT_STEPS = (750, 1000)


def lesson_run(preset_name: str) -> Path | None:
    """The stored run of notebook 05 for ``preset_name`` (``tiny``), or ``None`` for others.

    ``None`` too when the package was installed without the stored run's files.
    """
    folder = LESSON_RUNS.get(preset_name)
    if folder is None or not (folder / LORA_WEIGHT_NAME).is_file():
        return None
    return folder


def _portable_adapter(source: Path, target: Path) -> None:
    """Copy an adapter file, its tensors unchanged, with absolute paths in its header cut
    to their last part (``/root/.cache/stableemote/tinyemote`` becomes ``tinyemote``)."""
    tensors, header = read_lora_file(source)  # it drops the header's "format"; kept here
    save_file(tensors, str(target), metadata={"format": "pt", **portable_record(header)})


def store_lesson_run(
    run_dir: str | os.PathLike,
    target: str | os.PathLike = LESSON_RUN_DIR,
    checkpoint_steps: tuple[int, ...] = STORED_CHECKPOINT_STEPS,
) -> Path:
    """Store a finished run of notebook 05 (``run_dir``) as the course's copy in ``target``.

    Copies the final adapter, the adapters of ``checkpoint_steps`` and ``summary.json``
    (machine paths made portable), into a staging folder renamed into place, so an
    interrupted copy never leaves half a run. Returns ``target``.

    Raises:
        FileNotFoundError: if the run has no final adapter, no summary or no checkpoint at
            one of ``checkpoint_steps``.
    """
    run, target = Path(run_dir), Path(target)
    needed = [run / LORA_WEIGHT_NAME, run / "summary.json"] + [
        run / "checkpoints" / f"checkpoint-{step:06d}" / LORA_WEIGHT_NAME
        for step in checkpoint_steps
    ]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"not a finished run of notebook 05: missing {missing}")
    with staged_folder(target) as staging:
        staging.mkdir()
        _portable_adapter(run / LORA_WEIGHT_NAME, staging / LORA_WEIGHT_NAME)
        for step in checkpoint_steps:
            name = Path("checkpoints") / f"checkpoint-{step:06d}" / LORA_WEIGHT_NAME
            (staging / name).parent.mkdir(parents=True)
            _portable_adapter(run / name, staging / name)
        summary = portable_record(json.loads((run / "summary.json").read_text()))
        (staging / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        if (target / "README.md").is_file():  # keep the card written for the stored run
            shutil.copyfile(target / "README.md", staging / "README.md")
    return target
