"""The app in headless Chromium, mostly around the fake service (fast): the form, examples and presets, the
keyboard shortcut, the phone layout, progress, Stop, the history and settings restored from a PNG, the language."""

import http.server
import re
import threading
from types import SimpleNamespace

import pytest
from PIL import Image

pytest.importorskip("gradio")
from ernie_nf4.request import GenerationRequest  # noqa: E402
from ernie_nf4.webapp.layout import form_defaults  # noqa: E402
from ernie_nf4.webapp.png_params import parameters_text, parse_parameters, save_png  # noqa: E402

from .support.app import RUN_ENDED, FakeService, PageOpener, pick_language, playwright_api, wait_until  # noqa: E402

DESKTOP = {"width": 1400, "height": 1000}
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def open_app(fake_app, browser):
    """``open_app(viewport=..., locale=...)`` -> a page on the fake-service app, in a fresh browser context."""
    opener = PageOpener(browser, fake_app[1].src)
    yield lambda viewport=DESKTOP, **kwargs: opener(viewport, **kwargs)
    opener.close()


def set_size(page, width, height):
    page.locator("#width input").fill(str(width))
    page.locator("#height input").fill(str(height))
    page.locator("#height input").blur()


def wait_for_info(page, start):
    script = f"document.querySelector('#info textarea').value.startsWith({start!r})"
    page.wait_for_function(script)


def wait_for_the_run_to_end(page):
    page.wait_for_function(RUN_ENDED)


def expect(locator):
    return playwright_api().expect(locator)


def generate(page, prompt, size=(64, 64)):
    page.locator("#prompt textarea").fill(prompt)
    set_size(page, *size)
    page.locator("#generate").click()
    wait_for_info(page, "seed")


@pytest.mark.browser
def test_examples_fill_the_form_with_prompt_and_size(open_app):
    page = open_app()
    examples = page.locator("#examples")
    examples.locator("button").first.wait_for()
    assert examples.locator("button").count() >= 6
    examples.get_by_text("Infographic · 1376×768").click()
    page.wait_for_function("document.querySelector('#width input').value === '1376'")
    assert "infographic" in page.locator("#prompt textarea").input_value()
    assert page.locator("#height input").input_value() == "768"
    expect(page.locator("#preset input")).to_have_value("16:9 · 1376×768")  # follows the size, from the server
    examples.get_by_text("Chinese shop sign").click()
    page.wait_for_function("document.querySelector('#width input').value === '1024'")
    assert "晨光咖啡" in page.locator("#prompt textarea").input_value()


@pytest.mark.browser
@pytest.mark.parametrize("keys", ["Control+Enter", "Meta+Enter"])
def test_ctrl_or_cmd_enter_in_the_prompt_generates(open_app, fake_app, keys):
    service, _ = fake_app
    page = open_app()
    set_size(page, 64, 64)
    prompt = f"keyboard cat {keys}"
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#prompt textarea").press(keys)
    wait_for_info(page, "seed")
    assert service.requests[-1].prompt == prompt
    assert page.locator("#prompt textarea").input_value() == prompt  # no newline was typed


@pytest.mark.browser
@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_prompt_and_generate_on_top_advanced_folded_and_labels_whole(open_app, viewport):
    page = open_app(viewport=viewport)
    prompt, run = page.locator("#prompt").bounding_box(), page.locator("#generate").bounding_box()
    assert run["y"] < prompt["y"] + prompt["height"] + 80  # Generate beside or right under the prompt
    negative = page.locator("#negative textarea")
    assert not negative.is_visible()
    page.locator("#advanced").get_by_text("Advanced").click()
    negative.wait_for(state="visible")
    for field in ("#steps", "#guidance", "#seed", "#randomize", "#use-pe", "#count"):
        assert page.locator("#advanced").locator(field).is_visible(), field
    labels = '[data-testid="block-info"], label span, .label-wrap span, #examples button'
    cut = page.evaluate(
        f"""() => [...document.querySelectorAll('{labels}')]
        .filter(e => e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1)
        .map(e => e.textContent.trim())"""
    )
    assert cut == []


