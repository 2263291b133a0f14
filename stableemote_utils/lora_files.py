"""LoRA adapter files: save them, read them, and check that they fit a model.

Adapter files are ``pytorch_lora_weights.safetensors`` with keys such as
``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight`` (what
``StableDiffusionPipeline.save_lora_weights`` writes and ``load_lora_weights`` reads).
Files in the older diffusers style and the kohya style (AUTOMATIC1111, ComfyUI) are read
too. Infrastructure under the lesson module :mod:`stableemote_utils.lora` (the layer
written by hand) and :mod:`stableemote_utils.lora_peft` (which adds a peft adapter to a
UNet and loads these files into a pipeline); describing a file (``inspect_lora``) and
exporting it to kohya keys (``export_kohya``) are in :mod:`stableemote_utils.lora_inspect`.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from pathlib import Path

import torch

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.files import save_state_dict_atomic
from stableemote_utils.sgm_names import kohya_unet_layer
from stableemote_utils.training_config import LORA_TARGET_MODULES

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
UNET_PREFIX = "unet."
# diffusers reads the adapter's peft config from this header entry when it loads a file.
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
# An adapter's update is scaled by alpha / rank; 1 is usual, a few is strong. Beyond this
# the update swamps the base weights and the images degenerate (inspect flags it, loading refuses).
ALPHA_OVER_RANK_MAX = 64.0
# How many example keys an error message lists.
EXAMPLES_SHOWN = 4


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------


def lora_state_dict(
    unet: torch.nn.Module, adapter_name: str = "default"
) -> dict[str, torch.Tensor]:
    """The adapter's weights, keyed as ``pipe.load_lora_weights`` reads them.

    Keys look like ``unet.<layer>.lora_A.weight`` (``(r, d_in)``) and
    ``unet.<layer>.lora_B.weight`` (``(d_out, r)``); values are detached CPU copies in the
    dtype the adapter is kept in (fp32 after :func:`add_lora`).
    """
    from peft.utils import get_peft_model_state_dict

    if adapter_name not in getattr(unet, "peft_config", {}):
        raise StableEmoteError(
            f"The UNet has no LoRA adapter named '{adapter_name}'. Add one with add_lora(unet) "
            "or load one with load_lora(pipe, path)."
        )
    state = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    return {UNET_PREFIX + k: v.detach().to("cpu").clone() for k, v in state.items()}


def _peft_config_metadata(unet: torch.nn.Module, adapter_name: str) -> dict:
    """The adapter's peft config as JSON-ready values, for diffusers' header entry."""
    config = unet.peft_config[adapter_name].to_dict()
    out = {}
    for k, v in config.items():
        if isinstance(v, set):
            v = sorted(v)
        try:
            json.dumps(v)
        except TypeError:
            continue
        out[k] = v
    return out


def save_lora(
    unet: torch.nn.Module,
    folder: str | os.PathLike,
    metadata: dict[str, str] | None = None,
    adapter_name: str = "default",
) -> Path:
    """Save the UNet's adapter as ``folder/pytorch_lora_weights.safetensors``.

    The file is what ``StableDiffusionPipeline.save_lora_weights`` writes (load it with
    :func:`load_lora` or ``pipe.load_lora_weights(folder)``). Its header carries
    ``metadata`` (strings, e.g. base model, steps) plus ``rank``, ``alpha`` and
    ``target_modules``, and the peft config that diffusers reads back, so an alpha
    other than the rank survives the round trip.

    Returns:
        The path of the written file.
    """
    if metadata is not None and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise StableEmoteError(
            "LoRA file metadata must map strings to strings (safetensors headers hold text); "
            "convert numbers with str() first."
        )
    # Not StableDiffusionPipeline.save_lora_weights: it writes the same tensors and config
    # entry, but cannot add our header entries and writes in place (tests/test_lora.py).
    state = lora_state_dict(unet, adapter_name)
    config = _peft_config_metadata(unet, adapter_name)
    header = {
        "rank": str(config["r"]),
        "alpha": str(config["lora_alpha"]),
        "target_modules": ",".join(config.get("target_modules") or []),
        DIFFUSERS_METADATA_KEY: json.dumps(
            {UNET_PREFIX + k: v for k, v in config.items()}, indent=2, sort_keys=True
        ),
    }
    header.update(metadata or {})
    return save_state_dict_atomic(state, Path(folder) / LORA_WEIGHT_NAME, header)


# ---------------------------------------------------------------------------
# Reading adapter files and checking that they fit
# ---------------------------------------------------------------------------


# Key endings of the three published LoRA styles, and which matrix each names.
_KEY_ENDINGS = (
    (".lora_A.weight", "down"),  # peft
    (".lora_B.weight", "up"),
    (".lora.down.weight", "down"),  # older diffusers
    (".lora.up.weight", "up"),
    (".lora_down.weight", "down"),  # kohya (AUTOMATIC1111, ComfyUI)
    (".lora_up.weight", "up"),
    (".alpha", "alpha"),
)


# Key beginnings -> component. Kohya keys write the layer name with "_" for ".".
_KEY_PREFIXES = (
    ("unet.", "unet", False),
    ("text_encoder.", "text_encoder", False),
    ("text_encoder_2.", "text_encoder_2", False),
    ("lora_unet_", "unet", True),
    ("lora_te_", "text_encoder", True),
    ("lora_te1_", "text_encoder (SDXL)", True),
    ("lora_te2_", "text_encoder_2", True),
)


def resolve_lora_file(path: str | os.PathLike) -> Path:
    """The adapter file for ``path``: the file itself, or ``pytorch_lora_weights.safetensors``
    (else the only ``*.safetensors``) inside a folder."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_dir():
        if (p / LORA_WEIGHT_NAME).is_file():
            return p / LORA_WEIGHT_NAME
        found = sorted(p.glob("*.safetensors"))
        if len(found) == 1:
            return found[0]
        raise StableEmoteError(
            f"The folder '{p}' holds {len(found)} .safetensors files and no {LORA_WEIGHT_NAME}; "
            "pass the adapter file itself."
        )
    if not p.is_file():
        raise StableEmoteError(
            f"The LoRA file '{p}' does not exist. Pass a .safetensors adapter file or the "
            f"folder that holds {LORA_WEIGHT_NAME} (as written by save_lora or training)."
        )
    return p


