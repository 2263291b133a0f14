"""Training of the UNet on cached latents, with accelerate: LoRA, or every weight.

The lesson of notebook ``05_lora_training``.

The step itself (sample a timestep, noise the latent, predict the noise, MSE, backward
into the LoRA weights) is :func:`training_loss`; :func:`train` runs it on a whole run:

* :func:`train` checks the options, locks the run folder and calls :func:`_train`;
* :func:`_set_up_run` builds what the loop needs (accelerator, the checkpoint to continue,
  data, encode-once caches, the trainable UNet and its optimizer) as a :class:`_Run`;
* :func:`_training_loop` is the loop, on one screen: batch, noise, UNet, loss, backward,
  optimizer step, then logging, checkpoint and validation;
* record-keeping lives in named helpers (:func:`_measure_heldout`,
  :func:`_write_checkpoint`, :func:`_save_validation_grid`, :func:`_write_results`).

``mode="full"`` trains every UNet weight instead of a LoRA (how TinyEmote's UNet is
trained from scratch, see :mod:`stableemote_utils.tinyemote.pretrain`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.files import give_open_modes
from stableemote_utils.options import check_train_options
from stableemote_utils.run_folder import (
    check_resume_config,
    claim_run_folder,
    resolve_resume,
    run_lock,
)

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
# Every random draw of step s on process p comes from a generator seeded with
# seed * _SEED_STRIDE + s * _STEP_STRIDE + p: a resumed run draws the same numbers.
_SEED_STRIDE = 1_000_003
_STEP_STRIDE = 1_009
HELDOUT_TIMESTEPS = (50, 200, 400, 600, 800, 950)
HELDOUT_NOISE_SEED = 1234


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
    caption_template: str = "An emoji of {name}"
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
    timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction: ``min(SNR, gamma) / SNR``, ``(B,)``.

    SNR(t) = alpha_bar_t / (1 - alpha_bar_t). Low-noise steps (huge SNR) are down-weighted
    so they stop dominating the gradient (Hang et al., 2023: faster convergence at gamma = 5).
    """
    ac = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = ac / (1 - ac)
    return torch.clamp(snr, max=gamma) / snr


def training_loss(
    unet: torch.nn.Module,
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    text: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    generator: torch.Generator,
    min_snr_gamma: float | None = None,
    noise_offset: float = 0.0,
) -> torch.Tensor:
    """One training step's loss, written out.

    Args:
        unet: the UNet with LoRA layers.
        latent_mean, latent_std: cached VAE latent distribution ``(B, 4, h, w)``, scaled.
        text: cached CLIP hidden states ``(B, 77, D)``.
        alphas_cumprod: the noise schedule's cumulative alphas ``(1000,)``.
        generator: the step's generator (on the latents' device).

    Returns:
        The scalar loss: MSE between the true noise and the UNet's prediction.
    """
    b = latent_mean.shape[0]
    dev = latent_mean.device
    # 1. a fresh sample of the latent distribution (the cache keeps mean and std)
    latents = latent_mean + latent_std * torch.randn(
        latent_mean.shape, generator=generator, device=dev
    )
    # 2. noise, and a random timestep per example
    noise = torch.randn(latents.shape, generator=generator, device=dev)
    if noise_offset:
        noise = noise + noise_offset * torch.randn(
            (b, latents.shape[1], 1, 1), generator=generator, device=dev
        )
    t = torch.randint(0, len(alphas_cumprod), (b,), generator=generator, device=dev)
    # 3. forward noising: x_t = sqrt(a_bar) x_0 + sqrt(1 - a_bar) eps
    a_bar = alphas_cumprod.to(dev)[t].view(b, 1, 1, 1)
    noisy = a_bar.sqrt() * latents + (1 - a_bar).sqrt() * noise
    # 4. predict the noise and compare
    pred = unet(noisy, t, encoder_hidden_states=text).sample
    per_example = F.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
    if min_snr_gamma:
        per_example = per_example * min_snr_weights(t, alphas_cumprod, min_snr_gamma)
    return per_example.mean()


