"""The real-size path on the full-size SD 1.5 architecture with random weights (``make test-sd15``).

Runs only with ``STABLEEMOTE_TEST_SD15=1`` (minutes, ~5 GB of memory; not part of
``make test``). At batch 1 and 256 px on CPU: two training steps with validation and
checkpoints, a resume from the first checkpoint that ends bit-identical to the straight
run, ``compare`` with two sampling steps, ``lora inspect`` and the kohya export, all
through the command line. Prints the time and the process's peak memory of each stage.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import resource
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

full_size_run = pytest.mark.skipif(
    os.environ.get("STABLEEMOTE_TEST_SD15") != "1",
    reason="full-size SD 1.5 run: set STABLEEMOTE_TEST_SD15=1 (make test-sd15)",
)

RESOLUTION_PX = 256
SD15_RANK4_PARAMETERS = 797_184  # rank 4 on to_q/to_k/to_v/to_out.0 of SD 1.5's UNet
SD15_RANK4_TENSORS = 256


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class _Stages:
    """Times each stage and prints it with the peak memory so far."""

    def __init__(self, label: str = "sd15") -> None:
        self.label = label
        self.rows: list[tuple[str, float, float]] = []

    def run(self, name: str, fn):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        self.rows.append((name, seconds, _peak_rss_gb()))
        print(
            f"\n[{self.label}] {name}: {seconds:.1f} s, peak RSS so far {_peak_rss_gb():.2f} GB",
            flush=True,
        )
        return result

    def table(self) -> str:
        lines = [f"{'stage':<44} {'seconds':>8} {'peak RSS GB':>12}"]
        lines += [f"{n:<44} {s:>8.1f} {m:>12.2f}" for n, s, m in self.rows]
        lines.append(f"{'total':<44} {sum(s for _, s, _ in self.rows):>8.1f}")
        return "\n".join(lines)


def test_the_sd15_random_preset_has_sd15s_sizes_and_offline_data(monkeypatch, tmp_path):
    from stableemote_utils.presets import get_preset

    monkeypatch.setenv("STABLEEMOTE_CACHE", str(tmp_path))
    preset, sd15 = get_preset("sd15-random"), get_preset("sd15")
    assert (preset.resolution_px, preset.batch_size) == (sd15.resolution_px, sd15.batch_size)
    assert preset.model == str(tmp_path / "sd15-random") and preset.dataset == "openmoji"
    assert not preset.is_tiny


@full_size_run
def test_full_size_sd15_trains_resumes_compares_and_exports(tmp_path, capsys):
    from stableemote_utils.cli.main import main
    from stableemote_utils.presets import get_preset
    from stableemote_utils.tiny_model import ensure_random_sd15
    from stableemote_utils.training import TrainConfig, train

    stages = _Stages()
    preset = get_preset("sd15-random")
    folder = stages.run("build the random full-size model (first use)", ensure_random_sd15)
    assert Path(preset.model) == folder

    config = TrainConfig(
        preset="sd15-random",
        output_dir=str(tmp_path / "straight"),
        device="cpu",
        precision="fp32",
        steps=2,
        batch_size=1,
        resolution_px=RESOLUTION_PX,
        checkpoint_every=1,
        validate_every=2,
        validation_prompts=("cat face",),
        validation_steps=2,
        max_train_examples=2,
        heldout_limit=1,
        log_every=1,
        progress_bar=False,
    )
    straight = stages.run("train 2 steps (cache, held-out, validation)", lambda: train(config))
    run = tmp_path / "straight"
    assert straight.step == 2 and straight.adapter_path.exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "checkpoint-000001",
        "checkpoint-000002",
    ]
    assert (run / "samples" / "step-000002.png").exists()
    adapter = load_file(straight.adapter_path)
    assert len(adapter) == SD15_RANK4_TENSORS
    assert sum(t.numel() for t in adapter.values()) == SD15_RANK4_PARAMETERS

    # A run that was cut off after step 1 and resumed from its checkpoint.
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(
        run / "checkpoints" / "checkpoint-000001",
        resumed_dir / "checkpoints" / "checkpoint-000001",
    )
    resumed_config = dataclasses.replace(config, output_dir=str(resumed_dir))
    resumed = stages.run(
        "resume from step 1 to step 2", lambda: train(resumed_config, resume="latest")
    )
    assert resumed.step == 2 and resumed.losses == straight.losses
    again = load_file(resumed.adapter_path)
    assert adapter.keys() == again.keys()
    assert all(torch.equal(adapter[k], again[k]) for k in adapter), "resume is not bit-identical"
    del adapter, again, straight, resumed
    capsys.readouterr()

    out_png = tmp_path / "compare" / "grid.png"
    code = stages.run(
        "compare, 2 sampling steps",
        lambda: main(
            [
                "compare",
                "--preset",
                "sd15-random",
                "--device",
                "cpu",
                "--lora",
                str(run),
                "--prompts",
                "cat face",
                "--steps",
                "2",
                "--resolution",
                str(RESOLUTION_PX),
                "--out",
                str(out_png),
            ]
        ),
    )
    assert code == 0, capsys.readouterr().err
    record = json.loads(out_png.with_suffix(".json").read_text())
    assert record["base_model"] == str(folder.resolve())
    assert record["lora_file"] == str((run / "pytorch_lora_weights.safetensors").resolve())

    capsys.readouterr()
    assert stages.run("lora inspect", lambda: main(["lora", "inspect", str(run)])) == 0
    inspected = capsys.readouterr().out
    assert f"{SD15_RANK4_PARAMETERS:,}" in inspected or str(SD15_RANK4_PARAMETERS) in inspected
    kohya = tmp_path / "export" / "emoji_kohya.safetensors"
    assert stages.run("kohya export", lambda: main(["lora", "export", str(run), str(kohya)])) == 0
    exported = load_file(kohya)
    assert sum(k.endswith(".alpha") for k in exported) == SD15_RANK4_TENSORS // 2
    assert all(k.startswith("lora_unet_") for k in exported)

    with capsys.disabled():
        print(f"\nfull-size SD 1.5 (random weights), batch 1, {RESOLUTION_PX} px, CPU, fp32")
        print(f"torch threads: {torch.get_num_threads()}")
        print(stages.table())