def read_lora_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read an adapter file (or folder) into ``(tensors, header metadata)`` on the CPU.

    Raises:
        StableEmoteError: if it is missing or not a safetensors file (pickled ``.bin`` /
            ``.pt`` files are refused: loading them can run code).
    """
    from safetensors import safe_open

    file = resolve_lora_file(path)
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise StableEmoteError(
            f"'{file}' is not a safetensors file ({type(err).__name__}: {err}). StableEmote "
            "only reads adapters saved as .safetensors; pickled .bin/.pt/.ckpt files can run "
            "code when loaded. Convert it with a tool you trust, or re-save the adapter."
        ) from err
    metadata.pop("format", None)
    return tensors, metadata


def split_key(key: str) -> tuple[str, str, bool, str, str] | None:
    """``(component, layer, kohya_style, matrix, ending)`` for a LoRA key, or None."""
    found = next(((e, m) for e, m in _KEY_ENDINGS if key.endswith(e)), None)
    if found is None:
        return None
    ending, matrix = found
    stem = key[: -len(ending)]
    for prefix, component, kohya in _KEY_PREFIXES:
        if stem.startswith(prefix):
            return component, stem[len(prefix) :], kohya, matrix, ending
    if matrix == "alpha":
        return None
    # Keys without a component prefix are UNet keys in the diffusers layout.
    return "unet", stem, False, matrix, ending


def _adaptable_layers(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Layer name -> weight shape for every Linear and Conv2d (peft-wrapped ones too)."""
    layers = {}
    for name, module in model.named_modules():
        base = getattr(module, "base_layer", None)
        if isinstance(base, (torch.nn.Linear, torch.nn.Conv2d)):
            layers[name] = tuple(base.weight.shape)
        elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and not name.endswith(
            ".base_layer"
        ):
            if ".lora_A." in name or ".lora_B." in name:
                continue
            layers[name] = tuple(module.weight.shape)
    return layers


RANK_BREAK = "A and B disagree"


