"""Enhance first in the app: ``/enhance`` gives the PE's text alone, ``/generate`` takes an edited text as
``enhanced_prompt`` and passes it on, and the PNG records it and gives it back to the form. Through the real app on
loopback (gradio_client) around the fake service; one browser test in real Chromium."""

import json
import threading

import pytest
from PIL import Image

pytest.importorskip("gradio")

from ernie_nf4.request import GenerationRequest  # noqa: E402
from ernie_nf4.webapp.handlers import RESTORED_FIELDS, Handlers  # noqa: E402
from ernie_nf4.webapp.png_params import parameters_text, parse_parameters, read_png_parameters, save_png  # noqa: E402
from ernie_nf4.webapp.zerogpu import gpu_seconds  # noqa: E402

from .support.app import RUN_ENDED, FakeService, PageOpener, ServedApp, playwright_api, wait_until  # noqa: E402

EDITED = 'A red fox asleep in snow, "FOX" on a sign,\nsoft dawn light'
FORM = ["a fox", "", 96, 64, 2, 4.0, 11, False, True, 1, "", 1.0, None, 1]  # /generate's fields before enhanced_prompt


def restored(updates) -> dict:
    return dict(zip(RESTORED_FIELDS, updates, strict=False))


def test_enhance_returns_the_pe_text_for_the_prompt_size_and_seed(fake_app):
    service, client = fake_app
    text = client.predict("a fox", 256, 384, 7, api_name="/enhance")
    assert text == "enhanced a fox at 256x384 seed 7"
    asked = service.enhanced[-1]
    assert (asked.prompt, asked.width, asked.height, asked.seed) == ("a fox", 256, 384, 7)
    assert client.predict("a fox", 1000, 384, "7", api_name="/enhance") == "enhanced a fox at 1008x384 seed 7"
    with pytest.raises(Exception, match="prompt must be a non-blank text"):
        client.predict("  ", 256, 384, 7, api_name="/enhance")


def test_generate_uses_the_edited_text_and_the_png_records_and_restores_it(fake_app, tmp_path):
    service, client = fake_app
    images, seed, revised, info = client.predict(*FORM, EDITED, api_name="/generate")
    assert service.requests[-1].enhanced_prompt == EDITED and service.requests[-1].prompt == "a fox"
    assert revised == EDITED and seed == 11
    assert "enhanced prompt: yours, as you gave it (the PE did not run)" in info
    assert "prompt enhancer" not in info  # no PE seconds: it did not run
    with Image.open(images[0]["image"]) as png:
        text = png.info["parameters"]
    assert f"Enhanced prompt: {json.dumps(EDITED, ensure_ascii=False)}, Enhanced prompt by: user" in text
    assert "Revised prompt" not in text
    assert read_png_parameters(images[0]["image"]).enhanced_prompt == EDITED
    fields = restored(Handlers(FakeService(), tmp_path / "out").restore_png(images[0]["image"]))
    assert fields["enhanced_prompt"] == EDITED and fields["prompt"] == "a fox"


def test_an_empty_box_runs_the_pe_and_restoring_such_a_png_empties_the_box(fake_app, tmp_path):
    service, client = fake_app
    images, _, revised, info = client.predict(*FORM, "  ", api_name="/generate")
    assert service.requests[-1].enhanced_prompt is None and revised == "revised: a fox"
    assert "yours" not in info
    settings = read_png_parameters(images[0]["image"])
    assert settings.enhanced_prompt is None
    fields = restored(Handlers(FakeService(), tmp_path / "out").restore_png(images[0]["image"]))
    assert fields["enhanced_prompt"] == ""  # the box left from before is emptied: these settings had the PE write


