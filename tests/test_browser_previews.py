"""Live previews as a person sees them in headless Chromium (desktop in English, a phone in Chinese): with the Live
previews box ticked (as the page starts) the gallery shows the image forming, captioned with its step, before the
final image replaces it; with the box cleared it shows the final image alone."""

import re

import pytest

pytest.importorskip("gradio")

from .support.app import BOUND, PageOpener, ServedApp, playwright_api  # noqa: E402

DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
# Every caption (alt text) the gallery's images have had since it was installed, in order.
WATCH_GALLERY = """() => {
    window.galleryAlts = [];
    const seen = () => document.querySelectorAll('#gallery img').forEach(img => {
        if (window.galleryAlts[window.galleryAlts.length - 1] !== img.alt) window.galleryAlts.push(img.alt);
    });
    new MutationObserver(seen).observe(document.querySelector('#gallery'),
        {subtree: true, childList: true, attributes: true, attributeFilter: ['src', 'alt']});
}"""

# Whether the preview shows through the progress drawn over the gallery: the cover is clear (no opaque background),
# and the progress text and bar lie below the preview's middle.
PREVIEW_IN_SIGHT = """() => {
    const cover = document.querySelector('#gallery [data-testid=status-tracker]');
    const alpha = (getComputedStyle(cover).backgroundColor.match(/rgba\\(.*,\\s*([\\d.]+)\\)/) || [0, 1])[1];
    const image = document.querySelector('#gallery img').getBoundingClientRect();
    const band = cover.querySelector('.progress-level')?.getBoundingClientRect();
    return Number(alpha) === 0 && (!band || band.top > image.top + image.height / 2);
}"""


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    served = ServedApp(tmp_path_factory.mktemp("previews"))
    yield served
    served.close()


@pytest.fixture
def open_page(app, browser):
    opener = PageOpener(browser, app.url)
    yield opener
    opener.close()


def start_run(page, previews: bool, prompt: str = "slow fox", steps: int = 10) -> None:
    """A run of the fake service: "slow" prompts take 0.2 s a step, "sluggish" ones 1.5 s."""
    expect = playwright_api().expect
    page.locator("#advanced > button").first.click()
    page.locator("#steps").wait_for(state="visible")
    page.locator("#prompt textarea").fill(prompt)
    for field, value in (("#width", 64), ("#height", 64)):
        page.locator(f"{field} input").fill(str(value))
    page.locator("#steps input[type=number]").fill(str(steps))
    page.locator("#steps input[type=number]").press("Enter")
    expect(page.locator("#steps input[type=range]")).to_have_value(str(steps))
    page.locator("#use-pe input").uncheck()
    box = page.locator("#previews input")
    expect(box).to_be_checked()  # on as the page starts
    if not previews:
        box.uncheck()
    page.evaluate(WATCH_GALLERY)
    page.locator("#generate").click()


@pytest.mark.browser
@pytest.mark.parametrize(
    "viewport, locale, label, caption",
    [
        (DESKTOP, "en-US", "Live previews", r"Preview · step (\d+)/10"),
        (PHONE, "zh-CN", "实时预览", r"预览 · 第 (\d+)/10 步"),
    ],
    ids=["desktop-en", "phone-zh"],
)
def test_a_previewed_run_shows_the_image_forming_before_the_final_image(open_page, viewport, locale, label, caption):
    page = open_page(viewport=viewport, locale=locale)
    expect = playwright_api().expect
    start_run(page, previews=True)
    expect(page.locator("#previews")).to_contain_text(label)
    preview = page.locator("#gallery img").first
    expect(preview).to_have_attribute("alt", re.compile(caption), timeout=BOUND)
    assert not page.locator("#info textarea").input_value().startswith(("seed", "种子"))  # the run goes on
    assert page.evaluate(PREVIEW_IN_SIGHT)  # not under the progress's cover
    box = preview.bounding_box()
    # an 8x8 preview (of 64x64) drawn large, inside the page
    assert box["width"] >= 0.3 * viewport["width"] and box["x"] + box["width"] <= viewport["width"] + 1
    expect(page.locator("#info textarea")).to_have_value(re.compile(r"^(seed|种子) "))
    expect(page.locator("#gallery img").first).to_have_attribute("alt", re.compile(r"64×64 · (seed|种子) \d+"))
    alts = page.evaluate("window.galleryAlts")
    shown = [int(m.group(1)) for alt in alts if (m := re.match(caption, alt))]
    assert shown and shown == sorted(shown) and shown[-1] <= 9  # steps in order, none after the last
    final = next(i for i, alt in enumerate(alts) if "64×64" in alt)
    assert all(re.match(caption, alt) is None for alt in alts[final:])  # the final image replaced them


