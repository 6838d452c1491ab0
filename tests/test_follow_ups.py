"""Vary and Upscale requests, made from a result's request and its image: strengths, seeds, sizes, the 2048 cap,
the refusal of an image already at the largest size, and the enhanced prompt reused."""

import pytest
from PIL import Image

from ernie_nf4.errors import InvalidArgument
from ernie_nf4.follow_ups import (
    UPSCALE_STRENGTH,
    VARY_STRONG,
    VARY_SUBTLE,
    upscale_request,
    upscaled_size,
    vary_request,
)
from ernie_nf4.request import GenerationRequest, InitImage, LoraChoice


def result_request(**changes) -> GenerationRequest:
    values = dict(
        prompt="a lighthouse at dusk",
        negative_prompt="blurry",
        width=1024,
        height=1024,
        num_inference_steps=30,
        guidance_scale=3.5,
        seed=77,
        use_pe=True,
        num_images=2,
        loras=(LoraChoice("ink", 0.7),),
    )
    return GenerationRequest(**(values | changes))


def image(width=1024, height=1024) -> Image.Image:
    return Image.new("RGB", (width, height), (10, 200, 30))


def test_vary_keeps_the_settings_and_takes_the_image_and_a_new_seed():
    source = result_request()
    subtle = vary_request(source, image(), VARY_SUBTLE, revised_prompt="A lighthouse, dusk, film")
    assert (subtle.strength, VARY_SUBTLE, VARY_STRONG) == (0.3, 0.3, 0.6)
    assert subtle.init_image.sha256 == InitImage.of(image()).sha256
    assert subtle.seed != source.seed and 0 <= subtle.seed < 2**32
    for name in ("prompt", "negative_prompt", "width", "height", "num_inference_steps", "guidance_scale", "loras"):
        assert getattr(subtle, name) == getattr(source, name), name
    assert subtle.num_images == 2 and subtle.steps_run == 9  # the last 30 % of 30 steps
    assert subtle.enhanced_prompt == "A lighthouse, dusk, film" and not subtle.runs_pe
    assert subtle.enhanced_by == "pe"  # the PE's text, reused: the PNG says so
    from ernie_nf4.webapp.png_params import parameters_text

    text = parameters_text(subtle, subtle.seed, None, "m")
    assert 'Revised prompt: "A lighthouse, dusk, film"' in text and "Enhanced prompt by" not in text
    strong = vary_request(source, image(), VARY_STRONG, seed=5)
    assert (strong.strength, strong.seed, strong.steps_run) == (0.6, 5, 18)
    assert strong.enhanced_prompt is None and strong.runs_pe  # no revised prompt known: the PE writes one
    seeds = {vary_request(source, image()).seed for _ in range(5)}
    assert len(seeds) > 1  # drawn afresh each time


def test_vary_runs_at_the_images_own_size_whatever_its_settings_say():
    claims_2048 = result_request(width=2048, height=2048)  # a PNG's text may say anything
    varied = vary_request(claims_2048, image(64, 72))
    assert (varied.width, varied.height) == (64, 80)  # its own size, sides snapped to multiples of 16
    assert vary_request(result_request(), image(1000, 760)).width == 1008


def test_vary_keeps_the_users_enhanced_prompt_and_a_run_without_the_pe_stays_without():
    mine = vary_request(result_request(enhanced_prompt="my own words"), image(), revised_prompt="my own words")
    assert mine.enhanced_prompt == "my own words" and mine.enhanced_by == "user"
    off = vary_request(result_request(use_pe=False), image(), revised_prompt=None)
    assert off.enhanced_prompt is None and not off.use_pe


def test_upscale_doubles_the_size_with_the_same_seed_and_prompt():
    source = result_request(width=1024, height=768)
    up = upscale_request(source, image(1024, 768), revised_prompt="A lighthouse, dusk")
    assert (up.width, up.height) == (2048, 1536)
    assert (up.strength, UPSCALE_STRENGTH) == (0.3, 0.3)
    assert (up.seed, up.prompt, up.num_inference_steps, up.guidance_scale) == (77, source.prompt, 30, 3.5)
    assert up.num_images == 1 and up.loras == source.loras
    assert up.enhanced_prompt == "A lighthouse, dusk" and not up.runs_pe
    assert up.init_image.size == (1024, 768)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((512, 512), (1024, 1024)),
        ((1024, 1024), (2048, 2048)),
        ((896, 1200), (1536, 2048)),  # capped at 2048 on the longer side, the aspect kept, multiples of 16
        ((1376, 768), (2048, 1136)),
        ((1264, 848), (2048, 1376)),
        ((1536, 1024), (2048, 1360)),  # 1.33x: the least growth that is still an upscale
    ],
)
def test_upscaled_sizes_stay_within_2048_in_multiples_of_16(size, expected):
    assert upscaled_size(*size) == expected
    width, height = expected
    assert width % 16 == height % 16 == 0 and max(width, height) <= 2048
    assert abs(width / height - size[0] / size[1]) < 0.02


# at, or so near, the largest size that a side would grow less than 1.25x (a whole tiled run for next to nothing)
@pytest.mark.parametrize("size", [(2048, 2048), (2048, 1024), (1024, 2048), (2032, 2032), (1024, 2032), (2032, 1008)])
def test_upscale_is_refused_by_name_at_the_largest_size(size):
    with pytest.raises(InvalidArgument, match="init_image is .* so this one would hardly grow") as refused:
        upscale_request(result_request(width=size[0], height=size[1]), image(*size))
    assert refused.value.field == "init_image"
    assert "2048" in str(refused.value)
