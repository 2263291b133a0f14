"""One seeded-generation function serves the comparison, attention maps, validation grids and demo."""

from __future__ import annotations

import ast
from pathlib import Path

from stableemote_utils.presets import get_preset
from stableemote_utils.sampling import SamplingSettings

PACKAGE = Path(__file__).resolve().parents[1] / "stableemote_utils"
USERS = ("compare.py", "attention.py", "training_records.py", "cli/demo_generation.py")


def _imports_generate_from_sampling(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(
        isinstance(node, ast.ImportFrom)
        and node.module == "stableemote_utils.sampling"
        and any(alias.name == "generate" for alias in node.names)
        for node in ast.walk(tree)
    )


def test_the_four_picture_makers_use_the_one_generate():
    for name in USERS:
        assert _imports_generate_from_sampling(PACKAGE / name), name


def test_no_other_module_seeds_a_pipeline_call_itself():
    # A pipeline call with a generator= keyword is a copy of generate(). TinyEmote's
    # evaluation draws batches with one generator per picture: its own, measured, thing.
    allowed = {"sampling.py", "tinyemote/evaluate.py"}
    for path in PACKAGE.rglob("*.py"):
        rel = str(path.relative_to(PACKAGE))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute):
                name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
                if name in ("pipe", "pipeline") and any(
                    k.arg == "generator" for k in node.keywords
                ):
                    assert rel in allowed, f"{rel}:{node.lineno} seeds its own pipeline call"


def test_settings_take_the_presets_defaults_and_skip_none_overrides():
    tiny = get_preset("tiny")
    s = SamplingSettings.for_preset(tiny, steps=None, seeds=[1, 2])
    assert (s.steps, s.guidance, s.resolution_px) == (
        tiny.sample_steps,
        tiny.guidance_scale,
        tiny.resolution_px,
    )
    assert s.seeds == (1, 2) and s.caption_template == tiny.caption_template