def test_only_a_text_the_user_gave_is_read_back_as_the_enhanced_prompt():
    request = GenerationRequest("a fox", enhanced_prompt="my text, with a comma")
    assert parse_parameters(parameters_text(request, 5, request.enhanced_prompt, "m")).enhanced_prompt == (
        "my text, with a comma"
    )
    pe_wrote = parameters_text(GenerationRequest("a fox"), 5, "the PE's text", "m")
    assert "Revised prompt" in pe_wrote and parse_parameters(pe_wrote).enhanced_prompt is None
    foreign = 'a fox\nNegative prompt: \nSteps: 5, Seed: 1, Enhanced prompt: "written elsewhere"'
    assert parse_parameters(foreign).enhanced_prompt is None


def test_a_bad_enhanced_prompt_is_refused_by_name(fake_app):
    _, client = fake_app
    with pytest.raises(Exception, match=r"Enhanced prompt \(enhanced_prompt\) must be at most 32000 characters"):
        client.predict(*FORM, "x" * 32001, api_name="/generate")
    with pytest.raises(Exception, match=r"Enhanced prompt \(enhanced_prompt\) must be text"):
        client.predict(*FORM, 5, api_name="/generate")


def test_on_zerogpu_the_pe_seconds_count_only_when_the_pe_runs():
    from ernie_nf4.webapp.zerogpu import gpu_enhance

    pe = gpu_seconds(GenerationRequest("a fox"))
    assert gpu_seconds(GenerationRequest("a fox", enhanced_prompt="mine")) == pe - 12

    class Gpu:
        durations = []

        def __call__(self, duration):
            def wrap(fn):
                def call(*args):
                    self.durations.append(duration(*args))
                    return fn(*args)

                return call

            return wrap

    gpu, service = Gpu(), FakeService()
    enhancement = gpu_enhance(service, gpu)(GenerationRequest("a fox", seed=3), cancel=threading.Event())
    assert enhancement.text.endswith("seed 3") and gpu.durations == [10 + 12]


@pytest.mark.browser
def test_enhance_first_then_edit_then_generate_sends_the_edited_text(browser, tmp_path):
    served = ServedApp(tmp_path)
    opener = PageOpener(browser, served.url)
    try:
        page = opener(locale="en-US")
        page.locator("#advanced").get_by_text("Advanced").click()  # the seed's field, drawn now
        page.locator("#seed input").wait_for()
        page.locator("#prompt textarea").fill("slow fox")  # the fake PE writes it a word each 0.2 s
        page.locator("#enhance-first").click()
        page.get_by_text("prompt enhancer").first.wait_for()
        page.locator("#stop").click()
        page.wait_for_function("document.querySelector('#stop').disabled")  # no run left going
        assert wait_until(lambda: getattr(served.service, "enhance_stopped_at", None) is not None)
        # the page says it stopped (a popup), since nothing else on it changes
        playwright_api().expect(page.get_by_text("Enhance first stopped").first).to_be_visible()
        assert page.locator("#enhanced").count() == 0 and page.get_by_text("Error").count() == 0
        page.locator("#prompt textarea").fill("a fox")
        page.locator("#enhance-first").click()
        box = page.locator("#enhanced textarea")
        page.wait_for_function("document.querySelector('#enhanced textarea')?.value.startsWith('enhanced a fox')")
        assert box.input_value() == "enhanced a fox at 1024x1024 seed 1234"  # the form's size and seed
        seed = page.locator("#seed input")
        seed.fill("404")  # a new seed keeps the box; the fake PE writes nothing at 404
        seed.blur()
        playwright_api().expect(seed).to_have_value("404")
        page.locator("#enhance-first").click()
        playwright_api().expect(page.get_by_text("The prompt enhancer wrote nothing").first).to_be_visible()
        page.wait_for_selector("#enhanced", state="detached")  # emptied: its text was for seed 1234
        seed.fill("1234")
        seed.blur()
        page.locator("#enhance-first").click()
        page.wait_for_function("document.querySelector('#enhanced textarea')?.value.startsWith('enhanced a fox')")
        box.fill("a fox, edited by hand")
        page.locator("#generate").click()
        page.wait_for_function("/^seed /.test(document.querySelector('#info textarea').value)")
        page.wait_for_function(RUN_ENDED)
        assert wait_until(lambda: served.service.requests)
        assert served.service.requests[-1].enhanced_prompt == "a fox, edited by hand"
        assert "enhanced prompt: yours" in page.locator("#info textarea").input_value()
        assert page.locator("#revised textarea").input_value() == "a fox, edited by hand"
        page.locator("#prompt textarea").press_sequentially("!")  # a changed prompt: the text was for the old one
        page.wait_for_selector("#enhanced", state="detached")  # emptied, so hidden
    finally:
        opener.close()
        served.close()


