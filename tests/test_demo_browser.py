"""The demo as a person sees it: `stableemote demo --preset tiny` driven in headless Chromium.

Run with ``make test-browser`` (it installs Debian's ``chromium`` and the pinned
``playwright``, whose driver controls that browser; no browser is downloaded). The tests
here are skipped unless pytest gets ``--run-browser``. Screenshots go to outputs/browser/.

What is checked: the page loads without console errors; a prompt typed and Generate
pressed gives pictures at least ``MIN_PICTURE_CSS_PX`` wide, labelled with their settings;
without an adapter there is one picture and no LoRA control; with one, the base and LoRA
pictures sit side by side and the LoRA-scale slider changes the LoRA picture (at scale 0
it is the base picture); SIGTERM (idle) and Ctrl-C (while generating, with the page open)
stop the server within a second.
"""

from __future__ import annotations

import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stableemote_utils.lora_files import read_lora_file

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "outputs" / "browser"
CHROMIUM = os.environ.get("STABLEEMOTE_CHROMIUM", "/usr/bin/chromium")
# Headless Chromium that talks to nothing but the page (its background services are
# refused here anyway), in a fresh profile that Playwright makes for each launch.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MIN_PICTURE_CSS_PX = 256
MAX_SEED = 2**32 - 1
STOP_WITHIN_S = 1.0
START_TIMEOUT_S = 240
GENERATE_TIMEOUT_MS = 120_000
ADAPTER_STEPS = 40
PROMPT = "An emoji of grinning face"
# Runs this repository's command line (not whatever `stableemote` is first on PATH).
CLI = [sys.executable, "-m", "stableemote_utils.cli"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"No Chromium at {CHROMIUM}: run `make test-browser` (it installs it).")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory) -> Path:
    """A LoRA trained for a few steps on TinyEmote by `stableemote train` (1 to 2 minutes).

    ``STABLEEMOTE_BROWSER_LORA=FOLDER`` uses an adapter trained before instead.
    """
    if os.environ.get("STABLEEMOTE_BROWSER_LORA"):
        return Path(os.environ["STABLEEMOTE_BROWSER_LORA"])
    out = tmp_path_factory.mktemp("browser") / "emoji-lora"
    cmd = [
        *CLI,
        "train",
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--recipe",
        "tiny-quick",
        "--steps",
        str(ADAPTER_STEPS),
        "--max-train-examples",
        "64",
        "--validate-every",
        "1000",
        "--checkpoint-every",
        "1000",
        "--output-dir",
        str(out),
    ]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


class Demo:
    """A `stableemote demo` process and the URL it printed."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [*CLI, "demo", "--preset", "tiny", "--device", "cpu", *args],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._wait_for_url()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.log.append(line)
            if line.startswith("StableEmote demo on "):
                return line.split(" on ", 1)[1].strip()
        self.proc.kill()
        raise AssertionError("The demo did not start:\n" + "".join(self.log))

    def stop(self, sig: int) -> float:
        """Send ``sig``; seconds until the process ended (it is killed after 10 s)."""
        start = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return time.monotonic() - start


def _open(browser, url: str):
    """A 1280 x 900 page on ``url`` and the list its console errors are collected into."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    start = time.monotonic()
    page.goto(url, wait_until="networkidle")
    page.locator("#generate").wait_for(state="visible", timeout=60_000)
    print(f"page ready in {time.monotonic() - start:.1f} s")
    return page, errors


def _picture(page, elem_id: str, previous_src: str | None = None) -> tuple[str, Image.Image]:
    """Wait for the picture in ``#elem_id`` (a new one if ``previous_src``); its URL and pixels."""
    img = page.locator(f"#{elem_id} img").first
    img.wait_for(state="visible", timeout=GENERATE_TIMEOUT_MS)
    if previous_src is not None:
        page.wait_for_function(
            "([sel, old]) => { const i = document.querySelector(sel);"
            " return i && i.complete && i.getAttribute('src') !== old; }",
            arg=[f"#{elem_id} img", previous_src],
            timeout=GENERATE_TIMEOUT_MS,
        )
    page.wait_for_function(
        "sel => { const i = document.querySelector(sel); return i && i.complete"
        " && i.naturalWidth > 0; }",
        arg=f"#{elem_id} img",
        timeout=GENERATE_TIMEOUT_MS,
    )
    src = img.get_attribute("src")
    data = page.request.get(src).body() if not src.startswith("data:") else None
    assert data is not None, "expected the picture as a file URL"
    return src, Image.open(io.BytesIO(data)).convert("RGB")


def _width_css_px(page, elem_id: str) -> float:
    return page.locator(f"#{elem_id} img").first.bounding_box()["width"]


def _generate(page, prompt: str) -> float:
    start = time.monotonic()
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#generate").click()
    return start


