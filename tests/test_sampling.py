"""One seeded-generation function serves the comparison, attention maps, validation grids and demo."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from stableemote_utils import attention, compare, training_records
from stableemote_utils.cli import demo_app, demo_generation
from stableemote_utils.presets import get_preset
from stableemote_utils.sampling import SamplingSettings, generate

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


# What a SamplingSettings holds: none of these may travel as a loose parameter.
LOOSE = {"prompts", "seeds", "steps", "guidance", "resolution_px", "caption_template"}
TAKE_SETTINGS = (
    compare.fair_comparison,
    compare.scale_sweep,
    compare.checkpoint_progression,
    compare.adapter_comparison,
    attention.cross_attention_maps,
    training_records._sample_grid,
    demo_generation.demo_generate,
    demo_generation.render_picture,
    demo_generation.picture_label,
    demo_app.build_demo,
    generate,
)


def test_the_picture_makers_take_one_settings_object():
    for func in TAKE_SETTINGS:
        params = inspect.signature(func).parameters
        name = func.__qualname__
        assert "settings" in params, name
        assert params["settings"].annotation in ("SamplingSettings", "SamplingSettings | None")
        assert not LOOSE & set(params), f"{name} takes {LOOSE & set(params)} loose"
        after = list(params)[list(params).index("settings") + 1 :]
        assert all(params[p].kind is inspect.Parameter.KEYWORD_ONLY for p in after), name


def test_calls_with_more_than_four_arguments_use_keywords():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                where = f"{path.relative_to(PACKAGE)}:{node.lineno} {ast.unparse(node.func)}"
                assert len(node.args) <= 4, f"{where} passes {len(node.args)} positionally"


def test_a_caption_template_marks_the_name_with_braces_or_name():
    from stableemote_utils.sampling import SamplingSettings

    for template in ("An emoji of {}", "An emoji of {name}"):
        assert SamplingSettings(caption_template=template).caption("cat face") == (
            "An emoji of cat face"
        )
