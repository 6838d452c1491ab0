"""Live previews through the app, served on loopback around a FakeService: an API client that asks for them gets the
image forming in the gallery output before the final images; one that does not ask gets the final outputs alone;
Stop ends them."""

from __future__ import annotations

import json
import re

import httpx
import pytest

pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402

from .support.app import ServedApp  # noqa: E402

FORM = ["a cat", "", 64, 64, 6, 4.0, 7, False, False, 1, "", 1.0, None, 1, ""]  # prompt … enhanced_prompt
PREVIEW = re.compile(r"Preview · step (\d+)/(\d+)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app around a FakeService, behind the request limits as ``python app.py`` serves it."""
    app = ServedApp(tmp_path_factory.mktemp("previews-app"))
    yield app.service, app.url, app.ids
    app.close()


def sse(text: str) -> list[tuple[str, object]]:
    """(event, data) of a ``/gradio_api/call`` stream."""
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((lines.get("event"), json.loads(lines.get("data", "null"))))
    return events


def call(url: str, data: list) -> str:
    with httpx.Client(base_url=url, timeout=60) as http:
        event = http.post("gradio_api/call/generate", json={"data": data})
        event.raise_for_status()
        return http.get(f"gradio_api/call/generate/{event.json()['event_id']}").text


def test_a_client_that_asks_gets_previews_before_the_final_images(server):
    service, url, _ = server
    client = Client(url, verbose=False)
    job = client.submit(*FORM, True, api_name="/generate")
    final = job.result()
    outputs = job.outputs()
    assert service.previews_asked is True
    previews, last = outputs[:-1], outputs[-1]
    assert [item[0][0]["caption"] for item in previews] == [f"Preview · step {k}/6" for k in range(1, 6)]
    from PIL import Image

    for item in previews:
        with Image.open(item[0][0]["image"]) as image:
            assert image.size == (8, 8)  # an eighth of the run's size
    assert last[0] == final[0] and [item["caption"] for item in final[0]] == ["64×64 · seed 7 · a cat"]
    assert final[1] == 7 and final[2] == "revised: a cat"
    # raw HTTP: the preview messages stream first, then the final outputs
    events = sse(call(url, [*FORM, True]))
    captions = [data[0][0]["caption"] for kind, data in events if data and data[0]]
    assert [PREVIEW.match(c) is not None for c in captions] == [True] * 5 + [False] * (len(captions) - 5)
    assert events[-1][0] == "complete" and events[-1][1][0][0]["caption"] == "64×64 · seed 7 · a cat"


def test_a_client_that_does_not_ask_gets_the_final_outputs_alone(server):
    service, url, _ = server
    client = Client(url, verbose=False)
    job = client.submit(*FORM, api_name="/generate")  # the API's default: no previews
    final = job.result()
    assert service.previews_asked is False
    assert [item["caption"] for item in final[0]] == ["64×64 · seed 7 · a cat"]
    assert all(output[0] == final[0] for output in job.outputs())
    for values in ([*FORM, False], FORM):  # FORM: a raw client written before previews came sends 15 values
        events = sse(call(url, values))
        assert "Preview" not in json.dumps(events, ensure_ascii=False)
        assert all(data == events[-1][1] for _, data in events)  # every message carries the final outputs
        assert events[-1][0] == "complete" and events[-1][1][0][0]["caption"] == "64×64 · seed 7 · a cat"
        assert service.previews_asked is False
    with httpx.Client(base_url=url, timeout=60) as http:  # anything but true or false is refused, by name
        refused = http.post("gradio_api/call/generate", json={"data": [*FORM, "yes"]})
    assert refused.status_code == 422
    assert any(c["parameter_name"] == "previews" and not c["is_valid"] for c in refused.json()["detail"])


def test_stop_ends_the_previews(server):
    service, url, ids = server
    form = ["slow cat", *FORM[1:4], 40, *FORM[5:], True]
    seen, stopped_at = [], []
    with httpx.Client(base_url=url, timeout=60) as http:
        body = {"data": form, "fn_index": ids["generate"], "session_hash": "tab-p", "trigger_id": None}
        assert http.post("gradio_api/queue/join", json=body).status_code == 200
        with http.stream("GET", "gradio_api/queue/data", params={"session_hash": "tab-p"}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                found = PREVIEW.search(json.dumps(message.get("output", {}), ensure_ascii=False))
                if found:
                    seen.append((int(found.group(1)), bool(stopped_at)))
                if found and not stopped_at:
                    stop = {"fn_index": ids["stop"], "data": [], "session_hash": "tab-p"}
                    assert http.post("gradio_api/run/predict", json=stop).status_code == 200
                    stopped_at.append(service.steps_done)  # the steps run when Stop had answered
                if message.get("msg") == "process_completed":
                    final = json.dumps(message["output"], ensure_ascii=False)
                    gallery = message["output"]["data"][0]
                    break
    assert "Stopped. Nothing was kept from this run." in final
    assert gallery == []  # the session's results before (none): no preview stays behind as a result
    assert seen and all(step <= stopped_at[0] for step, after in seen if after)  # none made after the Stop
    assert service.steps_done < 40


def test_the_api_page_says_previews_are_off_unless_asked(server):
    _, url, _ = server
    with httpx.Client(base_url=url, timeout=60) as http:
        generate = http.get("gradio_api/info").json()["named_endpoints"]["/generate"]
    previews = generate["parameters"][-1]
    assert previews["parameter_name"] == "previews" and previews["parameter_default"] is False
    assert previews["label"] == "Live previews (the image forming, every few steps)"
    assert "live previews" in previews["type"]["description"]
