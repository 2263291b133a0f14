"""Checkpoints that survive a disconnect: written aside, renamed into place, verified on load.

A checkpoint folder ``checkpoint-000500/`` holds the LoRA weights
(``pytorch_lora_weights.safetensors``), the optimizer state (``optimizer.safetensors``),
the random-number states (``rng.safetensors``) and ``training_state.json`` (step, config,
LR-scheduler and loss-scaler state, and a checksum of every other file). It is written
under a temporary name and renamed when complete, so a run killed mid-write leaves the
previous checkpoint as the latest; a folder whose files do not match their checksums is
skipped with a warning.

Each checkpoint records its run's id, so pruning (:func:`prune_checkpoints`) only ever
deletes that run's older, intact checkpoints (see :mod:`stableemote_utils.run_folder` for
the rest of "a folder is one run").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from stableemote_utils.files import explain_write_errors, save_state_dict_atomic

STATE_FILE = "training_state.json"
# What to do when a checkpoint could not be written (the folder is gone by then): continue
# from the newest earlier one, or, for the first, start again (there is nothing to resume).
CHECKPOINT_WRITE_ADVICE = (
    "The checkpoints before it ({newest} the newest) are untouched: free some space, then "
    "continue with --resume latest (in Python: train(config, resume='latest'))."
)
FIRST_CHECKPOINT_WRITE_ADVICE = (
    "It was the run's first checkpoint, so there is none to resume from: free some space, "
    "then run the same command again, which starts from step 0 (in Python: train(config))."
)
LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def optimizer_to_tensors(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON-able rest."""
    tensors, rest = {}, {"param_groups": state["param_groups"], "state": {}}
    for idx, per_param in state["state"].items():
        rest["state"][str(idx)] = {}
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                rest["state"][str(idx)][name] = value
    return tensors, rest


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    """Inverse of :func:`optimizer_to_tensors`."""
    state: dict[int, dict] = {int(k): dict(v) for k, v in rest["state"].items()}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def rng_tensors() -> dict[str, torch.Tensor]:
    """The torch CPU and CUDA generator states, as tensors."""
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda{i}"] = s
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    """Put back the generator states saved by :func:`rng_tensors`."""
    torch.set_rng_state(tensors["cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    folder: str | os.PathLike,
    step: int,
    lora_weights: dict[str, torch.Tensor],
    optimizer_state: dict,
    state: dict,
    keep_last: int | None = None,
    weights_file: str = LORA_WEIGHTS_FILE,
) -> Path:
    """Write ``folder/checkpoint-{step:06d}`` atomically and prune old ones.

    Args:
        folder: the run's checkpoint folder.
        step: optimizer steps done.
        lora_weights: the trained weights (CPU tensors): the LoRA state dict, or the
            whole UNet's in full training.
        optimizer_state: ``optimizer.state_dict()``.
        state: JSON-able training state (config, LR scheduler, scaler, losses ...).
        keep_last: keep this many newest intact checkpoints of the run (``state["run_id"]``)
            and delete its older ones (``None`` keeps all); see :func:`prune_checkpoints`.
        weights_file: file name of the weights inside the checkpoint.

    Returns:
        The checkpoint folder.

    Raises:
        WriteFailedError: the disk is full (or read-only ...); the half-written folder is
            removed and the earlier checkpoints are untouched. The message says to continue
            from them, or, when there are none, to run again.
    """
    folder = Path(folder)
    final = folder / f"checkpoint-{step:06d}"
    tmp = folder / f".checkpoint-{step:06d}.tmp-{os.getpid()}"
    earlier = list_checkpoints(folder)
    advice = (
        CHECKPOINT_WRITE_ADVICE.format(newest=earlier[-1].name)
        if earlier
        else FIRST_CHECKPOINT_WRITE_ADVICE
    )
    with explain_write_errors("the checkpoint", final, advice):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _write_checkpoint_files(
                tmp,
                step,
                lora_weights,
                optimizer_state=optimizer_state,
                state=state,
                weights_file=weights_file,
            )
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        except BaseException:  # a full disk, or a second Ctrl-C: no half-written folder stays
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if keep_last is not None:
        prune_checkpoints(folder, state.get("run_id"), keep_last)
    return final


def _write_checkpoint_files(
    tmp: Path,
    step: int,
    lora_weights: dict[str, torch.Tensor],
    optimizer_state: dict,
    state: dict,
    weights_file: str,
) -> None:
    """Fill the new folder ``tmp`` with a checkpoint's files (see :func:`save_checkpoint`)."""
    tmp.mkdir()
    # Through the one atomic writer: it gives the files the mode open() would (0666 less the
    # umask), where safetensors alone leaves them private (0600).
    save_state_dict_atomic(lora_weights, tmp / weights_file, {})
    opt_tensors, opt_rest = optimizer_to_tensors(optimizer_state)
    save_state_dict_atomic(opt_tensors, tmp / "optimizer.safetensors", {})
    save_state_dict_atomic(rng_tensors(), tmp / "rng.safetensors", {})
    files = (weights_file, "optimizer.safetensors", "rng.safetensors")
    record = dict(
        state,
        step=step,
        optimizer=opt_rest,
        weights_file=weights_file,
        checksums={f: _sha256(tmp / f) for f in files},
    )
    with open(tmp / STATE_FILE, "w") as f:
        json.dump(record, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step in a checkpoint folder's name (``checkpoint-000500`` -> 500)."""
    return int(CHECKPOINT_RE.match(Path(path).name).group(1))


def checkpoint_run_id(path: str | os.PathLike) -> str | None:
    """The id of the run that wrote a checkpoint (``None`` if unreadable or not recorded)."""
    try:
        return json.loads((Path(path) / STATE_FILE).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def prune_checkpoints(folder: str | os.PathLike, run_id: str | None, keep_last: int) -> list[Path]:
    """Delete the oldest checkpoints of run ``run_id``, keeping its ``keep_last`` newest intact ones.

    Only checkpoints that this run wrote (same ``run_id`` in their state) are candidates, and
    only those older than the ``keep_last``-th newest *intact* one: a damaged newest checkpoint
    never pushes out a good one, and checkpoints of other runs or without an id are left alone.

    Returns:
        The folders deleted.
    """
    if run_id is None or keep_last < 1:
        return []
    own = [p for p in list_checkpoints(folder) if checkpoint_run_id(p) == run_id]
    good = 0
    for i in range(len(own) - 1, -1, -1):
        good += verify_checkpoint(own[i]) is None
        if good == keep_last:
            doomed = own[:i]
            for old in doomed:
                shutil.rmtree(old, ignore_errors=True)
            return doomed
    return []


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Finished checkpoint folders, oldest first (temporary folders are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))


def verify_checkpoint(path: str | os.PathLike) -> str | None:
    """``None`` if the checkpoint is complete and intact, else what is wrong with it."""
    path = Path(path)
    try:
        record = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as err:
        return f"{STATE_FILE} unreadable ({type(err).__name__})"
    for name, digest in record.get("checksums", {}).items():
        if not (path / name).exists():
            return f"{name} missing"
        if _sha256(path / name) != digest:
            return f"{name} does not match its checksum"
    if not record.get("checksums"):
        return "no checksums recorded"
    return None


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest intact checkpoint; damaged ones are reported on stderr and skipped."""
    for path in reversed(list_checkpoints(folder)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        print(f"stableemote: skipping damaged checkpoint {path}: {problem}", file=sys.stderr)
    return None


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, dict, dict, dict]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns:
        ``(state, weights, optimizer_state, rng)``.
    """
    path = Path(path)
    state = json.loads((path / STATE_FILE).read_text())
    lora = load_file(path / state.pop("weights_file", LORA_WEIGHTS_FILE))
    optimizer = optimizer_from_tensors(
        load_file(path / "optimizer.safetensors"), state.pop("optimizer")
    )
    rng = load_file(path / "rng.safetensors")
    return state, lora, optimizer, rng