def _set_scale(page, fraction: float) -> None:
    """Click the LoRA-scale slider's track at ``fraction`` of its width, as a person would."""
    track = page.locator("#lora-scale input[type=range]")
    box = track.bounding_box()
    page.mouse.click(box["x"] + fraction * box["width"], box["y"] + box["height"] / 2)


def test_without_an_adapter_one_picture_and_no_lora_control(browser):
    SHOTS.mkdir(parents=True, exist_ok=True)
    demo = Demo()
    try:
        page, errors = _open(browser, demo.url)
        assert page.locator("#lora-scale").count() == 0
        assert page.get_by_text("LoRA scale").count() == 0
        assert page.locator("#lora-picture").count() == 0
        assert "no adapter loaded" in page.inner_text("body")
        start = _generate(page, PROMPT)
        _, base = _picture(page, "base-picture")
        print(f"one picture in {time.monotonic() - start:.1f} s")
        width = _width_css_px(page, "base-picture")
        assert width >= MIN_PICTURE_CSS_PX, f"picture shown {width} CSS px wide"
        label = page.inner_text("#base-picture")
        assert "TinyEmote" in label and "seed 0" in label and "steps" in label, label
        assert page.locator("#base-download").is_enabled()
        assert base.width >= MIN_PICTURE_CSS_PX
        page.screenshot(path=str(SHOTS / "demo_without_adapter.png"), full_page=True)
        assert errors == []

        seed = page.locator("#seed input")
        page.locator("#random-seed").click()
        page.wait_for_function("el => el.value !== '0'", arg=seed.element_handle())
        assert 0 <= int(seed.input_value()) <= MAX_SEED
        seed.fill(str(2**70))
        page.locator("#generate").click()
        # gradio's Number refuses it before the handler (whose own check says "seed must be")
        message = re.compile(f"maximum value {MAX_SEED}|seed must be a whole number")
        page.get_by_text(message).first.wait_for(state="visible", timeout=30_000)
        page.screenshot(path=str(SHOTS / "demo_seed_too_large.png"), full_page=True)
        assert errors == []
        page.close()
    finally:
        took = demo.stop(signal.SIGTERM)
    assert demo.proc.returncode is not None
    assert took < STOP_WITHIN_S, f"SIGTERM took {took:.2f} s to stop the demo"


def test_with_an_adapter_side_by_side_and_a_live_scale_slider(browser, adapter_dir):
    SHOTS.mkdir(parents=True, exist_ok=True)
    demo = Demo("--lora", str(adapter_dir))
    try:
        page, errors = _open(browser, demo.url)
        body = page.inner_text("body")
        # The rank the adapter's own header gives (the recipe's, unless the run changed it).
        _, meta = read_lora_file(adapter_dir / "pytorch_lora_weights.safetensors")
        described = f"LoRA {adapter_dir.name}: rank {meta['rank']}"
        assert described in body, f"{described!r} not in {body[:500]!r}"
        assert page.locator("#lora-scale").count() == 1
        start = _generate(page, PROMPT)
        base_src, base = _picture(page, "base-picture")
        lora_src, lora = _picture(page, "lora-picture")
        print(f"two pictures in {time.monotonic() - start:.1f} s")
        for elem_id in ("base-picture", "lora-picture"):
            width = _width_css_px(page, elem_id)
            assert width >= MIN_PICTURE_CSS_PX, f"#{elem_id} shown {width} CSS px wide"
        left = page.locator("#base-picture img").bounding_box()
        right = page.locator("#lora-picture img").bounding_box()
        assert right["x"] >= left["x"] + left["width"], "the pictures are not side by side"
        assert abs(right["y"] - left["y"]) < 5
        assert "LoRA × 1.00" in page.inner_text("#lora-picture")
        assert not np.array_equal(np.asarray(base), np.asarray(lora))
        page.screenshot(path=str(SHOTS / "demo_with_adapter.png"), full_page=True)

        _set_scale(page, 0.0)
        zero_src, zero = _picture(page, "lora-picture", previous_src=lora_src)
        assert "LoRA × 0.00" in page.inner_text("#lora-picture")
        assert np.array_equal(np.asarray(zero), np.asarray(base)), "scale 0 is not the base model"
        assert page.locator("#base-picture img").get_attribute("src") == base_src
        page.screenshot(path=str(SHOTS / "demo_with_adapter_scale0.png"), full_page=True)

        _set_scale(page, 0.9)  # about 1.35
        _, strong = _picture(page, "lora-picture", previous_src=zero_src)
        assert "LoRA × 0.00" not in page.inner_text("#lora-picture")
        assert not np.array_equal(np.asarray(strong), np.asarray(zero))
        assert errors == []
        page.locator("#generate").click()  # Ctrl-C while a generation runs, the page open
        time.sleep(0.5)
    finally:
        took = demo.stop(signal.SIGINT)
    assert took < STOP_WITHIN_S, f"Ctrl-C took {took:.2f} s to stop the demo"
