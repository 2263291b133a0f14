"""Every plot: the ones the notebooks show, and every figure in ``images/``.

The lesson modules hold no plotting code; their notebooks import the plots from here
(the training loss plot is :mod:`stableemote_utils.plots`, since training writes it).
The figures in ``images/`` are made by ``stableemote figures``.

Each figure's content comes from configs, the real CLIP tokenizer, or the offline emoji
set, not from trained weights, so the same command gives the same pictures anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from stableemote_utils.data import load_emoji_dataset
from stableemote_utils.denoising import pipeline_shapes, sd15_scheduler, snr
from stableemote_utils.images import IMAGES_DIR, image_grid, save_figure, save_image
from stableemote_utils.lora import lora_size_table
from stableemote_utils.lora_inspect import layout_models
from stableemote_utils.text import clip_tokenizer, token_table
from stableemote_utils.tiny_model import sd15_config
from stableemote_utils.vae import latent_shape, unet_cost_estimate

# Opacity of an attention heatmap drawn over its image.
HEATMAP_ALPHA = 0.55
# A spread of faces, animals, objects and symbols for the dataset figure.
DATASET_FIGURE_NAMES = (
    "grinning face",
    "smiling face with heart-eyes",
    "crying face",
    "winking face",
    "cat face",
    "dog face",
    "unicorn",
    "robot",
    "red heart",
    "rocket",
    "pizza",
    "rainbow",
    "ghost",
    "fire",
    "party popper",
    "thumbs up",
)


# ---------------------------------------------------------------------------
# Plots the notebooks show
# ---------------------------------------------------------------------------


def plot_noise_schedule(scheduler, model_name: str = "SD 1.5"):
    """A three-panel matplotlib figure: betas, alphas_cumprod, and log10 SNR against t.

    ``model_name`` names whose schedule it is in the title (``scheduler.betas`` is ``(T,)``).

    Returns:
        The figure (call ``plt.show()`` in a notebook, or save it).
    """
    import matplotlib.pyplot as plt

    betas = scheduler.betas.double()
    alphas_cumprod = scheduler.alphas_cumprod.double()
    t = torch.arange(len(betas))
    beta_kind = scheduler.config.beta_schedule
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].plot(t, betas, color="#d8703b")
    axes[0].set_title(f"betas ({beta_kind})")
    axes[0].set_ylabel("beta_t (noise added at step t)")
    crossover = int((alphas_cumprod < 0.5).double().argmax())  # where SNR falls below 1
    axes[1].plot(t, alphas_cumprod, label="alpha_bar (signal)", color="#3b7dd8")
    axes[1].plot(t, 1 - alphas_cumprod, label="1 - alpha_bar (noise)", color="#888")
    axes[1].axvline(crossover, color="#aaa", lw=0.8, ls="--")
    axes[1].set_title("how much signal is left")
    axes[1].set_ylabel("share of the variance")
    axes[1].legend(fontsize=9, loc="center right", bbox_to_anchor=(1.02, 0.5), frameon=False)
    axes[2].plot(t, torch.log10(snr(alphas_cumprod)), color="#2a9d5c")
    axes[2].axhline(0, color="#aaa", lw=0.8)
    axes[2].axvline(crossover, color="#aaa", lw=0.8, ls="--")
    axes[2].text(crossover + 15, 2.0, f"SNR = 1\nat t = {crossover}", fontsize=8)
    axes[2].set_title("log10 SNR = log10(alpha_bar / (1 - alpha_bar))", fontsize=10)
    axes[2].set_ylabel("log10 SNR")
    for ax in axes:
        ax.set_xlabel("training timestep t")
    fig.suptitle(
        f"{model_name} training noise schedule: {len(betas)} steps, beta "
        f"{float(betas[0]):.5f} -> {float(betas[-1]):.4f}",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def plot_vae_diagram(vae_config: dict, resolution_px: int, model_name: str = "SD 1.5"):
    """A box diagram of a VAE's round trip with the tensor shape at each stage.

    image ``(3, H, W)`` -> encoder -> mean and log-variance ``(C, H/f, W/f)`` -> the raw draw
    ``mean + std * eps`` -> decoder -> reconstruction, with ``z = raw * scaling factor`` on the
    branch that leads to the UNet. Shapes come from ``vae_config`` at ``resolution_px``.

    Returns:
        The matplotlib ``Figure`` (not shown, not saved).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    shape = latent_shape(vae_config, resolution_px)
    latent = "(" + ", ".join(str(s) for s in shape) + ")"
    image = f"(3, {resolution_px}, {resolution_px})"
    factor = vae_config["scaling_factor"]
    fig, ax = plt.subplots(figsize=(12, 2.9))
    ax.set_xlim(0, 12.4)
    ax.set_ylim(-0.2, 2.6)
    ax.axis("off")
    w, h = 1.8, 0.95
    boxes = {  # name: (x, y, label, colour)
        "image": (0.1, 1.4, f"image x\n{image}\nin [-1, 1]", "#eeeeee"),
        "encoder": (2.5, 1.4, "encoder", "#f6d0d0"),
        "gauss": (4.9, 1.4, f"mean μ, log σ²\n{latent} each", "#fde2c8"),
        "draw": (7.3, 1.4, "raw = μ + σ·ε\nε ~ N(0, 1)", "#d6f0dd"),
        "decoder": (9.7, 1.4, "decoder", "#f6d0d0"),
        "unet": (7.3, 0.0, f"z = raw × f\n(f = {factor:.5g}):\nthe UNet's latent", "#cfe0fa"),
        "out": (9.7, 0.0, f"reconstruction x̂\n{image}", "#eeeeee"),
    }
    for x, y, label, colour in boxes.values():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=colour, ec="#555"))
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=9)
    arrow = {"arrowstyle": "->", "color": "#333"}
    for a, b in [
        ("image", "encoder"),
        ("encoder", "gauss"),
        ("gauss", "draw"),
        ("draw", "decoder"),
    ]:
        (xa, ya), (xb, yb) = boxes[a][:2], boxes[b][:2]
        ax.annotate("", (xb, yb + h / 2), (xa + w, ya + h / 2), arrowprops=arrow)
    ax.annotate("", (8.2, h + 0.05), (8.2, 1.35), arrowprops=arrow)  # draw -> UNet branch
    ax.annotate("", (10.6, h + 0.05), (10.6, 1.35), arrowprops=arrow)  # decoder -> output
    ax.set_title(
        f"{model_name} VAE at {resolution_px} px: training compares x̂ with x; a KL term of "
        "weight only 1e-6 pulls each Gaussian weakly towards N(0, 1)",
        fontsize=10,
    )
    return fig


