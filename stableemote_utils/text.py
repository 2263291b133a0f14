"""CLIP text embeddings: a prompt -> 77 token ids -> a (77, D) matrix the UNet reads.

Lesson module of notebook ``02_clip_text_embeddings``.

SD 1.5 uses CLIP ViT-L/14's text tower (D = 768); the tiny preset uses the same
tokenizer with a small random encoder (D = 64). Notebook 02 walks through it.
"""

from __future__ import annotations

import torch

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.tiny_model import write_clip_tokenizer


def _check_prompts(prompts: list[str]) -> None:
    if isinstance(prompts, str) or not prompts:
        raise StableEmoteError(
            "Pass a non-empty list of prompts, e.g. ['smiling face'] (a bare string is ambiguous)."
        )


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Prompts -> token ids ``(B, L)`` with L = ``tokenizer.model_max_length`` (77 for CLIP).

    Each row is ``<start> tokens... <end> <pad>...``; prompts longer than L are cut.
    """
    _check_prompts(prompts)
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def token_table(
    tokenizer, prompt: str, include_padding: bool = False
) -> list[tuple[int, int, str]]:
    """The tokens of one prompt as rows ``(position, id, token)``.

    Tokens are shown as the vocabulary spells them: ``</w>`` marks the end of a word,
    and bytes of characters outside the vocabulary (such as an emoji) appear as odd
    Latin-1 letters. Padding rows are dropped unless ``include_padding``.
    """
    ids = tokenize(tokenizer, [prompt])[0].tolist()
    tokens = tokenizer.convert_ids_to_tokens(ids)
    rows = list(zip(range(len(ids)), ids, tokens, strict=True))
    if include_padding:
        return rows
    end = ids.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in ids else len(ids) - 1
    return rows[: end + 1]


def truncated_words(tokenizer, prompt: str) -> str:
    """The part of ``prompt`` that does not fit into the tokenizer's window ('' if it all fits).

    The window holds ``model_max_length - 2`` prompt tokens (start and end take two).
    """
    # verbose=False: a prompt longer than the window is the point here, not a mistake to warn about.
    ids = tokenizer(prompt, truncation=False, add_special_tokens=False, verbose=False).input_ids
    room = tokenizer.model_max_length - 2
    return tokenizer.decode(ids[room:]) if len(ids) > room else ""


def encode_prompts(tokenizer, text_encoder: torch.nn.Module, prompts: list[str]) -> torch.Tensor:
    """Prompts -> the text encoder's last hidden states ``(B, 77, D)``, what the UNet cross-attends to.

    D is ``text_encoder.config.hidden_size`` (768 for SD 1.5). The empty prompt ``""``
    gives the unconditional embedding that classifier-free guidance uses.
    """
    ids = tokenize(tokenizer, prompts)
    device = next(text_encoder.parameters()).device
    with torch.no_grad():
        return text_encoder(ids.to(device)).last_hidden_state


def pooled_embeddings(tokenizer, text_encoder: torch.nn.Module, prompts: list[str]) -> torch.Tensor:
    """Prompts -> one vector each ``(B, D)``: the hidden state at the end-of-text token.

    CLIP trains this row (after the final layer norm) to summarise the whole prompt.
    SD 1.5's UNet does not use it; it reads all 77 rows.
    """
    ids = tokenize(tokenizer, prompts)
    device = next(text_encoder.parameters()).device
    with torch.no_grad():
        return text_encoder(ids.to(device)).pooler_output


def cosine_similarity_matrix(embeddings: torch.Tensor) -> torch.Tensor:
    """``(B, ...)`` -> ``(B, B)`` cosine similarity of every pair, each row flattened first."""
    if embeddings.ndim < 2 or embeddings.shape[0] < 1:
        raise StableEmoteError(
            f"Expected a batch of embeddings (B, ...), got shape {tuple(embeddings.shape)}."
        )
    flat = torch.nn.functional.normalize(embeddings.detach().float().flatten(1), dim=1)
    return flat @ flat.T


def mix_embeddings(a: torch.Tensor, b: torch.Tensor, weight_b: float) -> torch.Tensor:
    """Blend two prompt embeddings: ``(1 - w) * a + w * b``, same shape as the inputs.

    ``weight_b`` 0 gives ``a``, 1 gives ``b``; values in between ask the UNet for
    something "between" the two prompts (notebook 03 shows what it makes of that).
    """
    if a.shape != b.shape:
        raise StableEmoteError(
            f"Cannot mix embeddings of shapes {tuple(a.shape)} and {tuple(b.shape)}."
        )
    if not 0.0 <= weight_b <= 1.0:
        raise StableEmoteError(f"weight_b must lie in [0, 1], got {weight_b}.")
    return (1.0 - weight_b) * a + weight_b * b


def clip_tokenizer():
    """SD 1.5's CLIP tokenizer, built offline from the CLIP vocabulary (no Hub access)."""
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp))
