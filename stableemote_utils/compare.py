"""A fair base-vs-LoRA comparison: same prompt, seed, scheduler, steps, guidance and size.

Every image is recorded (prompt, seed, scheduler class and config, steps, guidance,
resolution, LoRA file and scale) in a JSON file next to the grid, and
:func:`regenerate` makes the same grid again from that record alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.training import ORIGINAL_PROMPTS

RECORD_VERSION = 1


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def generate(pipe, prompt: str, seed: int, steps: int, guidance: float, resolution_px: int):
    """One image from a seeded CPU generator (so CPU and GPU runs share their initial noise)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return pipe(
        prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=resolution_px,
        width=resolution_px,
        generator=g,
    ).images[0]


def fair_comparison(
    pipe,
    lora_path: str | os.PathLike,
    prompts: list[str] | tuple[str, ...] = ORIGINAL_PROMPTS,
    seeds: list[int] | tuple[int, ...] = (0,),
    steps: int = 25,
    guidance: float = 7.5,
    resolution_px: int = 256,
    caption_template: str = "An emoji of {name}",
    lora_scale: float = 1.0,
):
    """Generate each prompt and seed with the base model and with the LoRA.

    Args:
        pipe: a StableDiffusionPipeline of the base model (the LoRA is loaded into it and
            removed again at the end).
        lora_path: an adapter file or folder.
        prompts: emoji names; each goes through ``caption_template``.
        seeds: one column pair (base, LoRA) per seed.

    Returns:
        ``(grid, record)``: a PIL grid with rows = prompts and columns = base/LoRA per
        seed, and the JSON-able record of every setting.
    """
    from stableemote_utils.images import image_grid
    from stableemote_utils.lora import load_lora, resolve_lora_file, unload_lora

    if not prompts or not seeds:
        raise StableEmoteError("The comparison needs at least one prompt and one seed.")
    lora_file = resolve_lora_file(lora_path)
    load_lora(pipe, lora_file, adapter_name="compare", scale=lora_scale)
    scheduler = {"class": type(pipe.scheduler).__name__, "config": dict(pipe.scheduler.config)}
    images, entries = [], []
    try:
        for name in prompts:
            prompt = caption_template.format(name=name)
            for seed in seeds:
                for model in ("base", "lora"):
                    if model == "base":
                        pipe.disable_lora()
                    else:
                        pipe.enable_lora()
                    images.append(generate(pipe, prompt, seed, steps, guidance, resolution_px))
                    entries.append(
                        {
                            "model": model,
                            "prompt": prompt,
                            "seed": seed,
                            "steps": steps,
                            "guidance": guidance,
                            "resolution_px": resolution_px,
                            "lora_scale": 0.0 if model == "base" else lora_scale,
                            "scheduler": scheduler,
                        }
                    )
    finally:
        unload_lora(pipe)
    col_labels = [f"{m} s{s}" for s in seeds for m in ("base", "LoRA")]
    grid = image_grid(images, cols=2 * len(seeds), row_labels=list(prompts), col_labels=col_labels)
    record = {
        "version": RECORD_VERSION,
        "base_model": str(
            getattr(pipe, "name_or_path", "") or pipe.config.get("_name_or_path", "")
        ),
        "lora_file": str(lora_file),
        "lora_sha256": _file_sha256(lora_file),
        "prompts": list(prompts),
        "seeds": list(seeds),
        "caption_template": caption_template,
        "images": entries,
    }
    return grid, record


def save_comparison(grid, record: dict, out_png: str | os.PathLike) -> tuple[Path, Path]:
    """Write the grid PNG and its record (same name, ``.json``)."""
    from stableemote_utils.images import save_image

    png = save_image(grid, out_png)
    js = png.with_suffix(".json")
    js.write_text(json.dumps(record, indent=1, default=str))
    return png, js


def regenerate(record_path: str | os.PathLike, pipe):
    """Make the grid of a saved record again (same settings, same images on the same device)."""
    from diffusers import schedulers

    record = json.loads(Path(record_path).read_text())
    lora_file = Path(record["lora_file"])
    if not lora_file.exists():
        raise StableEmoteError(f"The record's adapter {lora_file} is gone; cannot regenerate.")
    if _file_sha256(lora_file) != record["lora_sha256"]:
        raise StableEmoteError(f"{lora_file} changed since the grid was made (checksum differs).")
    first = record["images"][0]
    cls = getattr(schedulers, first["scheduler"]["class"])
    pipe.scheduler = cls.from_config(first["scheduler"]["config"])
    return fair_comparison(
        pipe,
        lora_file,
        record["prompts"],
        record["seeds"],
        first["steps"],
        first["guidance"],
        first["resolution_px"],
        record["caption_template"],
        lora_scale=next(e["lora_scale"] for e in record["images"] if e["model"] == "lora"),
    )
