"""The "Use via API" page and ``/gradio_api/info`` of the real app on loopback: plain labels (the UI's English
words, not translation objects), named returns, whole numbers typed int, and an example a person would send."""

import http.client
import json
import re
from urllib.parse import urlsplit

import pytest

pytest.importorskip("gradio")

from .support.app import BOUND, CHROMIUM_FLAGS, chromium_path, playwright_api  # noqa: E402

LABELS = [
    "Prompt",
    "Negative prompt",
    "Width",
    "Height",
    "Steps",
    "Guidance",
    "Seed",
    "Randomize seed",
    "Prompt enhancer (PE)",
    "Images",
    "LoRA",
    "LoRA scale",
    "Start from this image (upload or paste)",
    "Strength (1: ignore the image, 0: keep it)",
    "Enhanced prompt (editable)",
    "Live previews (the image forming, every few steps)",
]


def api_info(url: str) -> tuple[str, dict]:
    """``/gradio_api/info`` as raw text and as JSON, over plain HTTP."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request("GET", "/gradio_api/info")
        response = connection.getresponse()
        body = response.read().decode()
    finally:
        connection.close()
    assert response.status == 200, body
    return body, json.loads(body)


def test_api_info_has_plain_labels_named_returns_and_int_types(fake_app):
    _, client = fake_app
    raw, info = api_info(client.src)
    assert "translation_metadata" not in raw and "[object Object]" not in raw
    generate = info["named_endpoints"]["/generate"]
    for name, endpoint in info["named_endpoints"].items():  # for callers: no code markup, no handler names
        assert endpoint["description"] and "``" not in endpoint["description"], name
        assert "generate_live" not in endpoint["description"] and "_follow_up" not in endpoint["description"], name
    assert [p["label"] for p in generate["parameters"]] == LABELS
    assert [r["label"] for r in generate["returns"]] == ["Result", "Seed", "Revised prompt (PE)", "Run info"]
    assert [r["label"] for r in info["named_endpoints"]["/stats"]["returns"]] == ["Stats"]
    enhance = info["named_endpoints"]["/enhance"]
    assert [p["label"] for p in enhance["parameters"]] == ["Prompt", "Width", "Height", "Seed"]
    assert [r["label"] for r in enhance["returns"]] == ["Enhanced prompt (editable)"]
    types = {p["parameter_name"]: (p["type"]["type"], p["python_type"]["type"]) for p in generate["parameters"]}
    for whole in ("width", "height", "num_inference_steps", "seed", "num_images"):
        assert types[whole] == ("integer", "int"), whole
    assert types["guidance_scale"] == ("number", "float")


def test_the_api_example_is_one_a_person_would_send_and_it_runs(fake_app):
    service, client = fake_app
    _, info = api_info(client.src)
    generate = info["named_endpoints"]["/generate"]
    snippet = generate["code_snippets"]["python"]
    assert "Hello!!" not in snippet and 'negative_prompt=""' in snippet
    assert "num_inference_steps=50," in snippet and "num_images=1," in snippet
    example = {
        p["parameter_name"]: p["parameter_default"] if p["parameter_has_default"] else p["example_input"]
        for p in generate["parameters"]
    }
    assert "fox" in example["prompt"] and example["negative_prompt"] == ""
    assert example == {p["parameter_name"]: p["example_input"] for p in generate["parameters"]}
    client.predict(**example, api_name="/generate")  # what the page shows runs as it is
    sent = service.requests[-1]
    assert sent.prompt == example["prompt"] and (sent.width, sent.height) == (1024, 1024)
    assert sent.num_inference_steps == 50 and isinstance(sent.num_inference_steps, int)


@pytest.mark.browser
def test_use_via_api_page_shows_plain_labels(fake_app):
    _, client = fake_app
    sync_api = playwright_api()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1366, "height": 900}, locale="zh-CN")
        page.set_default_timeout(BOUND)
        page.goto(client.src)
        page.locator("#generate").wait_for()
        page.locator("footer").get_by_text("通过 API 使用").click()  # Gradio's own words, in Chinese here
        page.get_by_text("/stats", exact=True).first.wait_for()  # the endpoints' documentation is drawn
        page.get_by_text("num_inference_steps", exact=True).first.wait_for()
        text = page.locator("body").inner_text()
        assert "[object Object]" not in text and '"Negative prompt" Textbox component' in text
        assert "Hello!!" not in text and "value_" not in text
        assert '"Stats" Json component' in text and re.search(r"num_inference_steps\s+int\b", text)
        assert page.locator("#generate").inner_text().strip() == "生成"  # the page itself stays translated
        browser.close()
