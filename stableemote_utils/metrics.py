"""Numbers for the comparison: held-out loss, CLIP score and KID.

- **Held-out loss** (works offline): the noise-prediction error of the base UNet and of
  the UNet with the adapter on emoji whose names were never trained on, at fixed
  timesteps and fixed noise (:func:`~stableemote_utils.training_records.heldout_loss`), on the
  cached latents.
- **CLIP score**: ``100 * max(cos(image, text), 0)`` between CLIP ViT-L/14's image and text
  embeddings, averaged over the images: does the picture match its prompt?
- **KID** (kernel inception distance): the unbiased squared MMD between two image sets'
  features with the polynomial kernel ``k(x, y) = (x . y / d + 1) ** 3``: how far the
  generated set is from real emoji. We compute it on CLIP image features rather than
  Inception ones: torchmetrics' KID goes through torch-fidelity, which needs
  torchvision, and CLIP is already loaded for the CLIP score.

Both CLIP-based numbers need the CLIP weights from the Hub; offline, :func:`load_clip`
prints one line and returns ``None``, and the callers skip them. Under the ``tiny``
preset, :func:`load_scoring_clip` gives TinyEmote's own tiny CLIP instead (it ships with
the model): its scores are on its own scale, comparable only with other tiny CLIP
scores, and every report names which CLIP scored it. Caveats for icons: CLIP
was trained on photos and web images with captions, emoji names such as "supervillain"
are vague, and flat icons on white sit in a corner of its feature space, so CLIP scores
of emoji are low and close together (differences of a point or two are noise); KID with
a few dozen images has a large spread (report it with its sample counts, compare only
like with like), and neither replaces looking at the grid.
"""

from __future__ import annotations

import os

import torch

from stableemote_utils.data import load_emoji_dataset
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.latent_cache import build_or_load_cache
from stableemote_utils.loading import SDComponents, no_weight_loading_bar
from stableemote_utils.lora_peft import load_lora, unload_lora
from stableemote_utils.presets import Preset, cache_dir, get_preset
from stableemote_utils.training_config import TrainConfig
from stableemote_utils.training_records import HELDOUT_TIMESTEPS, cached_heldout_loss

CLIP_MODEL_ID = "openai/clip-vit-large-patch14"
KID_POLY_DEGREE = 3
CLIP_SCORE_SCALE = 100.0


def kid(features_x: torch.Tensor, features_y: torch.Tensor) -> float:
    """Kernel inception distance: unbiased MMD² with the cubic polynomial kernel.

    Args:
        features_x: ``(m, d)`` features of one image set (m >= 2).
        features_y: ``(n, d)`` features of the other (n >= 2).

    Returns:
        ``mean_{i!=j} k(x_i, x_j) + mean_{i!=j} k(y_i, y_j) - 2 mean k(x_i, y_j)``: about 0
        for two samples of the same distribution (it can dip slightly below 0), larger the
        further apart the sets are.
    """
    x = features_x.double()
    y = features_y.double()
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise StableEmoteError(
            f"KID needs two (N, d) feature matrices with the same d, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}."
        )
    m, n, d = x.shape[0], y.shape[0], x.shape[1]
    if m < 2 or n < 2:
        raise StableEmoteError(f"KID needs at least 2 images per set, got {m} and {n}.")

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a @ b.T / d + 1.0) ** KID_POLY_DEGREE

    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * k_xy.mean())


