"""The ``tiny`` models: Stable Diffusion 1.5's and SDXL's architectures at small size, built offline.

It is written to disk in the same folder layout as the Hub repo
``stable-diffusion-v1-5/stable-diffusion-v1-5`` (``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``, ``model_index.json``) so that the
same ``from_pretrained`` calls load either. Weights are random but deterministic
(same seed, same weights). The tokenizer is the real CLIP BPE tokenizer.

TinyEmote-XL's architecture (:func:`build_tiny_xl_model`) is written the same way in the
layout of ``stabilityai/stable-diffusion-xl-base-1.0`` (``text_encoder_2/``,
``tokenizer_2/`` besides), for ``StableDiffusionXLPipeline.from_pretrained``.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

import torch

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.files import read_marker, staged_folder
from stableemote_utils.notices import no_known_notices
from stableemote_utils.presets import (
    cache_dir,
    random_sd15_dir,
    random_sdxl_dir,
    tiny_model_dir,
    tiny_xl_model_dir,
)

CONFIG_DIR = Path(__file__).parent / "configs"
TINY_SEED = 0
# Bump when the tiny architecture changes, so stale cached builds are rebuilt.
TINY_BUILD_VERSION = "2"
SD15_RANDOM_BUILD_VERSION = "1"
SDXL_RANDOM_BUILD_VERSION = "1"
CLIP_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
# Wheels that ship the MIT-licensed CLIP vocabulary (their code is never imported).
_VOCAB_WHEELS = ("open_clip_torch", "clip-anytorch")
_OPEN_CLIP_PIN = "open_clip_torch==3.3.0"
CLIP_MAX_LENGTH = 77
# Number of BPE merges in CLIP's vocabulary: 49,408 tokens = 256 bytes x 2 + merges + 2 specials.
_CLIP_NUM_MERGES = 49152 - 256 - 2

TINY_UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "attention_head_dim": 8,
    "cross_attention_dim": 64,
    "norm_num_groups": 8,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "act_fn": "silu",
}
TINY_VAE_CONFIG = {
    "sample_size": 64,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [16, 32, 32, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "scaling_factor": 0.18215,
}
TINY_TEXT_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": CLIP_MAX_LENGTH,
    "projection_dim": 64,
    "hidden_act": "quick_gelu",
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}


def sd15_config(component: str) -> dict:
    """SD 1.5's published config for ``"unet"``, ``"vae"``, ``"text_encoder"`` or ``"scheduler"``."""
    with open(CONFIG_DIR / f"sd15_{component}.json") as f:
        return json.load(f)


def sdxl_config(component: str) -> dict:
    """SDXL base 1.0's published config for ``"unet"``, ``"vae"``, ``"text_encoder"``,
    ``"text_encoder_2"`` or ``"scheduler"``."""
    with open(CONFIG_DIR / f"sdxl_{component}.json") as f:
        return json.load(f)


