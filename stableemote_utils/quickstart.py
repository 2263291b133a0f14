"""The course's main job in one command (``make demo``): train a short LoRA, then compare.

On the ``tiny`` preset it runs offline on a laptop CPU in a few minutes; with
``STABLEEMOTE_PRESET=sd15`` the same code trains on SD 1.5 on a GPU.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from stableemote_utils.compare import (
    checkpoint_progression,
    comparison_prompts,
    fair_comparison,
    save_comparison,
    scale_sweep,
)
from stableemote_utils.images import save_image
from stableemote_utils.loading import load_components, make_pipeline
from stableemote_utils.lora_peft import lora_loaded
from stableemote_utils.precision import choose_dtype, pick_device
from stableemote_utils.presets import Preset, get_preset
from stableemote_utils.sampling import SamplingSettings
from stableemote_utils.training import ORIGINAL_PROMPTS, TrainConfig, TrainResult, recipe, train

HELDOUT_PROMPTS_SHOWN = 2


def quickstart_config(
    p: Preset, output_dir: str, device: str | None = None, steps: int | None = None
) -> TrainConfig:
    """The quickstart's run: ``tiny-quick`` on the tiny presets; on SD 1.5 (or any other
    model) the original recipe's settings (rank 4 on the attention projections, 1e-4),
    500 steps. ``steps`` overrides either."""
    where = dict(preset=p.name if p.name != "custom" else p.model, output_dir=output_dir)
    if p.is_tiny:
        config = recipe("tiny-quick", **where, device=device)
    else:
        config = recipe(
            "original", **where, device=device, steps=500, checkpoint_every=250, validate_every=250
        )
    return config if steps is None else dataclasses.replace(config, steps=steps)


def run_quickstart(
    preset: str | None = None,
    output_dir: str = "outputs/demo",
    device: str | None = None,
    steps: int | None = None,
    figures_dir: str | None = None,
) -> TrainResult:
    """Train (short recipe), then write the fair base-vs-LoRA grid and the loss plot.

    Files under ``output_dir``: ``pytorch_lora_weights.safetensors``, ``loss.png``,
    ``comparison.png`` + ``comparison.json``, ``scale_sweep.png``, ``progression.png``,
    ``samples/``, ``checkpoints/``. With ``figures_dir``, the grids and the loss plot are
    also copied there as ``results_<preset>_*.png`` (how the README's results are made).
    """

    p = get_preset(preset)
    out = Path(output_dir)
    config = quickstart_config(p, str(out), device, steps)
    print(f"StableEmote quickstart: preset {p.name}, {config.steps} LoRA steps -> {out}/")
    result = train(config, resume="latest", preset=p)  # the preset is resolved once, above

    dev = pick_device(device)
    dtype, _ = choose_dtype(dev)
    pipe = make_pipeline(load_components(p, device=dev, dtype=dtype))
    original, heldout = comparison_prompts(p, heldout_count=HELDOUT_PROMPTS_SHOWN)
    prompts = [*original[:4], *heldout]
    settings = SamplingSettings.for_preset(p, prompts=prompts, seeds=(0, 1))
    one = SamplingSettings.for_preset(p, prompts=[ORIGINAL_PROMPTS[2]], seeds=(0,))
    # One load of the trained adapter serves the comparison and the scale sweep.
    with lora_loaded(pipe, result.adapter_path, adapter_name="quickstart") as adapter:
        grid, record = fair_comparison(pipe, result.adapter_path, settings, adapter_name=adapter)
        sweep_strip = scale_sweep(pipe, result.adapter_path, one, adapter_name=adapter)
    png, js = save_comparison(grid, record, out / "comparison.png")
    sweep = save_image(sweep_strip, out / "scale_sweep.png")
    progression = save_image(checkpoint_progression(pipe, out, one), out / "progression.png")
    held = result.heldout
    first, last = min(held), max(held)
    print("")
    print(
        f"held-out loss: {held[first]:.4f} before training -> {held[last]:.4f} after {last} steps"
    )
    print(f"wrote {result.adapter_path}")
    print(f"wrote {out / 'loss.png'}")
    print(f"wrote {png} (+ {js.name}: every setting, to regenerate it)")
    print(f"wrote {sweep} and {progression}")
    if figures_dir is not None:
        import shutil

        for src in (png, out / "loss.png", sweep, progression):
            dst = Path(figures_dir) / f"results_{p.name}_{src.name}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            print(f"wrote {dst}")
    if p.name == "tiny":
        print(
            f"TinyEmote draws Noto-style emoji; the LoRA on '{config.dataset or p.dataset}' gives "
            f"them OpenMoji's black outlines: compare the base and LoRA columns of {png}"
        )
        measured = shipped_style_line()
        if measured:
            print(measured)
    elif p.is_tiny:
        print(
            "note: the tiny-random preset's model has random weights, so its pictures are noise; "
            "the run checks the machinery end to end."
        )
    (out / "quickstart.json").write_text(
        json.dumps({"heldout_loss": held, "comparison": str(png)}, indent=1)
    )
    return result


def shipped_style_line() -> str | None:
    """One line from TinyEmote's shipped ``metrics.json``: how often the style probe calls the
    base model's and the ``tiny-quick`` LoRA's pictures OpenMoji, and what the subject kept
    (``None`` if the shipped file has no such measurement)."""
    from stableemote_utils.tinyemote.install import SHIPPED_DIR

    file = SHIPPED_DIR / "metrics.json"
    record = json.loads(file.read_text()) if file.is_file() else {}
    if "style_and_subject" not in record:
        return None
    r = record["style_and_subject"]["splits"]["train"]
    m, change = r["models"], r["changes"]["lora - base"]
    return (
        f"measured on this recipe by `stableemote evaluate-tiny` ({r['pictures']} pictures a "
        f"model, training names): a style probe calls {m['base']['openmoji']['share']:.0%} of "
        f"the base model's pictures OpenMoji, {m['base_word']['openmoji']['share']:.0%} when "
        f'the prompt says "openmoji", and {m["lora"]["openmoji"]["share"]:.0%} of the LoRA\'s; '
        f"prompt following {m['base']['prompt_following']['share']:.0%} -> "
        f"{m['lora']['prompt_following']['share']:.0%}, tiny CLIP score "
        f"x{change['clip_score_ratio']['value']:.2f}"
    )
