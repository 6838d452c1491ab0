"""The Stats tab and Load model's answer in plain words and units, in English and Chinese: the memory mode and why
in one sentence (never all-on-gpu on a CPU), the cards a package fits from the peaks its metadata recorded, each
run's peak memory, no prompt enhancer figure when it was off, sizes in GB, the chart's titles in words."""

import json
import re

import pytest

pytest.importorskip("gradio")
from ernie_nf4.runtime.memory_modes import NEEDS_GIB, MemoryMode, choose_memory_mode  # noqa: E402
from ernie_nf4.stats import ComponentStats, LiveStats, PackageStats, PeakVram, ServiceStats, StageSeconds  # noqa: E402
from ernie_nf4.webapp.stats_view import load_answer, stats_markdown  # noqa: E402

from .support.app import BOUND, CHROMIUM_FLAGS, ROOT, FakeService, chromium_path, free_port, playwright_api  # noqa: E402

# A benchmark this project recorded on an H100 (what `python -m ernie_nf4.benchmark --write-metadata` stores in a
# package's metadata): low-vram peaks at 6.24 GiB, all-on-gpu at 10.04 GiB (compiled).
H100_REPORT = json.loads((ROOT / "docs/reports/benchmark-1024-h100-2026-11-27c.json").read_text())
INTERNAL_WORDS = ["memory_mode", "as asked", "eager", "transformer blocks", "compiling is the default", "last run pe"]
RAW_BYTES = re.compile(r"\d{1,3}(,\d{3}){2,}")  # 9,048,442,156


def cpu_live(**changes) -> LiveStats:
    """What the tiny app on a CPU reports after a run with the prompt enhancer off."""
    _, reason = choose_memory_mode("cpu")
    values = {
        "loaded": True,
        "memory_mode": "all-on-gpu",
        "memory_mode_reason": reason,
        "compiled": False,
        "device": "cpu",
        "compile_status": "eager: compiling is the default on a CUDA GPU only (--compile turns it on)",
        "load_seconds": 2.5,
        "last_run_seconds": StageSeconds(pe=0.01, text_encoding=0.2, denoising=1.5, vae_decode=0.3, total=2.05),
    }
    return LiveStats(**(values | changes))


def gpu_stats() -> ServiceStats:
    """A GPU run: all-on-gpu chosen by auto with 23.4 GiB free, compiling in the background, a package whose
    metadata recorded the H100 benchmark."""
    _, reason = choose_memory_mode("cuda:0", usable=23.4)
    live = LiveStats(
        True,
        "all-on-gpu",
        reason,
        False,
        device="cuda:0",
        compile_status="eager: compiling in the background",
        load_seconds=41.2,
        last_run_seconds=StageSeconds(2.1, 0.3, 20.5, 0.9, 23.9),
        last_run_peak_vram=PeakVram(9 * 2**30, int(9.81 * 2**30)),
        last_run_pe_tokens=180,
        memory_usable_gib=23.4,
        memory_needs_gib=NEEDS_GIB[MemoryMode.ALL_ON_GPU],
    )
    components = [
        ComponentStats("transformer", True, 4_901_234_567, 16_104_345_678),
        ComponentStats("text_encoder", True, 2_412_345_678, 7_712_345_678),
        ComponentStats("vae", False, 168_123_456, 168_123_456),
    ]
    package = PackageStats(
        "ERNIE-Image-NF4",
        True,
        "verified by ernie-nf4 metadata",
        components,
        bytes_before=23_984_814_812,
        bytes_on_disk=7_481_703_701,
        benchmarks={"1024x1024-50steps-pe": H100_REPORT},
    )
    return ServiceStats("ERNIE-Image NF4", package, live)


def test_on_a_cpu_the_stats_say_so_and_leave_out_the_prompt_enhancer_that_was_off():
    stats = ServiceStats("tiny", None, cpu_live())
    text = stats_markdown(stats, "en")
    assert "Memory: runs on the CPU, so every model stays in main memory" in text
    assert "all-on-gpu" not in text and "GPU (" not in text
    assert "Last run: 2.05 s in all (text encoder 0.20 s, denoising 1.50 s, image decoding 0.30 s)" in text
    assert "prompt enhancer" not in text and "no GPU memory used (CPU)" in text
    assert not [word for word in INTERNAL_WORDS if word in text.lower()]
    with_pe = stats_markdown(ServiceStats("tiny", None, cpu_live(last_run_pe_tokens=12)), "en")
    assert "prompt enhancer 0.01 s for 12 tokens" in with_pe
    chinese = stats_markdown(stats, "zh")
    assert "显存：在 CPU 上运行" in chinese and "上一次运行：共 2.05 秒" in chinese
    assert not re.search(r"\b(Memory|Last run|Loaded|runs|the)\b", chinese), chinese


