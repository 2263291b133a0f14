"""Did a style LoRA change the look and keep the subject? Two measurements on TinyEmote.

The LoRA lesson trains a short LoRA on OpenMoji's emoji and claims two things: the
pictures take on OpenMoji's look, and they still show what the prompt asks for. Each
claim gets its own number, measured on the same pictures (every prompt at every seed,
drawn once by the base model and once with the LoRA):

* **Style:** a *style probe*, a logistic regression on the tiny CLIP's image features
  (:func:`style_features`; :mod:`stableemote_utils.tinyemote.clip`), trained to tell real Noto drawings from real
  OpenMoji drawings of the training names. Its accuracy on the held-out names' drawings
  says whether it can be trusted; the share of generated pictures it calls "OpenMoji"
  (with a Wilson interval) is the style measurement.
* **Subject:** prompt following (the nearest real emoji's category, as in
  :mod:`stableemote_utils.tinyemote.evaluate`, against real emoji of both styles, so
  that a change of style alone is not counted as a change of subject) and the tiny CLIP
  score of each picture against its prompt (with a bootstrap interval).

In a notebook, three lines::

    clip = load_tiny_clip(tinyemote_dir)            # (CLIPModel, tokenizer)
    probe, real = fit_style_probe(clip[0])          # real["heldout_accuracy"]
    result = style_and_subject(pipe, adapter_path, clip, probe)

``result["base"]`` and ``result["lora"]`` hold the same keys (see :func:`style_and_subject`).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass

import torch
from PIL import Image

from stableemote_utils.data import load_emoji_dataset
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.presets import CAPTION_TEMPLATE, get_preset
from stableemote_utils.tinyemote.clip import clip_pixels, tiny_clip_score
from stableemote_utils.tinyemote.evaluate import (
    CATEGORIES,
    EVAL_STEPS,
    STYLE_LORA_DIR,
    categorised_emoji,
    generate_batch,
    image_features,
    nearest_category,
)

STYLES = ("noto", "openmoji")  # label 0, label 1
PROMPTS_PER_CATEGORY = 4
SEEDS = (0, 100, 200, 300)  # picture i of a seed s uses s + i: no noise is shared
CONFIDENCE = 0.95


@dataclass
class StyleProbe:
    """A logistic regression on standardised features: ``P(OpenMoji) = sigmoid(w . z + b)``.

    Attributes:
        mean, std: the training features' per-dimension mean and spread, ``(D,)``.
        weight: ``(D,)``; bias: a number.
    """

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: float

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Log-odds of "OpenMoji" for each row: ``(N, D)`` -> ``(N,)``."""
        z = (features.float() - self.mean) / self.std
        return z @ self.weight + self.bias

    def is_openmoji(self, features: torch.Tensor) -> torch.Tensor:
        """The probe's call for each row, ``(N, D)`` -> bool ``(N,)`` (True: OpenMoji)."""
        return self.logits(features) > 0


def fit_logistic(
    features: torch.Tensor, labels: torch.Tensor, weight_decay: float = 1e-4, steps: int = 200
) -> StyleProbe:
    """Fit a :class:`StyleProbe` to ``features`` ``(N, D)`` and 0/1 ``labels`` ``(N,)``.

    Full-batch L-BFGS on the mean logistic loss plus ``weight_decay * |w|^2`` (no
    randomness, so the same data always gives the same probe). Features are standardised
    first; a dimension with no spread keeps a spread of 1.
    """
    x = features.double()
    y = labels.double()
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise StableEmoteError(f"Need features (N, D) and labels (N,), got {x.shape}, {y.shape}.")
    if not (0 < y.sum() < len(y)):
        raise StableEmoteError("The probe needs examples of both styles.")
    mean = x.mean(0)
    std = x.std(0).where(x.std(0) > 1e-8, torch.ones(()).double())
    z = (x - mean) / std
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y)
        loss = loss + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return StyleProbe(mean.float(), std.float(), w.detach().float(), float(b.detach()))


