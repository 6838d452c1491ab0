"""Gradio's run history page (the footer's "Runs" link, ``/gradio_api/runs``) of the real app on loopback, in
Chromium: a run made on the page is listed under the form's labels in the page's language, never Gradio's
translation markers."""

import pytest

pytest.importorskip("gradio")

from ernie_nf4.webapp.i18n import EN, ZH  # noqa: E402

from .support.app import BOUND, CHROMIUM_FLAGS, RUN_ENDED, chromium_path, playwright_api  # noqa: E402

# /generate's inputs, then its outputs, as the run history page lists them
INPUTS = "prompt negative width height steps guidance seed randomize pe images lora lora_scale init_image strength"
KEYS = [*INPUTS.split(), "enhanced", "live_previews", "result", "seed", "revised", "run_info"]


def run_then_open_runs(browser, url: str, locale: str):
    """A page in ``locale`` that made one run, then followed the footer's link to the run history page."""
    page = browser.new_page(viewport={"width": 1366, "height": 900}, locale=locale)
    page.set_default_timeout(BOUND)
    page.goto(url)
    page.locator("#prompt textarea").fill("a fox asleep in the snow")
    page.locator("#width input").fill("64")
    page.locator("#height input").fill("64")
    page.locator("#generate").click()
    page.wait_for_function(RUN_ENDED)
    page.locator("footer a[href$='/runs']").click()  # Gradio shows the link once the browser has saved a run
    page.locator("[data-testid=run-history]").wait_for()
    return page


@pytest.mark.browser
@pytest.mark.parametrize(("locale", "words"), [("en-US", EN), ("zh-CN", ZH)])
def test_the_run_history_page_lists_a_run_under_the_pages_labels(fake_app, locale, words):
    _, client = fake_app
    sync_api = playwright_api()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True)
        page = run_then_open_runs(browser, client.src, locale)
        labels = page.locator("[data-testid=run-history] .value-label")
        sync_api.expect(labels).to_have_text([words[key] for key in KEYS], timeout=BOUND)
        assert "__i18n__" not in page.locator("body").inner_text().lower()
        assert "a fox asleep in the snow" in page.locator("[data-testid=run-history]").inner_text()
        browser.close()
