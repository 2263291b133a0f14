"""A tiny CLIP trained here on emoji: TinyEmote's text encoder and its image scorer.

Stable Diffusion 1.5 follows its prompt because its text encoder is CLIP's, trained
contrastively on image/caption pairs so that a caption lands near the pictures it
describes. No CLIP weights can be downloaded offline, so TinyEmote trains its own,
at toy size, the same way:

* **Text tower:** transformers' ``CLIPTextModel`` with TinyEmote's sizes (width 64,
  2 layers, SD 1.5's CLIP tokenizer), captions cut to 16 tokens.
* **Image tower:** transformers' ``CLIPVisionModel`` (a ViT) on 32 x 32 px images cut
  into 8 x 8 px patches, 3 layers of width 64.
* **Data:** every training name drawn twice (Noto and OpenMoji), each image in a few
  lightly jittered versions (shift, scale, rotation; made with PIL), each name in a few
  wordings (the course template, the bare name, the ``emoji`` package's aliases).
  Held-out names (by hash, as everywhere in the course) are in none of it.
* **Loss:** the symmetric CLIP loss; two pictures of one name count as positives.

After training, the text tower becomes TinyEmote's frozen text encoder (the UNet reads
its hidden states, as SD's UNet reads CLIP's), and the whole ``CLIPModel`` ships beside
it, for scoring generated images against their prompts: the *tiny CLIP score*.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.loading import no_weight_loading_bar
from stableemote_utils.presets import CAPTION_TEMPLATE

CLIP_IMAGE_PX = 32
CLIP_TEXT_TOKENS = 16
CLIP_STYLES = ("noto", "openmoji")
TINY_VISION_CONFIG = {
    "image_size": CLIP_IMAGE_PX,
    "patch_size": 8,
    "num_channels": 3,
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "hidden_act": "quick_gelu",
}
PROJECTION_DIM = 64


@dataclass
class ClipTrainConfig:
    """Settings of the tiny CLIP stage; the defaults made the shipped weights.

    Attributes:
        steps, batch_size: optimizer steps and names per batch (AdamW, cosine schedule).
        learning_rate, weight_decay, warmup_steps: the optimizer.
        augmentations: jittered versions of each image (the first is the plain image).
        seed: one seed for the model, the jitter and the batches.
        eval_every: held-out retrieval is measured (and logged) every this many steps.
        max_names: use only this many training names (quick tests).
    """

    steps: int = 800
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    augmentations: int = 6
    seed: int = 0
    eval_every: int = 200
    max_names: int | None = None


def caption_variants(name: str, emoji_char: str = "") -> list[str]:
    """Ways of saying one emoji's name: the course template, the bare name, its aliases.

    ``"grinning cat"`` (😺) -> ``["An emoji of grinning cat", "grinning cat",
    "smiley cat"]``. Aliases come from the ``emoji`` package (``:smiley_cat:``).
    """
    out = [CAPTION_TEMPLATE.format(name=name), name]
    if emoji_char:
        import emoji

        for alias in emoji.EMOJI_DATA.get(emoji_char, {}).get("alias", []):
            text = alias.strip(":").replace("_", " ").strip()
            if text and text.lower() not in {o.lower() for o in out}:
                out.append(text)
    return out


@dataclass
class ClipPairs:
    """Emoji grouped by name, for contrastive training or retrieval.

    Attributes:
        names: the emoji names, ``N``.
        captions: per name, its wordings (see :func:`caption_variants`).
        images: per name, its drawings (one per style that has it), 64 px RGB on white.
    """

    names: list[str]
    captions: list[list[str]]
    images: list[list[Image.Image]]


def load_clip_pairs(split: str = "train", limit: int | None = None) -> ClipPairs:
    """Noto and OpenMoji drawings of the names in ``split`` (``"train"`` or ``"heldout"``).

    Names come in a fixed order (Noto's); ``limit`` keeps the first ``limit`` names.
    """
    from stableemote_utils.data import build_font_folder, load_emoji_dataset
    from stableemote_utils.emoji_fonts import font_rows
    from stableemote_utils.presets import get_preset

    fraction = get_preset("tiny").heldout_fraction
    chars: dict[str, str] = {}
    for style in CLIP_STYLES:
        for row in font_rows(build_font_folder(style)):
            chars.setdefault(row["text"], row.get("emoji", ""))
    drawings: dict[str, list[Image.Image]] = {}
    for style in CLIP_STYLES:
        # both fonts list emoji in the same order, so a limit per style keeps shared names
        for e in load_emoji_dataset(style, 64, split=split, heldout_fraction=fraction, limit=limit):
            drawings.setdefault(e.name, []).append(e.image)
    names = list(drawings)[:limit]
    return ClipPairs(
        names=names,
        captions=[caption_variants(n, chars.get(n, "")) for n in names],
        images=[drawings[n] for n in names],
    )


def jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A lightly moved copy of an RGB image: shift up to 6%, scale 0.85-1.1, rotate up to 10 degrees.

    No flips and no colour changes: "left arrow" and "red heart" must stay what they say.
    """
    w, h = image.size
    angle = math.radians(rng.uniform(-10, 10))
    scale = rng.uniform(0.85, 1.1)
    dx, dy = rng.uniform(-0.06, 0.06, size=2) * (w, h)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    cx, cy = w / 2 + dx, h / 2 + dy
    # PIL's affine maps output (x, y) to input (a x + b y + c, d x + e y + f).
    coeffs = (cos, sin, w / 2 - cos * cx - sin * cy, -sin, cos, h / 2 + sin * cx - cos * cy)
    return image.transform(
        (w, h), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=(255, 255, 255)
    )


def clip_pixels(images: list[Image.Image]) -> torch.Tensor:
    """RGB images -> the image tower's input ``(N, 3, 32, 32)`` in [-1, 1] (box-filtered)."""
    from stableemote_utils.data import images_to_tensor, to_rgb_on_white

    return images_to_tensor(
        [
            to_rgb_on_white(im).resize((CLIP_IMAGE_PX, CLIP_IMAGE_PX), Image.Resampling.BOX)
            for im in images
        ]
    )


def tokenize(tokenizer, texts: list[str], max_length: int = CLIP_TEXT_TOKENS) -> torch.Tensor:
    """Texts -> token ids ``(N, max_length)``, padded with CLIP's end token, cut to fit."""
    return tokenizer(
        texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    ).input_ids


def build_clip(seed: int = 0):
    """A randomly initialised tiny ``CLIPModel`` (TinyEmote's text sizes, a small ViT), seeded."""
    from transformers import CLIPConfig, CLIPModel

    from stableemote_utils.tiny_model import TINY_TEXT_CONFIG

    config = CLIPConfig(
        text_config=dict(TINY_TEXT_CONFIG),
        vision_config=dict(TINY_VISION_CONFIG, projection_dim=PROJECTION_DIM),
        projection_dim=PROJECTION_DIM,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = CLIPModel(config)
    torch.random.set_rng_state(state)
    return model


def _features(out) -> torch.Tensor:
    # transformers 5 returns an output object from get_*_features; older versions a tensor.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def text_embeddings(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Unit-length text embeddings ``(N, projection_dim)`` of token ids ``(N, L)``."""
    return F.normalize(_features(model.get_text_features(input_ids=input_ids)), dim=-1)


def image_embeddings(model, pixels: torch.Tensor) -> torch.Tensor:
    """Unit-length image embeddings ``(N, projection_dim)`` of pixels ``(N, 3, 32, 32)``."""
    return F.normalize(_features(model.get_image_features(pixel_values=pixels)), dim=-1)


def clip_loss(
    text_emb: torch.Tensor, image_emb: torch.Tensor, same: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric contrastive loss; ``same[i, j]`` says text ``i`` and image ``j`` match.

    Args:
        text_emb, image_emb: unit vectors ``(B, D)``.
        same: ``(B, B)`` bool, True on the diagonal and wherever two rows share a name.
        logit_scale: the learned log temperature (CLIP's), a scalar.

    Returns:
        The mean of the text->image and image->text cross-entropies against targets
        spread evenly over each row's matches.
    """
    logits = logit_scale.exp().clamp(max=100) * text_emb @ image_emb.T
    target = same.float() / same.float().sum(1, keepdim=True)
    target_t = same.T.float() / same.T.float().sum(1, keepdim=True)
    return (
        -(target * logits.log_softmax(1)).sum(1).mean()
        - (target_t * logits.T.log_softmax(1)).sum(1).mean()
    ) / 2


@torch.no_grad()
def retrieval(model, tokenizer, pairs: ClipPairs, ks: tuple[int, ...] = (1, 5)) -> dict:
    """Zero-shot name -> image retrieval among all drawings of ``pairs``.

    Each name (through the course template) ranks every image; it scores at ``k`` when
    one of its own drawings is among the ``k`` nearest.

    Returns:
        ``{"top1", "top5", "chance_top1", "chance_top5", "names", "images"}``; chance is
        the expected score of a random ranking.
    """
    model.eval()
    owner = [i for i, ims in enumerate(pairs.images) for _ in ims]
    pix = clip_pixels([im for ims in pairs.images for im in ims])
    img = torch.cat([image_embeddings(model, pix[i : i + 256]) for i in range(0, len(pix), 256)])
    ids = tokenize(tokenizer, [CAPTION_TEMPLATE.format(name=n) for n in pairs.names])
    txt = text_embeddings(model, ids)
    order = (txt @ img.T).argsort(dim=1, descending=True)
    owner_t = torch.tensor(owner)
    out: dict = {}
    n_img = len(owner)
    for k in ks:
        hits = (owner_t[order[:, :k]] == torch.arange(len(pairs.names))[:, None]).any(1)
        out[f"top{k}"] = float(hits.float().mean())
        # P(at least one of m own images among k random picks from n_img)
        chance = [1 - math.comb(n_img - len(ims), k) / math.comb(n_img, k) for ims in pairs.images]
        out[f"chance_top{k}"] = float(np.mean(chance))
    out["names"] = len(pairs.names)
    out["images"] = n_img
    return out


def jittered_pixels(
    pairs: ClipPairs, augmentations: int, seed: int
) -> tuple[torch.Tensor, list[list[int]]]:
    """All training images in ``augmentations`` versions each (the first unjittered).

    Returns:
        ``(pixels, rows)``: pixels ``(M, 3, 32, 32)`` uint8 (to save memory) and, per
        name, the indices of its rows in ``pixels``.
    """
    rng = np.random.default_rng(seed)
    images, rows = [], []
    for ims in pairs.images:
        mine = []
        for im in ims:
            for a in range(augmentations):
                mine.append(len(images))
                images.append(im if a == 0 else jitter(im, rng))
        rows.append(mine)
    pix = torch.cat([clip_pixels(images[i : i + 512]) for i in range(0, len(images), 512)])
    return ((pix + 1) * 127.5).round().to(torch.uint8), rows


def train_clip(config: ClipTrainConfig, tokenizer, device: torch.device | str = "cpu") -> tuple:
    """Train a tiny CLIP on the training names; see the module docstring.

    Each step takes ``batch_size`` names (shuffled once per epoch, seeded) and, for
    each, one drawing in one jittered version and one wording, chosen by a generator
    seeded by the step number, so any step can be recomputed.

    Returns:
        ``(model, record)``: the trained ``CLIPModel`` (eval mode, CPU) and
        ``{"config", "losses", "heldout_retrieval": {step: {...}}, "train_names", ...}``.
    """
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from stableemote_utils.training import batch_indices, step_generator

    train_pairs = load_clip_pairs("train", config.max_names)
    held_pairs = load_clip_pairs("heldout", config.max_names)
    if len(train_pairs.names) < 2 or len(held_pairs.names) < 2:
        raise StableEmoteError("The tiny CLIP needs at least two training and held-out names.")
    batch = min(config.batch_size, len(train_pairs.names))
    pixels, pixel_rows = jittered_pixels(train_pairs, config.augmentations, config.seed)
    texts = [c for caps in train_pairs.captions for c in caps]
    text_ids = tokenize(tokenizer, texts)
    text_rows, at = [], 0
    for caps in train_pairs.captions:
        text_rows.append(list(range(at, at + len(caps))))
        at += len(caps)

    device = torch.device(device)
    model = build_clip(config.seed).to(device).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": other}],
        lr=config.learning_rate,
        weight_decay=0.0,
    )
    schedule = get_scheduler(
        "cosine",
        optimizer,
        num_warmup_steps=min(config.warmup_steps, config.steps // 10),
        num_training_steps=config.steps,
    )
    record: dict = {
        "config": dataclasses.asdict(config),
        "train_names": len(train_pairs.names),
        "train_images": sum(len(i) for i in train_pairs.images),
        "train_captions": len(texts),
        "heldout_retrieval": {},
    }
    losses: list[float] = []
    bar = tqdm(range(config.steps), desc="tiny CLIP", unit="step")
    for step in bar:
        names = batch_indices(step, batch, len(train_pairs.names), config.seed)
        g = step_generator(config.seed, step)
        pick_img = torch.rand(batch, generator=g)
        pick_txt = torch.rand(batch, generator=g)
        img_idx = [
            pixel_rows[n][int(u * len(pixel_rows[n]))] for n, u in zip(names, pick_img, strict=True)
        ]
        txt_idx = [
            text_rows[n][int(u * len(text_rows[n]))] for n, u in zip(names, pick_txt, strict=True)
        ]
        pix = pixels[img_idx].to(device).float() / 127.5 - 1
        same = (names[:, None] == names[None, :]).to(device)
        loss = clip_loss(
            text_embeddings(model, text_ids[txt_idx].to(device)),
            image_embeddings(model, pix),
            same,
            model.logit_scale,
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise StableEmoteError(f"The CLIP loss became {losses[-1]} at step {step}.")
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            r = retrieval(model.cpu(), tokenizer, held_pairs)
            model.to(device).train()
            record["heldout_retrieval"][step + 1] = r
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", top1=f"{r['top1']:.0%}")
    record["losses"] = losses
    return model.cpu().eval().requires_grad_(False), record


def text_tower(clip_model):
    """The ``CLIPTextModel`` holding a ``CLIPModel``'s text transformer (the UNet's encoder)."""
    from transformers import CLIPTextModel

    text = CLIPTextModel(clip_model.config.text_config)
    # transformers 5 keeps CLIPTextModel's transformer at its top level (no .text_model)
    target = getattr(text, "text_model", text)
    target.load_state_dict(clip_model.text_model.state_dict())
    return text.eval().requires_grad_(False)


def load_tiny_clip(folder: str | os.PathLike, device: str | torch.device = "cpu"):
    """``(CLIPModel, CLIPTokenizer)`` from a TinyEmote folder (its ``clip/`` and ``tokenizer/``).

    The model is upcast to fp32 (it ships in fp16) and put in eval mode.
    """
    from transformers import CLIPModel, CLIPTokenizer

    folder = Path(folder)
    if not (folder / "clip" / "config.json").exists():
        raise StableEmoteError(
            f"{folder} has no tiny CLIP (clip/config.json). It ships with TinyEmote 2; "
            "rebuild with: stableemote pretrain-tiny"
        )
    with no_weight_loading_bar():  # a notebook shows no bar for a local 7 MB file
        model = CLIPModel.from_pretrained(folder / "clip", dtype=torch.float32)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    return model.to(device).eval().requires_grad_(False), tokenizer


@torch.no_grad()
def tiny_clip_score(model, tokenizer, images: list[Image.Image], texts: list[str]) -> torch.Tensor:
    """The tiny CLIP score of each image against its text: ``100 * max(cos, 0)``, ``(N,)``.

    The same formula as the usual CLIP score, on the tiny CLIP's embeddings, so it is
    comparable only with other tiny CLIP scores (real emoji against their names give
    its ceiling, the same images against shuffled names its floor).
    """
    if len(images) != len(texts):
        raise StableEmoteError(f"{len(images)} images but {len(texts)} texts; give one each.")
    dev = next(model.parameters()).device
    img = image_embeddings(model, clip_pixels(images).to(dev))
    txt = text_embeddings(model, tokenize(tokenizer, texts).to(dev))
    return 100 * (img * txt).sum(-1).clamp_min(0).cpu()


def shuffled(texts: list[str], seed: int = 0) -> list[str]:
    """``texts`` in a seeded order in which no text keeps its place (for the floor)."""
    if len(texts) < 2:
        return list(texts)
    perm = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    # Roll a permutation by one: a derangement whatever perm is.
    return [texts[perm[(perm.index(i) + 1) % len(perm)]] for i in range(len(texts))]


def clip_stage(
    folder: str | os.PathLike,
    config: ClipTrainConfig,
    tokenizer_dir: str | os.PathLike,
    device: torch.device | str = "cpu",
) -> tuple:
    """The tiny CLIP stage of ``pretrain-tiny``: train once into ``folder``, then reuse it.

    Writes the ``CLIPModel`` (fp32 safetensors) and ``clip_training.json`` (losses,
    held-out retrieval, seconds) into ``folder``, renamed into place when complete; a
    complete folder is loaded instead of retrained.

    Returns:
        ``(model, record)`` as :func:`train_clip`.
    """
    import time

    from transformers import CLIPModel, CLIPTokenizer

    from stableemote_utils.files import staged_folder

    folder = Path(folder)
    if (folder / "clip_training.json").exists():
        model = CLIPModel.from_pretrained(folder, dtype=torch.float32).eval()
        return model, json.loads((folder / "clip_training.json").read_text())
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    started = time.perf_counter()
    model, record = train_clip(config, tokenizer, device)
    record["seconds"] = time.perf_counter() - started
    with staged_folder(folder) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        (staging / "clip_training.json").write_text(json.dumps(record, indent=1))
    return model, record


class TinyClipProcessor:
    """Prepares images and texts for the tiny CLIP, called like transformers' ``CLIPProcessor``.

    ``processor(images=[...], return_tensors="pt")["pixel_values"]`` is ``(N, 3, 32, 32)``
    in [-1, 1] (see :func:`clip_pixels`); ``processor(text=[...])`` gives ``input_ids`` and
    ``attention_mask`` ``(N, 16)``. So :mod:`stableemote_utils.metrics` scores with it
    exactly as with the real CLIP.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, images=None, text=None, **_ignored) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if images is not None:
            out["pixel_values"] = clip_pixels(list(images))
        if text is not None:
            out["input_ids"] = tokenize(self.tokenizer, list(text))
            out["attention_mask"] = torch.ones_like(out["input_ids"])
        return out