@pytest.mark.browser
def test_result_gallery_is_output_only(open_app):
    page = open_app()
    generate(page, "output only")
    gallery = page.locator("#gallery")
    gallery.locator("img").first.wait_for()
    assert gallery.locator("input[type=file]").count() == 0
    for name in ("Clear", "Remove", "Delete", "Upload"):
        assert gallery.get_by_role("button", name=name).count() == 0, name
    assert gallery.get_by_text("Drop").count() == 0


def set_slider(page, selector, value):
    """Gradio's slider ``selector`` at ``value``, typed into its number box (again when the page, still settling,
    lets the first one go)."""
    number, value = page.locator(f"{selector} input[type=number]"), str(value)
    for _ in range(5):
        number.fill(value)
        number.press("Enter")
        if wait_until(lambda: page.locator(f"{selector} input[type=range]").input_value() == value, 3):
            return
    raise AssertionError(f"{selector} did not take {value}")


@pytest.mark.browser
def test_history_lists_runs_newest_first_each_in_the_order_of_its_results(open_app):
    page = open_app()
    page.locator("#advanced").get_by_text("Advanced").click()
    page.locator("#count").wait_for(state="visible")
    shown = []
    for prompt, count in (("first run", 3), ("second run", 2)):
        set_slider(page, "#count", count)
        page.locator("#prompt textarea").fill(prompt)
        set_size(page, 64, 64)
        page.locator("#generate").click()
        tiles = page.locator("#gallery .thumbnail-item img")
        expect(tiles).to_have_count(count)
        expect(tiles.first).to_have_attribute("alt", re.compile(f" · {prompt}$"))
        gallery = tiles.evaluate_all("images => images.map(i => i.alt)")
        assert len(set(gallery)) == count and all(prompt in alt for alt in gallery), gallery
        shown = gallery + shown
        expect(page.locator("#history .thumbnail-item img")).to_have_count(len(shown))
    history = page.eval_on_selector_all("#history .thumbnail-item img", "images => images.map(i => i.alt)")
    assert history == shown


@pytest.mark.browser
def test_history_survives_a_reload_and_gives_back_the_seed_used(open_app, fake_app):
    service, _ = fake_app
    page = open_app()
    page.locator("#advanced").get_by_text("Advanced").click()
    assert page.locator("#randomize input").is_checked()
    page.locator("#use-pe input").uncheck()
    generate(page, "history cat", size=(96, 64))
    used = service.requests[-1].seed
    page.locator("#history img").first.wait_for()
    page.reload()
    page.locator("#history img").first.wait_for()
    page.locator("#advanced").get_by_text("Advanced").click()
    page.locator("#prompt textarea").fill("something else")
    set_size(page, 1024, 1024)
    page.locator("#history img").first.click()
    page.locator("#use-settings").click()
    expect(page.locator("#prompt textarea")).to_have_value("history cat")
    expect(page.locator("#width input")).to_have_value("96")
    expect(page.locator("#height input")).to_have_value("64")
    expect(page.locator("#seed input")).to_have_value(str(used))
    expect(page.locator("#randomize input")).not_to_be_checked()  # so the next run uses that seed
    expect(page.locator("#use-pe input")).not_to_be_checked()
    page.locator("#generate").click()
    wait_for_info(page, f"seed {used}")