def load_clip(model_id: str = CLIP_MODEL_ID, device: str | torch.device = "cpu"):
    """CLIP's model and processor from the Hub, or ``None`` (with a one-line message) offline.

    Returns:
        ``(model, processor)`` in eval mode on ``device``, or ``None`` when the weights
        cannot be had (no network, ``HF_HUB_OFFLINE=1``, not in the local cache).
    """
    from transformers import CLIPModel, CLIPProcessor

    try:
        processor = CLIPProcessor.from_pretrained(model_id)
        with no_weight_loading_bar():
            model = CLIPModel.from_pretrained(model_id).to(device).eval()
    except (OSError, ValueError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        why = "HF_HUB_OFFLINE is set" if offline else type(err).__name__
        print(
            f"CLIP metrics skipped: the weights of {model_id} could not be loaded ({why}); "
            "they need the Hugging Face Hub (e.g. on Colab)."
        )
        return None
    return model, processor


TINY_CLIP_LABEL = "TinyEmote's tiny CLIP (trained here on emoji, 32 px)"


def load_scoring_clip(preset=None, device: str | torch.device = "cpu"):
    """The CLIP that scores a preset's pictures, with its name for reports, or ``None``.

    Under a preset whose model folder holds a tiny CLIP (``clip/``, TinyEmote), that one;
    otherwise CLIP ViT-L/14 from the Hub (:func:`load_clip`, ``None`` offline).

    Returns:
        ``((model, processor), label)`` or ``None``.
    """
    from pathlib import Path

    from stableemote_utils.loading import resolve_model_location
    from stableemote_utils.presets import Preset, get_preset

    p = preset if isinstance(preset, Preset) else get_preset(preset)
    if p.is_tiny:
        folder = Path(resolve_model_location(p))
        if (folder / "clip" / "config.json").exists():
            from stableemote_utils.tinyemote.clip import TinyClipProcessor, load_tiny_clip

            model, tokenizer = load_tiny_clip(folder, device)
            return (model, TinyClipProcessor(tokenizer)), TINY_CLIP_LABEL
    clip = load_clip(device=device)
    return None if clip is None else (clip, f"CLIP ViT-L/14 ({CLIP_MODEL_ID})")


@torch.no_grad()
def clip_image_features(clip, images: list) -> torch.Tensor:
    """L2-normalised CLIP image embeddings ``(N, E)`` (E = 768 for ViT-L/14) in fp32 on CPU."""
    model, processor = clip
    dev = next(model.parameters()).device
    pixels = processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
    out = model.get_image_features(pixel_values=pixels["pixel_values"].to(dev))
    feats = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(feats.float(), dim=-1).cpu()


@torch.no_grad()
def clip_text_features(clip, prompts: list[str]) -> torch.Tensor:
    """L2-normalised CLIP text embeddings ``(N, E)`` in fp32 on CPU."""
    model, processor = clip
    dev = next(model.parameters()).device
    tokens = processor(text=list(prompts), padding=True, truncation=True, return_tensors="pt")
    out = model.get_text_features(
        input_ids=tokens["input_ids"].to(dev), attention_mask=tokens["attention_mask"].to(dev)
    )
    feats = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(feats.float(), dim=-1).cpu()


def clip_score(clip, images: list, prompts: list[str]) -> float:
    """Mean of ``100 * max(cos(image_i, prompt_i), 0)`` over N image-prompt pairs."""
    if len(images) != len(prompts) or not images:
        raise StableEmoteError(
            f"clip_score needs one prompt per image, got {len(images)} images and "
            f"{len(prompts)} prompts."
        )
    cos = (clip_image_features(clip, images) * clip_text_features(clip, prompts)).sum(-1)
    return float((CLIP_SCORE_SCALE * cos.clamp(min=0)).mean())


def comparison_clip_scores(preset, images: list, entries: list[dict], device="cpu") -> dict:
    """CLIP score of a comparison's base and LoRA images, naming the CLIP that scored them.

    Args:
        preset: the preset the comparison ran under (picks the CLIP, see
            :func:`load_scoring_clip`).
        images: the generated images, in the order of ``entries``.
        entries: the comparison record's ``"images"`` rows (``"model"``, ``"prompt"``).

    Returns:
        ``{"clip": label, "base": float, "lora": float, "n_images": int}``, or
        ``{"clip": None, "skipped": reason}`` when no CLIP can be loaded.
    """
    loaded = load_scoring_clip(preset, device)
    if loaded is None:
        return {"clip": None, "skipped": "no CLIP weights offline (see the message above)"}
    clip, label = loaded
    out: dict = {"clip": label}
    for model in ("base", "lora"):
        rows = [i for i, e in enumerate(entries) if e["model"] == model]
        out[model] = clip_score(
            clip, [images[i] for i in rows], [entries[i]["prompt"] for i in rows]
        )
        out["n_images"] = len(rows)
    return out


def format_comparison_scores(scores: dict) -> str:
    """One line for :func:`comparison_clip_scores`' result."""
    if scores.get("clip") is None:
        return f"CLIP score skipped: {scores.get('skipped', 'no CLIP')}"
    return (
        f"CLIP score ({scores['clip']}): base {scores['base']:.1f}, LoRA {scores['lora']:.1f} "
        f"({scores['n_images']} images each; 100 x cosine, compare only scores of the same CLIP)"
    )


def image_metrics(
    clip, images: dict[str, list], prompts: list[str], reference_images: list
) -> dict[str, dict]:
    """CLIP score against the prompts and KID to the reference set, per model.

    Args:
        clip: from :func:`load_clip` (``None``: returns ``{}``, nothing is computed).
        images: model label -> N generated images, made from ``prompts`` in order.
        prompts: the N prompts.
        reference_images: real emoji (e.g. the held-out split) for KID.

    Returns:
        ``{label: {"clip_score": float, "kid": float, "n_images": N, "n_reference": M}}``.
    """
    if clip is None:
        return {}
    ref = clip_image_features(clip, reference_images)
    out = {}
    for label, imgs in images.items():
        feats = clip_image_features(clip, imgs)
        cos = (feats * clip_text_features(clip, prompts)).sum(-1)
        out[label] = {
            "clip_score": float((CLIP_SCORE_SCALE * cos.clamp(min=0)).mean()),
            "kid": kid(feats, ref),
            "n_images": len(imgs),
            "n_reference": len(reference_images),
        }
    return out


def heldout_loss_base_vs_lora(pipe, lora_path: str | os.PathLike, preset=None) -> dict:
    """Held-out noise-prediction loss of the base UNet and of the UNet with the adapter.

    Uses the same held-out emoji, timesteps and noise as training's validation
    (:func:`~stableemote_utils.training_records.heldout_loss`) and the latent cache (encoded once,
    shared with training when the settings match). Works offline.

    Args:
        pipe: a ``StableDiffusionPipeline`` of the base model (the adapter is loaded and
            removed again).
        lora_path: adapter file or folder.
        preset: the preset whose held-out split and sizes to use (``None``: the environment's).

    Returns:
        ``{"base": float, "lora": float, "n_examples": int, "timesteps": tuple}``.
    """

    p = preset if isinstance(preset, Preset) else get_preset(preset)
    heldout_set = load_emoji_dataset(
        p.dataset,
        p.resolution_px,
        p.caption_template,
        split="heldout",
        heldout_fraction=p.heldout_fraction,
        limit=TrainConfig.heldout_limit,
    )
    components = SDComponents(
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        vae=pipe.vae,
        unet=pipe.unet,
        scheduler=pipe.scheduler,
        device=pipe.unet.device,
        dtype=pipe.unet.dtype,
        source=str(p.model),
        tokenizer_2=getattr(pipe, "tokenizer_2", None),
        text_encoder_2=getattr(pipe, "text_encoder_2", None),
    )
    cache = build_or_load_cache(
        components,
        heldout_set,
        os.path.join(cache_dir(), "latents"),
        resolution_px=p.resolution_px,
        caption_template=p.caption_template,
        extra_prompts=(),
        label="heldout",
    )
    alphas = pipe.scheduler.alphas_cumprod
    half = pipe.unet.dtype if pipe.unet.dtype != torch.float32 else None
    base = cached_heldout_loss(pipe.unet, cache, alphas, autocast_dtype=half)
    load_lora(pipe, lora_path, adapter_name="heldout")
    try:
        lora = cached_heldout_loss(pipe.unet, cache, alphas, autocast_dtype=half)
    finally:
        unload_lora(pipe)
    return {
        "base": base,
        "lora": lora,
        "n_examples": len(heldout_set),
        "timesteps": HELDOUT_TIMESTEPS,
    }
