"""A Gradio demo: type an emoji name, get the base model's and the LoRA's picture side by side.

``stableemote demo [--lora DIR_OR_REPO]`` starts it (with a public link on Colab);
:func:`demo_generate` is the function behind the button, usable without a browser.
"""

from __future__ import annotations

import argparse
import os

from stableemote_utils.cli.common import add_common_args
from stableemote_utils.compare import generate
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.loading import load_components, make_pipeline
from stableemote_utils.lora import load_lora, set_lora_scale
from stableemote_utils.lora_files import LORA_WEIGHT_NAME, resolve_lora_file
from stableemote_utils.notebook import in_colab
from stableemote_utils.precision import choose_dtype, pick_device
from stableemote_utils.presets import get_preset

DEMO_ADAPTER_NAME = "demo"
DEFAULT_PROMPT = "An emoji of smiling cat"
DEFAULT_GUIDANCE = 7.5
MAX_STEPS = 100
API_NAME = "generate"


def demo_generate(
    pipe,
    prompt: str,
    seed: int = 0,
    steps: int = 25,
    guidance: float = DEFAULT_GUIDANCE,
    lora_scale: float = 1.0,
    side_by_side: bool = True,
    resolution_px: int = 256,
):
    """What the demo's button does: one image with the adapter and, optionally, the base one.

    Both come from the same prompt, seed (a CPU generator), scheduler, steps, guidance and
    size, so any difference is the adapter's.

    Args:
        pipe: a ``StableDiffusionPipeline``, with the adapter loaded as ``"demo"`` (see
            :func:`build_demo`) or without an adapter (then both pictures are the base model).
        side_by_side: also make the base model's picture.

    Returns:
        ``(base image or None, LoRA image)`` as PIL images of ``resolution_px`` squares.
    """

    if not str(prompt).strip():
        raise StableEmoteError("Type a prompt, e.g. 'An emoji of smiling cat'.")
    steps = int(steps)
    if not 1 <= steps <= MAX_STEPS:
        raise StableEmoteError(f"Steps must be between 1 and {MAX_STEPS}, got {steps}.")
    has_adapter = DEMO_ADAPTER_NAME in (getattr(pipe.unet, "peft_config", None) or {})
    base = None
    if side_by_side:
        if has_adapter:
            pipe.disable_lora()
        try:
            base = generate(pipe, prompt, int(seed), steps, float(guidance), resolution_px)
        finally:
            if has_adapter:
                pipe.enable_lora()
    if has_adapter:
        set_lora_scale(pipe, float(lora_scale), DEMO_ADAPTER_NAME)
    lora = generate(pipe, prompt, int(seed), steps, float(guidance), resolution_px)
    return base, lora


def find_adapter(dir_or_repo: str | os.PathLike) -> str:
    """An adapter file from a local file or folder, or from a Hub repo id (downloaded).

    Raises:
        StableEmoteError: if it is neither an existing path nor a reachable Hub repo with
            ``pytorch_lora_weights.safetensors``.
    """

    text = os.path.expanduser(str(dir_or_repo))
    if os.path.exists(text):
        return str(resolve_lora_file(text))
    parts = text.split("/")
    if len(parts) != 2 or not all(parts) or text.startswith("."):
        raise StableEmoteError(
            f"The adapter '{dir_or_repo}' is neither a file or folder here nor a Hub repo id "
            "(owner/name). Pass the folder training wrote or a repo such as 'you/emoji-lora'."
        )
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(text, LORA_WEIGHT_NAME)
    except Exception as err:  # network, missing repo or file: one clear message
        raise StableEmoteError(
            f"Could not download {LORA_WEIGHT_NAME} from the Hub repo '{text}' "
            f"({type(err).__name__}). Check the id and your network, or pass a local folder."
        ) from err


