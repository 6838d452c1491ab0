"""The page's layout in headless Chromium, measured in the DOM, on a desktop (1366x900), a phone (390x844) and in
Chinese: whole results at their aspect, copy buttons, the size row and its presets, the phone's buttons and
examples, the tiny app's examples, accessible names, the progress live region, touch targets; and the README's
screenshots."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
from ernie_nf4.request import GUIDANCE_RANGE  # noqa: E402

from .support.app import PageOpener, boxes, playwright_api  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
VIEWPORTS = pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
# The roles a person operates; two of them with one name cannot be told apart by a screen reader's user.
CONTROLS = {"button", "tab", "link", "checkbox", "slider", "textbox", "combobox", "spinbutton"}


@pytest.fixture
def open_app(fake_app, browser):
    """``open_app(viewport=..., locale=..., url=...)`` -> a page in a fresh browser context (the fake-service app
    unless ``url`` says otherwise)."""
    opener = PageOpener(browser, fake_app[1].src)
    yield lambda viewport=DESKTOP, **kwargs: opener(viewport, **kwargs)
    opener.close()


def generate(page, prompt, width, height):
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#width input").fill(str(width))
    page.locator("#height input").fill(str(height))
    page.locator("#height input").blur()
    page.locator("#generate").click()
    # the run info starts with the seed, in the page's language
    page.wait_for_function("/^(seed|种子) /.test(document.querySelector('#info textarea').value)")


def open_advanced(page):
    page.locator("#advanced .label-wrap").click()
    page.locator("#use-pe input").wait_for(state="visible")


def tiles(page, gallery: str) -> list[dict]:
    """Each image tile of ``gallery``: the image's natural and rendered size, the tile's and the caption's boxes."""
    return page.evaluate(
        """(gallery) => [...document.querySelectorAll(`${gallery} .thumbnail-item`)].map(tile => {
            const img = tile.querySelector("img"), caption = tile.querySelector(".caption-label");
            const box = (e) => { const r = e.getBoundingClientRect();
                return {x: r.x, y: r.y, w: r.width, h: r.height, right: r.right, bottom: r.bottom}; };
            return {natural: [img.naturalWidth, img.naturalHeight], img: box(img), tile: box(tile),
                    fit: getComputedStyle(img).objectFit, caption: caption && box(caption),
                    captionCut: caption && (caption.scrollWidth > caption.clientWidth + 1
                                            || caption.scrollHeight > caption.clientHeight + 1),
                    captionText: caption && caption.textContent.trim(), alt: img.alt,
                    label: tile.getAttribute("aria-label")};
        })""",
        gallery,
    )


def ax_nodes(page) -> list[dict]:
    """The page's accessibility tree as Chromium computes it: (role, name) of each node that is not ignored."""
    session = page.context.new_cdp_session(page)
    nodes = session.send("Accessibility.getFullAXTree")["nodes"]
    session.detach()
    return [
        {"role": node.get("role", {}).get("value"), "name": (node.get("name") or {}).get("value", "")}
        for node in nodes
        if not node.get("ignored")
    ]


def slider_thumb_boxes(page) -> list[tuple[float, float]]:
    """(width, height) of every range input's thumb, read from Chromium's own tree of the input (its user-agent
    shadow root, where the thumb is an element)."""
    session = page.context.new_cdp_session(page)
    root = session.send("DOM.getDocument", {"depth": -1, "pierce": True})["root"]
    thumbs, stack = [], [(root, False)]
    while stack:
        node, in_range = stack.pop()
        attributes = node.get("attributes", [])
        pairs = dict(zip(attributes[::2], attributes[1::2], strict=False))
        if in_range and pairs.get("id") == "thumb":
            thumbs.append(node["nodeId"])
        is_range = node.get("localName") == "input" and pairs.get("type") == "range"
        stack += [(child, in_range) for child in node.get("children", [])]
        stack += [(shadow, in_range or is_range) for shadow in node.get("shadowRoots", [])]
    sizes = []
    for node_id in thumbs:
        try:
            model = session.send("DOM.getBoxModel", {"nodeId": node_id})["model"]
        except Exception:  # a thumb of a slider that is not rendered (a closed accordion, another tab)
            continue
        sizes.append((model["width"], model["height"]))
    session.detach()
    return sizes


# 1. Whole results and history, copy buttons, the revised prompt's height