@torch.no_grad()
def heldout_loss(
    unet: torch.nn.Module,
    latent_mean: torch.Tensor,
    text: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: tuple[int, ...] = HELDOUT_TIMESTEPS,
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """Mean noise-prediction MSE on held-out emoji at fixed timesteps and fixed noise.

    Every example is noised at every timestep in ``timesteps`` with noise from a fixed
    seed, and the latent mean is used (no sampling), so the number is comparable across
    steps and runs; training loss is too noisy to read.
    """
    dev = next(unet.parameters()).device
    g = torch.Generator().manual_seed(HELDOUT_NOISE_SEED)
    noise_all = torch.randn((len(timesteps), *latent_mean.shape), generator=g)
    total, count = 0.0, 0
    was_training = unet.training
    unet.eval()
    for ti, t in enumerate(timesteps):
        a_bar = alphas_cumprod[t].float()
        for i in range(0, latent_mean.shape[0], batch_size):
            x0 = latent_mean[i : i + batch_size].to(dev)
            eps = noise_all[ti, i : i + batch_size].to(dev)
            noisy = a_bar.sqrt() * x0 + (1 - a_bar).sqrt() * eps
            tt = torch.full((x0.shape[0],), t, device=dev, dtype=torch.long)
            with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                pred = unet(
                    noisy, tt, encoder_hidden_states=text[i : i + batch_size].to(dev)
                ).sample
            total += F.mse_loss(pred.float(), eps, reduction="sum").item() / eps[0].numel()
            count += x0.shape[0]
    unet.train(was_training)
    return total / max(count, 1)


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
        interrupted: True when Ctrl-C stopped the run (after writing a checkpoint).
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


def check_output_dir(path: str | os.PathLike) -> Path:
    """Create the output folder and check it is writable, before any model is loaded."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise StableEmoteError(
            f"Cannot write to the output folder '{path}' ({err.strerror or err}). Choose a folder "
            "you can write to with --output-dir (on Colab, mount Google Drive first to keep "
            "checkpoints across disconnects)."
        ) from err
    return path


def mixed_precision_for(dtype: torch.dtype) -> str:
    """accelerate's mixed-precision name for a compute dtype."""
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "no")


def _sample_grid(components, unet, prompts_embeds, negative_embeds, config, resolution_px, steps):
    """Validation images: each prompt at the fixed validation seed, safety checker off."""
    from stableemote_utils.images import image_grid
    from stableemote_utils.loading import make_pipeline

    pipe = make_pipeline(components)
    pipe.unet = unet
    images = []
    for i in range(prompts_embeds.shape[0]):
        g = torch.Generator(device="cpu").manual_seed(config.validation_seed + i)
        out = pipe(
            prompt_embeds=prompts_embeds[i : i + 1].to(components.device, unet.dtype),
            negative_prompt_embeds=negative_embeds.to(components.device, unet.dtype),
            num_inference_steps=steps,
            height=resolution_px,
            width=resolution_px,
            generator=g,
        )
        images.append(out.images[0])
    return image_grid(images, list(config.validation_prompts), cols=len(images))


def _open_trackers(accelerator, config: TrainConfig, out: Path) -> None:
    if config.report_to == "none":
        return
    init_kwargs = {}
    if config.report_to == "wandb":
        from stableemote_utils.hub import read_secret

        key = read_secret("WANDB_API_KEY")
        if key:
            os.environ.setdefault("WANDB_API_KEY", key)
        elif not os.environ.get("WANDB_MODE"):
            print(
                "stableemote: no WANDB_API_KEY found; logging to W&B offline (sync later with `wandb sync`)"
            )
            os.environ["WANDB_MODE"] = "offline"
        init_kwargs = {"wandb": {"dir": str(out)}}
    config_dict = {
        k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))
    }
    accelerator.init_trackers("stableemote", config=config_dict, init_kwargs=init_kwargs)


