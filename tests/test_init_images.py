"""Init images as users' files come: 16-bit grey PNGs (scans, depth maps) keep their picture, transparent pixels
are white as a viewer shows them, formats other than PNG, JPEG and WebP are refused by name, and a thin image is
fitted to the run's size without ever being enlarged to its cover size."""

import numpy as np
import pytest
from PIL import Image

from ernie_nf4.errors import InvalidArgument
from ernie_nf4.request import InitImage
from ernie_nf4.runtime.image_to_image import fitted


def test_a_16_bit_grey_png_keeps_its_picture(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(tmp_path / "scan.png")
    assert Image.open(tmp_path / "scan.png").mode.startswith("I;16")
    pixels = np.asarray(InitImage.of(tmp_path / "scan.png").image)
    assert pixels.shape == (32, 256, 3)
    assert np.array_equal(pixels[0, :, 0], (ramp[0] >> 8).astype(np.uint8))  # scaled, not clipped to white


def test_transparent_pixels_are_white(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:16, :, :] = (200, 10, 10, 255)  # top half opaque red, bottom half fully transparent black
    Image.fromarray(rgba).save(tmp_path / "logo.png")
    pixels = np.asarray(InitImage.of(tmp_path / "logo.png").image)
    assert (pixels[:16] == (200, 10, 10)).all() and (pixels[16:] == 255).all()


def test_other_formats_are_refused_naming_the_field(tmp_path):
    Image.fromarray(np.zeros((32, 32), np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(InvalidArgument, match="give a PNG, JPEG or WebP file") as refused:
        InitImage.of(tmp_path / "float.tiff")
    assert refused.value.field == "init_image"


@pytest.mark.parametrize(
    "size, advice",
    [((1, 1), "give a larger image"), ((8192, 2), "give a larger image"), ((9000, 64), "make it smaller")],
)
def test_an_image_of_a_size_it_cannot_start_from_gets_the_advice_that_helps(size, advice):
    from ernie_nf4.webapp.messages import refusal

    with pytest.raises(InvalidArgument) as refused:
        InitImage.of(Image.new("RGB", size))
    assert refused.value.field == "init_image" and refused.value.values["size"] == f"{size[0]}x{size[1]}"
    assert str(refused.value).endswith(advice)
    chinese = "请换一张更大的图片" if "larger" in advice else "请缩小后再试"
    assert refusal(refused.value, "zh").endswith(chinese)


def test_a_thin_image_is_fitted_without_growing_to_its_cover_size(monkeypatch):
    thin = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8192, 16, 3), np.uint8))
    real_resize, sizes = Image.Image.resize, []

    def resize(self, size, *args, **kwargs):  # the real resize, refusing what would not fit in memory
        sizes.append(tuple(size))
        assert size[0] * size[1] <= 2048 * 2048, f"resampled to {size}"
        return real_resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", resize)
    out = fitted(thin, 2048, 2048)  # covering 2048x2048 would take 2048 x 1048576 pixels (6 GB of RGB)
    assert out.size == (2048, 2048) and sizes
    monkeypatch.undo()
    # the picture is the centre of the source, stretched
    expected = np.asarray(thin.crop((0, 4096 - 8, 16, 4096 + 8)).resize((2048, 2048), Image.Resampling.LANCZOS))
    assert np.abs(np.asarray(out).astype(int) - expected).mean() < 40
