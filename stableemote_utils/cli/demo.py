"""A Gradio demo: type an emoji name, see the base model's picture and, with an adapter, the LoRA's.

``stableemote demo [--lora DIR_OR_REPO]`` starts it (with a public link on Colab);
:func:`demo_generate` is the function behind the button, usable without a browser, and
the running app answers it as the API endpoint ``/generate`` (true-size PNG files).

What a person sees: small outputs (TinyEmote draws 64 px) are enlarged for display by a
whole factor with nearest-neighbour sampling, so emoji edges stay crisp, while the
download button under each picture gives the true-size file. Without an adapter the
page shows one picture and no LoRA controls; with one, the base and LoRA pictures sit
side by side and the LoRA-scale slider redraws the LoRA picture when released.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

from stableemote_utils.cli.common import add_common_args
from stableemote_utils.compare import generate
from stableemote_utils.data import is_heldout
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.loading import load_components, make_pipeline
from stableemote_utils.lora import load_lora, set_lora_scale
from stableemote_utils.lora_files import LORA_WEIGHT_NAME, read_lora_file, resolve_lora_file
from stableemote_utils.notebook import in_colab
from stableemote_utils.precision import choose_dtype, pick_device
from stableemote_utils.presets import CAPTION_TEMPLATE, get_preset

DEMO_ADAPTER_NAME = "demo"
DEFAULT_NAME = "grinning face"
DEFAULT_GUIDANCE = 7.5
MAX_STEPS = 100
API_NAME = "generate"
# torch.Generator.manual_seed takes at most 64 bits; the demo keeps to the common 32-bit range.
MAX_SEED = 2**32 - 1
# Pictures narrower than this are enlarged (by a whole factor) for display.
DISPLAY_MIN_PX = 384
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
# Seconds the app gets to close its server after Ctrl-C or SIGTERM before the command exits
# anyway. Measured on 2 cores shared by a dozen busy processes: the exit itself (GIL hand-over
# from a running generation, freeing torch's memory) took 0.45-0.7 s, so a longer wait for
# the close would break the promise to stop within a second.
STOP_GRACE_S = 0.1


def check_seed(seed) -> int:
    """The seed as an ``int`` in ``[0, MAX_SEED]``.

    Raises:
        StableEmoteError: for a seed that is not a whole number in that range.
    """
    try:
        value = float(seed)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value != int(value) or not 0 <= int(value) <= MAX_SEED:
        raise StableEmoteError(
            f"The seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}. "
            "Pick one in that range or press 'Random seed'."
        )
    return int(value)


def _check_inputs(prompt: str, seed, steps) -> tuple[str, int, int]:
    if not str(prompt).strip():
        raise StableEmoteError("Type a prompt, e.g. 'An emoji of smiling cat'.")
    try:
        n_steps = int(steps)
    except (TypeError, ValueError):
        n_steps = 0
    if not 1 <= n_steps <= MAX_STEPS:
        raise StableEmoteError(f"Steps must be between 1 and {MAX_STEPS}, got {steps}.")
    return str(prompt), check_seed(seed), n_steps


def _has_adapter(pipe) -> bool:
    return DEMO_ADAPTER_NAME in (getattr(pipe.unet, "peft_config", None) or {})


def _generate_one(pipe, prompt, seed, steps, guidance, resolution_px, lora_scale):
    """One picture: the base model (``lora_scale=None``) or the adapter at ``lora_scale``."""
    if lora_scale is None and _has_adapter(pipe):
        pipe.disable_lora()
        try:
            return generate(pipe, prompt, seed, steps, float(guidance), resolution_px)
        finally:
            pipe.enable_lora()
    if lora_scale is not None and _has_adapter(pipe):
        set_lora_scale(pipe, float(lora_scale), DEMO_ADAPTER_NAME)
    return generate(pipe, prompt, seed, steps, float(guidance), resolution_px)


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
    """The demo's generation: one image with the adapter and, optionally, the base one.

    Both come from the same prompt, seed (a CPU generator), scheduler, steps, guidance and
    size, so any difference is the adapter's.

    Args:
        pipe: a ``StableDiffusionPipeline``, with the adapter loaded as ``"demo"`` (see
            :func:`build_demo`) or without an adapter (then both pictures are the base model).
        seed: a whole number from 0 to :data:`MAX_SEED`.
        side_by_side: also make the base model's picture.

    Returns:
        ``(base image or None, LoRA image)`` as true-size PIL images of ``resolution_px``
        squares.

    Raises:
        StableEmoteError: for an empty prompt, steps outside ``[1, MAX_STEPS]`` or a seed
            outside ``[0, MAX_SEED]``.
    """
    prompt, seed, steps = _check_inputs(prompt, seed, steps)
    base = None
    if side_by_side:
        base = _generate_one(pipe, prompt, seed, steps, guidance, resolution_px, None)
    lora = _generate_one(pipe, prompt, seed, steps, guidance, resolution_px, lora_scale)
    return base, lora


def display_image(image, min_px: int = DISPLAY_MIN_PX):
    """The picture enlarged for display by the smallest whole factor that makes it ``min_px`` wide.

    Nearest-neighbour sampling turns each pixel into a square block, so the emoji's edges
    stay crisp (a smooth filter would blur a 64 px drawing). Pictures already ``min_px``
    wide or wider come back unchanged; the input is never modified.

    Args:
        image: a PIL image of ``(W, H)`` pixels.

    Returns:
        A PIL image of ``(k*W, k*H)`` pixels with ``k = ceil(min_px / W)`` (``k >= 1``).
    """
    factor = max(1, math.ceil(min_px / image.width))
    if factor == 1:
        return image.copy()
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def save_picture(image, folder: str | os.PathLike, stem: str) -> Path:
    """Save ``image`` unchanged (true size) as ``folder/stem.png``; the path."""
    path = Path(folder) / f"{stem}.png"
    image.save(path)
    return path


def render_picture(
    pipe,
    prompt: str,
    seed: int,
    steps: int,
    guidance: float,
    resolution_px: int,
    lora_scale: float | None,
    folder: str | os.PathLike,
):
    """One picture as the page shows it, and its true-size file.

    Args:
        lora_scale: ``None`` for the base model, else the adapter's scale.
        folder: where a new subfolder receives the true-size PNG (named after the settings).

    Returns:
        ``(display image, true-size PNG path, seconds the generation took)``; the display
        image is :func:`display_image` of the generated ``resolution_px`` square.
    """
    prompt, seed, steps = _check_inputs(prompt, seed, steps)
    start = time.perf_counter()
    image = _generate_one(pipe, prompt, seed, steps, guidance, resolution_px, lora_scale)
    seconds = time.perf_counter() - start
    tag = "base" if lora_scale is None else f"lora-scale{lora_scale:g}"
    stem = f"{tag}-seed{seed}-steps{steps}-guidance{float(guidance):g}"
    path = save_picture(image, tempfile.mkdtemp(dir=folder), stem)
    return display_image(image), path, seconds


def picture_label(
    model: str, seconds: float, seed: int, steps: int, guidance: float, scale: float | None = None
) -> str:
    """The caption over a picture: which model, the settings that made it, and how long it took.

    >>> picture_label("TinyEmote", 0.84, 3, 25, 7.5)
    'TinyEmote · seed 3 · 25 steps · guidance 7.5 · 0.8 s'
    >>> picture_label("LoRA", 1.26, 3, 25, 7.5, scale=0.5)
    'LoRA × 0.50 · seed 3 · 25 steps · guidance 7.5 · 1.3 s'
    """
    head = model if scale is None else f"{model} × {scale:.2f}"
    return f"{head} · seed {seed} · {steps} steps · guidance {guidance:g} · {seconds:.1f} s"


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


def adapter_description(file: str | os.PathLike, name: str, pipe=None) -> str:
    """A one-line description of an adapter: its name, rank, alpha and training steps.

    The numbers come from the file's header (what ``stableemote train`` writes); the rank
    falls back to the loaded adapter's when the header does not say (files from elsewhere).
    """
    _, meta = read_lora_file(file)
    rank = meta.get("rank")
    config = (getattr(getattr(pipe, "unet", None), "peft_config", None) or {}).get(
        DEMO_ADAPTER_NAME
    )
    if rank is None and config is not None:
        rank = str(config.r)
    parts = [f"rank {rank}" if rank else "rank unknown"]
    if meta.get("alpha"):
        try:
            parts.append(f"alpha {float(meta['alpha']):g}")
        except ValueError:
            parts.append(f"alpha {meta['alpha']}")
    if meta.get("steps"):
        parts.append(f"{meta['steps']} training steps")
    if meta.get("dataset"):
        parts.append(f"data {meta['dataset']}")
    return f"LoRA `{name}`: {', '.join(parts)}"


def _name_of(caption: str, caption_template: str) -> str:
    """The emoji name inside a caption made with ``caption_template`` (else the caption)."""
    head, _, tail = caption_template.partition("{name}")
    if caption.startswith(head) and caption.endswith(tail) and len(caption) > len(head + tail):
        return caption[len(head) : len(caption) - len(tail)]
    return caption


def _adapter_name(lora_path: str | os.PathLike, file: str) -> str:
    text = os.path.expanduser(str(lora_path))
    if not os.path.exists(text):
        return text  # a Hub repo id
    path = Path(file)
    return path.parent.name if path.name.startswith("pytorch_lora_weights") else path.stem


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
    caption_template: str = CAPTION_TEMPLATE,
    model_label: str = "Base model",
    heldout_fraction: float = 0.05,
):
    """The Gradio app over a loaded pipeline.

    Inputs: prompt (pre-filled ``"An emoji of …"``, with example prompts marked as
    training or held-out names), seed (bounded, with a "Random seed" button), steps,
    guidance and, only with an adapter, the LoRA scale. Outputs: one picture per model,
    enlarged for display (:func:`display_image`) and labelled with its settings and time
    (:func:`picture_label`), each with a button that downloads the true-size PNG.

    The API endpoint ``/generate`` takes ``(prompt, seed, steps, guidance, lora_scale,
    side_by_side)`` and returns the true-size ``(base or None, LoRA)`` PNG files of
    :func:`demo_generate`.

    Args:
        pipe: a ``StableDiffusionPipeline`` of the base model; the adapter is loaded into it.
        lora_path: adapter file, folder or Hub repo id (``None``: the base model only).
        model_label: what to call the base model on the page (e.g. ``"TinyEmote"``).
        heldout_fraction: the data split's held-out share, to mark the example prompts.

    Returns:
        A ``gradio.Blocks`` (start it with ``.launch()``).
    """
    import gradio as gr

    adapter = None
    if lora_path is not None:
        file = find_adapter(lora_path)
        load_lora(pipe, file, adapter_name=DEMO_ADAPTER_NAME)
        adapter = adapter_description(file, _adapter_name(lora_path, file), pipe)
    lora_label = "LoRA"
    factor = max(1, math.ceil(DISPLAY_MIN_PX / resolution_px))
    shown = f"{resolution_px} px, shown {factor}× larger" if factor > 1 else f"{resolution_px} px"
    # True-size files for the download buttons live here while the app exists.
    files = tempfile.TemporaryDirectory(prefix="stableemote-demo-")

    def save_true_size(image, stem: str) -> str:
        return str(save_picture(image, tempfile.mkdtemp(dir=files.name), stem))

    def picture(model, scale, prompt, seed, n_steps, guidance):
        """(display update, download update) for one model."""
        image, path, seconds = render_picture(
            pipe, prompt, seed, n_steps, guidance, resolution_px, scale, files.name
        )
        label = picture_label(model, seconds, seed, n_steps, guidance, scale)
        return (
            gr.Image(value=image, label=label),
            gr.DownloadButton(f"Download {resolution_px} px PNG", value=path, interactive=True),
        )

    def guarded(fn):
        @functools.wraps(fn)
        def run(*args):
            try:
                return fn(*args)
            except StableEmoteError as err:
                raise gr.Error(str(err)) from err

        return run

    def on_generate_base(prompt, seed, n_steps, guidance):
        prompt, seed, n_steps = _check_inputs(prompt, seed, n_steps)
        image, download = picture(model_label, None, prompt, seed, n_steps, guidance)
        return image, download

    def on_generate_both(prompt, seed, n_steps, guidance, scale):
        prompt, seed, n_steps = _check_inputs(prompt, seed, n_steps)
        base, base_dl = picture(model_label, None, prompt, seed, n_steps, guidance)
        lora, lora_dl = picture(lora_label, float(scale), prompt, seed, n_steps, guidance)
        return base, base_dl, lora, lora_dl

    def on_scale(prompt, seed, n_steps, guidance, scale):
        prompt, seed, n_steps = _check_inputs(prompt, seed, n_steps)
        lora, lora_dl = picture(lora_label, float(scale), prompt, seed, n_steps, guidance)
        return lora, lora_dl

    def generate_api(
        prompt, seed=0, steps=steps, guidance=DEFAULT_GUIDANCE, lora_scale=1.0, side_by_side=True
    ):
        """True-size PNGs of the base model (or None) and the LoRA (the base model without one)."""
        base, lora = demo_generate(
            pipe, prompt, seed, steps, guidance, lora_scale, side_by_side, resolution_px
        )
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

    if adapter is None:
        intro = (
            f"{model_label}, no adapter loaded: one picture per prompt. Start it with "
            "`--lora FOLDER` to see a LoRA's picture beside the base model's."
        )
    else:
        intro = (
            f"{model_label} beside {model_label} + LoRA: both pictures share the "
            "prompt, seed, scheduler, steps, guidance and size, so any difference is the "
            "adapter's. Releasing the LoRA-scale slider redraws the LoRA picture.\n\n"
            f"Adapter: {adapter}."
        )
    training, heldout = example_prompts(caption_template, heldout_fraction)

    with gr.Blocks(title="StableEmote") as demo:
        gr.Markdown(
            f"# StableEmote\n{intro}\n\nPictures are {shown}; the download buttons give the {resolution_px} px files."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                prompt = gr.Textbox(
                    label="Prompt",
                    value=caption_template.format(name=DEFAULT_NAME),
                    elem_id="prompt",
                )
                if training:
                    gr.Examples(
                        [[p] for p in training],
                        inputs=[prompt],
                        label="Training names",
                        example_labels=[_name_of(p, caption_template) for p in training],
                    )
                if heldout:
                    gr.Examples(
                        [[p] for p in heldout],
                        inputs=[prompt],
                        label="Held-out names (never in training)",
                        example_labels=[_name_of(p, caption_template) for p in heldout],
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
                guidance = gr.Slider(1.0, 15.0, value=DEFAULT_GUIDANCE, step=0.5, label="Guidance")
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
                guarded(on_generate_base),
                inputs=common,
                outputs=[base_out, base_dl],
                api_visibility="private",
            )
        else:
            gr.on(
                [button.click, prompt.submit],
                guarded(on_generate_both),
                inputs=[*common, scale],
                outputs=[base_out, base_dl, lora_out, lora_dl],
                api_visibility="private",
            )
            scale.release(
                guarded(on_scale),
                inputs=[*common, scale],
                outputs=[lora_out, lora_dl],
                trigger_mode="always_last",
                api_visibility="private",
            )
        gr.api(guarded(generate_api), api_name=API_NAME)
    demo.stableemote_files = files  # keeps the download folder alive as long as the app
    return demo


def serve_until_stopped(demo, grace_s: float = STOP_GRACE_S) -> None:
    """Wait while a launched app serves; on Ctrl-C or SIGTERM close it and return.

    The server gets ``grace_s`` seconds to close (open browser connections and a
    generation in progress can hold it longer); after that this returns anyway, so the
    command exits within about a second. Must run in the main thread.
    """
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.1):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print("Stopping the demo.", flush=True)
    closer = threading.Thread(target=demo.close, daemon=True)
    closer.start()
    closer.join(grace_s)


def model_label_of(preset) -> str:
    """How the page names a preset's base model (``"TinyEmote"``, ``"SD 1.5"``, a model id)."""
    names = {"tiny": "TinyEmote", "tiny-random": "tiny-random", "sd15": "SD 1.5"}
    return names.get(preset.name, os.path.basename(str(preset.model).rstrip("/")) or "Base model")


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
    the Colab machine's localhost); elsewhere the app listens on 127.0.0.1 unless
    ``server_name`` says otherwise. The local address and any public link are printed.

    Returns:
        The running ``gradio.Blocks``. With ``prevent_thread_lock`` it returns at once
        (call ``.close()`` to stop it); otherwise it serves until Ctrl-C or SIGTERM, then
        closes it and returns.
    """
    p = get_preset(preset)
    dev = pick_device(device)
    dtype, _ = choose_dtype(dev)
    pipe = make_pipeline(load_components(p, device=dev, dtype=dtype))
    demo = build_demo(
        pipe,
        lora,
        p.resolution_px,
        p.sample_steps,
        p.caption_template,
        model_label=model_label_of(p),
        heldout_fraction=p.heldout_fraction,
    )
    demo.launch(
        share=in_colab() if share is None else share,
        server_name=server_name,
        server_port=server_port,
        prevent_thread_lock=True,
        quiet=True,
    )
    print(f"StableEmote demo on {demo.local_url}", flush=True)
    if demo.share_url:
        print(f"Public link (anyone with it can use the demo): {demo.share_url}", flush=True)
    if not prevent_thread_lock:
        print("Press Ctrl-C to stop it.", flush=True)
        serve_until_stopped(demo)
    return demo


def cmd_demo(args: argparse.Namespace) -> None:
    """Handler of ``stableemote demo``: serve until Ctrl-C or SIGTERM, then exit at once.

    Once the server is closed the process ends with ``os._exit``: tearing down the
    interpreter (garbage-collecting torch, transformers and gradio) took 5 to 7 seconds
    on a 2-core machine, and there is nothing left to save. The app's temporary download
    files are removed first.
    """
    demo = launch_demo(
        lora=args.lora,
        preset=args.preset,
        device=args.device,
        share=True if args.share else None,
        server_name=args.host,
        server_port=args.port,
    )
    demo.stableemote_files.cleanup()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def add_demo_command(subparsers) -> None:
    """Add ``stableemote demo [--lora DIR_OR_REPO]`` to the command line's subparsers."""
    p = subparsers.add_parser(
        "demo",
        help="Gradio app: the base model's picture, and the LoRA's beside it",
        description="Start a Gradio app: prompt (with example names), seed, steps, guidance and "
        "the base model's picture; with --lora, the LoRA's picture beside it and a LoRA-scale "
        "slider. On Colab it prints a public link; elsewhere it listens on 127.0.0.1.",
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
