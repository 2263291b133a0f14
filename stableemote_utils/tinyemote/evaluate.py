"""TinyEmote: the pretrained tiny model the ``tiny`` preset uses, and how it is measured.

The weights ship inside the package (``stableemote_utils/weights/tinyemote``, fp16
safetensors, made by ``stableemote pretrain-tiny``). :func:`ensure_tinyemote` installs
them into the cache with the CLIP tokenizer next to them, so that
``StableDiffusionPipeline.from_pretrained`` loads them like any SD 1.5 folder.

Three measurements, printed by ``stableemote evaluate-tiny`` and kept in the model card
(written by :mod:`stableemote_utils.tinyemote.card`):

* **VAE reconstruction:** PSNR on held-out emoji of both styles.
* **Prompt following:** prompts from five broad categories (faces, hearts, flags,
  clocks, hands), one image each; an image counts as right when its nearest real emoji
  belongs to the prompt's category. Prompts are balanced, so chance is 1 in 5. The same
  nearest-neighbour rule applied to real held-out emoji gives the ceiling.
* **Style shift:** KID of generated images to the real held-out emoji in OpenMoji's style
  and in Noto's style, before and after a short LoRA on OpenMoji.

The LoRA lesson's two measurements, style and subject on the same pictures, come from
:mod:`stableemote_utils.tinyemote.style` (a style probe on the tiny CLIP's image features;
prompt following and the tiny CLIP score) for the base model, the base model prompted with
the style word "openmoji" and the LoRA, on training and held-out names, with intervals
from a cluster bootstrap over the prompts.

The feature space of these three is fixed and needs no download: the image shrunk to
16 x 16 pixels (768 numbers). It sees colour and layout, which is what separates these
categories and these two styles; it knows nothing of meaning.

Two more come from TinyEmote's own tiny CLIP (:mod:`stableemote_utils.tinyemote.clip`), which
does know something of meaning:

* **Tiny CLIP retrieval:** each held-out name ranks the held-out images (Noto and
  OpenMoji); top-1 and top-5 against chance.
* **Tiny CLIP score:** ``100 * max(cos, 0)`` of generated images against their prompts,
  next to real emoji against their names (the ceiling) and real emoji against shuffled
  names (the floor).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from stableemote_utils.data import images_to_tensor, is_heldout, load_emoji_dataset
from stableemote_utils.emoji_fonts import build_font_folder, font_rows
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.images import image_grid, save_image
from stableemote_utils.loading import load_components, load_pipeline, make_pipeline
from stableemote_utils.lora_peft import load_lora, unload_lora
from stableemote_utils.metrics import clip_score, kid
from stableemote_utils.precision import pick_device
from stableemote_utils.presets import CAPTION_TEMPLATE, get_preset
from stableemote_utils.tinyemote.clip import (
    TinyClipProcessor,
    load_clip_pairs,
    load_tiny_clip,
    retrieval,
    shuffled,
)
from stableemote_utils.tinyemote.install import SHIPPED_MODELS, shipped_digest
from stableemote_utils.tinyemote.pretrain import is_flag, reconstruction_psnr
from stableemote_utils.training import recipe, train

FEATURE_PX = 16
CATEGORIES = ("face", "heart", "flag", "clock", "hand")
EVAL_SEED = 0
EVAL_STEPS = 25
STYLE_LORA_DIR = "openmoji-lora"  # under evaluate-tiny's output folder
GUIDANCE_SWEEP = (1.0, 2.0, 3.0, 5.0, 7.5)  # prompt following at each, to choose the preset's


def image_features(images: list) -> torch.Tensor:
    """The fixed feature space: each RGB image shrunk to 16 x 16 (box filter), ``(N, 768)``.

    Values are in [0, 1]. Box filtering keeps thin dark outlines as darker cells.
    """
    from PIL import Image

    small = [
        im.convert("RGB").resize((FEATURE_PX, FEATURE_PX), Image.Resampling.BOX) for im in images
    ]
    return ((images_to_tensor(small) + 1) / 2).flatten(1)


def category_of(name: str, char: str = "") -> str | None:
    """The broad category of an emoji, or ``None``: first match of flag, clock, face, heart, hand."""
    n = name.lower()
    if is_flag(name, char):
        return "flag"
    if "o’clock" in n or "o'clock" in n or n.endswith("-thirty"):
        return "clock"
    if "face" in n:
        return "face"
    if "heart" in n and not any(w in n for w in ("couple", "kiss", "hands")):
        return "heart"
    if any(w in n for w in ("hand", "thumbs", "finger", "fist", "palm")):
        return "hand"
    return None


def categorised_emoji(source: str = "noto") -> list[tuple[str, str, str]]:
    """``(name, category, split)`` for every emoji of a font set that has a category."""

    fraction = get_preset("tiny").heldout_fraction
    rows = []
    for row in font_rows(build_font_folder(source)):
        cat = category_of(row["text"], row.get("emoji", ""))
        if cat:
            split = "heldout" if is_heldout(row["text"], fraction) else "train"
            rows.append((row["text"], cat, split))
    return rows


def nearest_category(
    features: torch.Tensor, ref_features: torch.Tensor, ref_labels: list[str]
) -> list[str]:
    """Category of each row's nearest reference (Euclidean): ``(N, d)`` x ``(M, d)`` -> N labels."""
    nearest = torch.cdist(features.double(), ref_features.double()).argmin(dim=1)
    return [ref_labels[i] for i in nearest.tolist()]