@pytest.mark.browser
def test_dropping_a_png_restores_its_settings(open_app, tmp_path):
    request = GenerationRequest(
        "一张海报，写着“你好”", "blurry", width=848, height=1264, num_inference_steps=28, guidance_scale=3.5, seed=4242
    )
    text = parameters_text(request, 4243, "revised, with a comma", "ERNIE-Image NF4")
    path = save_png(Image.new("RGB", (32, 32)), tmp_path, 4243, text)
    page = open_app()
    page.locator("#advanced").get_by_text("Advanced").click()
    page.locator("#restore input[type=file]").set_input_files(str(path))
    # Each field is awaited: the form's values come in one update, the preset follows in an event of its own.
    expect(page.locator("#width input")).to_have_value("848")
    expect(page.locator("#prompt textarea")).to_have_value(request.prompt)
    expect(page.locator("#negative textarea")).to_have_value("blurry")
    expect(page.locator("#height input")).to_have_value("1264")
    expect(page.locator("#preset input")).to_have_value("2:3 · 848×1264")
    expect(page.locator("#steps input[type=number]")).to_have_value("28")
    expect(page.locator("#guidance input[type=number]")).to_have_value("3.5")
    expect(page.locator("#seed input")).to_have_value("4243")
    expect(page.locator("#randomize input")).not_to_be_checked()


def give_the_restore_box(page, path, how):
    """``path`` given to the restore box as a person does: picked in the file dialog, or dropped on the box."""
    if how == "picked":
        page.locator("#restore input[type=file]").set_input_files(str(path))
        return
    page.locator("#restore button.upload-container").evaluate(
        """(zone, [name, bytes]) => {
          const given = new DataTransfer();
          given.items.add(new File([new Uint8Array(bytes)], name));
          for (const kind of ["dragenter", "dragover", "drop"]) {
            zone.dispatchEvent(new DragEvent(kind, {bubbles: true, cancelable: true, dataTransfer: given}));
          }
        }""",
        [path.name, list(path.read_bytes())],
    )


@pytest.mark.browser
@pytest.mark.parametrize("how", ["picked", "dropped"])
def test_a_file_the_restore_box_refuses_takes_the_last_files_note_away(open_app, tmp_path, how):
    """A file the browser refuses (not a PNG) never reaches the server: the note about the PNG restored before it
    goes, the restored form stays, and the same PNG given again says its note again."""
    request = GenerationRequest("a red fox", width=96, height=64, seed=77)
    path = save_png(Image.new("RGB", (16, 16)), tmp_path, 77, parameters_text(request, 77, None, "ERNIE-Image NF4"))
    refused = tmp_path / "notes.txt"
    refused.write_text("not a picture")
    page = open_app()
    note = page.locator("#history-note")
    give_the_restore_box(page, path, how)
    expect(note).to_contain_text(f"restored from {path.name}")
    give_the_restore_box(page, refused, how)
    expect(page.get_by_text("Invalid file type: notes.txt. Only .png allowed.")).to_be_visible()
    expect(note).to_have_text("")
    expect(page.locator("#prompt textarea")).to_have_value("a red fox")
    give_the_restore_box(page, path, how)
    expect(note).to_contain_text(f"restored from {path.name}")
    expect(page.locator("#width input")).to_have_value("96")


@pytest.mark.browser
def test_a_file_the_restore_box_refuses_leaves_it_ready_for_the_next_file(open_app, tmp_path):
    """A refused file is said in a popup and leaves no red badge over the box: a click on the box opens the file
    dialog, and the PNG picked there restores its settings."""
    request = GenerationRequest("a red fox", width=96, height=64, seed=77)
    path = save_png(Image.new("RGB", (16, 16)), tmp_path, 77, parameters_text(request, 77, None, "ERNIE-Image NF4"))
    refused = tmp_path / "photo.jpg"
    refused.write_bytes(b"\xff\xd8\xff not a PNG")
    page = open_app()
    give_the_restore_box(page, refused, "picked")
    expect(page.get_by_text("Invalid file type: photo.jpg. Only .png allowed.")).to_be_visible()
    expect(page.locator("#restore [data-testid=status-tracker] .error")).to_have_count(0)
    with page.expect_file_chooser(timeout=5000) as chooser:
        page.locator("#restore button.upload-container").click(timeout=5000)
    chooser.value.set_files(str(path))
    expect(page.locator("#history-note")).to_contain_text(f"restored from {path.name}")
    expect(page.locator("#width input")).to_have_value("96")