def test_load_model_answers_in_plain_words():
    answer = load_answer(cpu_live(), "en")
    assert answer == (
        "The model is ready (loaded in 2.5 s). Memory: runs on the CPU, so every model stays in main memory "
        "(memory modes save GPU memory only)."
    )
    assert load_answer(cpu_live(), "zh").startswith("模型已就绪（加载用时 2.5 秒）。显存：在 CPU 上运行")
    gpu = load_answer(gpu_stats().live, "en")
    assert "chosen automatically: the GPU had 23.4 GiB free" in gpu
    assert "The transformer is compiling in the background; runs get faster once it is done." in gpu
    assert not [word for word in INTERNAL_WORDS if word in gpu.lower()]


def test_the_memory_sentence_gives_what_auto_measured_and_needed_with_the_loras():
    from dataclasses import replace

    from ernie_nf4.webapp.stats_view import memory_sentence

    live = gpu_stats().live
    assert "had 23.4 GiB free" in memory_sentence(live) and "needs about 10.5 GiB" in memory_sentence(live)
    with_loras = replace(live, memory_usable_gib=11.0, memory_needs_gib=10.85)
    assert "had 11.0 GiB free" in memory_sentence(with_loras) and "needs about 10.85 GiB" in memory_sentence(with_loras)
    assert (
        memory_sentence(replace(live, memory_usable_gib=None))
        == "Memory: every model stays on the GPU (all-on-gpu, the fastest), chosen automatically by the GPU memory "
        "free at load."
    )


def test_a_gpu_package_says_which_cards_it_fits_each_runs_peak_and_sizes_in_gb():
    text = stats_markdown(gpu_stats(), "en")
    assert "Memory: every model stays on the GPU (all-on-gpu, the fastest), chosen automatically" in text
    assert "8 GB or more in low-vram mode (peak 6.24 GiB at 1024×1024 on NVIDIA H100 80GB HBM3)" in text
    assert "12 GB or more in all-on-gpu mode (peak 10.04 GiB at 1024×1024 on NVIDIA H100 80GB HBM3)" in text
    assert "prompt enhancer 2.10 s for 180 tokens" in text and "peak GPU memory 9.81 GiB" in text
    assert "| transformer | NF4 (4-bit) | 16.10 GB | 4.90 GB | 70% |" in text
    assert "| NF4, low-vram | " in text and "| 6.24 GiB |" in text  # the recorded modes, each with its peak
    assert not RAW_BYTES.search(text), RAW_BYTES.search(text)
    assert not [word for word in INTERNAL_WORDS if word in text.lower()]
    chinese = stats_markdown(gpu_stats(), "zh")
    assert "low-vram 模式需 8 GB 及以上" in chinese and "all-on-gpu 模式需 12 GB 及以上" in chinese
    assert "显存峰值 9.81 GiB" in chinese and "| 文本编码器 | NF4（4 位） |" in chinese
    fits = gpu_stats().to_dict()["package"]["card_fits"]  # the /stats API says it too
    assert [(fit["memory_mode"], fit["card_gb"]) for fit in fits] == [("low-vram", 8), ("all-on-gpu", 12)]


def test_a_package_without_recorded_peaks_says_the_cards_are_not_measured():
    stats = gpu_stats()
    stats.package.benchmarks = {}
    text = stats_markdown(stats, "en")
    assert "**Cards it fits:** not measured for this package" in text and "Its files take 7.48 GB." in text


class GpuStatsService(FakeService):
    """The fake service, with the figures of a GPU run (``gpu_stats``)."""

    def stats(self):
        return gpu_stats()


@pytest.fixture(scope="module")
def gpu_stats_url(tmp_path_factory):
    from app import build_demo

    demo = build_demo(GpuStatsService(), output_dir=str(tmp_path_factory.mktemp("out")))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def open_page(browser, url, locale):
    page = browser.new_page(viewport={"width": 1366, "height": 900}, locale=locale)
    page.set_default_timeout(BOUND)
    page.goto(url)
    page.locator("#generate").wait_for()
    return page


def open_stats(page, locale):
    page.get_by_role("tab", name="统计" if locale == "zh-CN" else "Stats").click()


CHART_WORDS = {
    "en-US": ["Original vs NF4 per component", "Component", "Size on disk (GB)", "Weights"],
    "zh-CN": ["各组件原版与 NF4 大小对比", "组件", "磁盘大小 (GB)", "权重"],
}
GPU_WORDS = {
    "en-US": ["chosen automatically: the GPU had 23.4 GiB free", "12 GB or more in all-on-gpu mode", "9.81 GiB"],
    "zh-CN": ["自动选择：加载时 GPU 有 23.4 GiB 空闲", "all-on-gpu 模式需 12 GB 及以上", "显存峰值 9.81 GiB"],
}


