"""What the demo's Generate button does, with no browser: the pictures and the adapter.

Both pictures come from one pipeline: the base model's with the adapter switched off, the
LoRA's with it on at the chosen scale, from the same prompt, seed, steps, guidance and
size. :func:`demo_generate` gives the true-size images; :func:`render_picture` one picture
as the page shows it (enlarged by :func:`display_image`) with its true-size file.
:func:`load_demo_adapter` finds an adapter (file, folder or Hub repo) and loads it.
The Gradio page over these is :mod:`stableemote_utils.cli.demo_app`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from pathlib import Path

from PIL import Image

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.lora_files import LORA_WEIGHT_NAME, read_lora_file, resolve_lora_file
from stableemote_utils.lora_peft import load_lora, set_lora_scale
from stableemote_utils.presets import is_hub_model_id
from stableemote_utils.sampling import SamplingSettings, generate

DEMO_ADAPTER_NAME = "demo"
DEFAULT_GUIDANCE = 7.5
# The demo's prompt is the typed text, used as it is.
TYPED_PROMPT = "{name}"
MAX_STEPS = 100
# torch.Generator.manual_seed takes at most 64 bits; the demo keeps to the common 32-bit range.
MAX_SEED = 2**32 - 1
# Pictures narrower than this are enlarged (by a whole factor) for display.
DISPLAY_MIN_PX = 384


def check_seed(seed) -> int:
    """The seed as an ``int`` in ``[0, MAX_SEED]``.

    Raises:
        StableEmoteError: for a seed that is not a whole number in that range.
    """
    try:
        value = float(seed)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value != int(value) or not 0 <= int(value) <= MAX_SEED:
        raise StableEmoteError(
            f"The seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}. "
            "Pick one in that range or press 'Random seed'."
        )
    return int(value)


def check_inputs(prompt: str, seed, steps) -> tuple[str, int, int]:
    """``(prompt, seed, steps)`` checked and as ``(str, int, int)``.

    Raises:
        StableEmoteError: for an empty prompt, steps outside ``[1, MAX_STEPS]`` or a seed
            outside ``[0, MAX_SEED]``.
    """
    if not str(prompt).strip():
        raise StableEmoteError("Type a prompt, e.g. 'An emoji of smiling cat'.")
    try:
        n_steps = int(steps)
    except (TypeError, ValueError):
        n_steps = 0
    if not 1 <= n_steps <= MAX_STEPS:
        raise StableEmoteError(f"Steps must be between 1 and {MAX_STEPS}, got {steps}.")
    return str(prompt), check_seed(seed), n_steps


def demo_settings(
    prompt: str, seed, *, steps, guidance: float = DEFAULT_GUIDANCE, resolution_px: int = 256
) -> SamplingSettings:
    """The page's inputs, checked (:func:`check_inputs`), as the settings of one picture:
    the typed prompt used as it is (caption template ``{name}``), one seed."""
    settings = SamplingSettings(
        prompts=(prompt,),
        seeds=(seed,),
        steps=steps,
        guidance=float(guidance),
        resolution_px=resolution_px,
        caption_template=TYPED_PROMPT,
    )
    return _checked(settings)


def _checked(settings: SamplingSettings) -> SamplingSettings:
    prompt, seed, steps = check_inputs(settings.prompts[0], settings.seeds[0], settings.steps)
    return dataclasses.replace(settings, prompts=(prompt,), seeds=(seed,), steps=steps)


def _has_adapter(pipe) -> bool:
    return DEMO_ADAPTER_NAME in (getattr(pipe.unet, "peft_config", None) or {})


def _generate_one(pipe, settings: SamplingSettings, lora_scale: float | None):
    """One picture of the settings' first prompt and seed: the base model
    (``lora_scale=None``) or the adapter at ``lora_scale``."""
    prompt, seed = settings.caption(settings.prompts[0]), settings.seeds[0]
    settings = dataclasses.replace(settings, guidance=float(settings.guidance))
    if lora_scale is None and _has_adapter(pipe):
        pipe.disable_lora()
        try:
            return generate(pipe, prompt, seed, settings)
        finally:
            pipe.enable_lora()
    if lora_scale is not None and _has_adapter(pipe):
        set_lora_scale(pipe, float(lora_scale), DEMO_ADAPTER_NAME)
    return generate(pipe, prompt, seed, settings)


def demo_generate(
    pipe, settings: SamplingSettings, *, lora_scale: float = 1.0, side_by_side: bool = True
):
    """The demo's generation: one image with the adapter and, optionally, the base one.

    Both come from the same prompt, seed (a CPU generator), scheduler, steps, guidance and
    size, so any difference is the adapter's.

    Args:
        pipe: a ``StableDiffusionPipeline``, with the adapter loaded as ``"demo"`` (see
            :func:`build_demo`) or without an adapter (then both pictures are the base model).
        settings: its first prompt and seed (a whole number from 0 to :data:`MAX_SEED`),
            steps, guidance and size; :func:`demo_settings` makes them from the page's inputs.
        side_by_side: also make the base model's picture.

    Returns:
        ``(base image or None, LoRA image)`` as true-size PIL images of
        ``settings.resolution_px`` squares.

    Raises:
        StableEmoteError: for an empty prompt, steps outside ``[1, MAX_STEPS]`` or a seed
            outside ``[0, MAX_SEED]``.
    """
    settings = _checked(settings)
    base = None
    if side_by_side:
        base = _generate_one(pipe, settings, None)
    lora = _generate_one(pipe, settings, lora_scale)
    return base, lora


def display_image(image, min_px: int = DISPLAY_MIN_PX):
    """The picture enlarged for display by the smallest whole factor that makes it ``min_px`` wide.

    Nearest-neighbour sampling turns each pixel into a square block, so the emoji's edges
    stay crisp (a smooth filter would blur a 64 px drawing). Pictures already ``min_px``
    wide or wider come back unchanged; the input is never modified.

    Args:
        image: a PIL image of ``(W, H)`` pixels.

    Returns:
        A PIL image of ``(k*W, k*H)`` pixels with ``k = ceil(min_px / W)`` (``k >= 1``).
    """
    factor = max(1, math.ceil(min_px / image.width))
    if factor == 1:
        return image.copy()
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def save_picture(image, folder: str | os.PathLike, stem: str) -> Path:
    """Save ``image`` unchanged (true size) as ``folder/stem.png``; the path."""
    path = Path(folder) / f"{stem}.png"
    image.save(path)
    return path


def render_picture(
    pipe, settings: SamplingSettings, *, lora_scale: float | None, folder: str | os.PathLike
):
    """One picture as the page shows it, and its true-size file.

    Args:
        settings: its first prompt and seed, steps, guidance and size (as in :func:`demo_generate`).
        lora_scale: ``None`` for the base model, else the adapter's scale.
        folder: where a new subfolder receives the true-size PNG (named after the settings).

    Returns:
        ``(display image, true-size PNG path, seconds the generation took)``; the display
        image is :func:`display_image` of the generated ``resolution_px`` square.
    """
    settings = _checked(settings)
    start = time.perf_counter()
    image = _generate_one(pipe, settings, lora_scale)
    seconds = time.perf_counter() - start
    tag = "base" if lora_scale is None else f"lora-scale{lora_scale:g}"
    stem = (
        f"{tag}-seed{settings.seeds[0]}-steps{settings.steps}-guidance{float(settings.guidance):g}"
    )
    path = save_picture(image, tempfile.mkdtemp(dir=folder), stem)
    return display_image(image), path, seconds


def picture_label(
    model: str, seconds: float, settings: SamplingSettings, *, scale: float | None = None
) -> str:
    """The caption over a picture: which model, the settings that made it (its first seed),
    and how long it took.

    >>> picture_label("TinyEmote", 0.84, SamplingSettings(seeds=(3,), steps=25, guidance=7.5))
    'TinyEmote · seed 3 · 25 steps · guidance 7.5 · 0.8 s'
    >>> picture_label("LoRA", 1.26, SamplingSettings(seeds=(3,), steps=25), scale=0.5)
    'LoRA × 0.50 · seed 3 · 25 steps · guidance 7.5 · 1.3 s'
    """
    head = model if scale is None else f"{model} × {scale:.2f}"
    s = settings
    return (
        f"{head} · seed {s.seeds[0]} · {s.steps} steps · guidance {s.guidance:g} · {seconds:.1f} s"
    )


def adapter_description(file: str | os.PathLike, name: str, pipe=None) -> str:
    """A one-line description of an adapter: its name, rank, alpha and training steps.

    The numbers come from the file's header (what ``stableemote train`` writes); the rank
    falls back to the loaded adapter's when the header does not say (files from elsewhere).
    """
    _, meta = read_lora_file(file)
    rank = meta.get("rank")
    config = (getattr(getattr(pipe, "unet", None), "peft_config", None) or {}).get(
        DEMO_ADAPTER_NAME
    )
    if rank is None and config is not None:
        rank = str(config.r)
    parts = [f"rank {rank}" if rank else "rank unknown"]
    if meta.get("alpha"):
        try:
            parts.append(f"alpha {float(meta['alpha']):g}")
        except ValueError:
            parts.append(f"alpha {meta['alpha']}")
    if meta.get("steps"):
        parts.append(f"{meta['steps']} training steps")
    if meta.get("dataset"):
        parts.append(f"data {meta['dataset']}")
    return f"LoRA `{name}`: {', '.join(parts)}"


def _adapter_name(lora_path: str | os.PathLike, file: str) -> str:
    text = os.path.expanduser(str(lora_path))
    if not os.path.exists(text):
        return text  # a Hub repo id
    path = Path(file)
    return path.parent.name if path.name.startswith("pytorch_lora_weights") else path.stem


def find_adapter(dir_or_repo: str | os.PathLike) -> str:
    """An adapter file from a local file or folder, or from a Hub repo id (downloaded).

    Raises:
        StableEmoteError: if it is neither an existing path nor a reachable Hub repo with
            ``pytorch_lora_weights.safetensors``.
    """
    text = os.path.expanduser(str(dir_or_repo))
    if os.path.exists(text):
        return str(resolve_lora_file(text))
    if not is_hub_model_id(text):
        raise StableEmoteError(
            f"The adapter '{dir_or_repo}' is neither a file or folder here nor a Hub repo id "
            "(owner/name). Pass the folder training wrote or a repo such as 'you/emoji-lora'."
        )
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(text, LORA_WEIGHT_NAME)
    except Exception as err:  # network, missing repo or file: one clear message
        raise StableEmoteError(
            f"Could not download {LORA_WEIGHT_NAME} from the Hub repo '{text}' "
            f"({type(err).__name__}). Check the id and your network, or pass a local folder."
        ) from err


def load_demo_adapter(pipe, lora_path: str | os.PathLike) -> str:
    """Find the adapter (:func:`find_adapter`), load it into ``pipe`` as ``"demo"``; its description.

    Returns:
        The one-line :func:`adapter_description` the page shows.
    """
    file = find_adapter(lora_path)
    load_lora(pipe, file, adapter_name=DEMO_ADAPTER_NAME)
    return adapter_description(file, _adapter_name(lora_path, file), pipe)