@pytest.mark.browser
@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_a_start_image_too_small_is_refused_on_its_box_and_can_still_be_removed(open_app, fake_app, viewport, tmp_path):
    """The refusal of a start image too small shows on its box under the box's buttons: Remove Image takes it away."""
    small = tmp_path / "small.png"
    Image.new("RGB", (8, 8), "red").save(small)
    page = open_app(viewport=viewport)
    page.locator("#img2img > button.label-wrap").click()
    page.locator("#init-image input[type=file]").set_input_files(str(small))
    expect(page.locator("#init-image img")).to_have_count(1)
    page.locator("#prompt textarea").fill("a red fox")
    page.locator("#generate").click()
    expect(page.locator("#init-image .validation-error")).to_contain_text("must be 16 to 8192 pixels wide and high")
    page.locator("#init-image .top-panel button[title='Remove Image']").click(timeout=5000)
    expect(page.locator("#init-image img")).to_have_count(0)


@pytest.mark.browser
@pytest.mark.parametrize(
    "locale, said",
    [
        (
            "en-US",
            "You have uploaded as much as this server takes from one address in 10 minutes (2 files or 30 MB). "
            "You can upload again in 10 minutes.",
        ),
        ("zh-CN", "你已达到本服务器对每个地址每 10 分钟的上传上限（2 个文件或 30 MB）。10 分钟后可以再次上传。"),
    ],
)
def test_an_upload_past_the_clients_budget_says_in_a_sentence_when_it_can_upload_again(browser, tmp_path, locale, said):
    from ernie_nf4.webapp.limits import Limits

    from .support.app import ServedApp

    request = GenerationRequest("a red fox", width=96, height=64, seed=77)
    path = save_png(Image.new("RGB", (16, 16)), tmp_path, 77, parameters_text(request, 77, None, "ERNIE-Image NF4"))
    app = ServedApp(tmp_path, Limits(uploads_per_window=2))
    opener = PageOpener(browser, app.url)
    try:
        page = opener(locale=locale)
        for status in (200, 200, 429):
            with page.expect_response(lambda r: r.url.split("?")[0].endswith("/upload")) as answer:
                page.locator("#restore input[type=file]").set_input_files(str(path))
            assert answer.value.status == status
        expect(page.locator("[data-testid=toast-text]")).to_have_text(said)
    finally:
        opener.close()
        app.close()


def test_a1111_parameters_text_parses():
    text = (
        "a castle, on a hill\nat dawn\nNegative prompt: fog,\nrain\n"
        'Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 99, Size: 512x768, Model hash: abc, Note: "x, y"'
    )
    settings = parse_parameters(text)
    assert settings.prompt == "a castle, on a hill\nat dawn" and settings.negative_prompt == "fog,\nrain"
    assert (settings.width, settings.height, settings.num_inference_steps) == (512, 768, 20)
    assert (settings.guidance_scale, settings.seed, settings.use_pe) == (7.0, 99, None)
    with pytest.raises(ValueError, match="no prompt"):
        parse_parameters("\nSteps: 20, Seed: 1")


@pytest.mark.browser
def test_phone_shows_generate_without_scrolling_and_the_result_right_below(open_app):
    page = open_app(viewport=PHONE)
    run = page.locator("#generate").bounding_box()
    assert run["y"] + run["height"] <= PHONE["height"]
    assert run["x"] >= 0 and run["x"] + run["width"] <= PHONE["width"]
    generate(page, "phone cat")
    page.evaluate("window.scrollTo(0, 0)")
    run, gallery = page.locator("#generate").bounding_box(), page.locator("#gallery").bounding_box()
    assert 0 <= gallery["y"] - (run["y"] + run["height"]) < 80  # only the Stop button's row may sit between
    assert gallery["y"] < PHONE["height"] and gallery["x"] + gallery["width"] <= PHONE["width"]
    settings = page.locator("#settings").bounding_box()
    assert settings["y"] > gallery["y"]  # settings come after the result on a phone


