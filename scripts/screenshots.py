"""Fresh screenshots of the app for docs/screenshots: desktop, phone and dark mode after one run, a run of two images
(the whole page), and the Stats tab.

The pictures in them are DRAWN BY THIS SCRIPT, not made by the model: ``DrawingService`` is the tiny random model's
service (``--tiny``: its package, its Stats) except that ``generate`` paints a lake at sunset with PIL, because the
tiny model's images are noise and the screenshots are there to show the app, on a machine that may have no GPU.
The page's header says so too. The prompt enhancer is off, so the revised prompt stays empty.
Run: python scripts/screenshots.py [--out docs/screenshots]."""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
DESKTOP, PHONE = {"width": 1366, "height": 900}, {"width": 390, "height": 844}
PROMPT = "A red rowing boat on a calm mountain lake at sunset, warm light, reflections on the water"
# name: (viewport, query string, images per run, whole page)
SHOTS = {
    "app-desktop.png": (DESKTOP, "", 1, False),
    "app-phone.png": (PHONE, "", 1, False),
    "app-dark.png": (DESKTOP, "?__theme=dark", 1, False),
    "app-generate.png": (DESKTOP, "", 2, True),
}
STATS_SHOT = "app-stats.png"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def draw_lake(width: int, height: int, seed: int):
    """A lake at sunset: sky, sun, two mountain ridges, the water with the sun's reflection, a red boat placed by
    the seed."""
    from PIL import Image, ImageDraw, ImageFilter

    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    horizon = int(height * 0.62)
    for y in range(horizon):  # sky: deep blue at the top to orange at the horizon
        f = y / horizon
        draw.line([(0, y), (width, y)], fill=(int(40 + 215 * f), int(50 + 110 * f), int(120 - 40 * f)))
    sun_x, sun_r = int(width * 0.62), int(min(width, height) * 0.09)
    draw.ellipse([sun_x - sun_r, horizon - 2 * sun_r, sun_x + sun_r, horizon], fill=(255, 214, 130))
    for depth, (shade, peaks) in enumerate((((92, 60, 90), 5), ((52, 36, 62), 4))):
        step = width / peaks
        points = [(0, horizon)]
        for i in range(peaks + 1):
            top = horizon - height * (0.22 - 0.06 * depth) * (0.6 + 0.4 * ((i * 7 + depth) % 3) / 2)
            points += [(i * step - step / 2, horizon - height * 0.05), (i * step, top)]
        draw.polygon([*points, (width, horizon)], fill=shade)
    for y in range(horizon, height):  # water: the sky mirrored, darker
        f = (y - horizon) / (height - horizon)
        draw.line([(0, y), (width, y)], fill=(int(200 - 150 * f), int(110 - 70 * f), int(90 - 20 * f)))
    for i in range(14):  # the sun's glitter on the water
        y = horizon + 6 + i * (height - horizon) // 16
        half = int(sun_r * (1.2 - i / 14))
        draw.line([(sun_x - half, y), (sun_x + half, y)], fill=(255, 200, 120), width=max(2, height // 200))
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    draw = ImageDraw.Draw(image)
    boat_x = int(width * (0.2 + 0.25 * (seed % 7) / 6))
    boat_y, boat_w = int(horizon + (height - horizon) * 0.45), int(width * 0.16)
    hull = [(boat_x, boat_y), (boat_x + boat_w, boat_y), (boat_x + int(boat_w * 0.82), boat_y + boat_w // 6)]
    draw.polygon([*hull, (boat_x + int(boat_w * 0.15), boat_y + boat_w // 6)], fill=(196, 30, 36))
    draw.line(
        [(boat_x + boat_w // 2, boat_y), (boat_x + boat_w // 2, boat_y - boat_w // 8)], fill=(40, 20, 20), width=3
    )
    return image


class DrawingService:
    """The tiny model's service with a ``generate`` that draws (see the module's docstring); everything else is the
    real service's. It presents the full model's form (1024x1024 and the sized examples), not the tiny one's."""

    label = "screenshot stand-in (the picture is drawn by scripts/screenshots.py, not by the model)"
    config = None

    def __init__(self, service):
        self.service = service

    def __getattr__(self, name):
        return getattr(self.service, name)

    def generate(self, request, on_progress=None, cancel=None):
        from ernie_nf4.progress import Progress
        from ernie_nf4.runtime.generation import GenerationResult
        from ernie_nf4.stats import StageSeconds

        start = time.perf_counter()
        if on_progress:
            on_progress(Progress("text_encoding"))
        images = [draw_lake(request.width, request.height, seed) for seed in request.seeds]
        if on_progress:
            on_progress(Progress("vae_decode"))
        seconds = StageSeconds(0.0, 0.0, 0.0, 0.0, time.perf_counter() - start)
        return GenerationResult(request, images, request.seeds, "", seconds)


def run_once(page, images: int) -> None:
    """One run as a user makes it: prompt, a preset, the prompt enhancer off, Generate; waits for the result."""
    page.locator("#prompt textarea").fill(PROMPT)
    page.locator("#preset input").click()
    page.get_by_role("option", name="3:2 · 1264×848").click()
    page.locator("#advanced .label-wrap").click()
    page.locator("#use-pe input").uncheck()
    if images > 1:
        page.locator("#count input[type=number]").fill(str(images))
        page.locator("#count input[type=number]").blur()
    page.locator("#advanced .label-wrap").click()
    page.locator("#generate").click()
    page.wait_for_function("document.querySelector('#info textarea').value.startsWith('seed')", timeout=120_000)
    page.wait_for_function(
        "[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(800)


def shoot(url: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=FLAGS, headless=True)
        for name, (viewport, query, images, full_page) in SHOTS.items():
            page = browser.new_page(viewport=viewport)
            page.goto(url + query)
            run_once(page, images)
            page.screenshot(path=str(out / name), full_page=full_page)
            print(f"wrote {out / name}")
            page.close()
        page = browser.new_page(viewport=DESKTOP)
        page.goto(url)
        page.get_by_role("tab", name="Stats").click()
        page.locator("#chart .marks").first.wait_for(timeout=120_000)
        page.wait_for_timeout(800)
        page.screenshot(path=str(out / STATS_SHOT), full_page=True)
        print(f"wrote {out / STATS_SHOT}")
        browser.close()


def main(out: Path) -> None:
    from ernie_nf4.serving.service import ImageService, ServiceConfig
    from ernie_nf4.webapp.ui import build_demo

    work = Path(tempfile.mkdtemp(prefix="ernie-shots-"))
    tiny = ImageService(ServiceConfig(model_dir=str(work / "tiny"), tiny=True, device="cpu"))
    tiny.load()  # builds the tiny package: Stats shows a real one
    demo = build_demo(DrawingService(tiny), output_dir=str(work / "out"))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    out.mkdir(parents=True, exist_ok=True)
    try:
        shoot(f"http://127.0.0.1:{port}/", out)
    finally:
        demo.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="folder for the PNGs")
    main(parser.parse_args().out)