@pytest.mark.browser
def test_a_size_or_prompt_changed_while_the_pe_writes_drops_its_text(browser, tmp_path):
    """The text the PE was writing is for the prompt and size it was given: changed meanwhile, the box stays empty;
    unchanged, the text comes."""
    served = ServedApp(tmp_path)
    opener = PageOpener(browser, served.url)
    try:
        page = opener(locale="en-US")
        for change in ("width", "prompt", None):
            page.locator("#prompt textarea").fill("slow fox")  # the fake PE writes it a word each 0.2 s
            page.locator("#enhance-first").click()
            page.get_by_text("prompt enhancer").first.wait_for()
            if change == "width":
                page.locator("#width input").fill("768")
            elif change == "prompt":
                page.locator("#prompt textarea").press_sequentially("!")
            page.wait_for_function("document.querySelector('#stop').disabled")  # the run ended
            page.wait_for_timeout(300)
            if change is None:
                page.wait_for_function("document.querySelector('#enhanced textarea')?.value.includes('at 768x')")
            else:
                assert page.locator("#enhanced").count() == 0, change
        assert len(served.service.enhanced) == 3
    finally:
        opener.close()
        served.close()


@pytest.mark.browser
@pytest.mark.parametrize("locale", ["en-US", "zh-CN"])
def test_stop_says_so_for_an_enhance_first_still_waiting_in_the_queue(browser, tmp_path, locale):
    """Enhance first pressed again while it runs waits in the queue; Stop ends both, and each says in a popup that
    it stopped, the waiting one too, though it never began: both popups in the page's language, titles too."""
    stopped, title = ("Enhance first stopped", "Info") if locale == "en-US" else ("“先增强提示词”已停止", "提示")
    served = ServedApp(tmp_path)
    opener = PageOpener(browser, served.url)
    try:
        page = opener(locale=locale)
        page.locator("#prompt textarea").fill("slow fox " + "and pines " * 20)  # the fake PE: a word each 0.2 s
        page.locator("#enhance-first").click()
        page.get_by_text("prompt enhancer" if locale == "en-US" else "提示词增强").first.wait_for()
        page.locator("#enhance-first").click()
        queue = served.demo._queue  # the second waits in the server's queue behind the first
        assert wait_until(lambda: any(len(q.queue) for q in queue.event_queue_per_concurrency_id.values()), 10)
        page.locator("#stop").click()
        page.wait_for_function("document.querySelector('#stop').disabled")
        assert wait_until(lambda: page.get_by_text(stopped).count() == 2, 10)
        # Gradio groups popups of one title: one group, titled in the page's language
        titles = page.locator("[data-testid=toast-body] .toast-title")
        assert titles.evaluate_all("ns => ns.map(n => n.firstChild.textContent.trim())") == [title]
        page.wait_for_timeout(1000)
        assert len(served.service.enhanced) == 1  # the second never ran
        assert page.locator("#enhanced").count() == 0 and page.get_by_text("Error").count() == 0
    finally:
        opener.close()
        served.close()