def _log_image(accelerator, name: str, image, step: int) -> None:
    import numpy as np

    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            import wandb

            tracker.log({name: wandb.Image(image)}, step=step)
        elif tracker.name == "tensorboard":
            tracker.writer.add_image(name, np.asarray(image), step, dataformats="HWC")


def train(config: TrainConfig, resume: str | None = None, overwrite: bool = False) -> TrainResult:
    """Train a LoRA on the UNet (or, with ``mode="full"``, every UNet weight).

    Runs the same on CPU, one GPU, or N GPUs via ``accelerate launch``. A run folder
    belongs to one run: it is locked while the run lasts, a fresh run refuses a folder
    that holds checkpoints (unless ``overwrite``), and a resume checks that every setting
    that changes the result is the same. The first Ctrl-C finishes the step, writes a
    checkpoint and returns (``result.interrupted``); a second one stops at once.

    Args:
        config: the run's settings (see :func:`recipe`).
        resume: ``None`` for a fresh run, ``"latest"`` for the newest intact checkpoint in
            ``output_dir/checkpoints`` (a fresh start if there is none), or a checkpoint folder.
            Checkpoints newer than the one resumed from (an abandoned timeline, or damaged
            ones) are moved to ``output_dir/set-aside/``.
        overwrite: start a fresh run in a folder that holds another run's checkpoints; they
            are moved to ``output_dir/set-aside/``, not deleted.

    Returns:
        A :class:`TrainResult`. Files written under ``output_dir``: ``checkpoints/``,
        ``samples/``, ``pytorch_lora_weights.safetensors``, ``loss.png``, ``summary.json``,
        ``README.md`` (model card).

    Raises:
        StableEmoteError: a bad option (before any work), a locked or used folder, a
            checkpoint made with other settings, bad data, a non-finite loss.
    """
    from stableemote_utils.precision import check_training_precision, choose_dtype, pick_device
    from stableemote_utils.presets import get_preset, precision_setting

    check_train_options(config)
    device = pick_device(config.device)
    check_training_precision(device, choose_dtype(device, precision_setting(config.precision))[0])
    if overwrite and resume is not None:
        raise StableEmoteError(
            "--overwrite starts the run over and --resume continues it; pass one of them."
        )
    preset = get_preset(config.preset)
    config = dataclasses.replace(
        config,
        model=config.model or preset.model,
        dataset=config.dataset or preset.dataset,
        batch_size=config.batch_size or preset.batch_size,
        resolution_px=config.resolution_px or preset.resolution_px,
        alpha=config.alpha if config.alpha is not None else float(config.rank),
        validation_steps=config.validation_steps or preset.sample_steps,
    )
    out = check_output_dir(config.output_dir)
    # One lock per run: only the launching process of a distributed run takes it.
    with run_lock(out) if _is_first_launched_process() else contextlib.nullcontext():
        return _train(config, preset, out, resume, overwrite)


