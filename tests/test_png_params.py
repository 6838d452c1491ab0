"""Settings read back from PNGs, safely on hostile files: the ``parameters`` parser runs in linear time on any text,
a compressed text chunk is never inflated past the cap, and a header claiming a huge image gets a message.

The PNGs are written here with ``struct`` and ``zlib`` only, chunk by chunk, independently of the code under test.
"""

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest

from ernie_nf4.errors import InvalidArgument
from ernie_nf4.webapp.png_params import MAX_PARAMETERS_BYTES, parse_parameters, read_png_parameters

ROOT = Path(__file__).resolve().parents[1]
TEXT = (
    "a red boat, at dawn\n"
    "Negative prompt: blurry, dark\n"
    "Steps: 12, Sampler: FlowMatchEuler, CFG scale: 3.5, Seed: 42, Size: 96x64, Model: X, Prompt enhancer: off, "
    'Revised prompt: "a boat, \\"red\\", at dawn"'
)


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(*chunks: bytes, width: int = 1, height: int = 1) -> bytes:
    """A 1-bit greyscale PNG of ``width`` x ``height`` (one row of pixel data at most) with ``chunks`` before IDAT."""
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    pixels = chunk(b"IDAT", zlib.compress(b"\0\0"))
    return b"\x89PNG\r\n\x1a\n" + header + b"".join(chunks) + pixels + chunk(b"IEND", b"")


def text_chunk(text: str) -> bytes:
    return chunk(b"tEXt", b"parameters\0" + text.encode("latin-1"))


def ztxt_chunk(deflated: bytes) -> bytes:
    return chunk(b"zTXt", b"parameters\0\0" + deflated)


def itxt_chunk(payload: bytes, compressed: bool) -> bytes:
    return chunk(b"iTXt", b"parameters\0" + bytes([int(compressed), 0]) + b"en\0\0" + payload)


def deflate_repeated(block: bytes, times: int) -> bytes:
    """``block * times`` deflated, without holding it whole."""
    deflater = zlib.compressobj(9)
    return b"".join(deflater.compress(block) for _ in range(times)) + deflater.flush()


