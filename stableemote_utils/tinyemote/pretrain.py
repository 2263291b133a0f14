"""TinyEmote: pretrain the tiny SD-architecture model from scratch on the offline emoji.

Five stages, each with this repo's own code, deterministic on one machine:

1. **VAE.** A small ``AutoencoderKL`` (4 latent channels, 8x smaller per side, like SD
   1.5's) learns to reconstruct 64 px emoji of both offline styles (Noto and OpenMoji,
   training names only). Loss: L1 on pixels plus a tiny KL term, as in SD's VAE. Its
   ``scaling_factor`` is then set so the scaled latents have unit standard deviation
   (SD 1.5's 0.18215 was chosen the same way). ``vae_from`` reuses an earlier VAE instead.
2. **Tiny CLIP.** A small ``CLIPModel`` is trained contrastively on emoji and their
   names (:mod:`stableemote_utils.tinyemote.clip`); its text tower becomes the text encoder.
3. **Training data.** The Noto training split, with every emoji that is not a flag
   repeated ``balance_repeats`` times, so the ~260 flags do not set the model's prior.
   With ``openmoji_word``, the OpenMoji drawings of the training names join it once
   each, captioned with that word before the name ("An emoji of openmoji red heart"):
   the model then knows the style under that word and draws Noto without it, as SD 1.5
   knows many styles by name from its web data.
4. **UNet.** A small ``UNet2DConditionModel`` is trained from random weights (every
   weight, :func:`stableemote_utils.training.train` with ``mode="full"``; or continued
   from an earlier UNet with ``unet_from``) on the cached
   latents of that data, conditioned on the frozen tiny CLIP text encoder's hidden
   states of "An emoji of {name}". Captions are dropped 10% of the time so
   classifier-free guidance works.
5. **Export.** UNet, VAE, text encoder and the tiny CLIP are written as fp16
   safetensors in the diffusers layout (the CLIP in ``clip/``), with a model card
   holding the metrics of :mod:`stableemote_utils.tinyemote.evaluate`.

Held-out emoji (by name) are in none of the stages.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from stableemote_utils.data import (
    build_font_folder,
    images_to_tensor,
    is_heldout,
    load_emoji_dataset,
)
from stableemote_utils.emoji_fonts import font_rows
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.files import staged_folder
from stableemote_utils.precision import pick_device
from stableemote_utils.presets import get_preset
from stableemote_utils.tiny_model import (
    TINYEMOTE_UNET_CONFIG,
    TINYEMOTE_VAE_CONFIG,
    build_tiny_model,
    write_clip_tokenizer,
)
from stableemote_utils.tinyemote.clip import ClipTrainConfig, clip_stage, text_tower
from stableemote_utils.training import TrainConfig, batch_indices, step_generator, train
from stableemote_utils.training_setup import check_output_dir
from stableemote_utils.vae import psnr

VAE_KL_WEIGHT = 1e-6
VAE_STYLES = ("noto", "openmoji")


@dataclass
class PretrainConfig:
    """Settings of ``stableemote pretrain-tiny``.

    The defaults build every stage from scratch on the Noto data; the shipped weights'
    own command (a continuation with ``unet_from``, ``openmoji_word="openmoji"``) is in
    their ``pretrain.json`` and model card.

    Attributes:
        output_dir: where the stages and the final model are written.
        vae_steps, vae_batch_size, vae_learning_rate: the VAE stage (AdamW, cosine).
        unet_steps, unet_batch_size, unet_learning_rate: the UNet stage (AdamW, cosine).
        caption_dropout: share of captions replaced by "" (for classifier-free guidance).
        min_snr_gamma: Min-SNR loss weighting of the UNet stage.
        seed: one seed for everything.
        threads: CPU threads (fixed, so that runs on one machine repeat bit for bit).
        device: ``None`` picks CUDA when available, else CPU.
        max_examples: use only this many images per style and split (quick tests).
        clip_steps: steps of the tiny CLIP stage (batch 256 names).
        balance_repeats: how many times each emoji that is not a flag appears in the
            UNet's data (flags once), so that flags do not dominate the prior.
        vae_from: a diffusers VAE folder to reuse instead of training the VAE stage
            (e.g. the shipped one, ``stableemote_utils/weights/tinyemote/vae``).
        unet_from: a diffusers UNet folder to start the UNet stage from instead of random
            weights (continuing an earlier TinyEmote on the new text encoder: far fewer
            steps than from scratch, where CPU time is short).
        clip_from: a saved tiny ``CLIPModel`` folder (e.g. the shipped
            ``stableemote_utils/weights/tinyemote/clip``) to reuse instead of training the
            tiny CLIP stage; its held-out retrieval is measured again.
        openmoji_word: if set, the OpenMoji drawings of the training names join the
            UNet's data once each, captioned with this word before the name (see stage 3).
        family: ``"sd15"`` builds TinyEmote; ``"sdxl"`` builds TinyEmote-XL
            (:mod:`stableemote_utils.tinyemote.pretrain_xl`) on the same stages 1-3.
        checkpoint_every: the UNet stage's checkpoint interval, in steps.
    """

    output_dir: str = "outputs/tinyemote"
    vae_steps: int = 3000
    vae_batch_size: int = 16
    vae_learning_rate: float = 1e-3
    unet_steps: int = 6000
    unet_batch_size: int = 32
    unet_learning_rate: float = 5e-4
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    seed: int = 0
    threads: int = 2
    device: str | None = None
    max_examples: int | None = None
    clip_steps: int = 800
    balance_repeats: int = 3
    vae_from: str | None = None
    unet_from: str | None = None
    clip_from: str | None = None
    openmoji_word: str | None = None
    family: str = "sd15"
    checkpoint_every: int = 500


def vae_training_pixels(
    resolution_px: int, heldout_fraction: float, limit: int | None = None
) -> torch.Tensor:
    """The VAE's training images, both styles, training names only: ``(N, 3, H, W)``."""

    images = []
    for style in VAE_STYLES:
        examples = load_emoji_dataset(
            style, resolution_px, split="train", heldout_fraction=heldout_fraction, limit=limit
        )
        images += [e.image for e in examples]
    return images_to_tensor(images)


