"""Training of the UNet on cached latents, with accelerate: LoRA, or every weight.

The lesson of notebook ``05_lora_training``.

The step itself (sample a timestep, noise the latent, predict the noise, MSE, backward
into the LoRA weights) is :func:`training_loss`; :func:`train` runs it on a whole run:

* :func:`train` checks the options, resolves the preset, locks the run folder and
  calls :func:`_train`;
* :func:`_training_loop` is the loop, on one screen: batch, noise, UNet, loss, backward,
  optimizer step, then logging, checkpoint and validation.

What is not the lesson lives beside it: the settings (:mod:`~stableemote_utils.training_config`:
:class:`TrainConfig`, :func:`recipe`, :class:`TrainResult`), setting a run up
(:mod:`~stableemote_utils.training_setup`: accelerator, run folder, data, encode-once
caches, the trainable UNet) and record-keeping (:mod:`~stableemote_utils.training_records`:
held-out loss, validation grids, checkpoints, results).

``mode="full"`` trains every UNet weight instead of a LoRA (how TinyEmote's UNet is
trained from scratch, see :mod:`stableemote_utils.tinyemote.pretrain`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time

import torch
import torch.nn.functional as F
from diffusers import SchedulerMixin
from diffusers.training_utils import compute_snr
from tqdm import tqdm  # a text bar: in a notebook its stored output is its last state

from stableemote_utils.config_file import write_config_file
from stableemote_utils.denoising import add_noise
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.presets import Preset
from stableemote_utils.run_folder import resolve_resume, run_lock
from stableemote_utils.training_config import ORIGINAL_PROMPTS, TrainConfig, TrainResult, recipe
from stableemote_utils.training_records import (
    measure_heldout,
    median,
    non_finite_loss_error,
    report_failure,
    save_validation_grid,
    write_checkpoint,
    write_results,
)
from stableemote_utils.training_setup import (
    RunPlan,
    TrainingRun,
    any_process_interrupted,
    finish_the_step_on_interrupt,
    is_first_launched_process,
    open_trackers,
    resolve_run,
    set_up_run,
)

__all__ = [
    "ORIGINAL_PROMPTS",
    "TrainConfig",
    "TrainResult",
    "batch_indices",
    "draw_step_noise",
    "min_snr_weights",
    "noise_prediction_loss",
    "optimizer_step",
    "recipe",
    "step_generator",
    "train",
    "training_loss",
]

# Every random draw of step s on process p comes from a generator seeded with
# seed * _SEED_STRIDE + s * _STEP_STRIDE + p: a resumed run draws the same numbers.
_SEED_STRIDE = 1_000_003
_STEP_STRIDE = 1_009


def step_generator(
    seed: int, step: int, process_index: int = 0, device: str | torch.device = "cpu"
) -> torch.Generator:
    """The generator for every random draw of one step on one process (see ``_SEED_STRIDE``)."""
    return torch.Generator(device=device).manual_seed(
        seed * _SEED_STRIDE + step * _STEP_STRIDE + process_index
    )


def batch_indices(
    step: int,
    batch_size: int,
    num_examples: int,
    seed: int,
    process_index: int = 0,
    world: int = 1,
) -> torch.Tensor:
    """Which examples process ``process_index`` (of ``world``) trains on at ``step``: ``(batch_size,)``.

    The examples are shuffled once per epoch (seeded); the global batch of a step is the
    next ``batch_size * world`` positions in that order and each process takes its own
    slice, so processes see disjoint shards and any step can be recomputed on resume.
    """
    global_batch = batch_size * world
    start = step * global_batch + process_index * batch_size
    positions = torch.arange(start, start + batch_size)
    epochs = positions // num_examples
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        perm = torch.randperm(
            num_examples, generator=torch.Generator().manual_seed(seed + 7919 * epoch)
        )
        mask = epochs == epoch
        out[mask] = perm[positions[mask] % num_examples]
    return out


def min_snr_weights(
    timesteps: torch.Tensor, noise_scheduler: SchedulerMixin, gamma: float
) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction: ``min(SNR, gamma) / SNR``, ``(B,)``.

    SNR(t) = alpha_bar_t / (1 - alpha_bar_t), from diffusers' ``compute_snr`` on the noise
    scheduler's ``alphas_cumprod``; ``timesteps`` is ``(B,)``. Low-noise steps (huge SNR) are
    down-weighted so they stop dominating the gradient (Hang et al., 2023: faster
    convergence at gamma = 5).
    """
    snr = compute_snr(noise_scheduler, timesteps)
    return torch.clamp(snr, max=gamma) / snr


