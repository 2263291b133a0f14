"""The ``stableemote`` command line.

Each subcommand is a thin wrapper over a helper the notebooks also use. Problems the
user can fix print a one-paragraph message (no traceback) and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
from collections.abc import Callable
from importlib import metadata

from stableemote_utils import __version__
from stableemote_utils.bench import count_step_flops, format_flops_table, format_table, run_bench
from stableemote_utils.cli.common import add_command
from stableemote_utils.cli.demo import add_demo_command
from stableemote_utils.cli.lora import add_lora_commands
from stableemote_utils.cli.tinyemote import add_pretrain_commands
from stableemote_utils.compare import fair_comparison, save_comparison
from stableemote_utils.errors import StableEmoteError, Terminated
from stableemote_utils.figures import make_figures
from stableemote_utils.files import DISK_ERRNOS, os_error_of, write_failed
from stableemote_utils.images import IMAGES_DIR
from stableemote_utils.loading import load_components, make_pipeline
from stableemote_utils.lora_files import check_lora_file
from stableemote_utils.options import check_device, check_sampling_options
from stableemote_utils.precision import choose_dtype, pick_device
from stableemote_utils.presets import PRESET_ENV_VAR, get_preset, precision_setting
from stableemote_utils.quickstart import run_quickstart
from stableemote_utils.training import recipe, train

LIBRARIES = ("torch", "diffusers", "transformers", "peft", "accelerate", "datasets", "safetensors")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cmd_info(args: argparse.Namespace) -> None:
    """Print versions, device, precision and preset."""
    import torch

    preset = get_preset(args.preset)
    device = pick_device(args.device)
    _, reason = choose_dtype(device, args.precision)
    print(f"stableemote  {__version__}")
    print(f"python       {platform.python_version()}")
    for lib in LIBRARIES:
        print(f"{lib:<12} {_version(lib)}")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    print(f"device       {device} (GPU: {gpu})")
    print(f"precision    {reason}")
    print(f"preset       {preset.name}: model {preset.model}")
    print(
        f"             {preset.resolution_px} px, batch {preset.batch_size}, "
        f"dataset {preset.dataset}, captions '{preset.caption_template}'"
    )


def cmd_quickstart(args: argparse.Namespace) -> None:
    """Run the course's main job end to end on the chosen preset (``make demo``)."""

    run_quickstart(
        preset=args.preset,
        output_dir=args.output_dir,
        device=args.device,
        steps=args.steps,
        figures_dir=args.figures_dir,
    )


def cmd_train(args: argparse.Namespace) -> None:
    """Train a LoRA (see ``stableemote train --help``)."""
    import dataclasses

    overrides = {
        k: v
        for k, v in {
            # The help promises $STABLEEMOTE_PRESET as the default, over the recipe's own.
            "preset": args.preset or os.environ.get(PRESET_ENV_VAR, "").strip() or None,
            "model": args.model,
            "dataset": args.dataset,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "resolution_px": args.resolution,
            "rank": args.rank,
            "alpha": args.alpha,
            "learning_rate": args.learning_rate,
            "lr_warmup_steps": args.lr_warmup_steps,
            "caption_dropout": args.caption_dropout,
            "min_snr_gamma": args.min_snr_gamma,
            "noise_offset": args.noise_offset,
            "seed": args.seed,
            "precision": args.precision,
            "device": args.device,
            "output_dir": args.output_dir,
            "checkpoint_every": args.checkpoint_every,
            "keep_checkpoints": args.keep_checkpoints,
            "validate_every": args.validate_every,
            "max_train_examples": args.max_train_examples,
            "report_to": args.report_to,
            "push_to_hub": args.push_to_hub,
            "stop_after_steps": args.stop_after,
        }.items()
        if v is not None
    }
    flags = {
        "gradient_checkpointing": args.gradient_checkpointing,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "use_8bit_adam": args.use_8bit_adam,
    }
    config = recipe(args.recipe, **overrides)
    config = dataclasses.replace(config, **{k: True for k, v in flags.items() if v})
    result = train(config, resume=args.resume, overwrite=args.overwrite)
    if not result.is_main_process:
        return
    if result.interrupted:
        print(f"continue with: {resume_command(args.argv)}", file=sys.stderr)
        raise Terminated if result.stop_signal == "SIGTERM" else KeyboardInterrupt
    if result.adapter_path is not None:
        print(f"adapter: {result.adapter_path}")
    else:
        print(f"stopped at step {result.step}; continue with --resume latest")
    if result.heldout:
        first, last = min(result.heldout), max(result.heldout)
        print(
            f"held-out loss: {result.heldout[first]:.4f} (step {first}) -> {result.heldout[last]:.4f} (step {last})"
        )


