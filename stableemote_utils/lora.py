"""LoRA written by hand: the layer, its injection into a UNet, and what an adapter costs.

Lesson module of notebook ``04_lora_injection``, which writes :class:`LoRALinear` and
:func:`inject_lora` in its cells with the same text (``tests/test_lora.py`` checks that the
two agree). A LoRA adapter adds to a frozen weight ``W`` (``d_out x d_in``) a low-rank
update ``(alpha / r) * B @ A`` with ``A`` of shape ``(r, d_in)`` and ``B`` of shape
``(d_out, r)``; the course puts it on the UNet's attention projections
(:data:`LORA_TARGET_MODULES`). :func:`lora_parameter_count` and :func:`lora_size_table`
give its size for any rank.

The same adapter through peft and diffusers (``add_lora``, ``load_lora``, ``fuse_lora``,
...) is in :mod:`stableemote_utils.lora_peft`; saving, reading and fit-checking adapter
files in :mod:`stableemote_utils.lora_files`; inspecting files and exporting them to
kohya keys in :mod:`stableemote_utils.lora_inspect`. The peft names are importable from
here too, for the callers that import them from this module.
"""

from __future__ import annotations

import math

import torch

from stableemote_utils.lora_files import LORA_TARGET_MODULES, UNET_PREFIX, target_layer_shapes
from stableemote_utils.lora_inspect import layout_models
from stableemote_utils.lora_peft import (  # noqa: F401  (older import path, kept working)
    add_lora,
    fuse_lora,
    load_lora,
    lora_loaded,
    set_lora_scale,
    set_lora_state_dict,
    unfuse_lora,
    unload_lora,
)

# ---------------------------------------------------------------------------
# The layer and its injection (notebook 04 writes these two with the same text)
# ---------------------------------------------------------------------------


class LoRALinear(torch.nn.Module):
    """``base(x) + (alpha / r) * B A x`` with ``base`` frozen; ``x (..., d_in) -> (..., d_out)``."""

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        w = base.weight
        # A (r, d_in): Kaiming-uniform, as peft draws it: every entry within 1/sqrt(d_in).
        self.A = torch.nn.Parameter(
            torch.empty(rank, base.in_features, dtype=w.dtype, device=w.device)
        )
        torch.nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        # B (d_out, r): zero, so that the layer starts out as the base layer.
        self.B = torch.nn.Parameter(
            torch.zeros(base.out_features, rank, dtype=w.dtype, device=w.device)
        )
        self.scale = alpha / rank
        self.merged = False  # True while the update sits inside base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:  # the update is already in W: adding B A x again would count it twice
            return self.base(x)
        return self.base(x) + self.scale * (x @ self.A.T) @ self.B.T

    def delta_weight(self) -> torch.Tensor:
        """The update ``(alpha / r) B A``, ``(d_out, d_in)``, of rank at most ``r``."""
        return self.scale * self.B @ self.A

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"A: {tuple(self.A.shape)}, B: {tuple(self.B.shape)}, scale: {self.scale:g}"


def inject_lora(
    model: torch.nn.Module, rank: int, alpha: float, targets=LORA_TARGET_MODULES
) -> list[str]:
    """Swap every ``nn.Linear`` whose name ends in a target for a ``LoRALinear``; return the names."""
    suffixes = tuple("." + t for t in targets)
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and n.endswith(suffixes)
    ]
    for name in names:
        parent_name, child = name.rsplit(".", 1)
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(parent.get_submodule(child), rank, alpha))
    return names


# ---------------------------------------------------------------------------
# Sizes (from the architecture alone, on the meta device)
# ---------------------------------------------------------------------------


def lora_parameter_count(
    rank: int, unet: torch.nn.Module | None = None, target_modules=LORA_TARGET_MODULES
) -> int:
    """Parameters of a rank-``rank`` adapter: ``rank * (d_in + d_out)`` summed over layers.

    For a conv layer ``A`` is a ``(rank, d_in, k, k)`` conv and ``B`` a 1x1 conv, so it
    adds ``rank * (d_in * k * k + d_out)``. ``unet`` defaults to the SD 1.5 layout (meta
    device). Rank 4 on SD 1.5's attention projections gives 797,184.
    """
    unet = unet if unet is not None else layout_models("sd15")["unet"]
    return sum(
        sum(t.numel() for t in _lora_pair(rank, shape, torch.device("meta")))
        for shape in target_layer_shapes(unet, target_modules).values()
    )


def _lora_pair(rank: int, shape: tuple[int, ...], device, dtype=torch.float32):
    """Zero ``A`` and ``B`` for a layer whose weight has ``shape`` (Linear or Conv2d)."""
    d_out, d_in, *kernel = shape
    down = torch.zeros(rank, d_in, *kernel, dtype=dtype, device=device)
    up = torch.zeros(d_out, rank, *([1] * len(kernel)), dtype=dtype, device=device)
    return down, up


def lora_size_table(
    ranks=(1, 2, 4, 8, 16, 32, 64),
    unet: torch.nn.Module | None = None,
    target_modules=LORA_TARGET_MODULES,
    dtype: torch.dtype = torch.float32,
) -> list[dict[str, int]]:
    """Adapter size for each rank: parameters, tensors and the exact safetensors bytes.

    The file size is measured by serialising zero tensors of the right shapes in memory
    (same header as a saved adapter, without metadata).

    Returns:
        One dict per rank with ``rank``, ``parameters``, ``tensors`` and ``file_bytes``.
    """
    from safetensors.torch import save

    unet = unet if unet is not None else layout_models("sd15")["unet"]
    shapes = target_layer_shapes(unet, target_modules)
    rows = []
    for rank in ranks:
        tensors = {}
        for name, shape in shapes.items():
            down, up = _lora_pair(rank, shape, "cpu", dtype)
            tensors[f"{UNET_PREFIX}{name}.lora_A.weight"] = down
            tensors[f"{UNET_PREFIX}{name}.lora_B.weight"] = up
        rows.append(
            {
                "rank": int(rank),
                "parameters": sum(t.numel() for t in tensors.values()),
                "tensors": len(tensors),
                "file_bytes": len(save(tensors, metadata={"format": "pt"})),
            }
        )
    return rows