@pytest.mark.browser
def test_with_the_box_cleared_the_gallery_shows_the_final_image_alone(open_page, app):
    page = open_page(viewport=DESKTOP)
    start_run(page, previews=False)
    playwright_api().expect(page.locator("#info textarea")).to_have_value(re.compile(r"^seed "))
    alts = page.evaluate("window.galleryAlts")
    assert alts and not any("Preview" in alt for alt in alts)
    assert app.service.previews_asked is False


# Every 50 ms: the progress line over the gallery; while a preview shows, whether that line and Gradio's own timer are
# in sight.
SAMPLE_PROGRESS = """() => {
    window.progressSamples = [];
    window.timerWithPreview = 0;
    window.previewTicks = [];  // while a preview shows: whether the progress line is in sight
    window.sampler = setInterval(() => {
        const tracker = document.querySelector('#gallery [data-testid=status-tracker]');
        const level = tracker?.querySelector('.progress-level-inner');
        if (level) window.progressSamples.push(level.textContent.replace(/\\s+/g, ' ').trim());
        const timer = tracker?.querySelector('.progress-text');
        const preview = document.querySelector('#gallery img')?.alt.startsWith('Preview');
        if (preview && timer && timer.textContent.trim() && getComputedStyle(timer).visibility !== 'hidden')
            window.timerWithPreview += 1;
        if (preview) window.previewTicks.push(Boolean(level && !tracker.classList.contains('hide')));
    }, 50);
}"""


@pytest.mark.browser
def test_the_progress_line_stays_over_the_previews_and_its_time_goes_on(open_page):
    page = open_page(viewport=DESKTOP)
    page.evaluate(SAMPLE_PROGRESS)
    start_run(page, previews=True)
    playwright_api().expect(page.locator("#info textarea")).to_have_value(re.compile(r"^seed "))
    samples = page.evaluate("clearInterval(window.sampler); window.progressSamples")
    elapsed = [float(m.group(1)) for text in samples if (m := re.search(r"([\d.]+) s elapsed", text))]
    assert len(elapsed) >= 5, samples
    assert elapsed == sorted(elapsed) and elapsed[-1] >= 1.5, elapsed  # 10 steps of 0.2 s: it never starts over
    assert page.evaluate("window.timerWithPreview") == 0  # Gradio's timer, which restarts, is out of sight
    ticks = page.evaluate("window.previewTicks")
    # the line stays in sight: after a preview it is back within 150 ms, not only at the next step (0.2 s later)
    gaps = "".join("1" if tick else "0" for tick in ticks).split("1")
    assert len(ticks) >= 10 and max(map(len, gaps)) <= 3 and sum(ticks) >= 0.7 * len(ticks), ticks


@pytest.mark.browser
def test_the_elapsed_time_goes_on_through_a_long_step(open_page):
    """Steps of 1.5 s, as a small card's at 1024x1024: while a preview shows and no step ends, the time elapsed on
    the progress line still moves on, never more than a second at a time."""
    page = open_page(viewport=DESKTOP)
    page.evaluate(SAMPLE_PROGRESS)
    start_run(page, previews=True, prompt="sluggish fox", steps=4)
    playwright_api().expect(page.locator("#info textarea")).to_have_value(re.compile(r"^seed "), timeout=BOUND)
    samples = page.evaluate("clearInterval(window.sampler); window.progressSamples")
    elapsed = [float(m.group(1)) for text in samples if (m := re.search(r"([\d.]+) s elapsed", text))]
    seen = sorted(set(elapsed))
    assert elapsed == sorted(elapsed) and len(seen) >= 6, samples  # 3 steps of 1.5 s after the first preview
    assert max(b - a for a, b in zip(seen, seen[1:], strict=False)) <= 1.0, seen
