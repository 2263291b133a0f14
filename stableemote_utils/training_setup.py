"""Setting a training run up: the run resolved once, accelerator, data, caches, trainable UNet.

Infrastructure of :func:`stableemote_utils.training.train` (notebook ``05_lora_training``):
:func:`resolve_run` turns the settings into a :class:`RunPlan` before anything loads
(every preset-filled value, device, dtype, model family, paths, resume point), and
:func:`set_up_run` builds from it a :class:`TrainingRun`, the working set the loop reads
and updates; no later stage derives any of these again. The Ctrl-C and SIGTERM handling
that lets a run finish its step is here too.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler

from stableemote_utils.captions import make_caption
from stableemote_utils.checkpoints import load_checkpoint, restore_rng
from stableemote_utils.data import CAPTIONS_RECORD, load_emoji_dataset, write_captions_record
from stableemote_utils.errors import StableEmoteError, Terminated
from stableemote_utils.hub import check_push_target, read_secret
from stableemote_utils.latent_cache import build_or_load_cache
from stableemote_utils.loading import SDComponents, check_hub_model, load_components
from stableemote_utils.lora_peft import add_lora, set_lora_state_dict
from stableemote_utils.model_family import ModelFamily, family_of, get_family
from stableemote_utils.options import check_train_options
from stableemote_utils.precision import (
    check_preset_device,
    check_training_precision,
    choose_dtype,
    dtype_name,
    pick_device,
)
from stableemote_utils.presets import Preset, cache_dir, get_preset, precision_setting
from stableemote_utils.run_folder import check_resume_config, claim_run_folder
from stableemote_utils.training_config import TrainConfig


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


def is_first_launched_process() -> bool:
    """True unless ``accelerate launch``/``torchrun`` started this as a process other than 0."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


@dataclass(frozen=True)
class RunPlan:
    """A run resolved once, before any model loads: what every later stage reads.

    Attributes:
        config: the settings with every preset-filled value filled in (model, dataset,
            batch size, resolution, alpha, precision, validation steps and guidance).
        preset: the preset the run belongs to.
        family: the model family (:mod:`~stableemote_utils.model_family`) the preset names;
            the loaded UNet must agree.
        device, dtype: where and in what the run computes; ``precision_reason`` says why.
        out: the run folder (checked writable).
        resume: what was asked for: ``None`` (a fresh run), ``"latest"`` or a folder.
        overwrite: start over in a folder that holds another run's checkpoints.
        resume_from: the checkpoint to continue, or ``None``; found under the run's lock
            (:func:`stableemote_utils.run_folder.resolve_resume`).
    """

    config: TrainConfig
    preset: Preset
    family: ModelFamily
    device: torch.device
    dtype: torch.dtype
    precision_reason: str
    out: Path
    resume: str | None = None
    overwrite: bool = False
    resume_from: Path | None = None

    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    @property
    def mixed_precision(self) -> str:
        """accelerate's name for the compute dtype (``"fp16"``, ``"bf16"``, ``"no"``)."""
        return mixed_precision_for(self.dtype)


def resolve_run(
    config: TrainConfig,
    resume: str | None = None,
    overwrite: bool = False,
    preset: Preset | None = None,
) -> RunPlan:
    """Check the options and resolve a run into a :class:`RunPlan` (no model is loaded).

    Raises:
        StableEmoteError: a bad option, ``--overwrite`` with ``--resume``, a preset given
            for another config's, a GPU-sized preset on a machine without a GPU (unless
            ``--device cpu``), a precision or size the device or model cannot take, an
            output folder that cannot be written.
    """
    check_train_options(config)
    if config.push_to_hub:  # hours of training must not end on a bad id or a missing token
        check_push_target(config.push_to_hub)
    if overwrite and resume is not None:
        raise StableEmoteError(
            "--overwrite starts the run over and --resume continues it; pass one of them."
        )
    if preset is None:
        preset = get_preset(config.preset)
    elif config.preset not in (preset.name, preset.model):
        raise StableEmoteError(
            f"train() was given the preset {preset.name!r} ({preset.model}) for a config whose "
            f"preset is {config.preset!r}; pass the config's own preset, or none."
        )
    check_preset_device(preset, config.device)
    device = pick_device(config.device)
    dtype, reason = choose_dtype(device, precision_setting(config.precision))
    check_training_precision(device, dtype)
    family = get_family(preset.family)
    config = dataclasses.replace(
        config,
        model=config.model or preset.model,
        dataset=config.dataset or preset.dataset,
        batch_size=config.batch_size or preset.batch_size,
        resolution_px=config.resolution_px or preset.resolution_px,
        alpha=config.alpha if config.alpha is not None else float(config.rank),
        precision=dtype_name(dtype),
        validation_steps=config.validation_steps or preset.sample_steps,
        validation_guidance=(
            preset.guidance_scale
            if config.validation_guidance is None
            else config.validation_guidance
        ),
    )
    family.check_resolution(config.resolution_px)
    check_hub_model(config.model)  # a Hub model that cannot be had, before any data is read
    out = check_output_dir(config.output_dir)
    return RunPlan(
        config=config,
        preset=preset,
        family=family,
        device=device,
        dtype=dtype,
        precision_reason=reason,
        out=out,
        resume=resume,
        overwrite=overwrite,
    )