@torch.no_grad()
def generate_batch(
    pipe,
    prompts: list[str],
    seed: int = EVAL_SEED,
    steps: int = EVAL_STEPS,
    batch: int = 16,
    guidance: float | None = None,
) -> list:
    """One image per prompt; image ``i`` uses generator seed ``seed + i`` (batch-independent).

    ``guidance`` ``None`` is the tiny preset's guidance scale.
    """
    if guidance is None:
        guidance = get_preset("tiny").guidance_scale
    images = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        images += pipe(
            chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens
        ).images
    return images


def prompt_following(
    pipe,
    per_category: int = 10,
    caption: str = CAPTION_TEMPLATE,
    grid_path=None,
    guidance: float | None = None,
) -> dict:
    """Nearest-category accuracy of generated images (see the module docstring).

    Args:
        pipe: a ``StableDiffusionPipeline`` (TinyEmote).
        per_category: prompts per category, taken in a fixed order from the training names.
        grid_path: if given, save the generated images there, one row per category, each
            captioned with its prompt's name and the category its nearest real emoji has.
        guidance: classifier-free guidance scale (``None``: the tiny preset's).

    Returns:
        ``{"accuracy", "chance", "images", "heldout_accuracy", "heldout_images",
        "heldout_chance", "real_heldout_accuracy"}``. The held-out figures use every
        held-out name in a category; their chance is the share of the commonest category.
    """

    rows = categorised_emoji("noto")
    by_name = {e.name: e.image for e in load_emoji_dataset("noto", 64, split="all")}
    train_rows = [r for r in rows if r[2] == "train" and r[0] in by_name]
    held_rows = [r for r in rows if r[2] == "heldout" and r[0] in by_name]
    ref_feats = image_features([by_name[n] for n, _, _ in train_rows])
    ref_labels = [c for _, c, _ in train_rows]

    prompts_rows = []
    for cat in CATEGORIES:
        in_cat = sorted(
            (r for r in train_rows if r[1] == cat),
            key=lambda r: hashlib.sha256(r[0].encode()).hexdigest(),
        )
        if len(in_cat) < per_category:
            raise StableEmoteError(f"Only {len(in_cat)} training emoji in category {cat!r}.")
        prompts_rows += in_cat[:per_category]

    def accuracy(rows_: list, images: list) -> float:
        got = nearest_category(image_features(images), ref_feats, ref_labels)
        return sum(g == r[1] for g, r in zip(got, rows_, strict=True)) / len(rows_)

    gen = generate_batch(pipe, [caption.format(name=r[0]) for r in prompts_rows], guidance=guidance)
    if grid_path is not None:
        got = nearest_category(image_features(gen), ref_feats, ref_labels)
        labels = [f"{r[0]} -> {g}" for r, g in zip(prompts_rows, got, strict=True)]
        save_image(image_grid(gen, labels, cols=per_category, cell_px=96), grid_path)
    held_gen = generate_batch(
        pipe,
        [caption.format(name=r[0]) for r in held_rows],
        seed=EVAL_SEED + 500,
        guidance=guidance,
    )
    counts = {c: sum(r[1] == c for r in held_rows) for c in CATEGORIES}
    return {
        "accuracy": accuracy(prompts_rows, gen),
        "chance": 1 / len(CATEGORIES),
        "images": len(gen),
        "heldout_accuracy": accuracy(held_rows, held_gen),
        "heldout_images": len(held_gen),
        "heldout_chance": max(counts.values()) / max(len(held_rows), 1),
        "real_heldout_accuracy": accuracy(held_rows, [by_name[r[0]] for r in held_rows]),
    }