@pytest.mark.browser
@VIEWPORTS
def test_results_and_history_show_each_image_whole_at_its_aspect(open_app, viewport):
    page = open_app(viewport=viewport)
    open_advanced(page)
    page.locator("#use-pe input").uncheck()
    generate(page, "a wide banner", 1008, 256)
    generate(page, "a portrait", 256, 384)
    page.locator("#history .thumbnail-item").nth(1).wait_for()
    page.locator("#gallery img").first.wait_for()
    page.wait_for_function(
        "[...document.querySelectorAll('#gallery img, #history img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    shown = tiles(page, "#gallery") + tiles(page, "#history")
    assert len(shown) == 3
    assert {tuple(tile["natural"]) for tile in shown} == {(1008, 256), (256, 384)}
    for tile in shown:
        natural = tile["natural"][0] / tile["natural"][1]
        rendered = tile["img"]["w"] / tile["img"]["h"]
        assert abs(rendered / natural - 1) < 0.03, tile  # the box has the image's aspect: nothing cut, no bars
        assert tile["img"]["x"] >= tile["tile"]["x"] - 1 and tile["img"]["right"] <= tile["tile"]["right"] + 1, tile
        if tile["natural"][1] > tile["natural"][0]:
            assert tile["img"]["h"] > tile["img"]["w"], tile  # portrait stays portrait
        assert tile["caption"] is not None and not tile["captionCut"], tile
        caption = tile["caption"]  # the caption whole, inside its tile and under the image, not over it
        assert caption["y"] >= tile["img"]["bottom"] - 1 and caption["bottom"] <= tile["tile"]["bottom"] + 1, tile
        assert caption["right"] <= tile["tile"]["right"] + 1, tile


@pytest.mark.browser
def test_prompt_and_revised_prompt_have_copy_buttons_and_the_revised_box_scrolls(open_app):
    page = open_app(permissions=("clipboard-read", "clipboard-write"))
    prompt = "a lighthouse on a cliff, " * 120  # the fake service's revised prompt repeats it: very long
    generate(page, prompt.strip(), 64, 64)
    revised = page.locator("#revised textarea")
    assert revised.input_value().startswith("revised: a lighthouse")
    for box, text in (("#prompt", prompt.strip()), ("#revised", revised.input_value())):
        page.evaluate("navigator.clipboard.writeText('')")
        page.locator(box).get_by_role("button", name=re.compile("copy", re.I)).click()
        page.wait_for_function("(t) => navigator.clipboard.readText().then(c => c === t)", arg=text)
    sizes = revised.evaluate(
        "t => ({client: t.clientHeight, scroll: t.scrollHeight, overflow: getComputedStyle(t).overflowY})"
    )
    assert sizes["client"] <= 220, sizes  # about six lines, however long the text
    assert sizes["scroll"] > sizes["client"] and sizes["overflow"] in ("auto", "scroll"), sizes


# 8. The form


def _share_a_line(row: dict, names: tuple[str, ...]) -> bool:
    """Whether the boxes ``names`` overlap the first one's line (none wrapped below it)."""
    top, bottom = row[names[0]]["y"], row[names[0]]["y"] + row[names[0]]["height"]
    return all(row[name]["y"] < bottom and row[name]["y"] + row[name]["height"] > top for name in names)


@pytest.mark.browser
@pytest.mark.parametrize(
    ("viewport", "locale"), [(DESKTOP, "en-US"), (DESKTOP, "zh-CN"), (PHONE, "en-US")], ids=["desktop", "zh", "phone"]
)
def test_height_never_wraps_onto_a_line_alone(open_app, viewport, locale):
    page = open_app(viewport=viewport, locale=locale)
    read = boxes(page, "#preset", "#width", "#swap", "#height", "#settings")
    row, settings = {name: read[f"#{name}"] for name in ("preset", "width", "swap", "height")}, read["#settings"]
    assert _share_a_line(row, ("width", "swap", "height")), row
    assert row["width"]["x"] < row["swap"]["x"] < row["height"]["x"], row
    assert row["height"]["x"] + row["height"]["width"] <= settings["x"] + settings["width"] + 1, row
    if viewport == DESKTOP:  # at 1366 px the whole size row is one line
        assert _share_a_line(row, ("preset", "width", "swap", "height")), row
        assert row["preset"]["x"] < row["width"]["x"], row


@pytest.mark.browser
@pytest.mark.parametrize("locale", ["en-US", "zh-CN"])
def test_on_a_phone_generate_and_stop_sit_side_by_side_and_the_examples_come_soon(open_app, locale):
    page = open_app(viewport=PHONE, locale=locale)
    read = boxes(page, "#generate", "#stop")
    run, stop = read["#generate"], read["#stop"]
    assert abs(run["y"] - stop["y"]) < 2 and run["x"] + run["width"] <= stop["x"], (run, stop)
    assert stop["x"] + stop["width"] <= PHONE["width"] and run["y"] + run["height"] <= PHONE["height"]
    generate(page, "a tall poster", 256, 384)  # a portrait result: the tallest the result area gets
    page.locator("#gallery img").first.wait_for()
    page.evaluate("window.scrollTo(0, 0)")
    examples = page.locator("#examples").bounding_box()
    assert examples["y"] < 1.5 * PHONE["height"], examples  # right after the result, before the settings
    assert examples["y"] > page.locator("#gallery").bounding_box()["y"]


@pytest.mark.browser
def test_the_guidance_slider_spans_the_range_the_api_takes(open_app):
    page = open_app()
    open_advanced(page)
    slider = page.locator("#guidance input[type=range]")
    assert float(slider.get_attribute("min")) == GUIDANCE_RANGE[0]
    assert float(slider.get_attribute("max")) == GUIDANCE_RANGE[1]


def _ratio_is_honest(label: str) -> None:
    match = re.fullmatch(r"(\d+):(\d+) · (\d+)×(\d+)", label)
    assert match, label
    a, b, width, height = map(int, match.groups())
    assert abs((a / b) / (width / height) - 1) <= 0.02, label


@pytest.mark.browser
@pytest.mark.parametrize(("locale", "custom"), [("en-US", "Custom"), ("zh-CN", "自定义")])
def test_presets_are_named_by_their_aspect_and_swap_turns_the_size(open_app, locale, custom):
    page = open_app(locale=locale)
    expect = playwright_api().expect
    expect(page.locator("#preset input")).to_have_value("1:1 · 1024×1024")
    page.locator("#preset input").click()
    options = [text.strip(" ✓\n") for text in page.get_by_role("option").all_inner_texts()]
    assert options[-1] == custom
    for label in options[:-1]:
        _ratio_is_honest(label)
    for label in ("1:1 · 1024×1024", "3:4 · 896×1200", "4:3 · 1200×896", "2:3 · 848×1264", "16:9 · 1376×768"):
        assert label in options, options
    page.get_by_role("option", name="16:9 · 1376×768").click()
    expect(page.locator("#width input")).to_have_value("1376")
    expect(page.locator("#height input")).to_have_value("768")
    page.locator("#swap").click()
    expect(page.locator("#width input")).to_have_value("768")
    expect(page.locator("#height input")).to_have_value("1376")
    expect(page.locator("#preset input")).to_have_value("9:16 · 768×1376")
    page.locator("#width input").fill("1000")
    page.locator("#width input").blur()
    expect(page.locator("#preset input")).to_have_value(custom)
    page.locator("#swap").click()
    expect(page.locator("#width input")).to_have_value("1376")
    expect(page.locator("#height input")).to_have_value("1000")


@pytest.mark.browser
def test_with_tiny_an_example_keeps_the_tiny_size(served_tiny_app, open_app):
    url, _, _ = served_tiny_app
    page = open_app(url=url)
    expect = playwright_api().expect
    page.locator("#examples").get_by_text("Poster, English title").click()
    expect(page.locator("#prompt textarea")).to_have_value(re.compile("BLUE NOTE FRIDAYS"))
    page.locator("#examples").get_by_text("Neon sign photo").click()
    expect(page.locator("#prompt textarea")).to_have_value(re.compile("OPEN LATE"))
    assert page.locator("#width input").input_value() == "256"
    assert page.locator("#height input").input_value() == "256"
    assert page.locator("#examples").get_by_text("×").count() == 0  # no size promised on the examples either


# 10. Accessibility


# Gradio's own words on its buttons (names, tooltips), which a Chinese page says in Chinese
GRADIO_BUTTON_WORDS = ("Copy", "Reset to default", "Click to upload", "Fullscreen", "Close", "Download", "Share")


@pytest.mark.browser
@pytest.mark.parametrize("locale", ["en-US", "zh-CN"])
def test_every_control_has_a_name_of_its_own(open_app, locale):
    page = open_app(locale=locale)
    generate(page, "named cat", 64, 64)
    page.locator("#history img").first.wait_for()
    open_advanced(page)
    controls = [node for node in ax_nodes(page) if node["role"] in CONTROLS]
    names = [node["name"].strip() for node in controls]
    assert len(controls) > 15 and "" not in names, controls
    repeated = sorted({name for name in names if names.count(name) > 1})
    assert repeated == [], repeated
    assert page.get_by_role("button", name="⇄").count() == 0  # the swap button says what it does
    if locale == "zh-CN":  # Gradio's own button names and tooltips too are said in Chinese
        english = [name for name in names if name.startswith(GRADIO_BUTTON_WORDS)]
        assert english == [], english
        page.locator("#gallery .thumbnail-item").first.click()  # the preview's own buttons
        page.locator("#gallery button[title]").first.wait_for()
        titles = page.locator("button[title]").evaluate_all("buttons => buttons.map(b => b.title)")
        assert titles and not [title for title in titles if title.startswith(GRADIO_BUTTON_WORDS)], titles
        footer = page.locator("footer").inner_text()  # Gradio's own words its Chinese table lacks
        assert "运行记录" in footer and "Runs" not in footer, footer


@pytest.mark.browser
def test_control_names_follow_a_language_picked_in_gradios_settings(open_app):
    from .support.app import pick_language

    page = open_app(locale="en-US")
    generate(page, "named cat", 64, 64)
    page.locator("#history img").first.wait_for()
    assert any(node["name"].startswith("Copy: ") for node in ax_nodes(page))
    pick_language(page, "简体中文")
    page.get_by_role("button", name=re.compile("^复制：提示词")).first.wait_for()
    names = [node["name"].strip() for node in ax_nodes(page) if node["role"] in CONTROLS]
    english = [name for name in names if name.startswith(GRADIO_BUTTON_WORDS)]
    assert english == [], english
    # an upload box drawn before the change (Gradio leaves its words as they were) says them in Chinese too
    box = page.locator("#restore [data-testid=upload-text]")
    playwright_api().expect(box).to_contain_text("点击上传")
    assert "Click to Upload" not in box.inner_text() and "Drop File Here" not in box.inner_text()
    playwright_api().expect(page.get_by_role("tab", name="统计")).to_be_visible()  # a tab not opened since


@pytest.mark.browser
def test_gradios_names_for_screen_readers_and_its_file_popups_follow_the_language(open_app, tmp_path):
    """Gradio's names of sliders, the footer and an empty gallery in Chinese on a Chinese page and back in English,
    and its popup for a file of the wrong type (refused in the page, never sent) with its close button."""
    from .support.app import pick_language

    expect = playwright_api().expect
    labels = "() => [...document.querySelectorAll('[aria-label]')].map(e => e.getAttribute('aria-label'))"
    english = re.compile(r"^(number input for|range slider for|Gradio footer|Empty value$|Thumbnail \d|Close$)")
    page = open_app(locale="zh-CN")
    page.locator("#advanced").get_by_text(re.compile("高级设置")).click()
    page.get_by_label("步数（滑块）").wait_for()
    said = page.evaluate(labels)
    assert {"步数（数值）", "步数（滑块）", "Gradio 页脚导航", "空"} <= set(said), said
    assert not [label for label in said if english.match(label)], said
    jpeg = tmp_path / "photo.jpg"
    jpeg.write_bytes(b"\xff\xd8\xff not a PNG")
    page.locator("#restore input[type=file]").set_input_files(str(jpeg))
    popup = page.locator("[data-testid=toast-body]").first
    expect(popup).to_contain_text("文件类型无效：photo.jpg。只接受 .png。")
    expect(popup.locator("[data-testid=toast-close]")).to_have_attribute("aria-label", "关闭")
    pick_language(page, "English")
    expect(page.locator("footer")).to_have_attribute("aria-label", "Gradio footer navigation")
    said = page.evaluate(labels)
    assert {"number input for Steps", "range slider for Steps", "Gradio footer navigation", "Empty value"} <= set(said)
    assert not [label for label in said if re.search("[\u4e00-\u9fff]", label)], said


# Chinese left on the page outside the examples (whose names say their Chinese prompts): in a name, a tooltip, or a
# text, the image-to-image section opened
CHINESE_LEFT = """() => {
    const closed = document.querySelectorAll('#advanced > button, .label-wrap');
    closed.forEach(b => b.getAttribute('aria-expanded') === 'false' && b.click());
    const cjk = /[\u4e00-\u9fff]/, found = [];
    for (const e of document.querySelectorAll('body *:not(#examples *)')) {
        for (const name of ['aria-label', 'title', 'alt']) {
            if (cjk.test(e.getAttribute(name) || '')) found.push(`${e.tagName} ${name}: ${e.getAttribute(name)}`);
        }
        for (const n of e.childNodes) if (n.nodeType === 3 && cjk.test(n.nodeValue)) found.push(n.nodeValue.trim());
    }
    return found;
}"""


@pytest.mark.browser
def test_gradios_words_drawn_before_a_language_change_follow_it_both_ways(browser, tmp_path):
    """What Gradio draws in the page's language and leaves as it was when the language changes in its Settings: an
    upload box's words, a tab not shown since; said in the new language, from Chinese to English and back."""
    from .support.app import ServedApp, pick_language

    expect = playwright_api().expect
    app = ServedApp(tmp_path)
    opener = PageOpener(browser, app.url)
    words = {
        "English": ("Click to Upload", "Drop File Here", "Stats"),
        "简体中文": ("点击上传", "将文件拖放到此处", "统计"),
    }
    try:
        for locale, first, then in (("zh-CN", "简体中文", "English"), ("en-US", "English", "简体中文")):
            page = opener(locale=locale)
            pick_language(page, then)
            click, drop, stats = words[then]
            box = page.locator("#restore [data-testid=upload-text]")
            expect(box).to_contain_text(click)
            assert drop in box.inner_text() and words[first][0] not in box.inner_text()
            expect(page.get_by_role("tab", name=stats)).to_be_visible()
            assert page.get_by_role("tab", name=words[first][2]).count() == 0
            if then == "English":  # nothing else of Gradio's drawn in Chinese stays: names, tooltips, hidden tabs
                assert page.evaluate(CHINESE_LEFT) == []
    finally:
        opener.close()
        app.close()


# The words of the Stats tables broken across lines (a word: up to a space, or a Chinese opening parenthesis, where
# a line may break)
BROKEN_WORDS = """() => {
    const broken = [];
    for (const cell of document.querySelectorAll('#stats td, #stats th')) {
        const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            for (const match of node.nodeValue.matchAll(/[^\\s（]+/g)) {
                const range = document.createRange();
                range.setStart(node, match.index);
                range.setEnd(node, match.index + match[0].length);
                const lines = new Set([...range.getClientRects()].map(rect => Math.round(rect.top)));
                if (lines.size > 1) broken.push(match[0]);
            }
        }
    }
    return broken;
}"""


@pytest.mark.browser
@pytest.mark.parametrize("locale, tab", [("en-US", "Stats"), ("zh-CN", "统计")])
def test_on_a_phone_the_stats_tables_break_no_word_and_the_page_does_not_scroll_sideways(
    served_tiny_app, open_app, locale, tab
):
    url, client, _ = served_tiny_app
    client.predict("cat", "", 64, 64, 1, 1.0, 1, False, False, 1, api_name="/generate")  # the model loaded: its sizes
    page = open_app(viewport=PHONE, locale=locale, url=url)
    page.get_by_role("tab", name=tab).click()
    page.locator("#stats table").first.wait_for()
    assert page.evaluate(BROKEN_WORDS) == []
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]