def build_demo(
    pipe,
    lora_path: str | os.PathLike | None = None,
    resolution_px: int = 256,
    steps: int = 25,
    caption_template: str = "An emoji of {name}",
):
    """The Gradio app over a loaded pipeline.

    Inputs: prompt (pre-filled ``"An emoji of …"``), seed, steps, guidance, LoRA scale
    and a base/LoRA side-by-side toggle; outputs: the base image and the LoRA image. The
    generate button is exposed as the API endpoint ``/generate``.

    Args:
        pipe: a ``StableDiffusionPipeline`` of the base model; the adapter is loaded into it.
        lora_path: adapter file, folder or Hub repo id (``None``: the base model only).

    Returns:
        A ``gradio.Blocks`` (start it with ``.launch()``).
    """
    import gradio as gr

    label = "base model only"
    if lora_path is not None:
        file = find_adapter(lora_path)
        load_lora(pipe, file, adapter_name=DEMO_ADAPTER_NAME)
        label = os.path.basename(os.path.dirname(file)) or str(file)

    def on_generate(prompt, seed, n_steps, guidance, scale, side_by_side):
        try:
            return demo_generate(
                pipe, prompt, seed, n_steps, guidance, scale, side_by_side, resolution_px
            )
        except StableEmoteError as err:
            raise gr.Error(str(err)) from err

    with gr.Blocks(title="StableEmote") as demo:
        gr.Markdown(
            f"# StableEmote\nBase model vs LoRA ({label}), same prompt, seed, scheduler, steps, "
            f"guidance and size ({resolution_px} px)."
        )
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(
                    label="Prompt", value=caption_template.format(name="smiling cat")
                )
                seed = gr.Number(label="Seed", value=0, precision=0)
                n_steps = gr.Slider(1, MAX_STEPS, value=steps, step=1, label="Steps")
                guidance = gr.Slider(1.0, 15.0, value=DEFAULT_GUIDANCE, step=0.5, label="Guidance")
                scale = gr.Slider(0.0, 1.5, value=1.0, step=0.05, label="LoRA scale")
                side = gr.Checkbox(value=True, label="Show the base model side by side")
                button = gr.Button("Generate", variant="primary")
            with gr.Column():
                base_out = gr.Image(label="Base model", type="pil", format="png")
                lora_out = gr.Image(label="With LoRA", type="pil", format="png")
        button.click(
            on_generate,
            inputs=[prompt, seed, n_steps, guidance, scale, side],
            outputs=[base_out, lora_out],
            api_name=API_NAME,
        )
    return demo


def launch_demo(
    lora: str | None = None,
    preset: str | None = None,
    device: str | None = None,
    share: bool | None = None,
    server_name: str | None = None,
    server_port: int | None = None,
    prevent_thread_lock: bool = False,
):
    """Load the preset's model, build the app and start it.

    ``share=None`` makes a public link on Colab only (the notebook's browser cannot reach
    the Colab machine's localhost); elsewhere the app is served on the local machine.

    Returns:
        The running ``gradio.Blocks`` (call ``.close()`` to stop it when
        ``prevent_thread_lock`` is True; otherwise this blocks until interrupted).
    """

    p = get_preset(preset)
    dev = pick_device(device)
    dtype, _ = choose_dtype(dev)
    pipe = make_pipeline(load_components(p, device=dev, dtype=dtype))
    demo = build_demo(pipe, lora, p.resolution_px, p.sample_steps, p.caption_template)
    demo.launch(
        share=in_colab() if share is None else share,
        server_name=server_name,
        server_port=server_port,
        prevent_thread_lock=prevent_thread_lock,
    )
    return demo


def cmd_demo(args: argparse.Namespace) -> None:
    """Handler of ``stableemote demo``."""
    launch_demo(
        lora=args.lora,
        preset=args.preset,
        device=args.device,
        share=True if args.share else None,
        server_name=args.host,
        server_port=args.port,
    )


def add_demo_command(subparsers) -> None:
    """Add ``stableemote demo [--lora DIR_OR_REPO]`` to the command line's subparsers."""
    p = subparsers.add_parser(
        "demo",
        help="Gradio app: base vs LoRA side by side",
        description="Start a Gradio app: prompt, seed, steps, guidance, LoRA scale, and the base "
        "model's picture next to the LoRA's. On Colab it prints a public link.",
    )

    add_common_args(p)
    p.add_argument(
        "--lora", default=None, help="adapter file, folder or Hub repo id (default: base only)"
    )
    p.add_argument("--host", default=None, help="address to serve on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free)")
    p.add_argument("--share", action="store_true", help="make a public gradio.live link")
    p.set_defaults(func=cmd_demo)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for tests and notebooks)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
