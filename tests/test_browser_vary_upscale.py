"""Vary and Upscale as a person uses them, in headless Chromium on a phone's screen: a text-to-image run, then
Vary (subtle) of its result, then Upscale x2 of that, each one click giving a new result in the gallery, the
service seeing the requests they stand for, then a run with live previews; and the buttons in Chinese."""

import re

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
from ernie_nf4.request import InitImage  # noqa: E402

from .support.app import PageOpener, ServedApp, playwright_api, wait_until  # noqa: E402

PHONE = {"width": 390, "height": 844}


def result_hash(request) -> str:
    """The init-image hash of FakeService's first image for ``request`` (its pixels come from the seed)."""
    pixels = np.random.default_rng(request.seed).integers(0, 255, (request.height, request.width, 3), np.uint8)
    return InitImage.of(Image.fromarray(pixels)).sha256


def gallery_source(page) -> str:
    return page.locator("#gallery img").first.get_attribute("src")


def click_for_new_result(page, app, button: str, info: str) -> None:
    """Click ``button`` and wait for the run it starts to put a new image in the gallery and ``info`` in the run
    info."""
    expect = playwright_api().expect
    before, count = gallery_source(page), len(app.service.requests)
    page.locator(button).click()
    assert wait_until(lambda: len(app.service.requests) == count + 1, 30), button
    expect(page.locator("#info textarea")).to_have_value(re.compile(re.escape(info)))
    assert wait_until(lambda: gallery_source(page) != before, 10), button


def walk_text_vary_upscale(page, app) -> list:
    """Text-to-image at 64x64, Vary (subtle) of its result, Upscale x2 of the varied one; returns the three
    requests the service saw."""
    expect = playwright_api().expect
    page.locator("#prompt textarea").fill("a lighthouse at dusk")
    page.locator("#width input").fill("64")
    page.locator("#height input").fill("64")
    page.locator("#generate").click()
    expect(page.locator("#info textarea")).to_have_value(re.compile(r"^seed "))
    text = app.service.requests[-1]
    click_for_new_result(page, app, "#vary-subtle", "Vary (subtle) of seed")
    varied = app.service.requests[-1]
    click_for_new_result(page, app, "#upscale", "Upscale x2 of seed")
    return [text, varied, app.service.requests[-1]]


@pytest.mark.browser
def test_text_then_vary_subtle_then_upscale_then_a_previewed_run_on_a_phone(browser, tmp_path):
    from .test_browser_previews import BOUND, start_run

    app = ServedApp(tmp_path)
    opener = PageOpener(browser, app.url)
    try:
        page = opener(viewport=PHONE)
        for button in ("#vary-subtle", "#vary-strong", "#upscale"):  # on a phone, each within the screen's width
            box = page.locator(button).bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (button, box)
        text, varied, upscaled = walk_text_vary_upscale(page, app)
        assert text.init_image is None and (text.width, text.height) == (64, 64)
        assert varied.strength == 0.3 and varied.init_image.sha256 == result_hash(text)
        assert varied.seed != text.seed and (varied.width, varied.height) == (64, 64)
        assert varied.prompt == text.prompt and varied.enhanced_prompt == "revised: a lighthouse at dusk"
        assert (upscaled.width, upscaled.height, upscaled.strength) == (128, 128, 0.3)
        assert upscaled.seed == varied.seed and upscaled.init_image.sha256 == result_hash(varied)
        playwright_api().expect(page.locator("#history img")).to_have_count(3)  # each result went to the history
        start_run(page, previews=True)  # then a run with Live previews: the image forming before the final one
        expect = playwright_api().expect
        preview = page.locator("#gallery img").first
        expect(preview).to_have_attribute("alt", re.compile(r"Preview · step \d+/10"), timeout=BOUND)
        expect(page.locator("#info textarea")).to_have_value(re.compile(r"^seed "))
        expect(preview).to_have_attribute("alt", re.compile(r"64×64 · seed \d+"))
        assert app.service.previews_asked is True and app.service.requests[-1].prompt == "slow fox"
    finally:
        opener.close()
        app.close()


