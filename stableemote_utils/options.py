"""Every option's allowed range, checked in one place before any work starts.

The command line and the Python API call the same checks (:func:`check_train_options`,
:func:`check_sampling_options`, :func:`check_device`), so a bad value gives the same
one-line message whichever way it came in. Each message names the option as the command
line spells it (``--learning-rate``), which is also how the docs refer to it.
"""

from __future__ import annotations

import math

import torch

from stableemote_utils.captions import check_caption_template
from stableemote_utils.errors import StableEmoteError

# Seeds go into torch.Generator.manual_seed after being combined with the step number
# (see training.step_generator); 32 bits keep every combination inside its 64-bit range.
SEED_MAX = 2**32 - 1
# Images are encoded by a VAE that downsamples 8x; the latent must be a whole number of pixels.
RESOLUTION_MULTIPLE_PX = 8
PRECISIONS = ("fp32", "fp16", "bf16")
REPORT_TO = ("none", "wandb", "tensorboard")
MODES = ("lora", "full")


def _fail(option: str, value: object, wanted: str) -> StableEmoteError:
    return StableEmoteError(f"{option} must be {wanted}, not {value!r}.")


def check_int(option: str, value: object, minimum: int, maximum: int | None = None) -> None:
    """``value`` is an int in ``[minimum, maximum]`` (``bool`` is refused)."""
    wanted = (
        f"a whole number >= {minimum}"
        if maximum is None
        else f"a whole number from {minimum} to {maximum}"
    )
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(option, value, wanted)
    if value < minimum or (maximum is not None and value > maximum):
        raise _fail(option, value, wanted)


