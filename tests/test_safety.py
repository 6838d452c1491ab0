"""Safety of the app and of quantize.py, proven with real things — a real server on loopback, real files, a real
SIGINT — and hostile clients built here (httpx, bounded loops, 127.0.0.1 only): sources never overwritten, junk
settings refused in one line, Stop and disconnects, queue and size limits, errors as text, where the app listens."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from ernie_nf4.errors import PackageError
from ernie_nf4.package.check import check_package

pytest.importorskip("gradio")
from app import build_demo  # noqa: E402
from ernie_nf4.webapp import limits as app_limits  # noqa: E402
from ernie_nf4.webapp.outputs import OutputStore  # noqa: E402

from .support.app import ROOT, FakeService, free_port, wait_for_server, wait_until  # noqa: E402

ENV = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "CUDA_VISIBLE_DEVICES": ""}
FORM = ["a cat", "", 64, 64, 2, 4.0, 7, False, False, 1, "", 1.0, None, 1, "", False]  # prompt … previews


def slow_form(steps=50, prompt="slow cat"):
    return [prompt, "", 64, 64, steps, 4.0, 7, False, False, 1, "", 1.0, None, 1, "", False]


# ---------------------------------------------------------------- servers


def start_app(tmp_path, *flags, env=None):
    port = free_port()
    log = tmp_path / f"app-{port}.log"
    cmd = [sys.executable, "app.py", "--tiny", "--device", "cpu", "--port", str(port), *map(str, flags)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env or ENV, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    wait_for_server(url, proc, log)
    return proc, url, log


@pytest.fixture(scope="module")
def limited_app(tmp_path_factory):
    """python app.py --tiny with small limits, as an operator would start it for anonymous users."""
    tmp = tmp_path_factory.mktemp("limited")
    flags = ["--model-dir", tmp / "tiny", "--output-dir", tmp / "out", "--max-queue", 5, "--max-jobs-per-client", 3]
    proc, url, log = start_app(tmp, *flags, "--keep-outputs", 2, "--max-upload-mb", 1)
    yield url, proc, tmp / "out"
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture()
def fake_server(tmp_path):
    """The app around a FakeService whose 'slow' prompts take 0.2 s a step, behind the same limits as main()."""
    service = FakeService()
    demo = build_demo(service, output_dir=OutputStore(tmp_path / "out"))
    launch = app_limits.configure(demo, app_limits.Limits(max_jobs_per_client=10))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch)
    ids = {fn.api_name or fn.name: fn._id for fn in demo.fns.values()}
    yield service, f"http://127.0.0.1:{port}/", ids, tmp_path / "out"
    demo.close()


def join(http, fn_index, data, session):
    return http.post(
        "gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session, "trigger_id": None}
    )


# ---------------------------------------------------------------- files and quantize.py


def quantize(*args, timeout=300):
    cmd = [sys.executable, "quantize.py", *map(str, args), "--components", "text_encoder", "pe", "--device", "cpu"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    out = tmp_path_factory.mktemp("src") / "ERNIE-Image-tiny"
    subprocess.run(
        [sys.executable, "-m", "ernie_nf4.synthetic", "--output", str(out), "--size", "tiny"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env=ENV,
        timeout=300,
    )
    return out


def tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))}


@pytest.mark.slow
def test_overwrite_never_replaces_the_source_its_ancestors_inside_it_or_a_non_package(tiny_source, tmp_path):
    src = tmp_path / "holder" / "orig"
    shutil.copytree(tiny_source, src)
    (tmp_path / "holder" / "mine.txt").write_text("keep me")
    before = tree(tmp_path / "holder")
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8 not a package")
    for output in (src, src.parent, src / "out", src / "transformer" / "out", other):
        result = quantize("--source", src, "--output", output, "--overwrite")
        assert result.returncode != 0, output
        assert "Traceback" not in result.stderr
        assert f"{output}" in result.stderr, result.stderr
    assert tree(tmp_path / "holder") == before
    assert (other / "cat.jpg").read_bytes() == b"\xff\xd8 not a package"


@pytest.mark.slow
def test_overwrite_onto_a_file_is_refused_and_leaves_no_old_copy(tiny_source, tmp_path):
    target = tmp_path / "pkg"
    target.write_text("a file")
    result = quantize("--source", tiny_source, "--output", target, "--overwrite")
    assert result.returncode != 0 and "is a file" in result.stderr and "Traceback" not in result.stderr
    assert target.read_text() == "a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]  # no .pkg.old-PID


HOLD_FIRST_WRITE = """
import pathlib, time
import safetensors.torch

