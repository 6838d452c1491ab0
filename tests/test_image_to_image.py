"""Image-to-image on the tiny NF4 package (CPU): strength 1 is text-to-image, strength 0 the VAE round trip of the
input, steps in between run the last part of the schedule; Stop, the size note and refusals."""

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from ernie_nf4.errors import GenerationCancelled, InvalidArgument
from ernie_nf4.request import FormValues, GenerationRequest, InitImage, request_from_form
from ernie_nf4.runtime.image_to_image import encode, fitted
from ernie_nf4.runtime.vae_decode import decode

pytestmark = pytest.mark.nf4


def gradient(width: int = 64, height: int = 64) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([x * 255 // width, y * 255 // height, 128 + 0 * x], -1).astype("uint8"))


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def request(**changes) -> GenerationRequest:
    base = GenerationRequest("a lighthouse at dusk", width=64, height=64, num_inference_steps=4, seed=11, use_pe=False)
    return replace(base, **changes)


def test_strength_one_gives_the_text_to_image_bytes(tiny_generator):
    plain = tiny_generator.generate(request())
    with_image = tiny_generator.generate(request(init_image=InitImage.of(gradient()), strength=1.0))
    assert with_image.images[0].tobytes() == plain.images[0].tobytes()


def test_strength_zero_gives_the_input_through_the_vae(tiny_generator):
    image = gradient(96, 64)  # a wider image: fitted to 64x64 first
    result = tiny_generator.generate(request(init_image=InitImage.of(image), strength=0.0))
    pipe = tiny_generator.pipe
    with torch.no_grad():
        latents = encode(pipe, fitted(image, 64, 64), tiny_generator.device, pipe.transformer.dtype)
        round_trip = decode(pipe, latents)[0]
    assert np.abs(pixels(result.images[0]) - pixels(round_trip)).max() <= 1
    assert fitted(image, 64, 64).size == (64, 64)


def test_half_strength_runs_half_the_steps_and_differs_from_both_ends(tiny_generator):
    init = InitImage.of(gradient())
    steps = []
    half = tiny_generator.generate(request(init_image=init, strength=0.5), on_step=lambda d, t: steps.append((d, t)))
    assert steps == [(1, 2), (2, 2)]
    again = tiny_generator.generate(request(init_image=init, strength=0.5))
    assert again.images[0].tobytes() == half.images[0].tobytes()
    ends = [tiny_generator.generate(request(init_image=init, strength=s)).images[0] for s in (0.0, 1.0)]
    for end in ends:
        assert np.abs(pixels(half.images[0]) - pixels(end)).mean() > 0.5


def test_two_images_count_the_steps_run(tiny_generator):
    steps = []
    tiny_generator.generate(
        request(init_image=InitImage.of(gradient()), strength=0.75, num_images=2),
        on_step=lambda d, t: steps.append((d, t)),
    )
    assert steps == [(i, 6) for i in range(1, 7)]


def test_stop_after_a_step(tiny_generator):
    cancel, steps = threading.Event(), []

    def on_step(done, total):
        steps.append(done)
        cancel.set()

    with pytest.raises(GenerationCancelled):
        tiny_generator.generate(request(init_image=InitImage.of(gradient()), strength=0.5), on_step, cancel=cancel)
    assert steps == [1]


def test_a_non_matching_size_is_fitted_with_a_note(tmp_path, tiny_generator):
    path = tmp_path / "wide.png"
    gradient(128, 64).save(path)
    req, notes = request_from_form(
        FormValues(
            "a fox", width=64, height=64, num_inference_steps=2, use_pe=False, init_image=str(path), strength=0.5
        )
    )
    assert req.init_image.size == (128, 64) and req.strength == 0.5
    assert notes == ["init_image 128x64 → scaled to 128x64, center-cropped to 64x64"]
    assert tiny_generator.generate(req).images[0].size == (64, 64)
    # the same picture has the same hash, whether it came as a file, a dict from Gradio or pixels
    from_dict, _ = request_from_form(FormValues("a fox", init_image={"path": str(path)}, strength="0.5"))
    assert from_dict.init_image.sha256 == InitImage.of(gradient(128, 64)).sha256 == req.init_image.sha256


def test_strength_one_on_the_form_drops_the_image(tmp_path):
    path = tmp_path / "a.png"
    gradient().save(path)
    req, notes = request_from_form(FormValues("a fox", width=64, height=64, init_image=str(path), strength=1))
    assert req.init_image is None and not req.uses_init_image and notes == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"strength": 1.5}, "strength"),
        ({"strength": -0.1}, "strength"),
        ({"strength": "lots", "init_image": "IMAGE"}, "strength"),
        ({"strength": 0.5}, "init_image"),
        ({"strength": 0.5, "init_image": "NOT_AN_IMAGE"}, "init_image"),
        ({"strength": 0.5, "init_image": "HUGE"}, "init_image"),
        ({"strength": 0.5, "init_image": 42}, "init_image"),
        ({"strength": 0.5, "init_image": np.zeros((32, 32, 1), np.uint8)}, "init_image"),
        ({"strength": 0.5, "init_image": np.zeros((32, 32, 3), np.float32)}, "init_image"),
    ],
)
def test_bad_inputs_are_refused_by_field(tmp_path, changes, field):
    gradient().save(tmp_path / "ok.png")
    (tmp_path / "text.png").write_text("not an image")
    Image.new("RGB", (9000, 16)).save(tmp_path / "huge.png")
    files = {"IMAGE": tmp_path / "ok.png", "NOT_AN_IMAGE": tmp_path / "text.png", "HUGE": tmp_path / "huge.png"}
    if isinstance(changes.get("init_image"), str):
        changes = {**changes, "init_image": str(files[changes["init_image"]])}
    with pytest.raises(InvalidArgument) as err:
        request_from_form(FormValues("a fox", **changes))
    assert err.value.field == field
    assert field in str(err.value)


