"""Image-to-image in the app: the API takes the init image and the strength, the PNGs carry them (A1111's keys),
a dropped PNG restores the strength and says the image is not in it; in Chromium an uploaded image and a result
reused with "Use this result" reach the service."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
from gradio_client import handle_file  # noqa: E402
from gradio_client.exceptions import ValidationError  # noqa: E402

from ernie_nf4.request import FormValues, InitImage, request_from_form  # noqa: E402
from ernie_nf4.webapp.handlers import RESTORED_FIELDS, Handlers  # noqa: E402
from ernie_nf4.webapp.png_params import read_png_parameters  # noqa: E402
from ernie_nf4.webapp.zerogpu import gpu_seconds  # noqa: E402

from .support.app import FakeService, PageOpener, ServedApp, playwright_api, wait_until  # noqa: E402

FORM = ["a lighthouse at dusk", "", 64, 64, 10, 4.0, 5, False, False, 1, "", 1.0]
PHONE = {"width": 390, "height": 844}


def photo(path: Path, size=(96, 64), seed=0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_the_api_takes_an_image_and_a_strength_and_the_png_records_them(fake_app, tmp_path):
    service, client = fake_app
    source = photo(tmp_path / "start.png")
    images, _, _, info = client.predict(*FORM, handle_file(str(source)), 0.4, api_name="/generate")
    request = service.requests[-1]
    assert request.strength == 0.4 and request.steps_run == 4
    assert request.init_image.sha256 == InitImage.of(str(source)).sha256
    assert "Start image (init_image) 96x64 → scaled to 96x64, center-cropped to 64x64" in info
    assert "from the start image at strength 0.4" in info  # the run info says how it started, as Vary's does
    with Image.open(images[0]["image"]) as png:
        text = png.info["parameters"]
    assert text.endswith(f"Denoising strength: 0.4, Init image: {request.init_image.sha256[:16]}")
    # strength 1 ignores the image: plain text-to-image, nothing about an image in the PNG
    images, _, _, info = client.predict(*FORM, handle_file(str(source)), 1, api_name="/generate")
    assert service.requests[-1].init_image is None and "start image" not in info
    with Image.open(images[0]["image"]) as png:
        assert "Denoising strength" not in png.info["parameters"]
    with pytest.raises(ValidationError, match=r"- init_image: Start image \(init_image\) is needed at strength 0.5"):
        client.predict(*FORM, None, 0.5, api_name="/generate")
    with pytest.raises(ValidationError, match=r"- strength: strength must be in \[0.0, 1.0\]"):
        client.predict(*FORM, handle_file(str(source)), 1.5, api_name="/generate")


def test_a_png_restores_the_strength_and_says_the_image_is_not_in_it(tmp_path):
    service = FakeService()
    handlers = Handlers(service, tmp_path / "out")
    image = str(photo(tmp_path / "fox.png", (64, 64)))
    request, _ = request_from_form(FormValues("a fox", width=64, height=64, init_image=image, strength=0.65))
    _, _, _, _, made = handlers._saved(request, service.generate(request), [], "en")
    path = handlers.output_dir / made[0]["file"]
    assert read_png_parameters(path).strength == 0.65
    updates = handlers.restore_png(str(path))
    fields = dict(zip(RESTORED_FIELDS, updates, strict=False))
    assert fields["strength"] == 0.65 and fields["prompt"] == "a fox"
    digest = request.init_image.sha256[:16]
    assert f"strength 0.65, init image {digest}); a PNG does not hold that image" in updates[-1]
    assert "PNG 里没有那张图片" in handlers.use_history(made, 0, _Chinese())[-1]


class _Chinese:
    headers = {"accept-language": "zh-CN"}
    session_hash = None


def test_zerogpu_asks_for_the_steps_run(tmp_path):
    image = str(photo(tmp_path / "a.png", (1024, 1024)))
    full, _ = request_from_form(FormValues("a fox", num_inference_steps=50, use_pe=False))
    part, _ = request_from_form(
        FormValues("a fox", num_inference_steps=50, use_pe=False, init_image=image, strength=0.2)
    )
    assert gpu_seconds(part) < gpu_seconds(full)


@pytest.mark.browser
def test_upload_set_strength_generate_then_use_this_result(browser, tmp_path):
    expect = playwright_api().expect
    app = ServedApp(tmp_path)
    opener = PageOpener(browser, app.url)
    try:
        page = opener(viewport=PHONE)
        page.locator("#img2img > button").first.click()
        page.locator("#init-image input[type=file]").set_input_files(str(photo(tmp_path / "upload.png", (64, 64))))
        strength = page.locator("#strength input[type=number]")
        expect(strength).to_have_value("0.6")  # an image given: the strength leaves 1, which ignores it
        for part in ("#init-image", "#strength", "#use-result"):  # on a phone, each within the screen's width
            box = page.locator(part).bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (part, box)
        strength.fill("0.35")
        strength.press("Enter")
        page.locator("#prompt textarea").fill("a lighthouse at dusk")
        page.locator("#width input").fill("64")
        page.locator("#height input").fill("64")
        page.locator("#generate").click()
        expect(page.locator("#info textarea")).to_have_value(re.compile(r"^seed "))
        request = app.service.requests[-1]
        assert request.strength == 0.35
        assert request.init_image.sha256 == InitImage.of(str(tmp_path / "upload.png")).sha256
        page.locator("#img2img > button").first.click()  # closed again: "Use this result" opens it
        expect(page.locator("#init-image")).to_be_hidden()
        page.locator("#gallery img").first.click()
        page.locator("#use-result").click()
        expect(page.locator("#init-image img")).to_be_visible()
        page.locator("#generate").click()
        assert wait_until(lambda: len(app.service.requests) == 2, 30)
        result = InitImage.of(Image.fromarray(_result_pixels(request)))
        assert app.service.requests[-1].init_image.sha256 == result.sha256
    finally:
        opener.close()
        app.close()


def _result_pixels(request):
    """The pixels FakeService gives the request's first image."""
    return np.random.default_rng(request.seed).integers(0, 255, (request.height, request.width, 3), np.uint8)


