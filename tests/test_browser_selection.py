"""The image Vary and Upscale take is the one the page shows selected: in Chromium, a run of 4 images with the 3rd
opened, then another run of 4 with live previews (as the page starts), whose previews replace the gallery; Upscale
x2 then takes the image the gallery shows selected, not the 3rd of the new run."""

import re

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
from ernie_nf4.request import InitImage  # noqa: E402

from .support.app import PageOpener, ServedApp, pick_language, playwright_api, wait_until  # noqa: E402

SELECTED = """() => [...document.querySelectorAll('#gallery button.thumbnail-item')]
    .findIndex(x => x.classList.contains('selected'))"""


def image_hash(seed: int) -> str:
    """The init-image hash of FakeService's 64x64 image for ``seed``."""
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), np.uint8)
    return InitImage.of(Image.fromarray(pixels)).sha256


def run(page, seed: int) -> None:
    page.locator("#seed input").fill(str(seed))
    page.locator("#seed input").press("Tab")
    page.locator("#generate").click()
    playwright_api().expect(page.locator("#info textarea")).to_have_value(re.compile(rf"^seed {seed}, "))


@pytest.fixture
def served(browser, tmp_path):
    """The app around the fake service, and a page of it in English."""
    app = ServedApp(tmp_path)
    opener = PageOpener(browser, app.url)
    yield app, opener()
    opener.close()
    app.close()


def set_form(page, prompt: str, count: int, steps: int | None = None) -> None:
    """64x64 images, ``count`` of them (and ``steps`` when given), the PE off, the seed as typed."""
    page.locator("#advanced > button").first.click()
    page.locator("#steps").wait_for(state="visible")
    page.locator("#prompt textarea").fill(prompt)
    for field in ("#width", "#height"):
        page.locator(f"{field} input").fill("64")
    for field, value in (("#steps", steps), ("#count", count)):
        if value is not None:
            page.locator(f"{field} input[type=number]").fill(str(value))
            page.locator(f"{field} input[type=number]").press("Enter")
    page.locator("#use-pe input").uncheck()
    page.locator("#randomize input").uncheck()


@pytest.mark.browser
def test_upscale_takes_the_image_the_gallery_shows_after_a_previewed_run(served):
    expect = playwright_api().expect
    app, page = served
    set_form(page, "slow fox", count=4, steps=10)  # FakeService: slow enough for previews to show
    expect(page.locator("#previews input")).to_be_checked()
    run(page, 100)
    page.locator("#gallery button.thumbnail-item").nth(2).click()  # open the 3rd image
    assert wait_until(lambda: page.evaluate(SELECTED) == 2, 10)
    run(page, 200)
    page.wait_for_timeout(500)
    shown = max(page.evaluate(SELECTED), 0)  # none marked: the first is the one shown
    count = len(app.service.requests)
    page.locator("#upscale").click()
    assert wait_until(lambda: len(app.service.requests) == count + 1, 30)
    taken = [image_hash(200 + i) for i in range(4)].index(app.service.requests[-1].init_image.sha256)
    assert taken == shown, f"the page shows image {shown + 1} selected, Upscale took image {taken + 1}"


# A thumbnail clicked and a button pressed in one go (a quick hand, a busy page): the button takes the thumbnail the
# page shows selected.
CLICK_BOTH = """([thumbnail, button]) => {
    document.querySelectorAll(thumbnail)[1].click();
    document.querySelector(button).click();
}"""


@pytest.mark.browser
def test_a_button_pressed_right_after_a_pick_takes_the_picked_image(served):
    expect = playwright_api().expect
    app, page = served
    set_form(page, "a fox", count=2)
    run(page, 300)  # seeds 300 and 301, in the history and the gallery in that order
    expect(page.locator("#history button.thumbnail-item")).to_have_count(2)
    page.evaluate(CLICK_BOTH, ["#history button.thumbnail-item", "#use-settings"])
    expect(page.locator("#history-note")).to_contain_text("Settings restored from the history (seed 301)")
    expect(page.locator("#seed input")).to_have_value("301")
    count = len(app.service.requests)
    page.keyboard.press("Escape")
    # the result picked, then the page's language changed (its captions said again): Upscale takes that image
    page.locator("#gallery button.thumbnail-item").nth(1).click()
    pick_language(page, "简体中文")
    expect(page.locator("#gallery img").first).to_have_attribute("alt", re.compile(" · 种子 301 "))
    page.locator("#upscale").click()
    assert wait_until(lambda: len(app.service.requests) == count + 1, 30)
    assert app.service.requests[-1].init_image.sha256 == image_hash(301)