def clip_scores(pipe, clip, per_split: int | None = None) -> dict:
    """Tiny CLIP score of generated images, with the real-emoji ceiling and shuffled floor.

    Args:
        pipe: a ``StableDiffusionPipeline`` (TinyEmote).
        clip: ``(CLIPModel, TinyClipProcessor)`` of the tiny CLIP.
        per_split: names per split (``None``: every held-out Noto name, and as many
            training names, taken in a fixed hashed order).

    Returns:
        ``{"heldout": {...}, "train": {...}}``, each ``{"generated", "real", "shuffled",
        "images"}``: mean scores of generated images against their prompts, of the real
        Noto emoji of those names against the same prompts, and of the real emoji against
        the prompts shuffled so that none keeps its own.
    """
    held = load_emoji_dataset("noto", 64, split="heldout")
    train = sorted(
        load_emoji_dataset("noto", 64, split="train"),
        key=lambda e: hashlib.sha256(e.name.encode()).hexdigest(),
    )
    held = held[:per_split]
    train = train[: len(held)]
    out = {}
    for label, examples, seed in (("heldout", held, 2000), ("train", train, 3000)):
        prompts = [e.caption for e in examples]
        real = [e.image for e in examples]
        made = generate_batch(pipe, prompts, seed=EVAL_SEED + seed)
        out[label] = {
            "generated": clip_score(clip, made, prompts),
            "real": clip_score(clip, real, prompts),
            "shuffled": clip_score(clip, real, shuffled(prompts, seed)),
            "images": len(examples),
        }
    return out


def clip_retrieval(clip_model, tokenizer) -> dict:
    """Held-out name -> image retrieval of the tiny CLIP (see :func:`stableemote_utils.tinyemote.clip.retrieval`)."""
    return retrieval(clip_model, tokenizer, load_clip_pairs("heldout"))


GRID_PROMPTS = (
    "cat face",
    "smiling cat with heart-eyes",
    "dog face",
    "grinning face",
    "red apple",
    "pizza",
    "banana",
    "birthday cake",
    "rocket",
    "sun",
    "red heart",
    "star",
    "thumbs up",
    "rainbow",
    "fire",
    "ghost",
)
GRID_SEED = 0


def tinyemote_grid(path, pipe=None, prompts=GRID_PROMPTS, seed: int = GRID_SEED) -> Path:
    """The README's 4 x 4 grid: TinyEmote's picture for each fixed prompt, seeds fixed.

    Made by ``stableemote tiny-grid``. Image ``i`` is "An emoji of {prompts[i]}" with
    generator seed ``seed + i``, 25 steps, the tiny preset's guidance scale; held-out names
    are marked.
    """
    if pipe is None:
        pipe = make_pipeline(load_components("tiny", device="cpu"))
    fraction = get_preset("tiny").heldout_fraction
    images = generate_batch(pipe, [CAPTION_TEMPLATE.format(name=n) for n in prompts], seed=seed)
    labels = [n + (" (held out)" if is_heldout(n, fraction) else "") for n in prompts]
    return save_image(image_grid(images, labels, cols=4, cell_px=128), path)


def style_reference(limit: int | None = None) -> tuple[list[str], dict[str, list]]:
    """Held-out names drawn in both styles: ``(names, {"openmoji": images, "noto": images})``."""

    sets = {
        s: {e.name: e.image for e in load_emoji_dataset(s, 64, split="heldout")}
        for s in ("openmoji", "noto")
    }
    names = sorted(set(sets["openmoji"]) & set(sets["noto"]))[:limit]
    return names, {s: [sets[s][n] for n in names] for s in sets}


def style_distances(images: list, reference: dict[str, list]) -> dict[str, float]:
    """KID (fixed 16 x 16 features) of ``images`` to each style's reference images."""

    feats = image_features(images)
    return {style: kid(feats, image_features(ref)) for style, ref in reference.items()}


def evaluate_vae(vae) -> dict[str, float]:
    """PSNR (dB) of the VAE on the held-out emoji of each style."""

    out = {}
    for style in ("noto", "openmoji"):
        held = load_emoji_dataset(style, 64, split="heldout")
        out[style] = reconstruction_psnr(vae, images_to_tensor([e.image for e in held]))
        out[f"{style}_images"] = len(held)
    return out


def style_lora(
    output_dir: str | os.PathLike,
    steps: int | None = None,
    device: str | None = None,
    preset: str = "tiny",
):
    """Train the tiny preset's short LoRA on OpenMoji (``tiny-quick`` recipe; for
    ``tiny-xl``, ``tiny-xl-quick``); its result.

    ``steps`` ``None``: the recipe's.
    """

    name = "tiny-xl-quick" if preset.startswith("tiny-xl") else "tiny-quick"
    steps = recipe(name).steps if steps is None else steps
    config = recipe(
        name,
        preset=preset,
        dataset="openmoji",
        steps=steps,
        output_dir=str(output_dir),
        checkpoint_every=max(steps, 1),
        validate_every=max(steps, 1),
        device=device,
        progress_bar=False,
    )
    return train(config, resume="latest")