def _is_first_launched_process() -> bool:
    """True unless ``accelerate launch``/``torchrun`` started this as a process other than 0."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


@dataclass
class _Run:
    """One training session's working set, built by :func:`_set_up_run`.

    ``step``, ``losses`` and ``heldout`` are the run's progress (carried over from the
    checkpoint on resume); the loop updates them.
    """

    config: TrainConfig
    preset: object  # presets.Preset
    out: Path
    accelerator: object  # accelerate.Accelerator
    dtype: torch.dtype
    precision_reason: str
    run_id: str
    components: object  # loading.Components: VAE and text encoder parked on the CPU
    train_cache: dict[str, torch.Tensor]  # latent_mean/latent_std (N, 4, h, w), text (N, 77, D)
    held_cache: dict[str, torch.Tensor]
    unet: torch.nn.Module  # as accelerate prepared it: what the training step calls
    raw_unet: torch.nn.Module  # unwrapped: what is measured, sampled and saved
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    lr_schedule: object  # torch LR scheduler
    step: int = 0
    losses: list[float] = dataclasses.field(default_factory=list)
    heldout: dict[int, float] = dataclasses.field(default_factory=dict)

    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def full(self) -> bool:
        return self.config.mode == "full"

    def say(self, *args, **kwargs) -> None:
        """``print`` on the main process only."""
        if self.main:
            print(*args, **kwargs)


def _train(config: TrainConfig, preset, out: Path, resume: str | None, overwrite: bool):
    """:func:`train` once the options are checked and the run folder is locked."""
    run = _set_up_run(config, preset, out, resume, overwrite)
    _open_trackers(run.accelerator, config, out)
    if 0 not in run.heldout:
        _measure_heldout(run, 0)
    step_times, interrupted = _training_loop(run)
    if interrupted:
        run.say(
            f"stableemote: interrupted: stopped after step {run.step}; its checkpoint is in "
            f"{run.ckpt_dir}. Continue with --resume latest (in Python: train(config, "
            "resume='latest')).",
            file=sys.stderr,
        )
    stopped_early = run.step < config.steps
    adapter_path = None
    if run.main and not stopped_early:
        adapter_path = _write_results(run, step_times)
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    return TrainResult(
        out,
        adapter_path,
        run.step,
        run.losses,
        run.heldout,
        _median(step_times),
        stopped_early,
        run.main,
        interrupted,
    )


def _training_loop(run: _Run) -> tuple[list[float], bool]:
    """The loop: batch, noise, UNet, loss, backward, optimizer step; log, checkpoint, validate.

    Runs from ``run.step`` to ``config.steps`` (or ``stop_after_steps``), updating
    ``run.step``, ``run.losses`` and ``run.heldout``.

    Returns:
        ``(seconds per step of each log interval, whether Ctrl-C stopped the run early)``.
    """
    from tqdm.auto import tqdm

    config, accelerator = run.config, run.accelerator
    dev = accelerator.device
    world, process_index = accelerator.num_processes, accelerator.process_index
    latent_mean = run.train_cache["latent_mean"].to(dev)
    latent_std = run.train_cache["latent_std"].to(dev)
    text_all = run.train_cache["text"].to(dev)
    empty_text = run.train_cache["extra_text"][0:1].to(dev)
    alphas_cumprod = run.components.scheduler.alphas_cumprod.to(dev)
    num_examples = latent_mean.shape[0]
    end_step = (
        config.steps
        if config.stop_after_steps is None
        else min(config.steps, config.stop_after_steps)
    )
    bar = tqdm(
        total=config.steps,
        initial=run.step,
        disable=not (run.main and config.progress_bar),
        desc="training",
        unit="step",
    )
    pending: list[torch.Tensor] = []
    step_times: list[float] = []
    interrupt = {"requested": False}
    restore_sigint = _finish_the_step_on_interrupt(interrupt)
    stopping = False
    step = run.step
    run.unet.train()
    last = time.perf_counter()
    try:
        while step < end_step:
            idx = batch_indices(
                step, config.batch_size, num_examples, config.seed, process_index, world
            ).to(dev)
            g = step_generator(config.seed, step, process_index, dev)
            text = text_all[idx]
            if config.caption_dropout > 0:
                drop = torch.rand(len(idx), generator=g, device=dev) < config.caption_dropout
                text = torch.where(drop.view(-1, 1, 1), empty_text.expand_as(text), text)
            with accelerator.autocast():
                loss = training_loss(
                    run.unet,
                    latent_mean[idx],
                    latent_std[idx],
                    text,
                    alphas_cumprod,
                    g,
                    config.min_snr_gamma,
                    config.noise_offset,
                )
            accelerator.backward(loss)
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(run.params, config.max_grad_norm)
            run.optimizer.step()
            run.lr_schedule.step()
            run.optimizer.zero_grad(set_to_none=True)
            step += 1
            run.step = step
            pending.append(loss.detach().float())
            stopping = _any_process_interrupted(accelerator, interrupt)
            if step % config.log_every == 0 or step == end_step or stopping:
                # One host sync per log interval, not per step.
                values = accelerator.reduce(torch.stack(pending), reduction="mean").cpu()
                pending.clear()
                bad = (~torch.isfinite(values)).nonzero()
                if len(bad):
                    first_bad = step - len(values) + int(bad[0]) + 1
                    raise _non_finite(first_bad, values[int(bad[0])].item(), run.ckpt_dir)
                run.losses.extend(values.tolist())
                now = time.perf_counter()
                step_times.append((now - last) / len(values))
                last = now
                bar.update(len(values))
                bar.set_postfix(loss=f"{values.mean():.4f}", s_per_step=f"{step_times[-1]:.3f}")
                accelerator.log(
                    {
                        "loss": values.mean().item(),
                        "lr": run.lr_schedule.get_last_lr()[0],
                        "steps_per_second": 1.0 / max(step_times[-1], 1e-9),
                    },
                    step=step,
                )
            # Validation is a picture for people: it must never cost the checkpoint of its
            # step or kill the run it watches. The held-out loss goes into the checkpoint, so
            # it is measured first; the sample grid comes after the checkpoint.
            validating = step % config.validate_every == 0 or step == config.steps
            if validating:
                try:
                    _measure_heldout(run, step)
                except Exception as err:  # noqa: BLE001 - reported, training goes on
                    _report_failure("the held-out loss", step, err)
            if step % config.checkpoint_every == 0 or step == end_step or stopping:
                _write_checkpoint(run, step)
            if stopping:
                break
            if validating:
                try:
                    _save_validation_grid(run, step)
                except Exception as err:  # noqa: BLE001 - reported, training goes on
                    _report_failure("the validation grid", step, err)
    except torch.OutOfMemoryError as err:
        raise StableEmoteError(
            f"Ran out of GPU memory at batch size {config.batch_size}, {config.resolution_px} px. "
            "Turn on --gradient-checkpointing and continue with --resume latest, or start a new run "
            "(new --output-dir) with a lower --batch-size or --resolution, or --use-8bit-adam. "
            f"({str(err)[:120]})"
        ) from err
    finally:
        bar.close()
        restore_sigint()
    return step_times, stopping and step < config.steps


# ---------------------------------------------------------------------------
# Setting a run up
# ---------------------------------------------------------------------------


def _set_up_run(
    config: TrainConfig, preset, out: Path, resume: str | None, overwrite: bool
) -> _Run:
    """Accelerator, the checkpoint to continue, data, encode-once caches, the trainable UNet."""
    from stableemote_utils.checkpoints import load_checkpoint

    accelerator, dtype, reason = _make_accelerator(config, out)
    main = accelerator.is_main_process
    if main:
        print(f"precision: {reason}")
    # The run folder: which checkpoint to continue (if any), with the same settings, and
    # checkpoints that do not belong to this timeline moved out of the way.
    ckpt_dir = out / "checkpoints"
    resume_from = resolve_resume(resume, ckpt_dir)
    saved = None if resume_from is None else load_checkpoint(resume_from)
    if saved is not None:
        check_resume_config(saved[0], config.to_dict(), mixed_precision_for(dtype))
    if main:
        claim_run_folder(out, ckpt_dir, resume, resume_from, overwrite)
    train_set, heldout_set = _load_splits(config, preset, accelerator)
    components, train_cache, held_cache = _encode_once(
        config, preset, accelerator, dtype, train_set, heldout_set
    )
    unet, params, optimizer, lr_schedule = _trainable_unet(
        config, components, accelerator, None if saved is None else saved[1]
    )
    run = _Run(
        config=config,
        preset=preset,
        out=out,
        accelerator=accelerator,
        dtype=dtype,
        precision_reason=reason,
        run_id=(saved[0].get("run_id") if saved else None) or uuid.uuid4().hex,
        components=components,
        train_cache=train_cache,
        held_cache=held_cache,
        unet=unet,
        # Without DDP, but with accelerate's fp32-output wrapper (in place on the module the
        # training forward uses): whatever runs it outside the training step does so under
        # accelerator.autocast(), so its fp32 outputs never meet half-precision weights bare.
        raw_unet=accelerator.unwrap_model(unet),
        params=params,
        optimizer=optimizer,
        lr_schedule=lr_schedule,
    )
    if saved is not None:
        _restore_progress(run, saved, resume_from)
    return run


def _make_accelerator(config: TrainConfig, out: Path):
    """``(accelerator, compute dtype, the precision policy's reason)``."""
    from accelerate import Accelerator

    from stableemote_utils.precision import check_training_precision, choose_dtype, pick_device
    from stableemote_utils.presets import precision_setting

    device = pick_device(config.device)
    dtype, reason = choose_dtype(device, precision_setting(config.precision))
    check_training_precision(device, dtype)
    accelerator = Accelerator(
        mixed_precision=mixed_precision_for(dtype),
        cpu=device.type == "cpu",
        log_with=None if config.report_to == "none" else config.report_to,
        project_dir=str(out),
    )
    return accelerator, dtype, reason


def _load_splits(config: TrainConfig, preset, accelerator) -> tuple[list, list]:
    """The training and held-out examples; a dataset too small for either is refused."""
    from stableemote_utils.data import load_emoji_dataset

    world = accelerator.num_processes
    # Data first: a missing dataset or one smaller than a batch fails before any model loads.
    with accelerator.main_process_first():
        train_set = load_emoji_dataset(
            config.dataset,
            config.resolution_px,
            config.caption_template,
            "train",
            preset.heldout_fraction,
            limit=config.max_train_examples,
        )
        heldout_set = load_emoji_dataset(
            config.dataset,
            config.resolution_px,
            config.caption_template,
            "heldout",
            preset.heldout_fraction,
            limit=config.heldout_limit,
        )
    if len(train_set) < config.batch_size * world:
        raise StableEmoteError(
            f"The dataset has {len(train_set)} training images, fewer than one batch "
            f"({config.batch_size} x {world} processes). Lower --batch-size or add images."
        )
    if not heldout_set:
        raise StableEmoteError(
            f"--dataset {config.dataset}: none of its emoji names falls in the held-out split "
            f"({preset.heldout_fraction:.0%} of names, chosen by a hash of the name), so the "
            "held-out loss cannot be measured. Add images with more distinct names (a few dozen "
            "at least)."
        )
    return train_set, heldout_set


def _encode_once(config: TrainConfig, preset, accelerator, dtype, train_set, heldout_set):
    """Load the model, encode every image and caption once, park the VAE and text encoder.

    Returns:
        ``(components, train_cache, held_cache)``.
    """
    from stableemote_utils.latent_cache import build_or_load_cache
    from stableemote_utils.loading import load_components
    from stableemote_utils.presets import cache_dir

    use_preset = config.model == preset.model  # a preset's own model may be built on first use
    components = load_components(
        preset if use_preset else config.model, device=accelerator.device, dtype=dtype
    )
    # Validation prompts go through the same caption template as the training captions.
    extra_prompts = [
        "",
        *(config.caption_template.format(name=n) for n in config.validation_prompts),
    ]
    with accelerator.main_process_first():
        cache_folder = Path(cache_dir()) / "latents"
        train_cache = build_or_load_cache(
            components,
            train_set,
            cache_folder,
            config.resolution_px,
            config.caption_template,
            extra_prompts,
            "train",
        )
        held_cache = build_or_load_cache(
            components,
            heldout_set,
            cache_folder,
            config.resolution_px,
            config.caption_template,
            (),
            "heldout",
        )
    components.vae.to("cpu")
    components.text_encoder.to("cpu")
    return components, train_cache, held_cache


def _trainable_unet(config: TrainConfig, components, accelerator, saved_weights):
    """The UNet with its trainable weights (a fresh or saved LoRA, or every weight),
    optimizer and LR schedule, prepared by accelerate.

    Returns:
        ``(unet, trainable params, optimizer, lr_schedule)``.
    """
    from diffusers.optimization import get_scheduler

    from stableemote_utils.lora import add_lora, set_lora_state_dict

    unet = components.unet
    torch.manual_seed(config.seed)  # the LoRA's initial A matrices
    if config.mode == "full":  # every weight trains, kept in fp32 (autocast does the maths)
        unet.to(torch.float32).requires_grad_(True)
        if saved_weights is not None:
            unet.load_state_dict(saved_weights)
    else:
        add_lora(unet, config.rank, config.alpha)
        if saved_weights is not None:
            set_lora_state_dict(unet, saved_weights)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if config.channels_last:
        unet.to(memory_format=torch.channels_last)
    params = [p for p in unet.parameters() if p.requires_grad]
    if config.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise StableEmoteError(
                "--use-8bit-adam needs bitsandbytes: pip install bitsandbytes"
            ) from err
        optimizer = bnb.optim.AdamW8bit(params, lr=config.learning_rate)
    else:
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=1e-2)
    lr_schedule = get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=config.steps,
    )
    if config.compile:
        unet = torch.compile(unet)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    return unet, params, optimizer, lr_schedule