_save_file = safetensors.torch.save_file


def save_file(*args, **kwargs):
    pathlib.Path({marker!r}).touch()
    while not pathlib.Path({release!r}).exists():  # held until Ctrl-C (in the main thread) or the release file
        time.sleep(0.05)
    return _save_file(*args, **kwargs)


safetensors.torch.save_file = save_file
"""


@pytest.mark.slow
def test_ctrl_c_during_a_build_prints_one_line_and_keeps_nothing(tiny_source, tmp_path):
    # a sitecustomize module holds the build inside its first weight write, so Ctrl-C always lands mid-build
    # (a write in a worker thread, which Ctrl-C does not stop, is let go once the signal is sent)
    hook, marker, release = tmp_path / "hook", tmp_path / "writing", tmp_path / "hook" / "release"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD_FIRST_WRITE.format(marker=str(marker), release=str(release)))
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(hook), ENV.get("PYTHONPATH", "")])}
    out = tmp_path / "pkg"
    cmd = [sys.executable, "quantize.py", "--source", str(tiny_source), "--output", str(out)]
    cmd += ["--components", "text_encoder", "pe", "--device", "cpu"]
    # as from a terminal: Ctrl-C's default handling, also where this test's own runner ignores SIGINT
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, preexec_fn=default_sigint, **pipes)
    assert wait_until(lambda: marker.exists() or proc.poll() is not None, seconds=120)
    assert proc.poll() is None, proc.communicate()
    assert any(p.name not in {"hook", "writing"} for p in tmp_path.iterdir())  # the side folder is there
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    release.touch()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in err, err
    assert "interrupted" in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name not in {"hook", "writing"}] == []  # nothing kept


def test_a_tiny_disk_names_real_figures_not_zero(tmp_path):
    from ernie_nf4.build.quantize import _check_disk
    from ernie_nf4.errors import EnvironmentUnsupported

    with pytest.raises(EnvironmentUnsupported) as info:
        _check_disk(tmp_path, 10**18)
    assert "0.00 GB" not in str(info.value)


def test_component_classes_come_only_from_the_allow_list(tmp_path):
    from ernie_nf4.synthetic.original import build_original

    folder = build_original(tmp_path / "orig", size="tiny", seed=0)
    index = json.loads((folder / "model_index.json").read_text())
    index["vae"] = ["os", "system"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(PackageError, match=r"component 'vae' names \['os', 'system'\], which is not allowed"):
        check_package(folder)


def test_a_hostile_safetensors_header_is_refused_when_opened(tmp_path):
    from ernie_nf4.synthetic.original import build_original

    folder = build_original(tmp_path / "orig", size="tiny", seed=0)
    weights = next((folder / "vae").glob("*.safetensors"))
    size = weights.stat().st_size
    # a header length of 2^62 bytes: a naive reader allocates it
    weights.write_bytes((2**62).to_bytes(8, "little") + b"{}" + b"\0" * (size - 10))
    with pytest.raises(PackageError, match="header length .* does not fit the file"):
        check_package(folder)


# ---------------------------------------------------------------- junk settings


@pytest.mark.parametrize(
    "env, flags, words",
    [
        ({"ERNIE_NF4_PORT": "abc"}, ["--help"], "ERNIE_NF4_PORT"),
        ({"ERNIE_NF4_MAX_PE_TOKENS": "lots"}, [], "ERNIE_NF4_MAX_PE_TOKENS"),
        ({"ERNIE_NF4_VARIANT": "sdxl"}, [], "ERNIE_NF4_VARIANT"),
        ({}, ["--port", "99999"], "--port"),
        ({"ERNIE_NF4_HOST": "not-a-host"}, [], "--host"),
        ({"ERNIE_NF4_TINY": "ture"}, [], "ERNIE_NF4_TINY"),
        ({"ERNIE_NF4_KEEP_OUTPUTS": "many"}, [], "ERNIE_NF4_KEEP_OUTPUTS"),
        ({"ERNIE_NF4_MAX_QUEUE": "0"}, [], "ERNIE_NF4_MAX_QUEUE"),
        ({"ERNIE_NF4_GPUS": "7,7"}, [], "--gpus"),
    ],
)
def test_junk_settings_end_with_one_line_naming_them(env, flags, words):
    result = subprocess.run(
        [sys.executable, "app.py", *flags], cwd=ROOT, env={**ENV, **env}, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_port_in_use_is_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "app.py", "--tiny", "--port", str(port), "--output-dir", str(tmp_path)],
            cwd=ROOT,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


# ---------------------------------------------------------------- cancel, disconnect, Stop


def test_a_client_that_closes_its_stream_stops_its_run_within_a_step_and_nothing_is_saved(fake_server):
    service, url, _, out = fake_server
    with httpx.Client(base_url=url, timeout=30) as http:
        event = http.post("gradio_api/call/generate", json={"data": slow_form(steps=50)}).json()["event_id"]
        with http.stream("GET", f"gradio_api/call/generate/{event}"):
            assert wait_until(lambda: getattr(service, "steps_done", 0) >= 2)
        # the tab is closed: the stream is gone
        assert wait_until(lambda: service.steps_done < 50 and _settled(service), seconds=5)
    assert service.steps_done < 10, f"ran {service.steps_done} of 50 steps after the client left"
    assert not list(out.glob("*.png"))


def _settled(service, pause=0.5):
    done = service.steps_done
    time.sleep(pause)
    return service.steps_done == done


def test_stop_removes_queued_jobs_and_stops_the_running_one_each_run_its_own_signal(fake_server):
    service, url, ids, out = fake_server
    with httpx.Client(base_url=url, timeout=30) as http:
        assert join(http, ids["generate"], slow_form(steps=40), "tab-a").status_code == 200
        assert wait_until(lambda: len(service.requests) == 1)
        for _ in range(3):  # three more from the same tab wait behind it
            assert join(http, ids["generate"], slow_form(steps=40), "tab-a").status_code == 200
        assert join(http, ids["generate"], slow_form(steps=3, prompt="slow other tab"), "tab-b").status_code == 200
        stopped = http.post(
            "gradio_api/run/predict", json={"fn_index": ids["stop"], "data": [], "session_hash": "tab-a"}
        )
        assert stopped.status_code == 200, stopped.text
        # the other tab's job runs next, to its end; none of tab-a's queued jobs ever starts
        assert wait_until(lambda: len(service.requests) == 2 and _settled(service), seconds=15)
        time.sleep(0.5)
    assert [r.prompt for r in service.requests] == ["slow cat", "slow other tab"]
    assert service.steps_done == 3
    assert len(list(out.glob("*.png"))) == 1  # only tab-b's image


def test_stop_before_the_run_starts_also_stops_a_job_already_in_the_queue_of_an_api_client(fake_server):
    service, url, ids, _ = fake_server
    with httpx.Client(base_url=url, timeout=30) as http:
        assert join(http, ids["generate"], slow_form(steps=10), "tab-c").status_code == 200
        assert wait_until(lambda: len(service.requests) == 1)
        http.post("gradio_api/run/predict", json={"fn_index": ids["stop"], "data": [], "session_hash": "tab-c"})
        with http.stream("GET", "gradio_api/queue/data", params={"session_hash": "tab-c"}) as stream:
            text = ""
            for line in stream.iter_lines():
                text += line + "\n"
                if "process_completed" in line:
                    break
    assert "Stopped. Nothing was kept from this run." in text
    assert service.steps_done < 10


# ---------------------------------------------------------------- limits


@pytest.mark.slow
def test_fifty_quick_enqueues_get_busy_beyond_the_limits(limited_app):
    url, _, _ = limited_app
    codes, texts = [], []
    with httpx.Client(base_url=url, timeout=30) as http:
        config = http.get("config").json()
        ids = {d.get("api_name"): d["id"] for d in config["dependencies"]}
        generate = ids["generate"]
        for i in range(50):
            r = join(http, generate, [f"a cat {i}", *FORM[1:4], 200, *FORM[5:]], f"hostile-{i}")
            codes.append(r.status_code)
            texts.append(r.text)
        for i in range(50):  # free the server: close each session's stream
            http.post(
                "gradio_api/run/predict", json={"fn_index": ids["stop"], "data": [], "session_hash": f"hostile-{i}"}
            )
    assert codes[:3] == [200, 200, 200]
    assert set(codes[3:]) == {429}, codes
    assert "try again" in texts[-1]


def test_a_full_queue_answers_busy_try_again(tmp_path):
    service = FakeService()
    demo = build_demo(service, output_dir=OutputStore(tmp_path / "out"))
    launch = app_limits.configure(demo, app_limits.Limits(max_queue=4, max_jobs_per_client=100))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch)
    generate = next(fn._id for fn in demo.fns.values() if fn.api_name == "generate")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/", timeout=30) as http:
            codes = [join(http, generate, slow_form(steps=5), f"s{i}").status_code for i in range(50)]
            busy = join(http, generate, slow_form(steps=5), "late")
    finally:
        demo.close()
    assert codes.count(200) == 4 and set(codes[4:]) == {503}, codes
    assert "busy" in busy.text and "try again" in busy.text


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_a_50_mb_body_is_refused_quickly_without_memory_growth(limited_app):
    url, proc, _ = limited_app
    before = rss_kib(proc.pid)
    body = b'{"data": ["' + b"x" * 50_000_000 + b'"]}'
    with httpx.Client(base_url=url, timeout=30) as http:
        for path in ("gradio_api/call/generate", "gradio_api/queue/join", "gradio_api/run/predict"):
            start = time.monotonic()
            r = http.post(path, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 413, (path, r.status_code)
            assert time.monotonic() - start < 5
        # the same without a Content-Length (chunked): refused once the cap is passed
        r = http.post(
            "gradio_api/call/generate", content=iter([body[i : i + 2**20] for i in range(0, len(body), 2**20)])
        )
        assert r.status_code == 413
    assert rss_kib(proc.pid) - before < 100_000  # < 100 MB, while the bodies were 50 MB each


@pytest.mark.slow
def test_uploads_are_small_or_off(limited_app, tmp_path):
    url, _, _ = limited_app
    with httpx.Client(base_url=url, timeout=30) as http:
        big = http.post("gradio_api/upload", files={"files": ("big.png", b"\0" * 5_000_000, "image/png")})
        small = http.post("gradio_api/upload", files={"files": ("small.png", b"\x89PNG tiny", "image/png")})
    assert big.status_code == 413 and "files of at most 1 MB are taken here" in big.text  # the size as the flag's
    assert small.status_code == 200
    proc, url_off, _ = start_app(tmp_path, "--max-upload-mb", 0, "--output-dir", tmp_path / "out")
    try:
        off = httpx.post(url_off + "gradio_api/upload", files={"files": ("a.png", b"x", "image/png")})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert off.status_code == 403 and "uploads are off" in off.text


@pytest.mark.slow
def test_outputs_live_in_one_folder_are_served_from_it_and_pruned(limited_app):
    url, _, out = limited_app
    from gradio_client import Client

    client = Client(url, verbose=False)
    for seed in (1, 2, 3):
        client.predict("a cat", "", 64, 64, 1, 4.0, seed, False, False, 1, api_name="/generate")
    pngs = sorted(out.glob("ernie-*.png"))
    assert [p.name.rsplit("-", 1)[1] for p in pngs] == ["2.png", "3.png"]  # --keep-outputs 2
    with httpx.Client(base_url=url, timeout=30) as http:
        event = http.post("gradio_api/call/generate", json={"data": FORM}).json()["event_id"]
        stream = http.get(f"gradio_api/call/generate/{event}").text
    assert str(out) in stream  # served in place, not copied into Gradio's cache


def test_pruning_by_age_and_count(tmp_path):
    store = OutputStore(tmp_path, keep_count=3, keep_hours=1)
    old = tmp_path / "ernie-20260101-000000-000000-1.png"  # named as the app names its PNGs
    old.write_bytes(b"png")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    other = tmp_path / "notes.txt"
    other.write_text("not ours")
    from PIL import Image

    for seed in range(5):
        store.save(Image.new("RGB", (8, 8)), seed, "p")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not old.exists() and other.exists()
    assert len([n for n in names if n.startswith("ernie-")]) == 3


def test_no_folder_is_left_per_start(tmp_path):
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("ernie-nf4-out-*"))
    for _ in range(3):
        build_demo(FakeService(), output_dir=OutputStore(tmp_path / "out"))
    assert set(Path(tempfile.gettempdir()).glob("ernie-nf4-out-*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# ---------------------------------------------------------------- errors and what clients see


def call(url, data):
    with httpx.Client(base_url=url, timeout=60) as http:
        event = http.post("gradio_api/call/generate", json={"data": data})
        event.raise_for_status()
        return http.get(f"gradio_api/call/generate/{event.json()['event_id']}").text


@pytest.mark.slow
def test_missing_fields_and_a_lone_surrogate_get_named_errors(limited_app):
    url, _, _ = limited_app
    with httpx.Client(base_url=url, timeout=60) as http:
        missing = http.post("gradio_api/call/generate", json={"data": ["a cat", "", 64]})
        assert missing.status_code == 422
        assert "/generate is missing height, num_inference_steps" in missing.json()["error"]
        body = b'{"data": ["a \\ud800 cat", "", 64, 64, 1, 4.0, 7, false, false, 1, "", 1.0, null, 1, ""]}'
        event = http.post("gradio_api/call/generate", content=body, headers={"content-type": "application/json"})
    # the form's validator refuses it before it is queued, naming the field
    assert event.status_code == 422, event.text
    assert "prompt holds a character that is not valid Unicode text" in event.text, event.text


@pytest.mark.slow
def test_stats_shows_the_folder_name_only(limited_app):
    url, _, _ = limited_app
    from gradio_client import Client

    stats = json.dumps(Client(url, verbose=False).predict(api_name="/stats"))
    assert "/tmp" not in stats and str(ROOT) not in stats


# ---------------------------------------------------------------- where the app listens


def test_space_env_binding_without_flags(tmp_path):
    port = free_port()
    env = {**ENV, "SPACE_ID": "someone/ernie", "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1"}
    env["ERNIE_NF4_OUTPUT_DIR"] = str(tmp_path / "out")
    log = tmp_path / "app.log"
    proc = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    try:
        wait_for_server(f"http://127.0.0.1:{port}/", proc, log, seconds=60)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_on_a_space_the_default_is_all_interfaces_port_7860():
    from ernie_nf4.webapp.cli import exposure_warning, parse_args

    args = parse_args([], environ={"SPACE_ID": "someone/ernie"})
    assert (args.host, args.port) == ("0.0.0.0", 7860)
    assert "--auth" in exposure_warning(args)
    args = parse_args(["--port", "9000"], environ={"SPACE_ID": "x/y", "GRADIO_SERVER_PORT": "8000"})
    assert args.port == 9000


def test_run_signal_from_a_cancelled_run_does_not_clear_a_newer_one():
    from ernie_nf4.webapp.runs import RunRegistry

    runs = RunRegistry()
    first, second = runs.start("tab"), runs.start("tab")
    assert runs.stop_running("tab") == 2 and first.is_set() and second.is_set()
    runs.end("tab", first)
    third = runs.start("tab")
    runs.end("tab", second)
    assert not third.is_set()
    threading.Thread(target=runs.stop_running, args=("tab",)).start()
    assert third.wait(5)


# ---------------------------------------------------------------- each library error reaches the client as text

GENERIC = "upstream app has raised an exception"


@pytest.fixture(scope="module")
def app_package(tmp_path_factory):
    """A tiny package as ``python app.py --tiny`` builds it on this machine (own metadata, with sha256s): the
    transformer in NF4 only with a GPU (the app's process runs diffusers unpatched, whatever other tests patched)."""
    import torch

    from ernie_nf4.build.quantize import quantize_package
    from ernie_nf4.package.format import QUANTIZABLE
    from ernie_nf4.synthetic.original import build_original

    folder = tmp_path_factory.mktemp("app-package")
    original = build_original(folder / "original", size="tiny")
    components = QUANTIZABLE if torch.cuda.is_available() else ("text_encoder", "pe")
    return quantize_package(str(original), folder / "ERNIE-Image-tiny-NF4", components=components)


@pytest.fixture()
def package_copy(app_package, tmp_path):
    copy = tmp_path / "ERNIE-Image-tiny-NF4"
    shutil.copytree(app_package, copy)
    return copy


def served(tmp_path, package, *flags):
    return start_app(tmp_path, "--model-dir", package, "--output-dir", tmp_path / "out", *flags)


def generate_stream(url) -> str:
    """The raw SSE answer of /generate, and the same error through gradio_client: both must carry the text."""
    from gradio_client import Client

    stream = call(url, FORM)
    assert "event: error" in stream, stream
    with pytest.raises(Exception) as info:
        Client(url, verbose=False).predict(*FORM, api_name="/generate")
    assert GENERIC not in stream and GENERIC not in str(info.value), (stream, info.value)
    return stream + "\n" + str(info.value)


def stopped(proc):
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_a_corrupted_file_under_verify_sha256_is_named_to_the_user(package_copy, tmp_path):
    weights = package_copy / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100:] = bytes(255 - b for b in data[-100:])  # same size, header intact: only the hash can tell
    weights.write_bytes(bytes(data))
    proc, url, _ = served(tmp_path, package_copy, "--verify-sha256")
    try:
        text = generate_stream(url)
    finally:
        stopped(proc)
    assert "diffusion_pytorch_model.safetensors" in text and "sha256" in text, text
    assert "quantize.py --overwrite" in text


