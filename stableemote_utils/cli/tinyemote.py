"""``stableemote pretrain-tiny`` and ``stableemote evaluate-tiny``: make and measure TinyEmote."""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import sys
from pathlib import Path

from stableemote_utils.cli.common import add_command, add_output_dir, output_path
from stableemote_utils.files import staged_folder
from stableemote_utils.tinyemote.card import (
    format_metrics,
    write_tinyemote_card,
    write_tinyemote_xl_card,
)
from stableemote_utils.tinyemote.evaluate import evaluate_tinyemote, tinyemote_grid
from stableemote_utils.tinyemote.install import (
    SHIPPED_DIR,
    SHIPPED_MODELS,
    SHIPPED_XL_DIR,
    portable_record,
    strip_shared,
)
from stableemote_utils.tinyemote.pretrain import PretrainConfig, pretrain_tiny
from stableemote_utils.tinyemote.pretrain_xl import pretrain_tiny_xl
from stableemote_utils.tinyemote.style import lesson_measurements

TINY_GRID_FILE = "tinyemote_grid.png"


def machine_description(threads: int) -> str:
    """CPU model, thread count and torch version, for the training record."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    plural = "" if threads == 1 else "s"
    return f"{cpu}, {threads} thread{plural}{gpu}, torch {torch.__version__}"


def cmd_pretrain(args: argparse.Namespace) -> None:

    config = PretrainConfig(
        output_dir=args.output_dir,
        vae_steps=args.vae_steps,
        unet_steps=args.unet_steps,
        clip_steps=args.clip_steps,
        balance_repeats=args.balance_repeats,
        vae_from=args.vae_from,
        unet_from=args.unet_from,
        clip_from=args.clip_from,
        openmoji_word=args.openmoji_word,
        unet_learning_rate=args.unet_learning_rate,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
        family=args.family,
        checkpoint_every=args.checkpoint_every,
    )
    xl = config.family == "sdxl"
    record = (pretrain_tiny_xl if xl else pretrain_tiny)(config, resume=not args.fresh)
    record["command"] = "stableemote " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    record["machine"] = machine_description(config.threads)
    (Path(args.output_dir) / "pretrain.json").write_text(json.dumps(record, indent=1))
    model = Path(args.output_dir) / ("tinyemote-xl" if xl else "tinyemote")
    name = "TinyEmote-XL" if xl else "TinyEmote"
    print(f"{name} written to {model} in {record['seconds'] / 60:.1f} min on {record['device']}")
    if args.install:
        shipped_dir = SHIPPED_XL_DIR if xl else SHIPPED_DIR
        with staged_folder(shipped_dir) as staging:
            shutil.copytree(model, staging)
            if xl:  # its text encoders and VAE are TinyEmote's: shipped once, there
                strip_shared(staging)
            shipped = portable_record(record)  # no folder of this machine in shipped files
            (staging / "pretrain.json").write_text(json.dumps(shipped, indent=1))
        preset = " --preset tiny-xl" if xl else ""
        print(
            f"installed into {shipped_dir}; measure it with: stableemote evaluate-tiny{preset} --card"
        )


def add_pretrain_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``pretrain-tiny`` and ``evaluate-tiny`` to the ``stableemote`` parser."""

    d = PretrainConfig()
    p = add_command(
        sub,
        "pretrain-tiny",
        cmd_pretrain,
        uses_cache=True,
        help="train TinyEmote (VAE, tiny CLIP, then UNet from scratch) on the offline emoji",
        description="Reproduce TinyEmote's weights from scratch: a small VAE on Noto and OpenMoji "
        "emoji, a tiny CLIP trained contrastively on emoji and their names (its text tower is "
        "the text encoder), then a small UNet on the Noto training split's latents (with "
        "--openmoji-word, OpenMoji's drawings too, under that word; held-out names never "
        "seen). Deterministic on one machine with the same thread count. Finished stages are "
        "kept: run it again to resume.",
    )
    p.add_argument(
        "--output-dir", default=d.output_dir, help="where the stages are written and resumed"
    )
    p.add_argument("--vae-steps", type=int, default=d.vae_steps, help="VAE training steps")
    p.add_argument("--unet-steps", type=int, default=d.unet_steps, help="UNet training steps")
    p.add_argument(
        "--unet-learning-rate",
        type=float,
        default=d.unet_learning_rate,
        help="the UNet's peak learning rate",
    )
    p.add_argument(
        "--unet-from",
        default=None,
        help="start the UNet from this diffusers UNet folder instead of random weights "
        "(e.g. the shipped stableemote_utils/weights/tinyemote/unet; default: random weights)",
    )
    p.add_argument("--clip-steps", type=int, default=d.clip_steps, help="tiny CLIP steps")
    p.add_argument(
        "--balance-repeats",
        type=int,
        default=d.balance_repeats,
        help="times each non-flag emoji appears in the UNet's data (flags once)",
    )
    p.add_argument(
        "--vae-from",
        default=None,
        help="reuse this diffusers VAE folder instead of training one (e.g. the shipped "
        "stableemote_utils/weights/tinyemote/vae; default: train one)",
    )
    p.add_argument(
        "--clip-from",
        default=None,
        help="reuse this tiny CLIPModel folder instead of training one (e.g. the shipped "
        "stableemote_utils/weights/tinyemote/clip; default: train one)",
    )
    p.add_argument(
        "--openmoji-word",
        default=d.openmoji_word,
        help="add the OpenMoji drawings of the training names to the UNet's data, captioned "
        "'An emoji of WORD name', so the model knows that style under WORD (default: "
        f"{d.openmoji_word or 'Noto only'})",
    )
    p.add_argument(
        "--family",
        choices=("sd15", "sdxl"),
        default=d.family,
        help="sd15: TinyEmote (SD 1.5's architecture); sdxl: TinyEmote-XL (SDXL's architecture "
        "at toy size, two text encoders from the tiny CLIP, time ids from each image's size "
        "and crop); stages 1-3 are the same",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=d.checkpoint_every,
        help="steps between the UNet stage's checkpoints (a re-run resumes from the newest)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seed of every stage")
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    p.add_argument("--fresh", action="store_true", help="do not resume the UNet stage")
    p.add_argument(
        "--install",
        action="store_true",
        help="copy the result over the package's shipped weights (what the tiny preset loads)",
    )
    add_evaluate_command(sub)
    add_grid_command(sub)