def check_float(
    option: str,
    value: object,
    minimum: float,
    maximum: float | None = None,
    *,
    min_inclusive: bool = True,
) -> None:
    """``value`` is a finite number above ``minimum`` (and at most ``maximum``)."""
    low = f">= {minimum:g}" if min_inclusive else f"> {minimum:g}"
    wanted = f"a number {low}" + ("" if maximum is None else f" and <= {maximum:g}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(option, value, wanted)
    value = float(value)
    if not math.isfinite(value):
        raise _fail(option, value, wanted)
    too_low = value < minimum if min_inclusive else value <= minimum
    if too_low or (maximum is not None and value > maximum):
        raise _fail(option, value, wanted)


def check_resolution(option: str, value: object) -> None:
    """A positive image size in pixels that the VAE can encode (a multiple of 8)."""
    wanted = f"a positive multiple of {RESOLUTION_MULTIPLE_PX} (pixels), e.g. 64 or 256"
    if not isinstance(value, int) or isinstance(value, bool) or value < RESOLUTION_MULTIPLE_PX:
        raise _fail(option, value, wanted)
    if value % RESOLUTION_MULTIPLE_PX:
        raise _fail(option, value, wanted)


def check_seed(option: str, value: object) -> None:
    """A seed from 0 to :data:`SEED_MAX`."""
    check_int(option, value, 0, SEED_MAX)


def check_device(device: str | torch.device | None) -> torch.device | None:
    """The device named, if this machine has it; ``None`` stays ``None`` (pick one later).

    Raises:
        StableEmoteError: for a name torch does not know (``tpu9``) or a device this
            machine lacks (``cuda`` without a GPU, ``cuda:3`` with one GPU, ``mps`` off Macs).
    """
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise StableEmoteError(
            f"--device must be cpu, cuda, cuda:N or mps, not {str(device)!r}."
        ) from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise StableEmoteError(
                f"--device {device} asks for a CUDA GPU, but torch sees none here (torch "
                f"{torch.__version__}); use --device cpu, or a machine or Colab runtime with a GPU."
            )
        if dev.index is not None and dev.index >= count:
            raise StableEmoteError(
                f"--device {device}: this machine has {count} CUDA GPU(s), numbered 0 to {count - 1}."
            )
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise StableEmoteError(f"--device {device}: Apple's MPS is not available here.")
        return dev
    raise StableEmoteError(f"--device must be cpu, cuda, cuda:N or mps, not {str(device)!r}.")


def check_precision(value: str | torch.dtype | None) -> None:
    """``None`` (the precision policy), a dtype, or one of :data:`PRECISIONS`."""
    if value is None or isinstance(value, torch.dtype):
        return
    names = (*PRECISIONS, "float32", "float16", "bfloat16")
    if not isinstance(value, str) or value.lower() not in names:
        raise _fail("--precision", value, "fp32, fp16 or bf16")


def check_train_options(config) -> None:
    """Check every option of a :class:`~stableemote_utils.training.TrainConfig` as given.

    Runs before anything is loaded or written. ``None`` means "the preset's value" where
    the field allows it; everything else must be in range (nothing is silently replaced).

    Raises:
        StableEmoteError: one line naming the first option out of range.
    """
    c = config
    if c.mode not in MODES:
        raise _fail("mode", c.mode, "'lora' or 'full'")
    check_int("--steps", c.steps, 1)
    if c.batch_size is not None:
        check_int("--batch-size", c.batch_size, 1)
    check_int("--gradient-accumulation-steps", c.gradient_accumulation_steps, 1)
    if c.resolution_px is not None:
        check_resolution("--resolution", c.resolution_px)
    check_int("--rank", c.rank, 1)
    if c.alpha is not None:
        check_float("--alpha", c.alpha, 0.0, min_inclusive=False)
    targets = c.target_modules
    if (
        isinstance(targets, str)
        or not targets
        or not all(isinstance(t, str) and t.strip() for t in targets)
    ):
        raise _fail("--lora-target-modules", targets, "layer name endings such as to_q,conv1")
    check_float("--learning-rate", c.learning_rate, 0.0, 1.0, min_inclusive=False)
    check_int("--lr-warmup-steps", c.lr_warmup_steps, 0)
    check_caption_template(c.caption_template)
    if c.trigger_word is not None and (
        not isinstance(c.trigger_word, str) or not c.trigger_word.strip()
    ):
        raise _fail("--trigger-word", c.trigger_word, "a word or short phrase (or left out)")
    check_float("--caption-dropout", c.caption_dropout, 0.0, 1.0)
    if c.min_snr_gamma is not None:
        check_float("--min-snr-gamma", c.min_snr_gamma, 0.0, min_inclusive=False)
    check_float("--noise-offset", c.noise_offset, 0.0)
    if c.max_grad_norm is not None:
        check_float("max_grad_norm", c.max_grad_norm, 0.0, min_inclusive=False)
    check_seed("--seed", c.seed)
    check_precision(c.precision)
    check_device(c.device)
    check_int("--checkpoint-every", c.checkpoint_every, 1)
    if c.keep_checkpoints is not None:
        check_int("--keep-checkpoints", c.keep_checkpoints, 1)
    check_int("--validate-every", c.validate_every, 1)
    if not c.validation_prompts:
        raise _fail("validation_prompts", c.validation_prompts, "at least one prompt")
    check_seed("validation_seed", c.validation_seed)
    if c.validation_steps is not None:
        check_int("validation_steps", c.validation_steps, 1)
    if c.validation_guidance is not None:
        check_float("validation_guidance", c.validation_guidance, 0.0)
    check_int("heldout_limit", c.heldout_limit, 1)
    if c.max_train_examples is not None:
        check_int("--max-train-examples", c.max_train_examples, 1)
    if c.report_to not in REPORT_TO:
        raise _fail("--report-to", c.report_to, "wandb, tensorboard or none")
    check_int("log_every", c.log_every, 1)
    if c.stop_after_steps is not None:
        check_int("--stop-after", c.stop_after_steps, 1)
    if c.mode == "full" and c.push_to_hub:
        raise StableEmoteError("--push-to-hub uploads LoRA adapters; it is not for full training.")


def check_sampling_options(
    steps: int | None = None,
    guidance: float | None = None,
    resolution_px: int | None = None,
    seeds: list[int] | tuple[int, ...] | None = None,
    lora_scale: float | None = None,
) -> None:
    """Check the sampling options ``compare`` (and the notebooks' comparisons) take.

    ``None`` skips a check (the caller fills in the preset's value, which is in range).
    """
    if steps is not None:
        check_int("--steps", steps, 1)
    if guidance is not None:
        check_float("--guidance", guidance, 0.0)
    if resolution_px is not None:
        check_resolution("--resolution", resolution_px)
    for seed in seeds or ():
        check_seed("--seeds", seed)
    if lora_scale is not None:
        check_float("lora_scale", lora_scale, -10.0, 10.0)
