"""What a LoRA file holds, which base model it fits, and its export for the web UIs.

``stableemote lora inspect`` and ``stableemote lora export-kohya`` are thin wrappers over
:func:`inspect_lora` and :func:`export_kohya`. Layouts are built on the meta device from
the architecture alone (no weights), so checking a file against SD 1.5 or SDXL is fast.
An SDXL adapter is exported with the SGM layer names the web UIs read
(:mod:`stableemote_utils.sgm_names`).
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
from stableemote_utils.sgm_names import (
    KOHYA_BASE_VERSION,
    KOHYA_TEXT_PREFIXES,
    kohya_family,
    kohya_unet_layer,
)
from stableemote_utils.tiny_model import (
    TINY_TEXT_CONFIG,
    TINY_UNET_CONFIG,
    TINY_XL_UNET_CONFIG,
    TINYEMOTE_UNET_CONFIG,
    TINYEMOTE_XL_UNET_CONFIG,
    sd15_config,
    sdxl_config,
)

# "tiny" is the random tiny model's UNet (the tiny-random preset); "tinyemote" the tiny
# preset's; "tiny-xl" the random tiny SDXL-layout model's (tiny-xl-random); "tinyemote-xl"
# TinyEmote-XL's (tiny-xl).
LAYOUT_NAMES = ("sd15", "tiny", "tinyemote", "sdxl", "tiny-xl", "tinyemote-xl")
# How messages name each family (the kohya_family names).
FAMILY_LABELS = {"sd15": "SD 1.x", "sdxl": "SDXL"}
# The presets that load each family's models.
FAMILY_PRESETS = {"sd15": "sd15 or tiny", "sdxl": "sdxl or tiny-xl"}


def _text_config(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "architectures"}


def _layout_configs(name: str) -> tuple[dict, dict[str, dict]]:
    """``(UNet config, {text encoder component: its config})`` of a layout."""
    if name == "sd15":
        return sd15_config("unet"), {"text_encoder": _text_config(sd15_config("text_encoder"))}
    if name == "tiny":
        return dict(TINY_UNET_CONFIG), {"text_encoder": dict(TINY_TEXT_CONFIG)}
    if name == "tinyemote":
        return dict(TINYEMOTE_UNET_CONFIG), {"text_encoder": dict(TINY_TEXT_CONFIG)}
    if name == "sdxl":
        return sdxl_config("unet"), {
            "text_encoder": _text_config(sdxl_config("text_encoder")),
            "text_encoder_2": _text_config(sdxl_config("text_encoder_2")),
        }
    if name in ("tiny-xl", "tinyemote-xl"):
        text = dict(TINY_TEXT_CONFIG)
        unet = TINY_XL_UNET_CONFIG if name == "tiny-xl" else TINYEMOTE_XL_UNET_CONFIG
        return dict(unet), {"text_encoder": text, "text_encoder_2": text}
    raise StableEmoteError(f"Unknown layout '{name}'; choose one of {', '.join(LAYOUT_NAMES)}.")


@functools.lru_cache(maxsize=8)
def layout_models(name: str = "sd15") -> dict[str, torch.nn.Module]:
    """The UNet and text encoder(s) of a layout (:data:`LAYOUT_NAMES`) on the meta device.

    Built from the configs in ``stableemote_utils/configs`` (sd15, sdxl) or
    :mod:`stableemote_utils.tiny_model` (tiny, tinyemote) with no weights allocated, so it
    is fast and light; use it for names, shapes and parameter counts, not for running.
    SDXL's layout has ``text_encoder_2`` (a ``CLIPTextModelWithProjection``) as well.
    """
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet_config, text_configs = _layout_configs(name)
    classes = {"text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection}
    with init_empty_weights():
        models = {"unet": UNet2DConditionModel.from_config(unet_config)}
        for component, config in text_configs.items():
            models[component] = classes[component](CLIPTextConfig(**config))
    return models


def layout_family(name: str) -> str:
    """``"sd15"`` or ``"sdxl"``: the model family a layout belongs to."""
    return kohya_family(layout_models(name)["unet"].config)


def family_in_header(metadata: dict[str, str]) -> str | None:
    """The model family a file's header names: StableEmote's ``model_family`` entry, or
    kohya's ``ss_base_model_version`` (``sdxl_...`` or ``sd_v1``); ``None`` if neither."""
    if metadata.get("model_family") in FAMILY_LABELS:
        return metadata["model_family"]
    version = metadata.get("ss_base_model_version", "")
    return next((f for f, v in KOHYA_BASE_VERSION.items() if version.startswith(v[:4])), None)


def layouts_to_try(metadata: dict[str, str]) -> list[str]:
    """:data:`LAYOUT_NAMES`, those of the family the header names first: an adapter that
    changes only layers two families share (a few ResNets) is read as its own family's."""
    hint = family_in_header(metadata)
    return sorted(LAYOUT_NAMES, key=lambda name: hint is not None and layout_family(name) != hint)


def fitting_layout(
    state_dict: dict[str, torch.Tensor], file: Path, metadata: dict[str, str] | None = None
) -> tuple[str | None, dict]:
    """The first layout an adapter fits (see :func:`layouts_to_try`), with the fit;
    ``(None, {layout: reason})`` if none."""
    errors = {}
    for name in layouts_to_try(metadata or {}):
        try:
            return name, check_lora_fits(file, layout_models(name), state_dict=state_dict)
        except StableEmoteError as err:
            errors[name] = str(err)
    return None, errors


