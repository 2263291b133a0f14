"""Did a style LoRA change the look and keep the subject? Two measurements on TinyEmote.

The LoRA lesson trains a short LoRA on OpenMoji's emoji and claims two things: the
pictures take on OpenMoji's look, and they still show what the prompt asks for. Each
claim gets its own number, measured on the same pictures (every prompt at every seed,
drawn from the same noise by each model compared):

* **Style:** a *style probe*, a logistic regression on the tiny CLIP's image features
  (:func:`style_features`; :mod:`stableemote_utils.tinyemote.clip`), trained to tell real Noto drawings from real
  OpenMoji drawings of the training names. Its accuracy on the held-out names' drawings
  (with a Wilson interval) says whether it can be trusted; the share of generated pictures
  it calls "OpenMoji" is the style measurement.
* **Subject:** prompt following (the nearest real emoji's category, as in
  :mod:`stableemote_utils.tinyemote.evaluate`, against real emoji of both styles, so
  that a change of style alone is not counted as a change of subject) and the tiny CLIP
  score of each picture against its prompt.

:func:`style_and_subject` compares three models on training names and on held-out names:
the base model, the base model told the style word its UNet already knows ("openmoji"),
and the LoRA. Every level and every difference between two models gets a 95% interval from
a cluster bootstrap over the prompts (:func:`cluster_means`): the seeds of one prompt stay
together, since they are not independent pictures.

In a notebook, three lines::

    clip = load_tiny_clip(tinyemote_dir)            # (CLIPModel, tokenizer)
    probe, real = fit_style_probe(clip[0])          # real["heldout_accuracy"]
    result = style_and_subject(pipe, adapter_path, clip, probe)

and ``print(lesson_table(result, real))``.
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
    measuring_clip_folder,
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

    Every row is resampled as if independent of the others (for pictures: as if each were
    a prompt of its own). ``statistic`` maps a resample ``(N, ...)`` to a number (for
    paired data, pass rows ``(N, 2)`` and a statistic of both columns). For pictures that
    share prompts, :func:`cluster_means` is the right resampling.
    """
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(values), (draws, len(values)), generator=g)
    stats = torch.tensor([float(statistic(values[i])) for i in idx])
    return _percentiles(stats, confidence)


