"""Fresh screenshots of the app for docs/screenshots: desktop (1400x1000), phone (390x844) and dark mode, each after
one generation with the tiny random model on the CPU (its images are noise).
Run: python scripts/screenshots.py [--out docs/screenshots]."""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
SHOTS = {
    "app-desktop.png": ({"width": 1400, "height": 1000}, ""),
    "app-phone.png": ({"width": 390, "height": 844}, ""),
    "app-dark.png": ({"width": 1400, "height": 1000}, "?__theme=dark"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    from ernie_nf4.serving.service import ImageService, ServiceConfig
    from ernie_nf4.webapp.ui import build_demo

    work = Path(tempfile.mkdtemp(prefix="ernie-shots-"))
    service = ImageService(ServiceConfig(model_dir=str(work / "tiny"), tiny=True, device="cpu"))
    demo = build_demo(service, output_dir=str(work / "out"))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    out.mkdir(parents=True, exist_ok=True)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=FLAGS, headless=True)
            for name, (viewport, query) in SHOTS.items():
                page = browser.new_page(viewport=viewport)
                page.goto(f"http://127.0.0.1:{port}/{query}")
                page.locator("#examples").get_by_text("Poster, English title").click()
                page.wait_for_timeout(300)
                for field in ("#width", "#height"):  # the tiny model is quick only at small sizes
                    page.locator(f"{field} input").fill("256")
                page.locator("#height input").blur()
                page.locator("#generate").click()
                page.locator("#gallery img").first.wait_for(timeout=300_000)
                page.wait_for_timeout(800)
                page.screenshot(path=str(out / name))
                print(f"wrote {out / name}")
                page.close()
            browser.close()
    finally:
        demo.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="folder for the PNGs")
    main(parser.parse_args().out)