@torch.no_grad()
def style_features(clip_model, images: list[Image.Image], batch: int = 256) -> torch.Tensor:
    """What the style probe reads: the tiny CLIP image tower's inner features, ``(N, 8 * W)``.

    For each of the tower's hidden states (the patch features and each of its layers:
    4 for the shipped tower, width ``W`` = 64, so 512 numbers) the class token and the
    mean over the patch tokens. Not the final image embedding: the tiny CLIP was trained
    to put a name's Noto and OpenMoji drawings at the same point, so that embedding
    keeps little of the style (a probe on it reaches about 75% on held-out drawings).
    """
    dev = next(clip_model.parameters()).device
    out = []
    for i in range(0, len(images), batch):
        pixels = clip_pixels(images[i : i + batch]).to(dev)
        hidden = clip_model.vision_model(pixel_values=pixels, output_hidden_states=True)
        states = hidden.hidden_states
        parts = [h[:, 1:].mean(1) for h in states] + [h[:, 0] for h in states]
        out.append(torch.cat(parts, 1).float().cpu())
    return torch.cat(out)


def real_style_set(split: str, limit: int | None = None) -> tuple[list[Image.Image], torch.Tensor]:
    """Real Noto and OpenMoji drawings of one split's names: ``(images, labels)``.

    ``labels`` is ``(N,)`` with 1 for OpenMoji; ``limit`` keeps a balanced subset of that
    many per style (as :func:`stableemote_utils.data.load_emoji_dataset` draws it).
    """
    fraction = get_preset("tiny").heldout_fraction
    images, labels = [], []
    for label, style in enumerate(STYLES):
        got = load_emoji_dataset(style, 64, split=split, heldout_fraction=fraction, limit=limit)
        images += [e.image for e in got]
        labels += [label] * len(got)
    return images, torch.tensor(labels)


def fit_style_probe(clip_model, limit: int | None = None) -> tuple[StyleProbe, dict]:
    """Train the style probe on the training names' drawings; test it on the held-out names'.

    Args:
        clip_model: the tiny ``CLIPModel`` (see :func:`~stableemote_utils.tinyemote.clip.load_tiny_clip`).
        limit: drawings per style and split (``None``: all of them).

    Returns:
        ``(probe, record)``; ``record`` has ``train_images``, ``train_accuracy``,
        ``heldout_images``, ``heldout_accuracy`` and its Wilson interval
        ``heldout_low``, ``heldout_high`` (drawings of names the probe never saw).
    """
    train_images, train_labels = real_style_set("train", limit)
    train_features = style_features(clip_model, train_images)  # read once: fit, then score
    probe = fit_logistic(train_features, train_labels)
    held_images, held_labels = real_style_set("heldout", limit)

    def accuracy(features: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
        calls = probe.is_openmoji(features)
        return int((calls == labels.bool()).sum()), len(labels)

    right, n = accuracy(style_features(clip_model, held_images), held_labels)
    train_right, train_n = accuracy(train_features, train_labels)
    low, high = wilson_interval(right, n)
    return probe, {
        "train_images": train_n,
        "train_accuracy": train_right / train_n,
        "heldout_images": n,
        "heldout_accuracy": right / n,
        "heldout_low": low,
        "heldout_high": high,
    }


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``: ``(low, high)`` in [0, 1]."""
    if n <= 0 or not 0 <= successes <= n:
        raise StableEmoteError(f"Need 0 <= successes <= n and n > 0, got {successes} of {n}.")
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + confidence / 2)).item()
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def share(calls: torch.Tensor, confidence: float = CONFIDENCE) -> dict:
    """Share of True in bool ``calls`` ``(N,)``: ``{"share", "count", "n", "low", "high"}``."""
    count, n = int(calls.bool().sum()), int(calls.numel())
    low, high = wilson_interval(count, n, confidence)
    return {"share": count / n, "count": count, "n": n, "low": low, "high": high}


def bootstrap_interval(
    values: torch.Tensor,
    statistic=torch.mean,
    draws: int = 2000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over rows of ``values`` ``(N, ...)``.

    ``statistic`` maps a resample ``(N, ...)`` to a number (for paired data, pass rows
    ``(N, 2)`` and a statistic of both columns, so that pairs are resampled together).
    """
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(values), (draws, len(values)), generator=g)
    stats = torch.tensor([float(statistic(values[i])) for i in idx])
    tail = (1 - confidence) / 2
    low, high = torch.quantile(stats.double(), torch.tensor([tail, 1 - tail]).double()).tolist()
    return low, high