def measuring_clip_folder(model_dir: str | os.PathLike) -> Path:
    """The model folder whose ``clip/`` is the tiny CLIP that measures ``model_dir``'s pictures:
    its own if it has one (TinyEmote), else TinyEmote's (TinyEmote-XL has none of its own; its
    two text encoders are that CLIP's text tower), so both models are scored by one CLIP."""
    from stableemote_utils.tinyemote.install import ensure_tinyemote

    own = Path(model_dir)
    return own if (own / "clip" / "config.json").exists() else ensure_tinyemote()


def evaluate_tinyemote(
    output_dir: str | os.PathLike = "outputs/tinyemote-eval",
    lora_steps: int | None = None,
    per_category: int = 10,
    device: str | None = None,
    preset: str = "tiny",
) -> dict:
    """Measure TinyEmote (the ``tiny`` preset's model) three ways; see the module docstring.

    ``preset`` ``"tiny-xl"`` measures TinyEmote-XL the same way. ``lora_steps`` 0 leaves
    the style shift (and its LoRA) out.

    Writes ``metrics.json``, ``samples_by_category.png`` and ``style_before_after.png``
    (held-out prompts; top row the base model, bottom row with the LoRA) under
    ``output_dir``, and keeps the LoRA in ``output_dir/openmoji-lora`` (for
    :func:`stableemote_utils.tinyemote.style.lesson_measurements`, which ``evaluate-tiny``
    runs next). ``lora_steps`` ``None``: the ``tiny-quick`` recipe's.

    Returns:
        ``{"vae_psnr": {...}, "prompt_following": {...}, "style": {...}, ...}``.
    """

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    pipe = load_pipeline(preset, device=dev)
    name, shipped = SHIPPED_MODELS[preset]
    record: dict = {
        "model": f"{name} ({preset} preset, shipped weights {shipped_digest(shipped)})",
        "feature_space": f"{FEATURE_PX}x{FEATURE_PX} RGB",
    }
    record["vae_psnr"] = evaluate_vae(pipe.vae)
    guidance = get_preset(preset).guidance_scale
    record["sampling"] = {"steps": EVAL_STEPS, "guidance": guidance}
    record["prompt_following"] = prompt_following(
        pipe, per_category, grid_path=out / "samples_by_category.png"
    )
    sweep = {}
    for g in GUIDANCE_SWEEP:  # the preset's own scale was measured just above
        r = (
            record["prompt_following"]
            if g == guidance
            else prompt_following(pipe, per_category, guidance=g)
        )
        sweep[str(g)] = {k: r[k] for k in ("accuracy", "heldout_accuracy")}
    record["prompt_following_by_guidance"] = sweep
    # TinyEmote's tiny CLIP measures both models (TinyEmote-XL's encoders are its text tower)
    clip_model, tokenizer = load_tiny_clip(measuring_clip_folder(pipe.name_or_path))
    record["clip_retrieval"] = clip_retrieval(clip_model, tokenizer)
    record["tiny_clip_score"] = clip_scores(pipe, (clip_model, TinyClipProcessor(tokenizer)))

    if lora_steps == 0:
        (out / "metrics.json").write_text(json.dumps(record, indent=1))
        return record
    names, reference = style_reference()
    prompts = [CAPTION_TEMPLATE.format(name=n) for n in names]
    before = generate_batch(pipe, prompts, seed=EVAL_SEED + 1000)
    lora = style_lora(out / STYLE_LORA_DIR, lora_steps, device, preset)
    load_lora(pipe, lora.adapter_path)
    after = generate_batch(pipe, prompts, seed=EVAL_SEED + 1000)
    unload_lora(pipe)
    record["style"] = {
        "lora_steps": lora.step,
        "images": len(prompts),
        "reference_images_per_style": len(names),
        "before": style_distances(before, reference),
        "after": style_distances(after, reference),
    }
    shown = list(range(0, len(names), max(1, len(names) // 8)))[:8]
    grid = image_grid(
        [before[i] for i in shown] + [after[i] for i in shown],
        [names[i] for i in shown] + [""] * len(shown),
        cols=len(shown),
    )
    save_image(grid, out / "style_before_after.png")
    (out / "metrics.json").write_text(json.dumps(record, indent=1))
    return record
