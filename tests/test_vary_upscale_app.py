"""Vary and Upscale in the app, through a real Gradio server and gradio_client: a result PNG sent to
``/vary_subtle``, ``/vary_strong`` and ``/upscale`` reaches the service as the right request (init image, strength,
size, seed, the enhanced prompt reused), the new PNGs record it, refusals name the field in both languages, and
ZeroGPU's estimate counts the tiles."""

import math
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

pytest.importorskip("gradio")
import gradio as gr  # noqa: E402
from gradio_client import handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from ernie_nf4.request import GenerationRequest, InitImage  # noqa: E402
from ernie_nf4.webapp import zerogpu  # noqa: E402
from ernie_nf4.webapp.handlers import Handlers  # noqa: E402

from .support.app import FakeService  # noqa: E402

FORM = ["a lighthouse at dusk", "low quality", 96, 64, 10, 3.5, 5, False, True, 1, "", 1.0]


def parameters(path) -> str:
    with Image.open(path) as png:
        return png.info["parameters"]


def test_a_result_varied_then_upscaled_through_the_api(fake_app):
    service, client = fake_app
    images, seed, _, _ = client.predict(*FORM, api_name="/generate")
    first = images[0]["image"]
    assert seed == 5 and service.requests[-1].runs_pe

    images, new_seed, revised, info = client.predict(handle_file(first), api_name="/vary_subtle")
    subtle = service.requests[-1]
    assert subtle.strength == 0.3 and subtle.init_image.sha256 == InitImage.of(first).sha256
    assert subtle.seed == new_seed != 5 and (subtle.width, subtle.height) == (96, 64)
    assert (subtle.prompt, subtle.negative_prompt, subtle.num_inference_steps, subtle.guidance_scale) == (
        "a lighthouse at dusk",
        "low quality",
        10,
        3.5,
    )
    assert subtle.enhanced_prompt == "revised: a lighthouse at dusk" and not subtle.runs_pe  # the PE's text reused
    assert f"Vary (subtle) of seed 5: strength 0.3, new seed {new_seed}" in info
    varied = images[0]["image"]
    assert "Denoising strength: 0.3, Init image: " + subtle.init_image.sha256[:16] in parameters(varied)

    client.predict(handle_file(first), api_name="/vary_strong")
    assert service.requests[-1].strength == 0.6 and service.requests[-1].seed != 5
    assert service.previews_asked is False  # an API client gets live previews only when it asks
    job = client.submit(handle_file(first), True, api_name="/vary_strong")
    final = job.result()
    captions = [output[0][0]["caption"] for output in job.outputs() if output[0]]
    assert service.previews_asked is True and captions[0].startswith("Preview · step 1/")  # the image forming
    assert captions[-1] == final[0][0]["caption"] and "Preview" not in captions[-1]

    images, up_seed, _, info = client.predict(handle_file(varied), api_name="/upscale")
    up = service.requests[-1]
    assert (up.width, up.height, up.strength, up.seed, up.num_images) == (192, 128, 0.3, new_seed, 1)
    assert up.init_image.sha256 == InitImage.of(varied).sha256 and up_seed == new_seed
    assert up.enhanced_prompt == "revised: a lighthouse at dusk"
    text = parameters(images[0]["image"])
    assert "Size: 192x128" in text and f"Denoising strength: 0.3, Init image: {up.init_image.sha256[:16]}" in text
    assert "Upscale x2 of seed" in info and "192x128 at strength 0.3" in info


def foreign_result(path, size=(2048, 2048)) -> str:
    """A PNG with A1111's parameters written here with Pillow alone, as another tool would."""
    info = PngInfo()
    info.add_text("parameters", "a red fox\nNegative prompt: \nSteps: 8, CFG scale: 1.0, Seed: 3, Size: 2048x2048")
    Image.new("RGB", size, (200, 90, 20)).save(path, pnginfo=info)
    return str(path)