@pytest.mark.browser
def test_the_stats_charts_description_for_screen_readers_follows_the_language(served_tiny_app, open_app):
    """Vega, which draws the Stats chart, describes it for screen readers in English (the chart, its axes, legend
    and title, with their roles): said in Chinese on a Chinese page, and back in English after a change, with the
    chart drawn afresh from English rows."""
    from .support.app import pick_language

    described = """() => [...document.querySelectorAll('#chart [aria-label], #chart [aria-roledescription]')]
        .flatMap(e => [e.getAttribute('aria-label'), e.getAttribute('aria-roledescription')]).filter(Boolean)"""
    vega_english = re.compile(r"visualization|mark container|^axis$|^legend$|^title$|-axis|legend titled|Title text")
    url, client, _ = served_tiny_app
    client.predict("cat", "", 64, 64, 1, 1.0, 1, False, False, 1, api_name="/generate")  # the model loaded: its sizes
    page = open_app(locale="zh-CN", url=url)
    page.get_by_role("tab", name="统计").click()
    page.locator("#chart [aria-roledescription=柱]").first.wait_for()  # drawn with its rows
    said = page.evaluate(described)
    assert not [text for text in said if vega_english.search(text)], said
    for start in ("X 轴“", "Y 轴“", "符号图例“", "标题“"):
        assert any(text.startswith(start) for text in said), (start, said)
    assert any(re.match(r"X 轴“.+”，离散刻度，\d+ 个值：", text) for text in said), said
    assert {"坐标轴", "图例", "标题", "柱"} <= set(said), said
    pick_language(page, "English")
    page.get_by_role("tab", name="Stats").click()
    # the chart drawn afresh from the server's English rows (the Chinese one's roles are said in English at once)
    page.wait_for_function(f"() => ({described})().some(text => text.startsWith(\"X-axis titled 'Component'\"))")
    said = page.evaluate(described)
    assert any(re.match(r"X-axis titled '.+' for a discrete scale with \d+ values: ", text) for text in said), said
    assert {"axis", "legend", "title", "bar"} <= set(said), said
    # the bars and their names in English too, each with its weights' kind (a chart redrawn with its old rows has none)
    assert not [text for text in said if re.search("[\u4e00-\u9fff]|undefined", text)], said