@dataclass
class TrainingRun:
    """One training session's working set, built by :func:`set_up_run`.

    ``step``, ``losses`` and ``heldout`` are the run's progress (carried over from the
    checkpoint on resume); the loop updates them.
    """

    config: TrainConfig
    preset: Preset
    out: Path
    accelerator: Accelerator
    dtype: torch.dtype
    precision_reason: str
    run_id: str
    components: SDComponents  # VAE and text encoder(s) parked on the CPU
    family: ModelFamily  # what the cache holds per prompt and picture, what the UNet takes
    # latent_mean/latent_std (N, 4, h, w), text (N, 77, D), extra_text (P, 77, D): the empty
    # prompt and the validation prompts; SDXL adds pooled (N, 1280), extra_pooled (P, 1280)
    # and time_ids (N, 6). On the training device.
    train_cache: dict[str, torch.Tensor]
    held_cache: dict[str, torch.Tensor] | None  # None: no held-out images
    unet: torch.nn.Module  # as accelerate prepared it: what the training step calls
    raw_unet: torch.nn.Module  # unwrapped: what is measured, sampled and saved
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    lr_schedule: object  # torch LR scheduler
    step: int = 0
    losses: list[float] = dataclasses.field(default_factory=list)
    heldout: dict[int, float] = dataclasses.field(default_factory=dict)
    # Set by the Ctrl-C / SIGTERM handler (see finish_the_step_on_interrupt).
    interrupt: dict = dataclasses.field(
        default_factory=lambda: {"requested": False, "signal": None}
    )

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