@pytest.mark.browser
@pytest.mark.parametrize("locale", ["en-US", "zh-CN"])
def test_stats_tab_in_the_browsers_language(gpu_stats_url, locale):
    sync_api = playwright_api()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True)
        page = open_page(browser, gpu_stats_url, locale)
        page.locator("#advanced").get_by_text("高级设置" if locale == "zh-CN" else "Advanced").click()
        page.get_by_role("button", name="加载模型" if locale == "zh-CN" else "Load model").click()
        ready = GPU_WORDS[locale][0]  # Load model says where the models live, as the Stats tab does
        page.locator("#advanced").get_by_text("模型已就绪" if locale == "zh-CN" else "The model is ready").wait_for()
        assert ready in page.locator("#advanced").inner_text()
        open_stats(page, locale)
        stats = page.locator("#stats")
        for words in GPU_WORDS[locale]:
            stats.get_by_text(words).first.wait_for()
        chart = page.locator("#chart")
        chart.get_by_text(CHART_WORDS[locale][0]).wait_for()
        labels = chart.locator("svg text").all_text_contents()
        assert set(CHART_WORDS[locale][1:]) <= set(labels), labels
        assert not {"bar", "version", "GB", "size_gb", "weights"} & set(labels), labels
        # each bar's name (hover text and screen readers) says its fields by their titles in the page's language
        names = chart.locator("[role=graphics-symbol][aria-label]").evaluate_all("ns => ns.map(n => n.ariaLabel)")
        bars = [name for name in names if f"{CHART_WORDS[locale][2]}: " in name]
        assert bars and all(f"{CHART_WORDS[locale][3]}: " in name for name in bars), names
        assert not any(raw in name for name in bars for raw in ("weights:", "size_gb", "bar:")), bars
        assert not RAW_BYTES.search(stats.inner_text())
        browser.close()


LABEL_BOXES_JS = """() => [...document.querySelectorAll('#chart g.role-axis-label')].map((axis) =>
  [...axis.querySelectorAll('text')].map((text) => { const b = text.getBoundingClientRect();
    return [b.left, b.top, b.right, b.bottom, text.textContent]; }))"""


@pytest.mark.browser
@pytest.mark.parametrize(("locale", "width"), [("en-US", 390), ("zh-CN", 390), ("en-US", 1366)])
def test_the_charts_labels_stay_apart_on_a_phone_and_a_desktop(gpu_stats_url, locale, width):
    """Every bar's label can be read: no two of an axis's labels overlap, none leaves the page or the chart, and
    the chart's title stays in it."""
    sync_api = playwright_api()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True)
        page = browser.new_page(viewport={"width": width, "height": 844}, locale=locale)
        page.set_default_timeout(BOUND)
        page.goto(gpu_stats_url)
        open_stats(page, locale)
        title = page.locator("#chart").get_by_text(CHART_WORDS[locale][0])
        title.wait_for()
        chart = page.locator("#chart").bounding_box()
        assert title.bounding_box()["y"] >= chart["y"]  # the labels leave the bars and the title their room
        axes = page.evaluate(LABEL_BOXES_JS)
        bars = max(axes, key=len)
        assert len(bars) >= 6 and all(box[4] for box in bars), axes  # a label for every bar
        for axis in axes:
            for i, a in enumerate(axis):
                assert a[0] >= 0 and a[2] <= width and a[3] <= chart["y"] + chart["height"], a
                for b in axis[i + 1 :]:
                    apart = a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
                    assert apart, (a, b)
        browser.close()


class WholePackageStatsService(FakeService):
    """The fake service, with the figures of a GPU run on a package of every folder the real one has (long names
    among them: "prompt enhancer's tokenizer")."""

    def stats(self):
        stats = gpu_stats()
        stats.package.components = [
            ComponentStats("pe", True, 2_301_234_567, 7_701_234_567),
            ComponentStats("pe_tokenizer", False, 11_234_567, 11_234_567),
            ComponentStats("scheduler", False, 1_234, 1_234),
            ComponentStats("text_encoder", True, 2_412_345_678, 7_712_345_678),
            ComponentStats("tokenizer", False, 11_234_567, 11_234_567),
            ComponentStats("transformer", True, 4_901_234_567, 16_104_345_678),
            ComponentStats("vae", False, 168_123_456, 168_123_456),
        ]
        return stats


