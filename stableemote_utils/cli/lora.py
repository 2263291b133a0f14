"""``stableemote lora inspect`` and ``stableemote lora export``: adapter files from the shell."""

from __future__ import annotations

import argparse

from stableemote_utils.cli.common import add_command
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.lora_files import read_lora_file
from stableemote_utils.lora_inspect import export_kohya, inspect_lora

EXPORT_FORMATS = ("kohya",)
EXPORT_DTYPES = ("keep", "fp16", "fp32")


def format_lora_report(info: dict) -> str:
    """The text ``stableemote lora inspect`` prints for :func:`~stableemote_utils.lora_files.inspect_lora`."""
    fits = info["fits"]
    layouts = {
        "sd15": "SD 1.x UNet (SD 1.5 layout)",
        "tiny": "the random tiny model (tiny-random)",
        "tinyemote": "TinyEmote (the tiny preset)",
        "sdxl": "SDXL UNet (SDXL base 1.0 layout)",
        "tiny-xl": "random tiny SDXL (tiny-xl-random)",
        "tinyemote-xl": "TinyEmote-XL (tiny-xl)",
    }
    fit_lines = [
        f"  {layouts.get(name, name):<29} {'yes' if why is None else 'no - ' + why}"
        for name, why in fits.items()
    ]
    header = {k: v for k, v in info["metadata"].items() if k != "lora_adapter_metadata"}
    lines = [
        f"file           {info['file']} ({info['file_bytes'] / 1e6:.2f} MB)",
        f"key style      {info['style']}, {info['keys']} tensors "
        + ", ".join(f"({n} {c})" for c, n in info["components"].items()),
        f"model family   {info['family'] or 'none that StableEmote knows'}",
        f"rank           {', '.join(map(str, info['ranks'])) or '-'}",
        f"alpha          {', '.join(map(str, info['alphas'])) or '-'}",
        f"target modules {', '.join(info['target_modules']) or '-'}",
        f"parameters     {info['parameters']:,}",
        f"dtype          {', '.join(info['dtypes'])}",
        "fits",
        *fit_lines,
    ]
    if header:
        lines.append("metadata       " + ", ".join(f"{k}={v}" for k, v in sorted(header.items())))
    for problem in info.get("problems", ()):
        lines.append(f"UNUSABLE       {problem}; compare and the demo refuse this adapter")
    return "\n".join(lines)


def cmd_lora_inspect(args: argparse.Namespace) -> None:
    """Print what an adapter file holds and which base model it fits."""

    print(format_lora_report(inspect_lora(args.file)))


def cmd_lora_export(args: argparse.Namespace) -> None:
    """Convert an adapter to another tool's format (kohya: AUTOMATIC1111 web UI, ComfyUI)."""
    import torch

    if args.format not in EXPORT_FORMATS:
        raise StableEmoteError(
            f"Unknown export format '{args.format}'; choose one of {', '.join(EXPORT_FORMATS)}."
        )
    dtype = {"keep": None, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    out = export_kohya(args.input, args.output, dtype=dtype)
    family = read_lora_file(out)[1].get("ss_base_model_version", "")
    names = "lora_unet_input_blocks_... (SDXL's SGM names)" if "sdxl" in family else "lora_unet_..."
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, kohya keys {names})")
    print("Copy it into the web UI's models/Lora folder or ComfyUI's models/loras folder.")


def add_lora_commands(subparsers) -> None:
    """Add ``lora inspect`` and ``lora export`` to the ``stableemote`` command line.

    Args:
        subparsers: the object ``ArgumentParser.add_subparsers()`` returned.
    """
    lora = subparsers.add_parser(
        "lora",
        help="inspect or export a LoRA adapter file",
        description="Work with LoRA adapter files (.safetensors).",
    )
    sub = lora.add_subparsers(dest="lora_command", metavar="ACTION")
    sub.required = True

    p = add_command(
        sub,
        "inspect",
        cmd_lora_inspect,
        help="print rank, alpha, target modules, parameter count, dtype and which base it fits",
    )
    p.add_argument("file", help="an adapter .safetensors file, or a folder holding one")

    p = add_command(
        sub,
        "export",
        cmd_lora_export,
        help="convert an adapter for the AUTOMATIC1111 web UI / ComfyUI",
        description="Write the adapter with kohya-style keys (lora_unet_..., .lora_down.weight, "
        ".lora_up.weight, .alpha), the format the AUTOMATIC1111 web UI and ComfyUI load.",
    )
    p.add_argument("input", help="the adapter file or folder (pytorch_lora_weights.safetensors)")
    p.add_argument("output", help="the .safetensors file to write")
    p.add_argument(
        "--format", default="kohya", choices=EXPORT_FORMATS, help="(default: %(default)s)"
    )
    p.add_argument(
        "--dtype",
        default="keep",
        choices=EXPORT_DTYPES,
        help="convert the weights; fp16 halves the file (default: %(default)s)",
    )
