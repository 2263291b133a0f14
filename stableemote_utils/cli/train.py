"""``stableemote train``: its options, built from one table, and the command.

Each option is a :class:`~stableemote_utils.training_config.TrainOption` (the field it
sets, its flag and help); its default in ``--help`` is read from the recipes and presets
themselves, so the help cannot drift from what a run does. An option not given on the
command line is absent from the parsed arguments (``argparse.SUPPRESS``): the recipe's
(or the preset's) value applies.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys

from stableemote_utils.cli.common import add_command
from stableemote_utils.config_file import read_config_file
from stableemote_utils.errors import StableEmoteError, Terminated
from stableemote_utils.presets import PRESET_ENV_VAR, SD15_MODEL_ID, SDXL_MODEL_ID, get_preset
from stableemote_utils.training import recipe, train
from stableemote_utils.training_config import TRAIN_OPTIONS, TrainConfig, TrainOption, field_type

RECIPES = ("original", "tiny-quick", "tiny-xl-quick", "sdxl-t4")
# The presets whose values `--help` shows for the settings a preset fills in.
SHOWN_PRESETS = ("sd15", "tiny", "tiny-random", "sdxl")
_MODEL_SHOWN = {
    "sd15": SD15_MODEL_ID,
    "tiny": "TinyEmote",
    "tiny-random": "random tiny weights",
    "sdxl": SDXL_MODEL_ID,
}


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple | list):
        return ", ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _preset_values(field: str) -> str:
    """``"8 for sd15, 4 for tiny and tiny-random"``: a preset-filled field's value per preset."""
    by_value: dict[str, list[str]] = {}
    for name in SHOWN_PRESETS:
        value = _MODEL_SHOWN[name] if field == "model" else getattr(get_preset(name), field)
        by_value.setdefault(_show(value), []).append(name)
    return ", ".join(f"{v} for {' and '.join(names)}" for v, names in by_value.items())


def default_text(option: TrainOption) -> str:
    """What ``option`` is when not given: the ``original`` recipe's value, then where the
    ``tiny-quick`` or ``sdxl-t4`` recipe or a preset differs."""
    original = recipe("original")
    value = getattr(original, option.field)
    if option.field == "preset":
        text = f"${PRESET_ENV_VAR}, else the recipe's: {value}"
    elif value is None and hasattr(get_preset("sd15"), option.field):
        text = f"{option.unset}: {_preset_values(option.field)}"
    elif value is None:
        text = option.unset
    else:
        text = _show(value)
    for name in RECIPES[1:]:
        other = getattr(recipe(name), option.field)
        if other != value and not (option.field == "use_8bit_adam" and name == "sdxl-t4"):
            text += f"; --recipe {name}: {_show(other)}"
    if option.field == "use_8bit_adam":  # sdxl-t4's depends on the machine
        text += "; --recipe sdxl-t4: on where bitsandbytes and a CUDA GPU are present"
    return text


def _add_option(p: argparse.ArgumentParser, option: TrainOption) -> None:
    kind = field_type(option.field)
    help_text = f"{option.help} (default: {default_text(option)})".replace("%", "%%")
    kwargs: dict = {"default": argparse.SUPPRESS, "dest": option.field, "help": help_text}
    metavar = option.flag.removeprefix("--").upper().replace("-", "_")
    if kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif kind is tuple:
        kwargs["type"] = _comma_list
        kwargs["metavar"] = "A,B,..."
    else:
        kwargs["type"] = kind
        kwargs["metavar"] = None if option.choices else metavar
    if option.choices:
        kwargs["choices"] = option.choices
    p.add_argument(option.flag, **kwargs)


def _comma_list(text: str) -> tuple[str, ...]:
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    if not items:
        raise argparse.ArgumentTypeError("give at least one text, separated by commas")
    return items


def add_train_command(sub: argparse._SubParsersAction) -> None:
    """Add ``stableemote train`` to the command line's subparsers."""
    p = add_command(
        sub,
        "train",
        cmd_train,
        uses_cache=True,
        help="train a LoRA on emoji (resumable; runs under accelerate launch)",
        description="Train a LoRA on the UNet's attention projections. Images and captions are "
        "encoded once and cached; checkpoints go to OUTPUT_DIR/checkpoints and --resume latest "
        "continues after a disconnect. Defaults reproduce the original SD 1.5 run (4,500 steps, "
        "batch 8, 256 px, rank 4, AdamW 1e-4, cosine). Several GPUs: accelerate launch "
        "--num_processes N $(which stableemote) train ...",
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE.toml",
        help="read the settings from a TOML file (keys as the options below, e.g. steps = 200, "
        "or a run folder's config.toml); options given as well override it (default: none)",
    )
    p.add_argument(
        "--recipe",
        default=argparse.SUPPRESS,
        choices=RECIPES,
        help="the named config the other defaults come from: original (the SD 1.5 run), "
        "tiny-quick (minutes on a CPU, tiny preset), tiny-xl-quick (the same for tiny-xl, on the "
        "attention projections: SDXL's full-resolution blocks hold no attention), sdxl-t4 (SDXL on a 16 GB T4: 1024 px, "
        "the largest size whose step fits when counted on paper, ~6 GB, see bench --flops "
        "--preset sdxl; batch 1 x 3 accumulated; gradient checkpointing, which keeps "
        "~0.7 GB of activations instead of ~9; 8-bit Adam where bitsandbytes and CUDA are "
        "present; fp16 with the fp16-fix VAE; both text encoders' outputs and the latents "
        "cached once; 500 steps, checkpoints every 100) (default: original, or the "
        "--config file's recipe)",
    )
    for option in TRAIN_OPTIONS:
        _add_option(p, option)
    p.add_argument(
        "--resume",
        default=None,
        help="'latest' or a checkpoint folder; newer checkpoints are moved to set-aside/ "
        "(default: a fresh run)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start a fresh run in a folder that holds another run's checkpoints "
        "(they are moved to set-aside/, not deleted)",
    )


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The run's settings: the recipe, ``$STABLEEMOTE_PRESET``, the ``--config`` file, then
    the options given on the command line, each over the one before."""
    file_recipe, settings = (None, {}) if args.config is None else read_config_file(args.config)
    name = getattr(args, "recipe", None) or file_recipe or "original"
    if name not in RECIPES:
        raise StableEmoteError(f"{args.config}: 'recipe' must be one of {', '.join(RECIPES)}.")
    if os.environ.get(PRESET_ENV_VAR, "").strip():
        # The help promises $STABLEEMOTE_PRESET as the default, over the recipe's own.
        settings = {"preset": os.environ[PRESET_ENV_VAR].strip(), **settings}
    given = {o.field: getattr(args, o.field) for o in TRAIN_OPTIONS if hasattr(args, o.field)}
    # A command-line run draws the base model's grid (step 0) beside the later ones.
    settings = {"grid_at_step_0": True, **settings}
    return dataclasses.replace(recipe(name), **{**settings, **given})


def cmd_train(args: argparse.Namespace) -> None:
    """Train a LoRA (see ``stableemote train --help``)."""
    result = train(train_config(args), resume=args.resume, overwrite=args.overwrite)
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
            f"held-out loss: {result.heldout[first]:.4f} (step {first}) -> "
            f"{result.heldout[last]:.4f} (step {last})"
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