def cmd_evaluate(args: argparse.Namespace) -> None:

    record = evaluate_tinyemote(
        args.output_dir,
        lora_steps=args.lora_steps,
        per_category=args.per_category,
        device=args.device,
        preset=args.preset,
    )
    written = ["metrics.json", "samples_by_category.png"]
    if "style" in record:
        written.append("style_before_after.png")
    if "style" in record:  # the LoRA lesson's measurements, on the same LoRA
        record.update(lesson_measurements(args.output_dir, args.device, args.preset))
        (Path(args.output_dir) / "metrics.json").write_text(json.dumps(record, indent=1))
        written.append("style_and_subject.png")
    print(format_metrics(record))
    print(f"wrote {', '.join(written)} in {args.output_dir}")
    if args.card:
        shipped = SHIPPED_MODELS[args.preset][1]
        (shipped / "metrics.json").write_text(json.dumps(portable_record(record), indent=1))
        write_card = write_tinyemote_xl_card if args.preset == "tiny-xl" else write_tinyemote_card
        print(f"wrote {write_card(shipped)}")


def add_evaluate_command(sub: argparse._SubParsersAction) -> None:
    """Add ``evaluate-tiny`` to the ``stableemote`` parser."""
    p = add_command(
        sub,
        "evaluate-tiny",
        cmd_evaluate,
        uses_cache=True,
        help="measure TinyEmote: VAE PSNR, prompt following, LoRA style and subject",
        description="Print TinyEmote's measurements: VAE reconstruction PSNR on held-out "
        "emoji; nearest-category accuracy of generated images with its chance level; KID to "
        "OpenMoji's and Noto's style before and after a short LoRA on OpenMoji; the tiny CLIP's "
        "retrieval and score; and the LoRA lesson's two measurements, on training names and on "
        "held-out names (4 seeds each), for the base model, the base model prompted with the "
        "style word 'openmoji' and the LoRA: the share a style probe (held-out accuracy on real "
        "drawings printed) calls OpenMoji, and prompt following and the tiny CLIP score "
        "(subject kept), with 95% intervals from a cluster bootstrap over the prompts, for each "
        "model and for each difference (LoRA - base, LoRA - base + word).",
    )
    p.add_argument(
        "--output-dir", default="outputs/tinyemote-eval", help="where metrics.json is written"
    )
    p.add_argument(
        "--lora-steps",
        type=int,
        default=None,
        help="steps of the LoRA whose style shift is measured (default: the tiny-quick "
        "recipe's; 0 leaves the style shift out)",
    )
    p.add_argument("--per-category", type=int, default=10, help="prompts per category")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    p.add_argument(
        "--preset",
        choices=tuple(SHIPPED_MODELS),
        default="tiny",
        help="which shipped model to measure: tiny (TinyEmote) or tiny-xl (TinyEmote-XL)",
    )
    p.add_argument(
        "--card", action="store_true", help="record the figures in the shipped model card"
    )


def cmd_grid(args: argparse.Namespace) -> None:
    print(f"wrote {tinyemote_grid(output_path(args, TINY_GRID_FILE))}")


def add_grid_command(sub: argparse._SubParsersAction) -> None:
    """Add ``tiny-grid`` (the README's 4 x 4 TinyEmote grid) to the ``stableemote`` parser."""
    p = add_command(
        sub,
        "tiny-grid",
        cmd_grid,
        uses_cache=True,
        help="draw the README's 4 x 4 grid of fixed prompts with TinyEmote (fixed seeds)",
    )
    add_output_dir(p, "images", f"folder for {TINY_GRID_FILE}")