def write(tmp_path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def run_isolated(code: str, timeout: float, stdin: str = "") -> str:
    """``code`` in a fresh interpreter, killed after ``timeout`` s: a parser that backtracks holds the GIL, so a
    thread of this process could not even time it out."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", textwrap.dedent(code)]
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_each_kind_of_text_chunk_reads_back_the_same_settings(tmp_path):
    utf8 = TEXT.replace("red boat", "红色的船").encode("utf-8")
    files = {
        "text.png": png(text_chunk(TEXT)),
        "ztxt.png": png(ztxt_chunk(zlib.compress(TEXT.encode("latin-1")))),
        "itxt.png": png(itxt_chunk(utf8, compressed=False)),
        "itxt-z.png": png(itxt_chunk(zlib.compress(utf8), compressed=True)),
    }
    for name, data in files.items():
        settings = read_png_parameters(write(tmp_path, name, data))
        assert settings.prompt == ("a 红色的船, at dawn" if name.startswith("itxt") else "a red boat, at dawn")
        assert settings.negative_prompt == "blurry, dark"
        assert (settings.width, settings.height, settings.num_inference_steps, settings.seed) == (96, 64, 12, 42)
        assert (settings.guidance_scale, settings.use_pe) == (3.5, False)


HOSTILE = {  # each about 1 MB; the old pattern needed hours for the first (quadratic backtracking)
    "no colon after the first comma": "p\nSteps: 1, " + "a" * 1_000_000,
    "a word run before a far colon": "p\nSteps: 1, " + "a b-c/" * 160_000 + ":",
    "open quotes": "p\nSteps: 1, " + 'k: "' * 250_000,
    "open quotes and commas": "p\nSteps: 1, " + 'k: "1, ' * 140_000,
    "backslashes": "p\nSteps: 1, " + 'k: "' + "\\" * 1_000_000 + '"',
    "many pairs": "p\nSteps: 1, " + "Seed: 2, " * 110_000,
}


def test_the_parser_runs_in_linear_time_on_a_megabyte_of_hostile_text():
    out = run_isolated(
        """
        import json, sys, time
        from ernie_nf4.webapp.png_params import parse_parameters
        for name, text in json.load(sys.stdin).items():
            start = time.perf_counter()
            parse_parameters(text)
            print(name, time.perf_counter() - start)
        """,
        timeout=120,
        stdin=json.dumps(HOSTILE),
    )
    seconds = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in out.splitlines()}
    assert set(seconds) == set(HOSTILE)
    assert max(seconds.values()) < 5, seconds  # linear: well under a second on a desktop


def test_a_ztxt_chunk_inflating_to_a_megabyte_of_hostile_text_is_refused_at_once(tmp_path):
    hostile = ("p\nSteps: 1, " + "a" * 1_000_000).encode("latin-1")
    path = write(tmp_path, "bomb.png", png(ztxt_chunk(zlib.compress(hostile, 9))))
    assert path.stat().st_size < 5000
    out = run_isolated(
        f"""
        import time
        from ernie_nf4.webapp.png_params import read_png_parameters
        start = time.perf_counter()
        try:
            read_png_parameters({str(path)!r})
        except ValueError as err:
            print(err)
        print(time.perf_counter() - start)
        """,
        timeout=60,
    )
    message, seconds = out.strip().rsplit("\n", 1)
    assert message == f"bomb.png's 'parameters' text is longer than {MAX_PARAMETERS_BYTES:,} bytes, far more than " + (
        "this app writes; it was not read"
    )
    assert float(seconds) < 2


@pytest.mark.parametrize("kind", ["zTXt", "iTXt"])
def test_a_compressed_text_chunk_is_never_inflated_past_the_cap(tmp_path, kind):
    deflated = deflate_repeated(b"Steps: 1, " * 100_000, 64)  # 64 MB of text in about 64 kB
    data = ztxt_chunk(deflated) if kind == "zTXt" else itxt_chunk(deflated, compressed=True)
    path = write(tmp_path, "big.png", png(data))
    tracemalloc.start()
    try:
        start = time.perf_counter()
        with pytest.raises(InvalidArgument, match="longer than"):
            read_png_parameters(path)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_PARAMETERS_BYTES + 2**20  # the cap's worth, not 64 MB
    assert seconds < 2


def test_a_header_claiming_15000_by_15000_pixels_gets_a_message_not_a_traceback(tmp_path):
    path = write(tmp_path, "huge.png", png(text_chunk(TEXT), width=15000, height=15000))
    with pytest.raises(InvalidArgument) as refused:
        read_png_parameters(path)
    message = str(refused.value)
    assert message.startswith("huge.png claims 15000x15000 pixels, more than the ")
    assert "decompression bomb" in message and "Drop a PNG this app saved" in message


def test_restoring_from_a_bomb_png_warns_and_leaves_the_form(tmp_path):
    pytest.importorskip("gradio")
    from ernie_nf4.webapp.handlers import RESTORED_FIELDS, Handlers

    from .support.app import FakeService

    handlers = Handlers(FakeService(), tmp_path / "out")
    path = write(tmp_path, "huge.png", png(text_chunk(TEXT), width=15000, height=15000))
    updates = handlers.restore_png(str(path))  # before: Pillow's DecompressionBombError, a 500 for the browser
    fields, note = updates[: len(RESTORED_FIELDS)], updates[-1]
    assert all(update == {"__type__": "update"} for update in fields)  # gr.skip(): every field left as it was
    assert note.startswith("huge.png claims 15000x15000 pixels") and note.count("huge.png") == 1

    class ChineseBrowser:
        headers = {"accept-language": "zh-CN,zh;q=0.9"}

    path = write(tmp_path, "huge.png", png(text_chunk(TEXT), width=15000, height=15000))
    note = handlers.restore_png(str(path), ChineseBrowser())[-1]
    assert note == "huge.png 声称有 15000x15000 像素，超过本应用可打开的 89,478,485；未读取其设置"


def test_a_png_whose_seed_is_past_the_largest_says_it_cannot_be_made_again(tmp_path):
    """Earlier versions (and other tools) wrote seeds up to 2**63: restored, the note says the page cannot hold it."""
    pytest.importorskip("gradio")
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from ernie_nf4.request import MAX_SEED
    from ernie_nf4.webapp.handlers import Handlers

    from .support.app import FakeService

    class ChineseBrowser:
        headers = {"accept-language": "zh-CN,zh;q=0.9"}

    handlers = Handlers(FakeService(), tmp_path / "out")
    largest = MAX_SEED
    info = PngInfo()
    info.add_text("parameters", f"a fox\nSteps: 20, CFG scale: 7, Seed: {2**63 - 5}, Size: 64x64")
    path = tmp_path / "old.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    english = handlers.restore_png(str(path))[-1]
    assert f"The seed of these settings, {2**63 - 5}, is past the largest this app runs ({largest})" in english
    info = PngInfo()
    info.add_text("parameters", f"a fox\nSteps: 20, CFG scale: 7, Seed: {largest}, Size: 64x64")
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    assert "seed" not in handlers.restore_png(str(path), ChineseBrowser())[-1].lower()  # the largest is fine
    info = PngInfo()
    info.add_text("parameters", f"a fox\nSteps: 20, CFG scale: 7, Seed: {largest + 1}, Size: 64x64")
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    assert f"随机种子 {largest + 1} 超出了本应用可用的最大值" in handlers.restore_png(str(path), ChineseBrowser())[-1]


@pytest.mark.parametrize(
    "data, message",
    [
        (b"GIF89a" + b"\0" * 40, "is not a PNG file"),
        (png(text_chunk(TEXT))[:-30] + b"\xff" * 30, None),  # IDAT damaged after the text: the text still reads
        (png(chunk(b"tEXt", b"other\0x")), "carries no generation parameters"),
        (png(text_chunk(TEXT)).replace(b"Steps: 12", b"Steps: 13"), "is a damaged PNG (its 'tEXt' chunk"),
        (png(ztxt_chunk(b"not deflate")), "is a damaged PNG (its 'zTXt' chunk"),
        (png(itxt_chunk(b"no separators", compressed=False)).replace(b"en\0\0", b"en__"), "damaged PNG"),
        (png(text_chunk(TEXT), width=0), "is a damaged PNG (its 'IHDR' chunk"),
    ],
    ids=["gif", "damaged-pixels", "no-parameters", "bad-crc", "bad-deflate", "bad-itxt", "zero-width"],
)
def test_files_that_are_not_our_pngs_are_named_in_the_message(tmp_path, data, message):
    path = write(tmp_path, "upload.png", data)
    if message is None:
        assert read_png_parameters(path).seed == 42
        return
    with pytest.raises(InvalidArgument) as refused:
        read_png_parameters(path)
    assert str(refused.value).startswith("upload.png ") and message in str(refused.value)


def test_numbers_in_other_scripts_digits_are_not_read():
    settings = parse_parameters("p\nSteps: ٣٢, Seed: 1_0, CFG scale: ٤.٥, Size: ٦٤x٦٤")
    assert (settings.num_inference_steps, settings.seed, settings.guidance_scale, settings.width) == (
        None,
        None,
        None,
        None,
    )
