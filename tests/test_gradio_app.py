"""The Gradio demo: its handler without a browser, and a real server on a loopback port."""

from __future__ import annotations

import argparse
import copy
import os
import signal
import threading
import time
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from stableemote_utils.cli.demo import (
    add_demo_command,
    build_demo,
    cmd_demo,
    free_port,
    serve_until_stopped,
)
from stableemote_utils.cli.demo_app import API_NAME, example_prompts
from stableemote_utils.cli.demo_generation import (
    DEMO_ADAPTER_NAME,
    DISPLAY_MIN_PX,
    MAX_SEED,
    check_seed,
    demo_generate,
    demo_settings,
    display_image,
    find_adapter,
    picture_label,
    render_picture,
)
from stableemote_utils.compare import SamplingSettings, generate
from stableemote_utils.data import is_heldout
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.lora import add_lora, load_lora, unload_lora
from stableemote_utils.lora_files import save_lora

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
STEPS = 2
SIZE_PX = 64
PROMPT = "An emoji of cat face"
SIZE_SETTINGS = SamplingSettings(steps=STEPS, resolution_px=SIZE_PX)


def inputs(seed=3, guidance=7.5, prompt=PROMPT) -> SamplingSettings:
    """The page's inputs as settings: this file's steps and size."""
    return demo_settings(prompt, seed, steps=STEPS, guidance=guidance, resolution_px=SIZE_PX)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    from stableemote_utils.loading import load_components, make_pipeline

    return make_pipeline(load_components(str(tiny_model_dir)))


@pytest.fixture(scope="module")
def adapter(pipe, tmp_path_factory):
    unet = copy.deepcopy(pipe.unet)
    torch.manual_seed(0)
    add_lora(unet, rank=4)
    g = torch.Generator().manual_seed(1)
    for name, p in unet.named_parameters():
        if ".lora_B." in name:
            p.data = torch.randn(p.shape, generator=g) * 0.05
    return save_lora(unet, tmp_path_factory.mktemp("demo-adapter"))


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_handler_matches_the_fair_generation(pipe, adapter):
    base_ref = generate(pipe, PROMPT, 3, inputs(3))
    load_lora(pipe, adapter, adapter_name=DEMO_ADAPTER_NAME)
    try:
        base, lora = demo_generate(pipe, inputs(3), lora_scale=1.0, side_by_side=True)
        assert np.array_equal(pixels(base), pixels(base_ref))
        assert not np.array_equal(pixels(lora), pixels(base_ref))
        none, half = demo_generate(pipe, inputs(3), lora_scale=0.5, side_by_side=False)
        assert none is None
        assert not np.array_equal(pixels(half), pixels(lora))
        _, zero = demo_generate(pipe, inputs(3), lora_scale=0.0, side_by_side=False)
        assert np.array_equal(pixels(zero), pixels(base_ref))  # scale 0 is the base model
        assert half.size == (SIZE_PX, SIZE_PX)
        with pytest.raises(StableEmoteError, match="Type a prompt"):
            demo_generate(pipe, SamplingSettings(prompts=("  ",), steps=STEPS))
        with pytest.raises(StableEmoteError, match="Steps must be"):
            demo_generate(pipe, SamplingSettings(prompts=(PROMPT,), steps=0))
    finally:
        unload_lora(pipe)


def test_seed_is_bounded(pipe):
    assert check_seed(0) == 0
    assert check_seed(MAX_SEED) == MAX_SEED
    assert check_seed(7.0) == 7  # gradio's Number sends floats
    for bad in (2**70, MAX_SEED + 1, -1, 1.5, float("nan"), float("inf"), "abc", None):
        with pytest.raises(StableEmoteError, match="seed must be a whole number from 0 to"):
            check_seed(bad)
    with pytest.raises(StableEmoteError, match="seed must be"):
        demo_generate(pipe, SamplingSettings(prompts=(PROMPT,), seeds=(2**70,), steps=STEPS))
    with pytest.raises(StableEmoteError, match="seed must be"):
        inputs(seed=-1)


