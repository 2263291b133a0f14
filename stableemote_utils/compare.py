"""A fair base-vs-LoRA comparison: same prompt, seed, scheduler, steps, guidance and size.

Lesson module of notebook ``06_inference_comparison``.

Every image is recorded (prompt, seed, scheduler class and config, steps, guidance,
resolution, LoRA file and scale) in a JSON file next to the grid, and
:func:`regenerate` makes the same grid again from that record alone.

Around it: a LoRA-scale sweep (:func:`scale_sweep`), the same prompt and seed at every
saved checkpoint (:func:`checkpoint_progression`), adapters of different ranks side by
side (:func:`adapter_comparison`), the prompt set (:func:`comparison_prompts`) and the
two sizes to compare at (:func:`comparison_sizes_px`). Each picture-maker takes one
:class:`~stableemote_utils.sampling.SamplingSettings` (prompts, seeds, steps, guidance,
size, caption template); what is its own (adapter, scale, scales) comes as keywords.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from pathlib import Path

from stableemote_utils.checkpoints import CHECKPOINT_RE
from stableemote_utils.data import load_emoji_dataset
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.images import image_grid, save_image
from stableemote_utils.lora_files import LORA_WEIGHT_NAME, read_lora_file, resolve_lora_file
from stableemote_utils.lora_peft import lora_loaded, set_lora_scale
from stableemote_utils.options import check_sampling_options
from stableemote_utils.presets import Preset, get_preset
from stableemote_utils.sampling import SamplingSettings, generate
from stableemote_utils.training_config import ORIGINAL_PROMPTS

__all__ = ["SamplingSettings", "generate"]  # re-exported: notebook 06 imports them from here

RECORD_VERSION = 1
SWEEP_SCALES = (0.0, 0.25, 0.5, 0.75, 1.0)
# The second comparison size is this multiple of the training size (256 -> 512 for sd15).
LARGER_SIZE_FACTOR = 2


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fair_comparison(
    pipe,
    lora_path: str | os.PathLike,
    settings: SamplingSettings,
    *,
    lora_scale: float = 1.0,
    images_out: list | None = None,
    adapter_name: str | None = None,
):
    """Generate each prompt and seed with the base model and with the LoRA.

    Args:
        pipe: a StableDiffusionPipeline of the base model (the LoRA is loaded into it and
            removed again at the end).
        lora_path: an adapter file or folder.
        settings: one row per prompt (an emoji name, through its caption template), one
            column pair (base, LoRA) per seed, at its steps, guidance and size.
        images_out: if given, the generated images are appended to it, in the order of
            ``record["images"]`` (for scoring them).
        adapter_name: the name of an adapter already loaded from ``lora_path`` (see
            :func:`stableemote_utils.lora_peft.lora_loaded`); it is used and left loaded.
            ``None`` loads ``lora_path`` here and removes it at the end.

    Returns:
        ``(grid, record)``: a PIL grid with rows = prompts and columns = base/LoRA per
        seed, and the JSON-able record of every setting.
    """

    prompts, seeds = settings.prompts, settings.seeds
    if not prompts or not seeds:
        raise StableEmoteError("The comparison needs at least one prompt and one seed.")
    check_sampling_options(
        settings.steps,
        settings.guidance,
        settings.resolution_px,
        seeds=list(seeds),
        lora_scale=lora_scale,
    )
    lora_file = resolve_lora_file(lora_path)
    loading = contextlib.nullcontext(adapter_name)
    if adapter_name is None:
        loading = lora_loaded(pipe, lora_file, adapter_name="compare", scale=lora_scale)
    scheduler = {"class": type(pipe.scheduler).__name__, "config": dict(pipe.scheduler.config)}
    images, entries = [], []
    with loading as name_loaded:
        set_lora_scale(pipe, lora_scale, name_loaded)
        for name in prompts:
            prompt = settings.caption(name)
            for seed in seeds:
                for model in ("base", "lora"):
                    if model == "base":
                        pipe.disable_lora()
                    else:
                        pipe.enable_lora()
                    images.append(generate(pipe, prompt, seed, settings))
                    entries.append(
                        {
                            "model": model,
                            "prompt": prompt,
                            "seed": seed,
                            "steps": settings.steps,
                            "guidance": settings.guidance,
                            "resolution_px": settings.resolution_px,
                            "lora_scale": 0.0 if model == "base" else lora_scale,
                            "generator": {"device": "cpu", "seed": seed},
                            "scheduler": scheduler,
                        }
                    )
        pipe.enable_lora()
    col_labels = [f"{m} s{s}" for s in seeds for m in ("base", "LoRA")]
    grid = image_grid(images, cols=2 * len(seeds), row_labels=list(prompts), col_labels=col_labels)
    record = {
        "version": RECORD_VERSION,
        "base_model": base_model_location(pipe),
        "lora_file": str(Path(lora_file).resolve()),
        "lora_sha256": _file_sha256(lora_file),
        "prompts": list(prompts),
        "seeds": list(seeds),
        "caption_template": settings.caption_template,
        "images": entries,
    }
    if images_out is not None:
        images_out.extend(images)
    return grid, record


def base_model_location(pipe) -> str:
    """The Hub id, or the absolute folder, that the pipeline's model was loaded from.

    Read from the pipeline (set by :func:`stableemote_utils.loading.make_pipeline`), else
    from its UNet's config; a local folder is made absolute so that a record written here
    can be reproduced from any other folder. ``""`` when neither says.
    """
    name = str(getattr(pipe, "name_or_path", None) or pipe.unet.config.get("_name_or_path") or "")
    local = Path(os.path.expanduser(name))
    return str(local.resolve()) if name and local.exists() else name


def save_comparison(grid, record: dict, out_png: str | os.PathLike) -> tuple[Path, Path]:
    """Write the grid PNG and its record (same name, ``.json``)."""

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
    settings = SamplingSettings(
        prompts=tuple(record["prompts"]),
        seeds=tuple(record["seeds"]),
        steps=first["steps"],
        guidance=first["guidance"],
        resolution_px=first["resolution_px"],
        caption_template=record["caption_template"],
    )
    return fair_comparison(
        pipe,
        lora_file,
        settings,
        lora_scale=next(e["lora_scale"] for e in record["images"] if e["model"] == "lora"),
    )


def comparison_prompts(preset=None, heldout_count: int = 4) -> tuple[list[str], list[str]]:
    """The emoji names to compare on: the original project's eight, and held-out names.

    Args:
        preset: a :class:`~stableemote_utils.presets.Preset` or name (``None``: the
            environment's preset); its data set and held-out fraction pick the names.
        heldout_count: how many held-out names (emoji the LoRA never saw in training).

    Returns:
        ``(original, heldout)``: two lists of names, without the caption template.
    """

    p = preset if isinstance(preset, Preset) else get_preset(preset)
    heldout = load_emoji_dataset(
        p.dataset,
        p.resolution_px,
        p.caption_template,
        split="heldout",
        heldout_fraction=p.heldout_fraction,
        limit=heldout_count,
    )
    return list(ORIGINAL_PROMPTS), [e.name for e in heldout]


def comparison_sizes_px(preset=None) -> tuple[int, int]:
    """The two sizes to compare at: the training size and ``LARGER_SIZE_FACTOR`` times it.

    ``(256, 512)`` for ``sd15`` (512 px is what SD 1.5 itself was trained at), ``(64, 128)``
    for ``tiny``.
    """

    p = preset if isinstance(preset, Preset) else get_preset(preset)
    return p.resolution_px, LARGER_SIZE_FACTOR * p.resolution_px


def adapter_resolution_px(lora_path: str | os.PathLike, default: int | None = None) -> int | None:
    """The resolution an adapter was trained at, from its file header (``resolution_px``).

    Returns ``default`` when the header does not say (files from elsewhere, checkpoints).
    """

    _, metadata = read_lora_file(lora_path)
    value = metadata.get("resolution_px")
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def scale_sweep(
    pipe,
    lora_path: str | os.PathLike,
    settings: SamplingSettings,
    *,
    scales: list[float] | tuple[float, ...] = SWEEP_SCALES,
    adapter_name: str | None = None,
):
    """The settings' first prompt and seed at several LoRA scales, as a labelled strip.

    Scale 0 is the base model, 1 the adapter as trained; values in between blend the
    low-rank update in linearly (``W + scale * (alpha / r) * B A``). ``adapter_name``
    names an adapter already loaded from ``lora_path`` (left loaded, at scale 1
    afterwards); ``None`` loads it here and removes it at the end.

    Returns:
        A PIL strip, one column per scale, labelled ``scale 0.25`` etc.
    """

    if not scales:
        raise StableEmoteError("The scale sweep needs at least one scale, e.g. 0, 0.5, 1.")
    prompt, seed = settings.prompts[0], settings.seeds[0]
    text = settings.caption(prompt)
    loading = contextlib.nullcontext(adapter_name)
    if adapter_name is None:
        loading = lora_loaded(pipe, lora_path, adapter_name="sweep")
    images = []
    with loading as name_loaded:
        for scale in scales:
            set_lora_scale(pipe, float(scale), name_loaded)
            images.append(generate(pipe, text, seed, settings))
        set_lora_scale(pipe, 1.0, name_loaded)
    return image_grid(
        images,
        cols=len(images),
        row_labels=[prompt],
        col_labels=[f"scale {s:g}" for s in scales],
    )


def list_adapter_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, adapter file)`` for every saved checkpoint of a training run, oldest first.

    Looks in ``run_dir/checkpoints/checkpoint-NNNNNN/pytorch_lora_weights.safetensors`` and
    adds the final ``run_dir/pytorch_lora_weights.safetensors`` (at the run's last step, read
    from ``summary.json``) when it is not already a checkpoint.

    Raises:
        StableEmoteError: if the folder holds no adapter at all.
    """

    run = Path(os.path.expanduser(str(run_dir)))
    found: dict[int, Path] = {}
    for folder in sorted((run / "checkpoints").glob("checkpoint-*")):
        match = CHECKPOINT_RE.match(folder.name)
        if match and (folder / LORA_WEIGHT_NAME).is_file():
            found[int(match.group(1))] = folder / LORA_WEIGHT_NAME
    final = run / LORA_WEIGHT_NAME
    summary = run / "summary.json"
    if final.is_file() and summary.is_file():
        final_step = int(json.loads(summary.read_text()).get("steps", 0))
        found.setdefault(final_step, final)
    if not found:
        raise StableEmoteError(
            f"No adapter in '{run}': expected checkpoints/checkpoint-NNNNNN/{LORA_WEIGHT_NAME} "
            "(written by stableemote train) or a final adapter with its summary.json."
        )
    return sorted(found.items())


def _generate_with_adapter(
    pipe, lora_path: str | os.PathLike | None, settings: SamplingSettings
) -> list:
    """One image per prompt of ``settings`` at its first seed, with ``lora_path`` loaded
    (``None``: the base model), then unloaded."""

    texts = [settings.caption(name) for name in settings.prompts]
    seed = settings.seeds[0]
    if lora_path is None:
        return [generate(pipe, t, seed, settings) for t in texts]
    with lora_loaded(pipe, lora_path, adapter_name="compare-one"):
        return [generate(pipe, t, seed, settings) for t in texts]


def checkpoint_progression(pipe, run_dir: str | os.PathLike, settings: SamplingSettings):
    """The settings' first prompt and seed at step 0 (the base model) and at every saved checkpoint.

    Returns:
        A PIL strip, one column per checkpoint, labelled ``step 0``, ``step 100``, ...
    """

    checkpoints = list_adapter_checkpoints(run_dir)
    prompt = settings.prompts[0]
    one = dataclasses.replace(settings, prompts=(prompt,))
    images = _generate_with_adapter(pipe, None, one)
    labels = ["step 0"]
    for step, file in checkpoints:
        images += _generate_with_adapter(pipe, file, one)
        labels.append(f"step {step}")
    return image_grid(images, cols=len(images), row_labels=[prompt], col_labels=labels)


def adapter_comparison(pipe, adapters: dict[str, str | os.PathLike], settings: SamplingSettings):
    """Several adapters (e.g. rank 2, 4, 8) against the base model, same prompts and seed.

    Args:
        adapters: column label -> adapter file or folder, e.g. ``{"rank 4": path}``.
        settings: one row per prompt (emoji name), all at its first seed.

    Returns:
        A PIL grid: rows = prompts, columns = base, then each adapter.
    """

    prompts = settings.prompts
    if not adapters or not prompts:
        raise StableEmoteError("adapter_comparison needs at least one adapter and one prompt.")
    columns = [_generate_with_adapter(pipe, path, settings) for path in [None, *adapters.values()]]
    images = [columns[c][r] for r in range(len(prompts)) for c in range(len(columns))]
    return image_grid(
        images, cols=len(columns), row_labels=list(prompts), col_labels=["base", *adapters]
    )
