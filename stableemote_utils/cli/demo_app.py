"""The demo's Gradio page: its layout, its example prompts and the ``/generate`` API endpoint.

:func:`build_demo` lays out the page over a loaded pipeline; what its buttons do is in
:mod:`stableemote_utils.cli.demo_generation`, and ``stableemote demo`` (in
:mod:`stableemote_utils.cli.demo`) starts it.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import secrets
import tempfile

from stableemote_utils.cli.demo_generation import (
    DEFAULT_GUIDANCE,
    DISPLAY_MIN_PX,
    MAX_SEED,
    MAX_STEPS,
    demo_generate,
    demo_settings,
    load_demo_adapter,
    picture_label,
    render_picture,
    save_picture,
)
from stableemote_utils.data import is_heldout
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.presets import CAPTION_TEMPLATE
from stableemote_utils.sampling import SamplingSettings

# One line per request the app refuses; only ``stableemote demo`` shows it (on stderr).
REJECTED_LOG = logging.getLogger("stableemote.demo")
DEFAULT_NAME = "grinning face"
API_NAME = "generate"
# Emoji names offered as one-click examples. Each is shown as a training name or a
# held-out name according to the data split (:func:`stableemote_utils.data.is_heldout`),
# so the marking stays right if the split changes.
EXAMPLE_NAMES = (
    "grinning face",
    "winking face",
    "face with tears of joy",
    "crying face",
    "smiling cat",
    "cat face",
    "robot face",
    "grimacing face",
    "mouse face",
    "penguin",
    "Christmas tree",
    "popcorn",
)


def example_prompts(
    caption_template: str = CAPTION_TEMPLATE,
    heldout_fraction: float = 0.05,
    names: tuple[str, ...] | list[str] = EXAMPLE_NAMES,
) -> tuple[list[str], list[str]]:
    """The example prompts, split into names of the training split and held-out names.

    Returns:
        ``(training, heldout)``: lists of captions made with ``caption_template``.
    """
    training, heldout = [], []
    for name in names:
        side = heldout if is_heldout(name, heldout_fraction) else training
        side.append(caption_template.format(name=name))
    return training, heldout


def _name_of(caption: str, caption_template: str) -> str:
    """The emoji name inside a caption made with ``caption_template`` (else the caption)."""
    head, _, tail = caption_template.partition("{name}")
    if caption.startswith(head) and caption.endswith(tail) and len(caption) > len(head + tail):
        return caption[len(head) : len(caption) - len(tail)]
    return caption


def page_intro(model_label: str, adapter: str | None) -> str:
    """The paragraph under the page's title: what is compared, and the adapter's description."""
    if adapter is None:
        return (
            f"{model_label}, no adapter loaded: one picture per prompt. Start it with "
            "`--lora FOLDER` to see a LoRA's picture beside the base model's."
        )
    return (
        f"{model_label} beside {model_label} + LoRA: both pictures share the "
        "prompt, seed, scheduler, steps, guidance and size, so any difference is the "
        "adapter's. Releasing the LoRA-scale slider redraws the LoRA picture.\n\n"
        f"Adapter: {adapter}."
    )


def _guarded(fn):
    """``fn`` with a :class:`StableEmoteError` turned into ``gradio.Error`` (shown on the page).

    A request the app refuses (a seed out of range, no prompt) is the caller's mistake, not
    the server's: gradio is told not to print its traceback (``print_exception=False``),
    and :data:`REJECTED_LOG` gets one line at INFO, which ``stableemote demo`` prints. Any
    other exception is a fault and keeps gradio's traceback.
    """
    import gradio as gr

    @functools.wraps(fn)
    def run(*args):
        try:
            return fn(*args)
        except StableEmoteError as err:
            REJECTED_LOG.info("refused a request: %s", err)
            raise gr.Error(str(err), print_exception=False) from err

    return run


def build_demo(
    pipe,
    lora_path: str | os.PathLike | None = None,
    settings: SamplingSettings | None = None,
    *,
    model_label: str = "Base model",
    heldout_fraction: float = 0.05,
):
    """The Gradio app over a loaded pipeline.

    Inputs: prompt (pre-filled ``"An emoji of …"``, with example prompts marked as
    training or held-out names), seed (bounded, with a "Random seed" button), steps,
    guidance and, only with an adapter, the LoRA scale. Outputs: one picture per model,
    enlarged for display
    (:func:`~stableemote_utils.cli.demo_generation.display_image`) and labelled with its settings and time
    (:func:`~stableemote_utils.cli.demo_generation.picture_label`), each with a button that downloads the true-size PNG.

    The API endpoint ``/generate`` takes ``(prompt, seed, steps, guidance, lora_scale,
    side_by_side)`` and returns the true-size ``(base or None, LoRA)`` PNG files of
    :func:`~stableemote_utils.cli.demo_generation.demo_generate`.

    Args:
        pipe: a ``StableDiffusionPipeline`` of the base model; the adapter is loaded into it.
        lora_path: adapter file, folder or Hub repo id (``None``: the base model only).
        settings: the page's size, its starting steps and guidance (the preset's, from
            :meth:`~stableemote_utils.sampling.SamplingSettings.for_preset`) and the
            caption template of its example prompts; ``None``: ``SamplingSettings()``.
        model_label: what to call the base model on the page (e.g. ``"TinyEmote"``).
        heldout_fraction: the data split's held-out share, to mark the example prompts.

    Returns:
        A ``gradio.Blocks`` (start it with ``.launch()``).
    """
    import gradio as gr

    adapter = None if lora_path is None else load_demo_adapter(pipe, lora_path)
    settings = settings or SamplingSettings(guidance=DEFAULT_GUIDANCE)
    resolution_px, steps = settings.resolution_px, settings.steps
    caption_template, default_guidance = settings.caption_template, settings.guidance
    lora_label = "LoRA"
    factor = max(1, math.ceil(DISPLAY_MIN_PX / resolution_px))
    shown = f"{resolution_px} px, shown {factor}× larger" if factor > 1 else f"{resolution_px} px"
    # True-size files for the download buttons live here while the app exists.
    files = tempfile.TemporaryDirectory(prefix="stableemote-demo-")

    def save_true_size(image, stem: str) -> str:
        return str(save_picture(image, tempfile.mkdtemp(dir=files.name), stem))

    def settings_of(prompt, seed, n_steps, guidance):
        return demo_settings(
            prompt, seed, steps=n_steps, guidance=guidance, resolution_px=resolution_px
        )

    def picture(model, scale, settings):
        """(display update, download update) for one model."""
        image, path, seconds = render_picture(pipe, settings, lora_scale=scale, folder=files.name)
        label = picture_label(model, seconds, settings, scale=scale)
        return (
            gr.Image(value=image, label=label),
            gr.DownloadButton(f"Download {resolution_px} px PNG", value=path, interactive=True),
        )

    def on_generate_base(prompt, seed, n_steps, guidance):
        settings = settings_of(prompt, seed, n_steps, guidance)
        image, download = picture(model_label, None, settings)
        return image, download

    def on_generate_both(prompt, seed, n_steps, guidance, scale):
        settings = settings_of(prompt, seed, n_steps, guidance)
        base, base_dl = picture(model_label, None, settings)
        lora, lora_dl = picture(lora_label, float(scale), settings)
        return base, base_dl, lora, lora_dl

    def on_scale(prompt, seed, n_steps, guidance, scale):
        settings = settings_of(prompt, seed, n_steps, guidance)
        lora, lora_dl = picture(lora_label, float(scale), settings)
        return lora, lora_dl

    def generate_api(
        prompt, seed=0, steps=steps, guidance=default_guidance, lora_scale=1.0, side_by_side=True
    ):
        """True-size PNGs of the base model (or None) and the LoRA (the base model without one)."""
        settings = settings_of(prompt, seed, steps, guidance)
        base, lora = demo_generate(pipe, settings, lora_scale=lora_scale, side_by_side=side_by_side)
        base_file = None if base is None else gr.FileData(path=save_true_size(base, "base"))
        return base_file, gr.FileData(path=save_true_size(lora, "lora"))

    # gr.api reads the endpoint's types from these (real objects, not postponed strings).
    generate_api.__annotations__ = {
        "prompt": str,
        "seed": int,
        "steps": int,
        "guidance": float,
        "lora_scale": float,
        "side_by_side": bool,
        "return": tuple[gr.FileData | None, gr.FileData],
    }

    training, heldout = example_prompts(caption_template, heldout_fraction)

    with gr.Blocks(title="StableEmote") as demo:
        gr.Markdown(
            f"# StableEmote\n{page_intro(model_label, adapter)}\n\nPictures are {shown}; "
            f"the download buttons give the {resolution_px} px files."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                prompt = gr.Textbox(
                    label="Prompt",
                    value=caption_template.format(name=DEFAULT_NAME),
                    elem_id="prompt",
                )
                for examples, label in (
                    (training, "Training names"),
                    (heldout, "Held-out names (never in training)"),
                ):
                    if examples:
                        gr.Examples(
                            [[p] for p in examples],
                            inputs=[prompt],
                            label=label,
                            example_labels=[_name_of(p, caption_template) for p in examples],
                        )
                seed = gr.Number(
                    label=f"Seed (0 to {MAX_SEED})",
                    value=0,
                    precision=0,
                    minimum=0,
                    maximum=MAX_SEED,
                    elem_id="seed",
                )
                random_seed = gr.Button("Random seed", size="sm", elem_id="random-seed")
                n_steps = gr.Slider(1, MAX_STEPS, value=steps, step=1, label="Steps")
                guidance = gr.Slider(1.0, 15.0, value=default_guidance, step=0.5, label="Guidance")
                scale = None
                if adapter is not None:
                    scale = gr.Slider(
                        0.0, 1.5, value=1.0, step=0.05, label="LoRA scale", elem_id="lora-scale"
                    )
                button = gr.Button("Generate", variant="primary", elem_id="generate")

            def picture_column(label: str, name: str) -> tuple[gr.Image, gr.DownloadButton]:
                """A picture shown enlarged, with the button that downloads its true size."""
                with gr.Column():
                    shown = gr.Image(
                        label=label,
                        type="pil",
                        format="png",
                        interactive=False,
                        buttons=["fullscreen"],
                        elem_id=f"{name}-picture",
                    )
                    download = gr.DownloadButton(
                        f"Download {resolution_px} px PNG",
                        interactive=False,
                        size="sm",
                        elem_id=f"{name}-download",
                    )
                return shown, download

            with gr.Column(scale=2), gr.Row():
                base_out, base_dl = picture_column(model_label, "base")
                if adapter is not None:
                    lora_out, lora_dl = picture_column(lora_label, "lora")
        random_seed.click(
            lambda: secrets.randbelow(MAX_SEED + 1), outputs=[seed], api_visibility="private"
        )
        common = [prompt, seed, n_steps, guidance]
        if adapter is None:
            gr.on(
                [button.click, prompt.submit],
                _guarded(on_generate_base),
                inputs=common,
                outputs=[base_out, base_dl],
                api_visibility="private",
            )
        else:
            gr.on(
                [button.click, prompt.submit],
                _guarded(on_generate_both),
                inputs=[*common, scale],
                outputs=[base_out, base_dl, lora_out, lora_dl],
                api_visibility="private",
            )
            scale.release(
                _guarded(on_scale),
                inputs=[*common, scale],
                outputs=[lora_out, lora_dl],
                trigger_mode="always_last",
                api_visibility="private",
            )
        gr.api(_guarded(generate_api), api_name=API_NAME)
    demo.stableemote_files = files  # keeps the download folder alive as long as the app
    return demo