@pytest.mark.browser
def test_the_buttons_in_chinese_off_until_a_result_and_while_a_preview_shows(browser, tmp_path):
    from .test_browser_previews import BOUND, start_run

    expect = playwright_api().expect
    app = ServedApp(tmp_path)
    opener = PageOpener(browser, app.url)
    buttons = ("#use-result", "#vary-subtle", "#vary-strong", "#upscale")
    try:
        page = opener(viewport=PHONE, locale="zh-CN")
        expect(page.locator("#vary-subtle")).to_have_text("变化（轻微）")
        expect(page.locator("#vary-strong")).to_have_text("变化（强烈）")
        expect(page.locator("#upscale")).to_have_text("放大 2 倍")
        for button in buttons:  # nothing to take yet
            expect(page.locator(button)).to_be_disabled()
        start_run(page, previews=True)
        expect(page.locator("#gallery img").first).to_have_attribute("alt", re.compile("^预览 · "), timeout=BOUND)
        assert [page.locator(button).is_disabled() for button in buttons] == [True] * 4  # a preview is no result
        expect(page.locator("#info textarea")).to_have_value(re.compile("^种子 "))
        for button in buttons:
            expect(page.locator(button)).to_be_enabled()
        page.locator("#use-result").click()
        expect(page.locator("#init-image img")).to_have_count(1)
        assert app.service.requests[-1].prompt == "slow fox" and len(app.service.requests) == 1
    finally:
        opener.close()
        app.close()


@pytest.mark.browser
def test_stop_ends_an_upscale_and_the_gallery_shows_its_result_again(browser, tmp_path):
    from .test_browser_run import fill_form

    expect = playwright_api().expect
    app = ServedApp(tmp_path)
    opener = PageOpener(browser, app.url)
    try:
        page = opener(viewport=PHONE)
        fill_form(page, "slow lighthouse", steps=20)  # FakeService: 0.2 s a step for "slow" prompts
        page.locator("#generate").click()
        expect(page.locator("#info textarea")).to_have_value(re.compile(r"^seed "))
        shown = gallery_source(page)
        page.locator("#upscale").click()
        expect(page.locator("#stop")).to_be_enabled()
        assert wait_until(lambda: len(app.service.requests) == 2 and getattr(app.service, "steps_done", 0) < 20, 10)
        page.locator("#stop").click()
        expect(page.locator("#info textarea")).to_have_value("Stopped. Nothing was kept from this run.")
        expect(page.locator("#stop")).to_be_disabled()
        assert app.service.steps_done < 20
        # the gallery shows the result again (a live preview may have replaced it meanwhile): no preview stays
        assert wait_until(lambda: gallery_source(page) == shown, 10)
        alts = page.locator("#gallery img").evaluate_all("images => images.map(image => image.alt)")
        assert alts and not any(alt.startswith("Preview") for alt in alts)
        assert (app.service.requests[-1].width, app.service.requests[-1].strength) == (128, 0.3)
    finally:
        opener.close()
        app.close()


@pytest.mark.browser
@pytest.mark.parametrize("locale, words", [("en-US", "so this one would hardly grow"), ("zh-CN", "这张几乎不会变大")])
def test_a_refused_upscale_is_a_popup_and_the_result_stays_in_sight(browser, tmp_path, locale, words):
    expect = playwright_api().expect
    app = ServedApp(tmp_path)
    opener = PageOpener(browser, app.url)
    try:
        page = opener(locale=locale)
        page.locator("#prompt textarea").fill("a tall tower")
        page.locator("#width input").fill("64")
        page.locator("#height input").fill("1664")  # twice is past 2048: it would hardly grow
        page.locator("#generate").click()
        expect(page.locator("#info textarea")).to_have_value(re.compile(r"^(seed|种子) "))
        count, shown = len(app.service.requests), gallery_source(page)
        page.locator("#upscale").click()
        expect(page.locator("[data-testid=toast-body]").first).to_contain_text(words)
        page.wait_for_timeout(500)
        assert page.locator("#gallery [data-testid=status-tracker] .error").count() == 0  # no error over the results
        assert page.locator("#gallery img").first.is_visible() and gallery_source(page) == shown
        assert len(app.service.requests) == count  # nothing ran
        expect(page.locator("#stop")).to_be_disabled()
    finally:
        opener.close()
        app.close()
