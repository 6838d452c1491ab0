"""Progress as the UI shows it: the prompt enhancer's tokens written and its cap, which image of how many in
denoising and decoding, and a fraction that never goes back. Real tiny NF4 pipeline through ``ImageService``."""

import pytest

from ernie_nf4.progress import Progress
from ernie_nf4.request import GenerationRequest

from .support.fixtures import DEVICE


def test_describe_names_the_image_and_the_tokens():
    assert Progress("pe", done=48, total=2048, unit="tokens").describe() == "prompt enhancer · 48 / 2048 tokens"
    denoising = Progress("denoising", done=11, total=32, unit="steps", eta_seconds=5, image=2, images=4)
    assert denoising.describe() == "denoising · image 2 of 4 · step 3/8 · ETA 5 s"
    assert denoising.fraction == 11 / 32  # of the whole run
    assert Progress("vae_decode", done=16, total=32, unit="steps", image=2, images=4).describe() == (
        "decoding · image 2 of 4"
    )
    assert Progress("denoising", done=3, total=8, unit="steps").describe() == "denoising · step 3/8"


@pytest.mark.nf4
def test_a_run_reports_pe_tokens_and_image_k_of_n_and_the_bar_never_goes_back(tiny_package, nf4_everywhere):
    from ernie_nf4.serving.service import ImageService, ServiceConfig

    service = ImageService(ServiceConfig(model_dir=str(tiny_package), tiny=True, device=DEVICE, max_pe_tokens=40))
    events = []
    request = GenerationRequest("a cat", width=64, height=64, num_inference_steps=3, num_images=2, seed=1)
    service.generate(request, on_progress=events.append)
    # the run's events start at the PE's first count (a CUDA load also reports capturing the PE's graph as "pe")
    run = events[next(i for i, e in enumerate(events) if e.stage == "pe" and e.unit == "tokens") :]

    pe = [e for e in run if e.stage == "pe"]
    written = [e.done for e in pe]  # every 8 tokens on the CPU, every chunk of 16 with CUDA graphs
    assert written[0] == 0 and written == sorted(set(written)) and len(written) >= 3
    assert all(later - earlier <= 17 for earlier, later in zip(written, written[1:], strict=False))
    assert written[-1] == service.last_result.enhancement.tokens == 40
    assert {(e.total, e.unit) for e in pe} == {(40, "tokens")}
    assert pe[1].describe() == f"prompt enhancer · {written[1]} / 40 tokens"

    later = [e for e in run if e.stage in ("denoising", "vae_decode")]
    assert [(e.stage, e.image, e.images) for e in later if e.stage == "vae_decode"] == [
        ("vae_decode", 1, 2),
        ("vae_decode", 2, 2),
    ]
    assert {e.image for e in later if e.stage == "denoising"} == {1, 2}
    assert all(e.images == 2 and e.fraction is not None for e in later)
    fractions = [e.fraction for e in later]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(e.describe().startswith("denoising · image 2 of 2 · step 1/3") for e in later)


def test_the_page_bar_moves_with_each_image_and_names_the_step_within_it():
    from ernie_nf4.webapp.run_progress import RunProgress

    bar, steps, images = RunProgress("en"), 4, 2
    seen = [bar(Progress("pe", done=8, total=40, unit="tokens"))[0], bar(Progress("text_encoding"))[0]]
    lines = []
    for image in (1, 2):
        for step in range(1, steps + 1):
            done = (image - 1) * steps + step
            fraction, line = bar(
                Progress("denoising", done=done, total=steps * images, unit="steps", image=image, images=images)
            )
            seen.append(fraction)
            lines.append(line)
        seen.append(
            bar(
                Progress(
                    "vae_decode", done=image * steps, total=steps * images, unit="steps", image=image, images=images
                )
            )[0]
        )
    assert seen == sorted(seen) and seen[-1] == 1.0
    after_first_image = seen[2 + steps]  # the first decode
    assert 0.5 <= after_first_image <= 0.65, seen  # halfway through the images' share, not near the end
    # the step within the image; the line ends with the word for the whole run, whose amount Gradio writes after it
    # ("… · overall - 62.5%")
    assert lines[steps] == "denoising · image 2 of 2 · step 1/4 · overall"


def test_a_chinese_page_reads_the_time_left_in_chinese_units():
    from ernie_nf4.webapp.run_progress import describe

    event = Progress("denoising", done=1, total=8, unit="steps", eta_seconds=65)
    assert describe(event, "zh").endswith("预计还需 1 分 05 秒")
    assert describe(event, "en").endswith("ETA 1 min 05 s")