def set_up_run(plan: RunPlan) -> TrainingRun:
    """Accelerator, the checkpoint to continue, data, encode-once caches, the trainable UNet."""
    config, preset, out = plan.config, plan.preset, plan.out
    accelerator = _make_accelerator(plan)
    main = accelerator.is_main_process
    # The run folder: the checkpoint to continue (if any), with the same settings, and
    # checkpoints that do not belong to this timeline moved out of the way.
    resume_from = plan.resume_from
    saved = None if resume_from is None else load_checkpoint(resume_from)
    if saved is not None:
        check_resume_config(saved[0], config.to_dict(), plan.mixed_precision)
    if main:
        claim_run_folder(
            out, plan.ckpt_dir, plan.resume, resume_from=resume_from, overwrite=plan.overwrite
        )
    train_set, heldout_set = _load_splits(config, preset, accelerator)
    if main:  # the exact captions this run trains and measures on
        write_captions_record(out / CAPTIONS_RECORD, {"train": train_set, "heldout": heldout_set})
    components, train_cache, held_cache = _encode_once(
        plan, accelerator, train_set=train_set, heldout_set=heldout_set
    )
    unet, params, optimizer, lr_schedule = _trainable_unet(
        config, components, accelerator, None if saved is None else saved[1]
    )
    run = TrainingRun(
        config=config,
        preset=preset,
        out=out,
        accelerator=accelerator,
        dtype=plan.dtype,
        precision_reason=plan.precision_reason,
        run_id=(saved[0].get("run_id") if saved else None) or uuid.uuid4().hex,
        components=components,
        family=plan.family,
        train_cache={k: v.to(accelerator.device) for k, v in train_cache.items()},
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


def _make_accelerator(plan: RunPlan) -> Accelerator:
    """The run's accelerator, in the plan's precision and on its device."""
    config = plan.config
    return Accelerator(
        mixed_precision=plan.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        cpu=plan.device.type == "cpu",
        log_with=None if config.report_to == "none" else config.report_to,
        project_dir=str(plan.out),
    )


def _load_splits(config: TrainConfig, preset: Preset, accelerator) -> tuple[list, list]:
    """The training and held-out examples; a dataset too small for either is refused."""
    world = accelerator.num_processes

    def split(name: str, limit: int | None) -> list:
        return load_emoji_dataset(
            config.dataset,
            config.resolution_px,
            config.caption_template,
            split=name,
            heldout_fraction=preset.heldout_fraction,
            limit=limit,
            trigger_word=config.trigger_word,
        )

    # Data first: a missing dataset or one smaller than a batch fails before any model loads.
    with accelerator.main_process_first():
        train_set = split("train", config.max_train_examples)
        heldout_set = split("heldout", config.heldout_limit)
    per_step = config.batch_size * config.gradient_accumulation_steps
    if len(train_set) < per_step * world:
        raise StableEmoteError(
            f"The dataset has {len(train_set)} training images, fewer than one batch of a step "
            f"({config.batch_size} x {config.gradient_accumulation_steps} accumulation steps x "
            f"{world} processes). Lower --batch-size or --gradient-accumulation-steps, or add images."
        )
    if not heldout_set and accelerator.is_main_process:
        print(
            f"stableemote: note: none of the {len(train_set)} names in --dataset "
            f"{config.dataset} falls in the held-out split ({preset.heldout_fraction:.0%} of "
            "names, chosen by a hash of the name), so every picture trains and the held-out "
            "loss is not measured."
        )
    return train_set, heldout_set


def _encode_once(plan: RunPlan, accelerator, train_set, heldout_set):
    """Load the model, encode every image and caption once, park the VAE and text encoders.

    Returns:
        ``(components, train_cache, held_cache)``.
    """
    config, preset = plan.config, plan.preset
    use_preset = config.model == preset.model  # a preset's own model may be built on first use
    components = load_components(
        preset if use_preset else config.model, device=accelerator.device, dtype=plan.dtype
    )
    loaded = family_of(components.unet)
    if loaded is not plan.family:
        raise StableEmoteError(
            f"The model '{components.source}' is {loaded.label}, but the preset "
            f"'{preset.name}' is for {plan.family.label}. Pass a {plan.family.label} model, "
            f"or a preset for {loaded.label} (--preset {loaded.name})."
        )
    # Validation prompts become captions as the training names do (template, trigger word).
    extra_prompts = [
        "",
        *(
            make_caption(n, config.caption_template, config.trigger_word)
            for n in config.validation_prompts
        ),
    ]
    with accelerator.main_process_first():
        cache_folder = Path(cache_dir()) / "latents"
        train_cache = build_or_load_cache(
            components,
            train_set,
            cache_folder,
            resolution_px=config.resolution_px,
            caption_template=config.caption_template,
            extra_prompts=extra_prompts,
            label="train",
        )
        held_cache = (
            None
            if not heldout_set
            else build_or_load_cache(
                components,
                heldout_set,
                cache_folder,
                resolution_px=config.resolution_px,
                caption_template=config.caption_template,
                extra_prompts=(),
                label="heldout",
            )
        )
    components.vae.to("cpu")
    for encoder in components.text_encoders:
        encoder.to("cpu")
    return components, train_cache, held_cache


def _trainable_unet(config: TrainConfig, components, accelerator, saved_weights):
    """The UNet with its trainable weights (a fresh or saved LoRA, or every weight),
    optimizer and LR schedule, prepared by accelerate.

    Returns:
        ``(unet, trainable params, optimizer, lr_schedule)``.
    """
    unet = components.unet
    torch.manual_seed(config.seed)  # the LoRA's initial A matrices
    if config.mode == "full":  # every weight trains, kept in fp32 (autocast does the maths)
        # .float(), not .to(torch.float32): diffusers answers the latter with a warning
        # about fp32 modules this UNet does not have.
        unet.float().requires_grad_(True)
        if saved_weights is not None:
            unet.load_state_dict(saved_weights)
    else:
        add_lora(unet, config.rank, config.alpha, target_modules=config.target_modules)
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


def _restore_progress(run: TrainingRun, saved: tuple, resume_from: Path) -> None:
    """Put back step, losses, held-out record, optimizer, LR schedule, loss scaler and RNG."""
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


def open_trackers(accelerator, config: TrainConfig, out: Path) -> None:
    if config.report_to == "none":
        return
    init_kwargs = {}
    if config.report_to == "wandb":
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


# The signals that stop a run after its step: Ctrl-C, and SIGTERM (a timeout, docker stop,
# a batch scheduler's time limit).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def finish_the_step_on_interrupt(interrupt: dict):
    """Make the first Ctrl-C or SIGTERM ask the run to stop after its step; a second stops at once.

    The first one sets ``interrupt["requested"]`` and ``interrupt["signal"]`` (``"SIGINT"``
    or ``"SIGTERM"``): the loop finishes the step, writes a checkpoint and returns. A second
    one raises :class:`KeyboardInterrupt` (Ctrl-C) or :class:`~stableemote_utils.errors.Terminated`
    (SIGTERM) wherever the run is; a checkpoint being written is then removed, the earlier
    ones stay.

    Returns:
        A function that puts the previous handlers back (a no-op outside the main thread,
        where handlers cannot be set and signals are not delivered).
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_signal(signum, frame):
        name = signal.Signals(signum).name
        if interrupt["requested"]:
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        interrupt["requested"] = True
        interrupt["signal"] = name
        again = "press Ctrl-C" if signum == signal.SIGINT else "send SIGTERM"
        what = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
        print(
            f"\nstableemote: {what}: finishing this step and writing a checkpoint "
            f"({again} again to stop at once, losing the steps since the last checkpoint)",
            file=sys.stderr,
            flush=True,
        )

    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    # None: installed from C. Python's own default is the closest to it.
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, defaults[s] if handler is None else handler)

    return restore


def any_process_interrupted(accelerator, interrupt: dict) -> bool:
    """Whether Ctrl-C or SIGTERM reached any process (all then stop after the same step)."""
    if accelerator.num_processes == 1:
        return interrupt["requested"]
    flag = torch.tensor([float(interrupt["requested"])], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)
