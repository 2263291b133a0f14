"""Drawing pictures to look at: one seeded-generation function and the settings it takes.

Every picture the course shows for comparison is made by :func:`generate`: the fair
base-vs-LoRA grid (:mod:`~stableemote_utils.compare`), the attention maps
(:mod:`~stableemote_utils.attention`), training's validation grids
(:mod:`~stableemote_utils.training_records`) and the demo
(:mod:`~stableemote_utils.cli.demo_generation`). Its initial noise comes from a CPU
generator seeded with ``seed``, so a CPU and a GPU draw from the same noise.

:class:`SamplingSettings` holds what those callers pass around: prompts, seeds, steps,
guidance, size and caption template, with each preset's defaults
(:meth:`SamplingSettings.for_preset`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from stableemote_utils.captions import make_caption
from stableemote_utils.presets import CAPTION_TEMPLATE, Preset, get_preset
from stableemote_utils.training_config import ORIGINAL_PROMPTS


@dataclass(frozen=True)
class SamplingSettings:
    """How a set of pictures is drawn.

    Attributes:
        prompts: emoji names; each goes through ``caption_template``.
        seeds: one picture per prompt and seed.
        steps: denoising steps.
        guidance: classifier-free guidance scale.
        resolution_px: picture size (square).
        caption_template: how a name becomes the prompt (``{}`` or ``{name}``).
    """

    prompts: tuple[str, ...] = ORIGINAL_PROMPTS
    seeds: tuple[int, ...] = (0,)
    steps: int = 25
    guidance: float = 7.5
    resolution_px: int = 256
    caption_template: str = CAPTION_TEMPLATE

    @classmethod
    def for_preset(cls, preset: Preset | str | None = None, **overrides) -> SamplingSettings:
        """The preset's steps, guidance, size and caption template, then ``overrides``
        (``None`` values are skipped, so optional command-line options pass straight in)."""
        p = preset if isinstance(preset, Preset) else get_preset(preset)
        base = cls(
            steps=p.sample_steps,
            guidance=p.guidance_scale,
            resolution_px=p.resolution_px,
            caption_template=p.caption_template,
        )
        return base.with_overrides(**overrides)

    def with_overrides(self, **overrides) -> SamplingSettings:
        """These settings with ``overrides`` (``None`` values skipped, lists made tuples)."""
        given = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        return dataclasses.replace(self, **{k: v for k, v in given.items() if v is not None})

    def caption(self, name: str) -> str:
        """The prompt text for an emoji name: ``caption_template`` filled in (``{}`` or
        ``{name}`` marks the name's place, as in training's captions)."""
        return make_caption(name, self.caption_template)


def generate(
    pipe,
    prompt: str | None,
    seed: int,
    settings: SamplingSettings,
    *,
    prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    callback_on_step_end: Callable | None = None,
    pooled_prompt_embeds: torch.Tensor | None = None,
    negative_pooled_prompt_embeds: torch.Tensor | None = None,
):
    """One picture from a seeded CPU generator (so CPU and GPU runs share their initial noise).

    Args:
        pipe: a ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``.
        prompt: the prompt text, or ``None`` with ``prompt_embeds``.
        seed: the generator's seed.
        settings: its ``steps``, ``guidance`` and ``resolution_px`` are used (its prompts,
            seeds and caption template are the caller's to loop over).
        prompt_embeds, negative_prompt_embeds: encoded prompts ``(1, 77, D)`` instead of
            text (training's validation grid encodes its prompts once).
        callback_on_step_end: called by the pipeline after each denoising step.
        pooled_prompt_embeds, negative_pooled_prompt_embeds: SDXL's pooled text ``(1, 1280)``
            with encoded prompts (see
            :meth:`~stableemote_utils.model_family.ModelFamily.sampling_embeds`).

    Returns:
        A PIL image, ``settings.resolution_px`` square.
    """
    pooled = {
        k: v
        for k, v in (
            ("pooled_prompt_embeds", pooled_prompt_embeds),
            ("negative_pooled_prompt_embeds", negative_pooled_prompt_embeds),
        )
        if v is not None
    }
    return pipe(
        prompt,
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_prompt_embeds,
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance,
        height=settings.resolution_px,
        width=settings.resolution_px,
        generator=torch.Generator(device="cpu").manual_seed(seed),
        callback_on_step_end=callback_on_step_end,
        **pooled,
    ).images[0]
