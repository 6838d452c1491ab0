"""A run as a person sees it in headless Chromium (desktop, phone, a Chinese browser): Stop only while this tab has a
run, a Generate right after Stop, messages that arrive, everything in Chinese, progress per token and image, sizes
snapped into the fields, captions and alt text, a history that says what is gone, and a machine without a GPU."""

import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
from ernie_nf4.errors import GenerationCancelled  # noqa: E402
from ernie_nf4.progress import Progress  # noqa: E402
from ernie_nf4.request import GenerationRequest  # noqa: E402
from ernie_nf4.runtime.generation import GenerationResult  # noqa: E402
from ernie_nf4.stats import StageSeconds  # noqa: E402
from ernie_nf4.webapp.png_params import parameters_text, save_png  # noqa: E402

from .support.app import BOUND, FakeService, PageOpener, free_port, playwright_api  # noqa: E402

DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
PE_CAP = 16  # the prompt enhancer's token cap in RunService


class RunService(FakeService):
    """FakeService with a run's whole course: the prompt enhancer writes up to ``PE_CAP`` tokens, each image is
    denoised and decoded in turn; "slow" prompts sleep per token and step; every token and step checks Stop, and a
    prompt that "lingers" takes two seconds more to end once stopped (as a large image's last step would)."""

    def generate(self, request, on_progress=None, cancel=None, previews=False):
        self.requests.append(request)
        report = on_progress or (lambda event: None)
        pause = 0.1 if request.prompt.startswith("slow") else 0.0
        signal = cancel.is_set if cancel is not None else (lambda: False)

        def stopped():
            if signal() and "lingers" in request.prompt:
                time.sleep(2)
            return signal()

        if request.use_pe:
            for token in range(1, PE_CAP + 1):
                time.sleep(pause)
                report(Progress("pe", done=token, total=PE_CAP, unit="tokens"))
                if stopped():
                    raise GenerationCancelled("stopped in the prompt enhancer")
        report(Progress("text_encoding"))
        images = []
        steps, count = request.num_inference_steps, len(request.seeds)
        for index, seed in enumerate(request.seeds, 1):  # as the library counts: the steps of the whole run
            for step in range(1, steps + 1):
                time.sleep(pause)
                done = (index - 1) * steps + step
                report(Progress("denoising", done=done, total=steps * count, unit="steps", image=index, images=count))
                if stopped():
                    raise GenerationCancelled("stopped in denoising")
            report(
                Progress("vae_decode", done=index * steps, total=steps * count, unit="steps", image=index, images=count)
            )
            pixels = np.random.default_rng(seed).integers(0, 255, (request.height, request.width, 3), np.uint8)
            images.append(Image.fromarray(pixels))
        seconds = StageSeconds(0.1, 0.1, 0.2, 0.1, 0.5)
        return GenerationResult(request, images, request.seeds, "revised: " + request.prompt, seconds)


class NoGpuService(RunService):
    def unavailable_reason(self):
        from ernie_nf4.serving.service import NO_GPU_MESSAGE

        return NO_GPU_MESSAGE  # what ImageService says on a machine without a CUDA GPU


def serve(service, output_dir):
    from app import build_demo

    demo = build_demo(service, output_dir=str(output_dir))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def run_app(tmp_path_factory):
    """(service, url, output folder) of the app around a ``RunService``."""
    service, out = RunService(), tmp_path_factory.mktemp("run-out")
    demo, url = serve(service, out)
    yield service, url, out
    demo.close()


@pytest.fixture
def open_page(run_app, browser):
    opener = PageOpener(browser, run_app[1])
    yield lambda viewport=DESKTOP, **kwargs: opener(viewport, **kwargs)
    opener.close()


def expect(locator):
    return playwright_api().expect(locator)


def advanced(page):
    if not page.locator("#steps").is_visible():
        page.locator("#advanced > button").first.click()
        page.locator("#steps").wait_for(state="visible")


def fill_form(page, prompt, size=(64, 64), steps=2, use_pe=False, count=1):
    advanced(page)
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#width input").fill(str(size[0]))
    page.locator("#height input").fill(str(size[1]))
    for field, value in (("#steps", steps), ("#count", count)):
        page.locator(f"{field} input[type=number]").fill(str(value))
        page.locator(f"{field} input[type=number]").press("Enter")
        expect(page.locator(f"{field} input[type=range]")).to_have_value(str(value))
    pe = page.locator("#use-pe input")
    pe.check() if use_pe else pe.uncheck()