@pytest.mark.parametrize("how", [["--device", "tpu"], {"ERNIE_NF4_DEVICE": "tpu"}], ids=["flag", "env"])
def test_an_unknown_device_is_refused_at_start_in_one_line(how, tmp_path):
    flags, env = (how, {}) if isinstance(how, list) else ([], how)
    cmd = [sys.executable, "app.py", "--tiny", *flags, "--port", str(free_port()), "--output-dir", str(tmp_path)]
    result = subprocess.run(cmd, cwd=ROOT, env={**ENV, **env}, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "ERNIE_NF4_DEVICE" in result.stderr and "'tpu'" in result.stderr
    assert "cuda, cuda:N or cpu" in result.stderr


@pytest.mark.slow
def test_garbage_metadata_still_shows_the_page_and_stats_and_generates_not_verified(package_copy, tmp_path):
    from gradio_client import Client

    (package_copy / "quantization_metadata.json").write_bytes(b"\xff\x00not json")
    proc, url, log = served(tmp_path, package_copy)
    try:
        assert httpx.get(url, timeout=30).status_code == 200
        client = Client(url, verbose=False)
        stats = client.predict(api_name="/stats")
        images, _, _, info = client.predict(*FORM, api_name="/generate")
        stats_after = client.predict(api_name="/stats")
    finally:
        stopped(proc)
    for answer in (stats, stats_after):
        assert answer["package"]["verified"] is False
        assert any("another tool" in note for note in answer["package"]["notes"]), answer
    assert len(images) == 1 and "not verified by ernie-nf4 metadata" in info
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
def test_a_wrong_pipeline_class_names_model_index_json(package_copy, tmp_path):
    index_path = package_copy / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_class_name"] = "StableDiffusionPipeline"
    index_path.write_text(json.dumps(index))
    proc, url, _ = served(tmp_path, package_copy)
    try:
        text = generate_stream(url)
    finally:
        stopped(proc)
    assert "model_index.json names 'StableDiffusionPipeline'" in text and "ErnieImagePipeline" in text, text


@pytest.mark.slow
def test_low_vram_on_a_cpu_says_it_needs_a_cuda_gpu(package_copy, tmp_path):
    proc, url, _ = served(tmp_path, package_copy, "--memory-mode", "low-vram")
    try:
        text = generate_stream(url)
    finally:
        stopped(proc)
    assert "needs a CUDA GPU" in text and "low-vram" in text, text