def _restore_progress(run: _Run, saved: tuple, resume_from: Path) -> None:
    """Put back step, losses, held-out record, optimizer, LR schedule, loss scaler and RNG."""
    from stableemote_utils.checkpoints import restore_rng

    state, _, optimizer_state, rng = saved
    run.step = state["step"]
    run.losses = list(state["losses"])
    run.heldout = {int(k): v for k, v in state["heldout"].items()}
    run.optimizer.load_state_dict(optimizer_state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if state["config"]["steps"] == run.config.steps:
            run.lr_schedule.load_state_dict(state["lr_scheduler"])
        else:  # a longer (or shorter) run: the schedule is redrawn over the new length
            run.say(
                f"steps changed {state['config']['steps']} -> {run.config.steps}: LR schedule redrawn"
            )
            for _ in range(run.step):
                run.lr_schedule.step()
    scaler = run.accelerator.scaler
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    restore_rng(rng)
    world = run.accelerator.num_processes
    if state.get("world_size", 1) != world:
        run.say(f"note: the run was started on {state.get('world_size')} processes, now {world}")
    run.say(f"resumed from {resume_from} at step {run.step}")


# ---------------------------------------------------------------------------
# Record-keeping: held-out loss, validation grids, checkpoints, results
# ---------------------------------------------------------------------------


def _measure_heldout(run: _Run, at_step: int) -> None:
    """Record the held-out loss at ``at_step`` (main process)."""
    if not run.main:
        return
    run.heldout[at_step] = heldout_loss(
        run.raw_unet,
        run.held_cache["latent_mean"],
        run.held_cache["text"],
        run.components.scheduler.alphas_cumprod,
        autocast_dtype=run.dtype if run.dtype != torch.float32 else None,
    )
    run.accelerator.log({"heldout_loss": run.heldout[at_step]}, step=at_step)


def _save_validation_grid(run: _Run, at_step: int) -> None:
    """Sample the validation prompts and save ``samples/step-NNNNNN.png`` (main process)."""
    from stableemote_utils.images import save_image

    if not run.main:
        return
    components = run.components
    components.vae.to(run.accelerator.device)
    try:
        # Under the training autocast: the UNet, the VAE and the latents between them
        # agree on a dtype whatever the precision (fp32 weights in full training
        # included), as in the training step.
        with run.accelerator.autocast():
            grid = _sample_grid(
                components,
                run.raw_unet,
                run.train_cache["extra_text"][1:],
                run.train_cache["extra_text"][0:1],
                run.config,
                run.config.resolution_px,
                run.config.validation_steps,
            )
    finally:
        components.vae.to("cpu")
    save_image(grid, run.out / "samples" / f"step-{at_step:06d}.png")
    _log_image(run.accelerator, "samples", grid, at_step)


def _report_failure(what: str, at_step: int, err: Exception) -> None:
    print(
        f"stableemote: warning: {what} at step {at_step} failed ({type(err).__name__}: "
        f"{str(err)[:200]}); training goes on.",
        file=sys.stderr,
    )


def _write_checkpoint(run: _Run, at_step: int) -> None:
    """Write ``checkpoints/checkpoint-NNNNNN`` (main process) and prune the run's old ones."""
    from stableemote_utils.checkpoints import save_checkpoint
    from stableemote_utils.lora_files import lora_state_dict

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
            run.optimizer.state_dict(),
            state,
            run.config.keep_checkpoints,
            weights_file="unet.safetensors" if run.full else "pytorch_lora_weights.safetensors",
        )
    run.accelerator.wait_for_everyone()


