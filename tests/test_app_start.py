"""``python app.py`` as an operator starts it, through subprocess: junk in the environment is one line naming the
variable at start (not a traceback, not a failure at the first load), the terminal names the app's own flags and
says when there is no GPU, and a local run keeps its outputs unless asked to prune."""

import logging
import os
import re
import subprocess
import sys
import time

import pytest

pytest.importorskip("gradio")
from .support.app import ROOT, SERVER_ENV, free_port, wait_for_server  # noqa: E402


def start(tmp_path, *flags, env=None):
    port = free_port()
    log = tmp_path / f"app-{port}.log"
    cmd = [sys.executable, "app.py", *map(str, flags)]
    if "--port" not in flags:
        cmd += ["--port", str(port)]
    env = {**SERVER_ENV, "ERNIE_NF4_OUTPUT_DIR": str(tmp_path / "out"), **(env or {})}
    env.setdefault("ERNIE_NF4_HISTORY_KEY_FILE", str(tmp_path / "history-key"))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}/", log


def stop(proc):
    proc.terminate()
    proc.wait(timeout=30)


def refused(tmp_path, *flags, env):
    cmd = [sys.executable, "app.py", "--tiny", "--output-dir", str(tmp_path / "out"), *map(str, flags)]
    result = subprocess.run(cmd, cwd=ROOT, env={**SERVER_ENV, **env}, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_a_junk_gradio_port_is_ignored_under_port_and_named_without_it(tmp_path):
    port = free_port()
    proc, url, log = start(tmp_path, "--tiny", "--port", port, env={"GRADIO_SERVER_PORT": "abc"})
    try:
        wait_for_server(f"http://127.0.0.1:{port}/", proc, log, seconds=90)
    finally:
        stop(proc)
    assert "Traceback" not in log.read_text()
    message = refused(tmp_path, env={"GRADIO_SERVER_PORT": "abc"})
    assert "GRADIO_SERVER_PORT" in message and "'abc'" in message


def test_zerogpu_set_off_the_platform_is_one_line_naming_it(tmp_path):
    message = refused(tmp_path, "--port", free_port(), env={"SPACES_ZERO_GPU": "true"})
    assert "SPACES_ZERO_GPU" in message and "unset" in message


@pytest.mark.parametrize(
    "env, words",
    [
        ({"ERNIE_NF4_DEVICE": "cuda:99"}, ["ERNIE_NF4_DEVICE", "cuda:99"]),
        ({"ERNIE_NF4_MODEL_DIR": "/etc/passwd"}, ["ERNIE_NF4_MODEL_DIR", "/etc/passwd", "is a file"]),
        ({"ERNIE_NF4_MODEL_DIR": "/etc/passwd/pkg"}, ["ERNIE_NF4_MODEL_DIR", "/etc/passwd is a file"]),
    ],
)
def test_a_device_or_folder_that_cannot_work_is_refused_at_start(tmp_path, env, words):
    message = refused(tmp_path, "--port", free_port(), env=env)
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--output-dir", ""], ["--output-dir", "empty"]),  # not the working folder, whose PNGs pruning would delete
        (["--output-dir", "/sys/ernie-nf4-outputs"], ["--output-dir", "/sys/ernie-nf4-outputs", "cannot be written"]),
        (["--max-body-kb", "-1"], ["--max-body-kb", "at least 1, got -1"]),
        (["--max-upload-mb", "-1"], ["--max-upload-mb", "at least 0 (0 turns uploads off), got -1"]),
        (["--uploads-per-window", "0"], ["--uploads-per-window", "at least 1 (--max-upload-mb 0 turns uploads off)"]),
        (["--upload-mb-per-window", "x"], ["--upload-mb-per-window", "whole number", "'x'"]),
        (["--max-queue", "1e3"], ["--max-queue", "whole number", "'1e3'"]),
        (["--keep-hours", "inf"], ["--keep-hours", "more than 0 and finite", "got inf"]),
    ],
)
def test_an_output_folder_or_a_limit_that_cannot_work_is_refused_at_start_in_the_flags_terms(tmp_path, flags, words):
    message = refused(tmp_path, *flags, "--port", free_port(), env={})
    for word in words:
        assert word in message, message


