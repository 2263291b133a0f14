"""Notebook 05's stored run: what notebook 06 reads under the tiny preset."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from stableemote_utils.compare import list_adapter_checkpoints
from stableemote_utils.lora_files import LORA_WEIGHT_NAME
from stableemote_utils.tinyemote.lesson_run import (
    STORED_CHECKPOINT_STEPS,
    lesson_run,
    store_lesson_run,
)
from stableemote_utils.training import recipe


def test_the_stored_run_is_notebook_05s_recipe_to_its_end():
    run = lesson_run("tiny")
    assert run is not None and lesson_run("sd15") is None
    quick = recipe("tiny-quick", preset="tiny")
    summary = json.loads((run / "summary.json").read_text())
    for key in ("steps", "batch_size", "rank", "learning_rate", "seed", "target_modules"):
        expected = getattr(quick, key)
        assert summary["config"][key] == (
            list(expected) if isinstance(expected, tuple) else expected
        ), key
    assert summary["config"]["alpha"] == (quick.alpha or quick.rank)  # unset alpha = rank
    steps = [step for step, _ in list_adapter_checkpoints(run)]
    assert steps == [*STORED_CHECKPOINT_STEPS, quick.steps]
    with safe_open(str(run / LORA_WEIGHT_NAME), framework="pt") as f:
        header = f.metadata()
        keys = list(f.keys())
    assert header["rank"] == str(quick.rank) and header["steps"] == str(quick.steps)
    assert header["base_model"] == "tinyemote"  # no folder of the machine that trained it
    assert len(keys) == 82
    # Each checkpoint is a different point of the run, not a copy of the end.
    final = load_file(run / LORA_WEIGHT_NAME)
    for step, path in list_adapter_checkpoints(run)[:-1]:
        earlier = load_file(path)
        assert earlier.keys() == final.keys()
        assert any(not torch.equal(earlier[k], final[k]) for k in final), step


def _fake_run(folder, steps=(750, 1000)):
    tensors = {"unet.a.lora_A.weight": torch.ones(2, 3)}
    for step in steps:
        path = folder / "checkpoints" / f"checkpoint-{step:06d}" / LORA_WEIGHT_NAME
        path.parent.mkdir(parents=True)
        save_file({k: v * step for k, v in tensors.items()}, str(path), metadata={"rank": "2"})
        (path.parent / "optimizer.safetensors").write_bytes(b"state")
    meta = {"rank": "2", "base_model": "/home/someone/.cache/stableemote/tinyemote"}
    save_file(tensors, str(folder / LORA_WEIGHT_NAME), metadata=meta)
    summary = {"steps": 1500, "config": {"model": "/home/someone/.cache/stableemote/tinyemote"}}
    (folder / "summary.json").write_text(json.dumps(summary))


def test_store_lesson_run_keeps_the_tensors_and_drops_machine_paths(tmp_path):
    _fake_run(tmp_path / "run")
    target = store_lesson_run(tmp_path / "run", tmp_path / "stored")
    assert [s for s, _ in list_adapter_checkpoints(target)] == [750, 1000, 1500]
    assert not list(target.rglob("optimizer.safetensors"))
    with safe_open(str(target / LORA_WEIGHT_NAME), framework="pt") as f:
        assert f.metadata()["base_model"] == "tinyemote"
        assert torch.equal(f.get_tensor("unet.a.lora_A.weight"), torch.ones(2, 3))
    assert json.loads((target / "summary.json").read_text())["config"]["model"] == "tinyemote"


def test_store_lesson_run_refuses_an_unfinished_run_and_keeps_the_old_copy(tmp_path):
    _fake_run(tmp_path / "run")
    target = store_lesson_run(tmp_path / "run", tmp_path / "stored")
    before = (target / LORA_WEIGHT_NAME).read_bytes()
    _fake_run(tmp_path / "short", steps=(750,))
    with pytest.raises(FileNotFoundError, match="checkpoint-001000"):
        store_lesson_run(tmp_path / "short", target)
    assert (target / LORA_WEIGHT_NAME).read_bytes() == before
