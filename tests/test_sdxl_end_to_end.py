"""The real-size SDXL path on its full-size architecture with random weights (``make test-sdxl``).

Runs only with ``STABLEEMOTE_TEST_SDXL=1`` (about 5 minutes, ~14 GB of memory; not part
of ``make test``). Builds SDXL base 1.0's UNet, VAE and both text encoders from their
published configs with random weights (no download), checks the published parameter
counts, runs one LoRA training step at 128 px through ``stableemote train`` (the code path
a GPU takes, in bf16: half the memory of fp32) and checks the exported kohya file's SGM
key names, and that diffusers' SDXL LoRA reader maps every one of them back onto the
UNet. Prints the time and the process's peak memory of each stage.
"""

from __future__ import annotations

import os
import re

import pytest
from safetensors import safe_open
from test_sd15_end_to_end import _peak_rss_gb, _Stages

from stableemote_utils import lora_files as LF
from stableemote_utils import lora_inspect as LI
from stableemote_utils.cli.main import main
from stableemote_utils.presets import get_preset
from stableemote_utils.tiny_model import build_sdxl_components, ensure_random_sdxl

full_size_run = pytest.mark.skipif(
    os.environ.get("STABLEEMOTE_TEST_SDXL") != "1",
    reason="full-size SDXL run: set STABLEEMOTE_TEST_SDXL=1 (make test-sdxl)",
)

RESOLUTION_PX = 128  # a 16 x 16 latent: SDXL's UNet halves it twice
SDXL_UNET_PARAMETERS = 2_567_463_684
SDXL_RANK4_PARAMETERS = 5_806_080  # rank 4 on to_q/to_k/to_v/to_out.0
# SDXL's attention projections: 70 transformer blocks x 2 attentions x 4 projections.
SDXL_RANK4_LAYERS = 560
MEMORY_BUDGET_GB = 24  # this machine's


def diffusers_layer(key: str) -> str:
    """The UNet layer a key of diffusers' ``lora_state_dict`` names: ``unet.X.processor.
    to_k_lora.down.weight`` (its older attention-processor spelling) -> ``X.to_k``."""
    key = key.removeprefix("unet.")
    found = re.match(r"(.*)\.processor\.(to_[qkv]|to_out)_lora\.(down|up)\.weight$", key)
    if found:
        layer, name = found.group(1), found.group(2)
        return f"{layer}.{name}.0" if name == "to_out" else f"{layer}.{name}"
    return re.sub(r"\.lora(_A|_B|\.down|\.up)\.weight$", "", key)


def test_diffusers_reads_every_sgm_name_of_a_full_size_export(tmp_path):
    """A zero rank-2 adapter on every attention projection of SDXL's layout (meta device,
    seconds): exported with SGM names, diffusers' SDXL reader maps each back."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file
    from test_lora import sdxl_like_lora_state_dict

    file = tmp_path / "sdxl.safetensors"
    save_file(sdxl_like_lora_state_dict(), str(file), {"alpha": "1.0"})
    kohya = LI.export_kohya(file, tmp_path / "kohya.safetensors")
    unet = LI.layout_models("sdxl")["unet"]
    mapped, _ = StableDiffusionXLPipeline.lora_state_dict(str(kohya), unet_config=unet.config)
    assert {diffusers_layer(k) for k in mapped} == set(LF.target_layer_shapes(unet))


@full_size_run
def test_published_parameter_counts_on_the_built_parts():
    stages = _Stages("sdxl")
    parts = stages.run(
        "build the full-size UNet (fp32)", lambda: build_sdxl_components(0, ("unet",))
    )
    unet = parts["unet"]
    assert sum(p.numel() for p in unet.parameters()) == SDXL_UNET_PARAMETERS
    from stableemote_utils.lora_peft import add_lora

    assert stages.run("rank-4 LoRA", lambda: add_lora(unet, rank=4)) == SDXL_RANK4_PARAMETERS
    print("\n" + stages.table())


@full_size_run
def test_one_lora_step_and_the_kohya_export(tmp_path):
    stages = _Stages("sdxl")
    folder = stages.run("build sdxl-random (fp16 on disk)", ensure_random_sdxl)
    assert folder == ensure_random_sdxl(get_preset("sdxl-random").model)
    run = tmp_path / "run"
    # A small held-out set and a 2-step grid: the full-size UNet on 2 CPU cores is slow.
    settings = tmp_path / "run.toml"
    settings.write_text("heldout_limit = 4\nvalidation_steps = 2\n")
    argv = [
        "train",
        "--config", str(settings),
        "--preset", "sdxl-random",
        "--device", "cpu",
        "--precision", "bf16",
        "--resolution", str(RESOLUTION_PX),
        "--steps", "1",
        "--batch-size", "1",
        "--max-train-examples", "2",
        "--validation-prompts", "cat face",
        "--checkpoint-every", "1",
        "--output-dir", str(run),
    ]  # fmt: skip
    assert stages.run("train 1 step (+ held-out loss, grid)", lambda: main(argv)) == 0
    adapter = run / LF.LORA_WEIGHT_NAME
    state, metadata = LF.read_lora_file(adapter)
    assert sum(t.numel() for t in state.values()) == SDXL_RANK4_PARAMETERS
    assert len(state) == 2 * SDXL_RANK4_LAYERS
    assert (run / "samples" / "step-000001.png").is_file()
    info = LI.inspect_lora(adapter)
    assert info["family"] == "SDXL" and info["fits"]["sdxl"] is None

    kohya = tmp_path / "emoji_sdxl_kohya.safetensors"
    stages.run("kohya export", lambda: main(["lora", "export", str(adapter), str(kohya)]))
    with safe_open(str(kohya), framework="pt") as f:
        keys, header = set(f.keys()), f.metadata()
        alpha = float(f.get_tensor(next(k for k in keys if k.endswith(".alpha"))))
    assert header["ss_base_model_version"] == "sdxl_base_v1-0"
    assert len(keys) == 3 * SDXL_RANK4_LAYERS and alpha == float(metadata["alpha"])
    stem = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    assert {f"{stem}.lora_down.weight", f"{stem}.lora_up.weight", f"{stem}.alpha"} <= keys
    assert not any("down_blocks" in k or "up_blocks" in k or "mid_block" in k for k in keys)
    # diffusers' SDXL LoRA reader maps the SGM names back onto this UNet, every one
    from diffusers import StableDiffusionXLPipeline

    unet_config = LI.layout_models("sdxl")["unet"].config
    mapped, _ = StableDiffusionXLPipeline.lora_state_dict(str(kohya), unet_config=unet_config)
    layers = {diffusers_layer(k) for k in mapped}
    assert layers == set(LF.target_layer_shapes(LI.layout_models("sdxl")["unet"]))
    print("\n" + stages.table())
    peak = _peak_rss_gb()
    print(f"[sdxl] peak RSS {peak:.2f} GB (budget {MEMORY_BUDGET_GB} GB)")
    assert peak < MEMORY_BUDGET_GB