@pytest.mark.browser
def test_a_pasted_prompt_empties_the_enhanced_text_an_example_sets_its_own(browser, tmp_path):
    served = ServedApp(tmp_path)
    opener = PageOpener(browser, served.url)
    try:
        page = opener(locale="en-US", permissions=["clipboard-read", "clipboard-write"])
        page.locator("#prompt textarea").fill("a fox")
        page.locator("#enhance-first").click()
        page.wait_for_function("document.querySelector('#enhanced textarea')?.value.startsWith('enhanced a fox')")
        page.evaluate("navigator.clipboard.writeText('a dog on a beach')")
        page.locator("#prompt textarea").click()
        page.keyboard.press("Control+A")
        page.keyboard.press("Control+V")
        assert page.locator("#prompt textarea").input_value() == "a dog on a beach"
        page.wait_for_selector("#enhanced", state="detached")  # the text was for the old prompt
        page.locator("#enhance-first").click()
        page.wait_for_function("document.querySelector('#enhanced textarea')?.value.startsWith('enhanced a dog')")
        page.locator("#examples button").first.click()  # the app sets the prompt: the box is emptied once, by it
        page.wait_for_selector("#enhanced", state="detached")
        assert page.locator("#prompt textarea").input_value() not in ("", "a dog on a beach")
        # a PNG restored while the prompt box has focus: the app sets both, and keeps the text it restored
        request = GenerationRequest("a restored owl", width=64, height=64, seed=5, enhanced_prompt="an owl, enhanced")
        png = save_png(Image.new("RGB", (32, 32)), tmp_path, 5, parameters_text(request, 5, "an owl, enhanced", "m"))
        page.locator("#prompt textarea").click()
        page.keyboard.type(" and more")
        page.locator("#restore input[type=file]").set_input_files(str(png))
        page.wait_for_function("document.querySelector('#prompt textarea').value === 'a restored owl'")
        page.wait_for_function("document.querySelector('#enhanced textarea')?.value === 'an owl, enhanced'")
        page.wait_for_timeout(1000)  # and it stays
        assert page.locator("#enhanced textarea").input_value() == "an owl, enhanced"
    finally:
        opener.close()
        served.close()


def test_the_served_tiny_app_enhances_first_and_a_run_uses_that_text(served_tiny_app):
    """The real app (python app.py --tiny): /enhance gives what a run's PE writes for the same prompt, size and seed,
    and a run given that text uses it without running the PE. (The tiny PE is random: its text may hold control
    characters, which the form removes from any prompt, with a note.)"""
    _, client, _ = served_tiny_app
    form = ("an orange cat on a table", "", 64, 64, 2, 4.0, 99, False, True, 1, "", 1.0, None, 1)
    text = client.predict("an orange cat on a table", 64, 64, 99, api_name="/enhance")
    with_pe = client.predict(*form, "", api_name="/generate")
    given = client.predict(*form, text, api_name="/generate")
    assert text and with_pe[2] == text
    assert given[2] == "".join(c for c in text if c in "\n\t" or (ord(c) >= 32 and ord(c) != 127))
    assert "enhanced prompt: yours" in given[3] and "yours" not in with_pe[3]


@pytest.mark.parametrize(
    "values, field",
    [
        (("   ", 64, 64, 1), "prompt"),
        ((None, 64, 64, 1), "prompt"),
        ((["a fox"], 64, 64, 1), "prompt"),
        (("x" * 2_000_000, 64, 64, 1), "prompt"),
        (("a fox", 7, 64, 1), "width"),
        (("a fox", 64, float("nan"), 1), "height"),
        (("a fox", 64, 64, "x"), "seed"),
        (("a fox", 64, 64, -1), "seed"),
        (("a fox", 64, 64, 1), None),
    ],
)
def test_enhance_first_is_checked_field_by_field(values, field, tmp_path):
    """What Enhance first's check says for each input, raw as the page or an API client sends it: the one field at
    fault marked with its message, nothing else; a good form passes."""
    checks = Handlers(FakeService(), tmp_path / "out").validate_enhance(*values)
    marked = [name for name, check in zip(("prompt", "width", "height", "seed"), checks, strict=True)
              if not check["is_valid"]]  # fmt: skip
    assert marked == ([field] if field else [])
    assert all(bool(check["message"]) is (not check["is_valid"]) for check in checks)