def subject_prompts(per_category: int = PROMPTS_PER_CATEGORY) -> list[tuple[str, str]]:
    """``(name, category)`` of ``per_category`` training names per category, in a fixed
    hashed order: 20 names by default, four each of faces, hearts, flags, clocks, hands."""
    rows = categorised_emoji("noto")
    out = []
    for cat in CATEGORIES:
        names = sorted(
            (n for n, c, split in rows if c == cat and split == "train"),
            key=lambda n: hashlib.sha256(n.encode()).hexdigest(),
        )
        if len(names) < per_category:
            raise StableEmoteError(f"Only {len(names)} training emoji in category {cat!r}.")
        out += [(n, cat) for n in names[:per_category]]
    return out


def category_references() -> tuple[torch.Tensor, list[str]]:
    """Features ``(M, 768)`` and categories of the training names' real drawings, Noto and
    OpenMoji both (so that the nearest-category check looks at subject, not style)."""
    feats, labels = [], []
    for style in STYLES:
        cats = {n: c for n, c, split in categorised_emoji(style) if split == "train"}
        drawn = [e for e in load_emoji_dataset(style, 64, split="all") if e.name in cats]
        feats.append(image_features([e.image for e in drawn]))
        labels += [cats[e.name] for e in drawn]
    return torch.cat(feats), labels


def draw(
    pipe,
    prompts: list[str],
    seeds: tuple[int, ...] = SEEDS,
    steps: int = EVAL_STEPS,
    guidance: float | None = None,
) -> list[Image.Image]:
    """Every prompt at every seed: ``len(seeds) * len(prompts)`` pictures, seed-major.

    Picture ``k * len(prompts) + i`` is ``prompts[i]`` from generator seed
    ``seeds[k] + i`` (:func:`~stableemote_utils.tinyemote.evaluate.generate_batch`), so two
    pipelines (base and LoRA) drawn with the same arguments start from the same noise.
    ``guidance`` ``None`` is the tiny preset's.
    """
    images = []
    for s in seeds:
        images += generate_batch(pipe, list(prompts), seed=s, steps=steps, guidance=guidance)
    return images


def measure_pictures(
    images: list[Image.Image],
    texts: list[str],
    categories: list[str],
    clip,
    probe: StyleProbe,
    references: tuple[torch.Tensor, list[str]],
) -> tuple[dict, torch.Tensor]:
    """Style and subject of N pictures, each with its prompt and its prompt's category.

    Returns:
        ``(record, per_picture)``: ``record`` has ``openmoji`` (a :func:`share` of the
        probe's calls), ``prompt_following`` (a :func:`share` of right categories) and
        ``clip_score`` (mean, ``low``, ``high``); ``per_picture`` is ``(N, 3)``: OpenMoji
        call, right category, tiny CLIP score.
    """
    model, tokenizer = clip
    calls = probe.is_openmoji(style_features(model, images))
    got = nearest_category(image_features(images), *references)
    right = torch.tensor([g == c for g, c in zip(got, categories, strict=True)])
    scores = tiny_clip_score(model, tokenizer, images, texts).float()
    low, high = bootstrap_interval(scores)
    record = {
        "openmoji": share(calls),
        "prompt_following": share(right),
        "clip_score": {"mean": float(scores.mean()), "low": low, "high": high},
    }
    return record, torch.stack([calls.float(), right.float(), scores], 1)


