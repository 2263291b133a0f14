"""Cross-attention maps: where in the picture each word of the prompt is looked at.

Lesson module of notebook ``06_inference_comparison`` (its cross-attention section), which
writes :class:`CrossAttentionRecorder` out with the same text (a test compares the two).

Every transformer block of the UNet has a cross-attention layer, ``attn2``: its queries
come from the image latents (``(B, h*w, C)``, one per latent pixel), its keys from the
text encoder's states (``(B, 77, D)``, one per token). The softmax over the 77 token
positions gives each latent pixel a probability distribution over the tokens. Most of
that mass goes to the start token and the padding, which carry no word, so the maps here
keep only the prompt's word tokens and renormalise over them: each pixel's shares of the
prompt's words add up to 1, and a word nobody singles out gets ``1 / n_words``.

The maps come from the highest-resolution cross-attention layers (the latent's own side
on SD 1.5 and on TinyEmote), averaged over heads and over those layers.

We record with diffusers' public attention-processor API: :func:`recording_cross_attention`
swaps every ``attn2`` processor for a :class:`CrossAttentionRecorder` (which runs the
original processor unchanged, so the UNet's output is identical, and computes the
probabilities on the side) and puts the original processors back afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.sampling import SamplingSettings, generate

CROSS_ATTENTION_NAME = "attn2"


class CrossAttentionRecorder:
    """An attention processor: the original processor's output, and the cross-attention probabilities kept.

    Each cross-attention call whose queries have ``positions`` latent pixels appends its
    softmax probabilities, averaged over heads, ``(B, positions, 77)``, to the list ``kept``.
    """

    def __init__(self, original, kept, positions):
        self.original, self.kept, self.positions = original, kept, positions

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        # Cross-attention (keys from the text) at the resolution we map; (B, h*w, C) queries.
        if encoder_hidden_states is not None and hidden_states.shape[1] == self.positions:
            query = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (B*heads, h*w, d)
            key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))  # (B*heads, 77, d)
            probs = attn.get_attention_scores(query, key)  # softmax over the 77 tokens
            probs = probs.view(-1, attn.heads, *probs.shape[1:]).mean(dim=1)  # (B, h*w, 77)
            self.kept.append(probs.detach().float().cpu())
        return self.original(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


@contextmanager
def recording_cross_attention(unet: torch.nn.Module, map_side: int) -> Iterator[list]:
    """Record cross-attention probabilities at one resolution while the block runs.

    Args:
        unet: a diffusers ``UNet2DConditionModel``; its processors are restored on exit,
            even after an error.
        map_side: the side of the attention maps to keep (``h`` for ``h x h`` latent
            positions); layers at other resolutions are skipped.

    Yields:
        The list the recorders append to: one ``(B, h*h, 77)`` tensor per ``attn2`` call
        at that side, in call order; every pixel's row sums to 1 over the 77 tokens. Clear
        it between denoising steps to keep steps apart.
    """
    originals = unet.attn_processors
    kept: list[torch.Tensor] = []
    positions = int(map_side) ** 2
    swapped = {
        name: CrossAttentionRecorder(proc, kept, positions)
        if f".{CROSS_ATTENTION_NAME}.processor" in f".{name}"
        else proc
        for name, proc in originals.items()
    }
    unet.set_attn_processor(swapped)
    try:
        yield kept
    finally:
        unet.set_attn_processor(originals)


def cross_attention_sides(unet: torch.nn.Module, latent_side: int) -> list[int]:
    """The sides of the latent grids the UNet's cross-attention layers work at, largest first.

    SD 1.5 at 256 px (a 32 x 32 latent): ``[32, 16, 8]``; TinyEmote at 64 px: ``[8, 4]``.
    """
    sides, side = set(), int(latent_side)
    for block in unet.config.down_block_types:
        if "CrossAttn" in block:
            sides.add(side)
        side = max(1, side // 2)
    return sorted(sides, reverse=True)


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


def prompt_token_positions(tokenizer, prompt: str) -> list[int]:
    """The positions of the prompt's own tokens: not the start token, the end token or padding."""
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    return list(range(1, len(ids) - 1))


