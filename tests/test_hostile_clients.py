"""Hostile and careless API clients against the real app on loopback (raw HTTP with httpx, ``gradio_client``):
a cancel stops compute, nothing gets around the queue, admissions sent at the same instant respect the limits, a
client's identity on a Space is what the platform's proxy appended, wrong passwords are throttled, uploads are
bounded per client and deleted when stale, only the app's own images are served, deep JSON is refused by name,
and the page's own events called by hand refuse values the page never sends, naming them."""

import threading
import time

import httpx
import pytest

pytest.importorskip("gradio")
from ernie_nf4.webapp.limits import Limits  # noqa: E402

from .support.app import ServedApp, wait_until  # noqa: E402

FORM = ["a cat", "", 64, 64, 2, 4.0, 7, False, False, 1, "", 1.0, None, 1, "", False]  # prompt … previews


def slow_form(steps=50, prompt="slow cat"):
    return [prompt, "", 64, 64, steps, 4.0, 7, False, False, 1, "", 1.0, None, 1, "", False]


def settled(service, pause=0.6):
    done = getattr(service, "steps_done", 0)
    time.sleep(pause)
    return service.steps_done == done


@pytest.fixture()
def served(tmp_path):
    apps = []

    def start(limits=None, **kwargs):
        apps.append(ServedApp(tmp_path, limits, **kwargs))
        return apps[-1]

    yield start
    for app in apps:
        app.close()


def join(http, fn_index, data, session, headers=None):
    body = {"data": data, "fn_index": fn_index, "session_hash": session, "trigger_id": None}
    return http.post("gradio_api/queue/join", json=body, headers=headers)


