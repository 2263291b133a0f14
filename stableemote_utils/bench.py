"""``stableemote bench``: seconds per training step, the original recipe against ours.

(a) original: every step runs the VAE encoder on the images and the text encoder on the
captions, then the UNet, in the precision the original used (bf16 autocast).
(b) ours: the UNet alone on cached latents and text embeddings, in the precision the
policy picks for the device.

Both use the same model, data, batch size, resolution and LoRA; timing has warm-up
steps, synchronises the device, and reports the median of the timed steps.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass

import torch

from stableemote_utils.data import images_to_tensor, load_emoji_dataset
from stableemote_utils.loading import load_components
from stableemote_utils.lora import add_lora
from stableemote_utils.precision import choose_dtype, dtype_name, pick_device
from stableemote_utils.presets import get_preset
from stableemote_utils.text import tokenize
from stableemote_utils.training import step_generator, training_loss
from stableemote_utils.vae import encode_to_latent_dist


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
        sec, mem = _bench_setting(p, dev, dtype, original, pixels, captions, warmup, steps)
        rows.append(BenchRow(setting, dtype_name(dtype), sec, mem))
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    for row in rows:
        row.ratio_to_original = rows[0].seconds_per_step / row.seconds_per_step
    return rows


def format_table(rows: list[BenchRow], device: str, batch_size: int, resolution_px: int) -> str:
    """The bench result as a plain-text table."""
    mem_label = "peak GPU MB" if device.startswith("cuda") else "peak RSS MB"
    lines = [
        f"device: {device}, batch {batch_size}, {resolution_px} px",
        f"{'setting':<34} {'precision':>9} {'s/step':>9} {mem_label:>12} {'speed-up':>9}",
    ]
    for r in rows:
        lines.append(
            f"{r.setting:<34} {r.precision:>9} {r.seconds_per_step:>9.4f} {r.peak_memory_mb:>12.0f} "
            f"{r.ratio_to_original:>8.2f}x"
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
    ac = parts.scheduler.alphas_cumprod.to(dev)
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
            loss = training_loss(unet, mean, std, text, ac, step_generator(0, i, 0, dev))
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return _time_steps(step, dev, warmup, steps)