def _percentiles(stats: torch.Tensor, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central ``confidence`` range of bootstrap statistics ``(draws,)``: ``(low, high)``."""
    tail = (1 - confidence) / 2
    q = torch.tensor([tail, 1 - tail], dtype=torch.float64)
    low, high = torch.quantile(stats.double(), q).tolist()
    return low, high


def cluster_means(values: torch.Tensor, draws: int = 2000, seed: int = 0) -> torch.Tensor:
    """Means of a cluster bootstrap over prompts, seeds nested within them: ``(draws, K)``.

    Args:
        values: ``(K, S, P)``: one number per model, seed and prompt (K models drawn from
            the same S x P noises, e.g. base and LoRA).
        draws: bootstrap resamples.
        seed: the resampling's own seed (fixed, so a record repeats).

    Each resample draws P prompts with replacement and keeps all S seeds of each drawn
    prompt, then takes every model's mean over those S x P pictures. The same prompts serve
    all K models, so differences between models stay paired. Prompts are the units
    resampled because the pictures of one prompt agree far more than pictures of two
    prompts do: resampling the S x P pictures as if independent makes the interval too
    narrow. The seeds are not resampled again inside a prompt: a prompt's mean already
    carries their spread, and resampling both levels would count it twice.
    """
    if values.ndim != 3:
        raise StableEmoteError(f"Need values (models, seeds, prompts), got {tuple(values.shape)}.")
    g = torch.Generator().manual_seed(seed)
    per_prompt = values.double().mean(dim=1)  # (K, P): each prompt's mean over its seeds
    prompts = torch.randint(per_prompt.shape[1], (draws, per_prompt.shape[1]), generator=g)
    return per_prompt[:, prompts].mean(dim=2).T


def level(values: torch.Tensor, binary: bool, confidence: float = CONFIDENCE) -> dict:
    """One model's mean over ``(S, P)`` values with its cluster-bootstrap interval.

    Binary values (the probe's calls, right categories) give ``{"share", "count", "n",
    "low", "high"}``; others ``{"mean", "low", "high"}``. When every picture agrees (none
    or all), resampling has nothing to vary, so a share gets the Wilson interval over the
    P prompts instead: the cautious choice, as if each prompt were one picture.
    """
    mean = float(values.double().mean())
    if not binary:
        low, high = _percentiles(cluster_means(values[None])[:, 0], confidence)
        return {"mean": mean, "low": low, "high": high}
    count, n = int(values.sum()), values.numel()
    if count in (0, n):
        prompts = values.shape[-1]
        low, high = wilson_interval(round(count / n * prompts), prompts, confidence)
    else:
        low, high = _percentiles(cluster_means(values[None])[:, 0], confidence)
    return {"share": count / n, "count": count, "n": n, "low": low, "high": high}


def difference(
    first: torch.Tensor, second: torch.Tensor, scale: float = 1.0, confidence: float = CONFIDENCE
) -> dict:
    """``scale * (mean(first) - mean(second))`` of two ``(S, P)`` value sets drawn from the same
    noises, with a paired cluster-bootstrap interval: ``{"value", "low", "high"}``."""
    means = cluster_means(torch.stack([first, second]))
    low, high = _percentiles(scale * (means[:, 0] - means[:, 1]), confidence)
    value = scale * float(first.double().mean() - second.double().mean())
    return {"value": value, "low": low, "high": high}


def ratio(first: torch.Tensor, second: torch.Tensor, confidence: float = CONFIDENCE) -> dict:
    """``mean(first) / mean(second)`` of two ``(S, P)`` value sets drawn from the same noises,
    with a paired cluster-bootstrap interval: ``{"value", "low", "high"}``."""
    means = cluster_means(torch.stack([first, second]))
    low, high = _percentiles(means[:, 0] / means[:, 1], confidence)
    return {
        "value": float(first.double().mean() / second.double().mean()),
        "low": low,
        "high": high,
    }


def subject_prompts(
    per_category: int | None = PROMPTS_PER_CATEGORY, split: str = "train"
) -> list[tuple[str, str]]:
    """``(name, category)`` of ``per_category`` names of one split per category, in a fixed
    hashed order: by default 20 training names, four each of faces, hearts, flags, clocks,
    hands. ``per_category`` ``None``: every name of the split in those categories (the
    held-out split has 19, most of them flags)."""
    rows = categorised_emoji("noto")
    out = []
    for cat in CATEGORIES:
        names = sorted(
            (n for n, c, got in rows if c == cat and got == split),
            key=lambda n: hashlib.sha256(n.encode()).hexdigest(),
        )
        if per_category is not None and len(names) < per_category:
            raise StableEmoteError(f"Only {len(names)} {split} emoji in category {cat!r}.")
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
) -> torch.Tensor:
    """Style and subject of N pictures, each with its prompt and its prompt's category.

    Returns:
        ``(3, N)``: the probe's OpenMoji call (0/1), right category (0/1), and the tiny
        CLIP score of the picture against ``texts[i]``.
    """
    model, tokenizer = clip
    calls = probe.is_openmoji(style_features(model, images))
    got = nearest_category(image_features(images), *references)
    right = torch.tensor([g == c for g, c in zip(got, categories, strict=True)])
    scores = tiny_clip_score(model, tokenizer, images, texts).float()
    return torch.stack([calls.float(), right.float(), scores])


MEASURES = ("openmoji", "prompt_following", "clip_score")  # the rows of measure_pictures


def summarise(values: torch.Tensor) -> dict:
    """One model's record from its ``(3, S, P)`` values: each measure's level with a
    cluster-bootstrap interval (see :func:`level`)."""
    return {m: level(values[i], binary=m != "clip_score") for i, m in enumerate(MEASURES)}


def compare(first: torch.Tensor, second: torch.Tensor) -> dict:
    """How model ``first`` differs from ``second``, both ``(3, S, P)`` from the same noises.

    Returns:
        ``{"openmoji_points", "prompt_following_points", "clip_score_points",
        "clip_score_ratio"}``, each ``{"value", "low", "high"}`` (paired cluster bootstrap;
        shares in percentage points).
    """
    return {
        "openmoji_points": difference(first[0], second[0], scale=100),
        "prompt_following_points": difference(first[1], second[1], scale=100),
        "clip_score_points": difference(first[2], second[2]),
        "clip_score_ratio": ratio(first[2], second[2]),
    }


def measure_models(
    pipe,
    models: dict[str, tuple[str | os.PathLike | None, str]],
    clip,
    probe: StyleProbe,
    prompts: list[tuple[str, str]],
    seeds: tuple[int, ...] = SEEDS,
    changes: dict[str, tuple[str, str]] | None = None,
    references: tuple[torch.Tensor, list[str]] | None = None,
) -> dict:
    """Style and subject of several models on the same prompts, seeds and noise.

    Args:
        pipe: a ``StableDiffusionPipeline`` over TinyEmote, with no LoRA loaded.
        models: label -> ``(adapter file or None, caption template)``; ``None`` is the base
            model. The template makes the prompt drawn (e.g. ``"An emoji of openmoji {name}"``
            for the base model told the style word); every picture is scored against
            ``"An emoji of {name}"`` all the same, so the models are scored alike.
        clip: ``(CLIPModel, CLIPTokenizer)`` of the tiny CLIP.
        probe: from :func:`fit_style_probe`.
        prompts: ``(name, category)`` pairs.
        seeds: each prompt is drawn at each seed.
        changes: label -> ``(model, other model)``: the differences to report.
        references: from :func:`category_references` (``None``: computed here).

    Returns:
        ``{"models": {label: record}, "changes": {label: ...}, "pictures": S * P,
        "prompts": names, "seeds", "values": {label: (3, S, P)}, "images": {label: [...]}}``;
        each record is :func:`summarise`', each change :func:`compare`'.
    """
    from stableemote_utils.lora import lora_loaded

    names = [n for n, _ in prompts]
    scored = [CAPTION_TEMPLATE.format(name=n) for n in names] * len(seeds)
    cats = [c for _, c in prompts] * len(seeds)
    refs = category_references() if references is None else references
    images, values = {}, {}
    for label, (adapter, template) in models.items():
        texts = [template.format(name=n) for n in names]
        if adapter is None:
            images[label] = draw(pipe, texts, seeds)
        else:
            with lora_loaded(pipe, adapter, adapter_name="measure_models"):
                images[label] = draw(pipe, texts, seeds)
        per_picture = measure_pictures(
            images[label], scored, cats, clip, probe=probe, references=refs
        )
        values[label] = per_picture.view(3, len(seeds), len(names))  # seed-major
    return {
        "models": {label: summarise(v) for label, v in values.items()},
        "changes": {
            label: compare(values[a], values[b]) for label, (a, b) in (changes or {}).items()
        },
        "pictures": len(scored),
        "prompts": names,
        "seeds": list(seeds),
        "values": values,
        "images": images,
    }


def measure_adapters(
    pipe,
    adapters: dict[str, str | os.PathLike],
    clip,
    probe: StyleProbe,
    prompts: list[tuple[str, str]] | None = None,
    seeds: tuple[int, ...] = SEEDS,
    caption: str = CAPTION_TEMPLATE,
) -> dict:
    """The base model and each adapter, on the same prompts and seeds; each adapter's change
    from the base model (:func:`measure_models` with those models; default prompts
    :func:`subject_prompts`, 4 seeds: 80 pictures a model). Changes are labelled
    ``"<adapter label> - base"``."""
    prompts = subject_prompts() if prompts is None else prompts
    models = {"base": (None, caption), **{k: (v, caption) for k, v in adapters.items()}}
    changes = {f"{k} - base": (k, "base") for k in adapters}
    return measure_models(pipe, models, clip, probe, prompts=prompts, seeds=seeds, changes=changes)


STYLE_WORD = "openmoji"  # the word TinyEmote's UNet saw OpenMoji's drawings under
WORD_TEMPLATE = "An emoji of " + STYLE_WORD + " {name}"
MODEL_LABELS = {"base": "base", "base_word": f'base + "{STYLE_WORD}"', "lora": "LoRA"}
SPLITS = {"train": "training names", "heldout": "held-out names"}


def style_and_subject(
    pipe,
    adapter_path: str | os.PathLike,
    clip,
    probe: StyleProbe,
    seeds: tuple[int, ...] = SEEDS,
    prompts: dict[str, list[tuple[str, str]]] | None = None,
) -> dict:
    """The LoRA lesson's measurement: three models on training and on held-out names.

    The models: the base model; the base model told the style word it already knows
    (``"An emoji of openmoji {name}"``: TinyEmote's UNet saw OpenMoji's drawings under that
    word); and the LoRA, prompted plainly. The prompts: 20 training names (four per
    category) and the 19 held-out names that have a category, never in any training.
    Every prompt at every seed, the same noise for all three models.

    Returns:
        ``{"seeds", "captions": {model: template}, "splits": {"train": ..., "heldout": ...},
        "images": {split: {model: [...]}}}``; each split is :func:`measure_models`' record
        (without images and values), with the changes ``"lora - base"`` and
        ``"lora - base_word"``.
    """
    if prompts is None:
        prompts = {"train": subject_prompts(), "heldout": subject_prompts(None, "heldout")}
    models = {"base": (None, CAPTION_TEMPLATE), "base_word": (None, WORD_TEMPLATE)}
    models["lora"] = (adapter_path, CAPTION_TEMPLATE)
    changes = {"lora - base": ("lora", "base"), "lora - base_word": ("lora", "base_word")}
    refs = category_references()
    splits, images = {}, {}
    for split, chosen in prompts.items():
        got = measure_models(
            pipe, models, clip, probe, prompts=chosen, seeds=seeds, changes=changes, references=refs
        )
        images[split] = got.pop("images")
        got.pop("values")
        splits[split] = got
    return {
        "seeds": list(seeds),
        "captions": {k: t for k, (_, t) in models.items()},
        "splits": splits,
        "images": images,
    }


def _pct(x: dict) -> str:
    return f"{x['share']:4.0%} [{x['low']:.0%}, {x['high']:.0%}]"


def _score(x: dict) -> str:
    return f"{x['mean']:.1f} [{x['low']:.1f}, {x['high']:.1f}]"


def _points(x: dict) -> str:
    return f"{x['value']:+.0f} [{x['low']:+.0f}, {x['high']:+.0f}]"


def probe_line(probe_record: dict) -> str:
    """The style probe's accuracy on real held-out drawings, with its Wilson interval."""
    p = probe_record
    return (
        f"style probe: {p['heldout_accuracy']:.0%} [{p['heldout_low']:.0%}, "
        f"{p['heldout_high']:.0%}] right on {p['heldout_images']} real held-out drawings "
        "(Noto vs OpenMoji)"
    )


def measurement_table(result: dict, probe_record: dict | None = None, labels=None) -> str:
    """:func:`measure_models`' result as a table: one row per model, then one per change.

    Brackets are 95% intervals from a cluster bootstrap over the prompts (seeds nested).
    Columns: the share the probe calls OpenMoji, prompt following, the tiny CLIP score;
    change rows give the same three as differences (points) and the CLIP score's ratio.
    With ``probe_record`` (from :func:`fit_style_probe`) a first line gives the probe's
    accuracy on real held-out drawings. ``labels`` renames models in the table.
    """
    labels = labels or {}
    lines = [] if probe_record is None else [probe_line(probe_record)]
    n, k = len(result["prompts"]), len(result["seeds"])
    lines.append(
        f"{result['pictures']} pictures per model: {n} prompts x {k} seeds, same noise; "
        "[95% interval, prompts resampled]"
    )
    head = f"{'model':<26}{'called OpenMoji':<20}{'prompt following':<20}tiny CLIP score"
    lines += [head, "-" * (len(head) + 8)]
    for label, m in result["models"].items():
        lines.append(
            f"{labels.get(label, label):<26}{_pct(m['openmoji']):<20}"
            f"{_pct(m['prompt_following']):<20}{_score(m['clip_score'])}"
        )
    for label, c in result["changes"].items():
        a, b = label.split(" - ")
        name = f"{labels.get(a, a)} - {labels.get(b, b)}"
        r = c["clip_score_ratio"]
        lines.append(
            f"{name:<26}{_points(c['openmoji_points']) + ' pts':<20}"
            f"{_points(c['prompt_following_points']) + ' pts':<20}"
            f"x{r['value']:.2f} [{r['low']:.2f}, {r['high']:.2f}]"
        )
    return "\n".join(lines)


def lesson_table(result: dict, probe_record: dict | None = None) -> str:
    """:func:`style_and_subject`'s result as two tables, training names then held-out names."""
    parts = [] if probe_record is None else [probe_line(probe_record)]
    for split, title in SPLITS.items():
        table = measurement_table(result["splits"][split], None, MODEL_LABELS)
        parts.append(f"{title}:\n{table}")
    return "\n\n".join(parts)


def lesson_measurements(
    output_dir: str | os.PathLike, device: str | None = None, preset: str = "tiny"
) -> dict:
    """The style probe and :func:`style_and_subject` for ``evaluate-tiny``'s LoRA.

    Reads the preset's model (TinyEmote, or TinyEmote-XL for ``"tiny-xl"``), TinyEmote's tiny
    CLIP (the one instrument for both) and the LoRA that
    :func:`~stableemote_utils.tinyemote.evaluate.evaluate_tinyemote` left in
    ``output_dir/openmoji-lora``; saves ``style_and_subject.png`` there (training names,
    first seed: base, base + word and LoRA rows).

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
    components = load_components(preset, device=dev)
    pipe = make_pipeline(components)
    clip = load_tiny_clip(measuring_clip_folder(components.source), dev)
    probe, real = fit_style_probe(clip[0])
    result = style_and_subject(pipe, out / STYLE_LORA_DIR / LORA_WEIGHT_NAME, clip, probe)
    images = result.pop("images")["train"]
    names = result["splits"]["train"]["prompts"]
    n = len(names)
    cells = [im for model in MODEL_LABELS for im in images[model][:n]]
    rows = [MODEL_LABELS[m] for m in MODEL_LABELS]
    save_image(image_grid(cells, names * 3, cols=n, row_labels=rows), out / "style_and_subject.png")
    return {"style_probe": real, "style_and_subject": result}


# The lesson's bars, set before measuring. Each is judged twice: on the point estimate, and on
# the 95% interval (met only if the whole interval clears the bar).
BARS = {
    "probe_heldout_accuracy": 0.9,  # the probe, on real held-out drawings
    "lora_openmoji_share": 0.8,  # at least 80% of the LoRA's pictures called OpenMoji
    "base_openmoji_share": 0.2,  # at most 20% of the base model's
    "prompt_following_points": -5.0,  # LoRA - base, at least -5 points
    "clip_score_ratio": 0.95,  # LoRA / base, at least 0.95
}


def bars_met(probe_record: dict, split: dict, on: str = "point") -> dict[str, bool]:
    """Which of the lesson's bars (:data:`BARS`) one split's measurement meets, by name.

    Args:
        probe_record: from :func:`fit_style_probe`.
        split: a :func:`measure_models` record with models ``"base"`` and ``"lora"`` and the
            change ``"lora - base"`` (one split of :func:`style_and_subject`).
        on: ``"point"`` (the estimate) or ``"interval"`` (the whole 95% interval must clear
            the bar: the low end of a "more than" bar, the high end of a "less than" one).
    """
    if on not in ("point", "interval"):
        raise StableEmoteError(f"Bars are judged on 'point' or 'interval', not {on!r}.")
    lo, hi, est = ("low", "high", None) if on == "interval" else (None, None, True)

    def pick(x: dict, side: str | None) -> float:
        return x.get("share", x.get("value", x.get("mean"))) if est else x[side]

    base, lora = split["models"]["base"], split["models"]["lora"]
    c = split["changes"]["lora - base"]
    probe = probe_record["heldout_accuracy"] if est else probe_record["heldout_low"]
    return {
        "probe_heldout_accuracy": probe >= BARS["probe_heldout_accuracy"],
        "lora_openmoji_share": pick(lora["openmoji"], lo) >= BARS["lora_openmoji_share"],
        "base_openmoji_share": pick(base["openmoji"], hi) <= BARS["base_openmoji_share"],
        "prompt_following_points": pick(c["prompt_following_points"], lo)
        >= BARS["prompt_following_points"],
        "clip_score_ratio": pick(c["clip_score_ratio"], lo) >= BARS["clip_score_ratio"],
    }


def bar_lines(probe_record: dict, split: dict) -> list[str]:
    """The lesson's bars for one name set, each with the number it is judged on both ways.

    One line per bar: the bar, the point estimate and whether it meets the bar, then the
    interval's end that faces the bar (the low end of a "more than" bar, the high end of a
    "less than" one) and whether that meets it. Four digits, so that an end printed as the
    bar itself (0.95 against 0.95) shows which side it is on.
    """
    base, lora = split["models"]["base"], split["models"]["lora"]
    c = split["changes"]["lora - base"]
    values = {
        "probe_heldout_accuracy": (probe_record["heldout_accuracy"], probe_record["heldout_low"]),
        "lora_openmoji_share": (lora["openmoji"]["share"], lora["openmoji"]["low"]),
        "base_openmoji_share": (base["openmoji"]["share"], base["openmoji"]["high"]),
        "prompt_following_points": (
            c["prompt_following_points"]["value"],
            c["prompt_following_points"]["low"],
        ),
        "clip_score_ratio": (c["clip_score_ratio"]["value"], c["clip_score_ratio"]["low"]),
    }
    point, interval = (
        bars_met(probe_record, split, "point"),
        bars_met(probe_record, split, "interval"),
    )
    lines = []
    for bar, limit in BARS.items():
        sign, end = ("<=", "high") if bar == "base_openmoji_share" else (">=", "low")
        value, edge = values[bar]
        lines.append(
            f"  {bar:<24} {sign} {limit:<5g} point {value:<7.4g} "
            f"{'met' if point[bar] else 'NOT met':<8} interval {end} {edge:<7.4g} "
            f"{'met' if interval[bar] else 'NOT met'}"
        )
    return lines
