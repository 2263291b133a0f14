import pytest

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.presets import CAPTION_TEMPLATE, SD15_MODEL_ID, get_preset


def test_default_is_sd15(monkeypatch):
    monkeypatch.delenv("STABLEEMOTE_PRESET", raising=False)
    preset = get_preset()
    assert preset.name == "sd15"
    assert preset.model == SD15_MODEL_ID
    assert (preset.resolution_px, preset.batch_size) == (256, 8)
    assert preset.caption_template == CAPTION_TEMPLATE == "An emoji of {name}"


def test_env_var_chooses_tiny(monkeypatch, tmp_path):
    monkeypatch.setenv("STABLEEMOTE_PRESET", "tiny")
    monkeypatch.setenv("STABLEEMOTE_CACHE", str(tmp_path))
    preset = get_preset()
    assert preset.is_tiny
    assert preset.dataset == "openmoji"  # TinyEmote learnt Noto; its LoRA lesson is OpenMoji
    assert preset.model == str(tmp_path / "tinyemote")


def test_tiny_random_is_the_random_builder(monkeypatch, tmp_path):
    monkeypatch.setenv("STABLEEMOTE_CACHE", str(tmp_path))
    preset = get_preset("tiny-random")
    assert preset.is_tiny and preset.name == "tiny-random"
    assert preset.model == str(tmp_path / "tiny-sd")
    assert preset.dataset == "noto"
    assert get_preset("tiny").model != preset.model


def test_argument_beats_env(monkeypatch):
    monkeypatch.setenv("STABLEEMOTE_PRESET", "tiny")
    assert get_preset("sd15").name == "sd15"


def test_model_id_or_folder_gets_sd15_sizes():
    preset = get_preset("someone/their-sd15-finetune")
    assert preset.name == "custom"
    assert preset.model == "someone/their-sd15-finetune"
    assert preset.resolution_px == 256


def test_blank_preset_is_an_error():
    with pytest.raises(StableEmoteError, match="empty"):
        get_preset("  ")