def train_vae(
    vae: torch.nn.Module,
    pixels: torch.Tensor,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    device: torch.device,
    log_every: int = 100,
) -> list[float]:
    """Train an ``AutoencoderKL`` to reconstruct ``pixels`` ``(N, 3, H, W)`` in [-1, 1].

    Each step draws its batch and its posterior sample from generators seeded by the
    step number, so a run repeats exactly. Loss per step: mean L1 on pixels plus
    ``VAE_KL_WEIGHT`` times the KL to N(0, 1) summed per image over pixel count.

    Returns:
        The loss of every step.
    """
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    vae.to(device).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = get_scheduler(
        "cosine", optimizer, num_warmup_steps=min(100, steps // 10), num_training_steps=steps
    )
    losses: list[float] = []
    pixels_per_image = pixels[0].numel()
    bar = tqdm(range(steps), desc="vae", unit="step")
    for step in bar:
        idx = batch_indices(step, batch_size, len(pixels), seed)
        x = pixels[idx].to(device)
        g = step_generator(seed, step, device=device)
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g, device=device)
        recon = vae.decode(z).sample
        kl = dist.kl().mean() / pixels_per_image
        loss = F.l1_loss(recon, x) + VAE_KL_WEIGHT * kl
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise StableEmoteError(
                f"The VAE loss became {losses[-1]} at step {step}; lower --vae-learning-rate."
            )
        if (step + 1) % log_every == 0:
            bar.set_postfix(l1=f"{sum(losses[-log_every:]) / log_every:.4f}")
    vae.eval().requires_grad_(False)
    return losses


@torch.no_grad()
def latent_scaling_factor(
    vae: torch.nn.Module, pixels: torch.Tensor, seed: int, batch: int = 64
) -> float:
    """``1 / std`` of posterior samples of ``pixels``: scaled latents get unit variance."""
    dev = next(vae.parameters()).device
    g = torch.Generator(device=dev).manual_seed(seed)
    samples = []
    for i in range(0, len(pixels), batch):
        dist = vae.encode(pixels[i : i + batch].to(dev)).latent_dist
        samples.append(dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g, device=dev))
    return float(1.0 / torch.cat(samples).float().std())


@torch.no_grad()
def reconstruction_psnr(vae: torch.nn.Module, pixels: torch.Tensor, batch: int = 64) -> float:
    """Mean PSNR (dB) of ``pixels`` ``(N, 3, H, W)`` through the VAE (encode mean, decode)."""
    dev = next(vae.parameters()).device
    scores = []
    for i in range(0, len(pixels), batch):
        x = pixels[i : i + batch].to(dev)
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample
        # Clamped: the decoder can overshoot [-1, 1], and a picture shows only that range.
        scores.append(psnr(x.cpu(), recon.cpu().clamp(-1, 1)))
    return float(torch.cat(scores).mean())


