"""What a LoRA file holds, which base model it fits, and its export for the web UIs.

``stableemote lora inspect`` and ``stableemote lora export-kohya`` are thin wrappers over
:func:`inspect_lora` and :func:`export_kohya`. Layouts are built on the meta device from
the architecture alone (no weights), so checking a file against SD 1.5 is fast.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.files import save_state_dict_atomic
from stableemote_utils.lora_files import (
    DIFFUSERS_METADATA_KEY,
    apply_header_alpha,
    canonical_lora_state_dict,
    check_lora_fits,
    lora_weight_problems,
    match_lora,
    read_lora_file,
    resolve_lora_file,
    split_key,
)
from stableemote_utils.tiny_model import (
    TINY_TEXT_CONFIG,
    TINY_UNET_CONFIG,
    TINYEMOTE_UNET_CONFIG,
    sd15_config,
)

# "tiny" is the random tiny model's UNet (the tiny-random preset); "tinyemote" the tiny preset's.
LAYOUT_NAMES = ("sd15", "tiny", "tinyemote")


@functools.lru_cache(maxsize=4)
def layout_models(name: str = "sd15") -> dict[str, torch.nn.Module]:
    """The UNet and text encoder of ``"sd15"``, ``"tiny"`` or ``"tinyemote"`` on the meta device.

    Built from the configs in ``stableemote_utils/configs`` (sd15) or
    :mod:`stableemote_utils.tiny_model` (tiny, tinyemote) with no weights allocated, so it
    is fast and light; use it for names, shapes and parameter counts, not for running.
    """
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if name == "sd15":
        unet_config = sd15_config("unet")
        text_config = {k: v for k, v in sd15_config("text_encoder").items() if k != "architectures"}
    elif name == "tiny":
        unet_config, text_config = dict(TINY_UNET_CONFIG), dict(TINY_TEXT_CONFIG)
    elif name == "tinyemote":
        unet_config, text_config = dict(TINYEMOTE_UNET_CONFIG), dict(TINY_TEXT_CONFIG)
    else:
        raise StableEmoteError(f"Unknown layout '{name}'; choose one of {', '.join(LAYOUT_NAMES)}.")
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_config)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    return {"unet": unet, "text_encoder": text_encoder}


def _key_style(state_dict: dict[str, torch.Tensor]) -> str:
    styles = set()
    for key in state_dict:
        split = split_key(key)
        if split is None:
            continue
        ending = split[4]
        if split[2] or ending in (".lora_down.weight", ".lora_up.weight"):
            styles.add("kohya")
        elif ending in (".lora_A.weight", ".lora_B.weight"):
            styles.add("peft")
        elif ending in (".lora.down.weight", ".lora.up.weight"):
            styles.add("diffusers (lora.down/lora.up)")
    return " + ".join(sorted(styles)) or "none"


def _target_name(layer: str) -> str:
    """``…attn1.to_out.0`` -> ``to_out.0``; ``…attn1.to_q`` -> ``to_q``."""
    parts = layer.replace("_", ".").split(".") if "." not in layer else layer.split(".")
    if parts[-1].isdigit() and len(parts) > 1:
        return ".".join(parts[-2:])
    return parts[-1]


def _short_reason(message: str, file: Path) -> str:
    """The first sentence of a fit error, without the file name."""
    return message.replace(f"'{file}' ", "").split(". ")[0]


def inspect_lora(path: str | os.PathLike) -> dict:
    """What an adapter file holds and which base it fits.

    Returns:
        A dict with ``file``, ``keys``, ``style``, ``ranks`` (sorted distinct ranks),
        ``alphas``, ``target_modules``, ``parameters``, ``dtypes``, ``components``
        (component -> keys), ``metadata`` (header), ``fits`` (layout name -> None if it
        fits, else the reason) and ``file_bytes``.
    """
    file = resolve_lora_file(path)
    state_dict, metadata = read_lora_file(file)
    fits = {}
    result = None
    for name in LAYOUT_NAMES:
        try:
            r = check_lora_fits(file, layout_models(name), state_dict=state_dict)
            fits[name] = None
            result = result or r
        except StableEmoteError as err:
            fits[name] = _short_reason(str(err), file)
    if result is None:  # parse without resolving names, just to describe the file
        result = match_lora(state_dict, {})
    apply_header_alpha(result, metadata)
    layers = [(c, n, p) for c, ls in result["layers"].items() for n, p in ls.items()]
    ranks = sorted({int(p["down"].shape[0]) for _, _, p in layers if "down" in p})
    alphas = sorted(
        {p["alpha"] if p["alpha"] is not None else "none (= rank)" for *_, p in layers}, key=str
    )
    return {
        "file": str(file),
        "keys": len(state_dict),
        "style": _key_style(state_dict),
        "ranks": ranks,
        "alphas": alphas,
        "target_modules": sorted({_target_name(n) for c, n, _ in layers if c == "unet"}),
        "parameters": sum(
            t.numel() for *_, p in layers for k, t in p.items() if k in ("down", "up")
        ),
        "dtypes": sorted({str(t.dtype).replace("torch.", "") for t in state_dict.values()}),
        "components": result["components"],
        "metadata": metadata,
        "fits": fits,
        "file_bytes": file.stat().st_size,
        "problems": lora_weight_problems(state_dict, metadata),
    }


# ---------------------------------------------------------------------------
# Export for the AUTOMATIC1111 web UI and ComfyUI (kohya-style keys)
# ---------------------------------------------------------------------------

KOHYA_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_"}


def kohya_state_dict(result: dict, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Kohya-style tensors from a :func:`match_lora` result.

    Each adapted layer ``down_blocks.0.….attn1.to_out.0`` becomes
    ``lora_unet_down_blocks_0_…_attn1_to_out_0`` with ``.lora_down.weight`` (``A``,
    ``(r, d_in)``), ``.lora_up.weight`` (``B``, ``(d_out, r)``) and ``.alpha`` (a 0-dim
    tensor; ``alpha = r`` when the source has none, which keeps the scale at 1).
    Text-encoder layers get the ``lora_te_`` prefix.
    """
    # Not diffusers.utils.convert_state_dict_to_kohya: it writes alpha = rank whatever the
    # adapter's alpha, and names text-encoder layers lora_te1_ (SDXL), which SD 1.x loaders
    # skip. UNet keys agree with it (tests/test_lora.py checks all three).
    out = {}
    for component, by_layer in result["layers"].items():
        if component not in KOHYA_PREFIXES:
            raise StableEmoteError(
                f"Cannot export {component} layers to the kohya format; only the SD 1.x UNet "
                "and text encoder have kohya names."
            )
        for layer, parts in by_layer.items():
            down, up = parts["down"], parts["up"]
            if dtype is not None:
                down, up = down.to(dtype), up.to(dtype)
            alpha = parts.get("alpha")
            if component == "text_encoder" and not layer.startswith("text_model."):
                layer = "text_model." + layer  # the web UIs expect CLIP's full layer names
            stem = KOHYA_PREFIXES[component] + layer.replace(".", "_")
            out[f"{stem}.lora_down.weight"] = down.contiguous()
            out[f"{stem}.lora_up.weight"] = up.contiguous()
            out[f"{stem}.alpha"] = torch.tensor(
                float(alpha if alpha is not None else down.shape[0]), dtype=torch.float32
            )
    return out


