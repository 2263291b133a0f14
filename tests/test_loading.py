import json

import pytest
import torch

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.loading import load_components, load_pipeline


def test_loads_tiny_by_preset_name(tiny_model_dir):
    parts = load_components("tiny-random")
    assert parts.source == str(tiny_model_dir)
    assert not any(p.requires_grad for p in parts.unet.parameters())
    assert parts.unet.training is False


def test_dtype_is_applied(tiny_model_dir):
    parts = load_components(str(tiny_model_dir), dtype=torch.bfloat16)
    for module in (parts.unet, parts.vae, parts.text_encoder):
        assert next(module.parameters()).dtype == torch.bfloat16


def test_pipeline_has_no_safety_checker(tiny_model_dir):
    pipe = load_pipeline(str(tiny_model_dir))
    assert pipe.safety_checker is None


def test_missing_folder_says_so(tmp_path):
    with pytest.raises(StableEmoteError, match="does not exist.*The presets are .*tiny"):
        load_components(str(tmp_path / "nope"))


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "X"}))
    (tmp_path / "unet").mkdir()
    with pytest.raises(StableEmoteError, match="not a diffusers Stable Diffusion model.*vae"):
        load_components(str(tmp_path))


def test_a_file_is_not_a_model(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"")
    with pytest.raises(StableEmoteError, match="is a file"):
        load_components(str(f))


def test_hub_id_offline_suggests_tiny(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(StableEmoteError, match="Hub.*STABLEEMOTE_PRESET=tiny"):
        load_components("no-such-owner/no-such-model")


def test_broken_weights_in_a_model_folder(tmp_path, tiny_model_dir):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(StableEmoteError, match="could not be read"):
        load_components(str(broken))


def test_loading_draws_no_weight_loading_bar_and_leaves_the_bar_settings(tiny_model_dir, capfd):
    from transformers import CLIPTextModel
    from transformers.utils import logging as hf_logging

    CLIPTextModel.from_pretrained(tiny_model_dir, subfolder="text_encoder")
    assert "Loading weights" in capfd.readouterr().err  # what a notebook showed before
    load_components(str(tiny_model_dir))
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()
    previous = hf_logging.set_tqdm_hook(None)
    assert previous is None  # our hook is gone again


def test_the_early_hub_check_names_the_model_and_passes_one_in_the_local_cache(
    tmp_path, monkeypatch
):
    """Offline, a Hub model is refused before any work unless the Hub cache holds it: a
    model loaded once (its UNet's config.json fetched) passes, as its loading would."""
    from huggingface_hub import constants

    from stableemote_utils.loading import check_hub_model

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(StableEmoteError, match="Could not load the model 'someone/cached-model'"):
        check_hub_model("someone/cached-model")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--someone--cached-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit / "unet").mkdir(parents=True)
    (repo / "snapshots" / commit / "unet" / "config.json").write_text("{}")
    check_hub_model("someone/cached-model")
    check_hub_model(str(tmp_path))  # a folder is left to load_components
