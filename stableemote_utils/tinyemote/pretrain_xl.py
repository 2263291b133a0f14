"""TinyEmote-XL: SDXL's architecture at toy size, pretrained on the offline emoji.

``stableemote pretrain-tiny --family sdxl``. Stages 1-3 are TinyEmote's
(:func:`stableemote_utils.tinyemote.pretrain.shared_stages`: the VAE, the tiny CLIP and
the UNet's data, same held-out names, same style word); stages 4 and 5 differ:

4. **UNet.** A random :data:`~stableemote_utils.tiny_model.TINYEMOTE_XL_UNET_CONFIG` UNet
   learns to predict noise under SDXL's conditioning:

   * each token is the *penultimate* hidden state of both text encoders side by side,
     ``(B, 77, 64 + 64)``. Encoder 1 is the tiny CLIP's text tower (TinyEmote's text
     encoder); encoder 2 is the same tower with the CLIP's text projection, a
     ``CLIPTextModelWithProjection``, whose projected end-of-text state is the pooled
     ``text_embeds`` ``(B, 64)``;
   * the six time ids are each image's own: it is seen either as the 64 px square (ids
     ``64, 64, 0, 0, 64, 64``) or as a 72 px square cut to 64 px at a random corner on the
     8-pixel grid of the latents (``72, 72, top, left, 64, 64``), and mirrored half the
     time, the mirroring done before the cut;
   * 10% of captions are dropped to zero embeddings, which is what SDXL's pipeline feeds
     for "no prompt" (``force_zeros_for_empty_prompt``), so classifier-free guidance works.

   Latents of every view are encoded once (posterior mean and std) and sampled each step.
   Every draw of a step comes from a generator seeded by the step, so a run repeats bit for
   bit on one machine with one thread count, and a resumed run continues exactly: the
   stage checkpoints into ``unet-run/`` every ``checkpoint_every`` steps.
5. **Export.** UNet, VAE (with its scaling factor measured again on the training pixels),
   both text encoders and SDXL's scheduler, in fp16, in SDXL's folder layout.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from stableemote_utils.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from stableemote_utils.data import load_emoji_dataset
from stableemote_utils.denoising import add_noise
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.options import check_int
from stableemote_utils.presets import get_preset
from stableemote_utils.tiny_model import (
    CLIP_MAX_LENGTH,
    SDXL_SCHEDULER_CONFIG,
    TINYEMOTE_XL_UNET_CONFIG,
    save_xl_pipeline,
)
from stableemote_utils.tinyemote.clip import text_tower
from stableemote_utils.tinyemote.pretrain import (
    PretrainConfig,
    earlier_build,
    export_fp16,
    latent_scaling_factor,
    shared_stages,
    vae_training_pixels,
)
from stableemote_utils.training import batch_indices, min_snr_weights, step_generator

# A second, larger square each image is also seen at, cut back to the model's size: the
# crop corner moves on the latents' 8-pixel grid (0 or 8 pixels down and right).
CROP_MARGIN_PX = 8
LATENT_DOWNSCALE = 8
UNET_RUN = "unet-run"
UNET_WEIGHTS_FILE = "unet.safetensors"
RUN_ID = "tinyemote-xl-unet"
HELDOUT_LIMIT = 200
HELDOUT_SEED = 1234


def xl_text_encoders(clip_model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """TinyEmote-XL's two text encoders from a tiny ``CLIPModel``.

    Returns:
        ``(text_encoder, text_encoder_2)``: the CLIP's text tower as a ``CLIPTextModel``
        (exactly TinyEmote's text encoder), and the same tower with the CLIP's
        ``text_projection`` as a ``CLIPTextModelWithProjection`` (every weight of it
        copied by name, none left random). Both frozen, eval mode.
    """
    from transformers import CLIPTextModelWithProjection

    second = CLIPTextModelWithProjection(clip_model.config.text_config)
    wanted = second.state_dict().keys()
    state = {k: v for k, v in clip_model.state_dict().items() if k in wanted}
    second.load_state_dict(state, strict=True)  # raises if a weight is missing or extra
    return text_tower(clip_model), second.eval().requires_grad_(False)


@torch.no_grad()
def encode_xl_prompts(
    text_encoder, text_encoder_2, tokenizer, captions: list[str], batch: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's prompt embeddings, as ``StableDiffusionXLPipeline.encode_prompt`` makes them.

    Returns:
        ``(states, pooled)``: the penultimate hidden states of both encoders concatenated,
        ``(N, 77, D1 + D2)``, and encoder 2's projected pooled output ``(N, P)``.
    """
    states, pooled = [], []
    for i in range(0, len(captions), batch):
        ids = tokenizer(
            captions[i : i + batch],
            padding="max_length",
            max_length=CLIP_MAX_LENGTH,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        first = text_encoder(ids, output_hidden_states=True)
        second = text_encoder_2(ids, output_hidden_states=True)
        states.append(torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1))
        pooled.append(second.text_embeds)
    return torch.cat(states), torch.cat(pooled)


@torch.no_grad()
def encode_latent_views(vae, images: list, size_px: int, batch: int = 64) -> torch.Tensor:
    """Posterior mean and std of each image and its mirror image at ``size_px``, scaled.

    Returns:
        ``(N, 2, 2, 4, s, s)``: image, [as is, mirrored], [mean, std], latent channels,
        ``s = size_px / 8``; multiplied by the VAE's ``scaling_factor``.
    """
    from PIL import Image

    from stableemote_utils.data import images_to_tensor

    scale = vae.config.scaling_factor
    out = []
    for i in range(0, len(images), batch):
        chunk = [
            im.resize((size_px, size_px), Image.Resampling.BICUBIC) for im in images[i : i + batch]
        ]
        pixels = images_to_tensor(chunk)
        views = []
        for flipped in (pixels, pixels.flip(-1)):  # mirrored before any crop
            dist = vae.encode(flipped).latent_dist
            views.append(torch.stack([dist.mean, dist.std], dim=1) * scale)
        out.append(torch.stack(views, dim=1))
    return torch.cat(out)


@dataclass
class XLData:
    """The UNet stage's cached inputs.

    Attributes:
        image_of: ``(N,)`` which cached image each training row shows.
        caption_of: ``(N,)`` which cached caption each row has.
        small: ``(I, 2, 2, 4, 8, 8)`` latent views at the model's size (see
            :func:`encode_latent_views`).
        big: ``(I, 2, 2, 4, 9, 9)`` the same at the model's size plus the crop margin.
        states: ``(C, 77, 128)`` token embeddings of each caption.
        pooled: ``(C, 64)`` pooled embeddings of each caption.
        size_px: the model's resolution (64).
    """

    image_of: torch.Tensor
    caption_of: torch.Tensor
    small: torch.Tensor
    big: torch.Tensor
    states: torch.Tensor
    pooled: torch.Tensor
    size_px: int


def cache_xl_data(examples: list, vae, encoders: tuple, tokenizer, size_px: int) -> XLData:
    """Encode each distinct image (every view) and each distinct caption once."""
    sources = list(dict.fromkeys(e.source for e in examples))
    captions = list(dict.fromkeys(e.caption for e in examples))
    first_of = {}
    for e in examples:
        first_of.setdefault(e.source, e.image)
    images = [first_of[s] for s in sources]
    image_index = {s: i for i, s in enumerate(sources)}
    caption_index = {c: i for i, c in enumerate(captions)}
    states, pooled = encode_xl_prompts(*encoders, tokenizer, captions)
    return XLData(
        image_of=torch.tensor([image_index[e.source] for e in examples]),
        caption_of=torch.tensor([caption_index[e.caption] for e in examples]),
        small=encode_latent_views(vae, images, size_px),
        big=encode_latent_views(vae, images, size_px + CROP_MARGIN_PX),
        states=states,
        pooled=pooled,
        size_px=size_px,
    )


def xl_batch(
    data: XLData, rows: torch.Tensor, generator: torch.Generator, caption_dropout: float
) -> dict[str, torch.Tensor]:
    """One step's inputs for the examples ``rows`` ``(B,)``, every draw from ``generator``.

    Returns:
        ``{"latents": (B, 4, 8, 8)`` a posterior sample of each view, ``"noise"``,
        ``"timesteps": (B,)``, ``"states": (B, 77, 128)``, ``"pooled": (B, 64)``,
        ``"time_ids": (B, 6)`` (original height, width, crop top, left, target height,
        width)}.
    """
    b = len(rows)
    cells = CROP_MARGIN_PX // LATENT_DOWNSCALE
    flip = (torch.rand(b, generator=generator) < 0.5).long()
    big = torch.rand(b, generator=generator) < 0.5
    corner = torch.randint(0, cells + 1, (b, 2), generator=generator)
    dropped = torch.rand(b, generator=generator) < caption_dropout
    sample = torch.randn((b, *data.small.shape[-3:]), generator=generator)
    noise = torch.randn((b, *data.small.shape[-3:]), generator=generator)
    timesteps = torch.randint(
        0, SDXL_SCHEDULER_CONFIG["num_train_timesteps"], (b,), generator=generator
    )

    side = data.small.shape[-1]
    views, time_ids = [], []
    for j, row in enumerate(rows.tolist()):
        image = int(data.image_of[row])
        if big[j]:
            top, left = corner[j].tolist()
            view = data.big[image, flip[j], :, :, top : top + side, left : left + side]
            original = data.size_px + CROP_MARGIN_PX
            crop = (top * LATENT_DOWNSCALE, left * LATENT_DOWNSCALE)
        else:
            view = data.small[image, flip[j]]
            original, crop = data.size_px, (0, 0)
        views.append(view)
        time_ids.append([original, original, *crop, data.size_px, data.size_px])
    views = torch.stack(views)  # (B, 2, 4, 8, 8): mean, std
    captions = data.caption_of[rows]
    keep = (~dropped).float()
    return {
        "latents": views[:, 0] + views[:, 1] * sample,
        "noise": noise,
        "timesteps": timesteps,
        "states": data.states[captions] * keep[:, None, None],
        "pooled": data.pooled[captions] * keep[:, None],
        "time_ids": torch.tensor(time_ids, dtype=torch.float32),
    }


def xl_loss(
    unet, inputs: dict, alphas_cumprod: torch.Tensor, min_snr_gamma: float | None, scheduler
) -> torch.Tensor:
    """Noise the latents, predict the noise under SDXL's conditioning, Min-SNR-weighted MSE."""
    noisy = add_noise(inputs["latents"], inputs["noise"], alphas_cumprod, inputs["timesteps"])
    pred = unet(
        noisy,
        inputs["timesteps"],
        encoder_hidden_states=inputs["states"],
        added_cond_kwargs={"text_embeds": inputs["pooled"], "time_ids": inputs["time_ids"]},
    ).sample
    per_example = F.mse_loss(pred.float(), inputs["noise"].float(), reduction="none").mean(
        dim=(1, 2, 3)
    )
    if min_snr_gamma:
        per_example = per_example * min_snr_weights(inputs["timesteps"], scheduler, min_snr_gamma)
    return per_example.mean()


@torch.no_grad()
def heldout_loss(unet, data: XLData, alphas_cumprod, scheduler, min_snr_gamma) -> float:
    """The stage's loss on held-out names, same draws every time (seed :data:`HELDOUT_SEED`)."""
    unet.eval()
    generator = torch.Generator().manual_seed(HELDOUT_SEED)
    rows = torch.arange(len(data.image_of))
    total = 0.0
    for i in range(0, len(rows), 64):
        chunk = rows[i : i + 64]
        inputs = xl_batch(data, chunk, generator, caption_dropout=0.0)
        total += float(
            xl_loss(unet, inputs, alphas_cumprod, min_snr_gamma, scheduler=scheduler)
        ) * len(chunk)
    unet.train()
    return total / len(rows)


def train_xl_unet(config: PretrainConfig, stages, encoders, unet_dir: Path, resume: bool) -> dict:
    """Stage 4: train the UNet in ``unet_dir`` (a diffusers UNet folder to start from).

    Checkpoints go to ``<output_dir>/unet-run`` every ``config.checkpoint_every`` steps;
    with ``resume`` the newest intact one is continued. Returns the stage's record.
    """
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm
    from transformers import CLIPTokenizer

    preset = get_preset("tiny-xl")
    size = preset.resolution_px
    tokenizer = CLIPTokenizer.from_pretrained(stages.tokenizer_dir)
    load = dict(heldout_fraction=preset.heldout_fraction, limit=config.max_examples)
    train_set = load_emoji_dataset(str(stages.data_dir), size, split="train", **load)
    held = load_emoji_dataset(str(stages.data_dir), size, split="heldout", **load)
    held = held[: HELDOUT_LIMIT if config.max_examples is None else config.max_examples]
    t0 = time.perf_counter()
    data = cache_xl_data(train_set, stages.vae, encoders, tokenizer, size_px=size)
    held_data = cache_xl_data(held, stages.vae, encoders, tokenizer, size_px=size)
    cache_seconds = time.perf_counter() - t0
    print(
        f"cached {len(data.small)} images x 4 views and {len(data.states)} captions in {cache_seconds:.0f} s"
    )

    scheduler = DDPMScheduler.from_config(SDXL_SCHEDULER_CONFIG)
    alphas = scheduler.alphas_cumprod
    unet = UNet2DConditionModel.from_pretrained(unet_dir, torch_dtype=torch.float32).train()
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=config.unet_learning_rate, weight_decay=1e-2
    )
    schedule = get_scheduler(
        "cosine",
        optimizer,
        num_warmup_steps=min(200, config.unet_steps // 10),
        num_training_steps=config.unet_steps,
    )
    run_dir = stages.out / UNET_RUN
    state = {"losses": [], "heldout": {}, "resumed": [], "seconds": 0.0}
    start = 0
    found = latest_checkpoint(run_dir) if resume else None
    if found is not None:
        saved, weights, opt_state, _ = load_checkpoint(found)
        unet.load_state_dict(weights)
        optimizer.load_state_dict(opt_state)
        schedule.load_state_dict(saved["lr_schedule"])
        start = saved["step"]
        state = {k: saved[k] for k in state}
        state["resumed"].append({"step": start, "unet_steps": config.unet_steps})
        print(f"resuming the UNet stage at step {start} from {found}")
    if "0" not in state["heldout"]:
        state["heldout"]["0"] = heldout_loss(
            unet, held_data, alphas, scheduler, min_snr_gamma=config.min_snr_gamma
        )

    t0, before = time.perf_counter(), state["seconds"]
    bar = tqdm(
        range(start, config.unet_steps),
        desc="unet",
        unit="step",
        initial=start,
        total=config.unet_steps,
    )
    for step in bar:
        generator = step_generator(config.seed, step)
        rows = batch_indices(step, config.unet_batch_size, len(data.image_of), config.seed)
        inputs = xl_batch(data, rows, generator, config.caption_dropout)
        loss = xl_loss(unet, inputs, alphas, config.min_snr_gamma, scheduler=scheduler)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        state["losses"].append(loss.item())
        if not math.isfinite(state["losses"][-1]):
            raise StableEmoteError(
                f"The UNet loss became {state['losses'][-1]} at step {step}; lower "
                "--unet-learning-rate and start again with --fresh."
            )
        done = step + 1
        if done % 50 == 0:
            bar.set_postfix(loss=f"{sum(state['losses'][-50:]) / 50:.4f}")
        if done % 1000 == 0 or done == config.unet_steps:
            state["heldout"][str(done)] = heldout_loss(
                unet, held_data, alphas, scheduler, min_snr_gamma=config.min_snr_gamma
            )
            print(f"step {done}: held-out loss {state['heldout'][str(done)]:.4f}")
        state["seconds"] = before + time.perf_counter() - t0
        if done % config.checkpoint_every == 0 or done == config.unet_steps:
            weights = {k: v.detach().clone() for k, v in unet.state_dict().items()}
            save_checkpoint(
                run_dir,
                done,
                weights,
                optimizer.state_dict(),
                state=dict(state, run_id=RUN_ID, lr_schedule=schedule.state_dict()),
                keep_last=2,
                weights_file=UNET_WEIGHTS_FILE,
            )
    unet.eval().requires_grad_(False)
    return {
        "unet": unet,
        "cache_seconds": cache_seconds,
        "train_images": len(data.small),
        "train_rows": len(data.image_of),
        "captions": len(data.states),
        "heldout_rows": len(held_data.image_of),
        "seconds": state["seconds"],
        "heldout": state["heldout"],
        "resumed": state["resumed"],
        "final_loss_mean_last_500": sum(state["losses"][-500:])
        / max(1, len(state["losses"][-500:])),
    }


def pretrain_tiny_xl(config: PretrainConfig, resume: bool = True) -> dict:
    """Build TinyEmote-XL (stages 1-5, see the module docstring); return its record.

    The record is also written to ``output_dir/pretrain.json``; the model, in fp16, to
    ``output_dir/tinyemote-xl``.
    """
    from diffusers import UNet2DConditionModel

    for option, value in (
        ("--unet-steps", config.unet_steps),
        ("--checkpoint-every", config.checkpoint_every),
        ("--unet-batch-size", config.unet_batch_size),
    ):
        check_int(option, value, 1)  # before any stage runs
    started = time.perf_counter()
    stages = shared_stages(config)
    out, vae, record = stages.out, stages.vae, stages.record

    print("stage 4/5: UNet (SDXL conditioning)")
    preset = get_preset("tiny-xl")
    pixels = vae_training_pixels(preset.resolution_px, preset.heldout_fraction, config.max_examples)
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, pixels, config.seed))
    del pixels
    record["vae_scaling_factor"] = vae.config.scaling_factor
    encoders = xl_text_encoders(stages.clip_model)

    start_dir = out / "start-xl-unet"
    if not (start_dir / "config.json").exists():
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(config.seed)
        if config.unet_from:
            unet = UNet2DConditionModel.from_pretrained(config.unet_from, torch_dtype=torch.float32)
        else:
            unet = UNet2DConditionModel(**TINYEMOTE_XL_UNET_CONFIG)
        torch.random.set_rng_state(generator_state)
        unet.save_pretrained(start_dir, safe_serialization=True)
    if config.unet_from:
        record["unet_from_build"] = earlier_build(config.unet_from)
    stage = train_xl_unet(config, stages, encoders, start_dir, resume=resume)
    unet = stage.pop("unet")
    record["unet_seconds"] = stage.pop("seconds")
    record["unet_heldout_loss"] = stage.pop("heldout")
    record["unet_stage"] = stage
    record["unet_parameters"] = sum(p.numel() for p in unet.parameters())

    print("stage 5/5: export")
    model_dir = out / "model-fp32"
    shutil.rmtree(model_dir, ignore_errors=True)
    text_encoder, text_encoder_2 = encoders
    save_xl_pipeline(
        model_dir,
        unet,
        vae,
        text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer_dir=stages.tokenizer_dir,
    )
    export_fp16(model_dir, out / "tinyemote-xl")
    record["seconds"] = time.perf_counter() - started
    (out / "pretrain.json").write_text(json.dumps(record, indent=1))
    return record