def test_the_request_refuses_a_strength_without_an_image():
    with pytest.raises(InvalidArgument) as err:
        GenerationRequest("a fox", strength=0.3)
    assert err.value.field == "init_image"
    with pytest.raises(InvalidArgument) as err:
        GenerationRequest("a fox", init_image="photo.png", strength=0.3)
    assert err.value.field == "init_image"
    assert GenerationRequest("a fox", init_image=InitImage.of(gradient()), strength=0.3).steps_run == 15


@pytest.mark.slow
def test_the_compiled_blocks_run_every_strength_without_recompiling(tiny_package, nf4_everywhere):
    from ernie_nf4.runtime.fast_transformer import CompileState
    from ernie_nf4.serving.service import ImageService, ServiceConfig

    from .support.fixtures import DEVICE

    config = ServiceConfig(model_dir=str(tiny_package), repo_id=None, source=None, device=DEVICE, compile=True)
    service = ImageService(config)
    service.load()
    compiler = service.compiler
    assert compiler.wait(timeout=900) in (CompileState.READY, CompileState.ACTIVE), compiler.error
    init = InitImage.of(gradient())
    events = []
    for strength in (1.0, 0.5, 0.75, 0.25):  # 4, 2, 3 and 1 steps of the same schedule
        service.generate(request(init_image=init, strength=strength), on_progress=events.append)
        assert service.last_run_compiled
    assert compiler.fallback_calls == 0  # every block of every call ran the compiled code
    totals = [event.total for event in events if event.stage == "denoising" and event.done]
    assert set(totals) == {4, 2, 3, 1}  # the progress counts the steps each run runs


@pytest.mark.parametrize("guidance", [4.0, 1.0], ids=["guided", "unguided"])
def test_the_loop_from_the_first_step_is_the_pipelines_own(tiny_generator, guidance):
    from ernie_nf4.runtime.denoising import denoise, initial_latents
    from ernie_nf4.runtime.image_to_image import denoise_from
    from ernie_nf4.runtime.timing import StageClock

    req = request(guidance_scale=guidance, negative_prompt="blurry")
    device, pipe = tiny_generator.device, tiny_generator.pipe
    prompt, _ = tiny_generator.prompt_stage.run(req, StageClock(device))
    noise = initial_latents(pipe, req.seed, req.width, req.height, device)
    stock = denoise(pipe, req, prompt.positive, prompt.negative, noise)
    image_latents = torch.randn(noise.shape, generator=torch.Generator().manual_seed(1)).to(noise)
    ours = denoise_from(pipe, req, prompt.positive, prompt.negative, image_latents, noise)  # strength 1: all steps
    assert torch.equal(ours, stock)


def test_a_phones_photo_is_turned_as_it_is_shown(tmp_path):
    upright = gradient(64, 32)
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: show the stored pixels rotated a quarter clockwise
    path = tmp_path / "phone.jpg"
    upright.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, quality=95)
    assert InitImage.of(str(path)).size == (64, 32)