def test_display_image_enlarges_by_a_whole_factor_with_crisp_pixels():
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (SIZE_PX, SIZE_PX, 3), dtype=np.uint8))
    before = pixels(small).copy()
    big = display_image(small)
    factor = -(-DISPLAY_MIN_PX // SIZE_PX)
    assert big.size == (SIZE_PX * factor, SIZE_PX * factor)
    blocks = pixels(big).reshape(SIZE_PX, factor, SIZE_PX, factor, 3)
    # every display pixel is its source pixel: no smoothing across emoji edges
    assert np.array_equal(blocks, np.broadcast_to(before[:, None, :, None], blocks.shape))
    assert np.array_equal(pixels(small), before)  # the true-size picture is untouched
    large = Image.new("RGB", (DISPLAY_MIN_PX + 128, DISPLAY_MIN_PX + 128), "red")
    assert display_image(large).size == large.size


def test_render_picture_keeps_the_true_size_file(pipe, tmp_path):
    shown, path, seconds = render_picture(pipe, inputs(3), lora_scale=None, folder=tmp_path)
    true_size = generate(pipe, PROMPT, 3, inputs(3))
    assert path.parent.parent == tmp_path and path.suffix == ".png"
    assert "seed3" in path.name and f"steps{STEPS}" in path.name
    with Image.open(path) as saved:
        assert saved.size == (SIZE_PX, SIZE_PX)
        assert np.array_equal(pixels(saved), pixels(true_size))
    assert shown.width >= DISPLAY_MIN_PX
    assert np.array_equal(pixels(shown), pixels(display_image(true_size)))
    assert seconds > 0
    with pytest.raises(StableEmoteError, match="seed must be"):
        render_picture(
            pipe,
            SamplingSettings(prompts=(PROMPT,), seeds=(-1,), steps=STEPS),
            lora_scale=None,
            folder=tmp_path,
        )


def test_labels_and_example_prompts():
    assert picture_label("TinyEmote", 0.84, SamplingSettings(seeds=(3,), steps=25)) == (
        "TinyEmote · seed 3 · 25 steps · guidance 7.5 · 0.8 s"
    )
    label = picture_label(
        "LoRA", 2.0, SamplingSettings(seeds=(9,), steps=4, guidance=3.0), scale=0.5
    )
    assert label.startswith("LoRA × 0.50 · seed 9 · 4 steps · guidance 3")
    training, heldout = example_prompts("An emoji of {name}", 0.05)
    assert training and heldout
    assert all(p.startswith("An emoji of ") for p in training + heldout)
    assert not any(is_heldout(p.removeprefix("An emoji of "), 0.05) for p in training)
    assert all(is_heldout(p.removeprefix("An emoji of "), 0.05) for p in heldout)


def _components(demo) -> list:
    return list(demo.blocks.values())


def _labels(demo, kind: str) -> list[str]:
    return [str(b.label) for b in _components(demo) if type(b).__name__ == kind]


def test_without_an_adapter_one_picture_and_no_lora_controls(pipe):
    demo = build_demo(pipe, None, SIZE_SETTINGS, model_label="Tiny")
    assert _labels(demo, "Image") == ["Tiny"]
    assert not [label for label in _labels(demo, "Slider") if "LoRA" in label]
    assert _labels(demo, "Slider") == ["Steps", "Guidance"]
    texts = " ".join(str(b.value) for b in _components(demo) if type(b).__name__ == "Markdown")
    assert "no adapter loaded" in texts and "LoRA scale" not in texts
    seed = next(b for b in _components(demo) if type(b).__name__ == "Number")
    assert (seed.minimum, seed.maximum, seed.precision) == (0, MAX_SEED, 0)


def test_guidance_slider_starts_at_the_given_scale(pipe):
    """``stableemote demo`` passes the preset's scale (3 for TinyEmote, 7.5 for SD 1.5)."""
    from stableemote_utils.presets import get_preset

    def guidance_start(demo) -> float:
        sliders = [b for b in _components(demo) if type(b).__name__ == "Slider"]
        return next(b.value for b in sliders if b.label == "Guidance")

    tiny = get_preset("tiny").guidance_scale
    assert tiny < get_preset("sd15").guidance_scale
    demo = build_demo(pipe, None, SamplingSettings.for_preset("tiny", resolution_px=SIZE_PX))
    assert guidance_start(demo) == tiny
    assert guidance_start(build_demo(pipe, None, SIZE_SETTINGS)) == 7.5


def test_with_an_adapter_two_pictures_a_scale_slider_and_its_name(pipe, adapter):
    demo = build_demo(pipe, adapter, SIZE_SETTINGS, model_label="Tiny")
    try:
        assert _labels(demo, "Image") == ["Tiny", "LoRA"]
        assert "LoRA scale" in _labels(demo, "Slider")
        texts = " ".join(str(b.value) for b in _components(demo) if type(b).__name__ == "Markdown")
        assert f"`{adapter.parent.name}`" in texts and "rank 4" in texts
    finally:
        unload_lora(pipe)


def test_find_adapter(adapter, tmp_path, monkeypatch):
    assert find_adapter(adapter.parent) == str(adapter)
    assert find_adapter(adapter) == str(adapter)
    with pytest.raises(StableEmoteError, match="neither a file or folder"):
        find_adapter(tmp_path / "missing" / "deeper")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(StableEmoteError, match="Could not download"):
        find_adapter("nobody-here/no-such-adapter")


def test_server_starts_serves_a_generation_and_stops(pipe, adapter):
    from gradio_client import Client

    demo = build_demo(pipe, adapter, SIZE_SETTINGS)
    port = free_port()
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, share=False, quiet=True
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        with urllib.request.urlopen(url, timeout=30) as page:
            assert page.status == 200
            assert b"StableEmote" in page.read()
        client = Client(url, verbose=False)
        base_file, lora_file = client.predict(
            PROMPT, 5, STEPS, 7.5, 1.0, True, api_name=f"/{API_NAME}"
        )
        expected_base, expected_lora = demo_generate(
            pipe, inputs(5), lora_scale=1.0, side_by_side=True
        )
        assert np.array_equal(pixels(Image.open(base_file)), pixels(expected_base))
        assert np.array_equal(pixels(Image.open(lora_file)), pixels(expected_lora))
        assert Image.open(lora_file).size == (SIZE_PX, SIZE_PX)  # the true size, not the display
        with pytest.raises(Exception, match="seed must be a whole number"):
            client.predict(PROMPT, 2**70, STEPS, 7.5, 1.0, True, api_name=f"/{API_NAME}")
    finally:
        demo.close()
        unload_lora(pipe)
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)