def test_upscale_of_the_largest_size_and_a_missing_result_are_refused_by_name(fake_app, tmp_path):
    service, client = fake_app
    count = len(service.requests)
    with pytest.raises(
        AppError, match=r"Start image \(init_image\) is 2048x2048: Upscale x2 makes images of at most 2048 .*grow"
    ):
        client.predict(handle_file(foreign_result(tmp_path / "big.png")), api_name="/upscale")
    with pytest.raises(AppError, match="Generate an image first"):
        client.predict(None, api_name="/vary_subtle")
    with pytest.raises(AppError, match="carries no generation parameters"):
        Image.new("RGB", (64, 64)).save(tmp_path / "plain.png")
        client.predict(handle_file(str(tmp_path / "plain.png")), api_name="/vary_strong")
    assert len(service.requests) == count  # nothing ran


class _Chinese:
    headers = {"accept-language": "zh-CN"}
    session_hash = None


@pytest.fixture
def uploads():
    """A folder in Gradio's upload folder: where the files a client sends land, the only ones the app reads."""
    import shutil
    import tempfile

    folder = Path(gr.utils.get_upload_folder())
    folder.mkdir(parents=True, exist_ok=True)
    made = Path(tempfile.mkdtemp(dir=folder))
    yield made
    shutil.rmtree(made, ignore_errors=True)


def test_the_follow_ups_speak_chinese(tmp_path, uploads):
    handlers = Handlers(FakeService(), tmp_path / "out")
    with pytest.raises(gr.Error, match="起始图片（init_image）是 2048x2048：放大 2 倍.*几乎不会变大"):
        next(handlers.upscale(foreign_result(uploads / "big.png"), False, _Chinese()))
    with pytest.raises(gr.Error, match="不读取服务器上的路径"):  # a path elsewhere on the server
        next(handlers.upscale(foreign_result(tmp_path / "elsewhere.png"), False, _Chinese()))
    small = foreign_result(uploads / "small.png", (1024, 1024))
    _, said = handlers.follow_up_request(small, "vary_strong", "zh")
    assert said("zh").startswith("变化（强烈），原种子 3：重绘强度 0.6，新种子 ")
    info = list(handlers.vary_subtle(small, False, _Chinese()))[-1][3]
    assert "变化（轻微），原种子 3" in info


def test_the_selected_result_is_the_one_vary_and_upscale_take(tmp_path, uploads):
    handlers = Handlers(FakeService(), tmp_path / "out")
    a, b = foreign_result(uploads / "a.png", (64, 64)), foreign_result(uploads / "b.png", (64, 64))
    gallery = [(a, "a"), (b, "b")]
    assert handlers.selected_result(gallery, 1) == b
    assert handlers.selected_result(gallery, None) == a
    assert handlers.selected_result(gallery, 7) == a
    assert handlers.selected_result([], 0) is None
    assert handlers.selected_result([(foreign_result(tmp_path / "c.png", (64, 64)), "c")], 0) is None


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_live_preview_is_no_result_to_take(tmp_path, uploads, lang):
    from ernie_nf4.webapp.i18n import say

    handlers = Handlers(FakeService(), tmp_path / "out")
    result = foreign_result(uploads / "a.png", (64, 64))
    preview = [(result, say("preview_caption", lang, step=3, steps=10))]
    assert handlers.selected_result(preview, 0) is None
    assert handlers.use_result(preview, 0, 1.0)[2] == say("no_result")
    assert handlers.selected_result([(result, "64×64 · seed 3 · a")], 0) == result


def test_zerogpu_counts_every_tile_of_an_upscale():
    plain = GenerationRequest("a fox", width=1024, height=1024, enhanced_prompt="a fox, film")
    init = InitImage.of(Image.new("RGB", (1024, 1024)))
    up = GenerationRequest("a fox", width=2048, height=2048, enhanced_prompt="a fox", init_image=init, strength=0.3)
    steps = up.steps_run  # 15 of 50
    tiles = 9  # 1024x1024 tiles over 2048x2048
    expected = zerogpu.BASE_SECONDS + tiles * steps * zerogpu.STEP_SECONDS_1MP + (tiles - 1) * zerogpu.TILE_SECONDS
    assert zerogpu.gpu_seconds(up) == math.ceil(expected)
    assert zerogpu.gpu_seconds(plain) == math.ceil(zerogpu.BASE_SECONDS + 50 * zerogpu.STEP_SECONDS_1MP)
    within = GenerationRequest("a fox", width=1024, height=1024, enhanced_prompt="a", init_image=init, strength=0.3)
    assert zerogpu.gpu_seconds(within) == math.ceil(zerogpu.BASE_SECONDS + steps * zerogpu.STEP_SECONDS_1MP)


