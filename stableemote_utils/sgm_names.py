"""SDXL's original layer names: diffusers' UNet names -> Stability's (SGM) names.

SDXL was released as Stability's "generative models" (SGM) code, and the tools that
share SDXL LoRAs (kohya's sd-scripts, the AUTOMATIC1111 web UI, ComfyUI) name its UNet's
layers as that code does: ``input_blocks`` / ``middle_block`` / ``output_blocks``,
numbered in the order the layers run, instead of diffusers' ``down_blocks`` /
``mid_block`` / ``up_blocks``. A kohya SDXL file therefore writes diffusers'
``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`` as
``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``. SD 1.x files keep
diffusers' names, so only SDXL needs this table.

The numbering, for ``L`` = ``layers_per_block`` (2 for SDXL):

* ``conv_in`` is ``input_blocks.0.0``; down block ``i``'s layer ``j`` is
  ``input_blocks.{1 + i(L+1) + j}``, with ``.0`` its ResNet and ``.1`` its transformer;
  its downsampler is ``input_blocks.{(i+1)(L+1)}.0.op``.
* ``middle_block.0`` / ``.2`` are the middle ResNets, ``middle_block.1`` the transformer.
* up block ``i``'s layer ``j`` is ``output_blocks.{i(L+1) + j}`` (``.0`` ResNet, ``.1``
  transformer); its upsampler sits after them in the block's last layer, at ``.2`` when
  the block has transformers, else ``.1``.
* Inside a ResNet, ``norm1 conv1 time_emb_proj norm2 conv2 conv_shortcut`` are
  ``in_layers.0 in_layers.2 emb_layers.1 out_layers.0 out_layers.3 skip_connection``;
  inside a transformer the names are the same in both.
"""

from __future__ import annotations

from stableemote_utils.loading import is_sdxl_unet

# kohya's name for each family's text encoders, and the base model its header names.
KOHYA_TEXT_PREFIXES = {
    "sd15": {"text_encoder": "lora_te_"},
    "sdxl": {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"},
}
KOHYA_BASE_VERSION = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _inner(kind: str, rest: list[str]) -> str:
    """A ResNet's or transformer's own part of the name, SGM style (``rest`` after the index)."""
    if kind == "resnets" and rest:
        rest = [_RESNET.get(rest[0], rest[0]), *rest[1:]]
    return ".".join(rest)


def sgm_layer_name(name: str, unet_config) -> str:
    """diffusers' name of an SDXL UNet layer -> its SGM name (the table in the module doc).

    ``"down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"`` ->
    ``"input_blocks.4.1.transformer_blocks.0.attn1.to_q"``. Names outside the table are
    returned unchanged.
    """
    per_block = int(dict(unet_config)["layers_per_block"]) + 1
    up_types = dict(unet_config)["up_block_types"]
    parts = name.split(".")
    for prefix, sgm in _TOP_LEVEL.items():
        if name == prefix or name.startswith(prefix + "."):
            return sgm + name[len(prefix) :]
    if parts[0] == "mid_block" and len(parts) >= 3:  # mid_block has no block number
        kind, index, rest = parts[1], parts[2], parts[3:]
        position = 2 * int(index) if kind == "resnets" else 1
        inner = _inner(kind, rest)
        return f"middle_block.{position}" + (f".{inner}" if inner else "")
    if len(parts) < 4:
        return name
    block, kind, index, rest = parts[1], parts[2], parts[3], parts[4:]
    if parts[0] == "down_blocks":
        i = int(block)
        if kind == "downsamplers":  # diffusers' conv -> SGM's op
            return ".".join([f"input_blocks.{(i + 1) * per_block}.0.op", *rest[1:]])
        slot = "0" if kind == "resnets" else "1"
        stem = f"input_blocks.{1 + i * per_block + int(index)}.{slot}"
    elif parts[0] == "up_blocks":
        i = int(block)
        if kind == "upsamplers":
            slot = 2 if up_types[i].startswith("CrossAttn") else 1
            return ".".join([f"output_blocks.{i * per_block + per_block - 1}.{slot}", *rest])
        slot = "0" if kind == "resnets" else "1"
        stem = f"output_blocks.{i * per_block + int(index)}.{slot}"
    else:
        return name
    inner = _inner(kind, rest)
    return f"{stem}.{inner}" if inner else stem


def kohya_family(unet_config) -> str:
    """``"sdxl"`` for an SDXL UNet config (its kohya names are SGM names), else ``"sd15"``."""
    return "sdxl" if is_sdxl_unet(unet_config) else "sd15"


def kohya_unet_layer(name: str, unet_config) -> str:
    """The layer name a kohya file writes for a diffusers UNet layer: SGM's for SDXL
    (:func:`sgm_layer_name`), diffusers' own for SD 1.x."""
    return sgm_layer_name(name, unet_config) if is_sdxl_unet(unet_config) else name