def _layer_problem(weight_shape: tuple[int, ...], parts: dict[str, torch.Tensor]) -> str | None:
    """Why a LoRA layer's ``down``/``up`` matrices do not fit a weight, or None if they do."""
    if "down" not in parts or "up" not in parts:
        have = "/".join(sorted(k for k in parts if k != "alpha")) or "only alpha"
        return f"incomplete layer (has {have}, needs both down and up)"
    down, up = parts["down"], parts["up"]
    d_out, d_in = weight_shape[0], weight_shape[1]
    if down.ndim != len(weight_shape) or up.ndim != len(weight_shape):
        return f"matrices of {down.ndim}/{up.ndim} dims for a layer whose weight has {len(weight_shape)}"
    rank = down.shape[0]
    if up.shape[1] != rank:
        return f"rank {rank} in lora_A/down but {up.shape[1]} in lora_B/up: {RANK_BREAK}"
    if down.shape[1] != d_in or up.shape[0] != d_out:
        return (
            f"shapes down {tuple(down.shape)}, up {tuple(up.shape)} for a layer of "
            f"{d_in} inputs and {d_out} outputs"
        )
    if len(weight_shape) == 4 and (
        tuple(down.shape[2:]) != tuple(weight_shape[2:]) or tuple(up.shape[2:]) != (1, 1)
    ):
        return f"conv kernels {tuple(down.shape[2:])}/{tuple(up.shape[2:])} for {weight_shape[2:]}"
    return None


def _resolve_layer(layer: str, kohya: bool, names: dict, underscored: dict[str, str]) -> str:
    """The model's name for a layer named in a file (kohya ``a_b_c`` -> ``a.b.c``).

    Text-encoder names are accepted with and without transformers' older ``text_model.``
    level, which published adapters use.
    """
    for candidate in (layer, layer.removeprefix("text_model."), layer.removeprefix("text_model_")):
        if kohya:
            candidate = underscored.get(candidate, candidate)
        if candidate in names:
            return candidate
    return layer


def match_lora(
    state_dict: dict[str, torch.Tensor],
    models: dict[str, torch.nn.Module],
) -> dict:
    """Match every key of an adapter state dict to a layer of ``models``.

    Args:
        state_dict: LoRA tensors in peft (``lora_A``/``lora_B``), older diffusers
            (``lora.down``/``lora.up``) or kohya (``lora_unet_…``/``lora_down``/``alpha``) style.
        models: component name -> module, e.g. ``{"unet": unet, "text_encoder": te}``; a
            meta-device model is enough (only names and shapes are read).

    Returns:
        A dict with ``layers`` (component -> layer name -> ``{"down": (r, d_in[, k, k]),
        "up": (d_out, r[, 1, 1]), "alpha": float | None}`` tensors), ``matched`` and
        ``unmatched`` (lists of keys), ``problems`` (key -> reason), ``not_lora`` (keys
        that are not LoRA weights) and ``components`` (component -> number of keys).
    """
    known = {c: _adaptable_layers(m) for c, m in models.items()}
    underscored = {c: {n.replace(".", "_"): n for n in names} for c, names in known.items()}
    unet = models.get("unet")
    if unet is not None:  # kohya's SDXL files name the UNet's layers as SGM does
        underscored["unet"].update(
            {kohya_unet_layer(n, unet.config).replace(".", "_"): n for n in known["unet"]}
        )
    layers: dict[str, dict[str, dict]] = {}
    keys_of: dict[tuple[str, str], list[str]] = {}
    not_lora = []
    for key, value in state_dict.items():
        split = split_key(key)
        if split is None:
            not_lora.append(key)
            continue
        component, layer, kohya, matrix, _ = split
        layer = _resolve_layer(
            layer, kohya, known.get(component, {}), underscored.get(component, {})
        )
        parts = layers.setdefault(component, {}).setdefault(layer, {})
        parts[matrix] = float(value.float().reshape(-1)[0]) if matrix == "alpha" else value
        keys_of.setdefault((component, layer), []).append(key)
    matched, unmatched, problems = [], [], {}
    for component, by_layer in layers.items():
        for layer, parts in by_layer.items():
            keys = keys_of[(component, layer)]
            if component not in known:
                why = f"a {component} layer, and this model has no such component to load it into"
            elif layer not in known[component]:
                why = f"no layer '{layer}' in the {component}"
            else:
                why = _layer_problem(known[component][layer], parts)
            if why is None:
                matched += keys
            else:
                unmatched += keys
                problems[keys[0]] = why
            parts.setdefault("alpha", None)
    return {
        "layers": layers,
        "matched": matched,
        "unmatched": unmatched,
        "problems": problems,
        "not_lora": not_lora,
        "components": {c: sum(len(keys_of[(c, n)]) for n in ls) for c, ls in layers.items()},
    }


