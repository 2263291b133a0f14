"""``stableemote bench``: seconds per training step, the original recipe against ours.

(a) original: every step runs the VAE encoder on the images and the text encoder on the
captions, then the UNet, in the precision the original used (bf16 autocast).
(b) ours: the UNet alone on cached latents and text embeddings, in the precision the
policy picks for the device.

Both use the same model, data, batch size, resolution and LoRA; timing has warm-up
steps, synchronises the device, and reports the median of the timed steps.

:func:`count_step_flops` counts the floating-point operations of one training step of each
recipe on the full-size SD 1.5 architecture (torch's FLOP counter on the meta device: no
weights, no memory), and :func:`format_flops_table` turns them into the ideal step time on
a T4 and an H100, the floor that every measured GPU figure can be read against.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig, CLIPTextModel

from stableemote_utils.data import images_to_tensor, load_emoji_dataset
from stableemote_utils.loading import load_components
from stableemote_utils.lora_peft import add_lora
from stableemote_utils.precision import choose_dtype, dtype_name, pick_device
from stableemote_utils.presets import get_preset
from stableemote_utils.text import tokenize
from stableemote_utils.tiny_model import sd15_config
from stableemote_utils.training import step_generator, training_loss
from stableemote_utils.vae import encode_to_latent_dist

# Peak dense tensor-core throughput, from the vendors' data sheets.
T4_FP16_TFLOPS = 65.0
H100_BF16_DENSE_TFLOPS = 989.0


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
    captions = [e.caption for e in examples]

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
            pixels=pixels,
            captions=captions,
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


def count_step_flops(
    batch_size: int = 8, resolution_px: int = 256, rank: int = 4
) -> list[StepFlops]:
    """Count one training step of each recipe on the full-size SD 1.5 architecture.

    The models are built from SD 1.5's configs on the meta device and run under
    ``torch.utils.flop_counter.FlopCounterMode``: shapes only, so it takes seconds and no
    memory. The UNet step is a forward and a backward with a rank-``rank`` LoRA (frozen
    weights get no weight gradients); the original recipe adds the VAE encoder on the
    ``(B, 3, H, W)`` images and the text encoder on ``(B, 77)`` token ids, without gradients.

    Returns:
        ``[original, ours]``.
    """

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(sd15_config("unet"))
        vae = AutoencoderKL.from_config(sd15_config("vae"))
        text_config = {k: v for k, v in sd15_config("text_encoder").items() if k != "architectures"}
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
        for module in (vae, text_encoder):
            module.requires_grad_(False)
        add_lora(unet, rank)
        b, side = batch_size, resolution_px // 8
        pixels = torch.empty(b, 3, resolution_px, resolution_px)
        ids = torch.zeros(b, 77, dtype=torch.long)
        latents = torch.empty(b, unet.config.in_channels, side, side)
        text = torch.empty(b, 77, unet.config.cross_attention_dim)
        timesteps = torch.zeros(b, dtype=torch.long)

        def count(fn) -> float:
            with FlopCounterMode(display=False) as counter:
                fn()
            return float(counter.get_total_flops())

        def unet_step() -> None:
            pred = unet(latents, timesteps, encoder_hidden_states=text).sample
            pred.float().pow(2).mean().backward()

        with torch.no_grad():
            vae_flops = count(lambda: vae.encode(pixels).latent_dist.mean)
            text_flops = count(lambda: text_encoder(ids)[0])
        unet_flops = count(unet_step)
    return [
        StepFlops("original: VAE + CLIP every step", vae_flops, text_flops, unet_flops),
        StepFlops("ours: cached latents + text", 0.0, 0.0, unet_flops),
    ]


def format_flops_table(rows: list[StepFlops], batch_size: int, resolution_px: int) -> str:
    """The FLOP counts and the ideal step times they allow on a T4 (fp16) and an H100 (bf16)."""
    lines = [
        f"full-size SD 1.5, one training step, batch {batch_size}, {resolution_px} px "
        "(TFLOP; a multiply-add counts 2)",
        f"{'recipe':<34} {'VAE enc':>8} {'CLIP':>6} {'UNet f+b':>9} {'total':>7} "
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


def _bench_setting(p, dev, dtype, original, pixels, captions, warmup, steps) -> tuple[float, float]:
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
    ids = tokenize(parts.tokenizer, captions).to(dev)
    scale = parts.vae.config.scaling_factor

    def encode():
        with torch.no_grad(), torch.autocast(**autocast):
            d = encode_to_latent_dist(parts.vae, pixels)
            return d.mean * scale, d.std * scale, parts.text_encoder(ids)[0]

    cached = encode()

    def step(i: int) -> None:
        mean, std, text = encode() if original else cached
        with torch.autocast(**autocast):
            loss = training_loss(
                unet,
                mean,
                std,
                text=text,
                noise_scheduler=parts.scheduler,
                generator=step_generator(0, i, 0, dev),
            )
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return _time_steps(step, dev, warmup, steps)
