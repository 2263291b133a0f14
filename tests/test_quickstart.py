"""The quickstart (``make demo``): train a short LoRA, then compare, resolving the preset once."""

from __future__ import annotations

import json
import sys

import pytest

from stableemote_utils import presets
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.quickstart import run_quickstart
from stableemote_utils.training import recipe, train


@pytest.fixture
def preset_calls(monkeypatch) -> list[tuple]:
    """Every call of ``get_preset``, whichever module it was imported into."""
    real, calls = presets.get_preset, []

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    for name, module in list(sys.modules.items()):
        if name.startswith("stableemote_utils") and getattr(module, "get_preset", None) is real:
            monkeypatch.setattr(module, "get_preset", counting)
    return calls


@pytest.mark.slow  # moved out of make test's time budget; test-slow runs it
def test_quickstart_resolves_the_preset_once(tmp_path, tiny_model_dir, preset_calls):
    out = tmp_path / "demo"
    result = run_quickstart("tiny-random", output_dir=str(out), device="cpu", steps=2)
    assert result.step == 2 and result.adapter_path.exists()
    assert (out / "comparison.png").exists() and (out / "progression.png").exists()
    assert preset_calls == [("tiny-random",)], "resolve the preset once and pass it on"
    record = json.loads((out / "comparison.json").read_text())
    guidance = presets.get_preset("tiny-random").guidance_scale
    assert guidance != 7.5 and {e["guidance"] for e in record["images"]} == {guidance}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["validation_guidance"] == guidance, "validation uses it too"


def test_train_refuses_a_preset_that_is_not_the_configs(tmp_path):
    config = recipe("tiny-quick", preset="tiny-random", output_dir=str(tmp_path / "run"))
    with pytest.raises(StableEmoteError, match="preset 'sd15'.*'tiny-random'"):
        train(config, preset=presets.get_preset("sd15"))
    assert not (tmp_path / "run").exists(), "refused before anything is written"


def test_quickstart_trains_tiny_quick_on_the_tiny_presets_and_the_original_layers_on_sd15():
    from stableemote_utils.lora_files import LORA_TARGET_MODULES
    from stableemote_utils.quickstart import quickstart_config

    tiny = quickstart_config(presets.get_preset("tiny"), "out")
    assert tiny == recipe("tiny-quick", preset="tiny", output_dir="out")
    real = quickstart_config(presets.get_preset("sd15"), "out", steps=20)
    original = recipe("original")
    assert (real.rank, real.learning_rate, real.target_modules, real.steps) == (
        original.rank,
        original.learning_rate,
        LORA_TARGET_MODULES,
        20,
    )


def test_the_demo_quotes_the_shipped_style_measurement_of_its_own_recipe():
    from stableemote_utils.quickstart import shipped_style_line
    from stableemote_utils.tinyemote.install import SHIPPED_DIR

    record = json.loads((SHIPPED_DIR / "metrics.json").read_text())
    assert record["style"]["lora_steps"] == recipe("tiny-quick").steps, "metrics.json is stale"
    r = record["style_and_subject"]["splits"]["train"]
    m = r["models"]
    line = shipped_style_line()
    assert f"{m['base']['openmoji']['share']:.0%} of the base model's" in line
    assert f"{m['base_word']['openmoji']['share']:.0%} when the prompt says" in line
    assert f"{m['lora']['openmoji']['share']:.0%} of the LoRA's" in line
    assert f"x{r['changes']['lora - base']['clip_score_ratio']['value']:.2f}" in line