def _bytes_to_unicode() -> dict[int, str]:
    """The byte-to-character table of byte-level BPE (GPT-2 and CLIP).

    Printable bytes stand for themselves; the others are moved to code points from 256
    up, so that every byte has a visible character and no whitespace or control codes
    appear in the vocabulary.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    # Insertion order matters: the vocabulary lists the printable bytes first.
    return table


def _vocab_from_installed_wheels() -> Path | None:
    for dist in _VOCAB_WHEELS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            for f in metadata.files(dist) or []:
                if f.name == CLIP_VOCAB_FILE:
                    path = Path(f.locate())
                    if path.exists():
                        return path
    return None


def find_clip_vocab(cache: str | os.PathLike | None = None) -> Path:
    """Locate CLIP's BPE vocabulary file (``bpe_simple_vocab_16e6.txt.gz``, MIT licence).

    It ships inside the ``open_clip_torch`` wheel. That package depends on torchvision,
    so it is installed with ``--no-deps`` and only its data file is read. If it is not
    installed, the wheel is fetched from PyPI with ``pip download --no-deps`` into the
    cache and the file is taken out of it.
    """
    found = _vocab_from_installed_wheels()
    if found is not None:
        return found

    cache = Path(cache or cache_dir())
    target = cache / CLIP_VOCAB_FILE
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
        proc = subprocess.run(cmd + ["-d", tmp, _OPEN_CLIP_PIN], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise StableEmoteError(
                "The tiny preset needs CLIP's BPE vocabulary, which ships inside the "
                f"open_clip_torch wheel, and it is not installed. Install it without its "
                f"dependencies (it would pull torchvision): pip install --no-deps "
                f"'{_OPEN_CLIP_PIN}' (pip said: {proc.stderr.strip()[-300:]})"
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            name = next(n for n in zf.namelist() if n.endswith(CLIP_VOCAB_FILE))
            partial = target.with_suffix(".partial")
            partial.write_bytes(zf.read(name))
            partial.replace(target)
    return target


def write_clip_tokenizer(folder: str | os.PathLike) -> Path:
    """Write SD 1.5's CLIP tokenizer (vocab.json, merges.txt, configs) into ``folder``.

    Load it with ``CLIPTokenizer.from_pretrained(folder)``; it gives the same ids as the
    tokenizer in the Hub repo (``"a photo of a cat"`` ->
    ``[49406, 320, 1125, 539, 320, 2368, 49407]``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(find_clip_vocab(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : _CLIP_NUM_MERGES + 1]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    assert len(vocab) == TINY_TEXT_CONFIG["vocab_size"], len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    specials = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    config = dict(specials, tokenizer_class="CLIPTokenizer", model_max_length=CLIP_MAX_LENGTH)
    config["do_lower_case"] = True
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


def build_sd15_components(seed: int = 0):
    """Build the full-size SD 1.5 UNet, VAE and text encoder with random weights (CPU).

    Uses the published configs kept in ``stableemote_utils/configs``. Takes about 4 GB
    of memory and tens of seconds: used to check shapes, parameter counts and LoRA
    layouts of the real model without downloading it.

    Returns:
        ``(unet, vae, text_encoder)``; the UNet has 859,520,964 parameters.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(sd15_config("unet"))
    vae = AutoencoderKL.from_config(sd15_config("vae"))
    text_config = {k: v for k, v in sd15_config("text_encoder").items() if k != "architectures"}
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    return unet, vae, text_encoder


def ensure_random_sd15(folder: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """The full-size SD 1.5 architecture with random weights, as a local model folder.

    Built once (tens of seconds, ~2.2 GB on disk: the weights are stored in fp16 and load
    in any dtype) from the published configs with :func:`build_sd15_components`, the real
    CLIP tokenizer and SD 1.5's PNDM scheduler, in the Hub's folder layout, so that the
    ``sd15-random`` preset runs the real-size path (training, resume, compare, adapter
    files, bench) on a CPU without a download. It draws noise: it is for shapes, memory
    and time, not pictures.
    """
    from transformers import CLIPTokenizer

    with no_known_notices():  # the first import of the pipeline module says them
        from diffusers import PNDMScheduler, StableDiffusionPipeline

    folder = Path(folder or random_sd15_dir())
    marker = {"build_version": SD15_RANDOM_BUILD_VERSION, "seed": seed}
    if read_marker(folder / "STABLEEMOTE_SD15_RANDOM") == marker:
        return folder
    with staged_folder(folder) as staging:
        generator_state = torch.random.get_rng_state()
        unet, vae, text_encoder = build_sd15_components(seed)
        torch.random.set_rng_state(generator_state)
        tokenizer = CLIPTokenizer.from_pretrained(
            write_clip_tokenizer(staging.with_name("_tokenizer"))
        )
        pipe = StableDiffusionPipeline(
            vae=vae.half(),
            text_encoder=text_encoder.half(),
            tokenizer=tokenizer,
            unet=unet.half(),
            scheduler=PNDMScheduler.from_config(sd15_config("scheduler")),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(staging, safe_serialization=True)
        del pipe, unet, vae, text_encoder
        (staging / "STABLEEMOTE_SD15_RANDOM").write_text(json.dumps(marker) + "\n")
    return folder


def build_sdxl_components(seed: int = 0, parts=("unet", "vae", "text_encoder", "text_encoder_2")):
    """Build SDXL's full-size parts with random weights (CPU) from the published configs.

    Used to check shapes, parameter counts and LoRA layouts of the real model without a
    download. The UNet alone is 2,567,463,684 parameters (10.3 GB in fp32), so ask only
    for the parts you need.

    Returns:
        ``{part: module}`` for each of ``parts``, in that order, each seeded from ``seed``.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def text(component: str, cls):
        config = {k: v for k, v in sdxl_config(component).items() if k != "architectures"}
        return cls(CLIPTextConfig(**config))

    builders = {
        "unet": lambda: UNet2DConditionModel.from_config(sdxl_config("unet")),
        "vae": lambda: AutoencoderKL.from_config(sdxl_config("vae")),
        "text_encoder": lambda: text("text_encoder", CLIPTextModel),
        "text_encoder_2": lambda: text("text_encoder_2", CLIPTextModelWithProjection),
    }
    built = {}
    for i, part in enumerate(parts):
        torch.manual_seed(seed + i)
        built[part] = builders[part]()
    return built


def write_sdxl_tokenizers(folder: str | os.PathLike) -> None:
    """SDXL's two tokenizers in ``folder/tokenizer`` and ``folder/tokenizer_2``: CLIP's BPE,
    the second padding with ``"!"`` as SDXL's second tokenizer does."""
    folder = Path(folder)
    for sub, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        target = write_clip_tokenizer(folder / sub)
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            config = json.loads((target / name).read_text())
            config["pad_token"] = pad
            (target / name).write_text(json.dumps(config, indent=2))


def ensure_random_sdxl(folder: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """The full-size SDXL architecture with random weights, as a local model folder.

    Built once from the published configs (a few minutes; ~7 GB on disk in fp16, loadable
    in any dtype), one part at a time so that at most one part is in memory, in the Hub's
    folder layout (``StableDiffusionXLPipeline.from_pretrained`` loads it), so that the
    ``sdxl-random`` preset runs the real-size path on a CPU without a download. It draws
    noise: it is for shapes, memory and time, not pictures.
    """
    import diffusers
    from diffusers import EulerDiscreteScheduler

    folder = Path(folder or random_sdxl_dir())
    marker = {"build_version": SDXL_RANDOM_BUILD_VERSION, "seed": seed}
    if read_marker(folder / "STABLEEMOTE_SDXL_RANDOM") == marker:
        return folder
    classes = {
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    }
    with staged_folder(folder) as staging:
        generator_state = torch.random.get_rng_state()
        for i, part in enumerate(classes):
            module = build_sdxl_components(seed + i, parts=(part,))[part]
            module.half().save_pretrained(staging / part, safe_serialization=True)
            del module
        torch.random.set_rng_state(generator_state)
        write_sdxl_tokenizers(staging)
        EulerDiscreteScheduler.from_config(sdxl_config("scheduler")).save_pretrained(
            staging / "scheduler"
        )
        index = {
            "_class_name": "StableDiffusionXLPipeline",
            "_diffusers_version": diffusers.__version__,
            "force_zeros_for_empty_prompt": True,
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            **classes,
        }
        (staging / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        (staging / "STABLEEMOTE_SDXL_RANDOM").write_text(json.dumps(marker) + "\n")
    return folder


def build_tiny_model(
    folder: str | os.PathLike,
    seed: int = TINY_SEED,
    unet_config: dict | None = None,
    vae_config: dict | None = None,
) -> Path:
    """Build the tiny SD model into ``folder`` (deterministic, a few seconds, no network).

    The folder is written next to its final place and renamed into it, so an
    interrupted build never leaves a half-written model behind. ``unet_config`` and
    ``vae_config`` replace the default tiny sizes (TinyEmote's pretraining starts from
    a larger random UNet); the text encoder is always the same seeded one.

    Returns:
        The folder, loadable with ``StableDiffusionPipeline.from_pretrained``.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with no_known_notices():  # the first import of the pipeline module says them
        from diffusers import (
            AutoencoderKL,
            PNDMScheduler,
            StableDiffusionPipeline,
            UNet2DConditionModel,
        )

    folder = Path(folder)
    with staged_folder(folder) as staging:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT_CONFIG))
        unet = UNet2DConditionModel(**(unet_config or TINY_UNET_CONFIG))
        vae = AutoencoderKL(**(vae_config or TINY_VAE_CONFIG))
        torch.random.set_rng_state(generator_state)
        scheduler = PNDMScheduler.from_config(sd15_config("scheduler"))
        tokenizer = CLIPTokenizer.from_pretrained(
            write_clip_tokenizer(staging.with_name("_tokenizer"))
        )
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(staging, safe_serialization=True)
        (staging / "STABLEEMOTE_TINY").write_text(
            json.dumps({"build_version": TINY_BUILD_VERSION, "seed": seed}) + "\n"
        )
    return folder


def ensure_tiny_model(folder: str | os.PathLike | None = None) -> Path:
    """Return the tiny model's folder, building it first if it is missing or stale."""

    folder = Path(folder or tiny_model_dir())
    if read_marker(folder / "STABLEEMOTE_TINY").get("build_version") == TINY_BUILD_VERSION:
        return folder
    return build_tiny_model(folder)


TINYEMOTE_VAE_CONFIG = dict(TINY_VAE_CONFIG, block_out_channels=[16, 32, 64, 64])


TINYEMOTE_UNET_CONFIG = dict(TINY_UNET_CONFIG, block_out_channels=[64, 128, 128])


# TinyEmote-XL: SDXL's layout at toy size. SDXL base has no attention at the highest
# resolution and more transformer layers deeper ((1, 2, 10) over three levels, the middle
# block as deep as the last); here (-, 1, 2) and a middle block of 2. Cross-attention
# reads both text encoders' penultimate states side by side (64 + 64 = 128, SDXL: 768 +
# 1280 = 2048), and the pooled text vector of encoder 2 (64) joins the six time ids,
# each embedded in 32 sinusoidal features: 6 * 32 + 64 = 256 (SDXL: 6 * 256 + 1280).
TINY_XL_TIME_ID_DIM = 32
TINY_XL_BUILD_VERSION = "1"
TINY_XL_UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64, 96],  # 3.6 M parameters
    "layers_per_block": 1,
    "transformer_layers_per_block": [1, 1, 2],
    "attention_head_dim": [2, 2, 3],  # heads, as SDXL's config counts them (head size 32)
    "cross_attention_dim": TINY_TEXT_CONFIG["hidden_size"] * 2,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": TINY_XL_TIME_ID_DIM,
    "projection_class_embeddings_input_dim": 6 * TINY_XL_TIME_ID_DIM
    + TINY_TEXT_CONFIG["projection_dim"],
    "norm_num_groups": 8,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "act_fn": "silu",
}
# TinyEmote-XL's UNet: the layout above as wide as TinyEmote's UNet (64, 128, 128), with
# 32-channel heads. 8.2 M parameters, 16.3 MB in fp16; TINY_XL_UNET_CONFIG stays narrow for
# the random ``tiny-xl-random`` model of the fast tests.
TINYEMOTE_XL_UNET_CONFIG = dict(
    TINY_XL_UNET_CONFIG, block_out_channels=[64, 128, 128], attention_head_dim=[2, 4, 4]
)
# SDXL's VAE has its own scaling factor (0.13025); the trained TinyEmote-XL measures its own.
TINY_XL_VAE_CONFIG = dict(TINY_VAE_CONFIG, scaling_factor=0.13025)
# The scheduler settings SDXL base 1.0 publishes (scheduler/scheduler_config.json).
SDXL_SCHEDULER_CONFIG = sdxl_config("scheduler")


def tiny_xl_text_encoders(seed: int = TINY_SEED):
    """TinyEmote-XL's two text encoders with random weights (seeded).

    Returns:
        ``(text_encoder, text_encoder_2)``: a ``CLIPTextModel`` and a
        ``CLIPTextModelWithProjection``, both of TinyEmote's text size (hidden 64, 2
        layers); ids ``(B, 77)`` -> hidden states ``(B, 77, 64)``, and for encoder 2 a
        pooled, projected ``text_embeds`` ``(B, 64)``.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    first = CLIPTextModel(CLIPTextConfig(**TINY_TEXT_CONFIG))
    second = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_TEXT_CONFIG))
    torch.random.set_rng_state(generator_state)
    return first, second


def save_xl_pipeline(
    folder: Path, unet, vae, text_encoder, text_encoder_2, tokenizer_dir: Path
) -> Path:
    """Write an SDXL pipeline of these modules in the diffusers layout, SDXL's scheduler with them.

    Both tokenizers are CLIP's (``tokenizer_dir``); ``force_zeros_for_empty_prompt`` is on,
    as in SDXL base: with no negative prompt the unconditional embeddings are zeros.
    """
    from transformers import CLIPTokenizer

    with no_known_notices():  # the first import of the pipeline module says them
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_xl_model(
    folder: str | os.PathLike,
    seed: int = TINY_SEED,
    unet_config: dict | None = None,
    vae_config: dict | None = None,
) -> Path:
    """Build TinyEmote-XL's architecture with random weights into ``folder`` (seconds, no network).

    SDXL's layout at toy size (:data:`TINY_XL_UNET_CONFIG`): a ``UNet2DConditionModel``
    with the ``text_time`` embedding, an ``AutoencoderKL``, a ``CLIPTextModel`` and a
    ``CLIPTextModelWithProjection``, two CLIP tokenizers and SDXL's Euler scheduler. The
    folder is staged and renamed into place, like :func:`build_tiny_model`.

    Returns:
        The folder, loadable with ``StableDiffusionXLPipeline.from_pretrained``.
    """
    with no_known_notices():
        from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = Path(folder)
    with staged_folder(folder) as staging:
        text_encoder, text_encoder_2 = tiny_xl_text_encoders(seed)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed + 1)
        unet = UNet2DConditionModel(**(unet_config or TINY_XL_UNET_CONFIG))
        vae = AutoencoderKL(**(vae_config or TINY_XL_VAE_CONFIG))
        torch.random.set_rng_state(generator_state)
        tokenizer_dir = write_clip_tokenizer(staging.with_name("_tokenizer"))
        save_xl_pipeline(
            staging,
            unet,
            vae,
            text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer_dir=tokenizer_dir,
        )
        (staging / "STABLEEMOTE_TINY_XL").write_text(
            json.dumps({"build_version": TINY_XL_BUILD_VERSION, "seed": seed}) + "\n"
        )
    return folder


def ensure_tiny_xl_model(folder: str | os.PathLike | None = None) -> Path:
    """Return the random TinyEmote-XL architecture's folder (``tiny-xl-random``), built if missing or stale."""
    folder = Path(folder or tiny_xl_model_dir())
    marker = read_marker(folder / "STABLEEMOTE_TINY_XL")
    if marker.get("build_version") == TINY_XL_BUILD_VERSION:
        return folder
    return build_tiny_xl_model(folder)
