"""A Gradio demo: type an emoji name, see the base model's picture and, with an adapter, the LoRA's.

``stableemote demo [--lora DIR_OR_REPO]`` starts it (with a public link on Colab). This
module is the command: loading the model, serving the app and stopping it. The page is
built in :mod:`~stableemote_utils.cli.demo_app`; what its button does, usable without a
browser (:func:`~stableemote_utils.cli.demo_generation.demo_generate`), is in
:mod:`~stableemote_utils.cli.demo_generation`, and the running app answers it as the API
endpoint ``/generate`` (true-size PNG files).

What a person sees: small outputs (TinyEmote draws 64 px) are enlarged for display by a
whole factor with nearest-neighbour sampling, so emoji edges stay crisp, while the
download button under each picture gives the true-size file. Without an adapter the
page shows one picture and no LoRA controls; with one, the base and LoRA pictures sit
side by side and the LoRA-scale slider redraws the LoRA picture when released.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
import threading

from stableemote_utils.cli.common import add_command
from stableemote_utils.cli.demo_app import REJECTED_LOG, build_demo
from stableemote_utils.cli.demo_generation import demo_generate, demo_settings, find_adapter
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.loading import load_components, make_pipeline
from stableemote_utils.notebook import in_colab
from stableemote_utils.precision import check_preset_device, choose_dtype, pick_device
from stableemote_utils.presets import get_preset
from stableemote_utils.sampling import SamplingSettings

# The notebooks build the app and find adapters through this module, and the function
# behind the button is documented here: they stay importable from it.
__all__ = [
    "add_demo_command",
    "build_demo",
    "cmd_demo",
    "demo_generate",
    "demo_settings",
    "find_adapter",
    "free_port",
    "launch_demo",
    "model_label_of",
    "serve_until_stopped",
]

# Seconds the app gets to close its server after Ctrl-C or SIGTERM before the command exits
# anyway. Measured on 2 cores shared by a dozen busy processes: the exit itself (GIL hand-over
# from a running generation, freeing torch's memory) took 0.45-0.7 s, so a longer wait for
# the close would break the promise to stop within a second.
STOP_GRACE_S = 0.1
# Where gradio starts looking for a free port when none is given (it tries 100).
FIRST_DEMO_PORT = 7860


def serve_until_stopped(demo, grace_s: float = STOP_GRACE_S, announce=None) -> None:
    """Wait while a launched app serves; on Ctrl-C or SIGTERM close it and return.

    The server gets ``grace_s`` seconds to close (open browser connections and a
    generation in progress can hold it longer); after that this returns anyway, so the
    command exits within about a second. ``announce`` (printing the address) is called
    once the signal handlers are in place, so a signal sent as soon as the address shows
    stops the demo cleanly. Must run in the main thread.
    """
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if announce is not None:
            announce()
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

    Raises:
        StableEmoteError: ``server_port`` is taken by another program (checked before
            the model loads), or no port gradio tries is free.
    """
    check_port_free(server_name, server_port)  # before the model loads
    p = get_preset(preset)
    check_preset_device(p, device)
    dev = pick_device(device)
    dtype, _ = choose_dtype(dev)
    pipe = make_pipeline(load_components(p, device=dev, dtype=dtype))
    demo = build_demo(
        pipe,
        lora,
        SamplingSettings.for_preset(p),
        model_label=model_label_of(p),
        heldout_fraction=p.heldout_fraction,
    )
    try:
        demo.launch(
            share=in_colab() if share is None else share,
            server_name=server_name,
            server_port=server_port,
            prevent_thread_lock=True,
            quiet=True,
        )
    except OSError as err:  # taken since the check above, or every port gradio tries
        if "Cannot find empty port" not in str(err):
            raise
        raise port_busy_error(server_port) from err

    def announce() -> None:
        print(f"StableEmote demo on {demo.local_url}", flush=True)
        if demo.share_url:
            print(f"Public link (anyone with it can use the demo): {demo.share_url}", flush=True)
        if not prevent_thread_lock:
            print("Press Ctrl-C to stop it.", flush=True)

    if prevent_thread_lock:
        announce()
    else:
        serve_until_stopped(demo, announce=announce)
    return demo


def cmd_demo(args: argparse.Namespace) -> None:
    """Handler of ``stableemote demo``: serve until Ctrl-C or SIGTERM, then exit at once.

    Each request the app refuses (a bad seed ...) prints one line, ``stableemote: demo:
    refused a request: ...``, on stderr; faults keep their tracebacks.

    Once the server is closed the process ends with ``os._exit``: tearing down the
    interpreter (garbage-collecting torch, transformers and gradio) took 5 to 7 seconds
    on a 2-core machine, and there is nothing left to save. The app's temporary download
    files are removed first.
    """
    # This process is the demo's own: it shows the requests the app refused, one line each.
    if not REJECTED_LOG.handlers:
        shown = logging.StreamHandler(sys.stderr)
        shown.setFormatter(logging.Formatter("stableemote: demo: %(message)s"))
        REJECTED_LOG.addHandler(shown)
        REJECTED_LOG.setLevel(logging.INFO)
        REJECTED_LOG.propagate = False  # printed here, once
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
    p = add_command(
        subparsers,
        "demo",
        cmd_demo,
        common=True,
        uses_cache=True,
        help="Gradio app: the base model's picture, and the LoRA's beside it",
        description="Start a Gradio app: prompt (with example names), seed, steps, guidance and "
        "the base model's picture; with --lora, the LoRA's picture beside it and a LoRA-scale "
        "slider. On Colab it prints a public link; elsewhere it listens on 127.0.0.1.",
    )
    p.add_argument(
        "--lora", default=None, help="adapter file, folder or Hub repo id (default: base only)"
    )
    p.add_argument("--host", default=None, help="address to serve on (default: 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"port (default: {FIRST_DEMO_PORT} or the next free one)",
    )
    p.add_argument("--share", action="store_true", help="make a public gradio.live link")


def port_busy_error(port: int | None) -> StableEmoteError:
    """The one-line error for a demo that cannot have the port it asked for (``None``: any)."""
    if port is None:
        return StableEmoteError(
            f"No free port from {FIRST_DEMO_PORT} to {FIRST_DEMO_PORT + 99} (other programs, "
            "perhaps other demos, hold them all). Stop one, or pass a free port with --port."
        )
    return StableEmoteError(
        f"Port {port} is in use by another program (perhaps another demo). Pass another "
        f"--port, or leave --port out to take the next free one from {FIRST_DEMO_PORT}."
    )


def check_port_free(host: str | None, port: int | None) -> None:
    """Refuse a port another program listens on, as gradio would, but before any work.

    Binds the port on ``host`` (default 127.0.0.1) for a moment, the way gradio probes it;
    ``port=None`` (gradio picks the next free one) passes. Errors other than "address in
    use" (a host that is not this machine's) are left for gradio to report.

    Raises:
        StableEmoteError: the port is taken.
    """
    if port is None:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host or "127.0.0.1", port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise port_busy_error(port) from err


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for tests and notebooks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
