"""The app: UI around an injected service, and the real app served on loopback with a tiny package."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402

from ernie_nf4.package.metadata import read_metadata  # noqa: E402

from .support.app import BOUND, ROOT, RUN_ENDED, chromium_path, free_port, playwright_api  # noqa: E402


def test_api_exposes_generate_with_the_documented_parameters(fake_app):
    _, client = fake_app
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    names = [p["parameter_name"] for p in api["/generate"]["parameters"]]
    assert names == [
        "prompt",
        "negative_prompt",
        "width",
        "height",
        "num_inference_steps",
        "guidance_scale",
        "seed",
        "randomize_seed",
        "use_pe",
        "num_images",
        "lora",
        "lora_scale",
        "init_image",
        "strength",
        "enhanced_prompt",
        "previews",
    ]
    assert "/stats" in api


def test_generate_returns_pngs_with_parameters_and_the_seed_used(fake_app):
    service, client = fake_app
    images, seed, revised, info = client.predict(
        "一只小猫 🐱", "blurry", 96, 64, 3, 2.5, 77, False, False, 2, api_name="/generate"
    )
    assert seed == 77
    assert revised == "revised: 一只小猫 🐱"
    assert "seed 77, 78" in info
    # size and seed, then the prompt (Gradio's gallery makes the caption the image's alt text)
    assert [item["caption"] for item in images] == ["96×64 · seed 77 · 一只小猫 🐱", "96×64 · seed 78 · 一只小猫 🐱"]
    with Image.open(images[1]["image"]) as png:
        assert png.format == "PNG" and png.size == (96, 64)
        text = png.info["parameters"]
    assert text.startswith("一只小猫 🐱\nNegative prompt: blurry\n")
    assert "Steps: 3, Sampler: FlowMatchEuler, CFG scale: 2.5, Seed: 78, Size: 96x64, Model: fake" in text
    assert Path(images[0]["image"]).name.startswith("ernie-")


def test_randomize_seed_uses_and_returns_a_new_seed(fake_app):
    service, client = fake_app
    seeds = {client.predict("cat", "", 64, 64, 1, 4.0, 5, True, True, 1, api_name="/generate")[1] for _ in range(3)}
    assert 5 not in seeds and len(seeds) == 3
    assert service.requests[-1].seed in seeds


def test_bad_input_gives_an_error_naming_the_field_and_the_server_keeps_serving(fake_app):
    _, client = fake_app
    with pytest.raises(Exception, match=r"width must be in \[64, 2048\]"):
        client.predict("cat", "", 0, 64, 1, 4.0, 5, False, True, 1, api_name="/generate")
    images, _, _, info = client.predict("cat", "", 1000, 64, 1, 4.0, 5, False, True, 1, api_name="/generate")
    assert "width 1000 → 1008 (a multiple of 16)" in info
    assert Image.open(images[0]["image"]).size == (1008, 64)
    with pytest.raises(Exception, match="prompt must be a non-blank text"):
        client.predict("   ", "", 64, 64, 1, 4.0, 5, False, True, 1, api_name="/generate")
    assert client.predict("cat", "", 64, 64, 1, 4.0, 5, False, True, 1, api_name="/generate")[1] == 5


@pytest.mark.browser
def test_stop_ends_the_run_within_a_step(fake_app):
    service, client = fake_app
    sync_api = playwright_api()
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=flags, headless=True)
        page = browser.new_page()
        page.set_default_timeout(BOUND)
        page.goto(client.src)
        page.locator("#prompt textarea").fill("slow cat")
        page.locator("#advanced").get_by_text("Advanced").click()
        steps, slider = page.locator("#steps input[type=number]"), page.locator("#steps input[type=range]")
        steps.wait_for(state="visible")
        for _ in range(5):  # the accordion may still be opening: type until the slider shows the value
            steps.fill("200")
            steps.press("Enter")
            try:
                sync_api.expect(slider).to_have_value("200", timeout=5_000)
                break
            except AssertionError:
                continue
        sync_api.expect(slider).to_have_value("200")
        page.locator("#generate").click()
        page.get_by_text("denoising · step").first.wait_for()
        page.get_by_role("button", name="Stop").click()
        stopped = "document.querySelector('#info textarea').value.startsWith('Stopped. Nothing was kept')"
        page.wait_for_function(stopped)
        page.wait_for_function(RUN_ENDED)  # the page has the run's last message: an error would show now
        assert page.get_by_text("Error").count() == 0
        browser.close()
    assert service.requests[-1].num_inference_steps == 200
    assert service.steps_done < 200


def test_served_tiny_app_generates_reproducible_pngs(served_tiny_app):
    _, client, model_dir = served_tiny_app
    args = ("an orange cat on a table", "", 64, 64, 2, 4.0, 1234, False, True, 1)
    first = client.predict(*args, api_name="/generate")
    second = client.predict(*args, api_name="/generate")
    a, b = Path(first[0][0]["image"]), Path(second[0][0]["image"])
    with Image.open(a) as png:
        assert "Seed: 1234, Size: 64x64" in png.info["parameters"]
        assert "TINY RANDOM MODEL" in png.info["parameters"]
        first_pixels = np.asarray(png)
    with Image.open(b) as png:
        assert np.array_equal(first_pixels, np.asarray(png))
    assert a != b and a.read_bytes() == b.read_bytes()  # two files, the same bytes
    assert first[2] == second[2]  # same seeded PE output
    assert (model_dir / "quantization_metadata.json").is_file()


@pytest.mark.slow
def test_auth_protects_the_app(tmp_path):
    port = free_port()
    cmd = [
        sys.executable,
        "app.py",
        "--tiny",
        "--port",
        str(port),
        "--auth",
        "ann:s3cret",
        "--model-dir",
        tmp_path / "p",
    ]
    log = tmp_path / "app.log"
    proc = subprocess.Popen(list(map(str, cmd)), cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 60
        while True:
            try:
                client = Client(url, auth=("ann", "s3cret"), verbose=False)
                break
            except Exception:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.5)
        assert "/generate" in client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        with pytest.raises(Exception):  # noqa: B017 - gradio_client's error for a refused login
            Client(url, auth=("ann", "wrong"), verbose=False)
        with pytest.raises(Exception):  # noqa: B017
            Client(url, verbose=False)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    bad = subprocess.run([sys.executable, "app.py", "--auth", "nopassword"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "--auth must be USER:PASS" in bad.stderr
    bad = subprocess.run([sys.executable, "app.py", "--max-pe-tokens", "0"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "max_pe_tokens must be an integer in [1, 8192] or None, got 0" in bad.stderr


def test_stats_endpoint_reports_the_metadata_figures(served_tiny_app):
    _, client, model_dir = served_tiny_app
    client.predict("cat", "", 64, 64, 1, 1.0, 1, False, False, 1, api_name="/generate")
    stats = client.predict(api_name="/stats")
    meta = read_metadata(model_dir)
    assert stats["package"]["bytes_before"] == meta["totals"]["bytes_before"]
    assert stats["package"]["bytes_on_disk"] == sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file())
    assert stats["package"]["verified"] is True and stats["package"]["name"] == model_dir.name
    assert str(model_dir) not in json.dumps(stats)  # the operator's path is not shown to clients
    components = {c["name"]: c for c in stats["package"]["components"]}
    for name, component in meta["components"].items():
        assert components[name]["bytes_on_disk"] == component["bytes_after"]
        assert components[name]["bytes_before"] == component["bytes_before"]
        assert components[name]["quantized"] == (component["action"] == "quantized")
    assert stats["live"]["loaded"] and stats["live"]["load_seconds"] > 0
    assert stats["live"]["memory_mode"] == "all-on-gpu" and stats["live"]["compiled"] is False
    assert stats["live"]["last_run_seconds"]["total"] > 0


@pytest.mark.browser
@pytest.mark.slow
def test_browser_generates_an_image_and_shows_the_stats(served_tiny_app, tmp_path):
    sync_api = playwright_api()
    url, _, _ = served_tiny_app
    shots = tmp_path  # screenshots for a person to look at when the test fails; never into the repo
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=flags, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(BOUND)
        page.goto(url)
        page.locator("#prompt textarea").fill("a red boat on a lake at sunset")
        page.get_by_label("Resolution").click()
        page.get_by_role("option", name="9:16 · 768×1376").click()
        page.locator("#generate").click()
        page.locator("#gallery img").first.wait_for(timeout=4 * BOUND)  # the tiny model on a CPU
        sync_api.expect(page.locator("#info textarea")).to_have_value(re.compile("seed"), timeout=BOUND)
        page.screenshot(path=str(shots / "app-generate.png"), full_page=True)
        page.get_by_role("tab", name="Stats").click()
        stats = page.locator("#stats")
        stats.get_by_text("transformer").first.wait_for()
        assert "total" in stats.inner_text()
        page.get_by_text("Original vs NF4 per component").wait_for()
        page.locator("#chart .marks").first.wait_for()  # the chart is drawn before the screenshot
        page.screenshot(path=str(shots / "app-stats.png"), full_page=True)
        browser.close()


def test_without_a_gpu_the_app_says_what_is_missing(tmp_path):
    import torch

    from app import build_demo
    from ernie_nf4.serving.service import ImageService, ServiceConfig

    if torch.cuda.is_available():
        pytest.skip("only meaningful without a GPU")
    service = ImageService(ServiceConfig(model_dir=str(tmp_path / "pkg")))
    assert "No CUDA GPU found" in service.unavailable_reason() and "--tiny" in service.unavailable_reason()
    demo = build_demo(service, output_dir=str(tmp_path / "out"))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        with pytest.raises(Exception, match=r"No CUDA GPU found.*python app.py --tiny"):
            client.predict("cat", "", 64, 64, 1, 4.0, 1, False, False, 1, api_name="/generate")
        assert not (tmp_path / "pkg").exists()  # nothing was downloaded or built
    finally:
        demo.close()


def test_the_tiny_models_prompt_enhancer_writes_a_few_tokens_unless_told(monkeypatch):
    from ernie_nf4.webapp.cli import TINY_PE_TOKENS, build_parser, config_from_args, parse_args

    monkeypatch.delenv("ERNIE_NF4_MAX_PE_TOKENS", raising=False)
    assert config_from_args(build_parser().parse_args(["--tiny"])).max_pe_tokens == TINY_PE_TOKENS <= 64
    assert config_from_args(parse_args(["--tiny", "--max-pe-tokens", "300"], {})).max_pe_tokens == 300
    assert config_from_args(build_parser().parse_args([])).max_pe_tokens is None  # the full model: its own limit


def test_memory_mode_and_compile_flags_reach_the_service(monkeypatch):
    from ernie_nf4.runtime.memory_modes import MemoryMode
    from ernie_nf4.webapp.cli import build_parser, config_from_args

    monkeypatch.delenv("ERNIE_NF4_COMPILE", raising=False)
    config = config_from_args(build_parser().parse_args(["--memory-mode", "low-vram", "--compile"]))
    assert config.memory_mode is MemoryMode.LOW_VRAM and config.compile is True
    config = config_from_args(build_parser().parse_args([]))
    assert config.memory_mode is MemoryMode.AUTO and config.compile is None  # None: compiled on a CUDA GPU
    monkeypatch.setenv("ERNIE_NF4_MEMORY_MODE", "low-vram")
    monkeypatch.setenv("ERNIE_NF4_COMPILE", "1")
    config = config_from_args(build_parser().parse_args([]))
    assert config.memory_mode is MemoryMode.LOW_VRAM and config.compile is True
    monkeypatch.setenv("ERNIE_NF4_COMPILE", "0")
    assert config_from_args(build_parser().parse_args([])).compile is False
    bad = subprocess.run([sys.executable, "app.py", "--memory-mode", "tiny"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "--memory-mode (or ERNIE_NF4_MEMORY_MODE): memory_mode must be one of" in bad.stderr
    assert "got 'tiny'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    from ernie_nf4.serving.service import ServiceConfig

    with pytest.raises(
        ValueError, match=r"memory_mode must be one of \['auto', 'all-on-gpu', 'low-vram'\], got 'model-offload'"
    ):
        ServiceConfig(memory_mode="model-offload")


@pytest.mark.slow
def test_the_app_serves_seconds_after_it_starts(tmp_path, record_property):
    """Gradio's own start-up, model aside: from ``python app.py`` to the page answering (the model, on a GPU, loads
    in the background meanwhile; timed in scripts/gpu_first_image.py)."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "app.py", "--tiny", "--device", "cpu", "--port", str(port), "--no-preload"]
    cmd += ["--model-dir", str(tmp_path / "pkg"), "--output-dir", str(tmp_path / "out")]
    log = tmp_path / "app.log"
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/config", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.perf_counter() - start < 120, log.read_text()
            time.sleep(0.1)
        seconds = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    record_property("gradio_start_seconds", round(seconds, 2))
    print(f"python app.py serves after {seconds:.1f} s")
    assert seconds < 60
    assert not (tmp_path / "pkg").exists()  # --no-preload: nothing loaded before the first request


