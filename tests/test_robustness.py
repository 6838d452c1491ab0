"""Hard to break: bad input through the API, concurrent clients, OOM, damaged packages, soak, security."""

import json
import math
import threading
from dataclasses import astuple, replace
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from PIL import Image

from ernie_nf4.package.metadata import METADATA_FILE
from ernie_nf4.request import FormValues, request_from_form

pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402

from .support.app import ROOT  # noqa: E402

GOOD = {
    "prompt": "一只橙色的小猫 🐱 on a table",
    "negative_prompt": "",
    "width": 64,
    "height": 64,
    "num_inference_steps": 1,
    "guidance_scale": 4.0,
    "seed": 7,
    "randomize_seed": False,
    "use_pe": False,
    "num_images": 1,
    "lora": "",
    "lora_scale": 1.0,
    "init_image": None,
    "strength": 1.0,
    "enhanced_prompt": "",
    "previews": False,
}
BAD = [
    ({"prompt": ""}, "prompt must be a non-blank text"),
    ({"prompt": "   \n "}, "prompt must be a non-blank text"),
    ({"prompt": None}, "prompt must be text"),
    ({"prompt": "x" * 100_000}, "prompt must be at most 8000 characters"),
    ({"negative_prompt": "x" * 100_000}, r"Negative prompt \(negative_prompt\) must be at most 8000 characters"),
    ({"width": 0}, r"width must be in \[64, 2048\]"),
    ({"width": -64}, r"width must be in \[64, 2048\]"),
    ({"width": 10**9}, r"width must be in \[64, 2048\]"),
    ({"height": 65.5}, "height must be a whole number"),
    ({"height": "tall"}, "height must be a whole number"),
    ({"num_inference_steps": 0}, r"Steps \(num_inference_steps\) must be in \[1, 200\]"),
    ({"num_inference_steps": -3}, r"Steps \(num_inference_steps\) must be in \[1, 200\]"),
    ({"num_inference_steps": 10_000}, r"Steps \(num_inference_steps\) must be in \[1, 200\]"),
    ({"guidance_scale": math.nan}, r"Guidance \(guidance_scale\) must be a finite number"),
    ({"guidance_scale": math.inf}, r"Guidance \(guidance_scale\) must be a finite number"),
    ({"guidance_scale": -1.0}, r"Guidance \(guidance_scale\) must be in \[0.0, 30.0\]"),
    ({"guidance_scale": 1e6}, r"Guidance \(guidance_scale\) must be in \[0.0, 30.0\]"),
    ({"seed": -1}, "seed must be in"),
    ({"seed": 2**64}, "seed must be in"),
    ({"num_images": 0}, r"Images \(num_images\) must be in \[1, 4\]"),
    ({"num_images": 100}, r"Images \(num_images\) must be in \[1, 4\]"),
    ({"use_pe": "yes"}, r"Prompt enhancer \(use_pe\) must be true or false"),
    ({"randomize_seed": "yes"}, r"Randomize seed \(randomize_seed\) must be true or false"),
    ({"randomize_seed": 1}, r"Randomize seed \(randomize_seed\) must be true or false"),
    ({"lora_scale": math.inf}, r"LoRA scale \(lora_scale\) must be a finite number"),  # with no LoRA picked too
    ({"lora_scale": -5}, r"LoRA scale \(lora_scale\) must be in \[0.0, 2.0\]"),
]


def call_raw(url: str, values: dict) -> str:
    """POST /gradio_api/call/generate with plain JSON (NaN and inf allowed) and return the streamed result, or the
    refusal's text when the form's validator refuses it before it is queued (HTTP 422)."""
    body = json.dumps({"data": list(values.values())}, allow_nan=True)
    with httpx.Client(base_url=url, timeout=60) as http:
        event = http.post("/gradio_api/call/generate", content=body, headers={"Content-Type": "application/json"})
        if event.status_code == 422:
            return "event: error\n" + event.text
        event.raise_for_status()
        return http.get(f"/gradio_api/call/generate/{event.json()['event_id']}").text


@pytest.mark.parametrize(
    "change, message", BAD, ids=[f"{next(iter(c))}={str(next(iter(c.values())))[:12]}" for c, _ in BAD]
)
def test_bad_input_through_the_api_is_refused_with_the_field_and_range(served_tiny_app, change, message):
    import re

    url, _, _ = served_tiny_app
    stream = call_raw(url, {**GOOD, **change})
    assert "event: error" in stream
    assert re.search(message, stream), stream[:500]


def test_snapped_and_cleaned_values_are_reported_and_the_server_keeps_serving(served_tiny_app):
    url, client, _ = served_tiny_app
    for change, _ in BAD[:3]:
        call_raw(url, {**GOOD, **change})
    values = {**GOOD, "width": 1000, "prompt": "a cat\x00\x07 on a mat"}
    images, seed, _, info = client.predict(*values.values(), api_name="/generate")
    assert "width 1000 → 1008 (a multiple of 16)" in info
    assert "prompt: removed 2 control character(s)" in info
    with Image.open(images[0]["image"]) as png:
        assert png.size == (1008, 64)
        assert png.info["parameters"].startswith("a cat on a mat\n")
    images, *_ = client.predict(*GOOD.values(), api_name="/generate")  # Chinese and emoji
    assert "一只橙色的小猫 🐱" in Image.open(images[0]["image"]).info["parameters"]