def test_the_fitting_note_and_a_strength_zero_run_read_in_both_languages(tmp_path):
    from ernie_nf4.webapp.messages import note

    service = FakeService()
    handlers = Handlers(service, tmp_path / "out")
    image = str(photo(tmp_path / "wide.png", (128, 64)))
    request, notes = request_from_form(FormValues("a fox", width=64, height=64, init_image=image, strength=0))
    assert request.steps_run == 0
    assert note(notes[0], "zh") == "起始图片（init_image） 128x64 → 缩放到 128x64，居中裁剪为 64x64"
    for lang in ("en", "zh"):
        info = handlers._saved(request, service.generate(request), notes, lang)[3]
        assert ("Start image (init_image) 128x64 → scaled to" if lang == "en" else "居中裁剪为 64x64") in info


def test_a_file_that_is_no_image_is_refused_on_its_field_and_an_image_then_runs(browser, tmp_path):
    expect = playwright_api().expect
    app = ServedApp(tmp_path)
    opener = PageOpener(browser, app.url)
    try:
        page = opener()
        page.locator("#img2img > button").first.click()
        fake = tmp_path / "photo.png"
        fake.write_text("a text file with an image's name")
        page.locator("#init-image input[type=file]").set_input_files(str(fake))
        strength = page.locator("#strength input[type=number]")
        expect(strength).to_have_value("0.6")  # the upload arrived: a file came, the strength left 1
        page.locator("#prompt textarea").fill("a lighthouse at dusk")
        page.locator("#generate").click()
        refusal = page.get_by_text("Start image (init_image) 'photo.png' could not be read as an image")
        refusal.first.wait_for()
        assert refusal.count() == 1 and page.get_by_text("preprocess").count() == 0
        assert not app.service.requests
        page.locator("#init-image button[title='Clear']").first.click()  # the user takes another file
        page.locator("#init-image input[type=file]").set_input_files(str(photo(tmp_path / "upload.png", (64, 64))))
        expect(page.locator("#init-image img")).to_be_visible()
        page.locator("#generate").click()
        assert wait_until(lambda: len(app.service.requests) == 1, 30)
        assert app.service.requests[0].init_image.sha256 == InitImage.of(str(tmp_path / "upload.png")).sha256
    finally:
        opener.close()
        app.close()


def test_an_init_image_refused_is_said_in_chinese_too(tmp_path):
    """The image-to-image refusals (no image for a strength below 1, a file that is no image, an image too large or
    far too large) on a Chinese page: Chinese, on the init_image field, with no Python error names."""
    from ernie_nf4.errors import InvalidArgument
    from ernie_nf4.webapp.messages import refusal

    fake = tmp_path / "photo.png"
    fake.write_text("a text file with an image's name")
    strip = photo(tmp_path / "strip.png", (9000, 16))  # wider than 8192
    huge = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(huge)  # 400 megapixels: Pillow refuses it unread
    forms = {
        "needs": FormValues("a fox", strength=0.5),
        "pil": FormValues("a fox", init_image=Image.new("L", (9000, 16)), strength=0.5),  # given through the API
        "array": FormValues("a fox", init_image=np.zeros((64, 64, 3), np.float32), strength=0.5),
        "kind": FormValues("a fox", init_image=12, strength=0.5),
        "unreadable": FormValues("a fox", init_image=str(fake), strength=0.5),
        "size": FormValues("a fox", init_image=str(strip), strength=0.5),
        "pixels": FormValues("a fox", init_image=str(huge), strength=0.5),
    }
    said = {}
    for kind, form in forms.items():
        with pytest.raises(InvalidArgument) as caught:
            request_from_form(form)
        assert caught.value.field == "init_image"
        english, chinese = refusal(caught.value, "en"), refusal(caught.value, "zh")
        words = re.sub(r"init_image|strength|'\w+\.png'|float32|ndarray", "", chinese)  # names aside
        assert "起始图片（init_image）" in chinese and not re.search(r"[A-Za-z]{5,}", words)
        assert "Error" not in english and "Error" not in chinese  # no Python exception names
        said[kind] = english, chinese
    assert said["needs"][1].startswith("重绘强度（strength）0.5 需要一张起始图片")
    assert said["needs"][0] == "Start image (init_image) is needed at strength 0.5: give one, or set strength to 1"
    assert "'photo.png'" in said["unreadable"][1] and "PNG、JPEG 或 WebP" in said["unreadable"][1]
    assert "9000x16" in said["size"][0] and "9000x16" in said["size"][1]
    assert "'huge.png'" in said["pixels"][1] and "24,000,000" in said["pixels"][0]
    assert "9000x16" in said["pil"][1] and said["pil"][1].startswith("起始图片（init_image）的宽和高须在")
    assert "float32" in said["array"][1] and "HxWx3 的 uint8 数组" in said["array"][1]
    assert said["kind"][1].endswith("收到 int")
    with pytest.raises(InvalidArgument) as caught:  # made directly, from pixels not in RGB
        InitImage(Image.new("L", (64, 64)), "0" * 64)
    assert refusal(caught.value, "en") == "Start image (init_image) must be an RGB PIL image, got Image"
    assert refusal(caught.value, "zh") == "起始图片（init_image）必须是 RGB 模式的 PIL 图片，收到 Image"