def measure_adapters(
    pipe,
    adapters: dict[str, str | os.PathLike],
    clip,
    probe: StyleProbe,
    prompts: list[tuple[str, str]] | None = None,
    seeds: tuple[int, ...] = SEEDS,
    caption: str = CAPTION_TEMPLATE,
) -> dict:
    """Style and subject of the base model and of each adapter, on the same prompts and seeds.

    Args:
        pipe: a ``StableDiffusionPipeline`` over TinyEmote, with no LoRA loaded.
        adapters: label -> LoRA file, e.g. ``{"step 400": ..., "step 800": ...}`` (each
            loaded in turn, then removed).
        clip: ``(CLIPModel, CLIPTokenizer)`` of the tiny CLIP.
        probe: from :func:`fit_style_probe`.
        prompts: ``(name, category)`` pairs (default :func:`subject_prompts`).
        seeds: each prompt is drawn at each seed (default 4 seeds: 80 pictures a model).

    Returns:
        ``{"models": {"base": ..., label: ...}, "changes": {label: ...}, "pictures": N,
        "prompts", "seeds", "images": {"base": [...], label: [...]}}``. Each model's record
        is :func:`measure_pictures`'. ``changes[label]`` has ``clip_score_ratio`` (the
        adapter's mean over the base's, with a paired bootstrap ``low``, ``high``) and
        ``prompt_following_points`` (adapter minus base, in percentage points).
    """
    from stableemote_utils.lora import lora_loaded

    prompts = subject_prompts() if prompts is None else prompts
    texts = [caption.format(name=n) for n, _ in prompts] * len(seeds)
    cats = [c for _, c in prompts] * len(seeds)
    refs = category_references()
    images = {"base": draw(pipe, texts[: len(prompts)], seeds)}
    for label, path in adapters.items():
        with lora_loaded(pipe, path, adapter_name="measure_adapters"):
            images[label] = draw(pipe, texts[: len(prompts)], seeds)
    models, rows = {}, {}
    for label, drawn in images.items():
        models[label], rows[label] = measure_pictures(
            drawn, texts, cats, clip, probe=probe, references=refs
        )

    def ratio(pairs: torch.Tensor) -> float:
        return float(pairs[:, 1].mean() / pairs[:, 0].mean())

    changes = {}
    for label in adapters:
        pairs = torch.stack([rows["base"][:, 2], rows[label][:, 2]], 1)
        low, high = bootstrap_interval(pairs, ratio)
        points = models[label]["prompt_following"]["share"]
        points -= models["base"]["prompt_following"]["share"]
        changes[label] = {
            "clip_score_ratio": ratio(pairs),
            "clip_score_ratio_low": low,
            "clip_score_ratio_high": high,
            "prompt_following_points": 100 * points,
        }
    return {
        "models": models,
        "changes": changes,
        "pictures": len(texts),
        "prompts": [n for n, _ in prompts],
        "seeds": list(seeds),
        "images": images,
    }


def style_and_subject(
    pipe,
    adapter_path: str | os.PathLike,
    clip,
    probe: StyleProbe,
    prompts: list[tuple[str, str]] | None = None,
    seeds: tuple[int, ...] = SEEDS,
    caption: str = CAPTION_TEMPLATE,
) -> dict:
    """Style and subject of the base model and of one LoRA, on the same prompts and seeds.

    :func:`measure_adapters` for one adapter, labelled ``"lora"``.

    Returns:
        ``{"base": ..., "lora": ..., "changes": ..., "pictures": N, "prompts", "seeds",
        "images": {"base": [...], "lora": [...]}}``; base and LoRA as
        :func:`measure_pictures`' record, ``changes`` as :func:`measure_adapters`' for the
        LoRA.
    """
    got = measure_adapters(
        pipe, {"lora": adapter_path}, clip, probe, prompts=prompts, seeds=seeds, caption=caption
    )
    return {
        "base": got["models"]["base"],
        "lora": got["models"]["lora"],
        "changes": got["changes"]["lora"],
        **{k: got[k] for k in ("pictures", "prompts", "seeds", "images")},
    }


