"""LoRA through peft and diffusers: add an adapter to a UNet, load a file into a pipeline.

The library side of notebook 04's lesson (:mod:`stableemote_utils.lora` writes the layer
by hand): :func:`add_lora` puts a peft adapter on the UNet's attention projections for
training, :func:`set_lora_state_dict` restores its weights on resume, and
:func:`load_lora`, :func:`set_lora_scale`, :func:`fuse_lora` and friends wrap the
diffusers pipeline calls around an adapter file. Saving, reading and fit-checking files is
:mod:`stableemote_utils.lora_files`; inspecting them and exporting kohya keys is
:mod:`stableemote_utils.lora_inspect`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.lora_files import (
    EXAMPLES_SHOWN,
    LORA_TARGET_MODULES,
    UNET_PREFIX,
    apply_header_alpha,
    canonical_lora_state_dict,
    check_lora_file,
    check_lora_fits,
    peft_reads_targets,
    read_lora_file,
    target_layer_shapes,
)


def _lora_parameters(unet: torch.nn.Module, adapter_name: str = "default"):
    """``(name, parameter)`` for every LoRA weight of ``adapter_name`` in ``unet``."""
    marks = (f".lora_A.{adapter_name}.", f".lora_B.{adapter_name}.")
    return [(n, p) for n, p in unet.named_parameters() if any(m in n for m in marks)]


def add_lora(
    unet: torch.nn.Module,
    rank: int = 4,
    alpha: float | None = None,
    target_modules=LORA_TARGET_MODULES,
    adapter_name: str = "default",
) -> int:
    """Add a peft LoRA adapter to ``unet`` and make only its weights trainable.

    Every layer that ``target_modules`` picks
    (:func:`~stableemote_utils.lora_files.target_layer_shapes`) gets ``A`` of shape
    ``(rank, d_in)``, or ``(rank, d_in, k, k)`` for a k x k convolution (Kaiming-uniform,
    drawn from torch's global generator, so the same seed gives the same adapter), and
    ``B`` of shape ``(d_out, rank)`` (``(d_out, rank, 1, 1)``) set to zero, so the UNet's output is unchanged until training moves ``B``. The update is scaled by
    ``alpha / rank``. The LoRA weights are kept in fp32 even when the UNet is fp16 or
    bf16, so that fp16 autocast with a ``GradScaler`` can unscale their gradients.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (modified in place).
        rank: ``r``, the inner size of the update.
        alpha: scale numerator; defaults to ``rank`` (scale 1).
        target_modules: the layers to adapt: name endings (``"to_q"``), globs on the
            whole name (``"up_blocks.2.*"``), and ``"!..."`` to leave layers out.
        adapter_name: the adapter's name inside peft.

    Returns:
        The number of trainable parameters (797,184 for rank 4 on SD 1.5).
    """
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    if int(rank) < 1:
        raise StableEmoteError(f"LoRA rank must be a positive integer, got {rank}.")
    if not target_modules:
        raise StableEmoteError("add_lora needs at least one target module name, e.g. 'to_q'.")
    layers = target_layer_shapes(unet, target_modules)
    if not layers:
        raise StableEmoteError(
            f"No layer of the UNet matched the target modules {list(target_modules)}; the "
            "attention projections of diffusers' UNet are named to_q, to_k, to_v and to_out.0 "
            "(attn1 is self-attention, attn2 cross-attention), its ResNet convolutions conv1 "
            "and conv2."
        )
    # Globs and "!" removals are resolved here: peft then gets the layers' full names.
    config = LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha) if alpha is not None else int(rank),
        init_lora_weights=True,
        target_modules=(
            list(target_modules) if peft_reads_targets(target_modules) else sorted(layers)
        ),
    )
    unet.requires_grad_(False)
    try:
        unet.add_adapter(config, adapter_name=adapter_name)
    except ValueError as err:
        raise StableEmoteError(
            f"Could not add the LoRA adapter '{adapter_name}': {err}. Use another adapter_name, "
            "or start again from a UNet without this adapter."
        ) from err
    params = _lora_parameters(unet, adapter_name)
    for _, p in params:
        p.requires_grad_(True)
    # Only the adapter is trainable now; diffusers' helper keeps trainable weights in fp32.
    cast_training_params(unet, dtype=torch.float32)
    return sum(p.numel() for _, p in params)


def set_lora_state_dict(
    unet: torch.nn.Module, state_dict: dict[str, torch.Tensor], adapter_name: str = "default"
) -> None:
    """Copy weights from :func:`lora_state_dict` back into a UNet that has the adapter.

    Used to resume training. Strict: the keys must be exactly the adapter's keys and
    every shape must match, otherwise nothing is copied and a StableEmoteError says which
    keys differ. Values are cast to the adapter's dtype and device.
    """
    params = dict(_lora_parameters(unet, adapter_name))
    if not params:
        raise StableEmoteError(
            f"The UNet has no LoRA adapter named '{adapter_name}' to put weights into. Call "
            "add_lora(unet, rank=...) with the rank the weights were saved with first."
        )
    # "x.lora_A.default.weight" -> "unet.x.lora_A.weight"
    by_key = {UNET_PREFIX + n.replace(f".{adapter_name}.", "."): p for n, p in params.items()}
    missing = sorted(set(by_key) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(by_key))
    wrong_shape = [
        f"{k}: {tuple(state_dict[k].shape)} vs {tuple(p.shape)} in the UNet"
        for k, p in by_key.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(p.shape)
    ]
    if missing or unexpected or wrong_shape:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing (e.g. {missing[:EXAMPLES_SHOWN]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:EXAMPLES_SHOWN]})")
        if wrong_shape:
            problems.append(
                f"{len(wrong_shape)} with another shape (e.g. {wrong_shape[:EXAMPLES_SHOWN]})"
            )
        raise StableEmoteError(
            f"The LoRA weights do not match the UNet's adapter '{adapter_name}' "
            f"({len(by_key)} tensors): " + "; ".join(problems) + ". Add the adapter with the "
            "same rank and target modules it was trained with before restoring it."
        )
    with torch.no_grad():
        for k, p in by_key.items():
            p.copy_(state_dict[k].to(device=p.device, dtype=p.dtype))


# ---------------------------------------------------------------------------
# Loading an adapter into a pipeline
# ---------------------------------------------------------------------------


def _pipeline_models(pipe) -> dict[str, torch.nn.Module]:
    models = {"unet": pipe.unet}
    for component in ("text_encoder", "text_encoder_2"):
        if getattr(pipe, component, None) is not None:
            models[component] = getattr(pipe, component)
    return models


def load_lora(pipe, path: str | os.PathLike, adapter_name: str = "default", scale: float = 1.0):
    """Load an adapter file (or folder) into a ``StableDiffusionPipeline``, checked.

    The file may use peft, older diffusers or kohya keys in fp32, fp16 or bf16. It is
    checked with :func:`check_lora_fits` first, then converted to peft-style keys with
    alpha folded in and handed to ``pipe.load_lora_weights``; ``scale`` is set with
    ``pipe.set_adapters``.

    Returns:
        The pipeline (modified in place).

    Raises:
        StableEmoteError: if the file is missing, not safetensors, or does not fit.
    """
    file = check_lora_file(path)
    state_dict, metadata = read_lora_file(file)
    try:
        result = check_lora_fits(file, _pipeline_models(pipe), state_dict=state_dict)
    except StableEmoteError as err:
        _refuse_other_family(file, pipe, err)
        raise
    apply_header_alpha(result, metadata)
    existing = set(getattr(pipe.unet, "peft_config", {}) or {})
    if adapter_name in existing:
        raise StableEmoteError(
            f"The pipeline already has an adapter named '{adapter_name}'. Pass another "
            "adapter_name, or call unload_lora(pipe) first."
        )
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    if "text_encoder" not in result["components"]:
        # diffusers warns that no text-encoder keys were found; that is expected here.
        diffusers_logging.set_verbosity_error()
    try:
        pipe.load_lora_weights(canonical_lora_state_dict(result), adapter_name=adapter_name)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    set_lora_scale(pipe, scale, adapter_name)
    return pipe


def _refuse_other_family(file, pipe, err: StableEmoteError) -> None:
    """Raise one line when an adapter that does not fit is for the other model family."""
    from stableemote_utils.lora_inspect import FAMILY_LABELS, FAMILY_PRESETS, adapter_family
    from stableemote_utils.sgm_names import kohya_family

    theirs, ours = adapter_family(file), kohya_family(pipe.unet.config)
    if theirs is not None and theirs != ours:
        raise StableEmoteError(
            f"'{file}' is an {FAMILY_LABELS[theirs]} adapter and this model is "
            f"{FAMILY_LABELS[ours]}: their layers differ, so it cannot load. Use it with an "
            f"{FAMILY_LABELS[theirs]} model (--preset {FAMILY_PRESETS[theirs]}), "
            f"or train an adapter on this one."
        ) from err


def set_lora_scale(pipe, scale: float, adapter_name: str = "default") -> None:
    """Set how strongly an adapter acts: 0 is the base model, 1 the trained adapter."""
    pipe.set_adapters([adapter_name], adapter_weights=[float(scale)])


def unload_lora(pipe) -> None:
    """Remove every LoRA adapter from the pipeline; the base weights are untouched."""
    pipe.unload_lora_weights()


@contextlib.contextmanager
def lora_loaded(
    pipe, path: str | os.PathLike, adapter_name: str = "default", scale: float = 1.0
) -> Iterator[str]:
    """Load an adapter for the length of a ``with`` block, then remove it again.

    Yields the adapter's name, for helpers that take an already loaded adapter (so that
    several of them share one load, e.g. ``fair_comparison(..., adapter_name=name)``).
    """
    load_lora(pipe, path, adapter_name=adapter_name, scale=scale)
    try:
        yield adapter_name
    finally:
        unload_lora(pipe)


def fuse_lora(pipe, scale: float = 1.0) -> None:
    """Add ``scale * (alpha / r) * B @ A`` into the base weights (faster inference, no
    adapter layers in the forward pass). Undo with :func:`unfuse_lora`."""
    pipe.fuse_lora(components=["unet", "text_encoder"], lora_scale=float(scale))


def unfuse_lora(pipe) -> None:
    """Subtract a fused update again, giving back the base weights (within float rounding)."""
    pipe.unfuse_lora(components=["unet", "text_encoder"])
