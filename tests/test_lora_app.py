"""LoRAs in the app: the flags and the Space variable that offer them, the ``/generate`` API's ``lora`` and
``lora_scale`` (through a real Gradio server on loopback), the run info, the PNG's ``<lora:NAME:SCALE>`` tags read
back (also from another tool's PNG), the history, and the page's dropdown and scale in Chromium."""

import http.client
import json
import subprocess
import sys
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors.numpy import save

from ernie_nf4.request import GenerationRequest, LoraChoice
from ernie_nf4.serving.loras import LoraSource

pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import ValidationError  # noqa: E402

from ernie_nf4.webapp.cli import SettingsError, config_from_args, parse_args  # noqa: E402
from ernie_nf4.webapp.handlers import RESTORED_FIELDS, Handlers  # noqa: E402
from ernie_nf4.webapp.png_params import parameters_text, parse_parameters, read_png_parameters  # noqa: E402

from .support.app import ROOT, SERVER_ENV, FakeService, PageOpener, ServedApp  # noqa: E402
from .test_lora_sources import lora_bytes  # noqa: E402

OFFERED = ["ink", "style"]
FORM = ("a cat", "", 64, 64, 2, 4.0, 3, False, False, 1)  # the form's fields before lora, lora_scale


class ChineseBrowser:
    headers = {"accept-language": "zh-CN,zh;q=0.9"}


@pytest.fixture(scope="module")
def lora_app(tmp_path_factory):
    app = ServedApp(tmp_path_factory.mktemp("lora-app"), lora_names=OFFERED)
    yield app
    app.close()


@pytest.fixture
def loras_folder(tmp_path):
    for name in ("ink", "paper"):
        (tmp_path / f"{name}.safetensors").write_bytes(lora_bytes())
    return tmp_path


# 1. Flags and the Space variable


def test_lora_flags_reach_the_service_config(loras_folder):
    ink = str(loras_folder / "ink.safetensors")
    args = parse_args(["--tiny", "--lora", "style=owner/style", "--lora", f"mine={ink}"], {})
    assert config_from_args(args).loras == (LoraSource("style", "owner/style"), LoraSource("mine", ink))
    args = parse_args(["--tiny", "--lora-dir", str(loras_folder)], {})
    assert [s.name for s in config_from_args(args).loras] == ["ink", "paper"]
    assert config_from_args(parse_args(["--tiny"], {})).loras == ()


def test_the_space_variable_offers_several_and_a_flag_wins(loras_folder):
    space = {"ERNIE_NF4_LORA": "style=owner/style; deep=owner/deep/sub/a.safetensors\nline=owner/line\n"}
    args = parse_args(["--tiny"], space)
    assert [s.name for s in config_from_args(args).loras] == ["style", "deep", "line"]
    args = parse_args(["--tiny", "--lora", "only=owner/only"], space)
    assert config_from_args(args).loras == (LoraSource("only", "owner/only"),)
    args = parse_args(["--tiny"], {**space, "ERNIE_NF4_LORA_DIR": str(loras_folder)})
    assert [s.name for s in config_from_args(args).loras] == ["style", "deep", "line", "ink", "paper"]