def _any_process_interrupted(accelerator, interrupt: dict) -> bool:
    """Whether Ctrl-C reached any process (all processes then stop after the same step)."""
    if accelerator.num_processes == 1:
        return interrupt["requested"]
    flag = torch.tensor([float(interrupt["requested"])], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def _write_results(run: _Run, step_times: list[float]) -> Path:
    """The finished run's adapter (or UNet), loss plot, summary, model card; push if asked.

    Returns:
        The adapter file (in full training, the UNet's weights file).
    """
    from stableemote_utils.hub import write_model_card
    from stableemote_utils.lora_files import save_lora
    from stableemote_utils.plots import save_loss_plot

    config, out = run.config, run.out
    meta = {
        "base_model": str(config.model),
        "rank": str(config.rank),
        "alpha": str(config.alpha),
        "steps": str(run.step),
        "resolution_px": str(config.resolution_px),
        "dataset": str(config.dataset),
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
        "seconds_per_step": _median(step_times),
        "precision": run.precision_reason,
        "num_processes": run.accelerator.num_processes,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if not run.full:
        write_model_card(out, config, run.heldout, run.preset)
    if config.push_to_hub and not run.full:
        from stableemote_utils.hub import push_adapter

        push_adapter(out, config.push_to_hub)
    return adapter_path


def _finish_the_step_on_interrupt(interrupt: dict):
    """Make the first Ctrl-C set ``interrupt["requested"]`` and a second one stop at once.

    Returns a function that puts the previous handler back (a no-op outside the main
    thread, where handlers cannot be set and Ctrl-C is not delivered).
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_sigint(signum, frame):
        if interrupt["requested"]:
            raise KeyboardInterrupt
        interrupt["requested"] = True
        print(
            "\nstableemote: interrupted: finishing this step and writing a checkpoint "
            "(press Ctrl-C again to stop at once, losing the steps since the last checkpoint)",
            file=sys.stderr,
        )

    previous = signal.signal(signal.SIGINT, on_sigint)
    if previous is None:  # installed from C: Python's default is the closest to it
        previous = signal.default_int_handler
    return lambda: signal.signal(signal.SIGINT, previous)


def _median(values: list[float]) -> float:
    return float(sorted(values)[len(values) // 2]) if values else math.nan


def _non_finite(step: int, value: float, ckpt_dir: Path) -> StableEmoteError:
    from stableemote_utils.checkpoints import latest_checkpoint

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