TOOLTIP_BOX_JS = """() => { const tip = document.querySelector('#vg-tooltip-element.visible');
  if (!tip) return null; const b = tip.getBoundingClientRect();
  return [b.left, b.top, b.right, b.bottom, tip.innerText.replace(/\\s+/g, ' ')]; }"""


def hover_box(page, bar) -> list:
    """The hover box of the chart's ``bar`` (a locator), hovered at its middle: [left, top, right, bottom, text]."""
    page.mouse.move(0, 0)  # off the chart first: the box shown is the hovered bar's own
    box, name = bar.bounding_box(), bar.get_attribute("aria-label")
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    said = name.split(";")[0].removeprefix("Component: ")  # "prompt enhancer's tokenizer · original"
    page.wait_for_function(f"({TOOLTIP_BOX_JS})()?.[4].includes({said!r})")
    return page.evaluate(TOOLTIP_BOX_JS)


@pytest.mark.browser
def test_the_charts_hover_box_stays_on_a_phones_screen(tmp_path):
    """On a phone (390x844), hovering a bar near the left edge (the prompt enhancer's tokenizer, whose name is
    long), then every bar, shows the bar's hover box whole on the screen."""
    from app import build_demo

    demo = build_demo(WholePackageStatsService(), output_dir=str(tmp_path / "out"))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    width, height = 390, 844
    sync_api = playwright_api()
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True)
            page = browser.new_page(viewport={"width": width, "height": height}, locale="en-US")
            page.set_default_timeout(BOUND)
            page.goto(f"http://127.0.0.1:{port}/")
            open_stats(page, "en-US")
            page.locator("#chart").get_by_text(CHART_WORDS["en-US"][0]).wait_for()
            page.locator("#chart").scroll_into_view_if_needed()
            bars = "#chart g.mark-rect [role=graphics-symbol][aria-label]"
            assert page.locator(bars).count() == 14  # each of the 7 parts: its original and its package bar
            near_left = page.locator(f'{bars}[aria-label*="enhancer\'s tokenizer"]').first
            assert near_left.bounding_box()["x"] < width / 3
            for bar in [near_left, *page.locator(bars).all()]:
                left, top, right, bottom, text = hover_box(page, bar)
                assert 0 <= left and right <= width and 0 <= top and bottom <= height, (text, left, top, right, bottom)
            browser.close()
    finally:
        demo.close()


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("locale", ["en-US", "zh-CN"])
def test_the_tiny_app_on_a_cpu_says_so_in_its_stats(served_tiny_app, locale):
    url, client, _ = served_tiny_app
    client.predict("cat", "", 64, 64, 1, 1.0, 1, False, False, 1, api_name="/generate")  # PE off
    sync_api = playwright_api()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True)
        page = open_page(browser, url, locale)
        open_stats(page, locale)
        stats = page.locator("#stats")
        stats.get_by_text("显存：在 CPU 上运行" if locale == "zh-CN" else "Memory: runs on the CPU").wait_for()
        text = stats.inner_text()
        assert "all-on-gpu" not in text
        assert not re.search(r"(prompt enhancer|提示词增强) [0-9.]+ s", text), text  # the PE was off
        assert ("未使用 GPU 显存（CPU）" if locale == "zh-CN" else "no GPU memory used (CPU)") in text
        assert not [word for word in INTERNAL_WORDS if word in text.lower()]
        assert not RAW_BYTES.search(text), text
        page.locator("#chart").get_by_text(CHART_WORDS[locale][0]).wait_for()
        browser.close()


def test_blocks_compiled_ahead_of_time_read_as_in_use_not_as_ready():
    from ernie_nf4.webapp.stats_view import compile_sentence

    on_gpu = {"device": "cuda:0", "compile_status": "compiled ahead of time (AOTInductor)"}
    for lang in ("en", "zh"):
        in_use = compile_sentence(cpu_live(compiled=True, **on_gpu), lang)
        assert in_use == compile_sentence(cpu_live(device="cuda:0", compiled=True, compile_status="compiled"), lang)
        ready = compile_sentence(cpu_live(compiled=False, **on_gpu), lang)  # compiled, not switched to yet
        assert ready != in_use and ready


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_auto_compute_says_where_fp8_takes_over(lang):
    from ernie_nf4.runtime.compute import AUTO_MIN_ROWS
    from ernie_nf4.webapp.stats_view import live_paragraph

    text = live_paragraph(cpu_live(compute="auto"), lang)
    assert f"{AUTO_MIN_ROWS:,}" in text and "--compute auto" in text and "AUTO" not in text
    assert ("FP8 from 4,096 tokens" if lang == "en" else "4,096 个 token 起") in text
    assert "--compute fp8" in live_paragraph(cpu_live(compute="fp8"), lang)