def plot_lora_diagram(d_in: int, d_out: int, rank: int, alpha: float):
    """A box diagram of a LoRA layer: ``y = W x + (alpha / r) B A x``.

    The frozen path ``W`` (``d_out x d_in``) runs along the top; the side path runs
    below it, ``A`` (``r x d_in``) narrowing ``x`` to ``r`` numbers, then ``B``
    (``d_out x r``, zero at the start) widening them back, scaled by ``alpha / r``,
    and the two paths are added. Boxes' heights follow the widths they output.

    Returns:
        The matplotlib ``Figure`` (not shown, not saved).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    fig, ax = plt.subplots(figsize=(9, 2.7))
    ax.set_xlim(0, 10.2)
    ax.set_ylim(-0.1, 2.9)
    ax.axis("off")
    arrow = {"arrowstyle": "->", "color": "#333"}

    def box(corner, size, label, colour):
        (x, y), (w, h) = corner, size
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.04", fc=colour, ec="#555"))
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=9)

    top, low = 2.0, 0.55  # centre lines of the frozen path and the side path
    box((0.1, top - 0.45), (1.4, 0.9), f"x\n({d_in},)", "#eeeeee")
    box((3.4, top - 0.4), (2.2, 0.8), f"W  (frozen)\n{d_out} × {d_in}", "#dddddd")
    squeeze = 0.22 + 0.2 * rank / max(d_in, d_out, rank)  # the bottleneck's half-height
    box((2.4, low - 0.45), (1.5, 0.9), f"A  (trained)\n{rank} × {d_in}", "#d6f0dd")
    box((4.3, low - squeeze), (0.6, 2 * squeeze), f"A x\n({rank},)", "#ffffff")
    box((5.3, low - 0.45), (1.5, 0.9), f"B  (trained)\n{d_out} × {rank}\nstarts at 0", "#d6f0dd")
    box((7.0, low - 0.3), (0.9, 0.6), f"× {alpha:g}/{rank}", "#fde2c8")
    ax.add_patch(plt.Circle((8.45, top), 0.22, fc="#ffffff", ec="#555"))
    ax.text(8.45, top, "+", ha="center", va="center", fontsize=14)
    box((9.0, top - 0.45), (1.1, 0.9), f"y\n({d_out},)", "#eeeeee")
    ax.annotate("", (3.4, top), (1.5, top), arrowprops=arrow)
    ax.annotate("", (8.23, top), (5.6, top), arrowprops=arrow)
    ax.annotate("", (9.0, top), (8.67, top), arrowprops=arrow)
    ax.annotate("", (2.4, low), (1.9, top - 0.1), arrowprops=arrow)  # x feeds the side path
    ax.annotate("", (4.3, low), (3.9, low), arrowprops=arrow)
    ax.annotate("", (5.3, low), (4.9, low), arrowprops=arrow)
    ax.annotate("", (7.0, low), (6.8, low), arrowprops=arrow)
    ax.annotate("", (8.45, top - 0.22), (7.9, low), arrowprops=arrow)
    ax.set_title(
        f"A LoRA layer: y = W x + ({alpha:g}/{rank}) · B A x. "
        f"Only A and B train: {rank * (d_in + d_out):,} numbers instead of W's {d_in * d_out:,}",
        fontsize=10,
    )
    return fig


def plot_attention_maps(results: dict[str, dict], title: str | None = None):
    """Heatmaps over the images: one row per word and model, one column per step.

    Args:
        results: model label (``"base"``, ``"LoRA"``) -> a :func:`cross_attention_maps` result;
            all must share words and steps.

    Returns:
        A matplotlib figure. Each map is scaled to its own maximum, so the colours show
        where a word is looked at, not how much (the number in each title is the peak).
    """
    import matplotlib.pyplot as plt

    first = next(iter(results.values()))
    words, steps = first["words"], first["steps"]
    rows = [(w, label) for w in range(len(words)) for label in results]
    fig, axes = plt.subplots(
        len(rows),
        len(steps) + 1,
        figsize=(1.9 * (len(steps) + 1), 1.9 * len(rows)),
        squeeze=False,
    )
    for r, (w, label) in enumerate(rows):
        res = results[label]
        image = np.asarray(res["image"])
        extent = (0, image.shape[1], image.shape[0], 0)
        axes[r][0].imshow(image)
        axes[r][0].set_title(f"{label}: image", fontsize=8)
        axes[r][0].set_ylabel(f"'{words[w]}'", fontsize=9)
        for c, step in enumerate(steps):
            heat = res["maps"][c, w].numpy()
            ax = axes[r][c + 1]
            ax.imshow(image, extent=extent)
            ax.imshow(
                heat / max(heat.max(), 1e-12),
                cmap="jet",
                alpha=HEATMAP_ALPHA,
                extent=extent,
                interpolation="bilinear",
                vmin=0,
                vmax=1,
            )
            ax.set_title(f"{label} step {step} (peak {heat.max():.2f})", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------
# The figures in images/
# ---------------------------------------------------------------------------


def figure_dataset_noto(path: str | os.PathLike) -> Path:
    """A labelled grid of 16 emoji from the offline ``noto`` set, at 128 px."""

    by_name = {e.name: e for e in load_emoji_dataset("noto", 128, "{name}", split="all")}
    missing = [n for n in DATASET_FIGURE_NAMES if n not in by_name]
    if missing:
        raise RuntimeError(f"emoji missing from the noto set: {missing}")
    chosen = [by_name[n] for n in DATASET_FIGURE_NAMES]
    grid = image_grid([e.image for e in chosen], [e.caption for e in chosen], cols=8, cell_px=112)
    return save_image(grid, path)


STYLE_FIGURE_NAMES = (
    "grinning face",
    "cat face",
    "red heart",
    "rocket",
    "pizza",
    "rainbow",
    "thumbs up",
    "ghost",
)


def figure_dataset_styles(path: str | os.PathLike) -> Path:
    """The same eight emoji in the two offline styles: Noto (top row), OpenMoji (bottom)."""

    rows = []
    for style in ("noto", "openmoji"):
        by_name = {e.name: e.image for e in load_emoji_dataset(style, 128, "{name}", split="all")}
        missing = [n for n in STYLE_FIGURE_NAMES if n not in by_name]
        if missing:
            raise RuntimeError(f"emoji missing from the {style} set: {missing}")
        rows += [by_name[n] for n in STYLE_FIGURE_NAMES]
    grid = image_grid(
        rows,
        cols=len(STYLE_FIGURE_NAMES),
        cell_px=96,
        caption_lines=0,
        row_labels=["Noto", "OpenMoji"],
        col_labels=list(STYLE_FIGURE_NAMES),
    )
    return save_image(grid, path)


def figure_latent_vs_pixel_cost(path: str | os.PathLike, resolutions_px=(256, 512)) -> Path:
    """Bar chart: SD 1.5's UNet forward cost (TFLOPs, log scale) in latent vs pixel space.

    Computed from the published SD 1.5 configs in ``stableemote_utils/configs`` on the meta
    device, so it needs no weights and no GPU.
    """
    import matplotlib.pyplot as plt

    unet_config, vae_config = sd15_config("unet"), sd15_config("vae")
    rows = [unet_cost_estimate(unet_config, vae_config, r) for r in resolutions_px]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(rows))
    width = 0.38
    latent = [r["latent_gflops"] / 1e3 for r in rows]
    pixel = [r["pixel_gflops"] / 1e3 for r in rows]
    ax.bar(
        x - width / 2, latent, width, label="UNet on latents (what SD 1.5 does)", color="#3b7dd8"
    )
    ax.bar(x + width / 2, pixel, width, label="same UNet on pixels", color="#d8703b")
    for i, r in enumerate(rows):
        c, h, w = r["latent_shape"]
        pc, ph, pw = r["pixel_shape"]
        ax.text(
            i - width / 2,
            latent[i] * 1.15,
            f"{latent[i]:.2f}\n{c}x{h}x{w}",
            ha="center",
            fontsize=8,
        )
        ax.text(
            i + width / 2,
            pixel[i] * 1.15,
            f"{pixel[i]:.0f}\n{pc}x{ph}x{pw}",
            ha="center",
            fontsize=8,
        )
        ax.text(
            i, pixel[i] * 6, f"{r['ratio']:.0f}x cheaper", ha="center", fontsize=9, weight="bold"
        )
    ax.set_yscale("log")
    ax.set_ylim(min(latent) / 3, max(pixel) * 40)
    ax.set_xticks(x, [f"{r} px image" for r in resolutions_px])
    ax.set_ylabel("TFLOPs per UNet forward (log scale)")
    ax.set_title("Why latent diffusion: one SD 1.5 UNet call, latents vs pixels")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def figure_token_table(path: str | os.PathLike, tokenizer=None, prompt: str | None = None) -> Path:
    """A table of CLIP's tokens for an emoji prompt, drawn with matplotlib and saved as PNG.

    Uses the real CLIP BPE tokenizer (the one the tiny preset ships), so the figure
    shows exactly what SD 1.5 sees.
    """
    import matplotlib.pyplot as plt

    if tokenizer is None:
        tokenizer = clip_tokenizer()
    prompt = prompt or "An emoji of \N{GRINNING FACE} grinning face, supercalifragilistic"
    rows = token_table(tokenizer, prompt)
    padding = tokenizer.model_max_length - len(rows)
    cells = [[str(p), str(i), t] for p, i, t in rows]
    cells.append(
        [
            f"{len(rows)}-{tokenizer.model_max_length - 1}",
            str(tokenizer.pad_token_id),
            f"{tokenizer.pad_token} x {padding} (padding)",
        ]
    )
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(cells) + 0.8))
    ax.axis("off")
    table = ax.table(
        cellText=cells,
        colLabels=["position", "id", "token"],
        loc="center",
        cellLoc="left",
        colWidths=[0.2, 0.2, 0.6],
    )
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.25)
    ax.set_title(
        f"CLIP tokens of: {prompt!r}\n(padded to {tokenizer.model_max_length})", fontsize=9
    )
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def figure_noise_schedule(path: str | os.PathLike) -> Path:
    """Save SD 1.5's noise-schedule plot (from the published scheduler config) as PNG."""
    import matplotlib.pyplot as plt

    fig = plot_noise_schedule(sd15_scheduler())
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def figure_sd15_pipeline(
    path: str | os.PathLike, resolution_px: int = 512, sampling_steps: int = 50, scheduler=None
) -> Path:
    """:func:`figure_pipeline` for SD 1.5's published configs (the README's diagram).

    ``scheduler`` defaults to SD 1.5's PNDM; ``sampling_steps`` to the pipeline's 50.
    """
    return figure_pipeline(
        path,
        sd15_config("unet"),
        sd15_config("vae"),
        sd15_config("text_encoder"),
        resolution_px=resolution_px,
        scheduler=sd15_scheduler() if scheduler is None else scheduler,
        sampling_steps=sampling_steps,
        model_name="Stable Diffusion 1.5",
    )