def check_lora_fits(
    path: str | os.PathLike,
    models: dict[str, torch.nn.Module],
    state_dict: dict[str, torch.Tensor] | None = None,
) -> dict:
    """Check that an adapter file loads into ``models`` completely, or raise.

    Every tensor must be a LoRA weight, there must be UNet weights, and every layer must
    exist with matching shapes. Otherwise a StableEmoteError names the file, the number
    of keys that matched and did not, and a few examples: never a silent load that
    changes nothing.

    Returns:
        The result of :func:`match_lora` when everything fits.
    """
    file = resolve_lora_file(path)
    if state_dict is None:
        state_dict, _ = read_lora_file(file)
    result = match_lora(state_dict, models)
    n_keys = len(state_dict)
    lora_keys = len(result["matched"]) + len(result["unmatched"])
    hint = (
        " StableEmote loads LoRA adapters for the SD 1.x UNet, with keys in peft style "
        "(unet.<layer>.lora_A.weight / lora_B.weight), older diffusers style "
        "(<layer>.lora.down.weight / lora.up.weight) or kohya style (lora_unet_<layer>.lora_down.weight)."
    )
    if n_keys == 0 or lora_keys == 0:
        examples = result["not_lora"][:EXAMPLES_SHOWN]
        raise StableEmoteError(
            f"'{file}' holds no LoRA weights: 0 of {n_keys} keys are LoRA keys"
            + (f" (e.g. {examples})" if examples else "")
            + ". It may be a full model checkpoint or another kind of adapter."
            + hint
        )
    if "unet" not in result["components"]:
        others = ", ".join(f"{n} {c} keys" for c, n in result["components"].items())
        raise StableEmoteError(
            f"'{file}' has no UNet LoRA weights (0 keys matched the UNet; it has {others}): "
            "it is a text-encoder-only adapter (a textual-inversion style or CLIP LoRA). "
            "StableEmote's adapters change the UNet; use an adapter trained on the UNet." + hint
        )
    bad = result["unmatched"] + result["not_lora"]
    if bad:
        examples = [f"{k} ({result['problems'][k]})" for k in result["problems"]][:EXAMPLES_SHOWN]
        examples += [f"{k} (not a LoRA key)" for k in result["not_lora"]][
            : max(0, EXAMPLES_SHOWN - len(examples))
        ]
        why = result["problems"].values()
        if not result["not_lora"] and why and all(RANK_BREAK in w for w in why):
            guess = (
                "The file disagrees with itself: a layer's A and B have different ranks, which "
                "no training run writes, so the file is damaged or was edited; export or "
                "download it again."
            )
        elif (
            result["matched"]
            and not result["not_lora"]
            and all(w.startswith("no layer") for w in why)
        ):
            guess = (
                "The other layers fit, so it was probably made for a UNet with more layers than "
                "this one (or edited); loading only the keys that match would apply part of it."
            )
        else:
            guess = (
                "It is probably an adapter for another architecture (SDXL, SD 2.x) or another "
                "layer layout."
            )
        raise StableEmoteError(
            f"'{file}' does not fit this model: {len(result['matched'])} of {n_keys} keys "
            f"matched and {len(bad)} did not. Examples: "
            + "; ".join(examples)
            + f". {guess}"
            + hint
        )
    return result


def canonical_lora_state_dict(result: dict) -> dict[str, torch.Tensor]:
    """Turn a :func:`match_lora` result into peft-style fp32 keys with alpha folded into B.

    ``(alpha / r) * B @ A`` equals ``1 * B' @ A`` with ``B' = (alpha / r) * B``, so the
    returned dict (keys ``<component>.<layer>.lora_A.weight`` / ``lora_B.weight``) loads
    with any loader that assumes ``alpha = r``.
    """
    out = {}
    for component, by_layer in result["layers"].items():
        for layer, parts in by_layer.items():
            down, up = parts["down"].float(), parts["up"].float()
            alpha = parts.get("alpha")
            if alpha is not None:
                up = up * (alpha / down.shape[0])
            out[f"{component}.{layer}.lora_A.weight"] = down
            out[f"{component}.{layer}.lora_B.weight"] = up
    return out


def _alpha_from_header(metadata: dict[str, str]) -> float | None:
    """The ``alpha`` a StableEmote or diffusers file header records, if any."""
    if "alpha" in metadata:
        try:
            return float(metadata["alpha"])
        except ValueError:
            return None
    raw = metadata.get(DIFFUSERS_METADATA_KEY)
    if raw:
        try:
            value = json.loads(raw).get(UNET_PREFIX + "lora_alpha")
        except (ValueError, AttributeError):
            return None
        return float(value) if value is not None else None
    return None


