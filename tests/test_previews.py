"""Live previews in the library, on the tiny NF4 package (CPU): the latent->RGB map fitted from the package's own
VAE, stored by quantize and read by the loader (fitted at first use for a package without it), and the previews a
run gives while it denoises: before the result, every few steps, of the right size, none after a stop, none when
no one asked."""

from __future__ import annotations

import json
import re
import shutil
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from ernie_nf4.errors import GenerationCancelled, PackageError
from ernie_nf4.package.metadata import METADATA_FILE, read_metadata
from ernie_nf4.package.preview_map import (
    PREVIEW_FILE,
    decode_packed,
    encode_packed,
    fit_preview_map,
    preview_targets,
    read_preview_map,
    synthetic_images,
)
from ernie_nf4.request import GenerationRequest, InitImage
from ernie_nf4.runtime.denoising import previewed_steps

from .support.fixtures import DEVICE
from .test_foreign_package import write_foreign_package

pytestmark = pytest.mark.nf4


def request(**changes) -> GenerationRequest:
    base = GenerationRequest("a red boat", width=96, height=64, num_inference_steps=8, seed=5, use_pe=False)
    return replace(base, **changes)


def psnr(a, b) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def test_quantize_writes_a_map_fitted_from_the_packages_vae_that_beats_a_mean_colour(tiny_package):
    from diffusers import AutoencoderKLFlux2

    stored = read_preview_map(tiny_package)
    assert stored is not None
    assert tuple(stored.weight.shape) == (12, 128) and tuple(stored.bias.shape) == (12,)
    assert torch.isfinite(stored.weight).all() and torch.isfinite(stored.bias).all()
    entry = read_metadata(tiny_package)["files"][PREVIEW_FILE]  # listed, with its size and sha256
    assert entry["bytes"] == (tiny_package / PREVIEW_FILE).stat().st_size and len(entry["sha256"]) == 64
    vae = AutoencoderKLFlux2.from_pretrained(tiny_package / "vae")
    refit = fit_preview_map(AutoencoderKLFlux2.from_pretrained(tiny_package / "vae").to(DEVICE))  # as quantize did
    held_out = synthetic_images(6, 192, seed=7)
    latents = encode_packed(vae, held_out)
    if DEVICE == "cpu":  # fitted from this VAE, deterministically
        assert torch.equal(refit.weight, stored.weight)
    else:  # a GPU's kernels may round otherwise: the same previews within rounding
        again = torch.stack([refit.rgb(latents[i : i + 1]) for i in range(len(latents))])
        first = torch.stack([stored.rgb(latents[i : i + 1]) for i in range(len(latents))])
        assert psnr(again, first) > 40
    # held-out images (another seed, another size): the preview against what the VAE decodes the latents to
    wanted = preview_targets(decode_packed(vae, latents))
    shown = torch.stack([stored.rgb(latents[i : i + 1]) for i in range(len(latents))])
    assert shown.shape == wanted.shape == (6, 3, 24, 24)
    mean_colour = wanted.mean(dim=(2, 3), keepdim=True).expand_as(wanted)  # each image's own mean colour
    assert psnr(shown, wanted) > psnr(mean_colour, wanted) + 0.3


def test_a_damaged_map_is_refused_by_name(tiny_package, tmp_path):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(12, 64), "bias": torch.zeros(12)}, str(tmp_path / PREVIEW_FILE))
    with pytest.raises(PackageError, match=f"{PREVIEW_FILE}: must hold float32 tensors"):
        read_preview_map(tmp_path)
    save_file({"weight": torch.full((12, 128), float("nan")), "bias": torch.zeros(12)}, str(tmp_path / PREVIEW_FILE))
    with pytest.raises(PackageError, match="NaN or infinite"):
        read_preview_map(tmp_path)
    header = {  # right names, dtypes and shapes, but the bias overlaps the weight: safetensors' parser refuses it
        "weight": {"dtype": "F32", "shape": [12, 128], "data_offsets": [0, 6144]},
        "bias": {"dtype": "F32", "shape": [12], "data_offsets": [0, 48]},
    }
    raw = json.dumps(header).encode()
    (tmp_path / PREVIEW_FILE).write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(6144))
    with pytest.raises(PackageError, match=f"{PREVIEW_FILE}: is not a readable safetensors file"):
        read_preview_map(tmp_path)
    package = tmp_path / "package"
    shutil.copytree(tiny_package, package)
    (package / PREVIEW_FILE).write_bytes((tmp_path / PREVIEW_FILE).read_bytes())  # same name, other bytes
    from ernie_nf4.package.check import check_package

    with pytest.raises(PackageError, match=f"{PREVIEW_FILE}: differs from the metadata"):
        check_package(package)


def test_previews_come_before_the_result_every_few_steps_at_an_eighth_of_the_size(tiny_generator):
    seen, steps = [], []
    result = tiny_generator.generate(
        request(num_images=2),
        on_step=lambda done, total: steps.append(done),
        on_preview=lambda image, done, total: seen.append((image, done, total, len(steps))),
    )
    assert previewed_steps(8) == [1, 2, 3, 4, 5, 6, 7] and previewed_steps(50) == [6, 12, 18, 24, 30, 36, 42, 48]
    assert [done for _, done, _, _ in seen] == [1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15]
    assert all(total == 16 for _, _, total, _ in seen)
    assert all(after == done for _, done, _, after in seen)  # right after the step it shows
    assert all(isinstance(image, Image.Image) and image.size == (12, 8) for image, *_ in seen)
    assert len({np.asarray(image).tobytes() for image, *_ in seen}) > 1  # the image forms: previews differ
    assert len(result.images) == 2 and result.images[0].size == (96, 64)