@pytest.mark.browser
def test_progress_names_the_stage_once_on_the_gallery(open_app):
    page = open_app()
    page.locator("#prompt textarea").fill("slow progress")
    set_size(page, 64, 64)
    page.locator("#advanced").get_by_text("Advanced").click()
    set_slider(page, "#steps", 200)  # 0.2 s a step: it outlasts the looking; Stop ends it
    page.locator("#previews input").uncheck()  # the progress text alone: previews redraw the gallery under it
    page.locator("#generate").click()
    gallery = page.locator("#gallery")
    try:
        gallery.get_by_text("denoising · step").first.wait_for()
        page.get_by_text("ETA").first.wait_for()
        # the bar's amount, which Gradio writes after the line, is said to be the whole run's
        gallery.get_by_text(re.compile(r"denoising · step \d+/200 · .* · overall - [\d.]+%")).first.wait_for()
        # Shown once, on the gallery. A screen reader's live region repeats it, visually hidden (1 px, which
        # Playwright counts as visible, so it is left out here); between two steps the tracker may be redrawn, so
        # the counts are awaited, not read once.
        page.locator("#progress-live", has_text="denoising").wait_for(state="attached")  # the region has it too
        shown = page.get_by_text("denoising").filter(visible=True).and_(page.locator(":not(#progress-live)"))
        expect(shown).to_have_count(1)
        expect(gallery.get_by_text("denoising").filter(visible=True)).to_have_count(1)
        assert page.locator(".progress-text, .eta-bar").count() <= 2  # one tracker (its text and its bar)
    finally:  # the long run never stays queued in front of the next test (on a loaded machine it may have ended)
        page.evaluate("() => { const stop = document.querySelector('#stop'); if (!stop.disabled) stop.click(); }")
        wait_for_the_run_to_end(page)


@pytest.mark.browser
def test_stop_is_neutral_and_drops_the_users_queued_run(open_app, fake_app):
    service, _ = fake_app
    first = open_app()
    first.locator("#prompt textarea").fill("slow first")
    set_size(first, 64, 64)
    first.locator("#advanced").get_by_text("Advanced").click()
    set_slider(first, "#steps", 200)  # taken before Generate (a run of the default steps would end too soon)
    first.locator("#generate").click()
    first.get_by_text("denoising · step").first.wait_for()
    # A second user, on a Chinese page, queues behind the first, then stops: the queued run never starts.
    second = open_app(locale="zh-CN")
    second.locator("#prompt textarea").fill("queued second")
    set_size(second, 64, 64)
    second.locator("#generate").click()
    second.locator("#gallery").get_by_text(re.compile(r"排队：\d+/\d+")).wait_for()  # in the server's queue
    assert second.locator("#gallery").get_by_text("queue:").count() == 0  # Gradio's own words, said in Chinese
    second.locator("#stop").click()
    wait_for_info(second, "已停止。本次运行未保留任何结果")
    wait_for_the_run_to_end(second)
    first.locator("#stop").click()
    wait_for_info(first, "Stopped. Nothing was kept")
    wait_for_the_run_to_end(first)
    assert service.requests[-1].prompt == "slow first" and service.steps_done < 200
    # One queue, one job at a time, first in first out: a queued run wrongly kept would run before this one.
    generate(first, "after the stop")
    assert [r.prompt for r in service.requests[-2:]] == ["slow first", "after the stop"]
    assert all(r.prompt != "queued second" for r in service.requests)
    for page in (first, second):  # neither the stopped run nor the dropped queued one shows an error
        assert page.get_by_text("Error").count() == 0, page.locator("body").inner_text()