@pytest.mark.browser
def test_gradios_settings_panel_speaks_the_pages_language_and_changes_with_it(open_app):
    # Gradio writes its Settings panel's themes, screen recording and run history in English whatever the language
    from .support.app import pick_language

    expect = playwright_api().expect
    page = open_app(locale="zh-CN")
    chinese = ("浅色", "跟随系统", "录屏工作室录下", "开始录制", "自动剪辑视频", "运行记录（", "查看运行记录")
    chinese += ("此浏览器",)
    english = ("Light", "System", "Screen Studio allows", "Start Recording", "video trimming", "Run history (")
    english += ("View run history", "This browser")

    def panel():
        page.locator("footer").get_by_text(re.compile("Settings|设置")).click()
        return page.locator("div[role=dialog]").first

    storage = ("新运行记录保存到", "私密，仅在此设备上可用", "连接存储桶")
    storage_en = ("Save new runs to", "Private and available only on this device", "Connect a bucket")
    # Gradio's own spaces, which the page's text drops: "☀︎ &nbsp;Light"
    light = "() => [...document.querySelectorAll('div[role=dialog] *')].flatMap(e => [...e.childNodes])"
    light += ".map(n => n.nodeType === 3 ? n.nodeValue : '').find(t => /Light|浅色/.test(t))"

    def storage_menu():
        page.locator("div[role=dialog] .storage-picker button").first.click()
        return page.locator("div[role=dialog] [role=menu]").first

    shown = panel()
    for word in chinese:
        expect(shown).to_contain_text(word)
    text = shown.inner_text()
    assert not [word for word in english if word in text], text
    menu = storage_menu()
    for word in storage:
        expect(menu).to_contain_text(word)
    assert not [word for word in storage_en if word in menu.inner_text()]
    assert shown.locator("img[alt='开始录制']").count() == 1  # the recording button's image, named as its text
    page.keyboard.press("Escape")
    page.locator("div[role=dialog] .banner-wrap button").first.click()  # closed
    pick_language(page, "English")
    shown = panel()
    for word in english:
        expect(shown).to_contain_text(word)
    text = shown.inner_text()
    assert not [word for word in chinese if word in text], text
    assert "\u00a0Light" in page.evaluate(light)  # as Gradio wrote it
    assert shown.locator("img[alt='Start Recording']").count() == 1
    menu = storage_menu()
    for word in storage_en:
        expect(menu).to_contain_text(word)


