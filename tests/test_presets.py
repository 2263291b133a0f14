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


# ---------------------------------------------------------------------------
# A name that is no preset, no folder and no Hub id is refused (issue 37)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "near"),
    [("tiny_random", "tiny-random"), ("sd-15", "sd15"), ("Tiny-Randm", "tiny-random"), ("bogus", None)],
)  # fmt: skip
def test_a_name_that_is_no_preset_folder_or_hub_id_lists_the_presets(name, near):
    from stableemote_utils import presets

    with pytest.raises(StableEmoteError) as caught:
        get_preset(name)
    message = str(caught.value)
    assert "\n" not in message and f"'{name}' is not a preset" in message
    table = presets.preset_table()  # the list comes from the table, whatever it holds
    assert f"The presets are {', '.join(table)}." in message
    assert ("Did you mean" in message) == (near is not None), message
    if near is not None:
        assert message.endswith(f"Did you mean '{near}'?")


def test_the_environment_variable_is_named_when_it_holds_the_bad_name(monkeypatch):
    monkeypatch.setenv("STABLEEMOTE_PRESET", "bogus")
    with pytest.raises(StableEmoteError, match="^STABLEEMOTE_PRESET=bogus is not a preset"):
        get_preset()


def test_folders_that_exist_and_hub_ids_are_still_models(tmp_path):
    assert get_preset(str(tmp_path)).model == str(tmp_path)
    assert get_preset("someone/emoji.model-2").name == "custom"
    with pytest.raises(StableEmoteError, match="model folder '.*nope' does not exist"):
        get_preset(str(tmp_path / "nope"))  # a path, not a name: said so


def test_the_notebooks_config_cell_refuses_a_bad_preset(monkeypatch):
    from stableemote_utils.notebook import notebook_setup

    monkeypatch.setenv("STABLEEMOTE_PRESET", "tiny_random")
    with pytest.raises(StableEmoteError, match="Did you mean 'tiny-random'"):
        notebook_setup(device="cpu")


# ---------------------------------------------------------------------------
# A cache folder that cannot be used is one line, before any work (issue 37)
# ---------------------------------------------------------------------------


def unusable_cache(kind: str, tmp_path) -> str:
    """A ``$STABLEEMOTE_CACHE`` that cannot be used: a file, a path under a file, a folder
    without write permission, or sysfs (no files can be made there, not even by root)."""
    import os
    import sys

    mine = tmp_path / "mine.txt"
    mine.write_text("a user's file")
    if kind == "file":
        return str(mine)
    if kind == "under-a-file":
        return str(mine / "cache")
    if kind == "read-only-folder":
        if os.geteuid() == 0:
            pytest.skip("root writes in any folder")
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
        return str(folder)
    if not (sys.platform.startswith("linux") and os.path.isdir("/sys")):
        pytest.skip("needs Linux's /sys")
    return "/sys"


CACHE_KINDS = ["file", "under-a-file", "read-only-folder", "sysfs"]


@pytest.mark.parametrize("kind", CACHE_KINDS)
def test_an_unusable_cache_is_one_line_naming_the_variable(kind, tmp_path, monkeypatch):
    from stableemote_utils.notebook import notebook_setup
    from stableemote_utils.presets import check_cache_dir

    path = unusable_cache(kind, tmp_path)
    monkeypatch.setenv("STABLEEMOTE_CACHE", path)
    for check in (check_cache_dir, lambda: notebook_setup("tiny-random", device="cpu")):
        with pytest.raises(StableEmoteError) as caught:
            check()
        message = str(caught.value)
        assert "\n" not in message and message.startswith(f"STABLEEMOTE_CACHE={path} ")
        assert "Set STABLEEMOTE_CACHE to a folder you can write in" in message
    assert (tmp_path / "mine.txt").read_text() == "a user's file"


def test_a_usable_cache_is_made_and_left_clean(tmp_path, monkeypatch):
    from stableemote_utils.presets import check_cache_dir

    monkeypatch.setenv("STABLEEMOTE_CACHE", str(tmp_path / "new" / "cache"))
    assert check_cache_dir() == str(tmp_path / "new" / "cache")
    assert list((tmp_path / "new" / "cache").iterdir()) == []  # the probe file is gone