@pytest.mark.browser
def test_stop_leaves_no_error_badge_on_the_gallery(open_app):
    """Stop does not cancel through Gradio (whose cancels= could leave an 'Error' badge on the gallery): the
    run's handler ends after its step and returns the neutral Stopped result itself."""
    page = open_app()
    generate(page, "kept cat")
    page.locator("#history img").first.wait_for()
    page.locator("#prompt textarea").fill("slow badge")
    set_size(page, 64, 64)
    page.locator("#advanced").get_by_text("Advanced").click()
    set_slider(page, "#steps", 200)  # taken before Generate (a run of the default steps would end too soon)
    page.locator("#generate").click()
    page.get_by_text("denoising · step").first.wait_for()
    page.locator("#stop").click()
    wait_for_info(page, "Stopped. Nothing was kept")
    wait_for_the_run_to_end(page)  # the page has the run's last message: a badge would show now
    assert page.get_by_text("Error").count() == 0
    # the gallery keeps the last run's image, and the stopped run adds nothing to the history
    assert page.locator("#gallery img").count() >= 1
    assert page.locator("#history img").count() == 1


@pytest.mark.browser
def test_a_blank_prompt_gives_one_clear_message_and_no_error_badge(open_app, fake_app):
    service, _ = fake_app
    before = len(service.requests)
    page = open_app()
    page.locator("#prompt textarea").fill("   ")
    page.locator("#generate").click()
    page.get_by_text("prompt must be a non-blank text").first.wait_for()
    wait_for_the_run_to_end(page)
    assert page.get_by_text("prompt must be a non-blank text").count() == 1
    assert page.get_by_text("Error").count() == 0
    assert len(service.requests) == before


@pytest.mark.browser
@pytest.mark.parametrize("locale", ["en-US", "zh-CN"])
def test_enhance_first_refuses_on_the_field_and_the_prompt_stays_editable(open_app, fake_app, locale):
    """Enhance first with a blank prompt, then with a width out of range: each message on its field, in the page's
    language, no Error badge over the prompt box, which still takes typing; the prompt enhancer never runs."""
    service, _ = fake_app
    before = len(service.enhanced)
    page = open_app(locale=locale)
    page.locator("#prompt textarea").fill("   ")
    page.locator("#enhance-first").click()
    blank = "prompt must be a non-blank text" if locale == "en-US" else "提示词"
    expect(page.locator("#prompt div.validation-error")).to_contain_text(blank)
    page.locator("#prompt textarea").fill("a fox")  # the box takes typing: nothing covers it
    expect(page.locator("#prompt textarea")).to_have_value("a fox")
    page.locator("#advanced > button").first.click()
    page.locator("#width input").fill("7")
    page.locator("#enhance-first").click()
    expect(page.locator("#width div.validation-error")).to_contain_text("[64, 2048]")
    page.wait_for_timeout(1000)
    assert page.get_by_text(re.compile("^(Error|错误)$")).count() == 0
    assert page.locator("#stop").is_disabled()  # nothing went to the queue
    page.locator("#prompt textarea").press_sequentially("!")
    expect(page.locator("#prompt textarea")).to_have_value("a fox!")
    assert len(service.enhanced) == before


@pytest.mark.browser
def test_a_refusal_out_of_sight_is_brought_into_sight(open_app, fake_app):
    """A refused field in the closed Advanced section, or a screen below the button on a phone: Generate opens
    the section and scrolls to the field's message."""
    expect = playwright_api().expect
    service, _ = fake_app
    before = len(service.requests)
    page = open_app()
    page.locator("#advanced > button").first.click()
    page.locator("#randomize input").uncheck()
    page.locator("#seed input").fill("-5")
    page.locator("#advanced > button").first.click()  # closed again
    page.locator("#prompt textarea").fill("a cat")
    page.locator("#generate").click()
    message = page.locator("#seed div.validation-error")
    expect(message).to_be_visible()
    expect(message).to_be_in_viewport()

    phone = open_app(viewport=PHONE)
    phone.locator("#prompt textarea").fill("a cat")
    phone.locator("#width input").fill("5000")
    phone.evaluate("window.scrollTo(0, 0)")
    phone.locator("#generate").click()
    message = phone.locator("#width div.validation-error")
    expect(message).to_be_visible()
    expect(message).to_be_in_viewport()
    assert len(service.requests) == before