def draw_step_noise(
    generator: torch.Generator,
    latent_shape: torch.Size | tuple[int, ...],
    num_timesteps: int,
    *,
    noise_offset: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Every random draw of a training step's noising, in a fixed order, for ``B`` examples.

    Drawn once for the whole batch of an optimizer step, so that a batch trained in ``N``
    accumulated slices sees exactly the numbers one big batch would.

    Args:
        generator: the step's generator (:func:`step_generator`), on the latents' device.
        latent_shape: ``(B, 4, h, w)``.
        num_timesteps: the schedule's length (1000 for SD 1.5).
        noise_offset: scale of a per-example, per-channel constant added to the noise.

    Returns:
        ``{"sample": (B, 4, h, w)`` standard normal draws that sample the cached latent
        distribution, ``"noise": (B, 4, h, w)``, ``"timesteps": (B,)``}.
    """
    dev = generator.device
    b, channels = latent_shape[0], latent_shape[1]
    sample = torch.randn(latent_shape, generator=generator, device=dev)
    noise = torch.randn(latent_shape, generator=generator, device=dev)
    if noise_offset:
        noise = noise + noise_offset * torch.randn(
            (b, channels, 1, 1), generator=generator, device=dev
        )
    t = torch.randint(0, num_timesteps, (b,), generator=generator, device=dev)
    return {"sample": sample, "noise": noise, "timesteps": t}


def noise_prediction_loss(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    text: torch.Tensor,
    *,
    noise_scheduler: SchedulerMixin,
    min_snr_gamma: float | None = None,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Noise the clean latents, let the UNet predict the noise, and score it.

    Args:
        latents: clean latents ``x_0`` ``(B, 4, h, w)``, scaled.
        noise: the noise to hide ``(B, 4, h, w)``.
        timesteps: ``(B,)`` ints in ``[0, 1000)``.
        text: CLIP hidden states ``(B, 77, D)``.
        noise_scheduler: its ``alphas_cumprod`` ``(1000,)`` is the noise schedule.
        min_snr_gamma: weight each example by ``min(SNR, gamma) / SNR`` (``None``: off).
        added_cond_kwargs: SDXL's pooled text ``text_embeds`` ``(B, 1280)`` and
            ``time_ids`` ``(B, 6)`` (see :meth:`~stableemote_utils.model_family.ModelFamily.unet_inputs`);
            ``None`` for SD 1.5.

    Returns:
        The scalar loss: MSE between the true noise and the UNet's prediction.
    """
    # forward noising: x_t = sqrt(a_bar_t) x_0 + sqrt(1 - a_bar_t) eps (notebook 03)
    noisy = add_noise(latents, noise, noise_scheduler.alphas_cumprod, timesteps)
    extra = {} if added_cond_kwargs is None else {"added_cond_kwargs": added_cond_kwargs}
    pred = unet(noisy, timesteps, encoder_hidden_states=text, **extra).sample
    per_example = F.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
    if min_snr_gamma:
        per_example = per_example * min_snr_weights(timesteps, noise_scheduler, min_snr_gamma)
    return per_example.mean()


def training_loss(
    unet: torch.nn.Module,
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    text: torch.Tensor,
    noise_scheduler: SchedulerMixin,
    generator: torch.Generator,
    min_snr_gamma: float | None = None,
    noise_offset: float = 0.0,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One training step's loss, written out: draw, noise, predict, compare.

    Args:
        unet: the UNet with LoRA layers.
        latent_mean, latent_std: cached VAE latent distribution ``(B, 4, h, w)``, scaled.
        text: cached CLIP hidden states ``(B, 77, D)``.
        noise_scheduler: the model's scheduler; its ``alphas_cumprod`` ``(1000,)`` is the
            noise schedule.
        generator: the step's generator (on the latents' device).
        added_cond_kwargs: SDXL's pooled text and time ids (``None`` for SD 1.5).

    Returns:
        The scalar loss: MSE between the true noise and the UNet's prediction.
    """
    draws = draw_step_noise(
        generator,
        latent_mean.shape,
        len(noise_scheduler.alphas_cumprod),
        noise_offset=noise_offset,
    )
    # a fresh sample of the latent distribution (the cache keeps mean and std)
    latents = latent_mean + latent_std * draws["sample"]
    return noise_prediction_loss(
        unet,
        latents,
        draws["noise"],
        timesteps=draws["timesteps"],
        text=text,
        noise_scheduler=noise_scheduler,
        min_snr_gamma=min_snr_gamma,
        added_cond_kwargs=added_cond_kwargs,
    )


def train(
    config: TrainConfig,
    resume: str | None = None,
    overwrite: bool = False,
    *,
    preset: Preset | None = None,
) -> TrainResult:
    """Train a LoRA on the UNet (or, with ``mode="full"``, every UNet weight).

    Runs the same on CPU, one GPU, or N GPUs via ``accelerate launch``. A run folder
    belongs to one run: it is locked while the run lasts, a fresh run refuses a folder
    that holds checkpoints (unless ``overwrite``), and a resume checks that every setting
    that changes the result is the same. The first Ctrl-C or SIGTERM finishes the step,
    writes a checkpoint and returns (``result.interrupted``, ``result.stop_signal``); a
    second one stops at once.

    Args:
        config: the run's settings (see :func:`recipe`).
        resume: ``None`` for a fresh run, ``"latest"`` for the newest intact checkpoint in
            ``output_dir/checkpoints`` (a fresh start if there is none), or a checkpoint folder.
            Checkpoints newer than the one resumed from (an abandoned timeline, or damaged
            ones) are moved to ``output_dir/set-aside/``.
        overwrite: start a fresh run in a folder that holds another run's checkpoints; they
            are moved to ``output_dir/set-aside/``, not deleted.
        preset: ``config.preset`` already resolved by the caller (it is then not resolved
            again); ``None`` resolves it here.

    Returns:
        A :class:`TrainResult`. Files written under ``output_dir``: ``checkpoints/``,
        ``samples/``, ``pytorch_lora_weights.safetensors``, ``loss.png``, ``summary.json``,
        ``README.md`` (model card), ``captions.jsonl`` (every picture's caption) and
        ``config.toml`` (every setting, resolved: ``stableemote train --config`` repeats it).

    Raises:
        StableEmoteError: a bad option, a ``push_to_hub`` id that is not a Hub repo id or
            no Hub token to push with, a Hub model that cannot be had (all before any
            work); a locked or used folder, a
            checkpoint made with other settings, bad data, a non-finite loss.
        WriteFailedError: a checkpoint or the results could not be written (a full disk);
            the earlier checkpoints are intact.
    """
    plan = resolve_run(config, resume=resume, overwrite=overwrite, preset=preset)
    # One lock per run: only the launching process of a distributed run takes it.
    first = is_first_launched_process()
    with run_lock(plan.out) if first else contextlib.nullcontext():
        if first:
            print(f"precision: {plan.precision_reason}")
        resume_from = resolve_resume(resume, plan.ckpt_dir)
        return _train(dataclasses.replace(plan, resume_from=resume_from))


def _train(plan: RunPlan) -> TrainResult:
    """:func:`train` once the run is resolved and its folder locked."""
    config, out = plan.config, plan.out
    run = set_up_run(plan)
    if run.main:
        write_config_file(config, out)
    open_trackers(run.accelerator, config, out)
    if 0 not in run.heldout:
        measure_heldout(run, 0)
    if config.grid_at_step_0 and run.step == 0:
        _validation_grid(run, 0)
    step_times, interrupted = _training_loop(run)
    if interrupted:
        how = "terminated" if run.interrupt["signal"] == "SIGTERM" else "interrupted"
        run.say(
            f"stableemote: {how}: stopped after step {run.step}; its checkpoint is in "
            f"{run.ckpt_dir}. Continue with --resume latest (in Python: train(config, "
            "resume='latest')).",
            file=sys.stderr,
        )
    stopped_early = run.step < config.steps
    adapter_path = None
    if run.main and not stopped_early:
        adapter_path = write_results(run, step_times)
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    return TrainResult(
        output_dir=out,
        adapter_path=adapter_path,
        step=run.step,
        losses=run.losses,
        heldout=run.heldout,
        seconds_per_step=median(step_times),
        stopped_early=stopped_early,
        is_main_process=run.main,
        interrupted=interrupted,
        stop_signal=(run.interrupt["signal"] or "SIGINT") if interrupted else None,
    )


def optimizer_step(run: TrainingRun, step: int) -> torch.Tensor:
    """Optimizer step ``step``: its batch in ``gradient_accumulation_steps`` slices through
    accelerate's ``accumulate``, then clip, update the weights and the learning rate.

    The step's batch (``batch_size * gradient_accumulation_steps`` examples per process)
    and every random draw are made once for the whole batch, so ``batch 4 x 2 slices``
    trains on the numbers ``batch 8`` does; accelerate divides each slice's loss by the
    number of slices and steps the optimizer after the last.

    Returns:
        The step's loss, the mean over its slices (a 0-dim tensor, not synced to the host).
    """
    config, accelerator, cache = run.config, run.accelerator, run.train_cache
    slices = config.gradient_accumulation_steps
    world, process_index = accelerator.num_processes, accelerator.process_index
    dev = accelerator.device
    idx = batch_indices(
        step,
        config.batch_size * slices,
        cache["latent_mean"].shape[0],
        seed=config.seed,
        process_index=process_index,
        world=world,
    ).to(dev)
    g = step_generator(config.seed, step, process_index, dev)
    family = run.family
    # What the UNet is told about each example: its caption's tensors (SD 1.5: text; SDXL:
    # text and pooled) and, for SDXL, its picture's time ids.
    cond = {k: cache[k][idx] for k in (*family.prompt_keys, *family.image_keys)}
    if config.caption_dropout > 0:
        drop = torch.rand(len(idx), generator=g, device=dev) < config.caption_dropout
        # what the family's sampler guides against: SD 1.5 the encoded "", SDXL zeros
        empty = family.dropped_caption({k: cache["extra_" + k][0:1] for k in family.prompt_keys})
        for k in family.prompt_keys:
            blank = empty[k].expand_as(cond[k])
            cond[k] = torch.where(drop.view(-1, *[1] * (cond[k].ndim - 1)), blank, cond[k])
    draws = draw_step_noise(
        g,
        cache["latent_mean"][idx].shape,
        len(run.components.scheduler.alphas_cumprod),
        noise_offset=config.noise_offset,
    )
    # a fresh sample of each cached latent distribution
    latents = cache["latent_mean"][idx] + cache["latent_std"][idx] * draws["sample"]
    losses = []
    for part in torch.arange(len(idx), device=dev).chunk(slices):
        inputs = family.unet_inputs({k: v[part] for k, v in cond.items()})
        with accelerator.accumulate(run.unet), accelerator.autocast():
            loss = noise_prediction_loss(
                run.unet,
                latents[part],
                draws["noise"][part],
                timesteps=draws["timesteps"][part],
                text=inputs["encoder_hidden_states"],
                noise_scheduler=run.components.scheduler,
                min_snr_gamma=config.min_snr_gamma,
                added_cond_kwargs=inputs.get("added_cond_kwargs"),
            )
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.max_grad_norm:
                accelerator.clip_grad_norm_(run.params, config.max_grad_norm)
            run.optimizer.step()  # accelerate's: steps only after the last slice
            run.optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach().float())
    run.lr_schedule.step()
    return torch.stack(losses).mean()


@dataclasses.dataclass
class _LoopState:
    """What the loop's hooks keep between steps."""

    end_step: int
    bar: tqdm
    interrupt: dict
    pending: list[torch.Tensor] = dataclasses.field(default_factory=list)
    step_times: list[float] = dataclasses.field(default_factory=list)
    last_time: float = dataclasses.field(default_factory=time.perf_counter)
    stopping: bool = False


def _training_loop(run: TrainingRun) -> tuple[list[float], bool]:
    """The loop: one :func:`optimizer_step` after another, then :func:`_after_step`.

    Runs from ``run.step`` to ``config.steps`` (or ``stop_after_steps``), updating
    ``run.step``, ``run.losses`` and ``run.heldout``.

    Returns:
        ``(seconds per step of each log interval, whether Ctrl-C stopped the run early)``.
    """
    config = run.config
    end_step = min(config.steps, config.stop_after_steps or config.steps)
    bar = tqdm(
        total=config.steps,
        initial=run.step,
        disable=not (run.main and config.progress_bar),
        desc="training",
        unit="step",
    )
    state = _LoopState(end_step=end_step, bar=bar, interrupt=run.interrupt)
    restore_sigint = finish_the_step_on_interrupt(state.interrupt)
    run.unet.train()
    try:
        while run.step < end_step:
            loss = optimizer_step(run, run.step)
            run.step += 1
            if _after_step(run, state, loss):
                break
    except torch.OutOfMemoryError as err:
        raise StableEmoteError(
            f"Ran out of GPU memory at batch size {config.batch_size}, {config.resolution_px} px. "
            "Turn on --gradient-checkpointing (or raise --gradient-accumulation-steps and lower "
            "--batch-size) and continue with --resume latest, or start a new run (new "
            "--output-dir) with a lower --batch-size or --resolution, or --use-8bit-adam. "
            f"({str(err)[:120]})"
        ) from err
    finally:
        bar.close()
        restore_sigint()
    return state.step_times, state.stopping and run.step < config.steps


def _after_step(run: TrainingRun, state: _LoopState, loss: torch.Tensor) -> bool:
    """The one place the hooks hang off: Ctrl-C, logging (with the non-finite check),
    held-out loss, checkpoint, validation grid. Returns whether to stop."""
    config, step = run.config, run.step
    state.pending.append(loss)
    state.stopping = any_process_interrupted(run.accelerator, state.interrupt)
    last = step == state.end_step
    if step % config.log_every == 0 or last or state.stopping:
        _log_losses(run, state)
    # Validation is a picture for people: it must never cost the checkpoint of its step or
    # kill the run it watches. The held-out loss goes into the checkpoint, so it comes
    # first; the sample grid comes after the checkpoint.
    validating = step % config.validate_every == 0 or step == config.steps
    if validating:
        try:
            measure_heldout(run, step)
        except Exception as err:  # noqa: BLE001 - reported, training goes on
            report_failure("the held-out loss", step, err)
    if step % config.checkpoint_every == 0 or last or state.stopping:
        write_checkpoint(run, step)
    if state.stopping:
        return True
    if validating:
        _validation_grid(run, step)
    return False


def _log_losses(run: TrainingRun, state: _LoopState) -> None:
    """Bring the losses since the last log to the host (one sync per log interval), stop on
    a non-finite one, and log them to the progress bar and the trackers."""
    values = run.accelerator.reduce(torch.stack(state.pending), reduction="mean").cpu()
    state.pending.clear()
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        first_bad = run.step - len(values) + int(bad[0]) + 1
        raise non_finite_loss_error(first_bad, values[int(bad[0])].item(), run.ckpt_dir)
    run.losses.extend(values.tolist())
    now = time.perf_counter()
    state.step_times.append((now - state.last_time) / len(values))
    state.last_time = now
    state.bar.update(len(values))
    state.bar.set_postfix(loss=f"{values.mean():.4f}", s_per_step=f"{state.step_times[-1]:.3f}")
    run.accelerator.log(
        {
            "loss": values.mean().item(),
            "lr": run.lr_schedule.get_last_lr()[0],
            "steps_per_second": 1.0 / max(state.step_times[-1], 1e-9),
        },
        step=run.step,
    )


def _validation_grid(run: TrainingRun, step: int) -> None:
    """The validation grid of ``step``; a failure is reported and training goes on."""
    try:
        save_validation_grid(run, step)
    except Exception as err:  # noqa: BLE001 - a picture for people must not kill the run
        report_failure("the validation grid", step, err)
