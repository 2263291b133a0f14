"""Two CPU processes through `accelerate launch` (gloo): each trains on its shard, one saves."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def launch_two(program: str | Path, *args: str) -> list[str]:
    """``accelerate launch`` of ``program args`` on two CPU processes (gloo)."""
    bindir = Path(sys.executable).parent
    accelerate = shutil.which("accelerate", path=str(bindir)) or shutil.which("accelerate")
    assert accelerate, "accelerate must be installed"
    return [
        accelerate,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(program),
        *args,
    ]


@pytest.mark.slow
def test_two_process_cpu_run_saves_exactly_one_adapter(tmp_path, tiny_model_dir, short_run):
    stableemote = shutil.which("stableemote", path=str(Path(sys.executable).parent))
    assert stableemote, "the stableemote command must be installed"
    out = tmp_path / "ddp"
    cmd = launch_two(
        stableemote,
        *short_run.argv(out, "--recipe", "tiny-quick", preset="tiny", max_train_examples=16),
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["pytorch_lora_weights.safetensors"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "checkpoint-000002",
        "checkpoint-000004",
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_processes"] == 2
    assert proc.stdout.count("adapter:") == 1  # only the main process reports
    assert "stopped at step" not in proc.stdout


@pytest.mark.slow
def test_sigterm_to_accelerate_launch_checkpoints_the_step_and_resumes_identically(
    tmp_path, tiny_model_dir, short_run, slow_trainer, sigterm_once_checkpointed
):
    """SIGTERM to the launcher (a scheduler's time limit): it passes SIGTERM to both
    processes, which finish the step together, write one checkpoint and stop."""
    from safetensors.torch import load_file

    from stableemote_utils.checkpoints import latest_checkpoint

    def run_args(folder, *extra):
        return short_run.argv(folder, *extra, preset="tiny-random", steps=6, max_train_examples=16)

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    folder = tmp_path / "stopped"
    # Steps from 3 on are slow: the signal, sent once step 2 is checkpointed, comes in step 3.
    cmd = launch_two(slow_trainer, *run_args(folder))
    _, err = sigterm_once_checkpointed(cmd, {**env, "SLOW_FROM": "3", "SLOW_S": "3"}, folder)
    # The launcher's own exit status and report are torch.distributed's; ours is the line
    # the main process prints, and the checkpoint.
    assert err.count("stableemote: terminated: stopped after step 3") == 1, err[-4000:]
    assert latest_checkpoint(folder / "checkpoints").name == "checkpoint-000003"
    assert not list((folder / "checkpoints").glob(".*tmp*"))
    assert not (folder / "pytorch_lora_weights.safetensors").exists()

    for out, extra in ((folder, ("--resume", "latest")), (tmp_path / "straight", ())):
        proc = subprocess.run(
            launch_two(slow_trainer, *run_args(out, *extra)),
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
    got = load_file(folder / "pytorch_lora_weights.safetensors")
    want = load_file(tmp_path / "straight" / "pytorch_lora_weights.safetensors")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in got), "resumed != uninterrupted"