@pytest.mark.browser
def test_a_seed_typed_on_the_page_is_the_seed_that_runs_or_is_refused(open_app, fake_app):
    """The page's number field keeps whole numbers exact below 2**53: the largest seed runs as typed; one past it
    (which the page would round to another number) is refused on the field, and nothing runs."""
    from ernie_nf4.request import MAX_SEED

    expect = playwright_api().expect
    service, _ = fake_app
    page = open_app()
    page.locator("#advanced > button").first.click()
    page.locator("#randomize input").uncheck()
    page.locator("#prompt textarea").fill("a cat")
    largest = MAX_SEED
    before = len(service.requests)
    page.locator("#seed input").fill(str(largest))
    page.locator("#generate").click()
    assert wait_until(lambda: len(service.requests) == before + 1, 30)
    assert service.requests[-1].seed == largest
    expect(page.locator("#stop")).to_be_disabled(timeout=30_000)
    page.locator("#seed input").fill(str(2**53 + 1))  # the page holds 2**53
    page.locator("#generate").click()
    expect(page.locator("#seed div.validation-error")).to_contain_text(f"[0, {largest}]")
    page.wait_for_timeout(500)
    assert len(service.requests) == before + 1


@pytest.mark.browser
def test_a_size_far_past_the_range_is_followed_swapped_and_refused_like_any_other(open_app, fake_app):
    """1e308 typed in a size box (a number the page holds): the resolution says custom, ⇄ swaps it, and Generate
    refuses it on its field with the message of any size out of range, the number as typed."""
    service, _ = fake_app
    page = open_app()
    runs = len(service.requests)
    page.locator("#prompt textarea").fill("a cat")
    message = page.locator("div.validation-error")
    for typed, said in (("5000", "5000"), ("1e308", "1e+308")):
        set_size(page, 1024, typed)
        expect(page.locator("#preset input")).to_have_value("Custom")
        page.locator("#swap").click()
        expect(page.locator("#height input")).to_have_value("1024")
        assert float(page.locator("#width input").input_value()) == float(typed)
        page.locator("#generate").click()
        expect(message).to_have_text(f"width must be in [64, 2048] and a multiple of 16, got {said}")
        set_size(page, 1024, 1024)
        expect(page.locator("#preset input")).not_to_have_value("Custom")
    assert len(service.requests) == runs


@pytest.mark.browser
def test_resolution_dropdown_follows_typed_size(open_app):
    page = open_app()
    set_size(page, 1000, 700)
    page.wait_for_function("document.querySelector('#preset input').value === 'Custom'")
    set_size(page, 1264, 848)
    page.wait_for_function("document.querySelector('#preset input').value === '3:2 · 1264×848'")


@pytest.mark.browser
@pytest.mark.parametrize(
    ("locale", "words"), [("zh-CN", ["提示词", "生成", "高级设置"]), ("en-US", ["Prompt", "Generate", "Advanced"])]
)
def test_interface_language_follows_the_browser(open_app, locale, words):
    page = open_app(locale=locale)
    assert page.locator("#prompt").get_by_text(words[0]).is_visible()
    assert page.locator("#generate").inner_text().strip() == words[1]
    assert page.locator("#advanced").get_by_text(words[2]).is_visible()


def test_tiny_service_starts_the_form_small_and_fast():
    tiny = SimpleNamespace(defaults=FakeService.defaults, config=SimpleNamespace(tiny=True))
    assert form_defaults(tiny) == (256, 256, 4, FakeService.defaults.guidance_scale)
    assert form_defaults(FakeService())[:3] == (1024, 1024, FakeService.defaults.num_inference_steps)


@pytest.mark.browser
def test_tiny_app_form_defaults_in_the_browser(served_tiny_app, open_app):
    url, _, _ = served_tiny_app
    page = open_app(url=url)
    page.locator("#advanced").get_by_text("Advanced").click()
    assert page.locator("#width input").input_value() == "256"
    assert page.locator("#height input").input_value() == "256"
    assert page.locator("#steps input[type=number]").input_value() == "4"
    assert page.locator("#preset input").input_value() == "1:1 · 256×256"