@pytest.mark.browser
def test_gallery_images_are_named_by_their_caption(open_app, fake_app):
    service, _ = fake_app
    page = open_app()
    generate(page, "a captioned cat", 64, 96)
    seed = service.requests[-1].seed
    page.locator("#history img").first.wait_for()
    page.wait_for_function(
        "[...document.querySelectorAll('#gallery .thumbnail-item, #history .thumbnail-item')]"
        ".every(t => !t.getAttribute('aria-label').startsWith('Thumbnail'))"
    )
    shown = tiles(page, "#gallery") + tiles(page, "#history")
    assert len(shown) == 2
    for tile in shown:
        assert str(seed) in tile["captionText"], tile
        assert tile["alt"] == tile["captionText"] and tile["label"].endswith(tile["captionText"]), tile
    names = [node["name"] for node in ax_nodes(page) if node["role"] == "button"]
    assert sum(name.endswith(shown[0]["captionText"]) for name in names) == 2, names  # the result and its history
    assert not any(name.startswith("Thumbnail") for name in names), names


@pytest.mark.browser
def test_progress_is_read_out_from_a_live_region(open_app):
    page = open_app()
    open_advanced(page)
    page.locator("#steps input[type=number]").fill("200")
    page.locator("#steps input[type=number]").blur()
    page.locator("#prompt textarea").fill("slow live")
    page.locator("#width input").fill("64")
    page.locator("#height input").fill("64")
    page.locator("#previews input").uncheck()  # the progress text alone: previews redraw the gallery under it
    page.locator("#generate").click()
    page.get_by_text("denoising · step").first.wait_for()
    # a polite status region, visible to assistive technology (not display:none), holds the stage while it runs
    live = """() => [...document.querySelectorAll('[aria-live=polite], [aria-live=assertive]')].find(e =>
        getComputedStyle(e).display !== 'none' && e.textContent.includes('denoising · step'))"""
    page.wait_for_function(live)
    page.wait_for_timeout(1500)  # still there a moment later: not a flash a screen reader may miss
    assert page.evaluate(f"!!({live})()")
    page.locator("#stop").click()