def word_shares(probs: torch.Tensor, prompt_positions: list[int], word_positions: list[list[int]]):
    """Each word's share of a pixel's attention to the prompt's words.

    Args:
        probs: ``(P, 77)`` softmax probabilities of ``P`` latent pixels over the tokens.
        prompt_positions: the prompt's word tokens (:func:`prompt_token_positions`).
        word_positions: for each word, its token positions (:func:`word_token_positions`).

    Returns:
        ``(W, P)``: per word, the summed probability of its tokens divided by the summed
        probability of all the prompt's tokens, so each in [0, 1].
    """
    over_prompt = probs[:, prompt_positions].sum(dim=-1)  # (P,)
    return torch.stack([probs[:, pos].sum(dim=-1) / over_prompt for pos in word_positions])


def cross_attention_maps(
    pipe,
    settings: SamplingSettings,
    *,
    words: list[str],
    at_steps: list[int] | None = None,
    map_side: int | None = None,
) -> dict:
    """Generate one image and record where each word of the prompt was attended to.

    Args:
        pipe: a ``StableDiffusionPipeline`` (with or without a LoRA loaded).
        settings: its first prompt (an emoji name, e.g. ``"cat face"``, through its caption
            template: ``"An emoji of cat face"``) at its first seed, steps, guidance and size.
        words: words of the prompt to map, e.g. ``["cat", "face"]``.
        at_steps: denoising step indices to keep (0-based); default: first, middle, last.
        map_side: attention resolution to average over; default the highest one the UNet
            has (32 for a 256 px image on SD 1.5, 8 for TinyEmote's 64 px).

    Returns:
        ``{"image": PIL image, "words": words, "steps": at_steps, "map_side": h,
        "uniform": 1 / n, "maps": (S, W, h, h) tensor}``: per step and word, the word's
        share of each pixel's attention to the prompt's ``n`` word tokens (the
        conditional branch, averaged over the layers at side ``h``), each in [0, 1].
    """
    prompt, seed = settings.caption(settings.prompts[0]), settings.seeds[0]
    steps, resolution_px = settings.steps, settings.resolution_px
    latent_side = resolution_px // pipe.vae_scale_factor
    sides = cross_attention_sides(pipe.unet, latent_side)
    side = int(map_side or sides[0])
    if side not in sides:
        raise StableEmoteError(
            f"No cross-attention layer works at {side}x{side} for a {resolution_px} px image; "
            f"this UNet's attention sides at this size are {sides}."
        )
    keep = sorted(set(at_steps if at_steps is not None else (0, steps // 2, steps - 1)))
    if not keep or min(keep) < 0 or max(keep) >= steps:
        raise StableEmoteError(f"at_steps must be step indices between 0 and {steps - 1}.")
    positions = [word_token_positions(pipe.tokenizer, prompt, w) for w in words]
    prompt_positions = prompt_token_positions(pipe.tokenizer, prompt)
    per_step: dict[int, torch.Tensor] = {}

    with recording_cross_attention(pipe.unet, side) as kept:

        def end_of_step(pipeline, i, t, callback_kwargs):
            if i in keep:  # the layers' mean, conditional half of the guidance batch
                per_step[i] = torch.stack(kept).mean(dim=0)[-1]  # (h*h, 77)
            kept.clear()
            return callback_kwargs

        image = generate(pipe, prompt, seed, settings, callback_on_step_end=end_of_step)
    maps = [word_shares(per_step[s], prompt_positions, positions) for s in keep]
    return {
        "image": image,
        "words": list(words),
        "steps": keep,
        "map_side": side,
        "uniform": 1 / len(prompt_positions),
        "maps": torch.stack(maps).view(len(keep), len(words), side, side),
    }