def measurement_table(result: dict, probe_record: dict | None = None) -> str:
    """:func:`measure_adapters`' result as a table: one row per model, 95% intervals.

    Columns: the share the probe calls OpenMoji, prompt following (and its change from the
    base, in points), the tiny CLIP score (and the ratio to the base's). With
    ``probe_record`` (from :func:`fit_style_probe`) a first line gives the probe's accuracy
    on real held-out drawings.
    """

    def pct(x: dict) -> str:
        return f"{x['share']:4.0%} [{x['low']:.0%}, {x['high']:.0%}]"

    lines = []
    if probe_record is not None:
        lines.append(
            f"style probe: {probe_record['heldout_accuracy']:.0%} [{probe_record['heldout_low']:.0%}, "
            f"{probe_record['heldout_high']:.0%}] right on {probe_record['heldout_images']} real "
            "held-out drawings (Noto vs OpenMoji)"
        )
    n, k = len(result["prompts"]), len(result["seeds"])
    lines.append(f"{result['pictures']} pictures per model: {n} prompts x {k} seeds, same noise")
    head = f"{'model':<14}{'called OpenMoji':<22}{'prompt following':<30}tiny CLIP score"
    lines += [head, "-" * len(head)]
    for label, m in result["models"].items():
        c = result["changes"].get(label)
        follow = pct(m["prompt_following"])
        score = f"{m['clip_score']['mean']:.1f} [{m['clip_score']['low']:.1f}, {m['clip_score']['high']:.1f}]"
        if c is not None:
            follow += f" ({c['prompt_following_points']:+.0f} pts)"
            score += f" (x{c['clip_score_ratio']:.2f})"
        lines.append(f"{label:<14}{pct(m['openmoji']):<22}{follow:<30}{score}")
    return "\n".join(lines)


def lesson_measurements(output_dir: str | os.PathLike, device: str | None = None) -> dict:
    """The style probe and :func:`style_and_subject` for ``evaluate-tiny``'s LoRA.

    Reads TinyEmote (with its tiny CLIP) and the LoRA that
    :func:`~stableemote_utils.tinyemote.evaluate.evaluate_tinyemote` left in
    ``output_dir/openmoji-lora``; saves ``style_and_subject.png`` there (first seed: base
    row over LoRA row).

    Returns:
        ``{"style_probe": ..., "style_and_subject": ...}`` for ``metrics.json`` (no images).
    """
    from pathlib import Path

    from stableemote_utils.images import image_grid, save_image
    from stableemote_utils.loading import load_components, make_pipeline
    from stableemote_utils.lora_files import LORA_WEIGHT_NAME
    from stableemote_utils.precision import pick_device
    from stableemote_utils.tinyemote.clip import load_tiny_clip

    out = Path(output_dir)
    dev = pick_device(device)
    components = load_components("tiny", device=dev)
    pipe = make_pipeline(components)
    clip = load_tiny_clip(components.source, dev)
    probe, real = fit_style_probe(clip[0])
    result = style_and_subject(pipe, out / STYLE_LORA_DIR / LORA_WEIGHT_NAME, clip, probe)
    images = result.pop("images")
    n = len(result["prompts"])
    grid = image_grid(images["base"][:n] + images["lora"][:n], result["prompts"] * 2, cols=n)
    save_image(grid, out / "style_and_subject.png")
    return {"style_probe": real, "style_and_subject": result}


BARS = {
    "probe_heldout_accuracy": 0.9,
    "lora_openmoji_share": 0.8,
    "base_openmoji_share": 0.2,
    "prompt_following_points": -5.0,
    "clip_score_ratio": 0.95,
}


def bars_met(probe_record: dict, result: dict) -> dict[str, bool]:
    """Which of the lesson's bars (:data:`BARS`) a measurement meets, by name."""
    c = result["changes"]
    return {
        "probe_heldout_accuracy": probe_record["heldout_accuracy"]
        >= BARS["probe_heldout_accuracy"],
        "lora_openmoji_share": result["lora"]["openmoji"]["share"] >= BARS["lora_openmoji_share"],
        "base_openmoji_share": result["base"]["openmoji"]["share"] <= BARS["base_openmoji_share"],
        "prompt_following_points": c["prompt_following_points"] >= BARS["prompt_following_points"],
        "clip_score_ratio": c["clip_score_ratio"] >= BARS["clip_score_ratio"],
    }
