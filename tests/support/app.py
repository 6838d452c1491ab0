"""Helpers and fixtures for the app tests: a fake service, the real app served on loopback, Chromium.
gradio and gradio_client are imported inside the fixtures, so this module loads where they are absent."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ernie_nf4.errors import GenerationCancelled, InvalidArgument
from ernie_nf4.progress import Progress
from ernie_nf4.runtime.generation import GenerationResult
from ernie_nf4.runtime.prompt import PromptEnhancement
from ernie_nf4.stats import LiveStats, ServiceStats, StageSeconds
from ernie_nf4.variants import VARIANTS

ROOT = Path(__file__).resolve().parents[2]
# The browser tests wait for a state of the page (a value, a text, the progress tracker hidden), never for a time;
# this is only the upper bound on any one wait, generous for a loaded machine.
BOUND = 90_000  # ms
# True once the gallery's progress tracker (Gradio's status tracker) is hidden: the page has the run's last message.
RUN_ENDED = "![...document.querySelectorAll('#gallery .wrap.default')].some(e => !e.classList.contains('hide'))"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeService:
    """Stands in for ImageService: images made from the seed, no model."""

    defaults = VARIANTS["ernie-image"]
    label = "fake"
    provenance = "verified by ernie-nf4 metadata"

    def __init__(self, lora_names=()):
        self.requests = []
        self.enhanced = []  # the requests Enhance first sent
        self.lora_names = list(lora_names)  # the LoRAs it offers, by name

    def unavailable_reason(self):
        return None

    def load(self, on_progress=None):
        return self

    def generate(self, request, on_progress=None, cancel=None, previews=False):
        self.requests.append(request)
        self.previews_asked = previews
        if unknown := [c.name for c in request.loras if c.name not in self.lora_names]:
            raise InvalidArgument(f"lora {unknown[0]!r} is not offered", field="lora")  # as ImageService does
        steps = request.num_inference_steps
        # "slow" prompts take 0.2 s a step, "sluggish" ones 1.5 s (a small card's step at 1024x1024), else no time
        pause = next((s for word, s in (("slow", 0.2), ("sluggish", 1.5)) if request.prompt.startswith(word)), 0.0)
        if on_progress:  # the stages a real run reports, in order
            on_progress(Progress("pe" if request.use_pe else "text_encoding"))
        for step in range(1, steps + 1):
            time.sleep(pause)
            if on_progress:
                eta = pause * (steps - step) if pause else None
                on_progress(Progress("denoising", done=step, total=steps, unit="steps", eta_seconds=eta))
            self.steps_done = step
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled("stopped")
            if previews and on_progress and step < steps:  # as ImageService: a small image, after the stop check
                preview = Image.new("RGB", (max(1, request.width // 8), max(1, request.height // 8)), (step * 9, 0, 0))
                on_progress(Progress("denoising", done=step, total=steps, unit="steps", preview=preview))
        if on_progress:
            on_progress(Progress("vae_decode"))
        images = [
            Image.fromarray(np.random.default_rng(s).integers(0, 255, (request.height, request.width, 3), np.uint8))
            for s in request.seeds
        ]
        seconds = StageSeconds(0.1, 0.1, 0.2, 0.1, 0.5)
        revised = request.enhanced_prompt or "revised: " + request.prompt  # the text given goes on as it is
        return GenerationResult(request, images, request.seeds, revised, seconds)

    def enhance(self, request, on_progress=None, cancel=None):
        """The PE alone: a text that the prompt, size and seed decide, written a token at a time ("slow" prompts
        slowly, so that Stop can reach them; nothing at seed 404)."""
        self.enhanced.append(request)
        words = f"enhanced {request.prompt} at {request.width}x{request.height} seed {request.seed}".split()
        if request.seed == 404:  # the PE ends on its first token
            words = []
        for written in range(len(words) + 1):
            if on_progress:
                on_progress(Progress("pe", done=written, total=len(words), unit="tokens"))
            if cancel is not None and cancel.is_set():
                self.enhance_stopped_at = written
                raise GenerationCancelled("stopped while the prompt enhancer wrote")
            if request.prompt.startswith("slow"):
                time.sleep(0.2)
        return PromptEnhancement(" ".join(words), tokens=len(words), cut=False, cap=len(words))

    def stats(self):
        return ServiceStats("fake", None, LiveStats(True, "all-on-gpu", "chosen with --memory-mode", False))


@pytest.fixture(scope="session")
def fake_app(tmp_path_factory):
    from gradio_client import Client

    from app import build_demo

    service = FakeService()
    demo = build_demo(service, output_dir=str(tmp_path_factory.mktemp("out")))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield service, Client(f"http://127.0.0.1:{port}/", verbose=False)
    demo.close()


@pytest.fixture(scope="session")
def served_tiny_app(tmp_path_factory):
    """The real app, as a user starts it: python app.py --tiny --device cpu."""
    from gradio_client import Client

    model_dir = tmp_path_factory.mktemp("app") / "tiny-package"
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [sys.executable, "app.py", "--tiny", "--device", "cpu", "--port", str(port), "--model-dir", str(model_dir)]
    # the tests' many clients stand for many users but share one address; outputs and key stay out of ~/.cache
    cmd += ["--max-jobs-per-client", "64", "--output-dir", str(model_dir.with_name("outputs"))]
    cmd += ["--history-key-file", str(model_dir.with_name("history-key"))]
    log = model_dir.with_name("app.log")  # a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            client = Client(url, verbose=False)
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"app did not start: {log.read_text()}")
            time.sleep(0.5)
    yield url, client, model_dir
    proc.terminate()
    proc.wait(timeout=30)


def chromium_path():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("ERNIE_NF4_REQUIRE_BROWSER"):
            pytest.fail("chromium is required here (ERNIE_NF4_REQUIRE_BROWSER) but missing: apt-get install chromium")
        pytest.skip("chromium not installed")
    return path


def playwright_api():
    """playwright's sync API; under ERNIE_NF4_REQUIRE_BROWSER (CI) its absence fails instead of skipping."""
    try:
        from playwright import sync_api
    except ImportError:
        if os.environ.get("ERNIE_NF4_REQUIRE_BROWSER"):
            pytest.fail("playwright is required here (ERNIE_NF4_REQUIRE_BROWSER): pip install -r requirements-dev.txt")
        pytest.skip("playwright not installed")
    return sync_api


CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium through Playwright, one per test module; ``expect`` waits up to ``BOUND``."""
    sync_api = playwright_api()
    sync_api.expect.set_options(timeout=BOUND)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True)
        yield browser
        browser.close()


class PageOpener:
    """``opener(viewport=..., locale=..., url=..., permissions=...)`` -> a page on ``url`` (else the default one) in
    a fresh browser context, once the app's Generate button is there; ``close()`` closes every context opened."""

    def __init__(self, browser, default_url: str):
        self.browser, self.default_url, self.contexts = browser, default_url, []

    def __call__(self, viewport=None, locale="en-US", url=None, permissions=()):
        viewport = viewport or {"width": 1366, "height": 900}
        context = self.browser.new_context(viewport=viewport, locale=locale, permissions=list(permissions))
        context.set_default_timeout(BOUND)
        self.contexts.append(context)
        page = context.new_page()
        page.goto(url or self.default_url)
        page.locator("#generate").wait_for()
        settle(page)
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()


# The box of every element with an id, by id.
_BOXES_BY_ID = """() => Object.fromEntries([...document.querySelectorAll("[id]")].map(e => {
    const r = e.getBoundingClientRect(); return [e.id, [r.x, r.y, r.width, r.height]]; }))"""
# True once those boxes have held still for 300 ms; read on each poll.
_LAYOUT_STILL = f"""() => {{
    const now = performance.now(), layout = JSON.stringify(({_BOXES_BY_ID})());
    if (window.__layout !== layout) {{ window.__layout = layout; window.__since = now; return false; }}
    return now - window.__since > 300;
}}"""


def settle(page, seconds: float = 30.0) -> None:
    """Until the page's layout holds still: boxes read while it still moves (fonts, examples, the first render of a
    column) describe a page nobody sees. A page that never does fails naming the elements that move."""
    try:
        page.wait_for_function(_LAYOUT_STILL, polling=100, timeout=seconds * 1000)
    except playwright_api().Error:
        before = page.evaluate(_BOXES_BY_ID)
        page.wait_for_timeout(300)
        after = page.evaluate(_BOXES_BY_ID)
        moving = sorted(k for k in after if before.get(k) != after[k])
        raise AssertionError(f"the page's layout kept moving for {seconds:.0f} s: {moving}") from None
    page.evaluate("() => { delete window.__layout; delete window.__since; }")


def boxes(page, *selectors: str) -> dict[str, dict]:
    """The boxes of ``selectors`` read in one go, so all of them describe the same layout."""
    return page.evaluate(
        """(selectors) => Object.fromEntries(selectors.map(s => { const r = document.querySelector(s)
            .getBoundingClientRect(); return [s, {x: r.x, y: r.y, width: r.width, height: r.height}]; }))""",
        list(selectors),
    )


def wait_until(condition, seconds=10.0) -> bool:
    """True once ``condition()`` is, False when ``seconds`` pass first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


SERVER_ENV = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "CUDA_VISIBLE_DEVICES": ""}


def wait_for_server(url, proc=None, log=None, seconds=120):
    """Until ``url``'s config answers 200; fails with the log when the process ends or the time runs out."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "config", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.3)
    pytest.fail(f"app did not start: {log.read_text() if log else ''}")


class ServedApp:
    """The app around a ``FakeService`` in this process, on loopback, behind ``limits`` as ``main()`` puts them."""

    def __init__(self, folder, limits=None, auth=None, outputs=None, lora_names=()):
        from app import build_demo
        from ernie_nf4.webapp import limits as app_limits
        from ernie_nf4.webapp.outputs import OutputStore

        self.service = FakeService(lora_names)
        self.outputs = outputs or OutputStore(Path(folder) / "out")
        self.demo = build_demo(self.service, output_dir=self.outputs)
        launch = app_limits.configure(self.demo, limits or app_limits.Limits(), self.outputs)
        self.port = free_port()
        self.demo.launch(
            server_name="127.0.0.1", server_port=self.port, prevent_thread_lock=True, quiet=True, auth=auth, **launch
        )
        self.url = f"http://127.0.0.1:{self.port}/"
        self.ids = {fn.api_name or fn.name: fn._id for fn in self.demo.fns.values()}

    def close(self):
        self.demo.close()


def pick_language(frame, name):
    """Gradio's Settings (in the page's footer): Language -> ``name``, then the panel closed (``frame``: a page, or
    a frame in one)."""
    frame.locator("footer").get_by_text(re.compile("Settings|设置")).click()
    frame.get_by_label(re.compile("Language|语言")).first.click()
    frame.locator("ul li.item", has_text=name).first.click()
    getattr(frame, "page", frame).keyboard.press("Escape")
    frame.locator("div[role=dialog] .banner-wrap button").first.click()
