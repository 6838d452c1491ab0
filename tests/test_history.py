"""The history a browser keeps, across restarts of ``python app.py``: its key kept in a file (made once, mode 0600,
never replaced by a start that races another), the entries whose images are still there listed again after a restart
in a real Chromium, and a note in plain words for those that cannot be (a file deleted, the key file gone)."""

import os
import stat
import subprocess
import sys
import threading
from contextlib import contextmanager

import pytest

pytest.importorskip("gradio")
from ernie_nf4.webapp.history import KEY_BYTES, History, load_key  # noqa: E402

from .support.app import ROOT, SERVER_ENV, free_port, playwright_api, wait_for_server  # noqa: E402


def test_the_key_is_made_once_private_and_kept(tmp_path):
    path = tmp_path / "cache" / "history-key"
    key = load_key(path)
    assert len(key) == KEY_BYTES and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path) == key  # a second start reads it
    assert [p.name for p in path.parent.iterdir()] == ["history-key"]  # nothing left beside it
    signed = History(tmp_path, key).entry(tmp_path / "ernie-1.png")
    assert History(tmp_path, load_key(path)).entry(tmp_path / "ernie-1.png") == signed
    assert History(tmp_path, key).browser_secret == History(tmp_path, load_key(path)).browser_secret
    assert key.hex() not in History(tmp_path, key).browser_secret  # what the browser gets tells nothing of the key
    assert History(tmp_path).browser_secret != History(tmp_path).browser_secret  # no file: a key per build


def test_starts_racing_to_make_the_key_all_get_the_same_one(tmp_path):
    path = tmp_path / "history-key"
    keys, start = [], threading.Barrier(8)

    def one_start():
        start.wait()
        keys.append(load_key(path))

    threads = [threading.Thread(target=one_start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1 and bytes.fromhex(path.read_text()) == keys[0]


@pytest.mark.parametrize("text", ["", "not hex", "ab" * (KEY_BYTES - 1)])
def test_a_key_file_that_holds_no_key_is_refused_at_start_naming_the_flag(tmp_path, text):
    path = tmp_path / "history-key"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "app.py", "--tiny", "--output-dir", str(tmp_path / "out"), "--history-key-file", str(path)],
        cwd=ROOT,
        env=SERVER_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert "--history-key-file (or ERNIE_NF4_HISTORY_KEY_FILE)" in result.stderr and str(path) in result.stderr
    assert path.read_text() == text  # left for the operator to look at


def test_the_note_says_why_each_entry_is_not_shown(tmp_path):
    from ernie_nf4.webapp.handlers import Handlers

    from .support.app import FakeService

    handlers = Handlers(FakeService(), tmp_path, history_key=b"k" * KEY_BYTES)
    form = ("a kept cat", "", 64, 64, 1, 4.0, 42, False, False, 2)
    *_, made = handlers.generate(*form, request=None, progress=lambda *a, **k: None)
    (tmp_path / made[1]["file"]).unlink()
    restarted = Handlers(FakeService(), tmp_path, history_key=b"k" * KEY_BYTES)
    state, gallery, note = restarted.show_history([*made, {"file": "ernie-x.png", "sig": "0" * 64}], True)
    assert state == made[:1] and "a kept cat" in gallery[0][1]
    assert note.startswith("1 image(s) of this browser's history are no longer on the server (deleted from its ")
    assert "1 entry(ies) of this browser's history were not made by this server" in note
    _, _, note = restarted.show_history(None, True)  # stored, but not readable
    assert note.startswith("The history this browser kept could not be read: the server's history key changed")
    assert restarted.show_history(None, False)[2] == ""  # nothing stored: a first visit
    assert restarted.show_history([], True)[2] == ""  # stored and read: an empty history


# 2. python app.py started, stopped and started again, the same browser on the page.


@contextmanager
def app_running(tmp_path, port, key_file):
    """``python app.py --tiny`` on ``port``, with its output folder and key file in ``tmp_path``."""
    log = tmp_path / f"app-{port}-{len(list(tmp_path.glob('app-*.log')))}.log"
    cmd = [sys.executable, "app.py", "--tiny", "--device", "cpu", "--port", str(port)]
    cmd += ["--model-dir", str(tmp_path / "pkg"), "--output-dir", str(tmp_path / "out")]
    cmd += ["--history-key-file", str(key_file)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=SERVER_ENV, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_server(url, proc, log)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def history_alts(page) -> list[str]:
    return page.eval_on_selector_all("#history .thumbnail-item img", "images => images.map(i => i.alt)")


@pytest.mark.slow
@pytest.mark.browser
def test_the_history_outlives_a_restart_and_says_what_it_cannot_show(tmp_path, browser):
    expect = playwright_api().expect
    port, key_file = free_port(), tmp_path / "keys" / "history-key"
    context = browser.new_context(viewport={"width": 1366, "height": 900})  # one browser: one storage throughout
    page = context.new_page()
    with app_running(tmp_path, port, key_file) as url:
        page.goto(url)
        for prompt in ("a lighthouse", "a harbour"):
            page.locator("#prompt textarea").fill(prompt)
            page.locator("#generate").click()
            expect(page.locator("#history .thumbnail-item img")).to_have_count(1 if prompt == "a lighthouse" else 2)
        before = history_alts(page)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    with app_running(tmp_path, port, key_file):
        page.reload()
        expect(page.locator("#history .thumbnail-item img")).to_have_count(2)
        assert history_alts(page) == before and "a harbour" in before[0]
        expect(page.locator("#history-note")).to_have_text("")
        page.locator("#prompt textarea").fill("something else")
        page.locator("#history img").nth(1).click()
        page.locator("#use-settings").click()
        expect(page.locator("#prompt textarea")).to_have_value("a lighthouse")
        # an image pruned from the output folder: the others stay, and the note says so
        os.remove(min((tmp_path / "out").glob("ernie-*.png"), key=lambda p: p.stat().st_mtime))
        page.reload()
        expect(page.locator("#history .thumbnail-item img")).to_have_count(1)
        expect(page.locator("#history-note")).to_contain_text("1 image(s) of this browser's history are no longer")
    key_file.unlink()  # the key gone: a new one is made, and the stored history cannot be read
    with app_running(tmp_path, port, key_file):
        with page.expect_response(history_sent([None, True])):
            page.reload()
        note = page.locator("#history-note")
        expect(note).to_contain_text("The history this browser kept could not be read: the server's history key")
        assert history_alts(page) == []
        with page.expect_response(history_sent([[], True])):  # said once: the history kept now is the new one
            page.reload()
        expect(page.locator("#history-note")).to_have_text("")
    context.close()


def history_sent(values):
    """A predicate for the answer to the page's history event, sent ``values`` (what the browser read from its
    storage, and whether it holds one)."""

    def sent(response) -> bool:
        try:
            body = response.request.post_data_json
        except ValueError:
            return False
        return isinstance(body, dict) and body.get("data") == values

    return sent