def apply_header_alpha(result: dict, metadata: dict[str, str]) -> None:
    """Give layers without their own ``.alpha`` the alpha written in the file header."""
    alpha = _alpha_from_header(metadata)
    if alpha is None:
        return
    for parts in result["layers"].get("unet", {}).values():
        if parts.get("alpha") is None:
            parts["alpha"] = alpha


def lora_weight_problems(
    state_dict: dict[str, torch.Tensor], metadata: dict[str, str]
) -> list[str]:
    """What makes an adapter's numbers unusable, as sentences (empty if nothing).

    Two things render a degenerate grid however well the file fits: weights that are
    NaN or infinite, and an alpha whose scale ``alpha / rank`` is not finite, not
    positive, or larger than :data:`ALPHA_OVER_RANK_MAX`.
    """
    problems = []
    bad = [k for k, t in state_dict.items() if t.is_floating_point() and not t.isfinite().all()]
    if bad:
        problems.append(
            f"{len(bad)} of {len(state_dict)} tensors hold NaN or infinite values (e.g. {bad[0]})"
        )
    result = match_lora(state_dict, {})
    apply_header_alpha(result, metadata)
    for component, layers in result["layers"].items():
        for layer, parts in layers.items():
            if parts.get("alpha") is None or "down" not in parts:
                continue
            rank = int(parts["down"].shape[0])
            scale = parts["alpha"] / rank
            if not math.isfinite(scale) or scale <= 0 or scale > ALPHA_OVER_RANK_MAX:
                problems.append(
                    f"alpha {parts['alpha']:g} at rank {rank} scales the update by {scale:g} "
                    f"(sane adapters use a scale above 0 and at most {ALPHA_OVER_RANK_MAX:g}), "
                    f"e.g. in {component}.{layer}"
                )
                return problems
    return problems


def check_lora_file(path: str | os.PathLike) -> Path:
    """Refuse an adapter whose numbers are unusable (see :func:`lora_weight_problems`).

    Returns:
        The adapter file.

    Raises:
        StableEmoteError: missing, not safetensors, NaN/infinite weights or absurd alpha.
    """
    file = resolve_lora_file(path)
    state_dict, metadata = read_lora_file(file)
    problems = lora_weight_problems(state_dict, metadata)
    if problems:
        raise StableEmoteError(
            f"The adapter '{file}' is unusable: {'; '.join(problems)}. It would draw noise or "
            "flat colour; retrain it (a loss that became NaN stops training at the last good "
            "checkpoint) or use an earlier checkpoint."
        )
    return file


def _is_glob(target: str) -> bool:
    return any(c in target for c in "*?[")


def peft_reads_targets(target_modules) -> bool:
    """Whether every entry is a plain name ending, the form peft matches by itself (no
    glob, no ``!`` removal), so the entries can go to peft as they are."""
    return not any(_is_glob(t) or t.startswith("!") for t in target_modules)


def matches_target(name: str, target: str) -> bool:
    """Whether layer ``name`` is picked by one ``target_modules`` entry.

    A plain entry picks the layers whose name is it or ends with ``"." + entry`` (peft's
    rule: ``"to_q"``, ``"attn1.to_q"``); an entry with ``*``, ``?`` or ``[`` is a glob on
    the whole name (``"up_blocks.2.*"``).
    """
    if _is_glob(target):
        return fnmatch.fnmatchcase(name, target)
    return name == target or name.endswith("." + target)


def target_layer_shapes(
    unet: torch.nn.Module, target_modules=LORA_TARGET_MODULES
) -> dict[str, tuple[int, ...]]:
    """Layer name -> weight shape ``(d_out, d_in, ...)`` for the layers LoRA would adapt.

    ``target_modules`` entries are read by :func:`matches_target`; an entry that starts
    with ``!`` removes the layers it picks (``("up_blocks.2.*", "!attn2.to_k")``).
    """
    keep = [t for t in target_modules if not t.startswith("!")]
    drop = [t[1:] for t in target_modules if t.startswith("!")]
    return {
        name: shape
        for name, shape in _adaptable_layers(unet).items()
        if any(matches_target(name, t) for t in keep)
        and not any(matches_target(name, t) for t in drop)
    }
