"""A training run's settings and its result: :class:`TrainConfig`, :func:`recipe`, :class:`TrainResult`.

The settings of :func:`stableemote_utils.training.train` (notebook ``05_lora_training``
and ``stableemote train``), kept apart from the loop so that the modules that only read
a run's settings (the option checks, the model card, the comparison's prompts) need not
import the training machinery.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.presets import CAPTION_TEMPLATE

ORIGINAL_PROMPTS = (
    "smiling face with open mouth",
    "smiling cat",
    "cat face",
    "fairy",
    "crying face",
    "supervillain",
    "robot face",
    "winking face",
)


# The layers a LoRA adapts unless told otherwise: every attention projection of the UNet, as
# in the original recipe (lora_files and lora_peft take it as their default too).
LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
# tiny-quick's LoRA layers: TinyEmote's two full-resolution blocks (8 x 8 latent), less the
# cross-attention keys and values (they read the prompt) and the downsampling convolution
# (its output is at 4 x 4).
TINY_QUICK_TARGETS = (
    "down_blocks.0.*",
    "up_blocks.2.*",
    "!attn2.to_k",
    "!attn2.to_v",
    "!downsamplers.0.conv",
)


@dataclass
class TrainConfig:
    """A training run. The defaults are the original project's recipe on SD 1.5.

    See :func:`recipe` for the named configs the notebook and the command share.
    """

    preset: str = "sd15"
    mode: str = "lora"  # lora | full (every UNet weight)
    model: str | None = None  # None: the preset's model
    dataset: str | None = None  # None: the preset's dataset
    output_dir: str = "outputs/lora"
    steps: int = 4500
    batch_size: int | None = None  # per process and slice; None: the preset's
    gradient_accumulation_steps: int = 1  # slices of batch_size per optimizer step
    resolution_px: int | None = None  # None: the preset's
    rank: int = 4
    alpha: float | None = None  # None: equal to rank
    # The UNet layers (Linear or Conv2d) that get a LoRA: name endings ("attn1.to_q"), globs
    # on the whole name ("up_blocks.2.*"), "!..." to leave some out (lora_files.target_layer_shapes)
    target_modules: tuple[str, ...] = LORA_TARGET_MODULES
    learning_rate: float = 1e-4
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 0
    caption_template: str = CAPTION_TEMPLATE  # {} or {name} marks the name's place
    trigger_word: str | None = None  # put in front of every caption and validation prompt
    caption_dropout: float = 0.0
    min_snr_gamma: float | None = None
    noise_offset: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0
    precision: str | None = None  # None: the precision policy
    device: str | None = None
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    validate_every: int = 500
    validation_prompts: tuple[str, ...] = ORIGINAL_PROMPTS[:4]
    grid_at_step_0: bool = False  # also draw the validation grid before training (the CLI does)
    validation_seed: int = 0
    validation_steps: int | None = None  # None: the preset's sampling steps
    validation_guidance: float | None = None  # None: the preset's guidance scale
    heldout_limit: int = 64
    max_train_examples: int | None = None
    report_to: str = "none"  # wandb | tensorboard | none
    log_every: int = 10
    gradient_checkpointing: bool = False
    channels_last: bool = False
    compile: bool = False
    use_8bit_adam: bool = False
    push_to_hub: str | None = None
    stop_after_steps: int | None = None  # end early as if disconnected (for resume demos)
    progress_bar: bool = True

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass(frozen=True)
class TrainOption:
    """One ``stableemote train`` option: the :class:`TrainConfig` field it sets.

    Attributes:
        field: the :class:`TrainConfig` field (also the key in a ``--config`` file).
        flag: the command line's spelling, e.g. ``"--resolution"``.
        help: what it does, without its default (the command line adds that).
        unset: what the field's ``None`` means, for fields whose default is ``None``.
        choices: the values allowed, where there is a short list.
    """

    field: str
    flag: str
    help: str
    unset: str = ""
    choices: tuple[str, ...] = ()


# Every TrainConfig field the command line sets, in the order `train --help` lists them.
TRAIN_OPTIONS: tuple[TrainOption, ...] = (
    TrainOption(
        "preset",
        "--preset",
        "sd15 (real model, GPU + network), tiny (offline, CPU), tiny-random, sdxl (SDXL base "
        "1.0, GPU + network), tiny-xl (TinyEmote-XL, offline, CPU), tiny-xl-random, a Hub id "
        "or a folder",
    ),
    TrainOption("device", "--device", "cpu, cuda, cuda:1 ...", unset="cuda if present, else cpu"),
    TrainOption("model", "--model", "base model: Hub id or folder", unset="the preset's"),
    TrainOption(
        "dataset",
        "--dataset",
        "noto, openmoji, a Hub dataset id, or a folder of your pictures: with same-named .txt "
        "captions, a metadata.jsonl, or captioned by file name (sub-folders are fine)",
        unset="the preset's",
    ),
    TrainOption("output_dir", "--output-dir", "the run folder; can be on Google Drive"),
    TrainOption("steps", "--steps", "total optimizer steps"),
    TrainOption(
        "batch_size",
        "--batch-size",
        "images per slice per process (a step trains batch size x accumulation steps)",
        unset="the preset's",
    ),
    TrainOption(
        "gradient_accumulation_steps",
        "--gradient-accumulation-steps",
        "slices of --batch-size whose gradients add up to one optimizer step (through "
        "accelerate's accumulate): batch 4 x 2 trains like batch 8 in the memory of 4",
    ),
    TrainOption("resolution_px", "--resolution", "image size in px", unset="the preset's"),
    TrainOption("rank", "--rank", "LoRA rank r"),
    TrainOption(
        "alpha", "--alpha", "LoRA alpha (the update is scaled by alpha / r)", unset="--rank"
    ),
    TrainOption(
        "target_modules",
        "--lora-target-modules",
        "the UNet layers that get a LoRA, separated by commas: name endings such as to_q, "
        "to_k, to_v, to_out.0 (every attention projection), attn1.to_q (self-attention only), "
        "conv1, conv2 (the ResNet convolutions); globs on the whole name (up_blocks.2.*); "
        "!NAME leaves layers out (!attn2.to_k)",
    ),
    TrainOption("learning_rate", "--learning-rate", "AdamW's peak learning rate"),
    TrainOption(
        "lr_warmup_steps", "--lr-warmup-steps", "steps of linear warm-up before the cosine decay"
    ),
    TrainOption(
        "caption_template",
        "--caption-template",
        "how a name (a .txt caption, a file name, an emoji's name) becomes the training "
        "caption; {} marks the name's place",
    ),
    TrainOption(
        "trigger_word",
        "--trigger-word",
        "a word put in front of every caption and validation prompt ('WORD, An emoji of ...')",
        unset="none",
    ),
    TrainOption(
        "caption_dropout", "--caption-dropout", "probability of training on the empty prompt"
    ),
    TrainOption("min_snr_gamma", "--min-snr-gamma", "Min-SNR loss weighting, e.g. 5", unset="off"),
    TrainOption(
        "noise_offset", "--noise-offset", "e.g. 0.05 for darker darks and brighter brights"
    ),
    TrainOption("seed", "--seed", "seed of the LoRA's initial weights, the batches and the noise"),
    TrainOption(
        "precision",
        "--precision",
        "fp32, fp16 or bf16",
        unset="$STABLEEMOTE_PRECISION, else fp16 on GPUs below compute capability 8.0, bf16 "
        "from 8.0, fp32 on CPU",
    ),
    TrainOption("checkpoint_every", "--checkpoint-every", "write a checkpoint every N steps"),
    TrainOption(
        "keep_checkpoints", "--keep-checkpoints", "how many of the newest checkpoints to keep"
    ),
    TrainOption(
        "validate_every",
        "--validate-every",
        "measure the held-out loss and draw the validation grid every N steps",
    ),
    TrainOption(
        "validation_prompts",
        "--validation-prompts",
        "the validation grid's prompts, separated by commas; each goes through the caption "
        "template and trigger word",
    ),
    TrainOption(
        "max_train_examples",
        "--max-train-examples",
        "train on N images: a seeded sample, every emoji category in proportion",
        unset="all",
    ),
    TrainOption(
        "report_to",
        "--report-to",
        "where to log losses and grids",
        choices=("wandb", "tensorboard", "none"),
    ),
    TrainOption(
        "push_to_hub",
        "--push-to-hub",
        "upload the adapter and its model card to this Hub repo (user/name) at the end",
        unset="no upload",
    ),
    TrainOption(
        "stop_after_steps",
        "--stop-after",
        "stop at this step as if disconnected (then continue with --resume latest)",
        unset="run to --steps",
    ),
    TrainOption(
        "gradient_checkpointing", "--gradient-checkpointing", "less memory, ~20-30% slower"
    ),
    TrainOption("channels_last", "--channels-last", "NHWC layout for the convolutions"),
    TrainOption("compile", "--compile", "torch.compile the UNet (slow first steps)"),
    TrainOption("use_8bit_adam", "--use-8bit-adam", "bitsandbytes AdamW8bit (GPU only)"),
)


def field_type(field: str) -> type:
    """The value type of a :class:`TrainConfig` field, without its ``None``:
    ``int``, ``float``, ``str``, ``bool`` or ``tuple`` (a list of texts)."""
    hint = typing.get_type_hints(TrainConfig)[field]
    if typing.get_origin(hint) is tuple:
        return tuple
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def option_name(field: str) -> str:
    """How the command line spells a :class:`TrainConfig` field (the field itself if it has no flag)."""
    return next((o.flag for o in TRAIN_OPTIONS if o.field == field), field)


def recipe(name: str = "original", **overrides) -> TrainConfig:
    """Named training configs shared by notebook 05 and ``stableemote train``.

    ``original``: the original project's run (4,500 steps, batch 8, 256 px, rank 4,
    alpha 4, AdamW 1e-4, cosine) on SD 1.5. ``tiny-quick``: about three minutes on a laptop
    CPU with the tiny preset: 1,500 steps of batch 8, rank 16 (alpha 16), AdamW 3e-3, on
    :data:`TINY_QUICK_TARGETS`, every layer of TinyEmote's UNet that works at the 8 x 8
    latent's full resolution except cross-attention's keys and values. Chosen by a sweep on
    ``stableemote evaluate-tiny``'s style and subject measurements
    (:mod:`stableemote_utils.tinyemote.style`): the fine, full-resolution layers carry a
    drawing style (outlines, flat fills); the coarse blocks and the keys and values that
    read the prompt decide what is drawn, so leaving them frozen keeps the subject. A LoRA on
    every attention projection instead lost 12 to 16 points of prompt following.

    ``tiny-xl-quick``: ``tiny-quick``'s settings for TinyEmote-XL (``tiny-xl``) on the
    attention projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``, as ``sdxl-t4``):
    in SDXL's layout the full-resolution blocks that ``tiny-quick`` adapts hold no
    attention, only ResNet layers. ``evaluate-tiny --preset tiny-xl`` measures the result
    (the shipped model card and the README give the figures).

    ``sdxl-t4``: SDXL base 1.0 on a free Colab T4 (16 GB, fp16 by the precision policy, the
    fp16-fix VAE), each choice for the T4's memory: 1024 px (the preset's; SDXL's own
    size, and the largest that fits when counted on paper, ``stableemote bench --flops
    --preset sdxl``: ~6 GB at batch 1), batch 1 x 3 accumulated (a step of 3 pictures, as
    Hugging Face's T4 notebook), gradient checkpointing (activations recomputed in the
    backward: ~0.7 GB instead of ~9 at 1024 px, for a third more compute), 8-bit AdamW
    where bitsandbytes is installed and a CUDA GPU is present (AdamW otherwise), rank 4
    on the attention projections (5.8 M parameters), AdamW 1e-4 cosine, 500 steps,
    checkpoints every 100 (keeping 2: Colab disconnects), validation at 250 and 500. Both
    text encoders' outputs and the latents are encoded once and cached, so no step runs
    the encoders or the VAE, and each part of the model moves to the GPU as it loads.
    """
    if name == "original":
        base = TrainConfig()
    elif name == "tiny-quick":
        base = TrainConfig(
            preset="tiny",
            steps=1500,
            batch_size=8,
            checkpoint_every=500,
            validate_every=750,
            learning_rate=3e-3,
            lr_warmup_steps=10,
            rank=16,
            target_modules=TINY_QUICK_TARGETS,
        )
    elif name == "tiny-xl-quick":
        # tiny-quick's settings on TinyEmote-XL, whose full-resolution blocks (SDXL's layout)
        # hold no attention: the LoRA goes on the attention projections instead
        base = dataclasses.replace(
            recipe("tiny-quick"), preset="tiny-xl", target_modules=LORA_TARGET_MODULES
        )
    elif name == "sdxl-t4":
        base = TrainConfig(
            preset="sdxl",
            steps=500,
            batch_size=1,
            gradient_accumulation_steps=3,
            gradient_checkpointing=True,
            use_8bit_adam=bitsandbytes_on_cuda(),
            checkpoint_every=100,
            keep_checkpoints=2,
            validate_every=250,
        )
    else:
        raise StableEmoteError(
            f"Unknown recipe {name!r}; use 'original', 'tiny-quick', 'tiny-xl-quick' or 'sdxl-t4'."
        )
    return dataclasses.replace(base, **overrides)


def bitsandbytes_on_cuda() -> bool:
    """Whether 8-bit Adam can run here: bitsandbytes is installed and torch sees a CUDA GPU."""
    import importlib.util

    import torch

    return importlib.util.find_spec("bitsandbytes") is not None and torch.cuda.is_available()


@dataclass(kw_only=True)
class TrainResult:
    """What a run produced.

    Attributes:
        output_dir: the run folder.
        adapter_path: the final ``pytorch_lora_weights.safetensors``, or in full training
            ``unet/diffusion_pytorch_model.safetensors`` (None if stopped early).
        step: optimizer steps done in total.
        losses: training loss per step (whole run, resumed parts included).
        heldout: ``{step: held-out loss}``, with step 0 measured before training.
        seconds_per_step: median wall time of this session's steps.
        stopped_early: True when ``stop_after_steps`` ended the run.
        is_main_process: False on the other processes of a distributed run.
        interrupted: True when Ctrl-C or SIGTERM stopped the run (after writing a checkpoint).
        stop_signal: which one, ``"SIGINT"`` or ``"SIGTERM"`` (``None`` if not interrupted).
    """

    output_dir: Path
    adapter_path: Path | None
    step: int
    losses: list[float]
    heldout: dict[int, float]
    seconds_per_step: float
    stopped_early: bool
    is_main_process: bool = True
    interrupted: bool = False
    stop_signal: str | None = None