@pytest.mark.browser
@pytest.mark.parametrize("locale", ["en-US", "zh-CN"])
def test_touch_targets_on_a_phone_are_at_least_24_px(open_app, locale):
    page = open_app(viewport=PHONE, locale=locale)
    open_advanced(page)
    for name in ("#randomize", "#use-pe"):
        box = page.locator(f"{name} input[type=checkbox]").bounding_box()
        assert box["width"] >= 24 and box["height"] >= 24, (name, box)
    generate(page, "a small cat", 64, 64)  # the result's own buttons (copy, download, full screen) show too
    page.locator("#gallery img").first.wait_for()
    small = page.evaluate(
        """() => [...document.querySelectorAll(
            '#top button, #main :is(button, input, .label-wrap), #reuse button')]
        .filter(e => e.offsetParent !== null && e.type !== 'range')  // the thumbs are measured below
        .map(e => [e.getAttribute('aria-label') || e.textContent.trim() || e.id, e.getBoundingClientRect()])
        .filter(([, r]) => r.width < 24 || r.height < 24).map(([name, r]) => [name, r.width, r.height])"""
    )
    assert small == [], small
    thumbs = slider_thumb_boxes(page)
    assert len(thumbs) >= 3, thumbs  # steps, guidance, images
    assert all(width >= 24 and height >= 24 for width, height in thumbs), thumbs


