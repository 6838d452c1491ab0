"""A client names files by path: the app reads only its uploads and its own results. An init image given as any
other path on the server is refused before anything is queued (in the page's language), and "Use this result" hands
back only a file the app served, so neither reads nor serves the server's other files."""

import http.client
import json

import pytest
from PIL import Image

gr = pytest.importorskip("gradio")

from ernie_nf4.webapp.handlers import Handlers  # noqa: E402

from .support.app import ServedApp  # noqa: E402
from .test_lora_app import refusals  # noqa: E402

FORM = ["a lighthouse at dusk", "", 64, 64, 10, 4.0, 5, False, False, 1, "", 1.0]


@pytest.fixture
def app(tmp_path):
    served = ServedApp(tmp_path)
    yield served
    served.close()


def _predict(app: ServedApp, name: str, data: list) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", app.port, timeout=60)
    try:
        body = {"fn_index": app.ids[name], "data": data, "session_hash": "s1"}
        connection.request("POST", "/gradio_api/run/predict", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_an_init_image_path_outside_the_uploads_is_refused_before_the_queue(app, tmp_path):
    private = tmp_path / "private.png"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(private)
    for path in (str(private), "/etc/passwd", str(tmp_path / "missing.png")):
        english = refusals(app.url, [*FORM, {"path": path}, 0.0, "", False], "en-US")
        assert english == {
            "init_image": "Start image (init_image) must be an image uploaded to this app or one of its results; a "
            "path on the server is not read"
        }
    chinese = refusals(app.url, [*FORM, {"path": str(private)}, 0.0, "", False], "zh-CN")
    assert "不读取服务器上的路径" in chinese["init_image"]
    assert app.service.requests == []


def test_use_this_result_and_vary_hand_back_only_files_the_app_served(app, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for clients")
    for path in (str(secret), "/etc/hostname"):
        gallery = [{"image": {"path": path}, "caption": None}]
        status, answer = _predict(app, "use_result", [gallery, 0, 1.0])
        assert status == 200, answer
        image, _, message, _ = answer["data"]
        assert image is None or image.get("path") is None
        assert "a path on the server is not read" in message
        for kind in ("vary_subtle", "vary_strong", "upscale"):  # what Vary and Upscale start from: never that path
            with pytest.raises(gr.Error, match="Generate an image first"):
                Handlers(app.service, app.outputs).result_for(kind, gallery, 0)
    # the app's own result goes back into the image input
    from gradio_client import Client

    images, *_ = Client(app.url, verbose=False).predict(*FORM, None, 1.0, "", api_name="/generate")
    status, answer = _predict(app, "use_result", [[{"image": {"path": images[0]["image"]}, "caption": None}], 0, 1.0])
    assert status == 200 and answer["data"][0]["path"] and answer["data"][2] == ""