def test_form_values_are_coerced_only_where_safe():
    request, notes = request_from_form(FormValues("cat", None, 64.0, "80", 2.0, "4.5", 3, use_pe=True, num_images=1))
    assert (request.width, request.height, request.num_inference_steps, request.guidance_scale, request.seed) == (
        64,
        80,
        2,
        4.5,
        3,
    )
    assert notes == []
    with pytest.raises(ValueError, match="num_inference_steps must be a whole number"):
        request_from_form(FormValues("cat", "", 64, 64, 2.5, 4.0, 3, use_pe=True, num_images=1))
    request, notes = request_from_form(FormValues("cat", "", 2047, 70, 2, 4.0, 3, use_pe=False, num_images=1))
    assert (request.width, request.height) == (2048, 64)
    assert len(notes) == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [("prompt", " "), ("width", 10**9), ("num_inference_steps", 2.5), ("guidance_scale", "x"), ("num_images", 9)],
)
def test_a_refused_form_names_its_field_as_data_and_the_ui_marks_that_field(field, value, tmp_path):
    pytest.importorskip("gradio")
    from ernie_nf4.errors import InvalidArgument
    from ernie_nf4.webapp.handlers import FORM_FIELDS, Handlers
    from ernie_nf4.webapp.i18n import field_name

    form = FormValues("cat", "", 64, 64, 2, 4.0, 3, use_pe=True, num_images=1)
    bad = replace(form, **{field: value})
    with pytest.raises(InvalidArgument) as refused:
        request_from_form(bad)
    assert refused.value.field == field
    from .support.app import FakeService

    handlers = Handlers(FakeService(), tmp_path)
    checks = dict(zip(FORM_FIELDS, handlers.validate(*astuple(bad)), strict=True))
    assert [name for name, check in checks.items() if not check["is_valid"]] == [field]
    assert checks[field]["message"] == str(refused.value).replace(field, field_name(field), 1)
    chinese = SimpleNamespace(headers={"accept-language": "zh-CN,zh;q=0.9,en;q=0.8"})  # what a Chinese browser sends
    checks = dict(zip(FORM_FIELDS, handlers.validate(*astuple(bad), request=chinese), strict=True))
    assert [name for name, check in checks.items() if not check["is_valid"]] == [field]
    assert f"（{field}）" in checks[field]["message"] and "must" not in checks[field]["message"]


@pytest.mark.parametrize("change", [c for c, _ in BAD], ids=[f"{next(iter(c))}-{i}" for i, (c, _) in enumerate(BAD)])
def test_every_refusal_of_the_form_is_said_in_chinese_naming_its_field(change):
    pytest.importorskip("gradio")
    from ernie_nf4.webapp.i18n import FIELD_NAMES_EN, FIELD_NAMES_ZH
    from ernie_nf4.webapp.messages import user_message

    with pytest.raises(ValueError) as refused:
        request_from_form(FormValues(**{**GOOD, **change}))
    field = refused.value.field
    message = user_message(refused.value, "zh")
    assert message.startswith(f"{FIELD_NAMES_ZH[field]}（{field}）") and "must" not in message, message
    name = f"{FIELD_NAMES_EN[field]} ({field})" if field in FIELD_NAMES_EN else field  # prompt, width: as they are
    assert user_message(refused.value, "en") == str(refused.value).replace(field, name, 1)


def test_history_lookups_answer_only_for_images_this_server_gave_that_client(tmp_path):
    pytest.importorskip("gradio")
    from ernie_nf4.webapp.handlers import RESTORED_FIELDS, Handlers
    from ernie_nf4.webapp.history import LIMIT

    from .support.app import FakeService

    handlers = Handlers(FakeService(), tmp_path)
    form = ("a victim's secret prompt", "", 64, 64, 1, 4.0, 42, False, False, 1)
    *_, made = handlers.generate(*form, request=None, progress=lambda *a, **k: None)
    victim = made[0]["file"]
    other_server = Handlers(FakeService(), tmp_path)  # same folder, its own key
    *_, theirs = other_server.generate(*form, request=None, progress=lambda *a, **k: None)
    guessed = [f"ernie-{i:04d}.png" for i in range(20)]
    for forged in (
        [{"file": victim}],  # a known (or guessed) file name, no signature
        [{"file": victim, "sig": "0" * 64}],
        [{"file": victim, "sig": other_server.history.entry(victim)["sig"]}],
        [{"file": name, "sig": made[0]["sig"]} for name in guessed],
        theirs,  # an image this server never gave out
        [victim, None, 7],
    ):
        state, gallery, _ = handlers.show_history(forged)
        assert state == [] and gallery == [], forged
        assert handlers.use_history(forged, 0)[: len(RESTORED_FIELDS)] == [gr_skip()] * len(RESTORED_FIELDS)
    state, gallery, note = handlers.show_history(made)  # the victim's own entry
    assert [entry["file"] for entry in state] == [victim] and "a victim's secret prompt" in gallery[0][1]
    assert handlers.use_history(made, 0)[0] == "a victim's secret prompt" and note == ""
    # At most LIMIT entries are read per lookup: one past them is not looked at.
    state, _, note = handlers.show_history([{"file": "x.png", "sig": "0"}] * LIMIT + made)
    assert state == [] and note.startswith(f"{LIMIT} entry(ies)")


