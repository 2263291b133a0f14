"""``stableemote bench``: seconds per training step, the original recipe against ours.

(a) original: every step runs the VAE encoder on the images and the text encoder on the
captions, then the UNet, in the precision the original used (bf16 autocast).
(b) ours: the UNet alone on cached latents and text embeddings, in the precision the
policy picks for the device.

Both use the same model, data, batch size, resolution and LoRA; timing has warm-up
steps, synchronises the device, and reports the median of the timed steps.

:func:`count_step_flops` counts the floating-point operations of one training step of each
recipe on the full-size SD 1.5 or SDXL architecture (torch's FLOP counter on the meta
device: no weights, no memory), and :func:`format_flops_table` turns them into the ideal
step time on a T4 and an H100, the floor that every measured GPU figure can be read
against. For SDXL, :func:`training_memory_gb` counts on paper what a step holds on the
GPU, which is how the ``sdxl`` preset's resolution for a 16 GB T4 was chosen.
"""

from __future__ import annotations

import functools
import resource
import statistics
import time
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from stableemote_utils.data import images_to_tensor, load_emoji_dataset
from stableemote_utils.loading import load_components
from stableemote_utils.lora_peft import add_lora
from stableemote_utils.model_family import family_of
from stableemote_utils.precision import choose_dtype, dtype_name, pick_device
from stableemote_utils.presets import get_preset
from stableemote_utils.tiny_model import sd15_config, sdxl_config
from stableemote_utils.training import step_generator, training_loss
from stableemote_utils.vae import encode_to_latent_dist

# Peak dense tensor-core throughput, from the vendors' data sheets.
T4_FP16_TFLOPS = 65.0
H100_BF16_DENSE_TFLOPS = 989.0
# Hugging Face's SDXL LoRA notebook on a free Colab T4: 1024 px, batch 1 x 3 accumulation,
# fp16-fix VAE, 500 steps in 68 minutes.
SDXL_T4_PUBLISHED_S_PER_STEP = 7.96
SDXL_T4_PUBLISHED_ACCUMULATION = 3
T4_MEMORY_GB = 15.0  # what a T4 offers a program (16 GB less the driver's share)
CUDA_OVERHEAD_GB = 1.0  # CUDA context, cuBLAS/cuDNN workspaces, the allocator's slack


@dataclass
class BenchRow:
    """One measured setting."""

    setting: str
    precision: str
    seconds_per_step: float
    peak_memory_mb: float
    ratio_to_original: float = float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )  # process peak RSS (KiB on Linux)


def _time_steps(step_fn, device: torch.device, warmup: int, steps: int) -> tuple[float, float]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup):
        step_fn(i)
    _sync(device)
    times = []
    for i in range(steps):
        start = time.perf_counter()
        step_fn(warmup + i)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), _peak_mb(device)


def run_bench(
    preset: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    resolution_px: int | None = None,
    steps: int = 10,
    warmup: int = 3,
    original_precision: str = "bf16",
    precision: str | None = None,
) -> list[BenchRow]:
    """Measure (a) the original recipe and (b) ours on the same model and batch.

    Returns:
        One row per setting (a third, the original recipe at the policy's precision, when
        that differs from the original's); ``ratio_to_original`` is the first row's s/step
        over this row's.
    """

    p = get_preset(preset)
    dev = pick_device(device)
    bs = batch_size or p.batch_size
    res = resolution_px or p.resolution_px
    ours_dtype, _ = choose_dtype(dev, precision)
    orig_dtype, _ = choose_dtype(dev, original_precision)
    examples = load_emoji_dataset(p.dataset, res, p.caption_template, "train", limit=bs)
    if len(examples) < bs:
        examples = (examples * bs)[:bs]
    pixels = images_to_tensor([e.image for e in examples]).to(dev)

    rows = []
    settings = [("original: VAE + CLIP every step", orig_dtype, True)]
    if ours_dtype != orig_dtype:  # separates the gain from caching from the gain from precision
        settings.append(("original recipe, policy precision", ours_dtype, True))
    settings.append(("ours: cached latents + text", ours_dtype, False))
    for setting, dtype, original in settings:
        sec, mem = _bench_setting(
            p,
            dev,
            dtype,
            original=original,
            examples=examples,
            pixels=pixels,
            warmup=warmup,
            steps=steps,
        )
        rows.append(BenchRow(setting, dtype_name(dtype), sec, mem))
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    for row in rows:
        row.ratio_to_original = rows[0].seconds_per_step / row.seconds_per_step
    return rows