def test_image_to_image_previews_its_steps_run(tiny_generator):
    gradient = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (64, 1, 3)))
    seen = []
    tiny_generator.generate(
        request(width=64, height=64, init_image=InitImage.of(gradient), strength=0.5),
        on_preview=lambda image, done, total: seen.append((image.size, done, total)),
    )
    assert seen == [((8, 8), 1, 4), ((8, 8), 2, 4), ((8, 8), 3, 4)]


def test_no_preview_after_a_stop(tiny_generator):
    cancel, seen = threading.Event(), []

    def on_preview(image, done, total):
        seen.append(done)
        if len(seen) == 2:
            cancel.set()  # Stop pressed while the second preview is shown

    with pytest.raises(GenerationCancelled):
        tiny_generator.generate(request(num_images=2), on_preview=on_preview, cancel=cancel)
    assert seen == [1, 2]


@pytest.fixture(scope="module")
def mapless_package(tiny_original, tmp_path_factory):
    """A package written by plain transformers/diffusers calls: no preview map, no ernie-nf4 metadata."""
    return write_foreign_package(tiny_original, tmp_path_factory.mktemp("mapless") / "ERNIE-Image-NF4", False)


def test_a_package_without_a_map_gets_one_fitted_on_first_use_and_previews(mapless_package):
    from ernie_nf4.runtime.generation import Generator

    assert not (mapless_package / PREVIEW_FILE).exists()
    assert "format_version" not in json.loads((mapless_package / METADATA_FILE).read_text())
    generator = Generator.from_pretrained(mapless_package, device=DEVICE, prompt_cache_size=0)
    assert generator.loaded.previews is None
    generator.generate(request(num_inference_steps=2))
    assert generator.loaded.previews is None  # no one asked: nothing fitted, nothing made
    seen = []
    generator.generate(request(num_inference_steps=2), on_preview=lambda image, *_: seen.append(image.size))
    assert seen == [(12, 8)]
    fitted = generator.loaded.previews
    assert tuple(fitted.weight.shape) == (12, 128) and torch.isfinite(fitted.weight).all()
    generator.generate(request(num_inference_steps=2), on_preview=lambda *_: None)
    assert generator.loaded.previews is fitted  # kept in memory


def test_the_benchmark_measures_what_previews_cost(tiny_package, tmp_path, capsys):
    from ernie_nf4.benchmark.run import main

    args = ["--package", tiny_package, "--modes", "nf4", "--resolution", "64x64", "--steps", "8", "--no-use-pe"]
    args += ["--device", DEVICE, "--previews", "--json", tmp_path / "r.json", "--repeat", "1"]
    assert main([str(a) for a in args]) == 0
    mode = json.loads((tmp_path / "r.json").read_text())["modes"][0]
    assert mode["previews_per_run"] == 7 and isinstance(mode["preview_overhead"], float)
    assert re.search(r"\[nf4\] live previews: 7 a run, [+-]\d+\.\d\d% of the run's time", capsys.readouterr().out)


@pytest.mark.slow
def test_previews_come_through_the_service_and_keep_the_compiled_blocks(tiny_package):
    from torch._dynamo.utils import counters

    from ernie_nf4.runtime.fast_transformer import CompileState
    from ernie_nf4.serving.service import ImageService, ServiceConfig

    config = ServiceConfig(model_dir=str(tiny_package), repo_id=None, source=None, device=DEVICE, compile=True)
    service = ImageService(config)
    service.load()
    compiler = service.compiler
    assert compiler.wait(timeout=900) in (CompileState.READY, CompileState.ACTIVE), compiler.error
    plain = []
    service.generate(request(num_inference_steps=2), on_progress=plain.append)  # the compiled blocks from here on
    assert plain and all(event.preview is None for event in plain)  # not asked: no preview
    graphs, events = counters["stats"]["unique_graphs"], []
    result = service.generate(request(), on_progress=events.append, previews=True)
    assert service.last_run_compiled and compiler.fallback_calls == 0  # every block ran the compiled code
    assert counters["stats"]["unique_graphs"] == graphs  # the previews made nothing compile again
    previews = [event for event in events if event.preview is not None]
    assert [event.done for event in previews] == [1, 2, 3, 4, 5, 6, 7] and previews[0].preview.size == (12, 8)
    assert all(event.stage == "denoising" and event.image == 1 for event in previews)
    assert events.index(previews[-1]) < max(i for i, event in enumerate(events) if event.stage == "vae_decode")
    assert result.images[0].size == (96, 64)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["all-on-gpu", "low-vram"])
def test_previews_in_each_gpu_memory_mode(tiny_package, mode):
    from ernie_nf4.runtime.generation import Generator

    generator = Generator.from_pretrained(tiny_package, device="cuda", memory_mode=mode, prompt_cache_size=0)
    seen = []
    result = generator.generate(request(), on_preview=lambda image, done, total: seen.append((image.size, done)))
    assert seen == [((12, 8), step) for step in range(1, 8)] and result.images[0].size == (96, 64)
    assert generator.loaded.previews.weight.device.type == "cpu"  # the map stays on the CPU: 6 KB