@pytest.mark.browser
def test_a_language_picked_in_gradios_settings_reaches_the_texts_the_server_writes(open_app, fake_app):
    page = open_app(locale="en-US")
    other = page.context.new_page()  # a second tab of the same browser, which keeps its own language
    other.goto(fake_app[1].src)
    page.locator("#advanced").get_by_text("Advanced").click()
    page.locator("#use-pe input").uncheck()
    generate(page, "a fox")
    expect(page.locator("#history img").first).to_have_attribute("alt", re.compile(" · seed "))
    expect(page.locator("#gallery img").first).to_have_attribute("alt", re.compile(r"^64×64 · seed \d+ · a fox$"))
    pick_language(page, "简体中文")
    expect(page.locator("#generate")).to_have_text("生成")  # Gradio's labels
    expect(page.locator("#header")).to_contain_text("模型：")  # and the server's texts on the page, written again
    expect(page.locator("#examples").get_by_text("信息图 · 1376×768")).to_be_visible()
    expect(page.locator("#history img").first).to_have_attribute("alt", re.compile(" · 种子 "))
    # the last run's results too: the gallery's captions and the run info, the same images
    expect(page.locator("#gallery img").first).to_have_attribute("alt", re.compile(r"^64×64 · 种子 \d+ · a fox$"))
    wait_for_info(page, "种子")
    assert "文本编码" in page.locator("#info textarea").input_value()
    page.locator("#generate").click()  # a new run speaks the page's language
    wait_for_info(page, "种子")
    generate(other, "a fox in the other tab")
    expect(other.locator("#header")).to_contain_text("Model:")
    pick_language(page, "English")
    expect(page.locator("#header")).to_contain_text("Model:")
    page.locator("#generate").click()
    wait_for_info(page, "seed")


@pytest.mark.browser
@pytest.mark.parametrize(
    "locale, then, said, stage", [("en-US", "简体中文", "种子 ", "去噪"), ("zh-CN", "English", "seed ", "denoising")]
)
def test_a_run_under_way_at_a_language_change_is_said_in_the_new_language(open_app, locale, then, said, stage):
    from .test_browser_run import fill_form

    page = open_app(locale=locale)
    fill_form(page, "slow lighthouse", steps=40)  # FakeService: 0.2 s a step for "slow" prompts
    page.locator("#generate").click()
    expect(page.locator("#stop")).to_be_enabled()
    pick_language(page, then)  # while it runs: its progress from the next step on, then its results
    expect(page.locator("#gallery [data-testid=status-tracker]")).to_contain_text(stage)
    wait_for_info(page, said)
    expect(page.locator("#gallery img").first).to_have_attribute("alt", re.compile(rf"^64×64 · {said}\d+ · "))


@pytest.mark.browser
def test_a_language_picked_in_a_frame_of_another_site_reaches_the_server(browser, fake_app):
    # as a Hugging Face Space shows the app: in a frame of a page of another site (localhost against 127.0.0.1)
    html = f'<iframe id="app" src="{fake_app[1].src}" style="width:1300px;height:1100px"></iframe>'.encode()
    parent = serve_page(html)
    context = browser.new_context(locale="en-US", viewport={"width": 1400, "height": 1200})
    try:
        page = context.new_page()
        page.goto(f"http://localhost:{parent.server_port}/")
        frame = page.frame_locator("#app")
        frame.locator("#generate").wait_for()
        app = next(f for f in page.frames if f.url.startswith(fake_app[1].src))
        pick_language(app, "简体中文")
        expect(frame.locator("#header")).to_contain_text("模型：")
        frame.locator("#prompt textarea").fill("a fox in a frame")
        frame.locator("#generate").click()
        expect(frame.locator("#info textarea")).to_have_value(re.compile("^种子 "))
    finally:
        context.close()
        parent.shutdown()


def serve_page(html: bytes):
    """A server on loopback that answers every GET with ``html`` (in a thread; ``shutdown()`` stops it)."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