def test_the_upload_budget_is_set_by_its_flags_or_their_variables(tmp_path):
    from ernie_nf4.webapp.cli import parse_args, settings_from_args

    folder = ["--tiny", "--output-dir", str(tmp_path / "out")]
    _, limits, _ = settings_from_args(parse_args(folder))
    assert (limits.uploads_per_window, limits.upload_bytes_per_window) == (10, 30_000_000)
    flags = ["--uploads-per-window", "3", "--upload-mb-per-window", "5"]
    _, limits, _ = settings_from_args(parse_args(folder + flags))
    assert (limits.uploads_per_window, limits.upload_bytes_per_window) == (3, 5_000_000)
    environ = {"ERNIE_NF4_UPLOADS_PER_WINDOW": "4", "ERNIE_NF4_UPLOAD_MB_PER_WINDOW": "6"}
    _, limits, _ = settings_from_args(parse_args(folder, environ=environ))
    assert (limits.uploads_per_window, limits.upload_bytes_per_window) == (4, 6_000_000)


def test_a_start_that_cannot_listen_deletes_no_old_output(tmp_path):
    import socket

    old_pngs(tmp_path / "out", 3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        message = refused(tmp_path, "--port", taken.getsockname()[1], "--keep-outputs", "1", env={})
    assert "cannot listen" in message, message
    assert len(list((tmp_path / "out").glob("ernie-*.png"))) == 3


def test_pruning_deletes_only_the_pngs_the_app_names_as_its_own(tmp_path):
    from PIL import Image

    from ernie_nf4.webapp.outputs import OutputStore

    folder = tmp_path / "out"
    old_pngs(folder, 3)
    mine = [folder / "ernie-my-own-photo.png", folder / "ernie-20240101-000000-000000-7-copy.png"]
    for path in mine:
        path.write_bytes(b"png")
        os.utime(path, (0, 0))
    outputs = OutputStore(folder, keep_count=1)
    outputs.save(Image.new("RGB", (8, 8)), 1, "p")
    left = sorted(p.name for p in folder.glob("ernie-*.png"))
    assert len(left) == 3 and {p.name for p in mine} <= set(left), left


def test_the_terminal_at_start_says_no_gpu_once_and_names_share_as_the_apps_flag(tmp_path):
    proc, url, log = start(tmp_path, "--model-dir", tmp_path / "no-package")
    try:
        wait_for_server(url, proc, log, seconds=90)
        time.sleep(1)  # the lines printed after the server is up
    finally:
        stop(proc)
    text = log.read_text()
    assert text.count("No CUDA GPU found") == 1, text
    assert "--share" in text and "share=True" not in text, text
    assert f"Running on {url.rstrip('/')}" in text
    assert "all kept" in text and "Traceback" not in text


def old_pngs(folder, count, hours_ago=48):
    folder.mkdir(parents=True, exist_ok=True)
    then = time.time() - hours_ago * 3600
    for i in range(count):
        path = folder / f"ernie-19990101-000000-{i:06d}-{i}.png"
        path.write_bytes(b"png")
        os.utime(path, (then, then))


@pytest.mark.parametrize(
    "flags, environ, kept",
    [
        ([], {}, 251),  # a local run keeps everything
        (["--share"], {}, 1),  # shared: the newest 200, younger than 24 h
        ([], {"SPACE_ID": "someone/ernie"}, 1),
        (["--keep-outputs", "10"], {}, 10),
        (["--keep-hours", "72"], {}, 251),
    ],
)
def test_a_local_run_keeps_its_outputs_unless_asked_and_each_deletion_is_logged(tmp_path, flags, environ, kept, caplog):
    from PIL import Image

    from ernie_nf4.webapp.cli import parse_args, settings_from_args

    folder = tmp_path / "out"
    old_pngs(folder, 250)
    args = parse_args(["--tiny", "--output-dir", str(folder), *flags], environ=environ)
    with caplog.at_level(logging.INFO, logger="ernie_nf4"):
        _, _, outputs = settings_from_args(args)
        outputs.save(Image.new("RGB", (8, 8)), 1, "p")
    assert len(list(folder.glob("ernie-*.png"))) == kept
    logged = [re.search(r"deleted (\d+) old output\(s\) from (\S+)", r.getMessage()) for r in caplog.records]
    assert sum(int(m[1]) for m in logged if m) == 251 - kept
    assert all(m[2] == str(folder) for m in logged if m)


def test_two_starts_pruning_one_folder_at_once_both_go_on(tmp_path):
    """Replicas, or a start beside a save, prune the same folder together: a file the other deleted first is no
    error."""
    import threading

    from ernie_nf4.webapp.outputs import OutputStore

    folder, failures = tmp_path / "out", []
    stores = [OutputStore(folder, keep_count=1), OutputStore(folder, keep_count=1)]

    def prune(store):
        try:
            store.prune()
        except Exception as err:  # noqa: BLE001 - any failure is the finding
            failures.append(err)

    for _ in range(5):
        old_pngs(folder, 300)
        threads = [threading.Thread(target=prune, args=(store,)) for store in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == [] and len(list(folder.glob("ernie-*.png"))) == 1