def format_table(rows: list[BenchRow], device: str, batch_size: int, resolution_px: int) -> str:
    """The bench result as a plain-text table.

    The peak-memory column appears on a GPU only: there it is each recipe's own peak of
    allocated memory (the counter is reset before each). On a CPU the only figure at hand is
    the whole process's peak RSS, which never goes down and so cannot tell the recipes apart.
    """
    gpu = device.startswith("cuda")
    memory_header = f" {'peak GPU MB':>12}" if gpu else ""
    lines = [
        f"device: {device}, batch {batch_size}, {resolution_px} px",
        f"{'setting':<34} {'precision':>9} {'s/step':>9} {'images/s':>9}{memory_header} "
        f"{'speed-up':>9}",
    ]
    for r in rows:
        memory = f" {r.peak_memory_mb:>12.0f}" if gpu else ""
        lines.append(
            f"{r.setting:<34} {r.precision:>9} {r.seconds_per_step:>9.4f} "
            f"{batch_size / r.seconds_per_step:>9.2f}{memory} "
            f"{r.ratio_to_original:>8.2f}x"
        )
    return "\n".join(lines)


@dataclass
class StepFlops:
    """Floating-point operations of one training step (a multiply-add counts 2)."""

    recipe: str
    vae_encoder: float
    text_encoder: float
    unet_forward_backward: float

    @property
    def total(self) -> float:
        return self.vae_encoder + self.text_encoder + self.unet_forward_backward


def _full_size_models(family: str):
    """``(unet, vae, [text encoders])`` of the full-size family on the current device."""
    if family == "sdxl":
        unet = UNet2DConditionModel.from_config(sdxl_config("unet"))
        vae = AutoencoderKL.from_config(sdxl_config("vae"))
        encoders = [
            CLIPTextModel(CLIPTextConfig(**_text(sdxl_config("text_encoder")))),
            CLIPTextModelWithProjection(CLIPTextConfig(**_text(sdxl_config("text_encoder_2")))),
        ]
    else:
        unet = UNet2DConditionModel.from_config(sd15_config("unet"))
        vae = AutoencoderKL.from_config(sd15_config("vae"))
        encoders = [CLIPTextModel(CLIPTextConfig(**_text(sd15_config("text_encoder"))))]
    return unet, vae, encoders


def _text(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "architectures"}


def _unet_inputs(unet, batch_size: int, resolution_px: int) -> tuple:
    """Meta-device ``(latents, timesteps, keywords)`` for one UNet call of the family."""
    b, side = batch_size, resolution_px // 8
    cond = {
        "text": torch.empty(b, 77, unet.config.cross_attention_dim),
        "pooled": torch.empty(b, 1280),
        "time_ids": torch.empty(b, 6),
    }
    latents = torch.empty(b, unet.config.in_channels, side, side)
    return latents, torch.zeros(b, dtype=torch.long), family_of(unet).unet_inputs(cond)


def count_step_flops(
    batch_size: int = 8,
    resolution_px: int = 256,
    rank: int = 4,
    family: str = "sd15",
    gradient_checkpointing: bool = False,
) -> list[StepFlops]:
    """Count one training step of each recipe on the full-size SD 1.5 (or SDXL) architecture.

    The models are built from the published configs on the meta device and run under
    ``torch.utils.flop_counter.FlopCounterMode``: shapes only, so it takes seconds and no
    memory. The UNet step is a forward and a backward with a rank-``rank`` LoRA (frozen
    weights get no weight gradients), plus one more forward with ``gradient_checkpointing``
    (the activations are recomputed in the backward); the original recipe adds the VAE
    encoder on the ``(B, 3, H, W)`` images and the text encoder(s) on ``(B, 77)`` token ids
    (SDXL: both), without gradients.

    Returns:
        ``[original, ours]``.
    """

    with torch.device("meta"):
        unet, vae, encoders = _full_size_models(family)
        for module in (vae, *encoders):
            module.requires_grad_(False)
        add_lora(unet, rank)
        b = batch_size
        pixels = torch.empty(b, 3, resolution_px, resolution_px)
        ids = torch.zeros(b, 77, dtype=torch.long)
        latents, timesteps, inputs = _unet_inputs(unet, b, resolution_px)

        def count(fn) -> float:
            with FlopCounterMode(display=False) as counter:
                fn()
            return float(counter.get_total_flops())

        def unet_step() -> None:
            pred = unet(latents, timesteps, **inputs).sample
            pred.float().pow(2).mean().backward()

        with torch.no_grad():
            vae_flops = count(lambda: vae.encode(pixels).latent_dist.mean)
            text_flops = sum(count(lambda e=e: e(ids)[0]) for e in encoders)
            recompute = (
                count(lambda: unet(latents, timesteps, **inputs)) if gradient_checkpointing else 0
            )
        unet_flops = count(unet_step) + recompute
    what = "VAE + encoders each step" if len(encoders) == 2 else "VAE + CLIP every step"
    return [
        StepFlops(f"original: {what}", vae_flops, text_flops, unet_flops),
        StepFlops("ours: cached latents + text", 0.0, 0.0, unet_flops),
    ]