def adapter_family(path: str | os.PathLike) -> str | None:
    """``"sd15"`` or ``"sdxl"``: the family of the first layout an adapter fits (None: none)."""
    file = resolve_lora_file(path)
    state_dict, metadata = read_lora_file(file)
    name, _ = fitting_layout(state_dict, file, metadata)
    return None if name is None else layout_family(name)


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
    result, family = None, None
    for name in layouts_to_try(metadata):
        try:
            r = check_lora_fits(file, layout_models(name), state_dict=state_dict)
            fits[name] = None
            result, family = result or r, family or layout_family(name)
        except StableEmoteError as err:
            fits[name] = _short_reason(str(err), file)
    fits = {name: fits[name] for name in LAYOUT_NAMES}  # reported in one order
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
        "family": FAMILY_LABELS[family] if family else None,
        "file_bytes": file.stat().st_size,
        "problems": lora_weight_problems(state_dict, metadata),
    }


# ---------------------------------------------------------------------------
# Export for the AUTOMATIC1111 web UI and ComfyUI (kohya-style keys)
# ---------------------------------------------------------------------------


def kohya_state_dict(
    result: dict, dtype: torch.dtype | None = None, unet_config=None
) -> dict[str, torch.Tensor]:
    """Kohya-style tensors from a :func:`match_lora` result.

    Each adapted layer ``down_blocks.0.….attn1.to_out.0`` becomes
    ``lora_unet_down_blocks_0_…_attn1_to_out_0`` with ``.lora_down.weight`` (``A``,
    ``(r, d_in)``), ``.lora_up.weight`` (``B``, ``(d_out, r)``) and ``.alpha`` (a 0-dim
    tensor; ``alpha = r`` when the source has none, which keeps the scale at 1).
    Text-encoder layers get the ``lora_te_`` prefix. With an SDXL ``unet_config``, UNet
    layers take their SGM names (``lora_unet_input_blocks_4_1_…``) and the text encoders
    ``lora_te1_`` / ``lora_te2_``, as kohya, the AUTOMATIC1111 web UI and ComfyUI read them.
    """
    # Not diffusers.utils.convert_state_dict_to_kohya: it writes alpha = rank whatever the
    # adapter's alpha, keeps diffusers' block names for SDXL, and names text-encoder layers
    # lora_te1_ (SDXL), which SD 1.x loaders skip. SD 1.x UNet keys agree with it
    # (tests/test_lora.py checks all three).
    family = "sd15" if unet_config is None else kohya_family(unet_config)
    prefixes = {"unet": "lora_unet_", **KOHYA_TEXT_PREFIXES[family]}
    out = {}
    for component, by_layer in result["layers"].items():
        if component not in prefixes:
            raise StableEmoteError(
                f"Cannot export {component} layers to the kohya format; only the UNet and "
                "the text encoders have kohya names."
            )
        for layer, parts in by_layer.items():
            down, up = parts["down"], parts["up"]
            if dtype is not None:
                down, up = down.to(dtype), up.to(dtype)
            alpha = parts.get("alpha")
            if component != "unet" and not layer.startswith("text_model."):
                layer = "text_model." + layer  # the web UIs expect CLIP's full layer names
            if component == "unet" and unet_config is not None:
                layer = kohya_unet_layer(layer, unet_config)
            stem = prefixes[component] + layer.replace(".", "_")
            out[f"{stem}.lora_down.weight"] = down.contiguous()
            out[f"{stem}.lora_up.weight"] = up.contiguous()
            out[f"{stem}.alpha"] = torch.tensor(
                float(alpha if alpha is not None else down.shape[0]), dtype=torch.float32
            )
    return out


def _fit_any_layout(
    file: Path, state_dict: dict, what: str, metadata: dict[str, str] | None = None
) -> tuple[str, dict]:
    """:func:`fitting_layout`, or one line saying that only SD 1.x and SDXL adapters can be
    ``what``: ``(layout name, fit)``."""
    layout, result = fitting_layout(state_dict, file, metadata)
    if layout is None:
        raise StableEmoteError(
            f"Only adapters for the SD 1.x or SDXL UNet can be {what}. "
            + next(iter(result.values()))
        )
    return layout, result


def export_kohya(
    path_in: str | os.PathLike,
    path_out: str | os.PathLike,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write an adapter as a kohya-style file for the AUTOMATIC1111 web UI or ComfyUI.

    The adapter must fit a known layout (SD 1.x, SDXL or a tiny one); it is checked first
    so a broken file is not passed on. An SDXL adapter's UNet layers take their SGM names
    and the header says ``ss_base_model_version = sdxl_base_v1-0``. Copy the output into
    the web UI's ``models/Lora`` folder (or ComfyUI's ``models/loras``).

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
    layout, result = _fit_any_layout(file, state_dict, "exported to the kohya format", metadata)
    apply_header_alpha(result, metadata)
    unet_config = layout_models(layout)["unet"].config
    tensors = kohya_state_dict(result, dtype=dtype, unet_config=unet_config)
    ranks = sorted({int(t.shape[0]) for k, t in tensors.items() if k.endswith(".lora_down.weight")})
    alphas = sorted({float(t) for k, t in tensors.items() if k.endswith(".alpha")})
    header = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(ranks[0]) if len(ranks) == 1 else "mixed",
        "ss_network_alpha": str(alphas[0]) if len(alphas) == 1 else "mixed",
        "ss_base_model_version": KOHYA_BASE_VERSION[kohya_family(unet_config)],
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
    _, result = _fit_any_layout(file, state_dict, "reduced", metadata)
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