def info(page):
    return page.locator("#info textarea")


def run(page, prompt, **form):
    fill_form(page, prompt, **form)
    page.locator("#generate").click()
    expect(info(page)).to_have_value(re.compile(r"^(seed|种子) "))


@pytest.mark.browser
@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_stop_is_on_only_while_this_tab_has_a_run(open_page, viewport):
    page, other = open_page(viewport=viewport), open_page(viewport=viewport)
    stop = page.locator("#stop")
    expect(stop).to_be_disabled()
    assert "stop" not in stop.get_attribute("class").split()  # a plain button at rest, not the red one
    fill_form(page, "slow stop state", steps=20)
    page.locator("#generate").click()
    expect(stop).to_be_enabled()
    assert "stop" in stop.get_attribute("class").split()
    expect(other.locator("#stop")).to_be_disabled()  # another tab has nothing running
    expect(info(page)).to_have_value(re.compile("^seed "))
    expect(stop).to_be_disabled()


@pytest.mark.browser
def test_a_generate_right_after_stop_runs_behind_the_stopping_run(open_page, run_app):
    service = run_app[0]
    page = open_page()
    fill_form(page, "slow, lingers after the stop", steps=200, use_pe=True)
    page.locator("#generate").click()
    page.get_by_text("prompt enhancer").first.wait_for()
    page.locator("#stop").click()
    page.locator("#prompt textarea").fill("after the stop")
    page.locator("#generate").click()
    expect(info(page)).to_have_value(re.compile("^seed "))
    assert [r.prompt for r in service.requests[-2:]] == ["slow, lingers after the stop", "after the stop"]
    expect(page.locator("#stop")).to_be_disabled()
    assert page.get_by_text("Error").count() == 0


@pytest.mark.browser
def test_a_stop_that_reaches_the_server_with_nothing_running_keeps_the_finished_runs_info(open_page):
    page = open_page()
    run(page, "finished before the stop")
    finished = info(page).input_value()
    with page.expect_response(lambda response: "/run/predict" in response.url):
        page.evaluate("() => { const stop = document.querySelector('#stop'); stop.disabled = false; stop.click(); }")
    # Another event outside the queue, sent after anything the stop could have set off: once its answer shows,
    # so would a "Stopped" written by the stop's own events.
    page.locator("#use-settings").click()
    expect(page.locator("#history-note")).to_contain_text("Select an image")
    assert info(page).input_value() == finished


@pytest.mark.browser
@pytest.mark.parametrize(
    ("locale", "nothing_picked", "restored"),
    [
        ("en-US", "Select an image in the history first.", "Settings restored from"),
        ("zh-CN", "请先在历史记录中选择", "已从"),
    ],
)
def test_history_and_png_messages_reach_the_page_and_the_upload_is_deleted(
    open_page, tmp_path, locale, nothing_picked, restored
):
    import gradio as gr

    page = open_page(locale=locale)
    note = page.locator("#history-note")
    page.locator("#use-settings").click()
    expect(note).to_contain_text(nothing_picked)
    blank = tmp_path / f"blank-{locale}.png"
    Image.new("RGB", (8, 8)).save(blank)
    page.locator("#restore input[type=file]").set_input_files(str(blank))
    expect(note).to_contain_text(blank.name)
    request = GenerationRequest("a lighthouse", width=848, height=1264, seed=31)
    path = save_png(Image.new("RGB", (8, 8)), tmp_path, 31, parameters_text(request, 31, None, "fake"))
    page.locator("#restore input[type=file]").set_input_files(str(path))
    expect(note).to_contain_text(restored)
    expect(page.locator("#width input")).to_have_value("848")
    uploads = Path(gr.utils.get_upload_folder())
    assert not list(uploads.rglob(path.name)) and not list(uploads.rglob(blank.name))


