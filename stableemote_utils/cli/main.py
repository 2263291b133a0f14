"""The ``stableemote`` command line.

Each subcommand is a thin wrapper over a helper the notebooks also use. Problems the
user can fix print a one-paragraph message (no traceback) and exit with status 2.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable
from importlib import metadata

from stableemote_utils import __version__
from stableemote_utils.bench import (
    count_step_flops,
    format_flops_table,
    format_sdxl_t4_report,
    format_table,
    run_bench,
)
from stableemote_utils.cli.common import add_command, add_output_dir, output_path, show_defaults
from stableemote_utils.cli.demo import add_demo_command
from stableemote_utils.cli.lora import add_lora_commands
from stableemote_utils.cli.tinyemote import add_pretrain_commands
from stableemote_utils.cli.train import add_train_command
from stableemote_utils.compare import fair_comparison, save_comparison
from stableemote_utils.errors import StableEmoteError, Terminated
from stableemote_utils.figures import make_figures
from stableemote_utils.files import DISK_ERRNOS, os_error_of, write_failed
from stableemote_utils.images import IMAGES_DIR
from stableemote_utils.loading import load_components, make_pipeline
from stableemote_utils.lora_files import check_lora_file
from stableemote_utils.options import check_device, check_sampling_options
from stableemote_utils.precision import check_preset_device, choose_dtype, pick_device
from stableemote_utils.presets import check_cache_dir, get_preset, precision_setting
from stableemote_utils.quickstart import run_quickstart
from stableemote_utils.sampling import SamplingSettings

COMPARISON_FILE = "comparison.png"
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


def cmd_bench(args: argparse.Namespace) -> None:
    """Time the original recipe against ours and print the table."""

    p = get_preset(args.preset)
    if args.flops and p.family == "sdxl":  # full-size SDXL, as the sdxl preset trains it
        bs, res = args.batch_size or 1, args.resolution or get_preset("sdxl").resolution_px
        flops = count_step_flops(bs, res, family="sdxl", gradient_checkpointing=True)
        print(format_flops_table(flops, bs, res, family="sdxl"))
        print(format_sdxl_t4_report())
        return
    if args.flops:  # counted on the full-size architecture, whatever the preset
        bs, res = args.batch_size or 8, args.resolution or 256
        print(format_flops_table(count_step_flops(bs, res), bs, res))
        return
    rows = run_bench(
        args.preset,
        args.device,
        args.batch_size,
        resolution_px=args.resolution,
        steps=args.steps,
        warmup=args.warmup,
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
    check_preset_device(p, args.device)
    dev = pick_device(args.device)
    dtype, _ = choose_dtype(dev, precision_setting())
    pipe = make_pipeline(load_components(p, device=dev, dtype=dtype))
    settings = SamplingSettings.for_preset(
        p,
        prompts=[s.strip() for s in args.prompts.split(",") if s.strip()] if args.prompts else None,
        seeds=seeds,
        steps=args.steps,
        guidance=args.guidance,
        resolution_px=args.resolution,
    )
    made: list = []
    grid, record = fair_comparison(pipe, args.lora, settings, images_out=made)
    from stableemote_utils.metrics import comparison_clip_scores, format_comparison_scores

    record["clip_score"] = comparison_clip_scores(p, made, record["images"], dev)
    print(format_comparison_scores(record["clip_score"]))
    png, js = save_comparison(grid, record, output_path(args, COMPARISON_FILE))
    print(f"wrote {png} and {js}")


def cmd_figures(args: argparse.Namespace) -> None:
    """Regenerate the figures in images/."""

    folder = output_path(args) if args.deprecated_out or args.output_dir else IMAGES_DIR
    for path in make_figures(folder, args.only or None):
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
    p.add_argument(
        "--precision",
        default=None,
        help="force fp32, fp16 or bf16 (default: $STABLEEMOTE_PRECISION, else chosen from the device)",
    )

    p = add_command(
        sub,
        "quickstart",
        cmd_quickstart,
        common=True,
        uses_cache=True,
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

    add_train_command(sub)

    p = add_command(
        sub,
        "bench",
        cmd_bench,
        common=True,
        uses_cache=True,
        help="time the original recipe against ours",
        description="Seconds per training step and peak memory of (a) the original recipe (VAE and "
        "text encoder every step, bf16) and (b) ours (cached latents and text), same model and batch.",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per step (default: the preset's, 8 for sd15, 4 for tiny, 1 for sdxl; 8 "
        "with --flops, 1 for an SDXL preset)",
    )
    p.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="image size in px (default: the preset's, 256 for sd15, 64 for tiny, 1024 for sdxl; "
        "256 with --flops, 1024 for an SDXL preset)",
    )
    p.add_argument(
        "--steps", type=int, default=10, help="timed steps, median reported (default: %(default)s)"
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed steps first, for caches and kernels to settle (default: %(default)s)",
    )
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
        "device, no timing) and print the ideal step time on a T4 and an H100; with an SDXL "
        "preset (sdxl, sdxl-random, tiny-xl), SDXL's with gradient checkpointing, its memory "
        "counted on paper and the T4 floor per optimizer step beside the published 7.96 s "
        "(takes a few minutes on 2 cores)",
    )

    p = add_command(
        sub,
        "compare",
        cmd_compare,
        common=True,
        uses_cache=True,
        help="fair base-vs-LoRA grid (same prompts, seeds, scheduler, steps)",
    )
    p.add_argument(
        "--base", default=None, help="base model: preset, id or folder (default: --preset)"
    )
    p.add_argument("--lora", required=True, help="adapter file or folder (required)")
    p.add_argument(
        "--prompts",
        default=None,
        help="emoji names separated by commas (default: the original project's eight)",
    )
    p.add_argument("--seeds", default=None, help="integers separated by commas (default: 0)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="denoising steps (default: the preset's, 25 for sd15 and tiny, 10 for tiny-random)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: the preset's, 7.5 for sd15, 3 for tiny)",
    )
    p.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="image size in px (default: the preset's, 256 for sd15, 64 for tiny)",
    )
    add_output_dir(
        p,
        "outputs/compare",
        f"folder for {COMPARISON_FILE} and its record comparison.json (default: %(default)s)",
    )

    p = add_command(
        sub,
        "figures",
        cmd_figures,
        uses_cache=True,
        help="regenerate the README's figures in images/",
    )
    add_output_dir(p, None, "folder (default: the repository's images/)")
    p.add_argument("only", nargs="*", help="file names to make (default: all)")

    add_demo_command(sub)
    add_lora_commands(sub)
    add_pretrain_commands(sub)
    show_defaults(parser)
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
        if getattr(args, "uses_cache", False):
            check_cache_dir()  # a cache that cannot be used stops the command before any work
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