def training_memory_gb(
    resolution_px: int,
    batch_size: int = 1,
    rank: int = 4,
    family: str = "sdxl",
    gradient_checkpointing: bool = True,
    weight_bytes: int = 2,
) -> dict[str, float]:
    """What one LoRA training step holds on the GPU, counted on paper (meta device), in GB.

    * ``weights``: the frozen UNet in half precision (``weight_bytes`` per parameter).
    * ``lora``: the LoRA weights in fp32 with their gradients and AdamW's two moments
      (16 bytes per parameter; 8-bit Adam keeps the moments in 2 of them).
    * ``activations``: every layer's output kept for the backward, in half precision. With
      gradient checkpointing only each ResNet's and transformer block's output is kept,
      plus the largest block's own activations while it is recomputed.

    The text encoders and the VAE are not on the GPU during the step (their outputs are
    cached). An estimate: it leaves out attention's scratch memory (PyTorch's fused
    attention does not store the attention matrix) and the allocator's fragmentation.

    Returns:
        ``{"weights", "lora", "activations", "total"}`` in GB (1e9 bytes).
    """
    counts = _activation_counts(resolution_px, batch_size, rank, family)
    kept = counts["checkpointed"] if gradient_checkpointing else counts["all"]
    parts = {
        "weights": counts["parameters"] * weight_bytes / 1e9,
        "lora": counts["lora_parameters"] * 16 / 1e9,
        "activations": kept * 2 / 1e9,  # 2 bytes per activation in fp16 or bf16
    }
    parts["total"] = sum(parts.values())
    return parts