def gr_skip():
    import gradio as gr

    return gr.skip()


@pytest.mark.slow
def test_twenty_concurrent_clients_get_their_own_results(served_tiny_app):
    url, _, _ = served_tiny_app
    results, errors = {}, []
    start = threading.Barrier(20, timeout=120)

    def user(index: int) -> None:
        try:
            client = Client(url, verbose=False)
            start.wait()  # all 20 connected: their requests now arrive together
            for round_ in range(3):
                seed = 1000 + (index * 3 + round_) % 30  # every seed is asked for by two users
                job = client.submit(*{**GOOD, "seed": seed}.values(), api_name="/generate")
                images, got_seed, _, _ = job.result(timeout=300)
                with Image.open(images[0]["image"]) as png:
                    assert f"Seed: {seed}," in png.info["parameters"]
                    results[(index, round_)] = (got_seed, seed, np.asarray(png).copy())
        except Exception as err:  # collected and reported below
            errors.append(repr(err))

    threads = [threading.Thread(target=user, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors[:3]
    assert len(results) == 60
    by_seed = {}
    for got_seed, seed, pixels in results.values():
        assert got_seed == seed
        by_seed.setdefault(seed, []).append(pixels)
    assert len(by_seed) == 30
    for pixels in by_seed.values():
        assert len(pixels) == 2 and np.array_equal(pixels[0], pixels[1])
    assert not np.array_equal(by_seed[1000][0], by_seed[1001][0])


def test_waiting_clients_see_their_queue_position(fake_app):
    _, client_one = fake_app
    clients = [Client(client_one.src, verbose=False) for _ in range(4)]
    jobs = [
        c.submit(*{**GOOD, "prompt": "slow cat", "num_inference_steps": 3}.values(), api_name="/generate")
        for c in clients
    ]
    seen = set()
    while not all(job.done() for job in jobs):
        for job in jobs:
            status = job.status()
            if status.code.name == "IN_QUEUE" and status.rank is not None:
                seen.add((status.rank, status.queue_size))
    assert all(job.result()[1] == GOOD["seed"] for job in jobs)
    assert max(rank for rank, _ in seen) >= 1, seen


@pytest.mark.slow
def test_soak_200_generations_keep_memory_flat(served_tiny_app):
    import os

    import psutil

    url, client, _ = served_tiny_app
    server = [p for p in psutil.Process(os.getpid()).children() if "app.py" in " ".join(p.cmdline())][0]
    rss = []
    for index in range(200):
        client.predict(*{**GOOD, "seed": index}.values(), api_name="/generate")
        if index in (29, 199):
            rss.append(server.memory_info().rss)
    assert rss[1] <= 1.10 * rss[0], f"server RSS grew from {rss[0] / 2**20:.0f} to {rss[1] / 2**20:.0f} MiB"


def test_only_the_apps_own_files_are_served(served_tiny_app, tmp_path):
    url, client, model_dir = served_tiny_app
    images, *_ = client.predict(*GOOD.values(), api_name="/generate")
    with httpx.Client(base_url=url, timeout=30) as http:
        for path in ("/etc/passwd", str(model_dir / METADATA_FILE), str(ROOT / "app.py")):
            assert http.get(f"/gradio_api/file={path}").status_code in (403, 404), path
    name = Path(images[0]["image"]).name
    assert name.startswith("ernie-") and name.endswith(".png") and "/" not in name


def test_share_and_a_non_loopback_bind_warn_and_name_auth():
    from ernie_nf4.webapp.cli import exposure_warning, parse_args

    def warning(*argv):
        return exposure_warning(parse_args(list(argv), environ={}))

    assert "anyone with the link" in warning("--share") and "--auth" in warning("--share")
    assert "protected by --auth" in warning("--share", "--auth", "ann:pw")
    assert "reachable from other machines" in warning("--host", "0.0.0.0")
    assert warning("--host", "0.0.0.0", "--auth", "ann:pw") is None
    assert warning() is None


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_chinese_browser_reads_why_the_model_cannot_load_here(tmp_path):
    from ernie_nf4.errors import EnvironmentUnsupported
    from ernie_nf4.serving.service import ImageService, ServiceConfig
    from ernie_nf4.webapp.messages import user_message

    with pytest.raises(EnvironmentUnsupported) as refused:  # the full model on a machine without a CUDA GPU
        ImageService(ServiceConfig(model_dir=str(tmp_path / "pkg"))).load()
    assert user_message(refused.value, "en") == str(refused.value)
    assert user_message(refused.value, "zh").startswith("未找到 CUDA GPU：ERNIE-Image NF4 需要一块 NVIDIA GPU")