@pytest.mark.browser
def test_a_chinese_browser_reads_the_run_in_chinese(open_page):
    page = open_page(locale="zh-CN", viewport=PHONE)
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    page.locator("#examples").get_by_text("信息图 · 1376×768").wait_for()
    page.locator("#prompt textarea").fill("   ")
    page.locator("#generate").click()
    page.get_by_text("提示词（prompt）不能为空").first.wait_for()
    fill_form(page, "slow 中文", steps=10, use_pe=True, count=2)
    page.locator("#width input").fill("1000")
    page.locator("#generate").click()
    page.get_by_text("提示词增强 · 已写").first.wait_for()
    page.get_by_text("去噪 · 第 2 张，共 2 张").first.wait_for()
    expect(info(page)).to_have_value(re.compile(r"^种子 \d+, \d+ · PE .* 秒 · 文本编码 "))
    expect(page.locator("#width input")).to_have_value("1008")
    expect(page.locator("#gallery")).to_contain_text("1008×64 · 种子")
    fill_form(page, "slow 停止", steps=200)
    page.locator("#generate").click()
    page.get_by_text("去噪 · 第").first.wait_for()
    page.locator("#stop").click()
    expect(info(page)).to_have_value(re.compile("^已停止"))


@pytest.mark.browser
def test_progress_counts_pe_tokens_and_names_the_image(open_page):
    page = open_page()
    fill_form(page, "slow progress", steps=10, use_pe=True, count=2)
    page.locator("#generate").click()
    page.get_by_text(re.compile(rf"prompt enhancer · \d+ / {PE_CAP} tokens")).first.wait_for()
    page.get_by_text(re.compile(r"denoising · image 2 of 2 · step \d+/10")).first.wait_for()
    expect(info(page)).to_have_value(re.compile("^seed "))


@pytest.mark.browser
@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_a_typed_size_shows_snapped_and_captions_carry_size_seed_and_prompt(open_page, viewport):
    page = open_page(viewport=viewport)
    fill_form(page, "caption cat", size=(1000, 72))
    page.locator("#generate").click()
    expect(page.locator("#width input")).to_have_value("1008")
    expect(page.locator("#height input")).to_have_value("80")
    expect(info(page)).to_have_value(re.compile("^seed "))
    seed = re.match(r"seed (\d+)", info(page).input_value()).group(1)
    expect(page.locator("#gallery")).to_contain_text(f"1008×80 · seed {seed}")
    assert "caption cat" in page.locator("#gallery img").first.get_attribute("alt")
    expect(page.locator("#history")).to_contain_text(f"1008×80 · seed {seed}")
    assert "caption cat" in page.locator("#history img").first.get_attribute("alt")


@pytest.mark.browser
def test_the_history_says_when_an_images_file_is_gone(open_page, run_app):
    out = run_app[2]
    page = open_page()
    run(page, "soon gone")
    expect(page.locator("#history img")).not_to_have_count(0)
    kept = page.locator("#history img").count()
    newest = max(out.glob("ernie-*.png"), key=lambda p: p.stat().st_mtime)
    newest.unlink()
    page.reload()
    page.locator("#generate").wait_for()
    expect(page.locator("#history-note")).to_contain_text("1 image(s) of this browser's history are no longer")
    expect(page.locator("#history img")).to_have_count(kept - 1)


@pytest.mark.browser
def test_without_a_gpu_generate_is_off_with_the_reason_beside_it(browser, tmp_path, capfd):
    from gradio_client import Client

    demo, url = serve(NoGpuService(), tmp_path)
    try:
        page = browser.new_page(viewport=PHONE)
        page.set_default_timeout(BOUND)
        page.goto(url)
        expect(page.locator("#generate")).to_be_disabled()
        reason = page.locator("#missing")
        expect(reason).to_contain_text("Generate is off: No CUDA GPU found")
        box, button = reason.bounding_box(), page.locator("#generate").bounding_box()
        assert button["y"] - (box["y"] + box["height"]) < 200  # right above the prompt and Generate
        page.close()
        page = browser.new_page(viewport=PHONE, locale="zh-CN", extra_http_headers={"Accept-Language": "zh-CN"})
        page.set_default_timeout(BOUND)
        page.goto(url)
        expect(page.locator("#missing")).to_contain_text("无法生成：未找到 CUDA GPU")
        expect(page.locator("#header")).to_contain_text("模型：")
        page.close()
        client = Client(url, verbose=False)
        with pytest.raises(Exception, match="No CUDA GPU found"):
            client.predict("cat", "", 64, 64, 1, 4.0, 1, False, False, 1, api_name="/generate")
    finally:
        demo.close()
    assert "Traceback" not in capfd.readouterr().err