@pytest.mark.parametrize(
    "argv, environ, words",
    [
        (["--lora", "style"], {}, ["--lora", "NAME=PATH_OR_HUB_ID", "'style'"]),
        (["--lora", "a:b=owner/x"], {}, ["--lora", "'a:b=owner/x'", "':'"]),
        ([], {"ERNIE_NF4_LORA": "ok=owner/ok; broken"}, ["ERNIE_NF4_LORA", "'broken'"]),
        (
            ["--lora-dir", "/no/such/folder"],
            {},
            ["--lora-dir", "ERNIE_NF4_LORA_DIR", "/no/such/folder", "not a folder"],
        ),
        (["--lora", "ink=owner/ink"], "folder", ["--lora", "'ink' is given twice", "owner/ink"]),
        (["--lora", "gone=/no/such/gone.safetensors"], {}, ["--lora", "'gone'", "gone.safetensors is not a file"]),
        (["--lora", "old=old.ckpt"], {}, ["--lora", "'old'", "not a .safetensors file"]),
        (["--lora", "bad=bad.safetensors"], {}, ["--lora", "'bad'", "not a readable safetensors file"]),
        (["--lora", "model=model.safetensors"], {}, ["--lora", "'model'", "not in a LoRA layout for ERNIE-Image"]),
    ],
    ids=["no-name", "colon", "variable", "missing-folder", "twice", "missing-file", "ckpt", "not-safetensors", "model"],
)
def test_bad_lora_settings_are_one_line_naming_the_flag(argv, environ, words, loras_folder, monkeypatch):
    monkeypatch.chdir(loras_folder)
    (loras_folder / "old.ckpt").write_bytes(b"pickle")
    (loras_folder / "bad.safetensors").write_bytes(b"a text file, not safetensors")
    (loras_folder / "model.safetensors").write_bytes(save({"layers.0.attn.to_q.weight": np.zeros((4, 4), np.float32)}))
    if environ == "folder":
        environ = {"ERNIE_NF4_LORA_DIR": str(loras_folder)}
    with pytest.raises(SettingsError) as refused:
        parse_args(["--tiny", *argv], environ)
    message = str(refused.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_python_app_with_a_bad_lora_prints_one_line(tmp_path):
    cmd = [sys.executable, "app.py", "--tiny", "--output-dir", str(tmp_path / "out"), "--lora", "style=./none.bin"]
    result = subprocess.run(cmd, cwd=ROOT, env=SERVER_ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --lora (or ERNIE_NF4_LORA, --lora-dir): lora 'style': none.bin is not a file; give a .safetensors "
        "file or a Hub id"
    ]


# 2. The API


def test_the_api_takes_a_lora_and_its_scale_after_the_form_and_they_reach_the_service(lora_app):
    client = Client(lora_app.url, verbose=False)
    names = [p["parameter_name"] for p in client.view_api(return_format="dict", print_info=False)["named_endpoints"][
        "/generate"]["parameters"]]  # fmt: skip
    assert names[10:12] == ["lora", "lora_scale"] and names[-2:] == ["enhanced_prompt", "previews"]
    images, _, _, info = client.predict(*FORM, "style", 0.5, api_name="/generate")
    assert lora_app.service.requests[-1].loras == (LoraChoice("style", 0.5),)
    assert info.endswith("LoRA style × 0.5")
    with Image.open(images[0]["image"]) as png:
        assert png.info["parameters"].startswith("a cat <lora:style:0.5>\nNegative prompt: \n")
    client.predict(*FORM, ["ink", "style"], [0.25, 1.75], api_name="/generate")
    assert lora_app.service.requests[-1].loras == (LoraChoice("ink", 0.25), LoraChoice("style", 1.75))
    client.predict(*FORM, ["style", "ink"], 2, api_name="/generate")
    assert lora_app.service.requests[-1].loras == (LoraChoice("style", 2.0), LoraChoice("ink", 2.0))
    client.predict(*FORM, "", 1, api_name="/generate")
    assert lora_app.service.requests[-1].loras == ()


def refusals(url: str, data: list, language: str) -> dict:
    """The fields ``/generate`` refuses ``data`` on, with their messages, as a raw HTTP client sees them: the
    validator answers the POST before anything is queued."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        headers = {"Content-Type": "application/json", "Accept-Language": language}
        connection.request("POST", "/gradio_api/call/generate", json.dumps({"data": data}), headers)
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 422 and "event_id" not in answer, answer
    return {check["parameter_name"]: check["message"] for check in answer["detail"] if not check["is_valid"]}


def test_an_unknown_lora_is_refused_before_the_queue_naming_it_and_the_offered_ones(lora_app):
    before = len(lora_app.service.requests)
    english = refusals(lora_app.url, [*FORM, ["ink", "nope"], 1, None, 1, "", False], "en-US")
    assert english == {"lora": "lora: this app offers no LoRA named 'nope'; it offers 'ink', 'style'"}
    chinese = refusals(lora_app.url, [*FORM, "nope", 1, None, 1, "", False], "zh-CN")
    assert chinese == {"lora": "LoRA（lora）：本应用没有名为 'nope' 的 LoRA；可用的有 'ink', 'style'"}
    assert len(lora_app.service.requests) == before  # refused before the run was queued
    client = Client(lora_app.url, verbose=False)
    with pytest.raises(
        ValidationError, match=r"lora_scale: .*LoRA scale \(lora_scale\) must be in \[0.0, 2.0\], got 2.5"
    ):
        client.predict(*FORM, "ink", 2.5, api_name="/generate")


@pytest.mark.parametrize(
    ("lora", "scale", "field", "chinese"),
    [
        (["ink", "ink"], 1, "lora", "每个 LoRA 只能选一次"),
        (["ink", "style"], [1, 1, 1], "lora_scale", "请给一个强度，或为每个 LoRA 各给一个"),
        ([str(n) for n in range(9)], 1, "lora", "一次最多 8 个 LoRA"),
        ("a\tb", 1, "lora", "LoRA 名称不能含控制字符"),
    ],
)
def test_every_lora_refusal_reads_in_the_pages_language(lora_app, lora, scale, field, chinese):
    checks = refusals(lora_app.url, [*FORM, lora, scale, None, 1, "", False], "zh-CN")
    assert list(checks) == [field] and chinese in checks[field], checks
    assert field in refusals(lora_app.url, [*FORM, lora, scale, None, 1, "", False], "en-US")


def test_lora_tags_typed_in_the_prompt_are_what_runs_and_what_the_png_keeps(lora_app):
    client = Client(lora_app.url, verbose=False)
    form = ("a fox <lora:style:1.5>, in snow", *FORM[1:])
    images, _, _, info = client.predict(*form, "ink", 0.25, api_name="/generate")
    request = lora_app.service.requests[-1]
    assert request.prompt == "a fox, in snow"
    assert request.loras == (LoraChoice("ink", 0.25), LoraChoice("style", 1.5))
    with Image.open(images[0]["image"]) as png:
        text = png.info["parameters"]
    assert text.startswith("a fox, in snow <lora:ink:0.25> <lora:style:1.5>\n")
    settings = parse_parameters(text)
    assert settings.prompt == "a fox, in snow" and settings.loras == request.loras
    client.predict(*form, "style", 0.5, api_name="/generate")  # the form's own choice keeps its scale
    assert lora_app.service.requests[-1].loras == (LoraChoice("style", 0.5),)


@pytest.mark.parametrize("scale", [0.1234567, 1e-05, 3.0000000000000005e-06, 2.0])
def test_a_scale_reads_back_exactly_from_the_png(scale, tmp_path):
    from ernie_nf4.request import InitImage

    image = InitImage.of(np.zeros((64, 64, 3), np.uint8))
    request = GenerationRequest(
        "a cat", width=64, height=64, loras=(LoraChoice("ink", scale),), init_image=image, strength=scale / 4
    )
    text = parameters_text(request, 7, None, "fake")
    assert "e-" not in text  # plain decimals, as other tools read them
    settings = parse_parameters(text)
    assert settings.loras == request.loras and settings.strength == request.strength


def test_an_app_without_loras_refuses_any_name(fake_app):
    service, client = fake_app
    with pytest.raises(ValidationError, match="this app offers no LoRA named 'ink'; it offers none"):
        client.predict(*FORM, "ink", 1, api_name="/generate")


def test_the_api_page_documents_lora_and_lora_scale(lora_app):
    parts = urlsplit(lora_app.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.request("GET", "/gradio_api/info")
    info = json.loads(connection.getresponse().read())
    connection.close()
    lora, scale = info["named_endpoints"]["/generate"]["parameters"][10:12]
    assert (lora["label"], scale["label"]) == ("LoRA", "LoRA scale")
    assert (
        lora["python_type"]["type"] == "str | list[str]" and "offers: ink, style" in lora["python_type"]["description"]
    )
    assert scale["python_type"]["type"] == "float | list[float]" and "0 to 2" in scale["python_type"]["description"]
    assert (lora["parameter_default"], scale["parameter_default"]) == ([], 1.0)


# 3. PNG parameters and the history


def foreign_png(tmp_path, prompt: str):
    """A PNG as another A1111-style tool writes one: its ``parameters`` text made here with Pillow, tags inside the
    prompt."""
    info = PngInfo()
    text = f"{prompt}\nNegative prompt: lowres\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64"
    info.add_text("parameters", text)
    path = tmp_path / "foreign.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def restored(updates) -> dict:
    return dict(zip(RESTORED_FIELDS, updates, strict=False))


def test_another_tools_lora_tags_restore_the_lora_the_app_offers(tmp_path):
    handlers = Handlers(FakeService(OFFERED), tmp_path / "out")
    path = foreign_png(tmp_path, "masterpiece, <lora:style:0.8>, a fox <lora:other:0.6:0.4> in snow")
    settings = read_png_parameters(path)
    assert settings.prompt == "masterpiece, a fox in snow"
    assert settings.loras == (LoraChoice("style", 0.8), LoraChoice("other", 0.6))
    updates = handlers.restore_png(str(path))
    fields = restored(updates)
    assert fields["prompt"] == "masterpiece, a fox in snow" and fields["seed"] == 5
    assert (fields["lora"], fields["lora_scale"]) == (["style"], 0.8)
    assert updates[-1] == (
        "Settings restored from foreign.png. This app does not offer the LoRA 'other' of these settings; they run "
        "without it unless you pick another."
    )
    note = handlers.restore_png(str(foreign_png(tmp_path, "<lora:other:1> a fox")), ChineseBrowser())[-1]
    assert note == "已从 foreign.png 恢复设置。 本应用不提供这些设置中的 LoRA 'other'；除非另选一个，生成时不会使用它。"


def test_a_png_without_lora_tags_clears_the_dropdown(tmp_path):
    handlers = Handlers(FakeService(OFFERED), tmp_path / "out")
    fields = restored(handlers.restore_png(str(foreign_png(tmp_path, "a fox"))))
    assert fields["lora"] == [] and fields["lora_scale"] == {"__type__": "update"}


def test_the_apps_own_png_and_history_entry_restore_the_loras(tmp_path):
    service = FakeService(OFFERED)
    handlers = Handlers(service, tmp_path / "out")
    request = GenerationRequest("a cat\non a mat", width=64, height=64, loras=(LoraChoice("ink", 0.35),))
    text = parameters_text(request, 7, None, "fake")
    assert text.startswith("a cat\non a mat <lora:ink:0.35>\nNegative prompt: ")
    _, _, _, info, made = handlers._saved(request, service.generate(request), [], "en")
    assert info.endswith("LoRA ink × 0.35")
    fields = restored(handlers.use_history(made, 0))
    assert fields["prompt"] == "a cat\non a mat" and (fields["lora"], fields["lora_scale"]) == (["ink"], 0.35)
    service.lora_names = ["style"]  # the app restarted offering other LoRAs
    updates = handlers.use_history(made, 0)
    assert restored(updates)["lora"] == [] and "does not offer the LoRA 'ink'" in updates[-1]


def test_restoring_loras_of_different_scales_says_the_page_has_one_scale(tmp_path):
    service = FakeService(OFFERED)
    handlers = Handlers(service, tmp_path / "out")
    request = GenerationRequest(
        "a cat", width=64, height=64, loras=(LoraChoice("ink", 0.25), LoraChoice("style", 1.75))
    )
    _, _, _, _, made = handlers._saved(request, service.generate(request), [], "en")
    updates = handlers.use_history(made, 0)
    assert restored(updates)["lora"] == ["ink", "style"] and restored(updates)["lora_scale"] == 0.25
    assert "different scales (ink × 0.25, style × 1.75); all now use 0.25" in updates[-1]


# 4. The page


@pytest.mark.browser
def test_on_a_phone_a_lora_is_picked_scaled_and_used(lora_app, fake_app, browser):
    opener = PageOpener(browser, lora_app.url)
    try:
        plain = opener(viewport={"width": 390, "height": 844}, url=fake_app[1].src)
        assert not plain.locator("#lora").is_visible()  # an app without LoRAs shows no dropdown
        page = opener(viewport={"width": 390, "height": 844}, locale="zh-CN")
        assert page.locator("#loras").get_by_text("LoRA 强度").is_visible()
        page.locator("#prompt textarea").fill("a lantern")
        page.locator("#lora input").click()
        page.get_by_role("option", name="style").click()
        page.locator("#lora-scale input[type=number]").fill("0.65")
        page.locator("#lora-scale input[type=number]").blur()
        page.locator("#generate").click()
        page.wait_for_function("/LoRA：style × 0.65$/.test(document.querySelector('#info textarea').value)")
        assert lora_app.service.requests[-1].loras == (LoraChoice("style", 0.65),)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0
        box = page.locator("#loras").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, box
    finally:
        opener.close()
