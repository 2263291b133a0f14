"""Cross-attention maps: where in the picture each word of the prompt is looked at.

Lesson module of notebook ``06_inference_comparison`` (its cross-attention section).

Every transformer block of the UNet has a cross-attention layer, ``attn2``: its queries
come from the image latents (``(B, h*w, C)``, one per latent pixel), its keys from the
text encoder's states (``(B, 77, D)``, one per token). The softmax over the 77 token
positions gives each latent pixel a probability distribution over the tokens. Averaged
over heads and over all ``attn2`` layers working at one resolution, and read off for
the tokens of one word, that is a heatmap of where the model puts the word.

We record it with diffusers' public attention-processor API: :func:`recording_cross_attention`
swaps every ``attn2`` processor for a :class:`CrossAttentionRecorder` (which runs the
original processor unchanged, so the UNet's output is identical, and computes the
probabilities on the side) and puts the original processors back afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.sampling import generate

CROSS_ATTENTION_NAME = "attn2"


class CrossAttentionRecorder:
    """An attention processor: the original one's output, plus the attention probabilities.

    For each call whose query has ``store["map_side"] ** 2`` positions it adds the
    softmax probabilities, averaged over heads, ``(B, h*w, 77)``, to
    ``store["sum"][step]`` and counts the layer in ``store["count"][step]``, where
    ``step = store["step"]`` (advanced by the pipeline's step callback).
    """

    def __init__(self, original, store: dict):
        self.original = original
        self.store = store

    @torch.no_grad()
    def _record(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor):
        if hidden_states.ndim == 4:  # (B, C, H, W) -> (B, H*W, C)
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        pixels = hidden_states.shape[1]
        side = int(round(pixels**0.5))
        self.store["seen_sides"].add(side)
        if side != self.store["map_side"] or side * side != pixels:
            return
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (B*heads, h*w, d)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))  # (B*heads, 77, d)
        probs = attn.get_attention_scores(query, key, None)  # (B*heads, h*w, 77)
        batch = hidden_states.shape[0]
        probs = probs.float().view(batch, attn.heads, pixels, -1).mean(dim=1).cpu()
        step = self.store["step"]
        if step in self.store["sum"]:
            self.store["sum"][step] += probs
            self.store["count"][step] += 1
        else:
            self.store["sum"][step] = probs
            self.store["count"][step] = 1

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        out = self.original(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
        )
        if encoder_hidden_states is not None and self.store["active"]:
            self._record(attn, hidden_states, encoder_hidden_states)
        return out


@contextmanager
def recording_cross_attention(unet: torch.nn.Module, map_side: int) -> Iterator[dict]:
    """Record cross-attention probabilities at one resolution while the block runs.

    Args:
        unet: a diffusers ``UNet2DConditionModel``; its processors are restored on exit,
            even after an error.
        map_side: the side of the attention maps to keep (``h`` for ``h x h`` latent
            positions); layers at other resolutions are skipped.

    Yields:
        The store: ``{"step": int, "active": bool, "map_side": int, "seen_sides": set,
        "sum": {step: (B, h*h, 77)}, "count": {step: layers}}``. The mean map of a step
        is ``sum[step] / count[step]``; every pixel's row sums to 1 over the 77 tokens.
    """
    originals = unet.attn_processors
    store = {
        "step": 0,
        "active": True,
        "map_side": int(map_side),
        "seen_sides": set(),
        "sum": {},
        "count": {},
    }
    swapped = {
        name: CrossAttentionRecorder(proc, store)
        if f".{CROSS_ATTENTION_NAME}.processor" in f".{name}"
        else proc
        for name, proc in originals.items()
    }
    unet.set_attn_processor(swapped)
    try:
        yield store
    finally:
        unet.set_attn_processor(originals)


def mean_maps(store: dict) -> dict[int, torch.Tensor]:
    """``{step: (B, h*h, 77)}``: the recorded probabilities averaged over layers."""
    return {step: store["sum"][step] / store["count"][step] for step in sorted(store["sum"])}


def word_token_positions(tokenizer, prompt: str, word: str) -> list[int]:
    """Where the tokens of ``word`` sit in the tokenized ``prompt`` (position 0 is the start token).

    Raises:
        StableEmoteError: if the word's tokens do not occur in the prompt.
    """
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    word_ids = tokenizer(word, add_special_tokens=False).input_ids
    for start in range(1, len(ids) - len(word_ids) + 1):
        if ids[start : start + len(word_ids)] == word_ids:
            return list(range(start, start + len(word_ids)))
    raise StableEmoteError(
        f"'{word}' is not a word of the prompt '{prompt}' (as the tokenizer splits it). Pick a "
        "word that appears in the prompt."
    )


def cross_attention_maps(
    pipe,
    prompt: str,
    words: list[str],
    seed: int = 0,
    steps: int = 25,
    guidance: float = 7.5,
    resolution_px: int = 256,
    at_steps: list[int] | None = None,
    map_side: int | None = None,
) -> dict:
    """Generate one image and record where each word of the prompt was attended to.

    Args:
        pipe: a ``StableDiffusionPipeline`` (with or without a LoRA loaded).
        prompt: the full prompt, e.g. ``"An emoji of cat face"``.
        words: words of the prompt to map, e.g. ``["cat", "face"]``.
        seed: seed of the CPU generator for the initial noise.
        at_steps: denoising step indices to keep (0-based); default: first, middle, last.
        map_side: attention resolution to average over; default half the latent side
            (16 for a 256 px image on SD 1.5, 4 for the tiny model's 64 px).

    Returns:
        ``{"image": PIL image, "words": words, "steps": at_steps, "map_side": h,
        "maps": (S, W, h, h) tensor}``: the attention mass (sum over the word's tokens of
        the conditional branch's probabilities) per step and word, each in [0, 1].
    """
    latent_side = resolution_px // pipe.vae_scale_factor
    side = int(map_side or max(1, latent_side // 2))
    keep = sorted(set(at_steps if at_steps is not None else (0, steps // 2, steps - 1)))
    if not keep or min(keep) < 0 or max(keep) >= steps:
        raise StableEmoteError(f"at_steps must be step indices between 0 and {steps - 1}.")
    positions = [word_token_positions(pipe.tokenizer, prompt, w) for w in words]

    def next_step(pipeline, i, t, callback_kwargs):
        store["step"] = i + 1
        store["active"] = i + 1 in keep
        return callback_kwargs

    with recording_cross_attention(pipe.unet, side) as store:
        store["active"] = 0 in keep
        image = generate(
            pipe, prompt, seed, steps, guidance, resolution_px, callback_on_step_end=next_step
        )
    if not store["sum"]:
        raise StableEmoteError(
            f"No cross-attention layer works at {side}x{side} for a {resolution_px} px image; "
            f"this UNet's attention sides at this size are {sorted(store['seen_sides'])}."
        )
    maps = mean_maps(store)
    per_step = []
    for step in keep:
        probs = maps[step][-1]  # the conditional half of the guidance batch: (h*h, 77)
        per_word = [probs[:, pos].sum(dim=-1).view(side, side) for pos in positions]
        per_step.append(torch.stack(per_word))
    return {
        "image": image,
        "words": list(words),
        "steps": keep,
        "map_side": side,
        "maps": torch.stack(per_step),
    }
