"""A run folder belongs to one run: its lock, the checkpoint it continues, what is set aside.

:func:`run_lock` keeps a second process out while a run trains (the holder's PID is named;
the operating system drops the lock of a killed process). :func:`resolve_resume` finds the
checkpoint to continue and :func:`check_resume_config` refuses one made with settings that
change the result. :func:`claim_run_folder` makes ``checkpoints/`` hold only this run's
timeline: a fresh run refuses a used folder (unless told to overwrite), and checkpoints
that are not part of the timeline are moved to ``set-aside/`` by :func:`set_aside`, never
deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from stableemote_utils.checkpoints import (
    checkpoint_step,
    latest_checkpoint,
    list_checkpoints,
    verify_checkpoint,
)
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.training_config import option_name

# Checkpoints moved out of a run's way (an abandoned timeline, a replaced run) go here.
SET_ASIDE_DIR = "set-aside"
RUN_LOCK_FILE = ".stableemote-run.lock"
RUN_OWNER_FILE = ".stableemote-run.owner"

# Settings a resumed run may change: they do not change the trained weights (or, for
# steps, redraw the LR schedule on purpose). Every other TrainConfig field must match.
RESUME_MAY_CHANGE = frozenset(
    {
        "preset",  # resolved into model, dataset and sizes, which are compared
        "output_dir",
        "steps",
        "precision",  # the precision actually used is compared instead
        "device",
        "checkpoint_every",
        "keep_checkpoints",
        "validate_every",
        "validation_prompts",
        "grid_at_step_0",
        "validation_seed",
        "validation_steps",
        "validation_guidance",
        "heldout_limit",
        "report_to",
        "log_every",
        "gradient_checkpointing",
        "channels_last",
        "compile",
        "push_to_hub",
        "stop_after_steps",
        "progress_bar",
    }
)
# mixed_precision_for's names -> the --precision value that selects it.
_PRECISION_FLAG = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}


def resolve_resume(resume: str | None, checkpoint_dir: Path) -> Path | None:
    """The checkpoint ``resume`` names: ``None`` (a fresh run, or ``"latest"`` with no intact
    checkpoint), the newest intact one for ``"latest"``, or the folder given, verified."""
    if resume is None:
        return None
    if resume == "latest":
        found = latest_checkpoint(checkpoint_dir)
        if found is None:
            print(
                f"stableemote: no checkpoint in {checkpoint_dir}; starting from step 0",
                file=sys.stderr,
            )
        return found
    path = Path(resume).expanduser()
    problem = verify_checkpoint(path) if path.is_dir() else "not a folder"
    if problem:
        raise StableEmoteError(
            f"Cannot resume from '{resume}': {problem}. Pass --resume latest to pick the newest intact "
            f"checkpoint in {checkpoint_dir}, or a checkpoint-NNNNNN folder."
        )
    return path


def check_resume_config(saved_state: dict, config: dict, precision: str) -> None:
    """Refuse to resume when a setting that changes the trained weights differs.

    Args:
        saved_state: the checkpoint's training state (its ``config``, ``precision``).
        config: the new run's ``TrainConfig.to_dict()``, defaults resolved.
        precision: the precision the new run computes in (accelerate's name).
    """
    saved, now = saved_state["config"], config
    diff = [
        f"{k}: {saved[k]!r} -> {now[k]!r} ({option_name(k)})"
        for k in now
        if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != now[k]
    ]
    if saved_state.get("precision") not in (None, precision):
        diff.append(
            f"precision: {saved_state['precision']!r} -> {precision!r} (--precision; pass "
            f"--precision {_PRECISION_FLAG[saved_state['precision']]} to continue)"
        )
    if diff:
        raise StableEmoteError(
            "The checkpoint was made with other settings, so resuming would not continue the same run: "
            + "; ".join(diff)
            + ". Use the original settings, or a new --output-dir to start a fresh run."
        )


def claim_run_folder(
    out: Path, ckpt_dir: Path, resume: str | None, resume_from: Path | None, overwrite: bool
) -> None:
    """Make ``ckpt_dir`` hold only this run's timeline, moving (never deleting) the rest.

    A fresh run refuses a folder with checkpoints unless ``overwrite``; a resumed run moves
    aside every checkpoint newer than the one it continues (an abandoned branch, or
    damaged ones), so that "latest" means this timeline.
    """
    existing = list_checkpoints(ckpt_dir)
    if resume is None:
        if existing and not overwrite:
            raise StableEmoteError(
                f"The run folder '{out}' already holds the checkpoints of a run (newest: "
                f"{existing[-1].name}). Continue that run with --resume latest, start it over "
                "with --overwrite (its checkpoints are moved to set-aside/), or choose a new "
                "--output-dir."
            )
        moved, why = existing, "replaced-run"
    else:
        start = 0 if resume_from is None else checkpoint_step(resume_from)
        moved, why = [p for p in existing if checkpoint_step(p) > start], f"after-step-{start}"
    target = set_aside(moved, out, why)
    if target is not None:
        print(
            f"stableemote: moved {len(moved)} checkpoint(s) that are not part of this run's "
            f"timeline ({', '.join(p.name for p in moved[:3])}{', ...' if len(moved) > 3 else ''}) "
            f"to {target}",
            file=sys.stderr,
        )


def set_aside(paths: list[Path], run_folder: str | os.PathLike, reason: str) -> Path | None:
    """Move checkpoint folders out of the way into ``run_folder/set-aside/<time>-<reason>/``.

    Nothing is deleted: the folders keep their names, so any of them can be resumed from
    with ``--resume <path>``. Returns the folder they went to (``None`` if none moved).
    """
    if not paths:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = Path(run_folder) / SET_ASIDE_DIR / f"{stamp}-{reason}"
    n = 1
    while target.exists():
        n += 1
        target = Path(run_folder) / SET_ASIDE_DIR / f"{stamp}-{reason}-{n}"
    target.mkdir(parents=True)
    for path in paths:
        path.rename(target / path.name)
    return target


@contextlib.contextmanager
def run_lock(run_folder: str | os.PathLike):
    """Hold the run folder for one run at a time, for as long as the ``with`` block lasts.

    An exclusive ``filelock`` on ``run_folder/.stableemote-run.lock``; the holder's PID, host
    and start time go into ``.stableemote-run.owner`` so a refused run can name it. The
    operating system drops the lock when its process ends, however it ends, so a lock left
    by a killed run does not block the next one.

    Raises:
        StableEmoteError: if another process holds the folder.
    """
    from filelock import FileLock, Timeout

    folder = Path(run_folder)
    owner_file = folder / RUN_OWNER_FILE
    lock = FileLock(str(folder / RUN_LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            owner = json.loads(owner_file.read_text())
            who = f"PID {owner['pid']} on {owner['host']}, started {owner['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            who = "a process that has not written its PID yet"
        raise StableEmoteError(
            f"Another run is training into '{folder}' ({who}). Wait for it to finish or stop "
            "it, or choose another --output-dir: two runs in one folder would overwrite each "
            "other's checkpoints and adapter."
        ) from None
    try:
        owner_file.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                }
            )
        )
        yield folder
    finally:
        owner_file.unlink(missing_ok=True)
        lock.release()
