"""Image-to-image above the memory mode's budget runs in overlapping tiles (tiny NF4 package on CPU, with the budget
made small so a 128x128 run is tiled): steps counted over the tiles, the full size, the same bytes again, Stop
between tiles, no seam on a uniform image, and the untiled bytes within the budget."""

import threading
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from ernie_nf4.errors import GenerationCancelled
from ernie_nf4.request import GenerationRequest, InitImage
from ernie_nf4.runtime import upscale
from ernie_nf4.runtime.memory_modes import MemoryMode
from ernie_nf4.runtime.upscale import Blend, plan_tiles

pytestmark = pytest.mark.nf4

SMALL_BUDGET = 64 * 64  # 64-px tiles


@pytest.fixture
def small_budget(monkeypatch):
    monkeypatch.setitem(upscale.BUDGET_PIXELS, MemoryMode.ALL_ON_GPU, SMALL_BUDGET)


def stripes(width: int = 64, height: int = 64) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([x * 255 // width, y * 255 // height, 128 + 0 * x], -1).astype("uint8"))


def upscale_request(image=None, **changes) -> GenerationRequest:
    base = GenerationRequest(
        "a lighthouse at dusk",
        width=128,
        height=128,
        num_inference_steps=4,
        seed=11,
        use_pe=False,
        init_image=InitImage.of(image or stripes()),
        strength=0.5,
    )
    return replace(base, **changes)


def test_the_plan_covers_the_image_in_overlapping_tiles_within_the_budget():
    plan = plan_tiles(2048, 2048, 1024 * 1024)
    assert (plan.width, plan.height, plan.count) == (1024, 1024, 9)
    assert plan.lefts == plan.tops == (0, 512, 1024)
    narrow = plan_tiles(1520, 2048, 1024 * 1024)
    assert narrow.lefts == (0, 496) and narrow.tops == (0, 512, 1024)  # overlaps of 528 and 512 px
    assert plan_tiles(1024, 1024, 1024 * 1024).count == 1
    for tiled in (plan, narrow, plan_tiles(2048, 1088, 1024 * 1024)):
        assert tiled.width * tiled.height <= 1024 * 1024
        covered = np.zeros((2048, 2048), bool)
        for left, top, right, bottom in tiled.boxes:
            covered[top:bottom, left:right] = True
            assert left % 16 == top % 16 == 0
        assert covered[: tiled.tops[-1] + tiled.height, : tiled.lefts[-1] + tiled.width].all()
        assert tiled.lefts[-1] + tiled.width in (1520, 2048) and tiled.tops[-1] + tiled.height in (1088, 2048)


def test_the_budget_is_the_size_each_mode_is_measured_at():
    for mode in (MemoryMode.ALL_ON_GPU, MemoryMode.LOW_VRAM, MemoryMode.MODEL_OFFLOAD):
        assert upscale.budget_pixels(mode) == 1024 * 1024


def test_weights_of_overlapping_tiles_sum_to_a_smooth_whole():
    plan = plan_tiles(128, 128, SMALL_BUDGET)
    total = np.zeros((128, 128, 1))
    for index, (left, top, right, bottom) in enumerate(plan.boxes):
        weight = plan.weights(index)
        assert weight.min() > 0 and weight.max() > 0.9
        total[top:bottom, left:right] += weight
    assert total.min() > 0.5


def test_a_tiled_run_counts_its_steps_over_the_tiles_and_gives_the_full_size(tiny_generator, small_budget):
    steps = []
    result = tiny_generator.generate(upscale_request(), on_step=lambda done, total: steps.append((done, total)))
    count = plan_tiles(128, 128, SMALL_BUDGET).count
    assert count == 9
    assert steps == [(done, count * 2) for done in range(1, count * 2 + 1)]  # 2 steps run per tile (strength 0.5)
    assert result.images[0].size == (128, 128)
    two = []
    tiny_generator.generate(upscale_request(num_images=2), on_step=lambda done, total: two.append((done, total)))
    assert two == [(done, count * 4) for done in range(1, count * 4 + 1)]


def test_the_same_request_gives_the_same_bytes(tiny_generator, small_budget):
    first = tiny_generator.generate(upscale_request()).images[0]
    again = tiny_generator.generate(upscale_request()).images[0]
    other_seed = tiny_generator.generate(upscale_request(seed=12)).images[0]
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other_seed.tobytes()


def test_stop_between_tiles_raises_cancelled(tiny_generator, small_budget):
    cancel, steps = threading.Event(), []

    def on_step(done, total):
        steps.append(done)
        if done == 5:  # in the third tile
            cancel.set()

    with pytest.raises(GenerationCancelled):
        tiny_generator.generate(upscale_request(), on_step=on_step, cancel=cancel)
    assert steps == [1, 2, 3, 4, 5]


def blended(plan, colours, width, height) -> np.ndarray:
    blend = Blend(plan, width, height)
    for index, colour in enumerate(colours):
        blend.add(index, Image.new("RGB", (plan.width, plan.height), colour))
    return np.asarray(blend.image(), dtype=np.int16)


def largest_step(values: np.ndarray) -> int:
    """The largest difference between neighbouring pixels, across and down."""
    return int(max(np.abs(np.diff(values, axis=0)).max(), np.abs(np.diff(values, axis=1)).max()))


def test_a_uniform_colour_stays_uniform_and_tiles_that_differ_meet_without_a_seam():
    plan = plan_tiles(2048, 2048, 1024 * 1024)
    uniform = blended(plan, [(120, 130, 140)] * plan.count, 2048, 2048)
    assert (uniform == [120, 130, 140]).all()
    rng = np.random.default_rng(0)
    colours = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(plan.count)]
    values = blended(plan, colours, 2048, 2048)
    assert largest_step(values) <= 3  # at most 255 across an overlap of 512 px, plus rounding
    pasted = np.zeros_like(values)  # tiles pasted one over the other: a seam as large as their difference
    for (left, top, right, bottom), colour in zip(plan.boxes, colours, strict=True):
        pasted[top:bottom, left:right] = colour
    assert largest_step(pasted) > 50
    small = plan_tiles(128, 128, SMALL_BUDGET)
    assert largest_step(blended(small, [(i * 25, 0, 255 - i * 25) for i in range(small.count)], 128, 128)) <= 4


def test_a_tiled_run_is_the_blend_of_its_tiles_each_run_alone(tiny_generator, small_budget):
    """At strength 0 each tile is its crop of the fitted init image through the VAE: the tiled run of a uniform
    image is exactly the blend of those tiles run as 64x64 requests of their own."""
    grey = Image.new("RGB", (64, 64), (120, 130, 140))
    tiled = tiny_generator.generate(upscale_request(grey, strength=0.0)).images[0]
    plan = plan_tiles(128, 128, SMALL_BUDGET)
    full = grey.resize((128, 128), Image.Resampling.LANCZOS)
    blend = Blend(plan, 128, 128)
    for index, box in enumerate(plan.boxes):
        alone = upscale_request(full.crop(box), width=64, height=64, strength=0.0)
        blend.add(index, tiny_generator.generate(alone).images[0])
    assert tiled.size == (128, 128)
    assert tiled.tobytes() == blend.image().tobytes()


def test_within_the_budget_and_text_to_image_run_untiled(tiny_generator, monkeypatch):
    small = upscale_request(width=64, height=64)
    text_only = upscale_request(init_image=None, strength=1.0)  # 128x128, above the small budget
    before = [tiny_generator.generate(r).images[0].tobytes() for r in (small, text_only)]
    monkeypatch.setitem(upscale.BUDGET_PIXELS, MemoryMode.ALL_ON_GPU, SMALL_BUDGET)
    steps = []
    after = [
        tiny_generator.generate(r, on_step=lambda d, t: steps.append(t)).images[0].tobytes() for r in (small, text_only)
    ]
    assert after == before
    assert set(steps) == {2, 4}  # 2 steps run for the image-to-image, 4 for the text-to-image: one pass each


def test_the_service_reports_image_one_of_one_while_its_tiles_run(tiny_package, small_budget):
    from ernie_nf4.serving.service import ImageService, ServiceConfig

    from .support.fixtures import DEVICE

    service = ImageService(ServiceConfig(model_dir=str(tiny_package), tiny=True, device=DEVICE))
    events = []
    service.generate(upscale_request(), on_progress=events.append)
    later = [e for e in events if e.stage in ("denoising", "vae_decode")]
    assert {(e.image, e.images, e.total) for e in later} == {(1, 1, 18)}  # 9 tiles of 2 steps: one image
    assert [e.done for e in later if e.stage == "vae_decode"] == list(range(2, 19, 2))  # after each tile
    fractions = [e.fraction for e in later]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert later[-1].describe() == "decoding · image 1 of 1"