def figure_pipeline(
    path: str | os.PathLike,
    unet_config: dict,
    vae_config: dict,
    text_config: dict,
    resolution_px: int,
    scheduler,
    sampling_steps: int,
    model_name: str,
    max_tokens: int = 77,
) -> Path:
    """A box diagram of text-to-image sampling with the tensor shape at each stage, saved as PNG.

    The timestep ``t`` feeds ``scale_model_input``, the UNet and ``scheduler.step``, and the
    current latents feed ``scheduler.step`` beside the guided noise, as in the loop. The text
    batch is ``["", prompt]``: unconditional first.

    The shapes come from :func:`pipeline_shapes` over the given configs (a model's
    ``unet.config``, ``vae.config`` and ``text_encoder.config.to_dict()``) at
    ``resolution_px``, one image with guidance (batch 2 in the UNet). The scheduler's own
    numbers are drawn in: the first timestep, ``init_noise_sigma``, and how many UNet calls
    ``sampling_steps`` take (PNDM makes one more than it has steps), counted on a copy made
    from ``scheduler.config``, so ``scheduler`` is not changed.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    shapes = pipeline_shapes(
        unet_config, vae_config, text_config, resolution_px=resolution_px, max_tokens=max_tokens
    )
    counter = type(scheduler).from_config(scheduler.config)
    counter.set_timesteps(sampling_steps)
    first_t = int(counter.timesteps[0])
    init_sigma = float(counter.init_noise_sigma)
    unet_calls = len(counter.timesteps)
    train_steps = counter.config.num_train_timesteps

    def fmt(key: str) -> str:
        return "(" + ", ".join(str(s) for s in shapes[key]) + ")"

    fig, ax = plt.subplots(figsize=(14, 5.2))
    ax.set_xlim(0, 13.6)
    ax.set_ylim(-0.75, 4.5)
    ax.axis("off")
    boxes = {
        "prompt": (0.2, 3.3, '"" and prompt\n(unconditional first)', "#eeeeee"),
        "tokenizer": (3.0, 3.3, "CLIP tokenizer", "#fde2c8"),
        "text": (5.8, 3.3, "CLIP text encoder", "#fde2c8"),
        "noise": (
            0.2,
            1.5,
            f"seeded Gaussian noise\n{fmt('initial_noise')}\n× init_noise_sigma ({init_sigma:g})",
            "#eeeeee",
        ),
        "scale": (
            3.0,
            1.5,
            f"doubled: {fmt('unet_input')}\nscheduler.\nscale_model_input",
            "#d6f0dd",
        ),
        "timestep": (
            3.0,
            0.0,
            f"timestep t\n(scheduler.timesteps,\nfirst t = {first_t})",
            "#d6f0dd",
        ),
        "unet": (5.8, 1.5, "UNet\n(predicts noise)", "#cfe0fa"),
        "cfg": (8.6, 1.5, "chunk(2) -> u, c\nguidance\nu + s (c - u)", "#d6f0dd"),
        "sched": (8.6, 0.0, "scheduler.step\n-> latents for the\nnext timestep", "#d6f0dd"),
        "vae": (11.4, 1.5, "VAE decoder", "#f6d0d0"),
        "image": (11.4, 3.3, "image", "#eeeeee"),
    }
    w, h = 1.9, 0.9
    for x, y, label, colour in boxes.values():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=colour, ec="#555"))
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=8.5)

    # (from, to, label, start, end, label offset): start/end None join the boxes' sides.
    arrows = [
        ("prompt", "tokenizer", "", None, None, (0.0, 0.25)),
        ("tokenizer", "text", f"ids {fmt('token_ids')}", None, None, (0.0, 0.3)),
        ("noise", "scale", "", None, None, (0.0, 0.0)),
        ("scale", "unet", "", None, None, (0.0, 0.0)),
        ("timestep", "scale", "t", (3.95, 0.95), (3.95, 1.45), (0.15, 0.0)),
        ("timestep", "unet", "t", (4.95, 0.7), (6.1, 1.45), (-0.2, 0.15)),
        ("timestep", "sched", "t", (4.95, 0.3), (8.55, 0.3), (0.0, 0.15)),
        (
            "text",
            "unet",
            f"text embeddings\n{fmt('text_embeddings')}",
            (6.75, 3.25),
            (6.75, 2.45),
            (-1.0, 0.0),
        ),
        ("unet", "cfg", f"noise pred\n{fmt('noise_pred')}", None, None, (0.0, 0.7)),
        ("cfg", "sched", f"guided noise\n{fmt('latents')}", (9.55, 1.45), (9.55, 0.95), (0.6, 0.0)),
        (
            "sched",
            "vae",
            f"final latents\n{fmt('latents')}\n/ scaling_factor ({vae_config['scaling_factor']:.5g})",
            (10.55, 0.45),
            (12.35, 1.45),
            (1.05, -0.35),
        ),
        ("vae", "image", f"{fmt('image')}\nin [-1, 1]", (12.35, 2.45), (12.35, 3.25), (-1.0, 0.0)),
    ]

    def label(x: float, y: float, text: str) -> None:  # a tensor's shape on its line
        ax.text(
            x,
            y,
            text,
            ha="center",
            va="center",
            fontsize=8,
            color="#1a4d99",
            bbox={"fc": "white", "ec": "none", "pad": 1},
        )

    for a, b, text, start, end, (dx, dy) in arrows:
        xa, ya = start or (boxes[a][0] + w, boxes[a][1] + h / 2)
        xb, yb = end or (boxes[b][0], boxes[b][1] + h / 2)
        ax.annotate("", (xb, yb), (xa, ya), arrowprops={"arrowstyle": "->", "color": "#333"})
        if text:
            label((xa + xb) / 2 + dx, (ya + yb) / 2 + dy, text)
    # The current latents (before doubling) also go to scheduler.step: from the junction left of
    # scale_model_input, under the UNet row, into the step's left side.
    join_x, lat_y = 2.75, 1.03
    ax.plot([join_x, join_x, 8.3, 8.3], [1.95, lat_y, lat_y, 0.7], color="#333", lw=1)
    ax.plot([join_x, join_x], [1.95, 1.7], "o", color="#333", ms=3)
    ax.annotate("", (8.55, 0.7), (8.3, 0.7), arrowprops={"arrowstyle": "->", "color": "#333"})
    label(7.35, lat_y, f"current latents {fmt('latents')}")
    # The loop: the new latents go back into the UNet's input (below the boxes, to the left
    # side of scale_model_input), and the timestep box hands out the next t.
    loop_y, loop_x = -0.35, 2.6
    ax.plot([9.55, 9.55, loop_x, loop_x], [-0.05, loop_y, loop_y, 1.7], color="#333", lw=1)
    ax.annotate("", (2.95, 1.7), (loop_x, 1.7), arrowprops={"arrowstyle": "->", "color": "#333"})
    label(
        6.2,
        loop_y,
        f"repeat with the new latents and the next t: {unet_calls} UNet calls for "
        f"{sampling_steps} sampling steps,\nt spread over the {train_steps} training timesteps",
    )
    ax.set_title(
        f"{model_name} at {resolution_px} px: the tensors between the parts "
        "(batch of 2 = unconditional + conditional)",
        fontsize=10,
    )
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def figure_lora_rank(path: str | os.PathLike) -> Path:
    """Plot trainable parameters and adapter file size against rank for SD 1.5.

    Counts come from the full-size SD 1.5 UNet layout (meta device); the file size is
    the exact size of an fp32 ``pytorch_lora_weights.safetensors``. Deterministic.
    """
    import matplotlib.pyplot as plt

    unet = layout_models("sd15")["unet"]
    frozen = sum(p.numel() for p in unet.parameters())
    rows = lora_size_table(unet=unet)
    ranks = [r["rank"] for r in rows]
    params_m = [r["parameters"] / 1e6 for r in rows]
    size_mb = [r["file_bytes"] / 1e6 for r in rows]
    fig, (ax_params, ax_size) = plt.subplots(1, 2, figsize=(10, 4))
    ax_params.plot(ranks, params_m, "o-", color="tab:blue")
    for r, p in zip(ranks, params_m, strict=True):
        ax_params.annotate(
            f"{p * 1e6 / frozen:.2%}",
            (r, p),
            textcoords="offset points",
            xytext=(-10, 8),
            fontsize=8,
        )
    ax_params.set_title(f"Trainable LoRA parameters (% of the {frozen / 1e6:.1f} M frozen)")
    ax_params.set_ylabel("parameters (millions)")
    ax_size.plot(ranks, size_mb, "s-", color="tab:orange")
    for r, s in zip(ranks, size_mb, strict=True):
        ax_size.annotate(
            f"{s:.1f} MB", (r, s), textcoords="offset points", xytext=(-12, 8), fontsize=8
        )
    ax_size.set_title("Adapter file size (fp32 safetensors)")
    ax_size.set_ylabel("megabytes")
    for ax in (ax_params, ax_size):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(ranks, [str(r) for r in ranks])
        ax.set_xlabel("LoRA rank r (to_q, to_k, to_v, to_out.0 of the SD 1.5 UNet)")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def all_figures() -> dict[str, Callable[[Path], Path]]:
    """File name in ``images/`` -> the function that makes it."""
    return {
        "dataset_noto.png": figure_dataset_noto,
        "dataset_styles.png": figure_dataset_styles,
        "vae_latent_vs_pixel_cost.png": figure_latent_vs_pixel_cost,
        "clip_token_table.png": figure_token_table,
        "noise_schedule.png": figure_noise_schedule,
        "sd15_pipeline_shapes.png": figure_sd15_pipeline,
        "lora_rank_size.png": figure_lora_rank,
    }


def make_figures(
    folder: str | os.PathLike = IMAGES_DIR, only: list[str] | None = None
) -> list[Path]:
    """Write the figures (all, or the named ones) into ``folder``; returns their paths."""
    folder = Path(folder)
    made = []
    for name, make in all_figures().items():
        if only and name not in only:
            continue
        made.append(make(folder / name))
    return made
