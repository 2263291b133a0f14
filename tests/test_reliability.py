"""Runs that never lose or mix work, and every bad argument a one-line message (issue 14).

Most cases are one ``stableemote`` call under the tiny-random preset on a small
imagefolder made here.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from stableemote_utils.cli.main import main
from stableemote_utils.data import is_heldout, load_emoji_dataset
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.presets import get_preset

HELDOUT_FRACTION = get_preset("tiny-random").heldout_fraction


def make_folder(folder, train_names=16, heldout_names=2, size_px=16):
    """An imagefolder of flat colour squares whose names give both splits."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"shape {i}" for i in range(400)]
    train = [n for n in names if not is_heldout(n, HELDOUT_FRACTION)][:train_names]
    held = [n for n in names if is_heldout(n, HELDOUT_FRACTION)][:heldout_names]
    rows = []
    for i, name in enumerate(train + held):
        colour = ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)
        Image.new("RGB", (size_px, size_px), colour).save(folder / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": name}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("stableemote: error:"), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


PROGRESS_BARS = ("training:",)


def lines_besides_the_progress_bar(err: str) -> list[str]:
    """The non-empty lines of ``err`` (split at newlines and carriage returns), less tqdm's."""
    lines = (line.strip() for line in err.replace("\r", "\n").splitlines())
    return [line for line in lines if line and not line.startswith(PROGRESS_BARS)]


def one_line_error_after_training(capsys) -> str:
    """The one error line of a run that trained first (so stderr has a progress bar too)."""
    lines = lines_besides_the_progress_bar(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("stableemote: error:"), lines
    return lines[0]


# ---------------------------------------------------------------------------
# Every bad argument: exit code 2, one line naming the option, before any work
# ---------------------------------------------------------------------------

BAD_TRAIN_ARGS = [
    (["--learning-rate", "nan"], "--learning-rate"),
    (["--learning-rate=-1e-4"], "--learning-rate"),
    (["--checkpoint-every", "0"], "--checkpoint-every"),
    (["--validate-every", "0"], "--validate-every"),
    (["--resolution", "60"], "--resolution"),
    (["--resolution", "0"], "--resolution"),
    (["--resolution=-64"], "--resolution"),
    (["--batch-size", "0"], "--batch-size"),
    (["--device", "tpu9"], "--device"),
    (["--caption-dropout", "5"], "--caption-dropout"),
    (["--max-train-examples", "-1"], "--max-train-examples"),
    (["--min-snr-gamma", "-1"], "--min-snr-gamma"),
    (["--stop-after", "-1"], "--stop-after"),
    (["--keep-checkpoints", "-1"], "--keep-checkpoints"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints"),
    (["--seed", "-1"], "--seed"),
    (["--precision", "fp16"], "--precision"),  # on --device cpu
    (["--precision", "fp8"], "--precision"),
]


@pytest.mark.parametrize(("extra", "option"), BAD_TRAIN_ARGS, ids=lambda v: str(v))
def test_bad_train_argument_is_one_line_before_any_work(tmp_path, capsys, short_run, extra, option):
    # The dataset does not exist: reaching it would be "work", and a different message.
    code = main(short_run.argv(tmp_path / "run", *extra, dataset=tmp_path / "no-data"))
    err = one_line_error(capsys)
    assert code == 2
    assert option in err
    assert not (tmp_path / "run").exists(), "nothing may be written before the check"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys, short_run):
    assert (
        main(short_run.argv(tmp_path / "run", "--device", "cuda", dataset=tmp_path / "no-data"))
        == 2
    )
    assert "--device cuda" in one_line_error(capsys)


def test_the_python_api_checks_the_same_ranges(tmp_path):
    from stableemote_utils.training import recipe, train

    config = recipe("tiny-quick", output_dir=str(tmp_path / "run"), batch_size=0)
    with pytest.raises(StableEmoteError, match="--batch-size"):
        train(config)
    config = recipe("tiny-quick", output_dir=str(tmp_path / "run"), learning_rate=math.nan)
    with pytest.raises(StableEmoteError, match="--learning-rate"):
        train(config)


BAD_COMPARE_ARGS = [
    (["--steps", "0"], "--steps"),
    (["--steps", "-3"], "--steps"),
    (["--guidance", "-5"], "--guidance"),
    (["--resolution", "60"], "--resolution"),
    (["--seeds", "0,-1"], "--seeds"),
    (["--device", "tpu9"], "--device"),
]


@pytest.mark.parametrize(("extra", "option"), BAD_COMPARE_ARGS, ids=lambda v: str(v))
def test_bad_compare_argument_is_one_line(tmp_path, capsys, extra, option):
    out = tmp_path / "cmp" / "grid.png"
    argv = ["compare", "--preset", "tiny-random", "--lora", str(tmp_path / "a"), "--out", str(out)]
    code = main([*argv, *extra])
    err = one_line_error(capsys)
    assert code == 2
    assert option in err
    assert not out.parent.exists()


def test_compare_python_api_refuses_zero_steps(tmp_path):
    from stableemote_utils.compare import fair_comparison
    from stableemote_utils.sampling import SamplingSettings

    with pytest.raises(StableEmoteError, match="--steps"):
        fair_comparison(None, tmp_path / "a", SamplingSettings(steps=0))


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def test_a_dataset_without_a_heldout_split_trains_on_everything_and_says_so(
    tmp_path, capsys, tiny_model_dir, short_run
):
    # A dozen pictures of one's own rarely has a name in the 5% held-out split.
    data = make_folder(tmp_path / "data", train_names=8, heldout_names=0)
    assert main(short_run.argv(tmp_path / "run", dataset=data, steps=2)) == 0
    out = capsys.readouterr().out
    assert "held-out loss is not measured" in out and "held-out loss:" not in out
    assert (tmp_path / "run" / "pytorch_lora_weights.safetensors").is_file()


def test_a_decompression_bomb_is_skipped_like_an_unreadable_image(tmp_path, monkeypatch, capsys):
    data = make_folder(tmp_path / "data", train_names=19, heldout_names=1)
    Image.new("1", (300, 300)).save(data / "0.png")  # 90,000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # bomb above 2 x 10,000
    examples = load_emoji_dataset(str(data), 16, split="all")
    assert len(examples) == 19
    assert "skipped unreadable image" in capsys.readouterr().err


def test_metadata_cannot_name_files_outside_the_dataset_folder(tmp_path, capsys, short_run):
    data = make_folder(tmp_path / "data")
    Image.new("RGB", (16, 16)).save(tmp_path / "secret.png")
    with open(data / "metadata.jsonl", "a") as f:
        f.write(json.dumps({"file_name": "../secret.png", "text": "escape"}) + "\n")
    assert main(short_run.argv(tmp_path / "run", dataset=data)) == 2
    err = one_line_error(capsys)
    assert "outside the dataset folder" in err and "line 19" in err
    (data / "metadata.jsonl").write_text(
        json.dumps({"file_name": str(tmp_path / "secret.png"), "text": "abs"}) + "\n"
    )
    with pytest.raises(StableEmoteError, match="outside the dataset folder"):
        load_emoji_dataset(str(data), 16, split="all")


def test_too_many_bad_images_names_no_option_the_cli_lacks(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    for png in data.glob("*.png"):
        png.write_bytes(b"not a png")
    with pytest.raises(StableEmoteError) as err:
        load_emoji_dataset(str(data), 16, split="all")
    assert "could not be read" in str(err.value)
    assert "max_bad_fraction" not in str(err.value)


def test_train_honours_stableemote_preset(tmp_path, monkeypatch):
    import importlib

    from stableemote_utils import training

    seen = {}

    def fake_train(config, resume=None, overwrite=False):
        seen["preset"] = config.preset
        return training.TrainResult(
            output_dir=tmp_path, adapter_path=None, step=0, losses=[], heldout={},
            seconds_per_step=0.0, stopped_early=True,
        )  # fmt: skip

    cli_module = importlib.import_module("stableemote_utils.cli.train")
    monkeypatch.setattr(cli_module, "train", fake_train)
    monkeypatch.setenv("STABLEEMOTE_PRESET", "tiny-random")
    assert main(["train", "--output-dir", str(tmp_path / "run")]) == 0
    assert seen["preset"] == "tiny-random"
    assert main(["train", "--preset", "tiny", "--output-dir", str(tmp_path / "run")]) == 0
    assert seen["preset"] == "tiny"


# ---------------------------------------------------------------------------
# Adapters whose numbers are unusable
# ---------------------------------------------------------------------------


@pytest.fixture
def lora_file(tiny_model_dir, tmp_path):
    from diffusers import UNet2DConditionModel

    from stableemote_utils.lora import add_lora
    from stableemote_utils.lora_files import save_lora

    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet")
    torch.manual_seed(0)
    add_lora(unet, rank=2, alpha=2)
    return save_lora(unet, tmp_path / "good", {"base_model": "tiny-random"})


def _rewrite(file, out, alpha=None, nan=False):
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    tensors = load_file(file)
    if nan:
        tensors = {k: torch.full_like(v, math.nan) for k, v in tensors.items()}
    if alpha is not None:
        metadata.pop("lora_adapter_metadata", None)
        metadata["alpha"] = str(alpha)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out, metadata)
    return out


@pytest.mark.parametrize(
    ("kind", "words"), [("nan", "NaN or infinite"), ("alpha", "scales the update by")]
)
def test_unusable_adapters_are_flagged_by_inspect_and_refused_by_compare(
    lora_file, tmp_path, capsys, kind, words
):
    bad = _rewrite(
        lora_file,
        tmp_path / kind / "pytorch_lora_weights.safetensors",
        alpha=1e6 if kind == "alpha" else None,
        nan=kind == "nan",
    )
    assert main(["lora", "inspect", str(lora_file)]) == 0
    assert "UNUSABLE" not in capsys.readouterr().out
    assert main(["lora", "inspect", str(bad)]) == 0
    out = capsys.readouterr().out
    assert "UNUSABLE" in out and words in out
    grid = tmp_path / "cmp" / "grid.png"
    code = main(["compare", "--preset", "tiny-random", "--device", "cpu", "--lora", str(bad),
                 "--steps", "2", "--out", str(grid)])  # fmt: skip
    assert code == 2
    assert words in one_line_error(capsys)
    assert not grid.exists()
    # The demo and the notebooks load adapters through load_lora: refused there too.
    from stableemote_utils.lora import load_lora

    with pytest.raises(StableEmoteError, match=words):
        load_lora(None, bad)


# ---------------------------------------------------------------------------
# Runs that never lose or mix work
# ---------------------------------------------------------------------------

RUN_STEPS = 8


@pytest.fixture(scope="module")
def run_data(tmp_path_factory):
    from stableemote_utils.tiny_model import ensure_tiny_model

    ensure_tiny_model()
    return make_folder(tmp_path_factory.mktemp("rundata") / "data")


@pytest.fixture(scope="module")
def run_args(run_data, short_run):
    """``run_args(folder, *extra)``: a ``RUN_STEPS``-step run on ``run_data`` into ``folder``."""
    return lambda folder, *extra: short_run.argv(folder, *extra, dataset=run_data, steps=RUN_STEPS)


@pytest.fixture(scope="module")
def straight(run_args, tmp_path_factory):
    """The uninterrupted run's adapter weights."""
    folder = tmp_path_factory.mktemp("straight") / "run"
    assert main(run_args(folder)) == 0
    return load_file(folder / "pytorch_lora_weights.safetensors")


def assert_same_weights(folder, straight):
    got = load_file(folder / "pytorch_lora_weights.safetensors")
    assert got.keys() == straight.keys()
    assert max((got[k] - straight[k]).abs().max().item() for k in got) == 0.0


def names(folder):
    from stableemote_utils.checkpoints import list_checkpoints

    return [p.name for p in list_checkpoints(folder / "checkpoints")]


def set_aside_names(folder):
    return sorted(p.name for p in (folder / "set-aside").glob("*/checkpoint-*"))


_SLOW_TRAINER = """
import sys, time
from stableemote_utils import training
from stableemote_utils.cli.main import main
real, calls = training.noise_prediction_loss, []
def slow(*a, **k):
    # Steps 1 and 2 run (checkpoint-000002 is written); step 3 then waits to be killed,
    # so the run holds its lock however slowly the machine runs the test's second run.
    calls.append(1)
    time.sleep(0.4 if len(calls) < 3 else 3600)
    return real(*a, **k)
training.noise_prediction_loss = slow
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # moved out of make test's time budget; test-slow runs it
def test_concurrent_run_refused_then_kill_9_and_resume_equals_uninterrupted(
    run_args, straight, tmp_path, capsys
):
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "run"
    # The same thread count as this process, whose in-process runs it is compared with:
    # float sums differ bitwise between thread counts.
    env = dict(os.environ, PYTHONPATH=os.getcwd(), OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_TRAINER, *run_args(folder)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 300
        while not (folder / "checkpoints" / "checkpoint-000002").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "the run wrote no checkpoint"
            time.sleep(0.05)
        # A second run into the same folder while the first one trains.
        assert main(run_args(folder, "--resume", "latest")) == 2
        err = one_line_error(capsys)
        assert f"PID {proc.pid}" in err and "Another run is training" in err
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (folder / "pytorch_lora_weights.safetensors").exists(), "killed mid-run"
    assert names(folder), "the kill left its checkpoints"
    # The killed run's lock is stale: it does not block the resume.
    assert main(run_args(folder, "--resume", "latest")) == 0
    assert_same_weights(folder, straight)


# Ctrl-C and SIGTERM (a timeout, docker stop, a batch scheduler) stop a run the same way;
# only the exit status differs (128 + the signal's number).
STOP_SIGNALS = [
    pytest.param("SIGINT", 130, id="ctrl-c"),
    pytest.param("SIGTERM", 143, id="sigterm"),
]


@pytest.mark.parametrize(("sig", "status"), STOP_SIGNALS)
def test_first_ctrl_c_or_sigterm_finishes_the_step_writes_a_checkpoint_and_says_how_to_resume(
    run_args, straight, tmp_path, capsys, monkeypatch, sig, status
):
    import os
    import signal

    from stableemote_utils import training

    real, calls = training.noise_prediction_loss, []

    def interrupted_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.Signals[sig])
        return real(*args, **kwargs)

    folder = tmp_path / "run"
    monkeypatch.setattr(training, "noise_prediction_loss", interrupted_at_step_3)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    assert main(run_args(folder, "--checkpoint-every", "100")) == status
    assert {s: signal.getsignal(s) for s in handlers} == handlers, "the handlers are put back"
    assert len(calls) == 3, "no step after the interrupted one"
    assert names(folder) == ["checkpoint-000003"]
    err = capsys.readouterr().err
    assert "continue with: stableemote train" in err and "--resume latest" in err
    assert "--dataset" in err.split("continue with:")[1]
    monkeypatch.setattr(training, "noise_prediction_loss", real)
    assert main(run_args(folder, "--resume", "latest")) == 0
    assert_same_weights(folder, straight)


@pytest.mark.slow  # moved out of make test's time budget; test-slow runs it
def test_sigterm_from_outside_checkpoints_the_step_it_stopped_and_resumes_identically(
    run_args, straight, tmp_path, slow_trainer, sigterm_once_checkpointed
):
    """What ``timeout -s TERM``, ``docker stop`` or a scheduler's time limit does to a run."""
    import os
    import sys

    from stableemote_utils.checkpoints import latest_checkpoint

    folder = tmp_path / "run"
    # The same thread count as this process, whose in-process run it is compared with.
    env = dict(os.environ, PYTHONPATH=os.getcwd(), OMP_NUM_THREADS=str(torch.get_num_threads()))
    # Steps from 3 on are slow: the signal, sent once step 2 is checkpointed, comes in step 3.
    env.update(SLOW_FROM="3", SLOW_S="3")
    cmd = [sys.executable, str(slow_trainer), *run_args(folder)]
    status, err = sigterm_once_checkpointed(cmd, env, folder)
    assert status == 143, err
    assert "stableemote: terminated: stopped after step 3" in err, err
    assert "continue with: stableemote train" in err and "Traceback" not in err, err
    assert latest_checkpoint(folder / "checkpoints").name == "checkpoint-000003"
    assert leftovers(folder) == []
    assert main(run_args(folder, "--resume", "latest")) == 0
    assert_same_weights(folder, straight)


@pytest.mark.parametrize("second_during", ["step", "checkpoint"])
@pytest.mark.parametrize(("sig", "status"), STOP_SIGNALS)
def test_a_second_ctrl_c_or_sigterm_stops_at_once_and_keeps_the_checkpoints(
    run_args, tmp_path, monkeypatch, capsys, sig, status, second_during
):
    """The second signal comes in the same step, or while the first one's checkpoint is
    being written: either way the run ends at once, and no half-written folder stays."""
    import os
    import signal

    from stableemote_utils import checkpoints, training

    real_loss, real_rng, calls = training.noise_prediction_loss, checkpoints.rng_tensors, []

    def signal_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.Signals[sig])
            if second_during == "step":
                os.kill(os.getpid(), signal.Signals[sig])
        return real_loss(*args, **kwargs)

    def signal_while_writing():  # called halfway through writing a checkpoint's files
        if len(calls) == 3:
            os.kill(os.getpid(), signal.Signals[sig])
        return real_rng()

    folder = tmp_path / "run"
    monkeypatch.setattr(training, "noise_prediction_loss", signal_at_step_3)
    monkeypatch.setattr(checkpoints, "rng_tensors", signal_while_writing)
    assert main(run_args(folder)) == status
    assert len(calls) == 3
    assert names(folder) == ["checkpoint-000002"], "the earlier checkpoint stays"
    assert checkpoints.verify_checkpoint(folder / "checkpoints" / "checkpoint-000002") is None
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["checkpoint-000002"]
    assert "continue with" not in capsys.readouterr().err


def test_damaged_checkpoints_plus_a_new_run_lose_nothing(run_args, tmp_path, capsys):
    from stableemote_utils.checkpoints import latest_checkpoint, verify_checkpoint

    folder = tmp_path / "run"
    assert main(run_args(folder, "--stop-after", "6")) == 0
    damaged = ["checkpoint-000002", "checkpoint-000004", "checkpoint-000006"]
    assert names(folder) == damaged
    for name in damaged:
        weights = folder / "checkpoints" / name / "pytorch_lora_weights.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    # Nothing intact: the run starts over. It must neither prune its own new checkpoints
    # because damaged ones carry higher step numbers, nor delete the damaged ones.
    new_run = run_args(folder, "--resume", "latest", "--keep-checkpoints", "1")
    assert main([*new_run, "--stop-after", "4"]) == 0
    assert names(folder) == ["checkpoint-000004"]
    assert latest_checkpoint(folder / "checkpoints").name == "checkpoint-000004"
    assert set_aside_names(folder) == damaged
    assert main(new_run) == 0
    assert names(folder) == ["checkpoint-000008"]
    assert verify_checkpoint(folder / "checkpoints" / "checkpoint-000008") is None
    assert (folder / "pytorch_lora_weights.safetensors").exists()


def test_pruning_keeps_the_newest_good_checkpoints_of_this_run_only(run_args, tmp_path):
    import shutil

    folder = tmp_path / "run"
    assert main(run_args(folder, "--stop-after", "4", "--keep-checkpoints", "2")) == 0
    # A checkpoint another run left (another run id) is not this run's to delete.
    other = folder / "checkpoints" / "checkpoint-000001"
    shutil.copytree(folder / "checkpoints" / "checkpoint-000002", other)
    state = json.loads((other / "training_state.json").read_text())
    state["run_id"] = "another-run"
    (other / "training_state.json").write_text(json.dumps(state))
    assert main(run_args(folder, "--resume", "latest", "--keep-checkpoints", "2")) == 0
    assert names(folder) == ["checkpoint-000001", "checkpoint-000006", "checkpoint-000008"]


def test_a_fresh_run_into_a_used_folder_is_refused(run_args, tmp_path, capsys):
    folder = tmp_path / "run"
    assert main(run_args(folder, "--stop-after", "2")) == 0
    before = (folder / "checkpoints" / "checkpoint-000002" / "training_state.json").read_text()
    capsys.readouterr()
    assert main(run_args(folder, "--learning-rate", "1e-4")) == 2
    err = one_line_error(capsys)
    assert "--resume latest" in err and "--overwrite" in err and "checkpoint-000002" in err
    assert names(folder) == ["checkpoint-000002"]
    # --overwrite starts over; the old run's checkpoints are set aside, not deleted.
    assert main(run_args(folder, "--overwrite", "--stop-after", "2")) == 0
    moved = next((folder / "set-aside").glob("*/checkpoint-000002"))
    assert (moved / "training_state.json").read_text() == before


def test_resume_names_the_setting_that_differs(run_args, tmp_path, capsys):
    folder = tmp_path / "run"
    assert main(run_args(folder, "--stop-after", "2")) == 0
    capsys.readouterr()
    resumed = run_args(folder, "--resume", "latest", "--learning-rate", "1e-4")
    assert main(resumed) == 2
    err = one_line_error(capsys)
    assert "learning_rate: 0.001 -> 0.0001 (--learning-rate)" in err
    assert main(run_args(folder, "--resume", "latest", "--noise-offset", "0.1")) == 2
    assert "--noise-offset" in one_line_error(capsys)


def test_branching_from_an_older_checkpoint_sets_the_newer_ones_aside(run_args, tmp_path):
    folder = tmp_path / "run"
    assert main(run_args(folder, "--stop-after", "6", "--keep-checkpoints", "5")) == 0
    assert names(folder) == ["checkpoint-000002", "checkpoint-000004", "checkpoint-000006"]
    older = folder / "checkpoints" / "checkpoint-000002"
    assert main(run_args(folder, "--resume", str(older), "--stop-after", "4")) == 0
    assert names(folder) == ["checkpoint-000002", "checkpoint-000004"]
    assert set_aside_names(folder) == ["checkpoint-000004", "checkpoint-000006"]
    # "latest" is now this timeline's step 4, not the abandoned step 6.
    from stableemote_utils.checkpoints import latest_checkpoint

    assert latest_checkpoint(folder / "checkpoints").name == "checkpoint-000004"


# ---------------------------------------------------------------------------
# A full disk: one line, nothing half-written, nothing earlier lost (issue 26)
# ---------------------------------------------------------------------------


def full_disk_at(n: int, error: str = "safetensors"):
    """A stand-in for safetensors' ``save_file`` whose ``n``-th call finds the disk full.

    ``error`` is how the disk says so: ``"safetensors"`` as safetensors reports it (not an
    ``OSError``), ``"oserror"`` as Python's own writers do.
    """
    import errno
    import os

    import safetensors.torch
    from safetensors import SafetensorError

    real, calls = safetensors.torch.save_file, []

    def save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == n:
            if error == "safetensors":
                raise SafetensorError(
                    "Error while serializing: I/O error: No space left on device (os error 28)"
                )
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
        return real(tensors, filename, metadata=metadata)

    return save_file


def leftovers(folder) -> list[str]:
    """Temporary files and folders anywhere under ``folder``."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if ".tmp" in p.name or p.name.endswith(".partial")
    )


@pytest.mark.parametrize(
    ("fail_at", "error", "what", "kept"),
    [
        # Checkpoints of steps 2, 4, 6, 8 are three files each; then the adapter.
        pytest.param(5, "safetensors", "checkpoint-000004", ["checkpoint-000002"], id="checkpoint"),
        pytest.param(
            13,
            "oserror",
            "the run's results",
            ["checkpoint-000002", "checkpoint-000004", "checkpoint-000006", "checkpoint-000008"],
            id="adapter",
        ),
    ],
)
def test_a_full_disk_is_one_line_leaves_nothing_half_written_and_resumes(
    run_args, straight, tmp_path, capsys, monkeypatch, fail_at, error, what, kept
):
    import safetensors.torch

    from stableemote_utils.checkpoints import verify_checkpoint

    folder = tmp_path / "run"
    args = run_args(folder, "--keep-checkpoints", "10")
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk_at(fail_at, error))
    assert main(args) == 1
    err = one_line_error_after_training(capsys)
    assert what in err and "No space left on device" in err and "free there" in err, err
    assert "--resume latest" in err and str(folder) in err, err
    if what.startswith("checkpoint"):
        assert f"({kept[-1]} the newest) are untouched" in err, err
    assert names(folder) == kept
    assert all(verify_checkpoint(folder / "checkpoints" / name) is None for name in kept)
    assert leftovers(folder) == []
    assert not (folder / "pytorch_lora_weights.safetensors").exists()
    # Space freed: the run continues from the newest checkpoint, as if never stopped.
    monkeypatch.undo()
    assert main(run_args(folder, "--resume", "latest", "--keep-checkpoints", "10")) == 0
    assert_same_weights(folder, straight)


def test_a_full_disk_at_the_first_checkpoint_says_to_start_again(
    run_args, straight, tmp_path, capsys, monkeypatch
):
    """No checkpoint before it: the message promises none, and running again works."""
    import safetensors.torch

    folder = tmp_path / "run"
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk_at(2))  # checkpoint-000002
    assert main(run_args(folder)) == 1
    err = one_line_error_after_training(capsys)
    assert "checkpoint-000002" in err and "No space left on device" in err, err
    assert "first checkpoint, so there is none to resume from" in err, err
    assert "run the same command again" in err, err
    assert "--resume" not in err and "intact" not in err and "untouched" not in err, err
    assert names(folder) == [] and leftovers(folder) == []
    monkeypatch.undo()
    assert main(run_args(folder)) == 0  # the same command, as the message says
    assert_same_weights(folder, straight)


def test_a_real_full_disk_tmpfs(run_args, straight, tmp_path, capsys):
    """The same on a 700 KB tmpfs (root only; skipped where mounting is not allowed)."""
    import os
    import shutil
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    made = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(disk)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        folder = disk / "run"
        # The run's records and step-0 grid take about 80 KB and a checkpoint about 330 KB:
        # the first checkpoint fits, the second does not.
        assert main(run_args(folder, "--checkpoint-every", "1")) == 1
        err = one_line_error_after_training(capsys)
        assert "checkpoint-000002" in err and "No space left on device" in err
        assert "KB free there" in err
        assert names(folder) == ["checkpoint-000001"]
        assert leftovers(folder) == []
        subprocess.run([mount, "-o", "remount,size=8m", str(disk)], check=True)
        assert main(run_args(folder, "--checkpoint-every", "1", "--resume", "latest")) == 0
        assert_same_weights(folder, straight)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_write_errors_are_explained_in_one_line_and_others_pass(tmp_path):
    import errno

    from safetensors import SafetensorError

    from stableemote_utils.errors import WriteFailedError
    from stableemote_utils.files import explain_write_errors, os_error_of

    full = SafetensorError("Error while serializing: I/O error: Disk quota exceeded (os error 122)")
    assert os_error_of(full).errno == errno.EDQUOT
    assert os_error_of(SafetensorError("header too large")) is None
    assert os_error_of(ValueError("(os error 28)")) is None
    target = tmp_path / "not-yet" / "adapter.safetensors"
    with pytest.raises(WriteFailedError) as caught, explain_write_errors("the adapter", target):
        raise full
    message = str(caught.value)
    assert "\n" not in message and caught.value.exit_status == 1
    assert message.startswith(f"Could not write the adapter {target} (Disk quota exceeded; ")
    assert " free there)" in message
    with pytest.raises(ValueError, match="a bug"), explain_write_errors("x", target):
        raise ValueError("a bug")  # not the disk's fault: left alone


# ---------------------------------------------------------------------------
# A quiet command line: our lines and the progress bar, no library notices (issue 26)
# ---------------------------------------------------------------------------


def stableemote_command() -> list[str]:
    """The ``stableemote`` console command of this environment, run on this checkout."""
    import sys
    from pathlib import Path

    return [str(Path(sys.executable).parent / "stableemote")]


def checkout_env() -> dict[str, str]:
    import os

    return dict(os.environ, PYTHONPATH=os.getcwd(), OMP_NUM_THREADS="1")


def test_train_prints_only_its_own_lines_and_the_progress_bar(run_args, tmp_path):
    import subprocess

    # Ends with a validation grid: the pipeline module loads, where transformers speaks.
    args = run_args(tmp_path / "run", "--steps", "2", "--checkpoint-every", "1")
    proc = subprocess.run(
        [*stableemote_command(), *args],
        env=checkout_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "adapter:" in proc.stdout
    assert (tmp_path / "run" / "samples").is_dir(), "the pipeline was built"
    others = lines_besides_the_progress_bar(proc.stderr)
    assert all(line.startswith("stableemote:") for line in others), others


def test_demo_start_up_prints_only_its_own_lines(tiny_model_dir):
    """And a refused request (a seed out of range) adds one line, no traceback (issue 37)."""
    import signal
    import subprocess
    import time

    from gradio_client import Client

    from stableemote_utils.cli.demo import free_port
    from stableemote_utils.cli.demo_app import API_NAME

    port = free_port()
    proc = subprocess.Popen(
        [*stableemote_command(), "demo", "--preset", "tiny-random", "--device", "cpu",
         "--port", str(port)],
        env=dict(checkout_env(), GRADIO_ANALYTICS_ENABLED="False"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 300
        started = ""
        while "demo on" not in started and time.time() < deadline and proc.poll() is None:
            started = proc.stdout.readline()
        assert f"StableEmote demo on http://127.0.0.1:{port}" in started, started
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        with pytest.raises(Exception, match="seed must be a whole number"):
            client.predict("An emoji of cat face", -5, 2, api_name=f"/{API_NAME}")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    others = lines_besides_the_progress_bar(err)
    assert all(line.startswith("stableemote:") for line in others), others
    refused = [line for line in others if "seed must be" in line]
    assert refused == [
        "stableemote: demo: refused a request: The seed must be a whole number from 0 to "
        "4294967295, got -5. Pick one in that range or press 'Random seed'."
    ], others


def test_known_notices_are_hidden_only_inside_the_call(tiny_model_dir):
    import logging

    import transformers

    from stableemote_utils.loading import load_components
    from stableemote_utils.notices import no_known_notices

    logger = logging.getLogger("transformers.utils.import_utils")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    filters, verbosity = list(logger.filters), transformers.logging.get_verbosity()
    logger.addHandler(handler)
    try:
        with no_known_notices():
            logger.warning("`CLIPImageProcessor` requires torchvision (not installed); ...")
            logger.warning("another notice")
        logger.warning("`Mine` requires torchvision, said after the call")
        load_components(str(tiny_model_dir))
    finally:
        logger.removeHandler(handler)
    assert seen == ["another notice", "`Mine` requires torchvision, said after the call"]
    assert logger.filters == filters, "the filter is gone after the call"
    assert transformers.logging.get_verbosity() == verbosity, "no log level changed"


# ---------------------------------------------------------------------------
# A cache that cannot be used, a name that is no preset, a push that cannot happen, a
# Hub model out of reach: one line, exit 2, before any work (issue 37)
# ---------------------------------------------------------------------------


def cache_commands(tmp_path, adapter) -> dict[str, list[str]]:
    """Every command that keeps models or data in the cache, with arguments that would work."""
    tiny = ["--preset", "tiny-random", "--device", "cpu"]
    return {
        "train": ["train", *tiny, "--steps", "2", "--output-dir", str(tmp_path / "run")],
        "demo": ["demo", *tiny],
        "compare": ["compare", *tiny, "--lora", str(adapter), "--output-dir",
                    str(tmp_path / "cmp")],
        "evaluate-tiny": ["evaluate-tiny", "--device", "cpu", "--output-dir",
                          str(tmp_path / "eval")],
    }  # fmt: skip


@pytest.mark.parametrize("command", ["train", "demo", "compare", "evaluate-tiny"])
@pytest.mark.parametrize("kind", ["file", "under-a-file", "sysfs"])
def test_an_unusable_cache_stops_every_command_that_uses_it_in_one_line(
    tmp_path, capsys, monkeypatch, lora_file, command, kind
):
    import os
    import sys

    mine = tmp_path / "mine.txt"
    mine.write_text("a user's file")
    if kind == "sysfs" and not (sys.platform.startswith("linux") and os.path.isdir("/sys")):
        pytest.skip("needs Linux's /sys")
    path = {"file": str(mine), "under-a-file": str(mine / "cache"), "sysfs": "/sys"}[kind]
    monkeypatch.setenv("STABLEEMOTE_CACHE", path)
    assert main(cache_commands(tmp_path, lora_file)[command]) == 2
    err = one_line_error(capsys)
    assert f"STABLEEMOTE_CACHE={path} " in err and "a folder you can write in" in err, err
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["good", "mine.txt"], "nothing written besides the adapter and the file"
    assert mine.read_text() == "a user's file"


def test_a_hub_model_out_of_reach_is_named_before_any_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The dataset is a Hub id too, and unreachable: reading it first would blame the data.
    args = ["train", "--preset", "no-such-owner/no-such-model", "--dataset", "no-such/dataset",
            "--device", "cpu", "--output-dir", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 2
    err = one_line_error(capsys)
    assert "Could not load the model 'no-such-owner/no-such-model'" in err, err
    assert "dataset" not in err, err
    assert not (tmp_path / "run").exists()


def test_a_push_that_cannot_happen_is_refused_before_any_model_loads(
    tmp_path, capsys, monkeypatch, short_run
):
    from huggingface_hub import constants

    from stableemote_utils import training_setup

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded for a push that cannot happen")

    monkeypatch.setattr(training_setup, "load_components", no_loading)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    for repo, said in [
        ("not a valid id!!", "--push-to-hub 'not a valid id!!' is not a Hub repo id"),
        ("someone/bad--name", "--push-to-hub 'someone/bad--name' is not a Hub repo id"),
        ("someone/emoji-lora", "--push-to-hub someone/emoji-lora: Pushing to the Hub needs a token"),
    ]:  # fmt: skip
        assert main(short_run.argv(tmp_path / "run", "--push-to-hub", repo)) == 2
        err = one_line_error(capsys)
        assert err.startswith(f"stableemote: error: {said}"), err
        assert not (tmp_path / "run").exists(), "refused before the run folder is made"


@pytest.mark.parametrize(
    ("env", "args", "said"),
    [
        pytest.param({"STABLEEMOTE_PRESET": "bogus"}, ["info"],
                     "STABLEEMOTE_PRESET=bogus is not a preset", id="bogus-preset"),
        pytest.param({"STABLEEMOTE_CACHE": "FILE"}, ["train", "--preset", "tiny-random"],
                     "STABLEEMOTE_CACHE=FILE names a file", id="cache-is-a-file"),
    ],
)  # fmt: skip
def test_the_console_command_exits_2_with_one_line(tmp_path, env, args, said):
    """The installed command, as a user runs it (the other cases call ``main`` in-process)."""
    import subprocess

    from stableemote_utils.presets import preset_table

    mine = tmp_path / "mine.txt"
    mine.write_text("a user's file")
    env = {k: v.replace("FILE", str(mine)) for k, v in env.items()}
    proc = subprocess.run(
        [*stableemote_command(), *args, "--output-dir", str(tmp_path / "run")]
        if args[0] == "train"
        else [*stableemote_command(), *args],
        env={**checkout_env(), "HF_HOME": str(tmp_path / "hf"), **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    err = proc.stderr.strip()
    assert proc.returncode == 2, err[-4000:]
    assert "\n" not in err and err.startswith("stableemote: error:"), err
    assert said.replace("FILE", str(mine)) in err, err
    if "PRESET" in str(env):
        assert ", ".join(preset_table()) in err
    assert not (tmp_path / "run").exists()