def test_a_refused_request_leaves_no_traceback_and_a_fault_keeps_its_own(pipe, monkeypatch, capfd):
    """A bad seed is the caller's mistake: the caller gets the message, the server's log no
    traceback. A fault in the app still prints its traceback there."""
    from gradio_client import Client

    from stableemote_utils.cli import demo_app

    demo = build_demo(pipe, None, SIZE_SETTINGS)
    port = free_port()
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, share=False, quiet=True
    )
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        capfd.readouterr()
        for seed in (-5, 2**70):
            with pytest.raises(Exception, match="seed must be a whole number"):
                client.predict(PROMPT, seed, STEPS, 7.5, 1.0, True, api_name=f"/{API_NAME}")
        refused = capfd.readouterr()
        assert "Traceback" not in refused.err + refused.out, refused.err

        def broken(*args, **kwargs):
            raise RuntimeError("a fault in the app")

        monkeypatch.setattr(demo_app, "demo_generate", broken)
        with pytest.raises(Exception):  # noqa: B017 (gradio_client's own error type)
            client.predict(PROMPT, 1, STEPS, 7.5, 1.0, True, api_name=f"/{API_NAME}")
        fault = capfd.readouterr().err
        assert "Traceback" in fault and "RuntimeError: a fault in the app" in fault, fault
    finally:
        demo.close()


def test_demo_command_parses():
    parser = argparse.ArgumentParser()
    add_demo_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo", "--lora", "you/emoji-lora", "--port", "7000", "--share"])
    assert args.func is cmd_demo
    assert (args.lora, args.port, args.share, args.host) == ("you/emoji-lora", 7000, True, None)
    assert parser.parse_args(["demo"]).lora is None


def test_the_browser_extra_and_make_test_browser_pin_the_same_playwright():
    import re
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    pinned = extra["optional-dependencies"]["browser"]
    make = re.search(r"^PLAYWRIGHT := (\S+)$", (root / "Makefile").read_text(), re.M)
    assert make is not None and pinned == [make.group(1)]


class _FakeApp:
    """Stands in for a launched gradio app: records close(), which may hang."""

    def __init__(self, close_s: float = 0.0):
        self.close_s = close_s
        self.closed = threading.Event()

    def close(self):
        time.sleep(self.close_s)
        self.closed.set()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_stop_the_demo_within_a_second(sig):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for app in (_FakeApp(), _FakeApp(close_s=30)):  # a close that hangs must not hold it
        timer = threading.Timer(0.3, os.kill, (os.getpid(), sig))
        timer.start()
        start = time.monotonic()
        serve_until_stopped(app)
        took = time.monotonic() - start - 0.3
        timer.join()
        assert took < 1.0, f"stopping took {took:.2f} s"
        assert app.closed.wait(2) == (app.close_s == 0)  # close() was called (and may finish)
    assert {s: signal.getsignal(s) for s in before} == before  # the handlers are put back


def test_a_signal_sent_as_soon_as_the_address_shows_stops_the_demo_cleanly():
    """The address is printed once the handlers are in place: a script that stops the demo
    when it reads the address must not kill it mid-way."""
    app = _FakeApp()
    serve_until_stopped(app, announce=lambda: os.kill(os.getpid(), signal.SIGTERM))
    assert app.closed.wait(2)


def test_a_busy_port_is_one_line_before_the_model_loads(capsys, monkeypatch):
    import socket

    from stableemote_utils.cli import demo as demo_command
    from stableemote_utils.cli.main import main

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded for a port that is taken")

    monkeypatch.setattr(demo_command, "load_components", no_loading)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        port = other_program.getsockname()[1]
        args = ["demo", "--preset", "tiny-random", "--device", "cpu", "--port", str(port)]
        assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"stableemote: error: Port {port} is in use by another program")
    assert "\n" not in err and "another --port, or leave --port out" in err, err


def test_a_port_taken_after_the_check_is_the_same_one_line(monkeypatch, tiny_model_dir):
    """Taken between the check and the start (or gradio finds no port): the same message."""
    import socket

    from stableemote_utils.cli import demo as demo_command

    monkeypatch.setattr(demo_command, "check_port_free", lambda host, port: None)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        port = other_program.getsockname()[1]
        with pytest.raises(StableEmoteError, match=f"^Port {port} is in use by another program"):
            demo_command.launch_demo(
                preset="tiny-random",
                device="cpu",
                share=False,
                server_port=port,
                prevent_thread_lock=True,
            )
