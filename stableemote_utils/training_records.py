"""A training run's record-keeping: held-out loss, validation grids, checkpoints, results.

Infrastructure of :func:`stableemote_utils.training.train` (notebook ``05_lora_training``).
The loop calls these at its log, checkpoint and validation steps; :func:`heldout_loss`
is also how :mod:`stableemote_utils.metrics` scores a finished adapter.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stableemote_utils.checkpoints import latest_checkpoint, save_checkpoint
from stableemote_utils.denoising import add_noise
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.files import explain_write_errors, give_open_modes
from stableemote_utils.hub import WIDGET_PICTURE, push_adapter, write_model_card
from stableemote_utils.images import image_grid, save_image
from stableemote_utils.loading import make_pipeline
from stableemote_utils.lora_files import lora_state_dict, save_lora
from stableemote_utils.model_family import family_of
from stableemote_utils.plots import save_loss_plot
from stableemote_utils.sampling import SamplingSettings, generate
from stableemote_utils.training_setup import TrainingRun, mixed_precision_for

HELDOUT_TIMESTEPS = (50, 200, 400, 600, 800, 950)
HELDOUT_NOISE_SEED = 1234
RESULTS_WRITE_ADVICE = (
    "The final checkpoint is intact: free some space, then run the same command with "
    "--resume latest to write them (in Python: train(config, resume='latest'))."
)


@torch.no_grad()
def heldout_loss(
    unet: torch.nn.Module,
    latent_mean: torch.Tensor,
    text: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: tuple[int, ...] = HELDOUT_TIMESTEPS,
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
    added_cond: dict[str, torch.Tensor] | None = None,
) -> float:
    """Mean noise-prediction MSE on held-out emoji at fixed timesteps and fixed noise.

    Every example is noised at every timestep in ``timesteps`` with noise from a fixed
    seed, and the latent mean is used (no sampling), so the number is comparable across
    steps and runs; training loss is too noisy to read. ``added_cond`` holds SDXL's
    per-example ``text_embeds`` ``(N, 1280)`` and ``time_ids`` ``(N, 6)`` (``None`` for SD 1.5).
    """
    dev = next(unet.parameters()).device
    g = torch.Generator().manual_seed(HELDOUT_NOISE_SEED)
    noise_all = torch.randn((len(timesteps), *latent_mean.shape), generator=g)
    total, count = 0.0, 0
    was_training = unet.training
    unet.eval()
    for ti, t in enumerate(timesteps):
        for i in range(0, latent_mean.shape[0], batch_size):
            x0 = latent_mean[i : i + batch_size].to(dev)
            eps = noise_all[ti, i : i + batch_size].to(dev)
            noisy = add_noise(x0, eps, alphas_cumprod, t)
            tt = torch.full((x0.shape[0],), t, device=dev, dtype=torch.long)
            extra = {}
            if added_cond is not None:
                extra["added_cond_kwargs"] = {
                    k: v[i : i + batch_size].to(dev) for k, v in added_cond.items()
                }
            with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                pred = unet(
                    noisy, tt, encoder_hidden_states=text[i : i + batch_size].to(dev), **extra
                ).sample
            total += F.mse_loss(pred.float(), eps, reduction="sum").item() / eps[0].numel()
            count += x0.shape[0]
    unet.train(was_training)
    return total / max(count, 1)


def cached_heldout_loss(
    unet: torch.nn.Module,
    cache: dict[str, torch.Tensor],
    alphas_cumprod: torch.Tensor,
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """:func:`heldout_loss` on an encode-once cache (see
    :func:`~stableemote_utils.latent_cache.build_or_load_cache`), with what the UNet's
    family reads from it (SDXL: pooled text and time ids as well)."""
    family = family_of(unet)
    inputs = family.unet_inputs({k: cache[k] for k in (*family.prompt_keys, *family.image_keys)})
    return heldout_loss(
        unet,
        cache["latent_mean"],
        inputs["encoder_hidden_states"],
        alphas_cumprod,
        autocast_dtype=autocast_dtype,
        added_cond=inputs.get("added_cond_kwargs"),
    )


def measure_heldout(run: TrainingRun, at_step: int) -> None:
    """Record the held-out loss at ``at_step`` (main process; none without held-out images)."""
    if not run.main or run.held_cache is None:
        return
    run.heldout[at_step] = cached_heldout_loss(
        run.raw_unet,
        run.held_cache,
        run.components.scheduler.alphas_cumprod,
        autocast_dtype=run.dtype if run.dtype != torch.float32 else None,
    )
    run.accelerator.log({"heldout_loss": run.heldout[at_step]}, step=at_step)


def save_validation_grid(run: TrainingRun, at_step: int) -> None:
    """Sample the validation prompts and save ``samples/step-NNNNNN.png`` (main process)."""
    if not run.main:
        return
    components = run.components
    components.vae.to(run.accelerator.device)
    try:
        # Under the training autocast: the UNet, the VAE and the latents between them
        # agree on a dtype whatever the precision (fp32 weights in full training
        # included), as in the training step.
        with run.accelerator.autocast():
            grid, pictures = _sample_grid(
                components,
                run.raw_unet,
                validation_settings(run.config),
                prompts_embeds=_prompt_rows(run, slice(1, None)),
                negative_embeds=_prompt_rows(run, slice(0, 1)),
                family=run.family,
            )
    finally:
        components.vae.to("cpu")
    save_image(grid, run.out / "samples" / f"step-{at_step:06d}.png")
    if at_step == run.config.steps:  # the model card's gallery: one picture per prompt
        for i, picture in enumerate(pictures):
            save_image(picture, run.out / WIDGET_PICTURE.format(i=i))
    _log_image(run.accelerator, "samples", grid, at_step)


def validation_settings(config) -> SamplingSettings:
    """The validation grid's settings: prompt ``i`` at seed ``validation_seed + i``, the
    config's ``validation_steps``, ``validation_guidance`` (the preset's scale unless set)
    and training size."""
    prompts = tuple(config.validation_prompts)
    return SamplingSettings(
        prompts=prompts,
        seeds=tuple(config.validation_seed + i for i in range(len(prompts))),
        steps=config.validation_steps,
        guidance=config.validation_guidance,
        resolution_px=config.resolution_px,
    )


def _prompt_rows(run: TrainingRun, rows: slice) -> dict[str, torch.Tensor]:
    """The cached tensors of the extra prompts ``rows`` (0: the empty prompt, then the
    validation prompts), one entry per prompt key of the run's family."""
    return {k: run.train_cache["extra_" + k][rows] for k in run.family.prompt_keys}