@pytest.fixture(scope="module")
def first_start(tmp_path_factory):
    """What a first start reports: the service gets the tiny package (it builds it) and loads it on this machine."""
    from ernie_nf4.serving.service import ImageService, ServiceConfig

    folder = tmp_path_factory.mktemp("first-start") / "ERNIE-Image-NF4"
    events = []
    config = ServiceConfig(model_dir=str(folder), repo_id=None, source=None, tiny=True, compile=False)
    service = ImageService(config)  # compile off: nothing goes on in the background after the load
    service.load(on_progress=events.append)
    return folder, events


def test_building_the_package_moves_the_bar_then_the_run_starts_its_own(first_start):
    from ernie_nf4.webapp.run_progress import RunProgress

    stages = [event.stage for event in first_start[1]]
    built = stages.index("load")  # the build reports first, and only the build
    assert set(stages[:built]) == {"build"} and "build" not in stages[built:]
    events = first_start[1][:built]
    bar = RunProgress("en")
    shown = [bar(event) for event in events]
    fractions = [fraction for fraction, _ in shown]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert len(set(fractions)) >= 6, shown  # each model of the random original, each component quantized
    assert any(text.startswith("building the package · 50% · [1/") for _, text in shown), shown
    fitting = [fraction for fraction, text in shown if "fitting the live previews' map" in text]
    assert fitting and 0.75 < fitting[0] < 1.0, shown  # not done until that map is
    assert bar(Progress("denoising", done=1, total=10, unit="steps"))[0] == pytest.approx(0.28)  # the run's own bar
    downloading = Progress("download", done=3e9, total=9e9, unit="bytes")
    assert RunProgress("zh")(downloading) == (pytest.approx(1 / 3), describe_zh(downloading))


def test_a_chinese_page_reads_the_build_and_the_load_in_chinese(first_start):
    """Each message of a first start and of a later one (the package found), as the page writes it: in Chinese on a
    Chinese page, only names and numbers left in Latin letters; as the library wrote it on an English one."""
    import re

    from ernie_nf4.serving.provider import ensure_package
    from ernie_nf4.webapp.run_progress import describe

    folder, events = first_start
    found = []
    ensure_package(folder, repo_id=None, source=None, on_progress=found.append)
    events = [*events, *found]
    assert {event.stage for event in events} >= {"build", "load"} and found[0].detail.key == "load_found"
    names = {"ERNIE", "Image", "NF", "VAE", "quantize", "py", "cpu", "cuda", "transformer"}
    for event in events:
        assert event.detail is not None, event  # every message has its words for the page
        chinese = describe(event, "zh")
        for _, value in event.detail.values:
            chinese = chinese.replace(str(value), "")
        assert set(re.findall(r"[A-Za-z]+", chinese)) <= names, describe(event, "zh")
        assert re.search(r"[\u4e00-\u9fff]", chinese), chinese


def describe_zh(event):
    from ernie_nf4.webapp.run_progress import describe

    return describe(event, "zh")


def test_after_a_live_preview_the_page_says_the_time_since_the_run_started():
    from ernie_nf4.webapp.run_progress import RunProgress

    now = [100.0]
    event = Progress("denoising", done=2, total=8, unit="steps")
    english, chinese = RunProgress("en", clock=lambda: now[0]), RunProgress("zh", clock=lambda: now[0])
    now[0] = 103.24
    assert english(event)[1] == "denoising · step 2/8 · overall"  # Gradio's own timer is right until a preview
    english.previewed = chinese.previewed = True
    assert english(event)[1] == "denoising · step 2/8 · 3.2 s elapsed · overall"
    assert chinese(event)[1] == "去噪 · 第 2/8 步 · 已运行 3.2 秒 · 总进度"
    now[0] = 165.4
    assert english(event)[1].endswith(" · 1 min 05 s elapsed · overall")


@pytest.mark.parametrize(
    "stages, first, halfway",
    [
        (("pe",), Progress("pe", done=20, total=40, unit="tokens"), 0.5),  # Enhance first: the PE is all the run
        (("text_encoding", "denoising"), Progress("text_encoding"), None),  # the PE off: the bar starts at 0
    ],
)
def test_the_bar_is_shared_by_the_stages_the_run_has(stages, first, halfway):
    from ernie_nf4.webapp.run_progress import RunProgress, stages_of

    assert stages == stages_of(runs_pe=False, enhance_only=stages == ("pe",))
    bar = RunProgress("en", stages=stages)
    fraction, _ = bar(first)
    if halfway is not None:
        assert fraction == pytest.approx(halfway)
        assert bar(Progress("pe", done=40, total=40, unit="tokens"))[0] == pytest.approx(1.0)
        return
    assert fraction < 0.1  # the text encoder's small share, not the PE's before it
    step = bar(Progress("denoising", done=15, total=200, unit="steps"))[0]
    text_share = 0.05 / (0.05 + 0.8)  # the text encoder's weight against denoising's
    assert step == pytest.approx(text_share + (1 - text_share) * 15 / 200)  # 12.9% of the way, not 26%
    assert stages_of(runs_pe=True) == ("pe", "text_encoding", "denoising")