@functools.lru_cache(maxsize=16)
def _activation_counts(resolution_px: int, batch_size: int, rank: int, family: str) -> dict:
    """One meta-device forward of the full-size UNet with a LoRA, counting elements:
    ``parameters``, ``lora_parameters``, ``all`` (every layer's output) and
    ``checkpointed`` (each ResNet's and transformer block's output, the layers outside
    them, and the largest block's own outputs)."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D

    units = (ResnetBlock2D, BasicTransformerBlock)
    with torch.device("meta"):
        unet, _, _ = _full_size_models(family)
        parameters = sum(p.numel() for p in unet.parameters())
        lora_parameters = add_lora(unet, rank)
        latents, timesteps, inputs = _unet_inputs(unet, batch_size, resolution_px)
        inside: list = []  # the checkpointed block being run, if any
        per_unit: list[float] = [0.0]
        kept = {"outside": 0.0, "unit_outputs": 0.0, "all": 0.0}

        def numel(out) -> int:
            out = out[0] if isinstance(out, tuple) else out
            return out.numel() if isinstance(out, torch.Tensor) else 0

        def leaf_hook(module, args, out):
            kept["all"] += numel(out)
            if inside:
                per_unit[-1] += numel(out)
            else:
                kept["outside"] += numel(out)

        def unit_pre(module, args):
            inside.append(module)
            per_unit.append(0.0)

        def unit_post(module, args, out):
            inside.pop()
            kept["unit_outputs"] += numel(out)

        hooks = []
        for module in unet.modules():
            if isinstance(module, units):
                hooks.append(module.register_forward_pre_hook(unit_pre))
                hooks.append(module.register_forward_hook(unit_post))
            elif not list(module.children()):
                hooks.append(module.register_forward_hook(leaf_hook))
        with torch.no_grad():
            unet(latents, timesteps, **inputs)
        for h in hooks:
            h.remove()
    return {
        "parameters": parameters,
        "lora_parameters": lora_parameters,
        "all": kept["all"],
        "checkpointed": kept["unit_outputs"] + kept["outside"] + max(per_unit),
    }


def largest_fitting_resolution(
    memory_gb: float = T4_MEMORY_GB, sizes_px=(1024, 896, 768, 640, 512)
) -> tuple[int, dict[str, float]]:
    """The largest SDXL size whose LoRA step (batch 1, gradient checkpointing) fits a GPU of
    ``memory_gb`` after :data:`CUDA_OVERHEAD_GB`: ``(size, its training_memory_gb)``."""
    for size in sizes_px:
        memory = training_memory_gb(size)
        if memory["total"] + CUDA_OVERHEAD_GB <= memory_gb:
            return size, memory
    return sizes_px[-1], training_memory_gb(sizes_px[-1])


def format_flops_table(
    rows: list[StepFlops], batch_size: int, resolution_px: int, family: str = "sd15"
) -> str:
    """The FLOP counts and the ideal step times they allow on a T4 (fp16) and an H100 (bf16)."""
    name = "SDXL" if family == "sdxl" else "SD 1.5"
    text = "text" if family == "sdxl" else "CLIP"
    lines = [
        f"full-size {name}, one training step, batch {batch_size}, {resolution_px} px "
        "(TFLOP; a multiply-add counts 2)",
        f"{'recipe':<34} {'VAE enc':>8} {text:>6} {'UNet f+b':>9} {'total':>7} "
        f"{'T4 floor':>9} {'H100 floor':>10}",
    ]
    for r in rows:
        lines.append(
            f"{r.recipe:<34} {r.vae_encoder / 1e12:>8.3f} {r.text_encoder / 1e12:>6.3f} "
            f"{r.unet_forward_backward / 1e12:>9.3f} {r.total / 1e12:>7.3f} "
            f"{r.total / (T4_FP16_TFLOPS * 1e12) * 1e3:>6.1f} ms "
            f"{r.total / (H100_BF16_DENSE_TFLOPS * 1e12) * 1e3:>7.2f} ms"
        )
    lines.append(
        f"floors: FLOPs / peak (T4 {T4_FP16_TFLOPS:g} fp16 TFLOPS, H100 {H100_BF16_DENSE_TFLOPS:g} "
        f"dense bf16 TFLOPS); original / ours = {rows[0].total / rows[-1].total:.2f}x"
    )
    return "\n".join(lines)


def format_sdxl_t4_report(accumulation: int = SDXL_T4_PUBLISHED_ACCUMULATION) -> str:
    """The ``sdxl`` preset's T4 recipe on paper: memory per size, the size that fits, and the
    T4 floor per optimizer step beside the published measurement."""
    lines = [
        "SDXL LoRA step on a 16 GB T4, counted on paper (batch 1, rank 4, fp16 weights, "
        "gradient checkpointing; GB):",
        f"{'size':>6} {'weights':>8} {'LoRA+Adam':>10} {'activations':>12} {'total':>7} "
        f"{'no checkpointing':>17}",
    ]
    for size in (1024, 768, 512):
        m, plain = training_memory_gb(size), training_memory_gb(size, gradient_checkpointing=False)
        lines.append(
            f"{size:>6} {m['weights']:>8.2f} {m['lora']:>10.3f} {m['activations']:>12.2f} "
            f"{m['total']:>7.2f} {plain['total']:>17.2f}"
        )
    size, _ = largest_fitting_resolution()
    flops = count_step_flops(1, size, family="sdxl", gradient_checkpointing=True)
    per_image = {r.recipe: r.total for r in flops}
    lines.append(
        f"largest size that fits {T4_MEMORY_GB:g} GB with {CUDA_OVERHEAD_GB:g} GB for CUDA: "
        f"{size} px (the sdxl preset's)"
    )
    for recipe, total in per_image.items():
        floor = accumulation * total / (T4_FP16_TFLOPS * 1e12)
        lines.append(
            f"T4 floor per optimizer step at {size} px, batch 1 x {accumulation}: {floor:.2f} s "
            f"({recipe})"
        )
    lines.append(
        f"published (Hugging Face's T4 notebook, 1024 px, batch 1 x "
        f"{SDXL_T4_PUBLISHED_ACCUMULATION}): {SDXL_T4_PUBLISHED_S_PER_STEP} s per step"
    )
    return "\n".join(lines)


def _bench_setting(p, dev, dtype, original, examples, pixels, warmup, steps) -> tuple[float, float]:
    """Time one recipe: ``original`` re-encodes images and captions on every step."""

    # Frozen weights in half precision where the recipe computes in it; LoRA stays fp32.
    parts = load_components(p, device=dev, dtype=dtype if dev.type == "cuda" else torch.float32)
    unet = parts.unet
    torch.manual_seed(0)
    add_lora(unet, 4)
    unet.train()
    params = [q for q in unet.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)
    autocast = dict(device_type=dev.type, dtype=dtype, enabled=dtype != torch.float32)
    family = family_of(unet)
    scale = parts.vae.config.scaling_factor
    captions = [e.caption for e in examples]
    per_image = {
        k: v.to(dev) for k, v in family.image_conditioning(examples, pixels.shape[-1]).items()
    }

    def encode():
        with torch.no_grad(), torch.autocast(**autocast):
            d = encode_to_latent_dist(parts.vae, pixels)
            cond = {**family.encode_prompts(parts, captions), **per_image}
            return d.mean * scale, d.std * scale, family.unet_inputs(cond)

    cached = encode()

    def step(i: int) -> None:
        mean, std, inputs = encode() if original else cached
        with torch.autocast(**autocast):
            loss = training_loss(
                unet,
                mean,
                std,
                text=inputs["encoder_hidden_states"],
                noise_scheduler=parts.scheduler,
                generator=step_generator(0, i, 0, dev),
                added_cond_kwargs=inputs.get("added_cond_kwargs"),
            )
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return _time_steps(step, dev, warmup, steps)