def _sample_grid(
    components,
    unet,
    settings: SamplingSettings,
    *,
    prompts_embeds: dict[str, torch.Tensor],
    negative_embeds: dict[str, torch.Tensor],
    family,
):
    """Validation images: prompt ``i`` (encoded: row ``i`` of each of ``prompts_embeds``,
    e.g. ``text`` ``(P, 77, D)``) at ``settings.seeds[i]``, safety checker off.
    ``negative_embeds`` is the encoded empty prompt (one row); ``family`` says how the
    pipeline takes them.

    Returns:
        ``(grid, pictures)``: the labelled grid and the pictures, one per prompt.
    """
    pipe = make_pipeline(components)
    pipe.unet = unet

    def placed(embeds: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
        return {k: v[rows].to(components.device, unet.dtype) for k, v in embeds.items()}

    images = []
    count = prompts_embeds["text"].shape[0]
    for i, seed in enumerate(settings.seeds[:count]):
        embeds = family.sampling_embeds(
            placed(prompts_embeds, slice(i, i + 1)), placed(negative_embeds, slice(0, 1))
        )
        images.append(generate(pipe, None, seed, settings, **embeds))
    return image_grid(images, list(settings.prompts), cols=len(images)), images


def _log_image(accelerator, name: str, image, step: int) -> None:
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            import wandb

            tracker.log({name: wandb.Image(image)}, step=step)
        elif tracker.name == "tensorboard":
            tracker.writer.add_image(name, np.asarray(image), step, dataformats="HWC")


def report_failure(what: str, at_step: int, err: Exception) -> None:
    print(
        f"stableemote: warning: {what} at step {at_step} failed ({type(err).__name__}: "
        f"{str(err)[:200]}); training goes on.",
        file=sys.stderr,
    )


def write_checkpoint(run: TrainingRun, at_step: int) -> None:
    """Write ``checkpoints/checkpoint-NNNNNN`` (main process) and prune the run's old ones."""
    if run.main:
        scaler = run.accelerator.scaler
        state = {
            "run_id": run.run_id,
            "precision": mixed_precision_for(run.dtype),
            "config": run.config.to_dict(),
            "lr_scheduler": run.lr_schedule.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "losses": run.losses,
            "heldout": run.heldout,
            "world_size": run.accelerator.num_processes,
        }
        if run.full:
            weights = {k: v.detach().cpu() for k, v in run.raw_unet.state_dict().items()}
        else:
            weights = lora_state_dict(run.raw_unet)
        save_checkpoint(
            run.ckpt_dir,
            at_step,
            weights,
            optimizer_state=run.optimizer.state_dict(),
            state=state,
            keep_last=run.config.keep_checkpoints,
            weights_file="unet.safetensors" if run.full else "pytorch_lora_weights.safetensors",
        )
    run.accelerator.wait_for_everyone()


def write_results(run: TrainingRun, step_times: list[float]) -> Path:
    """The finished run's adapter (or UNet), loss plot, summary, model card; push if asked.

    Returns:
        The adapter file (in full training, the UNet's weights file).

    Raises:
        WriteFailedError: the disk is full (or read-only ...); the final checkpoint is
            intact and ``--resume latest`` writes these again.
    """
    what = "the run's results (adapter, loss plot, summary, model card) in"
    with explain_write_errors(what, run.out, RESULTS_WRITE_ADVICE):
        adapter_path = _write_result_files(run, step_times)
    if run.config.push_to_hub and not run.full:
        push_adapter(run.out, run.config.push_to_hub)
    return adapter_path


def _write_result_files(run: TrainingRun, step_times: list[float]) -> Path:
    """The files :func:`write_results` writes; returns the adapter (or UNet weights) file."""
    config, out = run.config, run.out
    meta = {
        "base_model": str(config.model),
        "rank": str(config.rank),
        "alpha": str(config.alpha),
        "steps": str(run.step),
        "resolution_px": str(config.resolution_px),
        "dataset": str(config.dataset),
        "model_family": run.family.name,
    }
    if run.full:
        run.raw_unet.save_pretrained(out / "unet", safe_serialization=True)
        give_open_modes(out / "unet")  # safetensors leaves 0600
        adapter_path = out / "unet" / "diffusion_pytorch_model.safetensors"
    else:
        adapter_path = save_lora(run.raw_unet, out, meta)
    save_loss_plot(run.losses, out / "loss.png")
    summary = {
        "config": config.to_dict(),
        "steps": run.step,
        "heldout_loss": run.heldout,
        "seconds_per_step": median(step_times),
        "precision": run.precision_reason,
        "num_processes": run.accelerator.num_processes,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if not run.full:
        write_model_card(out, config, run.heldout, run.preset)
    return adapter_path


def median(values: list[float]) -> float:
    return float(sorted(values)[len(values) // 2]) if values else math.nan


def non_finite_loss_error(step: int, value: float, ckpt_dir: Path) -> StableEmoteError:
    last = latest_checkpoint(ckpt_dir)
    where = (
        f"The last good checkpoint is {last}; nothing after it was saved."
        if last
        else "No checkpoint was saved yet."
    )
    return StableEmoteError(
        f"The training loss became {value} at step {step}; the run stopped. {where} Usual causes: a "
        "learning rate too high for this rank/batch (try 1e-4 or lower, or warm-up steps), fp16 overflow "
        "(try --precision bf16 on Ampere or newer, or fp32), or broken images in the data. Fix the cause "
        "and continue with --resume latest."
    )
