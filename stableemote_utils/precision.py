"""The precision policy: which dtype to compute in on which device, and why."""

from __future__ import annotations

import torch

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.options import check_device

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}
# Ampere (8.0) is the first generation with native bf16 tensor cores.
_BF16_MIN_CAPABILITY = (8, 0)


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: the one asked for, else CUDA when present, else CPU."""
    if device is not None:
        return check_device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def choose_dtype(
    device: str | torch.device,
    override: str | torch.dtype | None = None,
    capability: tuple[int, int] | None = None,
) -> tuple[torch.dtype, str]:
    """Pick the compute dtype for a device and say why in one line.

    fp16 on CUDA GPUs below compute capability 8.0 (a T4 is 7.5: it has fast fp16
    but only emulates bf16, even though ``torch.cuda.is_bf16_supported()`` says
    True), bf16 on 8.0 and above, fp32 on CPU and other devices.

    Args:
        device: where the model runs.
        override: ``"fp32"``, ``"fp16"``, ``"bf16"`` or a ``torch.dtype`` to force a choice.
        capability: the CUDA compute capability; read from the device when ``None``.

    Returns:
        ``(dtype, reason)``, the reason a sentence the notebooks print.
    """
    device = torch.device(device)
    if override is not None:
        if isinstance(override, torch.dtype):
            dtype = override
        else:
            if override.lower() not in _DTYPES:
                raise StableEmoteError(
                    f"Unknown precision {override!r}. Use one of: fp32, fp16, bf16."
                )
            dtype = _DTYPES[override.lower()]
        return dtype, f"{dtype_name(dtype)} because it was asked for explicitly."
    if device.type != "cuda":
        return (
            torch.float32,
            f"fp32 because the device is {device.type} (half precision is slow or unsupported there).",
        )
    if capability is None:
        capability = torch.cuda.get_device_capability(device)
    cc = f"{capability[0]}.{capability[1]}"
    if tuple(capability) >= _BF16_MIN_CAPABILITY:
        return torch.bfloat16, f"bf16 because this GPU (compute capability {cc}) has native bf16."
    return (
        torch.float16,
        f"fp16 because this GPU (compute capability {cc}) has fast fp16 but no native bf16.",
    )


def check_training_precision(device: str | torch.device, dtype: torch.dtype) -> None:
    """Refuse, in one line, a precision that training cannot run in on this device.

    accelerate runs fp16 mixed precision (autocast plus a gradient scaler) only on GPUs
    and other accelerators; on CPU it would leave fp16 weights to meet fp32 inputs. bf16
    takes the same half-precision path on CPU as on a GPU, so it is what to use there.

    Raises:
        StableEmoteError: for fp16 on CPU.
    """
    if torch.device(device).type == "cpu" and dtype == torch.float16:
        raise StableEmoteError(
            "fp16 training needs a GPU: accelerate runs fp16 mixed precision only on "
            "accelerators, not on CPU. On CPU use --precision bf16 (the same half-precision "
            "code path a GPU takes) or --precision fp32."
        )


def dtype_name(dtype: torch.dtype) -> str:
    """Short name of a dtype: ``torch.float16`` -> ``"fp16"``."""
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(
        dtype, str(dtype).replace("torch.", "")
    )


def check_preset_device(preset, device: str | torch.device | None) -> None:
    """Refuse, in one line, a GPU-sized preset (``sdxl``) where there is no CUDA GPU,
    unless ``--device cpu`` asks for the CPU on purpose.

    Args:
        preset: a :class:`~stableemote_utils.presets.Preset`.
        device: the device asked for (``None``: none asked for).
    """
    if getattr(preset, "needs_gpu", False) and device is None and not torch.cuda.is_available():
        raise StableEmoteError(
            f"The {preset.name} preset needs a CUDA GPU (a T4 or better) and torch sees none "
            "here. Run it on a GPU (Colab: Runtime > Change runtime type > T4 GPU), use "
            "--preset tiny-xl to work on the CPU, or pass --device cpu to run it here anyway "
            "(hours per step)."
        )
