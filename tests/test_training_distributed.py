"""Two CPU processes through `accelerate launch` (gloo): each trains on its shard, one saves."""

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

# One xdist worker runs these one after the other: two launches at once would race for the
# launcher's default port and share the two cores.
pytestmark = pytest.mark.xdist_group("two-processes")


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


def run_two(cmd: list[str], env: dict[str, str], timeout_s: float = 300):
    """Run a ``launch_two`` command; ``CompletedProcess`` with its text output.

    A run that outlives ``timeout_s`` (these take well under a minute) fails the test with
    the Python stack of every thread of the launcher and of both training processes: each
    gets SIGABRT, which ``PYTHONFAULTHANDLER`` turns into a traceback on stderr, and any
    left then gets SIGKILL. A hang then says where it is, not only that it happened. (The
    launcher starts its workers in sessions of their own, so they are found as its children;
    psutil signals a process only while it is the one it found, never a reused number.)
    """
    env = {**env, "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        launcher = psutil.Process(proc.pid)
        workers = launcher.children(recursive=True)

        def send(how: signal.Signals, processes: list[psutil.Process], pause_s: float) -> None:
            for process in processes:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.send_signal(how)
                    time.sleep(pause_s)

        # The launcher is paused while the workers print their stacks one after the other,
        # so it cannot stop the second worker when it sees the first one abort.
        send(signal.SIGSTOP, [launcher], 0)
        send(signal.SIGABRT, [*workers, launcher], 1)
        send(signal.SIGCONT, [launcher], 2)
        send(signal.SIGKILL, [*workers, launcher], 0)
        out, err = proc.communicate()
        pytest.fail(
            f"{shlex.join(cmd)} ran past {timeout_s:.0f} s; where each process was:\n"
            f"{out[-2000:]}\n{err[-12000:]}"
        )
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


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
    proc = run_two(cmd, env)
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
        proc = run_two(launch_two(slow_trainer, *run_args(out, *extra)), env)
        assert proc.returncode == 0, proc.stderr[-4000:]
    got = load_file(folder / "pytorch_lora_weights.safetensors")
    want = load_file(tmp_path / "straight" / "pytorch_lora_weights.safetensors")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in got), "resumed != uninterrupted"