# 12. The README's screenshots


def _linked_screenshots() -> set[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return set(re.findall(r"docs/screenshots/([\w.-]+\.png)", readme))


def test_the_screenshot_script_makes_every_screenshot_the_readme_links():
    script = (ROOT / "scripts" / "screenshots.py").read_text(encoding="utf-8")
    made = set(re.findall(r'"(app-[\w-]+\.png)"', script))
    linked = _linked_screenshots()
    assert linked and linked <= made, (linked, made)


def _noisy_share(path: Path, block: int = 16) -> float:
    """The share of the image's 16x16 blocks whose colour varies like noise: the tiny random model's images are
    colour noise everywhere; the page's own text and buttons are grey or of one colour, a picture mostly smooth."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    chroma = np.stack([rgb[..., 0] - rgb[..., 1], rgb[..., 1] - rgb[..., 2]], -1)
    h, w = (size // block * block for size in chroma.shape[:2])
    blocks = chroma[:h, :w].reshape(h // block, block, w // block, block, 2).std(axis=(1, 3)).max(-1)
    return float((blocks > 25).mean())


@pytest.mark.parametrize("name", sorted(_linked_screenshots()))
def test_no_screenshot_the_readme_links_shows_noise(name):
    assert _noisy_share(ROOT / "docs" / "screenshots" / name) < 0.15  # the tiny model's noise: 0.29 and more
