"""A training run's settings and its result: :class:`TrainConfig`, :func:`recipe`, :class:`TrainResult`.

The settings of :func:`stableemote_utils.training.train` (notebook ``05_lora_training``
and ``stableemote train``), kept apart from the loop so that the modules that only read
a run's settings (the option checks, the model card, the comparison's prompts) need not
import the training machinery.
"""

from __future__ import annotations

import dataclasses
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
    batch_size: int | None = None  # per process; None: the preset's
    resolution_px: int | None = None  # None: the preset's
    rank: int = 4
    alpha: float | None = None  # None: equal to rank
    learning_rate: float = 1e-4
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 0
    caption_template: str = CAPTION_TEMPLATE
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
        d["validation_prompts"] = list(self.validation_prompts)
        return d


def recipe(name: str = "original", **overrides) -> TrainConfig:
    """Named training configs shared by notebook 05 and ``stableemote train``.

    ``original``: the original project's run (4,500 steps, batch 8, 256 px, rank 4,
    alpha 4, AdamW 1e-4, cosine) on SD 1.5. ``tiny-quick``: a few minutes on a laptop
    CPU with the tiny preset.
    """
    if name == "original":
        base = TrainConfig()
    elif name == "tiny-quick":
        base = TrainConfig(
            preset="tiny",
            steps=200,
            checkpoint_every=100,
            validate_every=100,
            learning_rate=1e-3,
            lr_warmup_steps=10,
            rank=4,
        )
    else:
        raise StableEmoteError(f"Unknown recipe {name!r}; use 'original' or 'tiny-quick'.")
    return dataclasses.replace(base, **overrides)


@dataclass
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