def at_once(count, request):
    """``request(i)`` from ``count`` threads released together; their results in order."""
    barrier, results = threading.Barrier(count), [None] * count

    def one(i):
        barrier.wait()
        results[i] = request(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


# ---------------------------------------------------------------- cancel and the queue


def test_an_api_cancel_stops_the_run_within_a_step_and_the_next_request_does_not_wait(served):
    from gradio_client import Client

    app = served()
    client = Client(app.url, verbose=False)
    job = client.submit(*slow_form(steps=50), api_name="/generate")
    assert wait_until(lambda: getattr(app.service, "steps_done", 0) >= 2)
    job.cancel()
    assert wait_until(lambda: settled(app.service), seconds=10)
    assert app.service.steps_done < 10, f"ran {app.service.steps_done} of 50 steps after the cancel"
    start = time.monotonic()
    images, *_ = client.predict(*FORM, api_name="/generate")
    assert time.monotonic() - start < 5  # not behind the cancelled run's remaining 9 s
    assert len(images) == 1 and len(list(app.outputs.folder.glob("*.png"))) == 1  # nothing from the cancelled run


@pytest.mark.parametrize("route", ["gradio_api/run/generate", "gradio_api/api/generate", "gradio_api/run/predict"])
def test_generations_never_run_outside_the_queue_and_a_refusal_prints_no_traceback(served, route, capfd):
    app = served()
    r = httpx.post(app.url + route, json={"data": FORM, "fn_index": app.ids["generate"]}, timeout=30)
    assert r.status_code in (403, 404) and "queue" in r.text, (r.status_code, r.text)
    assert app.service.requests == []
    assert "Traceback" not in capfd.readouterr().err


def test_a_stranger_cannot_stop_another_callers_run(served):
    app = served()
    victim = {}

    def run_direct():  # the victim's own run, by the route that skips the queue when it is open
        body = {"data": slow_form(steps=15), "fn_index": app.ids["generate"]}
        victim["response"] = httpx.post(app.url + "gradio_api/run/generate", json=body, timeout=60)

    thread = threading.Thread(target=run_direct)
    thread.start()
    wait_until(lambda: getattr(app.service, "steps_done", 0) >= 2, seconds=3)
    for body in (
        {"fn_index": app.ids["stop"], "data": []},
        {"fn_index": app.ids["stop"], "data": [], "session_hash": "api"},
    ):
        httpx.post(app.url + "gradio_api/run/predict", json=body, timeout=30)
    thread.join(60)
    refused = victim["response"].status_code in (403, 404)
    assert refused or app.service.steps_done == 15, "a stranger's Stop ended another caller's run"


# ---------------------------------------------------------------- admissions


@pytest.mark.parametrize(
    "count, limits, most", [(16, Limits(), 2), (40, Limits(max_jobs_per_client=100, max_queue=6), 6)]
)
def test_joins_sent_at_the_same_instant_respect_the_limits(served, count, limits, most):
    app = served(limits)
    with httpx.Client(base_url=app.url, timeout=60, limits=httpx.Limits(max_connections=count)) as http:
        codes = at_once(count, lambda i: join(http, app.ids["generate"], slow_form(steps=10), f"s{i}").status_code)
        for i in range(count):  # free the server
            http.post("gradio_api/run/predict", json={"fn_index": app.ids["stop"], "data": [], "session_hash": f"s{i}"})
    assert codes.count(200) <= most, codes
    assert codes.count(200) >= 1 and set(codes) <= {200, 429, 503}, codes


def test_on_a_space_the_client_is_the_address_the_proxy_appended(served, monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/ernie")
    app = served(Limits.for_environment(max_jobs_per_client=2))
    proxy_appended = "203.0.113.7"
    with httpx.Client(base_url=app.url, timeout=30) as http:
        codes = [
            join(
                http,
                app.ids["generate"],
                slow_form(steps=20),
                f"a{i}",
                {"X-Forwarded-For": f"10.0.0.{i}, {proxy_appended}"},
            ).status_code
            for i in range(6)
        ]
        # the attacker writes the victim's address first: its own slots are used, not the victim's
        victim = "198.51.100.9"
        spoofed = {"X-Forwarded-For": f"{victim}, {proxy_appended}"}
        codes.append(join(http, app.ids["generate"], slow_form(steps=20), "a-spoof", spoofed).status_code)
        victim_code = join(http, app.ids["generate"], slow_form(steps=2), "v", {"X-Forwarded-For": victim}).status_code
        for session in [f"a{i}" for i in range(6)] + ["a-spoof", "v"]:
            http.post("gradio_api/run/predict", json={"fn_index": app.ids["stop"], "data": [], "session_hash": session})
    assert codes.count(200) == 2, codes
    assert victim_code == 200


# ---------------------------------------------------------------- logins and uploads


def test_wrong_passwords_are_throttled_and_the_right_one_works_after_the_window(served):
    window = 4.0
    app = served(Limits(login_failures=5, login_window_seconds=window), auth=("ann", "right-horse"))
    with httpx.Client(base_url=app.url, timeout=30) as http:
        start = time.monotonic()
        codes = [http.post("login", data={"username": "ann", "password": f"guess{i}"}).status_code for i in range(40)]
        early = http.post("login", data={"username": "ann", "password": "right-horse"})
        assert codes.count(400) <= 5 and codes.count(429) >= 35, codes
        assert early.status_code == 429 and "try again" in early.text
        time.sleep(max(0.0, window - (time.monotonic() - start)) + 0.5)
        late = http.post("login", data={"username": "ann", "password": "right-horse"})
    assert late.status_code == 200, late.text


def upload(http, name: str, size: int):
    return http.post("gradio_api/upload", files={"files": (name, name.encode() + b"\0" * size, "image/png")})


def test_uploads_are_bounded_per_client_by_count_and_bytes(served):
    app = served(Limits(uploads_per_window=3, upload_bytes_per_window=10_000_000))
    with httpx.Client(base_url=app.url, timeout=30) as http:
        codes = [upload(http, f"u{i}.png", 200_000).status_code for i in range(25)]
    assert codes[:3] == [200] * 3 and set(codes[3:]) == {429}, codes
    app = served(Limits(uploads_per_window=100, upload_bytes_per_window=1_000_000))
    with httpx.Client(base_url=app.url, timeout=30) as http:
        first, second = upload(http, "a.png", 600_000), upload(http, "b.png", 600_000)
    assert first.status_code == 200 and second.status_code == 429
    said = "You have uploaded as much as this server takes from one address in 10 minutes (100 files or 1 MB). "
    assert second.json()["error"] == said + "You can upload again in 10 minutes."
    assert 590 <= int(second.headers["retry-after"]) <= 600


def test_a_wait_is_said_in_seconds_up_to_a_minute_and_a_half_then_in_whole_minutes():
    from ernie_nf4.webapp.limits import wait_words

    assert [wait_words(s) for s in (0.2, 1.2, 90)] == ["1 second", "2 seconds", "90 seconds"]
    assert [wait_words(s) for s in (91, 600)] == ["2 minutes", "10 minutes"]
    assert wait_words(45, "zh") == "45 秒" and wait_words(599, "zh") == "10 分钟"


def test_stale_uploads_are_deleted(served):
    from pathlib import Path

    app = served(Limits(upload_keep_seconds=2))
    with httpx.Client(base_url=app.url, timeout=30) as http:
        r = upload(http, "kept-briefly.png", 1000)
    assert r.status_code == 200
    path = Path(r.json()[0])
    assert path.is_file()
    assert wait_until(lambda: not path.exists(), seconds=15), f"{path} still there"


# ---------------------------------------------------------------- files and JSON


def test_only_the_apps_own_images_are_served_from_the_output_folder(served):
    app = served()
    folder = app.outputs.folder
    (folder / "notes.txt").write_text("private notes")
    (folder / "sub").mkdir()
    (folder / "sub" / "inner.txt").write_text("private too")
    (folder / "sub" / "ernie-19990101-000000-000000-1.png").write_bytes(b"not made here")
    from gradio_client import Client

    images, *_ = Client(app.url, verbose=False).predict(*FORM, api_name="/generate")
    made = sorted(folder.glob("ernie-*.png"))
    assert len(made) == 1
    with httpx.Client(base_url=app.url, timeout=30) as http:
        for foreign in ("notes.txt", "sub/inner.txt", "sub/ernie-19990101-000000-000000-1.png"):
            for route in (f"gradio_api/file={folder / foreign}", f"gradio_api/file/{folder / foreign}"):
                r = http.get(route)
                assert r.status_code in (403, 404) and b"private" not in r.content, (route, r.status_code)
        own = http.get(f"gradio_api/file={made[0]}")
        # a PNG put there by hand under the app's naming pattern is not the app's
        planted = folder / "ernie-20990101-000000-000000-42.png"
        planted.write_bytes(made[0].read_bytes())
        assert http.get(f"gradio_api/file={planted}").status_code in (403, 404)
    assert own.status_code == 200 and own.content[:4] == b"\x89PNG"


def test_an_output_folder_that_holds_gradios_uploads_still_serves_them(served, tmp_path, monkeypatch):
    from ernie_nf4.webapp.outputs import OutputStore

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-uploads"))
    (tmp_path / "notes.txt").write_text("private notes")
    app = served(outputs=OutputStore(tmp_path))  # as --output-dir /tmp would be, with Gradio's uploads inside
    with httpx.Client(base_url=app.url, timeout=30) as http:
        uploaded = upload(http, "restore-me.png", 1000).json()[0]
        assert http.get(f"gradio_api/file={uploaded}").status_code == 200
        assert http.get(f"gradio_api/file={tmp_path / 'notes.txt'}").status_code == 404


@pytest.mark.parametrize("route", ["gradio_api/queue/join", "gradio_api/call/generate", "gradio_api/run/predict"])
@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested_json_is_refused_by_name_without_a_traceback(served, route, depth, capfd):
    app = served()
    body = b'{"data": [' + b"[" * depth + b"]" * depth + b'], "fn_index": 0, "session_hash": "deep"}'
    r = httpx.post(app.url + route, content=body, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "nests more than" in r.json()["error"], (r.status_code, r.text[:200])
    assert "Traceback" not in capfd.readouterr().err


def test_a_requests_json_is_read_once_for_all_the_checks_before_the_app(served, monkeypatch):
    """A job that leaves out a field with a default (filled in), and a direct call of the page's own event: each
    body is parsed once by the limits, whatever checks it goes through, and still answered."""
    import json

    from ernie_nf4.webapp import limits

    parsed = []

    class Counted:
        dumps = staticmethod(json.dumps)

        @staticmethod
        def loads(text, *args, **kwargs):
            parsed.append(len(text))
            return json.loads(text, *args, **kwargs)

    monkeypatch.setattr(limits, "json", Counted)
    app = served()
    with httpx.Client(base_url=app.url, timeout=30) as http:
        job = join(http, app.ids["generate"], FORM[:-1], "once")  # no previews: filled in with its default
        assert job.status_code == 200 and len(parsed) == 1, (job.text, parsed)
        direct = _page_call(http, "gradio_api/run/predict", app.ids["preset_for"], [256, 256], "once")
        assert direct.status_code == 200 and direct.json()["data"] == ["custom"], direct.text
    assert len(parsed) == 2, parsed


def test_direct_calls_that_name_no_server_event_or_send_the_wrong_values_get_a_message(served, capfd):
    app = served()
    with httpx.Client(base_url=app.url, timeout=30) as http:
        events = http.get("config").json()["dependencies"]
        js_only = next(e["id"] for e in events if not e.get("backend_fn"))
        direct = next(e for e in events if e.get("backend_fn") and not e.get("queue", True) and e["inputs"])
        calls = [
            ({"data": [], "session_hash": "x"}, "names no event"),
            ({"fn_index": js_only, "data": [], "session_hash": "x"}, "names no event"),
            ({"fn_index": direct["id"], "data": [], "session_hash": "x"}, f"takes {len(direct['inputs'])} values"),
            ({"fn_index": direct["id"], "data": "junk", "session_hash": "x"}, "values in data"),
        ]
        for body, says in calls:
            r = http.post("gradio_api/run/predict", json=body)
            assert r.status_code == 422 and says in r.json()["error"], (body, r.status_code, r.text[:200])
    assert "Traceback" not in capfd.readouterr().err


# ---------------------------------------------------------------- the page's own events, called by hand

FILE_META = {"_type": "gradio.FileData"}
# (event, values with one of the wrong kind, the field the refusal names): a text for a number, a dict for a text or a
# choice, a list for an image, a number past what a page's field holds, a file of the server's own, out of range.
WRONG_VALUES = [
    ("preset_for", ["wide", 64], "(Number #width) must be a finite number"),
    ("preset_for", [64, 10**309], "(Number #height) must be a finite number"),
    ("preset_for", [[64, 64], 64], "(Number #width) must be a finite number"),
    ("apply_preset", [{"size": "1024x1024"}], "(Dropdown #preset) must be one of its choices"),
    ("apply_preset", ["4096x4096"], "(Dropdown #preset) must be one of its choices"),
    ("relang", [{"image": "x"}, ""], "(Gallery #gallery) must be gallery data"),
    ("relang", [[], {"text": "seed 1"}], "(Textbox #info) must be a text"),
    ("use_history", [[], "first"], "value 1 of this event (Number) must be a finite number"),
    ("restore_png", ["/etc/passwd"], "(File #restore) must be file data"),
    ("restore_png", [{"path": "/etc/passwd", "meta": FILE_META}], "uploaded to this server or are its results"),
    ("use_result", [[], 0, 5], "(Slider #strength) must be a number in [0, 1]"),
    ("image_given", [[1, 2], 1.0], "(Image #init-image) must be image data"),
    ("vary_subtle_result", [{"gallery": 1}, 0], "(Gallery #gallery) must be gallery data"),
]


def _page_call(http, route: str, fn_index: int, values, session: str):
    body = {"data": values, "fn_index": fn_index, "session_hash": session, "trigger_id": None}
    return http.post(route, json=body)


def test_the_pages_own_events_refuse_values_of_the_wrong_kind_by_name_and_the_app_goes_on(served_tiny_app):
    """Hand-made calls of the page's private events, by both routes the page uses (a direct call, a queued job):
    a value of the wrong kind, a list of the wrong length or a route of the API that names none of them is refused
    (4xx) with a message naming the value, never answered 500 with a traceback in the server's log; right values
    are still answered, and the app still generates."""
    url, client, model_dir = served_tiny_app
    log = model_dir.with_name("app.log")
    logged = len(log.read_text())
    with httpx.Client(base_url=url, timeout=60) as http:
        events = {e["api_name"]: e["id"] for e in http.get("config").json()["dependencies"] if e.get("backend_fn")}
        for number, (name, values, says) in enumerate(WRONG_VALUES):
            for route in ("gradio_api/run/predict", "gradio_api/queue/join"):
                r = _page_call(http, route, events[name], values, f"hand-{number}")
                assert r.status_code == 422 and says in r.json()["error"], (name, values, route, r.status_code, r.text)
        short = _page_call(http, "gradio_api/run/predict", events["preset_for"], [64], "short")
        assert short.status_code == 422 and "takes 2 values" in short.json()["error"], short.text
        checked = _page_call(http, "gradio_api/queue/join", events["lambda"], ["a fox", 64, 64], "short-job")
        assert checked.status_code == 422 and "is missing 1 of its values" in checked.json()["error"], checked.text
        unnamed = http.post("gradio_api/call/v2/preset_for", json={"width": "wide", "height": 64})
        assert unnamed.status_code == 404 and "no endpoint of this server's API" in unnamed.json()["error"]
        named = _page_call(http, "gradio_api/run/predict", events["preset_for"], [256, 256], "right")
        typed = _page_call(http, "gradio_api/run/predict", events["preset_for"], [1e308, 256], "right")
        no_size = _page_call(http, "gradio_api/run/predict", events["apply_preset"], [None], "right")
    assert named.status_code == 200 and named.json()["data"] == ["256x256"], named.text
    assert typed.status_code == 200 and typed.json()["data"] == ["custom"], typed.text  # what a page's box holds
    assert no_size.status_code == 200 and no_size.json()["data"] == [{"__type__": "update"}] * 2, no_size.text
    images, *_ = client.predict("cat", "", 64, 64, 1, 1.0, 1, False, False, 1, api_name="/generate")
    assert len(images) == 1
    assert "Traceback" not in log.read_text()[logged:]


def test_a_strength_typed_past_its_range_is_what_the_page_sends_on_a_drop_and_gets_the_image_strength(
    served_tiny_app,
):
    """Gradio's slider clamps a number typed in its box only when the box loses focus, and a file dropped on the
    start image does not move the focus: the page then sends what was typed (1.5, -1, nothing) with the image. Those
    are taken, and the strength becomes one that uses the image; a strength in [0, 1) stays as it is."""
    url, _, _ = served_tiny_app
    with httpx.Client(base_url=url, timeout=60) as http:
        events = {e["api_name"]: e["id"] for e in http.get("config").json()["dependencies"] if e.get("backend_fn")}
        sent = upload(http, "start.png", 1_000)
        assert sent.status_code == 200, sent.text
        image = {"path": sent.json()[0], "orig_name": "start.png", "meta": FILE_META}
        answers = {
            typed: _page_call(http, "gradio_api/run/predict", events["image_given"], [image, typed], f"drop-{n}")
            for n, typed in enumerate((1.5, -1, None, 1, 0.3, 0))
        }
    for typed, r in answers.items():
        assert r.status_code == 200, (typed, r.status_code, r.text)
    assert [answers[typed].json()["data"] for typed in (1.5, -1, None, 1)] == [[0.6]] * 4
    assert [answers[typed].json()["data"] for typed in (0.3, 0)] == [[{"__type__": "update"}]] * 2