def resume_command(argv: list[str]) -> str:
    """The ``stableemote train`` command line that continues the run ``argv`` started."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--resume", "--stop-after"):
            skip = True
        elif not (arg == "--overwrite" or arg.startswith(("--resume=", "--stop-after="))):
            kept.append(arg)
    return shlex.join(["stableemote", *kept, "--resume", "latest"])


def cmd_bench(args: argparse.Namespace) -> None:
    """Time the original recipe against ours and print the table."""

    p = get_preset(args.preset)
    if args.flops:  # counted on the full-size architecture, whatever the preset
        bs, res = args.batch_size or 8, args.resolution or 256
        print(format_flops_table(count_step_flops(bs, res), bs, res))
        return
    rows = run_bench(
        args.preset,
        args.device,
        args.batch_size,
        args.resolution,
        args.steps,
        args.warmup,
        original_precision=args.original_precision,
        precision=precision_setting(args.precision),
    )
    device = str(pick_device(args.device))
    print(
        format_table(
            rows, device, args.batch_size or p.batch_size, args.resolution or p.resolution_px
        )
    )


def cmd_compare(args: argparse.Namespace) -> None:
    """Fair base-vs-LoRA grid."""

    check_sampling_options(args.steps, args.guidance, args.resolution)
    check_device(args.device)
    seeds = None
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError as err:
            raise StableEmoteError(
                f"--seeds must be integers separated by commas, got {args.seeds!r}"
            ) from err
        check_sampling_options(seeds=seeds)
    check_lora_file(args.lora)  # a broken adapter is refused before the model loads
    p = get_preset(args.base or args.preset)
    dev = pick_device(args.device)
    dtype, _ = choose_dtype(dev, precision_setting())
    pipe = make_pipeline(load_components(p, device=dev, dtype=dtype))
    kwargs = {}
    if args.prompts:
        kwargs["prompts"] = [s.strip() for s in args.prompts.split(",") if s.strip()]
    if seeds:
        kwargs["seeds"] = seeds
    made: list = []
    grid, record = fair_comparison(
        pipe,
        args.lora,
        steps=p.sample_steps if args.steps is None else args.steps,
        guidance=p.guidance_scale if args.guidance is None else args.guidance,
        resolution_px=p.resolution_px if args.resolution is None else args.resolution,
        caption_template=p.caption_template,
        images_out=made,
        **kwargs,
    )
    from stableemote_utils.metrics import comparison_clip_scores, format_comparison_scores

    record["clip_score"] = comparison_clip_scores(p, made, record["images"], dev)
    print(format_comparison_scores(record["clip_score"]))
    png, js = save_comparison(grid, record, args.out)
    print(f"wrote {png} and {js}")


def cmd_figures(args: argparse.Namespace) -> None:
    """Regenerate the figures in images/."""

    for path in make_figures(args.out or IMAGES_DIR, args.only or None):
        print(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="stableemote",
        description="StableEmote: look inside Stable Diffusion 1.5 and fine-tune it with LoRA to draw emoji.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = add_command(
        sub, "info", cmd_info, common=True, help="print versions, device, precision and preset"
    )
    p.add_argument("--precision", default=None, help="force fp32, fp16 or bf16")

    p = add_command(
        sub,
        "quickstart",
        cmd_quickstart,
        common=True,
        help="the course's main job in one go (what `make demo` runs)",
        description="Build or load the model, train a short LoRA, and write a base-vs-LoRA "
        "grid and a loss plot.",
    )
    p.add_argument(
        "--output-dir", default="outputs/demo", help="where to write (default: %(default)s)"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="training steps (default: the preset's short run)"
    )
    p.add_argument(
        "--figures-dir",
        default=None,
        help="also copy the grids and loss plot here as results_<preset>_*.png",
    )

    p = add_command(
        sub,
        "train",
        cmd_train,
        common=True,
        help="train a LoRA on emoji (resumable; runs under accelerate launch)",
        description="Train a LoRA on the UNet's attention projections. Images and captions are "
        "encoded once and cached; checkpoints go to OUTPUT_DIR/checkpoints and --resume latest "
        "continues after a disconnect. Defaults reproduce the original SD 1.5 run (4,500 steps, "
        "batch 8, 256 px, rank 4, AdamW 1e-4, cosine). Several GPUs: accelerate launch "
        "--num_processes N $(which stableemote) train ...",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--recipe",
        default="original",
        choices=["original", "tiny-quick"],
        help="named starting config",
    )
    p.add_argument("--model", default=None, help="base model id or folder (default: the preset's)")
    p.add_argument(
        "--dataset",
        default=None,
        help="noto, a Hub dataset id, or an imagefolder (default: the preset's)",
    )
    p.add_argument(
        "--output-dir",
        default=None,
        help="run folder (default: outputs/lora); can be on Google Drive",
    )
    p.add_argument("--steps", type=int, default=None, help="total optimizer steps")
    p.add_argument("--batch-size", type=int, default=None, help="images per step per process")
    p.add_argument("--resolution", type=int, default=None, help="image size in px")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank r")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: equal to rank)")
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--lr-warmup-steps", type=int, default=None)
    p.add_argument(
        "--caption-dropout",
        type=float,
        default=None,
        help="probability of training on the empty prompt",
    )
    p.add_argument(
        "--min-snr-gamma", type=float, default=None, help="Min-SNR loss weighting, e.g. 5"
    )
    p.add_argument(
        "--noise-offset",
        type=float,
        default=None,
        help="e.g. 0.05 for darker darks / brighter brights",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--precision", default=None, help="fp32, fp16 or bf16 (default: chosen from the GPU)"
    )
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--keep-checkpoints", type=int, default=None)
    p.add_argument("--validate-every", type=int, default=None)
    p.add_argument(
        "--max-train-examples", type=int, default=None, help="use only the first N images"
    )
    p.add_argument(
        "--resume",
        default=None,
        help="'latest' or a checkpoint folder (newer checkpoints are moved to set-aside/)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start a fresh run in a folder that holds another run's checkpoints "
        "(they are moved to set-aside/, not deleted)",
    )
    p.add_argument("--report-to", default=None, choices=["wandb", "tensorboard", "none"])
    p.add_argument(
        "--push-to-hub",
        default=None,
        metavar="REPO",
        help="upload adapter + model card (needs HF_TOKEN)",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop at this step as if disconnected (then resume)",
    )
    p.add_argument(
        "--gradient-checkpointing", action="store_true", help="less memory, ~20-30%% slower"
    )
    p.add_argument("--channels-last", action="store_true", help="NHWC layout for the convolutions")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the UNet (slow first steps)"
    )
    p.add_argument("--use-8bit-adam", action="store_true", help="bitsandbytes AdamW8bit (GPU only)")

    p = add_command(
        sub,
        "bench",
        cmd_bench,
        common=True,
        help="time the original recipe against ours",
        description="Seconds per training step and peak memory of (a) the original recipe (VAE and "
        "text encoder every step, bf16) and (b) ours (cached latents and text), same model and batch.",
    )
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--precision",
        default=None,
        help="ours: fp32, fp16 or bf16 (default: $STABLEEMOTE_PRECISION, else chosen from the GPU)",
    )
    p.add_argument(
        "--original-precision",
        default="bf16",
        help="the original recipe's precision (default: %(default)s, as it ran)",
    )
    p.add_argument(
        "--flops",
        action="store_true",
        help="count the FLOPs of one step of each recipe on the full-size architecture (meta "
        "device, no timing) and print the ideal step time on a T4 and an H100",
    )

    p = add_command(
        sub,
        "compare",
        cmd_compare,
        common=True,
        help="fair base-vs-LoRA grid (same prompts, seeds, scheduler, steps)",
    )
    p.add_argument(
        "--base", default=None, help="base model: preset, id or folder (default: --preset)"
    )
    p.add_argument("--lora", required=True, help="adapter file or folder")
    p.add_argument("--prompts", default=None, help="emoji names separated by commas")
    p.add_argument("--seeds", default=None, help="integers separated by commas (default: 0)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: the preset's, 7.5 for sd15, 3 for tiny)",
    )
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--out", default="outputs/compare/comparison.png")

    p = add_command(sub, "figures", cmd_figures, help="regenerate the README's figures in images/")
    p.add_argument("--out", default=None, help="folder (default: the repository's images/)")
    p.add_argument("only", nargs="*", help="file names to make (default: all)")

    add_demo_command(sub)
    add_lora_commands(sub)
    add_pretrain_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stableemote`` console command.

    Returns:
        The exit status: 0 done; 2 a problem with the input (one line on stderr); 1 a
        full or read-only disk (one line naming the path and the space left); 130 Ctrl-C;
        143 SIGTERM.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except StableEmoteError as err:
        print(f"stableemote: error: {err}", file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt as err:
        terminated = isinstance(err, Terminated)
        print(f"stableemote: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except Exception as err:
        # A full or read-only disk under a writer that does not explain it itself.
        cause = os_error_of(err)
        if cause is None or cause.errno not in DISK_ERRNOS:
            raise
        failed = write_failed("the file" if cause.filename else "a file", cause.filename, cause)
        print(f"stableemote: error: {failed}", file=sys.stderr)
        return failed.exit_status
    return 0


if __name__ == "__main__":
    sys.exit(main())
