"""The Gradio demo: its handler without a browser, and a real server on a loopback port."""

from __future__ import annotations

import argparse
import copy
import os
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from stableemote_utils.cli.demo import (
    API_NAME,
    DEMO_ADAPTER_NAME,
    add_demo_command,
    build_demo,
    cmd_demo,
    demo_generate,
    find_adapter,
    free_port,
)
from stableemote_utils.compare import generate
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.lora import add_lora, load_lora, unload_lora
from stableemote_utils.lora_files import save_lora

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
STEPS = 2
SIZE_PX = 64
PROMPT = "An emoji of cat face"


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
    base_ref = generate(pipe, PROMPT, 3, STEPS, 7.5, SIZE_PX)
    load_lora(pipe, adapter, adapter_name=DEMO_ADAPTER_NAME)
    try:
        base, lora = demo_generate(pipe, PROMPT, 3, STEPS, 7.5, 1.0, True, SIZE_PX)
        assert np.array_equal(pixels(base), pixels(base_ref))
        assert not np.array_equal(pixels(lora), pixels(base_ref))
        none, half = demo_generate(pipe, PROMPT, 3, STEPS, 7.5, 0.5, False, SIZE_PX)
        assert none is None
        assert not np.array_equal(pixels(half), pixels(lora))
        _, zero = demo_generate(pipe, PROMPT, 3, STEPS, 7.5, 0.0, False, SIZE_PX)
        assert np.array_equal(pixels(zero), pixels(base_ref))  # scale 0 is the base model
        assert half.size == (SIZE_PX, SIZE_PX)
        with pytest.raises(StableEmoteError, match="Type a prompt"):
            demo_generate(pipe, "  ", 0, STEPS)
        with pytest.raises(StableEmoteError, match="Steps must be"):
            demo_generate(pipe, PROMPT, 0, 0)
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

    demo = build_demo(pipe, adapter, resolution_px=SIZE_PX, steps=STEPS)
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
            pipe, PROMPT, 5, STEPS, 7.5, 1.0, True, SIZE_PX
        )
        assert np.array_equal(pixels(Image.open(base_file)), pixels(expected_base))
        assert np.array_equal(pixels(Image.open(lora_file)), pixels(expected_lora))
    finally:
        demo.close()
        unload_lora(pipe)
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)


def test_demo_command_parses():
    parser = argparse.ArgumentParser()
    add_demo_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo", "--lora", "you/emoji-lora", "--port", "7000", "--share"])
    assert args.func is cmd_demo
    assert (args.lora, args.port, args.share, args.host) == ("you/emoji-lora", 7000, True, None)
    assert parser.parse_args(["demo"]).lora is None
