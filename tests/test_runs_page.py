"""Gradio's run history page (the footer's "Runs" link, ``/gradio_api/runs``) of the real app on loopback, in
Chromium: a run made on the page is listed under the form's labels in the page's language, never Gradio's
translation markers; Gradio's own words on that page (title, headings, buttons, state, the confirmation and the
page once the run is deleted) are in the page's language too."""

import pytest

pytest.importorskip("gradio")

from ernie_nf4.webapp.i18n import EN, ZH  # noqa: E402

from .support.app import BOUND, CHROMIUM_FLAGS, RUN_ENDED, chromium_path, playwright_api  # noqa: E402

# /generate's inputs, then its outputs, as the run history page lists them
INPUTS = "prompt negative width height steps guidance seed randomize pe images lora lora_scale init_image strength"
KEYS = [*INPUTS.split(), "enhanced", "live_previews", "result", "seed", "revised", "run_info"]
# Gradio's own words on the run history page, English then as a Chinese page says them: with one run, then once
# it is deleted; and the question asked before deleting it
RUN_WORDS = [
    ("Run history (1)", "运行记录（1）"),
    ("Clear history", "清空记录"),
    ("1 run", "1 次运行"),
    ("Inputs", "输入"),
    ("Outputs", "输出"),
    ("Load run", "载入运行"),
    ("Delete", "删除"),
    ("History storage", "记录保存位置"),
    ("This browser", "此浏览器"),
    ("App", "应用"),
]
EMPTY_WORDS = [
    ("Run history (0)", "运行记录（0）"),
    ("No runs yet", "还没有运行记录"),
    ("Use the app, then return here to load previous runs.", "先使用应用，再回到这里载入之前的运行。"),
]
ASKED = ("Delete this saved run?", "删除这条保存的运行记录？")


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
        history = page.locator("[data-testid=run-history]")
        assert "a fox asleep in the snow" in history.inner_text()
        said, unsaid = (1, 0) if locale.startswith("zh") else (0, 1)
        sync_api.expect(history.locator("h1")).to_have_text(RUN_WORDS[0][said], timeout=BOUND)
        assert_words(history.inner_text(), RUN_WORDS, said, unsaid)
        asked = []
        page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
        history.locator("button.delete").click()
        sync_api.expect(history.locator("h2")).to_have_text(EMPTY_WORDS[1][said], timeout=BOUND)
        assert asked == [ASKED[said]]
        assert_words(history.inner_text(), EMPTY_WORDS, said, unsaid)
        browser.close()


def assert_words(text: str, pairs, said: int, unsaid: int):
    """Each pair's word ``said`` is in ``text`` (Gradio's styles may write it in capitals), its other one is not."""
    lines = {line.strip().casefold() for line in text.splitlines()}
    for pair in pairs:
        assert pair[said].casefold() in lines, pair[said]
        assert pair[unsaid].casefold() not in lines, pair[unsaid]