def export_fp16(model_dir: Path, target: Path) -> Path:
    """Copy a diffusers model folder, storing UNet, VAE, text encoder(s) (and tiny CLIP) in fp16.

    fp16 halves the size; the loaders upcast to the dtype asked for. The tokenizer is
    left out (it is written from CLIP's vocabulary when the model is installed). A
    ``clip/`` folder (the tiny ``CLIPModel``), if present, is exported too.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPModel, CLIPTextModel, CLIPTextModelWithProjection

    with staged_folder(target) as staging:
        shutil.copytree(model_dir / "scheduler", staging / "scheduler")
        shutil.copy(model_dir / "model_index.json", staging / "model_index.json")
        parts = [("unet", UNet2DConditionModel), ("vae", AutoencoderKL)]
        parts += [("text_encoder", CLIPTextModel)]
        if (model_dir / "text_encoder_2" / "config.json").exists():  # SDXL's layout
            parts.append(("text_encoder_2", CLIPTextModelWithProjection))
        if (model_dir / "clip" / "config.json").exists():
            parts.append(("clip", CLIPModel))
        for sub, cls in parts:
            kind = "dtype" if sub.startswith(("text_encoder", "clip")) else "torch_dtype"
            module = cls.from_pretrained(model_dir, subfolder=sub, **{kind: torch.float16})
            module.save_pretrained(staging / sub, safe_serialization=True)
            forget_build_path(staging / sub / "config.json")
    return target


def forget_build_path(config_file: Path) -> None:
    """Drop ``_name_or_path`` (the folder the model was loaded from here) from a config.

    diffusers writes it into ``config.json``; in shipped weights it would name a folder of
    the machine that built them, which means nothing anywhere else.
    """
    config = json.loads(config_file.read_text())
    if config.pop("_name_or_path", None) is not None:
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def is_flag(name: str, char: str = "") -> bool:
    """Whether an emoji is a flag: regional-indicator pair, tag flag, or a name "flag...".

    The first rule of :func:`stableemote_utils.tinyemote.evaluate.category_of`.
    """
    regional = all(0x1F1E6 <= ord(c) <= 0x1F1FF for c in char) if char else False
    return regional or char.startswith("\U0001f3f4\U000e0067") or name.lower().startswith("flag")


def check_openmoji_word(word: str | None) -> None:
    """Refuse an ``openmoji_word`` that is blank or holds a ``{`` (it goes into captions).

    Raises:
        StableEmoteError: one line with the word and an example of a good one.
    """
    if word is not None and (not word.strip() or "{" in word):
        raise StableEmoteError(f"--openmoji-word {word!r}: give a plain word, e.g. openmoji.")


def balanced_noto_folder(
    folder: Path,
    repeats: int,
    openmoji_word: str | None = None,
    heldout_fraction: float = 0.05,
) -> Path:
    """An ``imagefolder`` of the Noto emoji in which every non-flag row appears ``repeats`` times.

    Rows are written in passes (all emoji, then the non-flags again, ...), so the order
    is fixed and the held-out split (by name) is unchanged. Images are copied once.
    With ``openmoji_word``, one more pass adds the OpenMoji drawing of every name that is
    not held out (by ``heldout_fraction``), as ``openmoji-<file>`` with the text
    ``"<openmoji_word> <name>"``. Rows whose new text would itself fall in the held-out
    split are left out too, so that split holds only names never seen in training.
    """
    if (folder / "metadata.jsonl").exists():
        return folder
    check_openmoji_word(openmoji_word)
    source = build_font_folder("noto")
    rows = font_rows(source)
    extra: list[dict] = []
    if openmoji_word:
        openmoji = build_font_folder("openmoji")
        for row in font_rows(openmoji):
            text = f"{openmoji_word.strip()} {row['text']}"
            # Out when the name is held out, and when the captioned text would land in the
            # folder's held-out split: that split is for names never seen in training.
            if not any(is_heldout(t, heldout_fraction) for t in (row["text"], text)):
                extra.append({**row, "file_name": f"openmoji-{row['file_name']}", "text": text})
    with staged_folder(folder) as staging:
        staging.mkdir()
        for row in rows:
            shutil.copy(source / row["file_name"], staging / row["file_name"])
        for row in extra:
            original = row["file_name"].removeprefix("openmoji-")
            shutil.copy(openmoji / original, staging / row["file_name"])
        with open(staging / "metadata.jsonl", "w", encoding="utf-8") as f:
            for rep in range(max(1, repeats)):
                for row in rows:
                    if rep == 0 or not is_flag(row["text"], row.get("emoji", "")):
                        f.write(json.dumps(row, ensure_ascii=False) + "\n")
            for row in extra:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return folder


def earlier_build(unet_folder: str | Path) -> dict | None:
    """How the UNet in ``unet_folder`` was made, from the ``pretrain.json`` beside it.

    A shipped TinyEmote keeps its record next to its ``unet/`` folder; the model card
    of a UNet continued from it names those steps. ``None`` when there is no record.
    """
    found = Path(unet_folder).parent / "pretrain.json"
    if not found.exists():
        return None
    cfg = json.loads(found.read_text()).get("config", {})
    keys = ("unet_steps", "unet_batch_size", "unet_from", "openmoji_word")
    return {k: cfg.get(k) for k in keys}


def reuse_clip(
    source: str | Path, folder: Path, tokenizer_dir: str | Path, limit: int | None = None
) -> Path:
    """Copy a saved tiny ``CLIPModel`` into the CLIP stage's ``folder``, as if trained there.

    Its held-out name -> image retrieval is measured again and recorded (``seconds`` 0,
    ``reused_from``), so the pretraining record and the model card read the same.
    """
    from transformers import CLIPModel, CLIPTokenizer

    from stableemote_utils.tinyemote.clip import load_clip_pairs, retrieval

    if not (Path(source) / "config.json").exists():
        raise StableEmoteError(
            f"--clip-from {source}: no config.json there; give a folder written by "
            "CLIPModel.save_pretrained, e.g. stableemote_utils/weights/tinyemote/clip."
        )
    model = CLIPModel.from_pretrained(source, dtype=torch.float32).eval()
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    measured = retrieval(model, tokenizer, load_clip_pairs("heldout", limit))
    record = {"reused_from": str(source), "seconds": 0.0, "heldout_retrieval": {"0": measured}}
    with staged_folder(folder) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        (staging / "clip_training.json").write_text(json.dumps(record, indent=1))
    return folder


@dataclass
class SharedStages:
    """What stages 1-3 hand to the UNet stage (the same for TinyEmote and TinyEmote-XL).

    Attributes:
        out: the build's output folder.
        device: where the stages run.
        vae: the trained (or reused) ``AutoencoderKL``, fp32.
        clip_model: the tiny ``CLIPModel``; its text tower is the text encoder.
        tokenizer_dir: CLIP's tokenizer, written into the output folder.
        data_dir: the UNet's ``imagefolder`` (stage 3).
        record: the build's record so far (config, device, stage seconds, CLIP retrieval).
    """

    out: Path
    device: torch.device
    vae: torch.nn.Module
    clip_model: torch.nn.Module
    tokenizer_dir: Path
    data_dir: Path
    record: dict


def shared_stages(config: PretrainConfig) -> SharedStages:
    """Stages 1-3 (VAE, tiny CLIP, the UNet's data), each kept and skipped once finished."""
    from diffusers import AutoencoderKL

    check_openmoji_word(config.openmoji_word)  # before the VAE and CLIP stages, not after
    out = check_output_dir(config.output_dir)
    torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    preset = get_preset("tiny")
    record: dict = {"config": dataclasses.asdict(config), "device": str(device)}

    # 1. VAE (trained, or reused from an earlier build)
    vae_dir = out / "vae"
    print("stage 1/5: VAE")
    if not (vae_dir / "config.json").exists() and config.vae_from:
        vae = AutoencoderKL.from_pretrained(config.vae_from, torch_dtype=torch.float32)
        with staged_folder(vae_dir) as staging:
            vae.save_pretrained(staging, safe_serialization=True)
        record["vae_seconds"] = 0.0
        print(f"VAE reused from {config.vae_from}")
    elif not (vae_dir / "config.json").exists():
        t0 = time.perf_counter()
        pixels = vae_training_pixels(
            preset.resolution_px, preset.heldout_fraction, config.max_examples
        )
        torch.manual_seed(config.seed)
        vae = AutoencoderKL(**TINYEMOTE_VAE_CONFIG)
        losses = train_vae(
            vae,
            pixels,
            config.vae_steps,
            batch_size=config.vae_batch_size,
            learning_rate=config.vae_learning_rate,
            seed=config.seed,
            device=device,
        )
        vae.register_to_config(scaling_factor=latent_scaling_factor(vae, pixels, config.seed))
        with staged_folder(vae_dir) as staging:
            vae.to("cpu").save_pretrained(staging, safe_serialization=True)
        (out / "vae_losses.json").write_text(json.dumps(losses))
        record["vae_seconds"] = time.perf_counter() - t0
        print(f"VAE trained in {record['vae_seconds']:.0f} s, final L1 {losses[-1]:.4f}")
    vae = AutoencoderKL.from_pretrained(vae_dir)

    # 2. Tiny CLIP: its text tower is the text encoder the UNet reads
    print("stage 2/5: tiny CLIP")
    tokenizer_dir = write_clip_tokenizer(out / "tokenizer")
    clip_config = ClipTrainConfig(
        steps=config.clip_steps,
        seed=config.seed,
        max_names=config.max_examples,
    )
    if config.clip_from and not (out / "clip" / "clip_training.json").exists():
        reuse_clip(config.clip_from, out / "clip", tokenizer_dir, config.max_examples)
    clip_model, clip_record = clip_stage(out / "clip", clip_config, tokenizer_dir, device)
    record["clip_seconds"] = clip_record["seconds"]
    final = list(clip_record["heldout_retrieval"].values())[-1]  # after the last step
    record["clip_heldout_retrieval"] = final
    print(
        f"tiny CLIP: held-out name->image top-1 {final['top1']:.0%} (chance "
        f"{final['chance_top1']:.1%}), top-5 {final['top5']:.0%} (chance {final['chance_top5']:.1%})"
    )

    # 3. The UNet's data: Noto, flags not dominating
    print("stage 3/5: UNet data")
    data_name = "unet-data" if not config.openmoji_word else "unet-data-openmoji"
    data_dir = balanced_noto_folder(
        out / data_name, config.balance_repeats, config.openmoji_word, preset.heldout_fraction
    )
    return SharedStages(
        out=out,
        device=device,
        vae=vae,
        clip_model=clip_model,
        tokenizer_dir=tokenizer_dir,
        data_dir=data_dir,
        record=record,
    )


def pretrain_tiny(config: PretrainConfig, resume: bool = True) -> dict:
    """Run the five stages; return the record written to ``output_dir/pretrain.json``.

    A finished stage is kept and skipped when the command is run again (its folder is
    complete); the UNet stage resumes from its newest intact checkpoint.
    """
    started = time.perf_counter()
    stages = shared_stages(config)
    out, vae, clip_model, record = stages.out, stages.vae, stages.clip_model, stages.record
    preset = get_preset("tiny")

    # 4. UNet from scratch, on latents of the VAE and states of the tiny CLIP's text tower
    print("stage 4/5: UNet")
    start_dir = out / "start"
    if not (start_dir / "STABLEEMOTE_TINY").exists():
        build_tiny_model(start_dir, config.seed, TINYEMOTE_UNET_CONFIG, TINYEMOTE_VAE_CONFIG)
        shutil.rmtree(start_dir / "vae")
        vae.save_pretrained(start_dir / "vae", safe_serialization=True)
        shutil.rmtree(start_dir / "text_encoder")
        text_tower(clip_model).save_pretrained(start_dir / "text_encoder", safe_serialization=True)
        if config.unet_from:
            from diffusers import UNet2DConditionModel

            unet = UNet2DConditionModel.from_pretrained(config.unet_from, torch_dtype=torch.float32)
            shutil.rmtree(start_dir / "unet")
            unet.save_pretrained(start_dir / "unet", safe_serialization=True)
            print(f"UNet starts from {config.unet_from}")
    if config.unet_from:
        record["unet_from_build"] = earlier_build(config.unet_from)
    t0 = time.perf_counter()
    result = train(
        TrainConfig(
            preset="tiny",
            mode="full",
            model=str(start_dir),
            dataset=str(stages.data_dir),
            output_dir=str(out / "unet-run"),
            steps=config.unet_steps,
            batch_size=config.unet_batch_size,
            learning_rate=config.unet_learning_rate,
            lr_warmup_steps=min(200, config.unet_steps // 10),
            caption_dropout=config.caption_dropout,
            min_snr_gamma=config.min_snr_gamma,
            seed=config.seed,
            device=config.device,
            precision="fp32",
            checkpoint_every=config.checkpoint_every,
            keep_checkpoints=2,
            validate_every=1000,
            validation_prompts=("grinning face", "red heart", "cat face", "rocket"),
            heldout_limit=200 if config.max_examples is None else config.max_examples,
            max_train_examples=config.max_examples,
            log_every=50,
        ),
        resume="latest" if resume else None,
        preset=preset,
    )
    record["unet_seconds"] = time.perf_counter() - t0
    record["unet_heldout_loss"] = result.heldout

    # 5. Assemble and export
    print("stage 5/5: export")
    model_dir = out / "model-fp32"
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.copytree(start_dir, model_dir)
    shutil.rmtree(model_dir / "unet")
    shutil.copytree(out / "unet-run" / "unet", model_dir / "unet")
    clip_model.save_pretrained(model_dir / "clip", safe_serialization=True)
    export_fp16(model_dir, out / "tinyemote")
    record["seconds"] = time.perf_counter() - started
    (out / "pretrain.json").write_text(json.dumps(record, indent=1))
    return record
