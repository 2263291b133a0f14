"""Two CPU processes through `accelerate launch` (gloo): each trains on its shard, one saves."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_two_process_cpu_run_saves_exactly_one_adapter(tmp_path, tiny_model_dir, short_run):
    bindir = Path(sys.executable).parent
    accelerate = shutil.which("accelerate", path=str(bindir)) or shutil.which("accelerate")
    stableemote = shutil.which("stableemote", path=str(bindir))
    assert accelerate and stableemote, "accelerate and the stableemote command must be installed"
    out = tmp_path / "ddp"
    cmd = [
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
        stableemote,
        *short_run.argv(out, "--recipe", "tiny-quick", preset="tiny", max_train_examples=16),
    ]
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
