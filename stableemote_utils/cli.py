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

from stableemote_utils.errors import StableEmoteError

LIBRARIES = ("torch", "diffusers", "transformers", "peft", "accelerate", "datasets", "safetensors")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cmd_info(args: argparse.Namespace) -> None:
    """Print versions, device, precision and preset."""
    import torch

    from stableemote_utils import __version__
    from stableemote_utils.precision import choose_dtype, pick_device
    from stableemote_utils.presets import get_preset

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
    from stableemote_utils.quickstart import run_quickstart

    run_quickstart(preset=args.preset, output_dir=args.output_dir, device=args.device)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        default=None,
        help="sd15 (real model, GPU + network), tiny (offline, CPU), a Hub id or a folder. "
        "Default: $STABLEEMOTE_PRESET, else sd15.",
    )
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="stableemote",
        description="StableEmote: look inside Stable Diffusion 1.5 and fine-tune it with LoRA to draw emoji.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("info", help="print versions, device, precision and preset")
    _add_common(p)
    p.add_argument("--precision", default=None, help="force fp32, fp16 or bf16")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "quickstart",
        help="the course's main job in one go (what `make demo` runs)",
        description="Build or load the model, train a short LoRA, and write a base-vs-LoRA "
        "grid and a loss plot.",
    )
    _add_common(p)
    p.add_argument(
        "--output-dir", default="outputs/demo", help="where to write (default: %(default)s)"
    )
    p.set_defaults(func=cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stableemote`` console command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except StableEmoteError as err:
        print(f"stableemote: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stableemote: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
