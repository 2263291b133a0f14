"""What users keep and share: the comparison record reproduces from anywhere."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from stableemote_utils.compare import fair_comparison
from stableemote_utils.lora import add_lora
from stableemote_utils.lora_files import save_lora
from stableemote_utils.sampling import SamplingSettings


def _adapter(unet, folder: Path) -> Path:
    unet = copy.deepcopy(unet)
    torch.manual_seed(0)
    add_lora(unet, rank=2)
    return save_lora(unet, folder)


def test_comparison_record_names_the_base_model_and_the_adapter_absolutely(
    tiny_model_dir, tmp_path, monkeypatch
):
    from stableemote_utils.loading import load_components, make_pipeline

    monkeypatch.chdir(tmp_path)
    # Relative paths, as a user types them on the command line.
    relative_model = os.path.relpath(tiny_model_dir, tmp_path)
    pipe = make_pipeline(load_components(relative_model))
    _adapter(pipe.unet, tmp_path / "adapter")
    settings = SamplingSettings(prompts=("cat face",), steps=1, resolution_px=32, guidance=1.0)
    _, record = fair_comparison(pipe, "adapter", settings)
    assert record["base_model"] == str(Path(tiny_model_dir).resolve())
    assert record["lora_file"] == str(tmp_path / "adapter" / "pytorch_lora_weights.safetensors")
    # From another folder, both still point at what made the grid.
    monkeypatch.chdir(tmp_path.parent)
    assert (Path(record["base_model"]) / "unet").is_dir()
    assert Path(record["lora_file"]).is_file()


def test_a_hub_id_stays_a_hub_id(tiny_components):
    from stableemote_utils.compare import base_model_location
    from stableemote_utils.loading import make_pipeline

    pipe = make_pipeline(copy.copy(tiny_components))
    pipe.register_to_config(_name_or_path="stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert base_model_location(pipe) == "stable-diffusion-v1-5/stable-diffusion-v1-5"


def test_adapters_exports_and_checkpoints_get_the_mode_open_gives(tmp_path, tiny_components):
    import stat

    from stableemote_utils.checkpoints import save_checkpoint
    from stableemote_utils.lora_files import lora_state_dict
    from stableemote_utils.lora_inspect import export_kohya

    unet = copy.deepcopy(tiny_components.unet)
    add_lora(unet, rank=2)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    old = os.umask(0o027)  # a umask other than the usual 022, so the mode is really derived
    try:
        adapter = save_lora(unet, tmp_path / "adapter")
        kohya = export_kohya(adapter, tmp_path / "export" / "emoji_kohya.safetensors")
        checkpoint = save_checkpoint(
            tmp_path / "checkpoints", 2, lora_state_dict(unet), optimizer.state_dict(), {}
        )
    finally:
        os.umask(old)
    files = [adapter, kohya, *checkpoint.iterdir()]
    assert len(files) == 6
    modes = {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files}
    assert set(modes.values()) == {oct(0o640)}, modes  # 0666 less the umask, not 0600
    assert not list(tmp_path.rglob("*.partial")) and not list(tmp_path.rglob(".mode-probe-*"))


def test_folders_written_aside_get_the_mode_open_gives(tmp_path):
    import stat

    from safetensors.torch import save_file

    from stableemote_utils.files import staged_folder

    old = os.umask(0o027)
    try:
        with staged_folder(tmp_path / "model") as staging:
            (staging / "unet").mkdir(parents=True)
            # what every save_pretrained does: safetensors writes a private 0600 file
            save_file({"w": torch.zeros(2)}, staging / "unet" / "weights.safetensors")
    finally:
        os.umask(old)
    written = tmp_path / "model" / "unet" / "weights.safetensors"
    assert oct(stat.S_IMODE(written.stat().st_mode)) == oct(0o640)