def _fit_any_layout(file: Path, state_dict: dict, what: str) -> dict:
    """:func:`check_lora_fits` against each layout the course knows; the first that fits."""
    errors = []
    for name in LAYOUT_NAMES:
        try:
            return check_lora_fits(file, layout_models(name), state_dict=state_dict)
        except StableEmoteError as err:
            errors.append(str(err))
    raise StableEmoteError(f"Only adapters for the SD 1.x UNet can be {what}. " + errors[0])


def export_kohya(
    path_in: str | os.PathLike,
    path_out: str | os.PathLike,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write an adapter as a kohya-style file for the AUTOMATIC1111 web UI or ComfyUI.

    The adapter must fit the SD 1.x layout (or the tiny one); it is checked first so a
    broken file is not passed on. Copy the output into the web UI's ``models/Lora``
    folder (or ComfyUI's ``models/loras``).

    Args:
        path_in: a StableEmote/diffusers adapter file or folder.
        path_out: the ``.safetensors`` file to write (written atomically).
        dtype: optionally convert the weights, e.g. ``torch.float16`` to halve the size.

    Returns:
        The written path.
    """
    file = resolve_lora_file(path_in)
    out = Path(path_out)
    if out.suffix != ".safetensors":
        raise StableEmoteError(f"The export target '{out}' must end in .safetensors.")
    if out.resolve() == file.resolve():
        raise StableEmoteError("The export target is the input file; pick another name.")
    state_dict, metadata = read_lora_file(file)
    result = _fit_any_layout(file, state_dict, "exported to the kohya format")
    apply_header_alpha(result, metadata)
    tensors = kohya_state_dict(result, dtype=dtype)
    ranks = sorted({int(t.shape[0]) for k, t in tensors.items() if k.endswith(".lora_down.weight")})
    alphas = sorted({float(t) for k, t in tensors.items() if k.endswith(".alpha")})
    header = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(ranks[0]) if len(ranks) == 1 else "mixed",
        "ss_network_alpha": str(alphas[0]) if len(alphas) == 1 else "mixed",
        "ss_base_model_version": "sd_v1",
    }
    header.update({k: v for k, v in metadata.items() if k != DIFFUSERS_METADATA_KEY})
    return save_state_dict_atomic(tensors, out, header)


def reduce_rank(
    path_in: str | os.PathLike, path_out: str | os.PathLike, rank: int
) -> tuple[Path, float]:
    """Write the closest adapter of a lower rank: each layer's update cut to ``rank`` directions.

    For each layer the update ``ΔW = (alpha / r) B A`` (``(d_out, d_in)``; a convolution's
    ``(d_out, d_in * k * k)``) is factored by SVD, ``ΔW = U S Vᵀ``, and only its ``rank``
    largest singular values are kept: ``A' = S^½ Vᵀ``, ``B' = U S^½``, alpha = ``rank``.
    No other rank-``rank`` update is closer to ``ΔW`` (Eckart-Young, in the Frobenius norm),
    so this shows how much of a trained adapter lives in its first few directions, with no
    training.

    Args:
        path_in: an adapter file or folder that fits the SD 1.x or tiny layout.
        path_out: the ``.safetensors`` file to write.
        rank: the new rank, at least 1 and below the adapter's.

    Returns:
        ``(path, kept)``: the written file and the share of the update's squared norm
        (summed over layers) that the kept directions hold.
    """
    file = resolve_lora_file(path_in)
    state_dict, metadata = read_lora_file(file)
    result = _fit_any_layout(file, state_dict, "reduced")
    apply_header_alpha(result, metadata)
    canonical = canonical_lora_state_dict(result)
    ranks = {int(t.shape[0]) for k, t in canonical.items() if k.endswith("lora_A.weight")}
    if not 1 <= rank < min(ranks):
        raise StableEmoteError(
            f"reduce_rank needs a rank from 1 to {min(ranks) - 1} for this adapter (rank "
            f"{', '.join(map(str, sorted(ranks)))}), got {rank}."
        )
    out, total, kept = {}, 0.0, 0.0
    for key, down in canonical.items():
        if not key.endswith("lora_A.weight"):
            continue
        stem = key.removesuffix("lora_A.weight")
        up = canonical[stem + "lora_B.weight"]
        delta = up.flatten(1).double() @ down.flatten(1).double()  # (d_out, d_in * k * k)
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        total += float((s * s).sum())
        kept += float((s[:rank] * s[:rank]).sum())
        root = s[:rank].sqrt()
        out[stem + "lora_A.weight"] = (
            (root[:, None] * vh[:rank]).reshape(rank, *down.shape[1:]).float().contiguous()
        )
        out[stem + "lora_B.weight"] = (
            (u[:, :rank] * root).reshape(up.shape[0], rank, *up.shape[2:]).float().contiguous()
        )
    header = {k: v for k, v in metadata.items() if k != DIFFUSERS_METADATA_KEY}
    header.update(rank=str(rank), alpha=str(float(rank)), reduced_from=file.name)
    return save_state_dict_atomic(out, Path(path_out), header), kept / max(total, 1e-30)