def test_a_run_that_gave_its_images_is_never_reported_as_stopped(tmp_path):
    """Stop pressed while the last image is decoded: the run has finished, and shows and keeps its result."""
    from ernie_nf4.webapp.handlers import Handlers

    from .support.app import FakeService

    class StopDuringTheDecode(FakeService):
        def generate(self, request, on_progress=None, cancel=None):
            result = super().generate(request, on_progress, cancel)
            cancel.set()  # what Stop does to the run's signal
            return result

    handlers = Handlers(StopDuringTheDecode(), tmp_path)
    gallery, seed, _, info, made = handlers.generate(
        "cat", "", 64, 64, 2, 4.0, 9, False, False, 1, request=None, progress=lambda *a, **k: None
    )
    assert info.startswith("seed 9 ") and seed == 9
    assert [Path(path).is_file() for path, _ in gallery] == [True] and len(made) == 1


def test_the_progress_bar_never_goes_back_across_stages_and_images():
    from ernie_nf4.progress import Progress
    from ernie_nf4.webapp.run_progress import PageProgress

    shown = []
    show = PageProgress(lambda fraction, desc: shown.append((fraction, desc)))
    events = [Progress("pe", done=token, total=8, unit="tokens") for token in range(1, 9)]
    events.append(Progress("text_encoding"))
    for image in (1, 2, 3):  # the library counts the steps of the whole run (4 per image) and names the image
        first = (image - 1) * 4
        steps = [Progress("denoising", done=first + s, total=12, unit="steps", image=image, images=3) for s in range(5)]
        events += [*steps, Progress("vae_decode", done=first + 4, total=12, unit="steps", image=image, images=3)]
    for event in events:
        show(event)
    fractions = [fraction for fraction, _ in shown]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    texts = [text for _, text in shown]
    assert "prompt enhancer · 5 / 8 tokens · overall" in texts  # the run's stages: the amount is the run's
    assert "denoising · image 2 of 3 · step 3/4 · overall" in texts