def test_the_api_page_says_how_to_vary_and_upscale(fake_app):
    from .test_api_page import api_info

    _, client = fake_app
    _, info = api_info(client.src)
    endpoints = info["named_endpoints"]
    strength = next(p for p in endpoints["/generate"]["parameters"] if p["parameter_name"] == "strength")
    assert "Vary is a /generate call with a result as init_image at strength 0.3" in strength["type"]["description"]
    assert (
        "Upscale x2 is one with a result as init_image, twice its width and height" in strength["type"]["description"]
    )
    for name in ("/vary_subtle", "/vary_strong", "/upscale"):
        image, previews = endpoints[name]["parameters"]
        assert previews["parameter_name"] == "previews" and previews["parameter_default"] is False  # only if asked
        assert image["label"] == "Result image (a PNG this app made; its settings are read from it)"
        assert image["type"]["description"].startswith("a result PNG this app made")
        assert [r["label"] for r in endpoints[name]["returns"]] == ["Result", "Seed", "Revised prompt (PE)", "Run info"]
        assert "handle_file('ernie-result.png')" in endpoints[name]["code_snippets"]["python"]


class _Session:
    """A request of one browser tab: its language and its session."""

    def __init__(self, locale: str, session_hash: str = "tab"):
        self.headers, self.session_hash = {"accept-language": locale}, session_hash


def test_a_language_change_says_the_last_results_again_and_nothing_else(tmp_path):
    from ernie_nf4.webapp.i18n import say

    handlers = Handlers(FakeService(), tmp_path / "out")
    english, chinese = _Session("en-US"), _Session("zh-CN")
    gallery, _, _, info, _ = handlers.generate("a fox", "", 64, 64, 2, 4.0, 7, False, False, 2, request=english)
    files, text = handlers.relang(gallery, info, chinese)
    assert [path for path, _ in files] == [path for path, _ in gallery]  # the same images
    assert [c for _, c in files] == ["64×64 · 种子 7 · a fox", "64×64 · 种子 8 · a fox"]
    assert text.startswith("种子 7, 8 · 文本编码 ") and "text" not in text
    assert handlers.relang(files, text, english) == (gallery, info)  # and back, as the run said them
    # Stopped is said again; any other text stays, and so do images that are not the last results
    assert handlers.relang(gallery, say("stopped", "en"), chinese)[1] == say("stopped", "zh")
    assert handlers.relang(gallery, "refused: prompt is empty", chinese)[1] == gr.skip()
    assert handlers.relang(gallery[:1], info, chinese)[0] == gr.skip()
    previews = [(path, "Preview · step 1/2") for path, _ in gallery]
    assert handlers.relang(previews, info, chinese)[0] == gr.skip()
    # another tab's session has no results of this one's
    assert handlers.relang(gallery, info, _Session("zh-CN", "other tab")) == (gr.skip(), gr.skip())


@pytest.mark.parametrize("gallery", [[[]], [()], 5, "x", [None], [{"image": 3}]])
def test_a_language_change_with_a_gallery_no_page_sends_changes_nothing(tmp_path, gallery):
    handlers = Handlers(FakeService(), tmp_path / "out")
    english = _Session("en-US")
    _, _, _, info, _ = handlers.generate("a fox", "", 64, 64, 2, 4.0, 7, False, False, 1, request=english)
    files, text = handlers.relang(gallery, info, _Session("zh-CN"))
    assert files == gr.skip() and text.startswith("种子 7")
